"""The one-dispatcher rule on SQLite.

SQLite has no ``SKIP LOCKED`` and the service hands back every lease at start-up, which is only right if
no other dispatcher uses the file. So a dispatcher on SQLite holds an exclusive ``flock`` on
``<database>.dispatcher.lock`` for as long as it runs (the kernel drops it when the process dies, even
by SIGKILL). A second dispatcher on the same file - ``ctdd worker`` next to ``ctdd serve``, or two
workers - refuses to start with :class:`DispatcherAlreadyRunning`; ``ctdd serve --no-dispatcher`` can
still run next to a worker.
"""

from __future__ import annotations

import fcntl
import os

from sqlalchemy.engine import Engine


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
