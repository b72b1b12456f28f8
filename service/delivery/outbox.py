"""The outbox: durable, per-partition ordered queue of work for Dotdigital.

Ordering rule: a message is claimable only when no earlier message (lower ``sequence``) of its partition is
still ``pending``, ``in_flight`` or ``parked``, and no message of its partition (earlier or later) is
``in_flight``. A failing head therefore holds back its own partition and
nothing else (a ``parked`` one too, until it is resumed); a ``dead`` head releases the partition (skip policy). A partial unique index allows at most
one ``in_flight`` message per partition as a backstop.

Every state change here is one short transaction. SQLite transactions start with ``BEGIN IMMEDIATE``
(see ``ctdd.db.engine``); on PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` so several workers
can claim at once, and every enqueue sends ``NOTIFY ctdd_outbox`` (delivered by PostgreSQL when the
enqueuing transaction commits, dropped if it rolls back) so idle workers wake at once.

Leases: a claimed message is ``in_flight`` with ``lease_owner``/``lease_expires_at``. The owning worker
extends its leases periodically (:func:`heartbeat`); a worker that died stops doing so and every other
worker's rescuer (:func:`rescue_expired`) hands its messages back. Completions check the lease, so a
worker that lost its lease cannot overwrite the new owner's outcome.

Coalescing: when :func:`claim` is asked to, contact upserts that follow a claimed head in its partition
and that no worker has claimed yet (``pending``, never attempted: nothing after a head can have been)
are merged into the head (per-field: later value wins) and become ``merged``. The run of merged
messages stops at the first message of another kind, so an upsert is never moved across e.g. an insight
record or a deletion; and since only a claimable head is merged into, nothing is merged across a message
in flight. Merged messages keep their own record references and take the head's final status.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.db.consent_state import record_channel_statuses_many
from ctdd.db.apply_lock import take_apply_lock
from ctdd.db.engine import utcnow
from ctdd.db.transactions import INTEGRITY_RETRIES, lost_race
from ctdd.db.models import Contact, DeliveryAttempt, FieldState, OutboxMessage, OutboxStatus
from ctdd.delivery.view_merge import Follower, is_view_message, merge_views
from ctdd.domain.payload import merge_contact_bodies
from ctdd.redaction import redact_text
from ctdd.telemetry import current_trace_carrier

log = logging.getLogger(__name__)

OM = OutboxMessage.__table__
CT = Contact.__table__
FS = FieldState.__table__
DA = DeliveryAttempt.__table__

#: message kinds (each has a delivery handler in ctdd.delivery.handlers)
CONTACT_UPSERT = "contact.upsert"
INSIGHT_UPSERT = "insight.upsert"
#: removes one record of a contact-scoped insight collection (an order moved to another key or contact)
INSIGHT_DELETE = "insight.delete"
CONTACT_DELETE = "contact.delete"
CONTACT_REMOVE_FROM_LISTS = "contact.remove_from_lists"

#: outbox priorities (lower is claimed first across partitions)
PRIORITY_LIVE = 0
PRIORITY_BACKFILL = 10

#: HTTP statuses of 4xx responses that are still worth retrying
RETRYABLE_4XX = frozenset({408, 425, 429})

#: PostgreSQL NOTIFY channel raised (on commit) by every enqueue; workers LISTEN on it
NOTIFY_CHANNEL = "ctdd_outbox"
#: at most this many messages are coalesced into one
MAX_COALESCED = 100


@dataclass(frozen=True)
class RecordRef:
    """The commercetools record a message came from (for logs and the dead-letter view)."""

    store_key: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    record_version: int | None = None


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    partition_key: str
    sequence: int
    account: str
    contact_id: int | None
    kind: str
    payload: Any
    attempts: int
    store_key: str | None
    record_type: str | None
    record_id: str | None
    #: messages coalesced into this one (they settle with it)
    merged_ids: tuple[int, ...] = ()
    #: a bulk import a dead worker left running with this message (see :func:`record_import`)
    bulk_import_id: str | None = None


def partition_key(account: str, contact_id: int) -> str:
    return f"{account}:{contact_id}"


def enqueue(
    session: Session,
    *,
    contact_id: int,
    account: str,
    kind: str,
    payload: Any,
    ref: RecordRef,
    now: datetime | None = None,
    priority: int = 0,
    not_before: datetime | None = None,
) -> int:
    """Append a message to the contact's partition inside the caller's transaction; returns its id.

    ``not_before``: the message is not due before then (``next_attempt_at = max(now, not_before)``); the
    contact's later messages wait behind it (partition order). Used to let product views gather
    (``[dispatcher] view_coalesce_seconds``, ``ctdd.delivery.view_merge``).

    Bumping ``contact.next_sequence`` with UPDATE ... RETURNING row-locks the contact, so concurrent
    writers of one contact get consecutive sequence numbers in commit order.
    """
    now = now or utcnow()
    payload = with_trace(payload)
    conn = session.connection()
    sequence = conn.execute(_BUMP_SEQUENCE, {"contact_id": contact_id, "now": now}).scalar_one()
    message_id = conn.execute(
        _INSERT_MESSAGE,
        {
            "partition_key": partition_key(account, contact_id),
            "sequence": sequence,
            "account": account,
            "contact_id": contact_id,
            "kind": kind,
            "payload": payload,
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": max(now, not_before) if not_before is not None else now,
            "store_key": ref.store_key,
            "record_type": ref.record_type,
            "record_id": ref.record_id,
            "record_version": ref.record_version,
            "priority": priority,
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    if conn.dialect.name == "postgresql":
        # Transactional: PostgreSQL delivers it when (and only if) the enqueue commits, once per
        # transaction however many messages it enqueued.
        conn.execute(_NOTIFY)
    return message_id


def with_trace(payload: Any) -> Any:
    """``payload`` with the W3C trace context of the current span as ``trace`` (while tracing is on, and unless
    it has one): the delivery spans of the message link to it (ctdd.telemetry). Every enqueue goes through it."""
    if isinstance(payload, dict) and "trace" not in payload:
        carrier = current_trace_carrier()
        if carrier:
            return {**payload, "trace": carrier}
    return payload


# Built once: a reused statement keeps its cache key and compiled form (enqueue is on every write path).
_BUMP_SEQUENCE = (
    sa.update(CT)
    .where(CT.c.id == sa.bindparam("contact_id"))
    .values(next_sequence=CT.c.next_sequence + 1, updated_at=sa.bindparam("now", type_=CT.c.updated_at.type))
    .returning(CT.c.next_sequence - 1)
)
_INSERT_MESSAGE = sa.insert(OM).returning(OM.c.id)
_NOTIFY = sa.text(f"NOTIFY {NOTIFY_CHANNEL}")


def claimable(dialect: str, id_column: sa.ColumnElement, candidates: sa.Select,
              still: sa.ColumnElement[bool]) -> list[sa.ColumnElement[bool]]:
    """The WHERE clause of a claim's ``UPDATE``: ``id_column`` is one of ``candidates`` (a ``SELECT id ...
    ORDER BY ... LIMIT n`` whose conditions include ``still``), skipping rows another claim has locked
    (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite serializes writers).

    On PostgreSQL the locking SELECT is a MATERIALIZED CTE, so it runs exactly once. As a plain
    ``IN (subquery)`` PostgreSQL may re-run it for every row it updates, and each run (ORDER BY ... LIMIT ...
    SKIP LOCKED) can pick another row: a claim of 1 could then take several. Its ids are matched as
    ``id = ANY(ARRAY(...))``, without repeating ``still``: ``FOR UPDATE`` re-checked it on the row it locked,
    and no one can change a locked row. PostgreSQL then finds the rows by primary key. Before, with
    ``IN (SELECT id FROM cte) AND status = 'pending'`` and a table it believed small (a backlog just
    queued, not analysed yet), it walked every pending row through the partial index on ``status =
    'pending'``: 16-28 ms a claim with 4,000 pending rows, most of the database's work in the benchmark.
    """
    if dialect == "postgresql":
        cte = candidates.with_for_update(skip_locked=True).cte("candidates").prefix_with("MATERIALIZED")
        return [id_column == sa.any_(sa.func.array(sa.select(cte.c.id).scalar_subquery()))]
    return [id_column.in_(candidates.scalar_subquery()), still]


#: Run first in a claim's transaction on PostgreSQL (the inbox's too): walk the pending rows in claim order on
#: their partial index and stop after ``limit``, whatever the statistics say. The planner cannot estimate a
#: backlog queued since the last ANALYZE, nor a condition such as the inbox's ``lane % n = i`` (it assumes 0.5 %
#: of the rows match); expecting fewer matches than ``limit``, it read every pending row and sorted them, so a
#: claim's cost grew with the backlog (inbox, 30,000 pending: 17-29 ms a claim, 2-3 ms in index order, by
#: EXPLAIN ANALYZE). ``SET LOCAL`` ends with the transaction.
IN_INDEX_ORDER = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off"


_CLAIM_STATEMENTS: dict[tuple[str, tuple[str, ...] | None, tuple[str, ...]], sa.Update] = {}


def _claim_statement(dialect: str, kinds: tuple[str, ...] | None, accounts_excluded: tuple[str, ...]) -> sa.Update:
    """The claim UPDATE for one combination of filters, built once (parameters: ``claim_now``,
    ``claim_limit``, ``claim_worker``, ``claim_until``): building it cost more CPU than running it."""
    key = (dialect, kinds, accounts_excluded)
    stmt = _CLAIM_STATEMENTS.get(key)
    if stmt is not None:
        return stmt
    now = sa.bindparam("claim_now", type_=OM.c.next_attempt_at.type)
    earlier = OM.alias("earlier")
    blocked = (
        sa.select(sa.literal(1))
        .select_from(earlier)
        .where(
            earlier.c.partition_key == OM.c.partition_key,
            earlier.c.sequence < OM.c.sequence,
            earlier.c.status.in_(OutboxStatus.BLOCKING),
        )
        .exists()
    )
    # A partition with a message in flight is left alone whatever the sequences say (a message put back behind
    # a later one must not be claimed beside it): one such message must never fail the whole claim on the
    # unique in-flight-per-partition index. The partial index on in-flight rows answers this at once.
    in_flight = OM.alias("in_flight")
    busy = (
        sa.select(sa.literal(1))
        .select_from(in_flight)
        .where(in_flight.c.partition_key == OM.c.partition_key, in_flight.c.status == OutboxStatus.IN_FLIGHT)
        .exists()
    )
    conditions = [OM.c.status == OutboxStatus.PENDING, OM.c.next_attempt_at <= now, ~blocked, ~busy]
    if kinds is not None:
        conditions.append(OM.c.kind.in_(kinds))
    if accounts_excluded:
        conditions.append(OM.c.account.not_in(accounts_excluded))
    candidates = (
        sa.select(OM.c.id)
        .where(*conditions)
        .order_by(OM.c.priority, OM.c.id)
        .limit(sa.bindparam("claim_limit", type_=sa.Integer))
    )
    stmt = (
        sa.update(OM)
        .where(*claimable(dialect, OM.c.id, candidates, OM.c.status == OutboxStatus.PENDING))
        .values(
            status=OutboxStatus.IN_FLIGHT,
            lease_owner=sa.bindparam("claim_worker", type_=OM.c.lease_owner.type),
            lease_expires_at=sa.bindparam("claim_until", type_=OM.c.lease_expires_at.type),
            updated_at=now,
        )
        .returning(
            OM.c.id, OM.c.partition_key, OM.c.sequence, OM.c.account, OM.c.contact_id, OM.c.kind,
            OM.c.payload, OM.c.attempts, OM.c.store_key, OM.c.record_type, OM.c.record_id, OM.c.bulk_import_id,
        )
    )
    _CLAIM_STATEMENTS[key] = stmt
    return stmt


def claim(engine: Engine, *, worker: str, limit: int, lease_seconds: float, now: datetime | None = None,
          kinds: tuple[str, ...] | None = None, accounts_excluded: tuple[str, ...] = (),
          coalesce: bool = False, merge_views: bool = False) -> list[ClaimedMessage]:
    """Lease up to ``limit`` due partition heads to ``worker``.

    ``kinds`` restricts the claim to these message kinds, ``accounts_excluded`` skips accounts (e.g. one
    paused by throttling). With ``coalesce``, pending contact upserts queued behind each claimed
    contact-upsert head are merged into it in the same transaction (see the module docstring); with
    ``merge_views``, so are the pending product views queued behind a product-view head, due or not
    (``ctdd.delivery.view_merge``).
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    stmt = _claim_statement(engine.dialect.name, kinds, tuple(accounts_excluded))
    params = {"claim_now": now, "claim_limit": limit, "claim_worker": worker,
              "claim_until": now + timedelta(seconds=lease_seconds)}
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(IN_INDEX_ORDER)
        rows = conn.execute(stmt, params).all()
        claimed = [ClaimedMessage(**row._mapping, merged_ids=_merged_ids(row.payload)) for row in rows]
        if (coalesce or merge_views) and claimed:
            claimed = _coalesce(conn, claimed, now, contacts=coalesce, views=merge_views)
    return sorted(claimed, key=lambda m: m.id)


def _merged_ids(payload: Any) -> tuple[int, ...]:
    if isinstance(payload, dict):
        return tuple(int(m["id"]) for m in payload.get("merged") or ())
    return ()


def _coalesce(conn, claimed: list[ClaimedMessage], now: datetime, *, contacts: bool = True,
              views: bool = False) -> list[ClaimedMessage]:
    """Merge the unclaimed messages queued right behind each claimed head that can take them: contact
    upserts into a contact-upsert head (``contacts``), product views into a product-view head (``views``)."""
    heads = {m.partition_key: m for m in claimed
             if (contacts and m.kind == CONTACT_UPSERT and isinstance(m.payload, dict))
             or (views and is_view_message(m.kind, m.payload))}
    if not heads:
        return claimed
    followers = conn.execute(
        sa.select(OM.c.id, OM.c.partition_key, OM.c.sequence, OM.c.kind, OM.c.status, OM.c.attempts, OM.c.payload,
                  OM.c.store_key, OM.c.record_type, OM.c.record_id, OM.c.record_version)
        .where(OM.c.partition_key.in_(list(heads)), OM.c.status.in_(OutboxStatus.BLOCKING))
        .order_by(OM.c.partition_key, OM.c.sequence)
    ).all()
    runs: dict[str, list] = {}
    stopped: set[str] = set()
    for row in followers:
        head = heads[row.partition_key]
        if row.sequence <= head.sequence or row.partition_key in stopped:
            continue
        run = runs.setdefault(row.partition_key, [])
        same_kind = (is_view_message(row.kind, row.payload) if head.kind == INSIGHT_UPSERT
                     else row.kind == CONTACT_UPSERT)
        # A run also stops at a message of another store (its store's transform plugins shape it: ctdd.delivery.
        # transform) and at one that carries merged messages of its own (a head retried by the operator, moved
        # behind later ones: merged into another, its own merged ones would be left behind, never settled).
        if (not same_kind or row.status != OutboxStatus.PENDING or row.attempts or row.store_key != head.store_key
                or _merged_ids(row.payload)
                or (head.kind == CONTACT_UPSERT and len(run) + len(_merged_ids(head.payload)) >= MAX_COALESCED)):
            stopped.add(row.partition_key)
            continue
        run.append(row)
    result = []
    head_rows: list[dict[str, Any]] = []
    merged_rows: list[dict[str, Any]] = []
    for msg in claimed:
        run = runs.get(msg.partition_key) if heads.get(msg.partition_key) is msg else None
        if not run:
            result.append(msg)
            continue
        if msg.kind == INSIGHT_UPSERT:
            payload, taken = merge_views(msg.payload, msg.id, [Follower(row.id, row.payload) for row in run])
            body = None
        else:
            payload, body, taken = msg.payload, dict(msg.payload.get("body") or {}), []
            for row in run:
                combined = merge_contact_bodies(body, (row.payload or {}).get("body") or {})
                if combined is None:
                    break
                body = combined
                taken.append(row.id)
        if not taken:
            result.append(msg)
            continue
        rows = {row.id: row for row in run}
        merged_refs = list(msg.payload.get("merged") or ())
        merged_refs += [{
            "id": row.id, "sequence": row.sequence, "store_key": row.store_key, "record_type": row.record_type,
            "record_id": row.record_id, "record_version": row.record_version,
            "trace": (row.payload or {}).get("trace"),
        } for row in (rows[i] for i in taken)]
        payload = {**payload, "merged": merged_refs, **({"body": body} if body is not None else {})}
        head_rows.append({"b_id": msg.id, "b_payload": payload, "b_now": now})
        merged_rows += [{"b_id": i, "b_head": msg.id, "b_now": now} for i in taken]
        log.debug("coalesced %d pending %s message(s) of partition %s into message %s", len(taken),
                  "product view" if body is None else "upsert", msg.partition_key, msg.id)
        result.append(replace(msg, payload=payload, merged_ids=_merged_ids(payload)))
    if head_rows:  # two executemany statements for every head of the claim (not two statements per head)
        conn.execute(_MERGED_HEAD, head_rows)
        conn.execute(_MERGED_FOLLOWER, merged_rows)
        log.info("coalesced %d pending message(s) into %d claimed message(s)", len(merged_rows), len(head_rows))
    return result


#: a head that took the messages queued behind it: its new payload
_MERGED_HEAD = (sa.update(OM).where(OM.c.id == sa.bindparam("b_id"))
                .values(payload=sa.bindparam("b_payload", type_=OM.c.payload.type),
                        updated_at=sa.bindparam("b_now", type_=OM.c.updated_at.type)))
#: ... and each message it took (still pending: nobody else can claim behind a head in flight)
_MERGED_FOLLOWER = (sa.update(OM).where(OM.c.id == sa.bindparam("b_id"), OM.c.status == OutboxStatus.PENDING)
                    .values(status=OutboxStatus.MERGED, merged_into=sa.bindparam("b_head"),
                            updated_at=sa.bindparam("b_now", type_=OM.c.updated_at.type)))


def _stored_error(error: str) -> str:
    """An error text as stored in ``last_error`` and ``delivery_attempt.error``: personal data, secrets and SQL
    parameter dumps masked (ctdd.redaction), at most 2000 characters."""
    return redact_text(error)[:2000]


def _record_attempt(conn, msg: ClaimedMessage, *, worker: str, outcome: str, started_at: datetime,
                    response_code: int | None, error: str | None, now: datetime) -> None:
    conn.execute(
        sa.insert(DA).values(
            message_id=msg.id, attempt=msg.attempts + 1, outcome=outcome, response_code=response_code,
            error=error, worker=worker, started_at=started_at, finished_at=now,
        )
    )


def _owned(msg: ClaimedMessage, worker: str):
    return sa.and_(OM.c.id == msg.id, OM.c.status == OutboxStatus.IN_FLIGHT, OM.c.lease_owner == worker)


def _again_after_deadlock(fn):
    """Run a settling transaction again when PostgreSQL aborted it to break a deadlock (or a serialization
    failure): nothing of it was kept, and it only records what it still owns (the lease checks), so running it
    again is safe. Without this, a delivery whose outcome could not be recorded stayed in flight until its
    lease expired and was then sent a second time."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(INTEGRITY_RETRIES + 2):
            try:
                return fn(*args, **kwargs)
            except sa.exc.DBAPIError as exc:
                if not lost_race(exc) or isinstance(exc, sa.exc.IntegrityError) or attempt == INTEGRITY_RETRIES + 1:
                    raise
                log.info("%s lost a deadlock; recording it again", fn.__name__)
                time.sleep(random.uniform(0.005, 0.05))
        raise AssertionError("unreachable")

    return wrapper


def lock_contacts(conn, contact_ids: Iterable[int | None]) -> None:
    """On PostgreSQL, lock the rows of these contacts in ascending id order, before a transaction writes them or
    their field state, after the shared apply lock (``ctdd.db.apply_lock``: so it never waits in a circle with a
    transaction that locks contacts as it goes, which holds that lock exclusively).

    The set-based apply path (``ctdd.ingest.set_apply``) locks all the contacts of a batch up front in that order;
    a settle that updated contacts in the order of its outcomes (a bulk import's contacts) could hold one such
    contact while waiting for another that a batch holds, and the batch the reverse: a deadlock. Taking the locks
    in the same global order first, nobody waits in a circle."""
    if conn.dialect.name != "postgresql":
        return
    ids = sorted({i for i in contact_ids if i is not None})
    if ids:
        take_apply_lock(conn, in_order=True)
        conn.execute(sa.select(CT.c.id).where(CT.c.id.in_(ids)).order_by(CT.c.id).with_for_update()).all()


@_again_after_deadlock
def mark_delivered(engine: Engine, msg: ClaimedMessage, *, worker: str, started_at: datetime, response_code: int,
                   dotdigital_contact_id: int | None = None) -> bool:
    """Record a successful delivery; returns False if the lease had been lost meanwhile."""
    now = utcnow()
    with engine.begin() as conn:
        if dotdigital_contact_id is not None:
            lock_contacts(conn, [msg.contact_id])
        updated = conn.execute(
            sa.update(OM).where(_owned(msg, worker)).values(
                status=OutboxStatus.DELIVERED, attempts=OM.c.attempts + 1, delivered_at=now, updated_at=now,
                lease_owner=None, lease_expires_at=None, last_response_code=response_code, last_error=None,
                bulk_import_id=None,
            )
        ).rowcount
        if not updated:
            log.warning("message %s: lease lost before delivery was recorded", msg.id)
            return False
        if dotdigital_contact_id is not None and msg.contact_id is not None:
            conn.execute(
                sa.update(CT).where(CT.c.id == msg.contact_id).values(
                    dotdigital_contact_id=dotdigital_contact_id, updated_at=now
                )
            )
        _settle_merged(conn, [msg.id], OutboxStatus.DELIVERED, now=now, response_code=response_code)
        _record_attempt(conn, msg, worker=worker, outcome="delivered", started_at=started_at,
                        response_code=response_code, error=None, now=now)
    return True


def _settle_merged(conn, head_ids: list[int], status: str, *, now: datetime, response_code: int | None,
                   error: str | None = None) -> None:
    """Messages coalesced into ``head_ids`` take their head's final status."""
    if not head_ids:
        return
    values: dict[str, Any] = dict(status=status, updated_at=now, last_response_code=response_code)
    if status == OutboxStatus.DELIVERED:
        values["delivered_at"] = now
    if error is not None:
        values["last_error"] = _stored_error(error)
    conn.execute(
        sa.update(OM).where(OM.c.merged_into.in_(head_ids), OM.c.status == OutboxStatus.MERGED).values(**values)
    )


def _settle_record_failures(conn, head_id: int, failures: Mapping[int, tuple[int | None, str]], *,
                            now: datetime) -> None:
    """Of a delivered message, the head or merged messages whose own record was refused become ``dead``
    (before the other merged messages take the head's ``delivered``), and their record values are forgotten
    so that the next identical record is sent again. A merged one leaves its head (``merged_into`` cleared):
    it is dead on its own account, and an operator's retry sends its own record again."""
    for mid, (code, error) in failures.items():
        conn.execute(
            sa.update(OM)
            .where(OM.c.id == mid, sa.or_(OM.c.id == head_id,
                                          sa.and_(OM.c.merged_into == head_id, OM.c.status == OutboxStatus.MERGED)))
            .values(status=OutboxStatus.DEAD, updated_at=now, last_response_code=code, delivered_at=None,
                    merged_into=None,
                    last_error=_stored_error(error if mid == head_id else
                                             f"sent merged into message {head_id}, record refused: {error}"))
        )
    conn.execute(sa.delete(FS).where(FS.c.message_id.in_(list(failures))))
    log.error("message %s delivered but %d of the messages it carries dead-lettered: their record was refused",
              head_id, len(failures))


def _forget_fields(conn, head_ids: list[int]) -> None:
    """Forget the field values dead messages (and the messages merged into them) carried."""
    if not head_ids:
        return
    merged = sa.select(OM.c.id).where(OM.c.merged_into.in_(head_ids)).scalar_subquery()
    conn.execute(sa.delete(FS).where(sa.or_(FS.c.message_id.in_(head_ids), FS.c.message_id.in_(merged))))


@_again_after_deadlock
def mark_retry(engine: Engine, msg: ClaimedMessage, *, worker: str, started_at: datetime, delay_seconds: float,
               response_code: int | None, error: str, count_attempt: bool = True) -> None:
    """Put the message back to ``pending`` until ``now + delay_seconds``; it keeps blocking its partition."""
    now = utcnow()
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(OM).where(_owned(msg, worker)).values(
                status=OutboxStatus.PENDING,
                attempts=OM.c.attempts + (1 if count_attempt else 0),
                next_attempt_at=now + timedelta(seconds=delay_seconds),
                updated_at=now, lease_owner=None, lease_expires_at=None,
                last_response_code=response_code, last_error=_stored_error(error), bulk_import_id=None,
            )
        ).rowcount
        if updated and count_attempt:
            _record_attempt(conn, msg, worker=worker, outcome="retry", started_at=started_at,
                            response_code=response_code, error=_stored_error(error), now=now)


@_again_after_deadlock
def mark_dead(engine: Engine, msg: ClaimedMessage, *, worker: str, started_at: datetime, response_code: int | None,
              error: str) -> None:
    """Dead-letter the message (its partition moves on) and forget the field values it carried, so the
    next update of those fields is sent again instead of being mistaken for "unchanged"."""
    now = utcnow()
    with engine.begin() as conn:
        lock_contacts(conn, [msg.contact_id])  # before its field state (see lock_contacts)
        updated = conn.execute(
            sa.update(OM).where(_owned(msg, worker)).values(
                status=OutboxStatus.DEAD, attempts=OM.c.attempts + 1, updated_at=now,
                lease_owner=None, lease_expires_at=None, last_response_code=response_code,
                last_error=_stored_error(error),
                bulk_import_id=None,
            )
        ).rowcount
        if not updated:
            return
        _forget_fields(conn, [msg.id])
        _settle_merged(conn, [msg.id], OutboxStatus.DEAD, now=now, response_code=response_code,
                       error=f"merged into message {msg.id}: {error}"[:2000])
        _record_attempt(conn, msg, worker=worker, outcome="dead", started_at=started_at,
                        response_code=response_code, error=_stored_error(error), now=now)


def release_leases(engine: Engine, *, worker: str | None = None) -> int:
    """Give in-flight messages back (``worker=None``: all of them, for single-dispatcher SQLite start-up)."""
    now = utcnow()
    cond = OM.c.status == OutboxStatus.IN_FLIGHT
    if worker is not None:
        cond = sa.and_(cond, OM.c.lease_owner == worker)
    with engine.begin() as conn:
        return conn.execute(
            sa.update(OM).where(cond).values(
                status=OutboxStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now
            )
        ).rowcount


def rescue_expired(engine: Engine, now: datetime | None = None) -> int:
    """Return messages whose lease expired (their worker died) to ``pending``."""
    now = now or utcnow()
    with engine.begin() as conn:
        n = conn.execute(
            sa.update(OM)
            .where(OM.c.status == OutboxStatus.IN_FLIGHT, OM.c.lease_expires_at < now)
            .values(status=OutboxStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
        ).rowcount
    if n:
        log.warning("rescued %d message(s) whose lease expired", n)
    return n


def record_import(engine: Engine, ids: list[int], import_id: str | None, *, worker: str) -> None:
    """Note (``import_id``) or forget (``None``) the bulk import carrying in-flight messages ``ids``.

    If the worker dies, its messages are rescued with the import id still set, and the next worker waits
    for that import to finish before it sends anything for those contacts: an import still running for
    a dead worker cannot overwrite newer data that a second worker sends meanwhile.
    """
    if not ids:
        return
    cond = [OM.c.id.in_(ids)]
    if import_id is not None:
        cond += [OM.c.status == OutboxStatus.IN_FLIGHT, OM.c.lease_owner == worker]
    with engine.begin() as conn:
        conn.execute(sa.update(OM).where(*cond).values(bulk_import_id=import_id))


def heartbeat(engine: Engine, *, worker: str, lease_seconds: float, now: datetime | None = None) -> int:
    """Extend the leases of every message ``worker`` has in flight; returns how many it holds."""
    now = now or utcnow()
    with engine.begin() as conn:
        return conn.execute(
            sa.update(OM)
            .where(OM.c.status == OutboxStatus.IN_FLIGHT, OM.c.lease_owner == worker)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        ).rowcount


def due_backlog(engine: Engine, *, cap: int, now: datetime | None = None) -> int:
    """How many pending messages are due, counting at most ``cap`` (cheap "is there a backlog?")."""
    now = now or utcnow()
    due = (
        sa.select(sa.literal(1))
        .select_from(OM)
        .where(OM.c.status == OutboxStatus.PENDING, OM.c.next_attempt_at <= now)
        .limit(cap)
        .subquery()
    )
    with engine.begin() as conn:  # COMMIT keeps psycopg's prepared statements (a ROLLBACK drops them)
        return conn.execute(sa.select(sa.func.count()).select_from(due)).scalar_one()


@dataclass
class Outcome:
    """The result of delivering one message of a batch (see :func:`settle`)."""

    msg: ClaimedMessage
    #: "delivered", "retry", "dead" or "parked" (retries ran out: kept, holding back its partition, until resumed)
    outcome: str
    response_code: int | None = None
    error: str | None = None
    #: retry: seconds until the next attempt; count_attempt=False for a retry that never reached Dotdigital
    delay_seconds: float = 0.0
    count_attempt: bool = True
    dotdigital_contact_id: int | None = None
    #: when the attempt started (default: the batch's ``started_at``)
    started_at: datetime | None = None
    #: delivered: the contact's channel statuses the response reported, recorded in the settling
    #: transaction (``consent_state.record_channel_statuses_many``) if the message was still ours
    channel_statuses: Mapping[str, str | None] | None = None
    #: delivered: the messages (the head or messages merged into it) whose record was refused for good while
    #: the rest of the message was delivered (a merged view message, ``ctdd.delivery.view_merge``): message id
    #: -> (response code, error). They become ``dead``, and the record values they carried are forgotten.
    record_failures: Mapping[int, tuple[int | None, str]] | None = None


# Statements of every settle, built once.
_SETTLE_OWNED = (
    sa.select(OM.c.id)
    .where(OM.c.id.in_(sa.bindparam("ids", expanding=True)), OM.c.status == OutboxStatus.IN_FLIGHT,
           OM.c.lease_owner == sa.bindparam("worker"))
    .with_for_update()
)
_SETTLE_DELIVERED = (
    sa.update(OM)
    .where(OM.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(status=OutboxStatus.DELIVERED, attempts=OM.c.attempts + 1,
            delivered_at=sa.bindparam("now", type_=OM.c.delivered_at.type),
            updated_at=sa.bindparam("now", type_=OM.c.updated_at.type), lease_owner=None, lease_expires_at=None,
            last_response_code=sa.bindparam("code", type_=OM.c.last_response_code.type), last_error=None,
            bulk_import_id=None)
)
_LEARN_CONTACT_ID = (
    sa.update(CT)
    .where(CT.c.id == sa.bindparam("cid"),
           sa.or_(CT.c.dotdigital_contact_id.is_(None), CT.c.dotdigital_contact_id != sa.bindparam("dd")))
    .values(dotdigital_contact_id=sa.bindparam("dd"), updated_at=sa.bindparam("now", type_=CT.c.updated_at.type))
)


@_again_after_deadlock
def settle(engine: Engine, outcomes: list[Outcome], *, worker: str, started_at: datetime | None = None) -> set[int]:
    """Record the outcomes of a batch in one transaction; returns the ids whose lease was still held.

    The same rules as :func:`mark_delivered`, :func:`mark_retry` and :func:`mark_dead`, with set-wise
    statements so that a batch of thousands settles in a few round trips.
    """
    if not outcomes:
        return set()
    now = utcnow()
    ids = [o.msg.id for o in outcomes]
    with engine.begin() as conn:
        # Lock the rows we still own (a lost lease must not be overwritten).
        owned = set(conn.execute(_SETTLE_OWNED, {"ids": ids, "worker": worker}).scalars())
        if len(owned) < len(ids):
            log.warning("%d message(s) of a batch lost their lease before the outcome was recorded",
                        len(ids) - len(owned))
        mine = [o for o in outcomes if o.msg.id in owned]
        # the contacts whose row or field state this transaction writes, locked first and in id order: a dead
        # message forgets its field values, a refused record too, a learnt contact id or channel statuses update
        # the contact. A plain delivery (an insight record, a contact whose id is known) writes neither, so it
        # does not wait for an apply batch holding its contact (nor hold up the next one).
        lock_contacts(conn, [o.msg.contact_id for o in mine
                             if o.outcome == "dead" or (o.outcome == "delivered" and (
                                 o.record_failures or o.dotdigital_contact_id is not None or o.channel_statuses))])
        delivered = [o for o in mine if o.outcome == "delivered"]
        retries = [o for o in mine if o.outcome == "retry"]
        dead = [o for o in mine if o.outcome == "dead"]
        parked = [o for o in mine if o.outcome == "parked"]
        by_code: dict[int | None, list[int]] = {}
        for o in delivered:
            by_code.setdefault(o.response_code, []).append(o.msg.id)
        for code, group in by_code.items():
            conn.execute(_SETTLE_DELIVERED, {"ids": group, "code": code, "now": now})
            for o in delivered:
                if o.record_failures and o.response_code == code:
                    _settle_record_failures(conn, o.msg.id, o.record_failures, now=now)
            _settle_merged(conn, group, OutboxStatus.DELIVERED, now=now, response_code=code)
        learnt = [{"cid": o.msg.contact_id, "dd": o.dotdigital_contact_id, "now": now} for o in mine
                  if o.outcome != "retry" and o.dotdigital_contact_id is not None and o.msg.contact_id is not None]
        if learnt:
            conn.execute(_LEARN_CONTACT_ID, learnt)
        if retries:
            conn.execute(
                sa.update(OM).where(OM.c.id == sa.bindparam("mid")).values(
                    status=OutboxStatus.PENDING, attempts=OM.c.attempts + sa.bindparam("inc"),
                    next_attempt_at=sa.bindparam("due"), updated_at=now, lease_owner=None, lease_expires_at=None,
                    # a retry that never reached Dotdigital (account paused or throttled: no code, not counted)
                    # keeps the last response code: a message's repeated 401/403 is told by it (account_guard)
                    last_response_code=sa.case(
                        (sa.bindparam("keep", type_=sa.Boolean) == sa.true(), OM.c.last_response_code),
                        else_=sa.bindparam("code", type_=OM.c.last_response_code.type)),
                    last_error=sa.bindparam("err"), bulk_import_id=None,
                ),
                [{"mid": o.msg.id, "inc": 1 if o.count_attempt else 0,
                  "due": now + timedelta(seconds=o.delay_seconds), "code": o.response_code,
                  "keep": o.response_code is None and not o.count_attempt,
                  "err": _stored_error(o.error or "")} for o in retries],
            )
        if parked:
            # Like a retry that is not due: it keeps its field values, its merged messages and its place.
            conn.execute(
                sa.update(OM).where(OM.c.id == sa.bindparam("mid")).values(
                    status=OutboxStatus.PARKED, attempts=OM.c.attempts + 1, updated_at=now,
                    lease_owner=None, lease_expires_at=None, last_response_code=sa.bindparam("code"),
                    last_error=sa.bindparam("err"), bulk_import_id=None,
                ),
                [{"mid": o.msg.id, "code": o.response_code, "err": _stored_error(o.error or "")} for o in parked],
            )
        if dead:
            conn.execute(
                sa.update(OM).where(OM.c.id == sa.bindparam("mid")).values(
                    status=OutboxStatus.DEAD, attempts=OM.c.attempts + 1, updated_at=now,
                    lease_owner=None, lease_expires_at=None, last_response_code=sa.bindparam("code"),
                    last_error=sa.bindparam("err"), bulk_import_id=None,
                ),
                [{"mid": o.msg.id, "code": o.response_code, "err": _stored_error(o.error or "")} for o in dead],
            )
            dead_ids = [o.msg.id for o in dead]
            _forget_fields(conn, dead_ids)
            for o in dead:
                if o.msg.merged_ids:
                    _settle_merged(conn, [o.msg.id], OutboxStatus.DEAD, now=now, response_code=o.response_code,
                                   error=f"merged into message {o.msg.id}: {o.error}"[:2000])
        attempts = [
            dict(message_id=o.msg.id, attempt=o.msg.attempts + 1, outcome=o.outcome, response_code=o.response_code,
                 error=(o.error or None) and _stored_error(o.error), worker=worker,
                 started_at=o.started_at or started_at or now, finished_at=now)
            for o in mine if o.outcome != "retry" or o.count_attempt
        ]
        if attempts:
            conn.execute(sa.insert(DA), attempts)
        statuses = [(o.msg.contact_id, o.channel_statuses) for o in delivered
                    if o.channel_statuses and o.msg.contact_id is not None]
        if statuses:
            record_channel_statuses_many(conn, statuses, at=now)
    return owned


def counts_by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(OM.c.status, sa.func.count()).group_by(OM.c.status)).all())
