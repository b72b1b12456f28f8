"""The outbox: durable, per-partition ordered queue of work for Dotdigital.

Ordering rule: a message is claimable only when no earlier message (lower ``sequence``) of its partition is
still ``pending``, ``in_flight`` or ``parked``. A failing head therefore holds back its own partition and
nothing else; a ``dead`` head releases the partition (skip policy). A partial unique index allows at most
one ``in_flight`` message per partition as a backstop.

Every state change here is one short transaction. SQLite transactions start with ``BEGIN IMMEDIATE``
(see ``service.db.engine``); on PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` so several workers
can claim at once.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.db.engine import utcnow
from service.db.models import Contact, DeliveryAttempt, FieldState, OutboxMessage, OutboxStatus

log = logging.getLogger(__name__)

OM = OutboxMessage.__table__
CT = Contact.__table__
FS = FieldState.__table__
DA = DeliveryAttempt.__table__

#: message kinds (each has a delivery handler in service.delivery)
CONTACT_UPSERT = "contact.upsert"

#: HTTP statuses of 4xx responses that are still worth retrying
RETRYABLE_4XX = frozenset({408, 425, 429})


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


def partition_key(account: str, contact_id: int) -> str:
    return f"{account}:{contact_id}"


def backoff_seconds(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with ±20 % jitter: base·2^(attempt-1), at most ``cap``."""
    rng = rng or random
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return max(0.0, delay * rng.uniform(0.8, 1.2))


def enqueue(
    session: Session,
    *,
    contact_id: int,
    account: str,
    kind: str,
    payload: Any,
    ref: RecordRef,
    now: datetime | None = None,
) -> int:
    """Append a message to the contact's partition inside the caller's transaction; returns its id.

    Bumping ``contact.next_sequence`` with UPDATE ... RETURNING row-locks the contact, so concurrent
    writers of one contact get consecutive sequence numbers in commit order.
    """
    now = now or utcnow()
    sequence = session.execute(
        sa.update(CT)
        .where(CT.c.id == contact_id)
        .values(next_sequence=CT.c.next_sequence + 1, updated_at=now)
        .returning(CT.c.next_sequence - 1)
    ).scalar_one()
    return session.execute(
        sa.insert(OM)
        .values(
            partition_key=partition_key(account, contact_id),
            sequence=sequence,
            account=account,
            contact_id=contact_id,
            kind=kind,
            payload=payload,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            store_key=ref.store_key,
            record_type=ref.record_type,
            record_id=ref.record_id,
            record_version=ref.record_version,
            created_at=now,
            updated_at=now,
        )
        .returning(OM.c.id)
    ).scalar_one()


def claim(engine: Engine, *, worker: str, limit: int, lease_seconds: float, now: datetime | None = None) -> list[ClaimedMessage]:
    """Lease up to ``limit`` due partition heads to ``worker``."""
    if limit <= 0:
        return []
    now = now or utcnow()
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
    candidates = (
        sa.select(OM.c.id)
        .where(OM.c.status == OutboxStatus.PENDING, OM.c.next_attempt_at <= now, ~blocked)
        .order_by(OM.c.id)
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        sa.update(OM)
        .where(OM.c.id.in_(candidates.scalar_subquery()), OM.c.status == OutboxStatus.PENDING)
        .values(
            status=OutboxStatus.IN_FLIGHT,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(
            OM.c.id, OM.c.partition_key, OM.c.sequence, OM.c.account, OM.c.contact_id, OM.c.kind,
            OM.c.payload, OM.c.attempts, OM.c.store_key, OM.c.record_type, OM.c.record_id,
        )
    )
    with engine.begin() as conn:
        rows = conn.execute(stmt).all()
    return sorted((ClaimedMessage(**row._mapping) for row in rows), key=lambda m: m.id)


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


def mark_delivered(engine: Engine, msg: ClaimedMessage, *, worker: str, started_at: datetime, response_code: int,
                   dotdigital_contact_id: int | None = None) -> bool:
    """Record a successful delivery; returns False if the lease had been lost meanwhile."""
    now = utcnow()
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(OM).where(_owned(msg, worker)).values(
                status=OutboxStatus.DELIVERED, attempts=OM.c.attempts + 1, delivered_at=now, updated_at=now,
                lease_owner=None, lease_expires_at=None, last_response_code=response_code, last_error=None,
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
        _record_attempt(conn, msg, worker=worker, outcome="delivered", started_at=started_at,
                        response_code=response_code, error=None, now=now)
    return True


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
                last_response_code=response_code, last_error=error[:2000],
            )
        ).rowcount
        if updated and count_attempt:
            _record_attempt(conn, msg, worker=worker, outcome="retry", started_at=started_at,
                            response_code=response_code, error=error[:2000], now=now)


def mark_dead(engine: Engine, msg: ClaimedMessage, *, worker: str, started_at: datetime, response_code: int | None,
              error: str) -> None:
    """Dead-letter the message (its partition moves on) and forget the field values it carried, so the
    next update of those fields is sent again instead of being mistaken for "unchanged"."""
    now = utcnow()
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(OM).where(_owned(msg, worker)).values(
                status=OutboxStatus.DEAD, attempts=OM.c.attempts + 1, updated_at=now,
                lease_owner=None, lease_expires_at=None, last_response_code=response_code, last_error=error[:2000],
            )
        ).rowcount
        if not updated:
            return
        conn.execute(sa.delete(FS).where(FS.c.message_id == msg.id))
        _record_attempt(conn, msg, worker=worker, outcome="dead", started_at=started_at,
                        response_code=response_code, error=error[:2000], now=now)


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


def counts_by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(OM.c.status, sa.func.count()).group_by(OM.c.status)).all())
