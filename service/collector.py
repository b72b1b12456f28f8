"""When CPython's cyclic garbage collector may run: not in the middle of a set-based apply.

A set-based apply (``ctdd.ingest.set_apply``) builds the state of a whole batch (hundreds of events: their
plans, field state, rows to write) and frees it when the batch commits, by reference counting: nothing of it is
cyclic garbage. Meanwhile every few thousand allocations start a young collection, which walks every container
object still alive, the batch's included, and moves it to an older generation, whose collections walk it again.
Measured on ``ctdd worker`` applying queued product views (bench/run.py (g), SQLite): young collections took
about 4 % of the worker's CPU. :func:`paused` turns the collector off for the length of such a batch; it runs
again as soon as no batch is being applied (a cycle created meanwhile is collected then).

Off unless :func:`pause_during_batches` was called: the long-running CLI commands call it
(``ctdd.runtime.process_tuning``); a test process or an application embedding the service keeps its collector
as it is.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

__all__ = ["pause_during_batches", "paused"]

_enabled = False
_lock = threading.Lock()
#: blocks active now (several threads may apply batches at once: the RPCs' group commit and the inbox)
_active = 0
#: whether the collector was on when the first of the active blocks began (it is turned on again only then)
_was_on = False


def pause_during_batches(on: bool = True) -> None:
    """Let :func:`paused` turn the collector off (process-wide)."""
    global _enabled
    _enabled = on


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No collection inside the block (when enabled); the collector is turned back on, if it was on, when the
    last active block of any thread ends."""
    global _active, _was_on
    if not _enabled:
        yield
        return
    with _lock:
        if _active == 0:
            _was_on = gc.isenabled()
            gc.disable()
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _was_on:
                gc.enable()
