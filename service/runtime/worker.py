"""``ctdd worker``: a dispatcher without the gRPC server, and the one-dispatcher rule on SQLite.

On PostgreSQL run as many workers (and ``ctdd serve`` processes) on one database as the Dotdigital
budget allows: claims use ``FOR UPDATE SKIP LOCKED``, leases have a heartbeat, every worker rescues the
expired leases of dead ones, and LISTEN/NOTIFY wakes idle workers (see ``ctdd.delivery.dispatcher``).

SQLite has no ``SKIP LOCKED`` and the service hands back every lease at start-up, which is only right if
no other dispatcher uses the file. So a dispatcher on SQLite holds an exclusive ``flock`` on
``<database>.dispatcher.lock`` for as long as it runs (the kernel drops it when the process dies, even
by SIGKILL). A second dispatcher on the same file - ``ctdd worker`` next to ``ctdd serve``, or two
workers - refuses to start with :class:`DispatcherAlreadyRunning`; ``ctdd serve --no-dispatcher`` can
still run next to a worker.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal

from sqlalchemy.engine import Engine

from ctdd.config import Settings

log = logging.getLogger(__name__)


class DispatcherAlreadyRunning(RuntimeError):
    """Another dispatcher already delivers from this SQLite database file."""


class SQLiteDispatcherLock:
    """Exclusive advisory lock marking the one dispatcher of a SQLite database file."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> SQLiteDispatcherLock | None:
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return cls(os.path.abspath(database) + ".dispatcher.lock")

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise DispatcherAlreadyRunning(
                f"another dispatcher (pid {holder}) already delivers from this SQLite database; SQLite supports "
                "one dispatcher per database file (use PostgreSQL to run several workers, or run "
                "`ctdd serve --no-dispatcher` next to the one worker)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


async def run_worker(settings: Settings, *, grace: float = 10.0, ready=None) -> int:
    """Run a dispatcher until SIGTERM/SIGINT (``ctdd worker``)."""
    from ctdd.runtime.app import App

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
