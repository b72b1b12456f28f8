"""The service's clock: every timestamp ctdd-sync writes or compares comes from :func:`now`.

By default it is the real time (UTC, timezone-aware). ``ctdd simulate`` (``ctdd.simulation``) and tests put a
:class:`VirtualClock` in its place with :func:`use_clock`, so timers, delays, quiet hours and hourly budgets
run on simulated time: a day of it passes in seconds, and nothing sleeps for a virtual delay.

``ctdd.db.engine.utcnow`` delegates here, so code that already reads ``utcnow()`` follows the virtual clock
too. The clock is process-wide (the dispatcher's worker threads, the sandbox's server threads and the event
loop all read the same one); only real durations (``time.monotonic``: timeouts, pacing, poll intervals) stay
real.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

__all__ = ["VirtualClock", "now", "use_clock"]

#: the clock in use; None is the real time (kept as a module global: ``now()`` is on hot paths)
_source: Callable[[], datetime] | None = None


def now() -> datetime:
    """Timezone-aware UTC now, from the clock in use."""
    source = _source
    return datetime.now(timezone.utc) if source is None else source()


@contextlib.contextmanager
def use_clock(clock: Callable[[], datetime]) -> Iterator[Callable[[], datetime]]:
    """Make ``clock`` (a callable returning an aware datetime) the process's clock inside the ``with``
    block; the previous one comes back afterwards."""
    global _source
    previous, _source = _source, clock
    try:
        yield clock
    finally:
        _source = previous


class VirtualClock:
    """A clock that stands still until it is moved: ``clock()`` is its time, ``advance(to)`` moves it.

    Time never goes backwards: advancing to an earlier time is refused (timers, leases and the hourly
    enrolment budget all assume a monotonic clock).
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a virtual clock starts at a timezone-aware time")
        self._now = start.astimezone(timezone.utc)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return self._now

    def now(self) -> datetime:
        return self._now

    def advance(self, to: datetime | timedelta) -> datetime:
        """Move to ``to`` (a time, or a duration from now); returns the new time."""
        with self._lock:
            target = self._now + to if isinstance(to, timedelta) else to
            if target.tzinfo is None:
                raise ValueError("advance to a timezone-aware time")
            target = target.astimezone(timezone.utc)
            if target < self._now:
                raise ValueError(f"a virtual clock does not go back ({target.isoformat()} < {self._now.isoformat()})")
            self._now = target
            return target

    def __repr__(self) -> str:
        return f"VirtualClock({self._now.isoformat()})"
