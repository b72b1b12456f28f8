"""Group commit: concurrent units of work share one database transaction.

Every accepted RPC must be durable before it is answered, and a durable commit costs an fsync (SQLite
``synchronous=FULL``, PostgreSQL WAL flush). One transaction per RPC therefore caps ingest at the
database's commit rate, and on SQLite the RPCs' transactions also queue on ``BEGIN IMMEDIATE``.
:class:`GroupCommitRunner` has the interface of :class:`ctdd.db.transactions.TransactionRunner`
(``await run(fn)``), but a single committer applies whatever units are waiting in one transaction:

- each unit runs inside its own SAVEPOINT, so a failing unit (a validation error it raises, an
  ``IntegrityError`` from a uniqueness race with another process, or a PostgreSQL deadlock with another
  process's transaction) is rolled back alone: a race is retried in a fresh savepoint (as ``run_in_transaction`` retries it in a fresh transaction), any other
  error is raised to that unit's caller only;
- the units of a batch are applied one after the other, so a unit sees the effects of the units before
  it exactly as if they had committed one by one (two updates of one contact keep their order);
- every caller is answered only after the batch's COMMIT has returned;
- with ``set_apply``, consecutive units that ``batchable`` accepts are applied together set-based
  (``ctdd.ingest.set_apply``: a constant number of statements for the run), in one savepoint of a transaction
  of their own (see :meth:`_apply_batch`); a lost race is tried again set-based, anything else rolls the run
  back and applies its units one by one as above;
- if the COMMIT itself fails, no unit of the batch was applied, and each is retried in a transaction of
  its own, so one unit can never fail another.

Batching is natural: while one batch commits, new units queue up and form the next batch, so there is
no added latency when the service is idle and big batches when it is busy (``max_batch`` bounds a
transaction's size).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from typing import Any, Callable, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd import collector
from ctdd.db.transactions import INTEGRITY_RETRIES, UnitOfWork, lost_race, run_in_transaction
from ctdd.telemetry import tracing_enabled

log = logging.getLogger(__name__)

#: tries of a set-based run that keeps losing races before its units are applied one by one. Two processors
#: creating the same new contacts (a burst of first events, PostgreSQL) can make a run lose several times in a row:
#: each loss waited for the winner's commit, so the next try sees its contacts, but the winner may have moved on to
#: the next batch of new contacts meanwhile. A try costs one batch; one by one costs hundreds of statements.
SET_RACE_RETRIES = 10

T = TypeVar("T")
#: applies a run of units set-based inside the open transaction: per unit (True, result) or (False, exception)
SetApply = Callable[[Session, list[Any]], list[tuple[bool, Any]]]


class GroupCommitRunner:
    """Applies concurrent units of work in shared transactions, one savepoint per unit."""

    def __init__(self, engine: Engine, *, max_batch: int = 256,
                 on_begin: Callable[[Session, list[Any]], None] | None = None,
                 min_commit_interval: float = 0.0, quiet_period: float = 0.001,
                 set_apply: SetApply | None = None, batchable: Callable[[Any], bool] | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        #: under load, commits start at most this often, so that a batch gathers the units of that time;
        #: an idle runner commits at once (only a commit that follows another closely waits)
        self.min_commit_interval = min_commit_interval
        #: ... but stop gathering once no unit has arrived for this long (see :meth:`_gather_batch`)
        self.quiet_period = quiet_period
        self._last_commit = 0.0
        #: run first in every transaction this runner opens, with the units it will apply (e.g. to take a lock)
        self.on_begin = on_begin
        #: set-based apply of consecutive units that ``batchable`` accepts (see :meth:`_apply_units`)
        self.set_apply = set_apply
        self.batchable = batchable or (lambda unit: False)
        #: units applied set-based, and runs that fell back to one unit at a time (observability and tests)
        self.set_units = 0
        self.set_fallbacks = 0
        self._queue: deque[tuple[UnitOfWork[Any], asyncio.Future]] = deque()
        self._kick: asyncio.Event | None = None
        self._committer: asyncio.Task | None = None
        self._closed = False
        #: sizes of the batches committed so far (observability and tests)
        self.batches = 0
        self.units = 0
        self.largest_batch = 0

    async def run(self, fn: UnitOfWork[T]) -> T:
        return await self.submit(fn)

    def submit(self, fn: UnitOfWork[T]) -> "asyncio.Future[T]":
        """Queue ``fn`` for the next batch (from the event loop); the future of its result. For a caller with
        many units at once (the inbox processor), cheaper than a task per :meth:`run`."""
        if self._closed:
            raise RuntimeError("the transaction runner is closed")
        committer = self._committer
        if committer is None or committer.done():
            self._kick = asyncio.Event()
            # an empty context: the committer outlives the call that started it, whose span (trace) it must not
            # lend to the units of later calls (each unit runs in its own caller's context: below)
            committer = self._committer = asyncio.get_running_loop().create_task(
                self._commit_loop(), name="group-commit", context=contextvars.Context())
        if tracing_enabled() and callable(fn) and not self.batchable(fn):
            # applied by the committer, in a thread: in the caller's context, so that what it enqueues keeps the
            # caller's trace (a set-based plan carries its own: ctdd.ingest.plans; a subclass's items that are
            # not units of work, such as the inbox writer's, are left as they are)
            fn = _in_context(fn, contextvars.copy_context())
        future = committer.get_loop().create_future()
        self._queue.append((fn, future))
        assert self._kick is not None
        self._kick.set()
        return future

    async def close(self) -> None:
        """Finish what is queued, then stop the committer."""
        self._closed = True
        if self._committer is not None:
            assert self._kick is not None
            self._kick.set()
            await self._committer
            self._committer = None

    async def _commit_loop(self) -> None:
        assert self._kick is not None
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._kick.clear()
                await self._kick.wait()
                # One more turn of the event loop: handlers that are ready to run (their requests have
                # arrived) add their units to this batch rather than to the next one.
                await asyncio.sleep(0)
                continue
            if self.min_commit_interval:
                await self._gather_batch()
            self._last_commit = time.monotonic()
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            live = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                outcomes = await self._apply_batch_async([fn for fn, _ in live])
            except BaseException as exc:  # pragma: no cover - _apply_batch catches everything it can
                outcomes = [(False, exc)] * len(live)
            for (_, future), (ok, value) in zip(live, outcomes):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _gather_batch(self) -> None:
        """Under load, let units gather until ``min_commit_interval`` after the last commit began, but no
        longer than they keep coming: once no unit has arrived for ``quiet_period``, every caller that is
        going to join this batch soon has joined (callers that wait for their answer before sending more
        are all waiting), and waiting on would only leave the service idle. Without that check, N such
        callers could never get more than N commits' worth per interval (8 callers: 750 calls/s)."""
        deadline = self._last_commit + self.min_commit_interval
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            waiting = len(self._queue)
            await asyncio.sleep(min(remaining, self.quiet_period))
            if len(self._queue) == waiting:
                return

    async def _apply_batch_async(self, units: list[UnitOfWork[Any]]) -> list[tuple[bool, Any]]:
        return await asyncio.to_thread(self._apply_batch, units)

    # -- in the worker thread ---------------------------------------------------------------------
    def _apply_batch(self, units: list[UnitOfWork[Any]]) -> list[tuple[bool, Any]]:
        if self.set_apply is None:
            return self._apply_transaction(units)
        # A run of set-based units locks all its contacts in one statement, in id order; other units lock as
        # they go. In one transaction after other units, the run would hold their locks too, out of that order,
        # and could deadlock with any transaction that locks contacts in id order (another processor's run, the
        # dispatcher's settle). So each run, and each stretch of other units, gets its own transaction (in
        # order: the effects of each are committed before the next starts).
        outcomes: list[tuple[bool, Any]] = []
        start = 0
        while start < len(units):
            kind = self.batchable(units[start])
            end = start + 1
            while end < len(units) and self.batchable(units[end]) == kind:
                end += 1
            outcomes.extend(self._apply_transaction(units[start:end]))
            start = end
        return outcomes

    def _apply_transaction(self, units: list[UnitOfWork[Any]]) -> list[tuple[bool, Any]]:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                with session.begin():
                    if self.on_begin is not None:
                        self.on_begin(session, units)
                    outcomes = self._apply_units(session, units)
        except Exception:
            log.warning("group commit of %d unit(s) failed; applying them one by one", len(units), exc_info=True)
            return [self._apply_alone(fn) for fn in units]
        self.batches += 1
        self.units += len(units)
        self.largest_batch = max(self.largest_batch, len(units))
        return outcomes

    def _apply_units(self, session: Session, units: list[Any]) -> list[tuple[bool, Any]]:
        """Apply ``units`` in order: each run of consecutive units that ``batchable`` accepts with ``set_apply``
        (in one savepoint; if it raises, the run is rolled back and its units applied one by one), the others
        one by one, each in its own savepoint."""
        if self.set_apply is None:
            return [self._apply_unit(session, fn) for fn in units]
        outcomes: list[tuple[bool, Any]] = []
        start = 0
        while start < len(units):
            end = start
            while end < len(units) and self.batchable(units[end]):
                end += 1
            if end == start:
                outcomes.append(self._apply_unit(session, units[start]))
                start += 1
                continue
            outcomes.extend(self._apply_run(session, units[start:end]))
            start = end
        return outcomes

    def _apply_run(self, session: Session, run: list[Any]) -> list[tuple[bool, Any]]:
        """The run set-based in a savepoint; a lost race (a PostgreSQL deadlock, a uniqueness race) is tried
        again set-based, up to ``SET_RACE_RETRIES`` times; anything else, or a race lost every time, falls back to
        one unit at a time."""
        assert self.set_apply is not None
        for attempt in range(SET_RACE_RETRIES):
            savepoint = session.begin_nested()
            try:
                with collector.paused():  # the batch's state is freed by reference counting (ctdd.collector)
                    results = self.set_apply(session, run)
                session.flush()
                savepoint.commit()
            except Exception as exc:
                try:
                    savepoint.rollback()
                except Exception:  # pragma: no cover - the savepoint is gone with the connection's error
                    log.debug("rolling back the set-based savepoint failed", exc_info=True)
                session.expunge_all()
                race = lost_race(exc)
                if race and attempt < SET_RACE_RETRIES - 1:
                    log.info("set-based apply of %d unit(s) lost a race (%s); trying again", len(run),
                             type(exc).__name__)
                    continue
                self.set_fallbacks += 1
                level = logging.INFO if race else logging.WARNING
                log.log(level, "set-based apply of %d unit(s) failed (%s); applying them one by one", len(run),
                        type(exc).__name__, exc_info=level == logging.WARNING)
                return [self._apply_unit(session, fn) for fn in run]
            session.expunge_all()
            self.set_units += len(run)
            return results
        raise AssertionError("unreachable")

    @staticmethod
    def _apply_unit(session: Session, fn: UnitOfWork[Any]) -> tuple[bool, Any]:
        for attempt in range(INTEGRITY_RETRIES):
            savepoint = session.begin_nested()
            try:
                result = fn(session)
                session.flush()
                savepoint.commit()
            except Exception as exc:
                race = lost_race(exc)
                if race or savepoint.is_active:  # a failed flush leaves the savepoint inactive, not rolled back
                    savepoint.rollback()
                session.expunge_all()
                if not race or attempt == INTEGRITY_RETRIES - 1:
                    return False, exc
                log.info("unit of work lost a race (%s); retrying it", type(exc).__name__)
                continue
            # The next unit starts from the database state, not from this unit's ORM objects.
            session.expunge_all()
            return True, result
        raise AssertionError("unreachable")

    def _apply_alone(self, fn: UnitOfWork[Any]) -> tuple[bool, Any]:
        def unit(session: Session) -> Any:
            if self.on_begin is not None:
                self.on_begin(session, [fn])
            return fn(session)

        try:
            return True, run_in_transaction(self.engine, unit)
        except Exception as exc:
            return False, exc


def _in_context(fn: UnitOfWork[T], context: contextvars.Context) -> UnitOfWork[T]:
    """``fn`` run in ``context`` (each call: a unit may be applied again after a lost race)."""
    def unit(session: Session) -> T:
        return context.run(fn, session)
    return unit
