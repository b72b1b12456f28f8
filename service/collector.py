"""When CPython's cyclic garbage collector may run: not in the middle of a set-based apply.

A set-based apply (``ctdd.ingest.set_apply``) builds the state of a whole batch (hundreds of events: their
plans, field state, rows to write) and frees it when the batch commits, by reference counting: nothing of it is
cyclic garbage. Meanwhile every few thousand allocations start a young collection, which walks every container
object still alive, the batch's included, and moves it to an older generation, whose collections walk it again.
Measured on ``ctdd worker`` applying queued product views (bench/run.py (g), SQLite): young collections took
about 4 % of the worker's CPU. :func:`paused` turns the collector off for the length of such a batch (the inbox
processor: from its claim until it is applied); it runs again as soon as no batch is in hand (a cycle created
meanwhile is collected then), and at least every ``MAX_PAUSE_SECONDS`` when batches overlap without a gap.

Off unless :func:`pause_during_batches` was called: the long-running CLI commands call it
(``ctdd.runtime.process_tuning``); a test process or an application embedding the service keeps its collector
as it is.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from typing import Iterator

__all__ = ["pause_during_batches", "paused"]

#: the longest the collector stays off while blocks follow each other without a gap (batches pipelined in
#: several threads): then a young collection runs anyway when a block ends
MAX_PAUSE_SECONDS = 1.0

_enabled = False
_lock = threading.Lock()
#: blocks active now (several threads may apply batches at once: the RPCs' group commit and the inbox)
_active = 0
#: whether the collector was on when the first of the active blocks began (it is turned on again only then)
_was_on = False
#: when the collector was last turned off or run by this module (time.monotonic)
_off_since = 0.0


def pause_during_batches(on: bool = True) -> None:
    """Let :func:`paused` turn the collector off (process-wide)."""
    global _enabled
    _enabled = on


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No collection inside the block (when enabled); the collector is turned back on, if it was on, when the
    last active block of any thread ends."""
    global _active, _was_on, _off_since
    if not _enabled:
        yield
        return
    with _lock:
        if _active == 0:
            _was_on = gc.isenabled()
            gc.disable()
            _off_since = time.monotonic()
        _active += 1
    try:
        yield
    finally:
        collect = False
        with _lock:
            _active -= 1
            if _was_on:
                if _active == 0:
                    gc.enable()
                elif time.monotonic() - _off_since > MAX_PAUSE_SECONDS:  # never a gap: collect now and then
                    collect = True
                    _off_since = time.monotonic()
        if collect:  # outside the lock: a finalizer the collection runs may apply a batch itself
            gc.collect(1)
