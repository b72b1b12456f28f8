"""The event inbox: TrackEvent with PROCESSING_QUEUED, stored durably at once and applied in the background.

Applying an event (identity resolution, delta, insight records, outbox messages; maybe a commercetools
fetch) costs milliseconds; storing it costs microseconds. A queued TrackEvent is validated (unknown store,
unparseable delivery or invalid behavioural event: INVALID_ARGUMENT, as for applied events), written to
``event_inbox`` as the serialized request, and answered once that write has committed.

Ingest (:class:`InboxWriter`) is a group commit of plain INSERTs: the rows of all concurrent RPCs go into
one transaction (one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING dedupe_key``), so durable
ingest costs one fsync per batch of RPCs and no ORM work. A queued event whose message id or event id is
already in the inbox is answered ``duplicate`` at once. A row keeps the stores the queuing call's token may use
(``stores``), which the event's commercetools resources are routed among when it is applied.

Processing (:class:`InboxProcessor`, run by ``ctdd serve`` and ``ctdd worker`` next to the dispatcher):

1. claim up to ``[inbox] batch_size`` due pending rows in arrival (id) order with a lease (``FOR UPDATE
   SKIP LOCKED`` on PostgreSQL, so several processors take different rows);
2. prepare every claimed event concurrently (parse, commercetools fetches: ``EventProcessor.prepare_*``);
3. apply them in arrival order, all in ONE transaction with a savepoint per event (its own group-commit
   runner, not the ingest one). Each event's unit first flips its row to ``done`` only if the row is still
   pending and leased to this processor, so an event is applied exactly once even when a lease expired
   and another processor re-claimed it;
4. an event whose preparation or unit failed with a retryable error (commercetools unreachable, a bug)
   goes back to pending with a capped exponential backoff; after ``max_attempts`` it becomes ``failed``;
   one that a plugin failed (``PluginFailed``), or that needs what the deployment has not configured
   (``NotConfigured``: a commercetools API client), becomes ``failed`` at once (retried by the operator once
   that is fixed); one that can never be applied becomes ``rejected``. All are logged in ``rejected_record``.

Finished rows are kept ``[inbox] retention_days`` (the dedupe record of queued events), then deleted by the
processors, at most every ten minutes; on the same tick, ``rejected_record`` rows older than ``[service]
rejected_retention_days`` are deleted in bounded batches (``ctdd.ingest.rejections``).

Applying: with ``[service] set_based_apply`` (the default), the batch's contact events (behavioural events
other than carts) are applied set-based (``ctdd.ingest.set_apply``: a few statements for the whole batch), and
the other events (orders, carts, customer messages) one by one in a savepoint each, all in arrival order.

Ordering: one processor applies events in arrival order. Several processors (PostgreSQL) claim and prepare
different batches at once; batches of contact events only are applied at the same time (each locks its
contacts in id order up front, so they cannot deadlock), while a batch with other events takes turns with
all others (an advisory lock, :func:`_lock_applies`). Across processors, two events of one contact may be
applied in either order, as may a retried event and events that came later; what is applied stays right
because of the version and timestamp rules every event goes through (resource versions, cart versions,
per-field source timestamps), the same rules that order concurrent TrackEvent calls, and each contact's
outbox messages are numbered in the order their transactions commit (the contact's row lock).

Lanes (PostgreSQL): a worker runs ``[inbox] lanes`` processors side by side, each claiming only the rows of its
own lanes (``event_inbox.lane``, a hash of the event's cart or contact identity written at ingest, modulo the
number of lanes), each with its own connection and apply thread. Their batches then hold disjoint contacts, so one lane
runs its Python while the other waits for the database, instead of each batch waiting for the last one's
commit. They order what they apply as several workers do (above): a lane claims nothing more than a few batches
past the oldest due event not yet applied (``LANE_LEAD_BATCHES``), so one lane cannot run far ahead of another
(one contact's events can carry identifiers that hash to different lanes). SQLite has one writer: one lane.

Traces: while tracing is on, a row keeps the W3C trace context of the call that queued it (``trace``), and its
event is applied in that context, so its outbox messages link to the caller's trace (``ctdd.telemetry``).

A processor killed mid-batch leaves its rows pending with a lease; when the lease expires, any processor
claims them again (``[inbox] lease_seconds``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Iterable, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd import collector
from ctdd.delivery import outbox
from ctdd.config import InboxConfig, Settings
from ctdd.db.engine import sqlite_write_lock, utcnow
from ctdd.db.models import EventInbox, InboxStatus, RejectedRecord
from ctdd.hooks.types import PluginFailed
from ctdd.ingest.events import (EventProcessor, InvalidEvent, NotConfigured, NotificationOutcome,
                                RetryableEventError, Step)
from ctdd.ingest.plans import ContactPlan
from ctdd.ingest.set_apply import apply_plans
from ctdd.ingest.rejections import purge_rejected
from ctdd.db.apply_lock import take_apply_lock
from ctdd.db.group_commit import GroupCommitRunner
from ctdd.db.listen import NotifyListener
from ctdd.redaction import redact_text
from ctdd.retry import JITTER_20_PERCENT, backoff_delay
from ctdd.telemetry import context_from_carrier, current_trace_carrier, tracing_enabled

log = logging.getLogger(__name__)

INBOX = EventInbox.__table__
#: PostgreSQL NOTIFY channel raised (on commit) by every ingest batch; inbox processors LISTEN on it
NOTIFY_CHANNEL = "ctdd_inbox"
#: how often a processor deletes finished rows older than ``[inbox] retention_days``
PURGE_INTERVAL_SECONDS = 600.0
#: rows per multi-row INSERT on SQLite: 5 bound parameters each plus the shared time (older SQLite builds allow
#: 999 per statement)
_SQLITE_ROWS_PER_INSERT = 199
_INBOX_COLUMNS = "dedupe_key, store_key, request, lane, stores, status, attempts, next_attempt_at, received_at"
#: the same while tracing is on: a sixth parameter per row, the caller's trace context (``trace``)
_SQLITE_TRACED_ROWS_PER_INSERT = 166
_TRACED_INBOX_COLUMNS = _INBOX_COLUMNS + ", trace"
#: lane hashes: 0 to LANE_HASHES - 1 (``event_inbox.lane``, a SMALLINT)
LANE_HASHES = 32768


@functools.lru_cache(maxsize=64)
def _sqlite_insert(rows: int) -> str:
    """The INSERT of ``rows`` inbox rows: ``?1`` is the time (received and due), then five parameters per
    row. One text per row count, so that sqlite3's statement cache prepares it once."""
    values = ", ".join(f"(?{5 * i + 2}, ?{5 * i + 3}, ?{5 * i + 4}, ?{5 * i + 5}, ?{5 * i + 6}, "
                       f"'{InboxStatus.PENDING}', 0, ?1, ?1)" for i in range(rows))
    return f"INSERT INTO event_inbox ({_INBOX_COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING RETURNING dedupe_key"


@functools.lru_cache(maxsize=64)
def _sqlite_traced_insert(rows: int) -> str:
    """:func:`_sqlite_insert` with the ``trace`` column: six parameters per row."""
    values = ", ".join(f"(?{6 * i + 2}, ?{6 * i + 3}, ?{6 * i + 4}, ?{6 * i + 5}, ?{6 * i + 6}, "
                       f"'{InboxStatus.PENDING}', 0, ?1, ?1, ?{6 * i + 7})" for i in range(rows))
    return (f"INSERT INTO event_inbox ({_TRACED_INBOX_COLUMNS}) VALUES {values} "
            "ON CONFLICT DO NOTHING RETURNING dedupe_key")


# -- ingest ---------------------------------------------------------------------------------------
#: turns a stored request, and the stores its caller may use (None: every store), back into the steps that apply
#: it (``ctdd.api.track_event.stored_request_preparer``); raises InvalidEvent (never processable) or
#: RetryableEventError (try again later). It may have an attribute
#: ``at_once(stored) -> list[Step] | None``: the steps at once for a request that needs no I/O (a behavioural
#: event), None for the others
PrepareStored = Callable[[bytes, "frozenset[str] | None"], Awaitable[list[Step]]]


class QueuedEvent(NamedTuple):
    """One validated request for the inbox (a tuple: made once per queued RPC). ``request`` is opaque here:
    the API layer stores its serialized request and reads it back (``PrepareStored``)."""

    store_key: str
    request: bytes
    #: the message id / event id, when the request carries exactly one notification
    dedupe_key: str | None
    #: the W3C trace context of the queuing call (JSON), set by :meth:`InboxWriter.add` while tracing is on
    trace: str | None = None
    #: the hash of its cart or contact identity (:func:`lane_of`): which apply lane of a worker takes it
    lane: int = 0
    #: the stores the queuing call's token may use, a JSON array (:func:`stores_text`); None: every store
    stores: str | None = None


def stores_text(stores: Iterable[str] | None) -> str | None:
    """The ``event_inbox.stores`` of a call whose token may use ``stores`` (None: every store)."""
    return None if stores is None else json.dumps(sorted(stores))


def _stores(text: str | None) -> frozenset[str] | None:
    """A stored ``stores`` column back as the set of stores; None (every store) when absent."""
    return None if text is None else frozenset(json.loads(text))


def lane_of(identity_value: str) -> int:
    """The lane hash of an event whose contact is known by ``identity_value`` (its normalised email, else customer
    id ...): a stable hash (CRC-32, the same in every process), 0 for none. Events of one contact that carry
    different identifiers may get different lanes: they are then applied by two lanes, ordered by the contact's
    row lock and their source stamps as if two workers applied them."""
    return zlib.crc32(identity_value.encode()) % LANE_HASHES if identity_value else 0


class InboxWriter(GroupCommitRunner):
    """Group commit for the inbox: ``await add(events)`` -> per event, True (queued) or False (duplicate).

    The committer loop is :class:`~ctdd.db.group_commit.GroupCommitRunner`'s; a batch here is a list of
    lists of :class:`QueuedEvent` (one list per RPC), written with one multi-row INSERT.

    On SQLite the batch is written on the event loop itself whenever the database's write lock is free at
    once (the common case: a batch costs about a millisecond, mostly the fsync of the COMMIT). Handing it
    to a thread instead would cost more: every step of the thread must win the interpreter lock back from
    the event loop, which is busy with gRPC, and those waits dominated ingest. When another writer holds
    the lock (the inbox processor, the dispatcher, another process), the batch goes to a thread and waits
    there, never on the event loop.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 256, min_commit_interval: float = 0.01):
        super().__init__(engine, max_batch=max_batch, min_commit_interval=min_commit_interval)
        self._postgres = engine.dialect.name == "postgresql"
        self._inline: Any = None  # the raw SQLite connection of the inline path, opened on first use
        self._inline_lock = (sqlite_write_lock(engine.url.database)
                             if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")
                             else None)
        to_db = INBOX.c.received_at.type._cached_bind_processor(engine.dialect)  # the column type's conversion
        self._to_db = to_db or (lambda value: value)
        #: batches written on the event loop / in a thread (observability and tests)
        self.inline_batches = 0

    async def add(self, events: list[QueuedEvent]) -> list[bool]:
        if not events:
            return []
        if tracing_enabled():  # in the caller's context here (not in the committer's): keep its trace
            carrier = current_trace_carrier()
            if carrier:
                text = json.dumps(carrier)
                events = [e._replace(trace=text) for e in events]
        return await self.run(events)  # type: ignore[arg-type]

    async def close(self) -> None:
        await super().close()
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    async def _apply_batch_async(self, items: list[Any]) -> list[tuple[bool, Any]]:
        if self._inline_lock is not None:
            results = self._try_inline(items)
            if results is not None:
                self.inline_batches += 1
                return self._counted(items, [(True, r) for r in results])
        return await asyncio.to_thread(self._apply_batch, items)

    def _try_inline(self, items: list[list[QueuedEvent]]) -> list[list[bool]] | None:
        """Write the batch without waiting for any lock; None when a lock is taken (or anything failed)."""
        assert self._inline_lock is not None
        if not self._inline_lock.acquire(blocking=False):
            return None
        try:
            if self._inline is None:
                self._inline = self.engine.raw_connection()
                self._inline.cursor().execute("PRAGMA busy_timeout=0")  # never wait on the event loop
            cursor = self._inline.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except Exception:  # SQLITE_BUSY: another process is writing
                return None
            try:
                results = self._write(cursor, items)
                cursor.execute("COMMIT")
                return results
            except Exception:
                log.warning("inline inbox write failed; retrying it in a thread", exc_info=True)
                if self._inline.dbapi_connection.in_transaction:
                    cursor.execute("ROLLBACK")
                return None
        finally:
            self._inline_lock.release()

    def _apply_batch(self, items: list[Any]) -> list[tuple[bool, Any]]:
        try:
            with self.engine.begin() as conn:
                results = self._write(conn.connection.cursor(), items)
        except Exception:
            log.warning("inbox write of %d request(s) failed; writing them one by one", len(items), exc_info=True)
            outcomes: list[tuple[bool, Any]] = []
            for item in items:
                try:
                    with self.engine.begin() as conn:
                        outcomes.append((True, self._write(conn.connection.cursor(), [item])[0]))
                except Exception as exc:
                    outcomes.append((False, exc))
            return outcomes
        return self._counted(items, [(True, r) for r in results])

    def _counted(self, items: list[Any], outcomes: list[tuple[bool, Any]]) -> list[tuple[bool, Any]]:
        self.batches += 1
        self.units += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        return outcomes

    def _write(self, cursor: Any, items: list[list[QueuedEvent]]) -> list[list[bool]]:
        """Insert the batch's events; one whose dedupe key is already queued (before, or earlier in this
        batch) is a duplicate. Plain DBAPI statements: at thousands of rows per second the ORM's, even
        Core's, per-row work would cost more than the rows.

        ``INSERT ... ON CONFLICT DO NOTHING RETURNING dedupe_key``: the database tells which keys were new,
        so there is no separate lookup, and a key another process queued a moment ago is a duplicate too.
        """
        results: list[list[Any]] = []
        rows: list[tuple] = []
        batch_keys: set[str] = set()
        traced = tracing_enabled()  # then each row has a fourth value: its trace context (or None)
        for item in items:
            flags: list[Any] = []  # True (new), False (duplicate) or the key, until the INSERT has answered
            for e in item:
                key = e.dedupe_key
                if key is None:
                    flags.append(True)
                elif key in batch_keys:
                    flags.append(False)
                    continue
                else:
                    batch_keys.add(key)
                    flags.append(key)
                rows.append((key, e.store_key, e.request, e.lane, e.stores, e.trace) if traced
                            else (key, e.store_key, e.request, e.lane, e.stores))
            results.append(flags)
        inserted = self._insert(cursor, rows, traced=traced) if rows else set()
        return [[flag if flag.__class__ is bool else flag in inserted for flag in flags] for flags in results]

    def _insert(self, cursor: Any, rows: list[tuple], *, traced: bool = False) -> set[str]:
        """INSERT the rows in order (their ids are the arrival order); the dedupe keys it inserted. ``traced``:
        each row has a sixth value, its ``trace``."""
        now_db = self._to_db(utcnow())
        inserted: set[str] = set()
        if traced:
            return self._insert_traced(cursor, rows, now_db)
        if self._postgres:
            # One statement for the whole batch (executemany would cost a round trip per row).
            keys, stores, requests, lanes, scopes = (list(col) for col in zip(*rows))
            cursor.execute(
                f"INSERT INTO event_inbox ({_INBOX_COLUMNS}) SELECT k, s, r, l, c, '{InboxStatus.PENDING}', 0, %s, %s "
                "FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::smallint[], %s::text[]) "
                "WITH ORDINALITY AS t(k, s, r, l, c, n) ORDER BY n ON CONFLICT DO NOTHING RETURNING dedupe_key",
                (now_db, now_db, keys, stores, requests, lanes, scopes),
            )
            inserted.update(row[0] for row in cursor.fetchall())
            cursor.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            return inserted
        for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
            chunk = rows[start:start + _SQLITE_ROWS_PER_INSERT]
            cursor.execute(_sqlite_insert(len(chunk)), [now_db, *[value for row in chunk for value in row]])
            inserted.update(row[0] for row in cursor.fetchall())
        return inserted

    def _insert_traced(self, cursor: Any, rows: list[tuple], now_db: Any) -> set[str]:
        """:meth:`_insert` with the ``trace`` column (only while tracing is on: the no-op path stays as it was)."""
        inserted: set[str] = set()
        if self._postgres:
            keys, stores, requests, lanes, scopes, traces = (list(col) for col in zip(*rows))
            cursor.execute(
                f"INSERT INTO event_inbox ({_TRACED_INBOX_COLUMNS}) "
                f"SELECT k, s, r, l, c, '{InboxStatus.PENDING}', 0, %s, %s, t "
                "FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::smallint[], %s::text[], %s::text[]) "
                "WITH ORDINALITY AS u(k, s, r, l, c, t, n) ORDER BY n ON CONFLICT DO NOTHING RETURNING dedupe_key",
                (now_db, now_db, keys, stores, requests, lanes, scopes, traces),
            )
            inserted.update(row[0] for row in cursor.fetchall())
            cursor.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            return inserted
        for start in range(0, len(rows), _SQLITE_TRACED_ROWS_PER_INSERT):
            chunk = rows[start:start + _SQLITE_TRACED_ROWS_PER_INSERT]
            cursor.execute(_sqlite_traced_insert(len(chunk)), [now_db, *[value for row in chunk for value in row]])
            inserted.update(row[0] for row in cursor.fetchall())
        return inserted


# -- claims and outcomes ----------------------------------------------------------------------------
@dataclass
class ClaimedEvent:
    id: int
    store_key: str
    request: bytes
    attempts: int
    #: the W3C trace context of the call that queued it (``traceparent`` / ``tracestate``), when one was kept
    trace: dict[str, str] | None = None
    #: the stores the token of the call that queued it may use (None: every store)
    stores: frozenset[str] | None = None


def _trace_carrier(text: str | None) -> dict[str, str] | None:
    """A stored ``trace`` column back as a carrier; None when absent or unreadable (the event is applied anyway)."""
    if not text:
        return None
    try:
        carrier = json.loads(text)
    except ValueError:
        return None
    return carrier if isinstance(carrier, dict) else None


#: How far a lane may run ahead, in batches per lane: it claims no row more than ``LANE_LEAD_BATCHES * lanes *
#: batch size`` ids past the oldest due event not yet applied. Lanes split one process's events by contact hash,
#: but one contact's events can carry different identifiers (a commercetools delivery, always lane 0, by customer
#: id; a later view by email; an anonymous id a cart links), and nothing else orders the lanes: one that fell
#: behind (lane 0 fetching from commercetools) would let the other apply a customer's later events long before
#: the one creating or linking the customer, which then find no contact. With the bound, lanes reorder no further
#: than as many workers each holding a batch in hand and one claimed ahead would, and a lane that stalls stalls the
#: others within a few batches instead of leaving its share behind unnoticed.
LANE_LEAD_BATCHES = 4


def claim(engine: Engine, *, worker: str, limit: int, lease_seconds: float, now: datetime | None = None,
          lane: tuple[int, int] | None = None) -> list[ClaimedEvent]:
    """Lease up to ``limit`` due pending events to ``worker``, oldest first; with ``lane`` (i, n) only those whose
    lane hash is i modulo n, and none further than ``LANE_LEAD_BATCHES * n * limit`` rows past the oldest due event
    not yet applied (whichever lane holds it)."""
    now = now or utcnow()
    due = (INBOX.c.status == InboxStatus.PENDING, INBOX.c.next_attempt_at <= now)
    conditions = [*due, sa.or_(INBOX.c.lease_expires_at.is_(None), INBOX.c.lease_expires_at < now)]
    if lane is not None and lane[1] > 1:
        oldest = sa.select(sa.func.min(INBOX.c.id)).where(*due).scalar_subquery()
        conditions += [INBOX.c.lane % lane[1] == lane[0],
                       INBOX.c.id < oldest + LANE_LEAD_BATCHES * lane[1] * limit]
    candidates = sa.select(INBOX.c.id).where(*conditions).order_by(INBOX.c.id).limit(limit)
    stmt = (
        sa.update(INBOX)
        .where(*outbox.claimable(engine.dialect.name, INBOX.c.id, candidates,
                                 INBOX.c.status == InboxStatus.PENDING))
        .values(lease_owner=worker, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(INBOX.c.id, INBOX.c.store_key, INBOX.c.request, INBOX.c.attempts, INBOX.c.trace, INBOX.c.stores)
    )
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(outbox.IN_INDEX_ORDER)  # in id order on the pending index, whatever the estimates
        rows = conn.execute(stmt).all()
    return sorted((ClaimedEvent(r.id, r.store_key, bytes(r.request), r.attempts, _trace_carrier(r.trace),
                                _stores(r.stores)) for r in rows), key=lambda e: e.id)


def release(engine: Engine, *, worker: str | None = None) -> int:
    """Hand back the leases ``worker`` holds (clean shutdown), or every lease (``None``: SQLite start-up,
    where the one background worker of the file knows any lease is left from a previous run)."""
    stmt = sa.update(INBOX).where(INBOX.c.status == InboxStatus.PENDING, INBOX.c.lease_owner.is_not(None))
    if worker is not None:
        stmt = stmt.where(INBOX.c.lease_owner == worker)
    with engine.begin() as conn:
        return conn.execute(stmt.values(lease_owner=None, lease_expires_at=None)).rowcount


def purge_finished(engine: Engine, *, older_than: datetime, limit: int = 10_000) -> int:
    """Delete up to ``limit`` finished rows (done, rejected, failed) that finished before ``older_than``."""
    finished = (
        sa.select(INBOX.c.id)
        .where(INBOX.c.status != InboxStatus.PENDING, INBOX.c.processed_at < older_than)
        .limit(limit)
        .scalar_subquery()
    )
    with engine.begin() as conn:
        return conn.execute(sa.delete(INBOX).where(INBOX.c.id.in_(finished))).rowcount


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(INBOX)
                            .where(INBOX.c.status == InboxStatus.PENDING)).scalar_one()


def _set_based(unit: Any) -> bool:
    return isinstance(unit, _InboxUnit) and unit.set_based


def _lock_applies(session: Session, units: list[Any]) -> None:
    """First statement of every apply transaction on PostgreSQL (``ctdd.db.apply_lock``): shared for a
    transaction of set-based units only (they lock all their contacts at once, in id order), exclusive for one
    with other units (orders, carts, customer messages lock their contacts as they go). So batches of contact
    events of several processors are applied at the same time, and the others take turns."""
    take_apply_lock(session, in_order=bool(units) and all(_set_based(unit) for unit in units))


@dataclass
class _InFlight:
    """A claimed batch whose units are queued on the runner (``InboxProcessor._claim_and_submit``)."""

    claimed: list[ClaimedEvent]
    ready: list[tuple[ClaimedEvent, list[Step]]]
    failures: list["_Failure"]
    futures: list[asyncio.Future]


@dataclass
class _Failure:
    event: ClaimedEvent
    error: str
    #: False: the event can never be applied (rejected at once)
    retryable: bool
    #: give up at once though retryable (``failed``): a plugin failed, retrying cannot help until it is fixed;
    #: the operator retries it then (``ctdd failures retry inbox:<id>``)
    at_once: bool = False


# -- processing --------------------------------------------------------------------------------------
class _TakenOver(Exception):
    """The event's lease passed to another processor before this one applied it."""


def _outcome_text(outcomes: list[NotificationOutcome]) -> str:
    """What a done row keeps of its outcomes (``event_inbox.outcome``)."""
    return ",".join(o.outcome for o in outcomes)[:200]


class _InboxUnit:
    """The unit of work applying one queued event (its steps) and turning its row to done.

    ``set_based``: every step is a contact plan or a final outcome, so the unit can be applied with others of
    its kind set-based (``InboxProcessor._apply_set``); called on its own, it applies its steps one by one.
    """

    __slots__ = ("event", "steps", "worker", "set_based")

    def __init__(self, event: ClaimedEvent, steps: list[Step], worker: str, set_based_apply: bool):
        self.event = event
        self.steps = steps
        self.worker = worker
        self.set_based = set_based_apply and all(isinstance(step, (ContactPlan, NotificationOutcome)) for step in steps)

    def __call__(self, session: Session) -> list[NotificationOutcome]:
        outcomes = [step if isinstance(step, NotificationOutcome) else step(session) for step in self.steps]
        # Exactly once: only the processor holding the row's lease turns it to done. Another that took
        # the event over (this lease expired) keeps it: this unit's savepoint is rolled back.
        taken = session.connection().execute(_FINISH_LEASED, {
            "event_id": self.event.id, "worker": self.worker, "processed_at": utcnow(),
            "outcome": _outcome_text(outcomes),
        }).rowcount
        if not taken:
            raise _TakenOver(self.event.id)
        return outcomes


#: a leased event applied: done, with its outcome; matches only while ``worker`` still holds the lease
_FINISH_LEASED = (
    sa.update(INBOX)
    .where(INBOX.c.id == sa.bindparam("event_id"), INBOX.c.status == InboxStatus.PENDING,
           INBOX.c.lease_owner == sa.bindparam("worker"))
    .values(status=InboxStatus.DONE, processed_at=sa.bindparam("processed_at"),
            outcome=sa.bindparam("outcome"), lease_owner=None, lease_expires_at=None)
)


#: the leased events of a list applied with one outcome: done; returns the ids matched (those ``worker`` still holds
#: the lease of). ``ids``: one parameter (compiled once, not an ``IN`` list per batch): an array on PostgreSQL (a
#: JSON list read with json_array_elements gets a hash join over the whole inbox), a JSON array on SQLite
_FINISH_APPLIED = {
    dialect: sa.text(
        f"UPDATE event_inbox SET status = :done, processed_at = :processed_at, outcome = :outcome, lease_owner = NULL, "
        f"lease_expires_at = NULL WHERE {match} AND status = :pending AND lease_owner = :worker RETURNING id"
    ).bindparams(sa.bindparam("processed_at", type_=INBOX.c.processed_at.type), done=InboxStatus.DONE,
                 pending=InboxStatus.PENDING)
    for dialect, match in (("postgresql", "id = ANY(CAST(:ids AS bigint[]))"),
                           ("sqlite", "id IN (SELECT value FROM json_each(:ids))"))
}


class InboxProcessor:
    """Claims queued events, prepares them concurrently and applies them in order, one transaction per batch."""

    def __init__(self, engine: Engine, settings: Settings, events: EventProcessor, *, worker_id: str,
                 prepare: PrepareStored, on_enqueued=None, lane: tuple[int, int] | None = None):
        self.engine = engine
        #: (i, n): this processor claims the rows whose lane hash is i modulo n (None: every row)
        self.lane = lane
        self.prepare = prepare
        self.settings = settings
        self.cfg: InboxConfig = settings.inbox
        self.events = events
        self.worker_id = worker_id
        self.on_enqueued = on_enqueued or (lambda: None)
        set_based = (dict(set_apply=self._apply_set, batchable=_set_based) if settings.set_based_apply else {})
        self.runner = GroupCommitRunner(engine, max_batch=self.cfg.batch_size, on_begin=_lock_applies, **set_based)
        #: claim the next batch while one is applied (see run)
        self._pipelined = engine.dialect.name == "postgresql"
        #: the batch claimed and queued on the runner, not finished yet (pipelined: see run)
        self._in_flight: _InFlight | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._listener: NotifyListener | None = None
        #: counters for observability and tests
        self.stats = {"applied": 0, "retried": 0, "rejected": 0, "failed": 0, "batches": 0}

    def start(self) -> None:
        name = "inbox-processor" if self.lane is None else f"inbox-processor-lane-{self.lane[0]}"
        self._task = asyncio.create_task(self.run(), name=name)
        if self.engine.dialect.name == "postgresql":
            self._listener = NotifyListener(self.engine, self.wake, channel=NOTIFY_CHANNEL)
            self._listener.start()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Finish the batch in hand, then hand back any lease."""
        self._stopping = True
        self._wake.set()
        if self._listener is not None:
            await self._listener.stop()
        if self._task is not None:
            await self._task
            self._task = None
        await self.runner.close()
        await asyncio.to_thread(release, self.engine, worker=self.worker_id)

    async def run(self) -> None:
        """Claim, prepare and apply batches until stopped. On PostgreSQL, while a full batch is being applied (in
        the group commit's thread), the next one is claimed and prepared: its database round trips and its
        parsing overlap the apply instead of waiting for it. Its units are queued behind the batch in hand, so the
        runner still applies them in arrival order. (Not on SQLite: the claim is a write, which would wait for
        the apply's write lock in SQLite's busy handler, sleeping longer than the apply takes.)"""
        next_purge = 0.0
        while not self._stopping:
            claimed = 0
            try:
                # a batch's plans live from its claim until it is applied: no collection meanwhile (ctdd.collector)
                with collector.paused():
                    claimed = await self._step()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
                    await self._purge()
            except Exception:
                log.exception("inbox processing failed; retrying shortly")
                claimed = 0
            if claimed >= self.cfg.batch_size:
                await asyncio.sleep(0)
                continue
            if self._stopping:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.poll_interval_seconds)
            except asyncio.TimeoutError:
                pass
        if self._in_flight is not None:  # stopping: the batch in hand is finished, not abandoned
            in_flight, self._in_flight = self._in_flight, None
            await self._finish(in_flight)

    async def _step(self) -> int:
        """Claim and queue the next batch, finish the one before it (pipelined), and this one too unless more
        work is waiting; how many events were claimed."""
        following = await self._claim_and_submit()
        previous, self._in_flight = self._in_flight, following
        if previous is not None:
            await self._finish(previous)
        claimed = len(following.claimed) if following is not None else 0
        if self._in_flight is not None and (claimed < self.cfg.batch_size or not self._pipelined):
            # no more work waiting (or no pipelining): finish this one before sleeping
            finishing, self._in_flight = self._in_flight, None
            await self._finish(finishing)
        return claimed

    async def _purge(self) -> None:
        purged = await asyncio.to_thread(purge_finished, self.engine,
                                         older_than=utcnow() - timedelta(days=self.cfg.retention_days))
        if purged:
            log.info("purged %d finished queued event(s) older than %s days", purged, self.cfg.retention_days)
        rejected_days = self.settings.service.rejected_retention_days
        purged = await asyncio.to_thread(purge_rejected, self.engine,
                                         older_than=utcnow() - timedelta(days=rejected_days))
        if purged:
            log.info("purged %d rejected record(s) older than %s days", purged, rejected_days)

    async def run_once(self) -> int:
        """Process one batch of due events; returns how many were claimed."""
        flight = await self._claim_and_submit()
        if flight is None:
            return 0
        await self._finish(flight)
        return len(flight.claimed)

    async def _claim_and_submit(self) -> "_InFlight | None":
        """Claim a batch, prepare it and queue its units on the runner (in arrival order); None: nothing due."""
        claimed = await asyncio.to_thread(claim, self.engine, worker=self.worker_id, limit=self.cfg.batch_size,
                                          lease_seconds=self.cfg.lease_seconds, lane=self.lane)
        if not claimed:
            return None
        prepared: list[Any] = [self._prepare_at_once(e) for e in claimed]
        waiting = [i for i, p in enumerate(prepared) if p is None]
        if waiting:  # those that may need commercetools: concurrently
            for i, p in zip(waiting, await asyncio.gather(*(self._prepare(claimed[i]) for i in waiting))):
                prepared[i] = p
        failures = [p for p in prepared if isinstance(p, _Failure)]
        ready = [(e, p) for e, p in zip(claimed, prepared) if not isinstance(p, _Failure)]
        futures = [self._submit(e, steps) for e, steps in ready]
        return _InFlight(claimed, ready, failures, futures)

    def _submit(self, event: ClaimedEvent, steps: list[Step]) -> asyncio.Future:
        """Queue the event's unit on the runner; with the caller's trace context kept with the event (tracing on),
        in that context: the runner applies a unit in the context it was submitted in, and a contact plan in its
        own ``trace_context``, so the outbox messages the event enqueues link to the caller's trace."""
        unit = self._unit(event, steps)
        context = context_from_carrier(event.trace) if event.trace else None
        if context is None:
            return self.runner.submit(unit)
        for step in steps:
            if isinstance(step, ContactPlan):
                step.trace_context = context
        return context.run(self.runner.submit, unit)

    async def _finish(self, flight: "_InFlight") -> None:
        """Wait for a submitted batch's units, then record its failures and counts."""
        results = await asyncio.gather(*flight.futures, return_exceptions=True)
        failures = list(flight.failures)
        enqueued = False
        for (event, _), result in zip(flight.ready, results):
            if isinstance(result, _TakenOver):
                log.info("queued event %d was taken over by another processor; skipped", event.id)
            elif isinstance(result, BaseException):
                log.error("queued event %d failed to apply: %s", event.id, type(result).__name__,
                          exc_info=result if not isinstance(result, RetryableEventError) else None)
                plugin = isinstance(result, (PluginFailed, NotConfigured))  # names what to fix itself
                failures.append(_Failure(event, str(result) if plugin else f"{type(result).__name__}: {result}",
                                         retryable=True, at_once=plugin))
            elif result:
                self.stats["applied"] += 1
                enqueued |= any(o.outbox_message_ids for o in result)
        if failures:
            await asyncio.to_thread(self._record_failures, failures)
        self.stats["batches"] += 1
        if enqueued:
            self.on_enqueued()

    def _prepare_at_once(self, event: ClaimedEvent) -> list[Step] | _Failure | None:
        """The steps of an event that needs no I/O to prepare (``PrepareStored.at_once``), else None."""
        at_once = getattr(self.prepare, "at_once", None)
        if at_once is None:
            return None
        try:
            return at_once(event.request)
        except InvalidEvent as exc:
            return _Failure(event, str(exc) or "invalid request", retryable=False)
        except (PluginFailed, NotConfigured) as exc:  # kept as failed until the operator fixes it and retries
            return _Failure(event, str(exc), retryable=True, at_once=True)
        except Exception as exc:  # a bug: keep the event, retry it with backoff
            log.exception("preparing queued event %d failed", event.id)
            return _Failure(event, f"{type(exc).__name__}: {exc}", retryable=True)

    async def _prepare(self, event: ClaimedEvent) -> list[Step] | _Failure:
        try:
            return await self.prepare(event.request, event.stores)
        except InvalidEvent as exc:
            return _Failure(event, str(exc) or "invalid request", retryable=False)
        except (PluginFailed, NotConfigured) as exc:  # kept as failed until the operator fixes it and retries
            return _Failure(event, str(exc), retryable=True, at_once=True)
        except RetryableEventError as exc:
            return _Failure(event, str(exc), retryable=True)
        except Exception as exc:  # a bug: keep the event, retry it with backoff
            log.exception("preparing queued event %d failed", event.id)
            return _Failure(event, f"{type(exc).__name__}: {exc}", retryable=True)

    def _unit(self, event: ClaimedEvent, steps: list[Step]) -> "_InboxUnit":
        return _InboxUnit(event, steps, self.worker_id, self.settings.set_based_apply)

    def _apply_set(self, session: Session, units: list["_InboxUnit"]) -> list[tuple[bool, Any]]:
        """Apply the contact events of ``units`` set-based (``ctdd.ingest.set_apply``) and turn their rows to done
        with one UPDATE per outcome text. Raises when an event was taken over by another processor meanwhile
        (the group-commit runner then applies the units one by one, and only that one is skipped)."""
        plans = [step for unit in units for step in unit.steps if isinstance(step, ContactPlan)]
        results = iter(apply_plans(session, plans))
        outcomes: list[list[NotificationOutcome]] = []
        for unit in units:
            unit_outcomes = []
            for step in unit.steps:
                if isinstance(step, NotificationOutcome):
                    unit_outcomes.append(step)
                    continue
                ok, value = next(results)
                if not ok:
                    raise value
                unit_outcomes.append(value)
            outcomes.append(unit_outcomes)
        by_text: dict[str, list[int]] = {}
        for unit, unit_outcomes in zip(units, outcomes):
            by_text.setdefault(_outcome_text(unit_outcomes), []).append(unit.event.id)
        now = utcnow()
        conn = session.connection()
        finish = _FINISH_APPLIED[conn.dialect.name]
        for text, ids in by_text.items():
            taken = conn.execute(finish, {"ids": ids if conn.dialect.name == "postgresql" else json.dumps(ids),
                                          "processed_at": now, "outcome": text,
                                          "worker": self.worker_id}).scalars().all()
            if len(taken) != len(ids):
                raise _TakenOver(sorted(set(ids) - set(taken)))
        return [(True, unit_outcomes) for unit_outcomes in outcomes]

    def _record_failures(self, failures: list[_Failure]) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            for f in failures:
                attempt = f.event.attempts + 1
                given_up = f.at_once or not (f.retryable and attempt < self.cfg.max_attempts)
                if given_up:
                    status = InboxStatus.FAILED if f.retryable else InboxStatus.REJECTED
                    values = dict(attempts=attempt, status=status, processed_at=now)
                else:
                    delay = backoff_delay(attempt, base=self.cfg.backoff_base_seconds,
                                          cap=self.cfg.backoff_cap_seconds, jitter=JITTER_20_PERCENT)
                    values = dict(attempts=attempt, next_attempt_at=now + timedelta(seconds=delay))
                updated = conn.execute(
                    sa.update(INBOX)
                    .where(INBOX.c.id == f.event.id, INBOX.c.status == InboxStatus.PENDING,
                           INBOX.c.lease_owner == self.worker_id)
                    .values(lease_owner=None, lease_expires_at=None, last_error=redact_text(f.error)[:2000], **values)
                ).rowcount
                if not updated:  # taken over by another processor meanwhile: its outcome counts
                    continue
                if not given_up:
                    self.stats["retried"] += 1
                    continue
                self.stats["failed" if f.retryable else "rejected"] += 1
                reason = (f"queued event {status} after {attempt} attempt(s): {f.error}" if f.retryable
                          else f"queued event rejected: {f.error}")
                # in the same transaction as the status: a failed event always has its log entry
                conn.execute(sa.insert(RejectedRecord.__table__).values(
                    operation="TrackEvent", store_key=f.event.store_key, record_type="event_inbox",
                    record_id=str(f.event.id), reason=redact_text(reason)[:2000], created_at=now))
                log.warning("rejected queued TrackEvent %d for store %s: %s", f.event.id, f.event.store_key, reason)


class InboxLanes:
    """The inbox processors of one process: one per lane (``[inbox] lanes`` on PostgreSQL, one on SQLite), started,
    woken and stopped together."""

    def __init__(self, engine: Engine, settings: Settings, events: EventProcessor, *, worker_id: str,
                 prepare: PrepareStored, on_enqueued=None):
        count = 1 if engine.dialect.name == "sqlite" else settings.inbox.lanes
        # each lane holds its leases under its own name: a lane that stops hands back its own, not another's
        self.processors = [
            InboxProcessor(engine, settings, events, worker_id=worker_id if count == 1 else f"{worker_id}/lane{i}",
                           prepare=prepare, on_enqueued=on_enqueued, lane=(i, count) if count > 1 else None)
            for i in range(count)]

    @property
    def stats(self) -> dict[str, int]:
        """The processors' counters, added up."""
        total: dict[str, int] = {}
        for processor in self.processors:
            for key, value in processor.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def start(self) -> None:
        for processor in self.processors:
            processor.start()

    def wake(self) -> None:
        for processor in self.processors:
            processor.wake()

    async def stop(self) -> None:
        """Stop every lane (each hands back its leases); a lane whose stop failed does not keep the others from
        stopping, and its error is raised once all have stopped."""
        results = await asyncio.gather(*(processor.stop() for processor in self.processors), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
