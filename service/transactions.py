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
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
UnitOfWork = Callable[[Session], T]

#: retries of a unit that lost a uniqueness race (two writers creating the same identifier at once)
INTEGRITY_RETRIES = 3


def run_in_transaction(engine: Engine, fn: UnitOfWork[T]) -> T:
    """Apply ``fn`` in its own transaction (blocking), retrying lost uniqueness races."""
    for attempt in range(INTEGRITY_RETRIES):
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return fn(session)
        except IntegrityError:
            if attempt == INTEGRITY_RETRIES - 1:
                raise
            log.info("uniqueness race while applying a unit of work; retrying")
    raise AssertionError("unreachable")


class TransactionRunner:
    """One transaction per unit of work, run in a worker thread."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def run(self, fn: UnitOfWork[T]) -> T:
        return await asyncio.to_thread(run_in_transaction, self.engine, fn)

    async def close(self) -> None:  # symmetry with runners that own background tasks
        return None
