"""Process-wide settings for the long-running commands (``ctdd serve``, ``ctdd worker``).

Garbage collection: after start-up the heap holds hundreds of thousands of long-lived objects (modules,
SQLAlchemy mappings and compiled statements, protobuf descriptors, the OpenTelemetry and gRPC machinery).
CPython's full collections walk all of them again and again, although none of them ever becomes garbage;
every RPC and delivery allocates enough short-lived containers to trigger a young collection every few
calls. Measured on ``ctdd serve`` under queued TrackEvent load (bench/run.py (a), 2 cores): the collector
took about 10 % of the process's CPU. :func:`freeze_startup_heap` moves the start-up objects into the
permanent generation (``gc.freeze()``, as large Python services do) and lets young collections run less
often. Cycles created later are still collected; only the start-up objects are exempt. Nor does the collector
run in the middle of a set-based apply (``ctdd.collector``).

Only the CLI entry points call it: a test process or an application embedding :class:`ctdd.runtime.app.App`
keeps its own collector settings.
"""

from __future__ import annotations

import gc

from ctdd import collector

#: allocations (net, of container objects) between young collections; CPython's default is 700
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from future collections."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
    collector.pause_during_batches()  # and none while a batch is applied set-based (ctdd.collector)
