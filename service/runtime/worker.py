"""``ctdd worker``: the inbox processor and the dispatcher without the gRPC server.

On PostgreSQL run as many workers (and ``ctdd serve`` processes) on one database as the Dotdigital
budget allows: claims use ``FOR UPDATE SKIP LOCKED``, leases have a heartbeat, every worker rescues the
expired leases of dead ones, and LISTEN/NOTIFY wakes idle workers (see ``ctdd.delivery.dispatcher``).

On SQLite one dispatcher per database file (``ctdd.db.locks``).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from ctdd.config import Settings
from ctdd.runtime.app import App

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, *, grace: float = 10.0, ready=None) -> int:
    """Run a dispatcher until SIGTERM/SIGINT (``ctdd worker``)."""
    stop = asyncio.Event()  # set by SIGTERM/SIGINT, also during start-up: then the worker stops once started
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = App(settings, serve_grpc=False, run_dispatcher=True)
    await app.start()
    assert app.dispatcher is not None
    print(f"ctdd worker {app.dispatcher.worker_id} delivering from "
          f"{app.engine.url.render_as_string(hide_password=True)}", flush=True)
    if ready is not None:
        ready()
    await stop.wait()
    log.info("worker shutting down")
    await app.stop(grace=grace)
    return 0
