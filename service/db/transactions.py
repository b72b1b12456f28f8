"""How units of work reach the database.

A unit of work is a function ``fn(session) -> result`` that reads and writes through one SQLAlchemy
``Session`` and must be applied atomically. RPC handlers hand their unit of work to a
:class:`TransactionRunner` and answer only when ``run`` returns, i.e. after the commit.

:class:`TransactionRunner` commits each unit in its own transaction (in a worker thread). A
group-commit runner may apply several concurrent units in one transaction, each in its own SAVEPOINT
so that one failing unit never affects the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
UnitOfWork = Callable[[Session], T]

#: retries of a unit that lost a race: a uniqueness race (two writers creating the same identifier at once)
#: or, on PostgreSQL, a deadlock between two transactions that lock the same contacts in another order
INTEGRITY_RETRIES = 3
#: SQLSTATEs of a transaction PostgreSQL aborted so that another could proceed: deadlock_detected,
#: serialization_failure. Applying the unit again is safe: none of it was kept.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


#: integrity errors no other writer causes, so running the unit again fails the same way: a NOT NULL or CHECK
#: violation (PostgreSQL SQLSTATEs, SQLite extended result codes)
_NOT_RACES = frozenset({"23502", "23514", "SQLITE_CONSTRAINT_NOTNULL", "SQLITE_CONSTRAINT_CHECK"})


def lost_race(exc: BaseException) -> bool:
    """True when ``exc`` means the unit of work lost a race to another writer and may simply run again: a
    uniqueness or foreign-key conflict, a deadlock or serialization failure; not a NOT NULL or CHECK violation."""
    if isinstance(exc, IntegrityError):
        orig = exc.orig
        return (getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)) not in _NOT_RACES
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def run_in_transaction(engine: Engine, fn: UnitOfWork[T]) -> T:
    """Apply ``fn`` in its own transaction (blocking), retrying lost uniqueness races."""
    for attempt in range(INTEGRITY_RETRIES):
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return fn(session)
        except DBAPIError as exc:
            if not lost_race(exc) or attempt == INTEGRITY_RETRIES - 1:
                raise
            log.info("unit of work lost a race (%s); retrying", type(exc.orig).__name__)
    raise AssertionError("unreachable")


class TransactionRunner:
    """One transaction per unit of work, run in a worker thread."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def run(self, fn: UnitOfWork[T]) -> T:
        return await asyncio.to_thread(run_in_transaction, self.engine, fn)

    async def close(self) -> None:  # symmetry with runners that own background tasks
        return None
