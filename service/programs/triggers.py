"""Claiming due triggers and handing back the claims of a processor that stopped.

A due trigger (``pending``, ``due_at <= now``) is claimed like an outbox message: one ``UPDATE`` that sets it
``claimed`` with a lease (``lease_owner``, ``lease_expires_at``), over the candidates picked with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (``ctdd.delivery.outbox.claimable``), so processors sharing a
database never claim the same trigger. Every decision is then written with ``WHERE status = 'claimed' AND
lease_owner = <me>`` (``ctdd.programs.decisions``): a trigger cancelled meanwhile by its subject (a newer cart
version, an order) or taken over after the lease expired is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.db.models import ProgramTrigger, TriggerStatus
from ctdd.delivery.outbox import claimable

PT = ProgramTrigger.__table__

_COLUMNS = (PT.c.id, PT.c.store_key, PT.c.account, PT.c.program_kind, PT.c.contact_id, PT.c.subject_type,
            PT.c.subject_id, PT.c.subject_version, PT.c.step, PT.c.due_at, PT.c.attempts, PT.c.created_at,
            PT.c.first_due_at)


@dataclass(frozen=True)
class ClaimedTrigger:
    id: int
    store_key: str
    account: str
    program_kind: str
    contact_id: int
    subject_type: str
    subject_id: str
    subject_version: int
    step: int
    due_at: datetime
    attempts: int
    created_at: datetime
    first_due_at: datetime | None = None


_STATEMENTS: dict[str, sa.Update] = {}


def _claim_statement(dialect: str) -> sa.Update:
    stmt = _STATEMENTS.get(dialect)
    if stmt is None:
        now = sa.bindparam("now", type_=PT.c.due_at.type)
        still = sa.and_(PT.c.status == TriggerStatus.PENDING, PT.c.due_at <= now)
        candidates = (sa.select(PT.c.id).where(still).order_by(PT.c.due_at, PT.c.id)
                      .limit(sa.bindparam("limit", type_=sa.Integer)))
        stmt = _STATEMENTS[dialect] = (
            sa.update(PT)
            .where(*claimable(dialect, PT.c.id, candidates, still))
            .values(status=TriggerStatus.CLAIMED, lease_owner=sa.bindparam("worker", type_=PT.c.lease_owner.type),
                    lease_expires_at=sa.bindparam("until", type_=PT.c.lease_expires_at.type))
            .returning(*_COLUMNS)
        )
    return stmt


def claim_due(engine: Engine, *, worker: str, limit: int, lease_seconds: float, now: datetime) -> list[ClaimedTrigger]:
    """Lease up to ``limit`` due pending triggers to ``worker`` (oldest due first)."""
    if limit <= 0:
        return []
    with engine.begin() as conn:
        rows = conn.execute(_claim_statement(engine.dialect.name), {
            "now": now, "limit": limit, "worker": worker, "until": now + timedelta(seconds=lease_seconds)}).all()
    return sorted((ClaimedTrigger(**row._mapping) for row in rows), key=lambda t: (t.due_at, t.id))


def rescue_expired(engine: Engine, now: datetime) -> int:
    """Hand back the claims whose lease expired (their processor stopped or hung): they are pending again."""
    with engine.begin() as conn:
        return conn.execute(
            sa.update(PT).where(PT.c.status == TriggerStatus.CLAIMED, PT.c.lease_expires_at < now)
            .values(status=TriggerStatus.PENDING, lease_owner=None, lease_expires_at=None)).rowcount


def release_claims(engine: Engine, *, worker: str | None = None) -> int:
    """Hand back the claims of ``worker`` (None: of everybody, for SQLite's single processor at start-up)."""
    conditions = [PT.c.status == TriggerStatus.CLAIMED]
    if worker is not None:
        conditions.append(PT.c.lease_owner == worker)
    with engine.begin() as conn:
        return conn.execute(sa.update(PT).where(*conditions)
                            .values(status=TriggerStatus.PENDING, lease_owner=None, lease_expires_at=None)).rowcount


def purge_decided(engine: Engine, older_than: datetime) -> int:
    """Delete triggers decided (sent, skipped, cancelled) before ``older_than``."""
    with engine.begin() as conn:
        return conn.execute(sa.delete(PT).where(
            PT.c.status.in_((TriggerStatus.SENT, TriggerStatus.SKIPPED, TriggerStatus.CANCELLED)),
            PT.c.decided_at < older_than)).rowcount
