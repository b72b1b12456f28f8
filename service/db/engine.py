"""Database engine creation and schema migrations.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` (a committed RPC survives a
power cut), a busy timeout, and every transaction opened with ``BEGIN IMMEDIATE`` so that
read-then-write transactions never fail with SQLITE_BUSY half way.
PostgreSQL is chosen by a ``postgresql+psycopg://`` URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from ctdd.clock import now as clock_now

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


#: Timezone-aware UTC now: the one time representation used with the database. It is the service clock
#: itself (``ctdd.clock.now``: real time, or the virtual time of ``ctdd simulate``), not a wrapper around it,
#: so reading it costs no extra call.
utcnow: Callable[[], datetime] = clock_now


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10) -> Engine:
    """Create an engine for ``url`` with the connection settings ctdd-sync relies on; ``pool_size``: the
    connections a PostgreSQL pool keeps (as many again may be opened beyond them while needed)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: an error's text never carries the bound values (outbox payloads, emails)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):  # pragma: no cover - exercised by every test
            # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own BEGIN is DEFERRED).
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        write_lock = sqlite_write_lock(parsed.database)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - exercised by every test
            # Threads of this process queue here for the file's one writer slot instead of in SQLite's
            # busy handler, which sleeps (1 ms ... 100 ms) between retries: fair, and no idle gaps.
            info = conn.connection.info
            if write_lock.acquire(timeout=30):
                info["ctdd_write_lock"] = True
            else:
                log.warning("waited 30 s for the SQLite write lock of this process; going on without it")
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                _release_write_lock(conn, write_lock)
                raise

        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _sqlite_end(conn):  # pragma: no cover - exercised by every test
            _release_write_lock(conn, write_lock)

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10, hide_parameters=True)


_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def sqlite_write_lock(database: str | None) -> threading.Lock:
    """One lock per SQLite database file, shared by every engine of this process on that file."""
    key = os.path.abspath(database) if database and database != ":memory:" else f"memory:{id(object())}"
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


def _release_write_lock(conn, write_lock: threading.Lock) -> None:
    info = conn.connection.info
    if info.pop("ctdd_write_lock", False):
        write_lock.release()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


#: ``pg_advisory_lock`` key serialising schema upgrades of one PostgreSQL database ("ctddmigr")
MIGRATION_LOCK_KEY = 0x6374_6464_6D69_6772 & 0x7FFF_FFFF_FFFF_FFFF


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` on ``engine``'s database.

    Safe with many processes starting at once (``ctdd serve`` and several ``ctdd worker`` on one
    PostgreSQL database): on PostgreSQL the upgrade runs under a session-level advisory lock, so one
    process migrates while the others wait and then find the schema already at ``revision``. On SQLite
    (where Alembic's DDL is not transactional) an exclusive ``flock`` on ``<database>.migrate.lock`` does
    the same.
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with _sqlite_migration_lock(engine), engine.connect() as connection:
        locked = engine.dialect.name == "postgresql"
        if locked:
            connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            connection.commit()  # the lock is session-level; alembic then runs its own transaction
        try:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
        finally:
            if locked:
                if connection.in_transaction():
                    connection.rollback()
                connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                connection.commit()
    log.info("database schema at %s (%s)", revision, engine.dialect.name)


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine):
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(os.path.abspath(database) + ".migrate.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def libpq_url(engine: Engine) -> str:
    """The engine's PostgreSQL URL in the form psycopg's own ``connect()`` accepts (for LISTEN)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
