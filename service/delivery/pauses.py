"""Per-account delivery episodes kept in the database, so that every worker sharing it sees them.

Two kinds of episode, each one row of the ``lease`` table per account (no table of their own):

* ``dotdigital.auth_pause:<account>``: Dotdigital refused the account's credentials (HTTP 401/403). While the
  row exists no worker claims messages of the account. ``cursor``: ``{"status", "since", "backoff"}``;
  ``expires_at``: when the next probe (a cheap authenticated call) is due; ``owner``: the worker that probes.
* ``dotdigital.parked:<account>``: messages of the account were parked after ``max_attempts`` retryable
  failures. ``cursor``: ``{"status", "since"}``; ``expires_at``: when the next park probe is due.

Opening an episode is an insert that does nothing when the row exists, so exactly one worker learns that it
opened it (and logs the one error of the episode). Closing deletes the row. Every function is one short
transaction; times are timezone-aware UTC.

Also here: the outbox side of parking: resume every parked message of an account (:func:`resume_parked`), or
only its oldest one as a probe (:func:`probe_parked`); how often a message was resumed (:func:`park_counts`:
``[dispatcher] max_parks``); and what an auth failure of a message follows (:func:`auth_history`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ctdd.db.models import DeliveryAttempt, Lease, OutboxMessage, OutboxStatus

LT = Lease.__table__
OM = OutboxMessage.__table__
DA = DeliveryAttempt.__table__
DA2 = DA.alias("later_redrive")

#: ``delivery_attempt.outcome`` of a parked message resumed because its account delivered another message
RESUMED = "resumed"
#: ``delivery_attempt.outcome`` of an operator's retry (``ctdd.delivery.redrive.REDRIVEN``, a layer above)
REDRIVEN = "redriven"

AUTH = "dotdigital.auth_pause:"
PARKED = "dotdigital.parked:"
KINDS = (AUTH, PARKED)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def open_episode(engine: Engine, kind: str, account: str, *, owner: str, cursor: dict[str, Any], due: datetime,
                 now: datetime) -> bool:
    """Start an episode of ``kind`` for ``account``, its next probe at ``due``; False when one is already open."""
    row = {"name": kind + account, "owner": owner, "expires_at": due, "cursor": {**cursor, "since": _iso(now)},
           "updated_at": now}
    with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        inserted = conn.execute(dialect.insert(LT).values(row).on_conflict_do_nothing().returning(LT.c.name))
        return inserted.first() is not None


def reschedule(engine: Engine, kind: str, account: str, *, due: datetime, now: datetime,
               cursor: dict[str, Any] | None = None) -> bool:
    """Set the next probe of an open episode (and update its cursor); False when the episode is closed."""
    values: dict[str, Any] = {"expires_at": due, "updated_at": now}
    with engine.begin() as conn:
        if cursor is not None:
            old = conn.execute(sa.select(LT.c.cursor).where(LT.c.name == kind + account)).scalar_one_or_none()
            values["cursor"] = {**(old or {}), **cursor}
        return conn.execute(sa.update(LT).where(LT.c.name == kind + account).values(**values)).rowcount == 1


def close_episode(engine: Engine, kind: str, account: str) -> bool:
    """End the episode; False when there was none (another worker ended it first)."""
    with engine.begin() as conn:
        return conn.execute(sa.delete(LT).where(LT.c.name == kind + account)).rowcount == 1


def open_episodes(engine: Engine) -> dict[str, dict[str, dict[str, Any]]]:
    """``{kind: {account: cursor}}`` of every open episode."""
    result: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
    with engine.begin() as conn:
        rows = conn.execute(sa.select(LT.c.name, LT.c.cursor).where(
            sa.or_(*(LT.c.name.startswith(kind, autoescape=True) for kind in KINDS)))).all()
    for name, cursor in rows:
        for kind in KINDS:
            if name.startswith(kind):
                result[kind][name[len(kind):]] = dict(cursor or {})
    return result


def take_due(engine: Engine, kind: str, *, owner: str, now: datetime, hold_seconds: float) -> list[tuple[str, dict]]:
    """Take the episodes of ``kind`` whose probe is due: each goes to one worker, whose next probe is due
    ``hold_seconds`` later unless it reschedules. Returns ``[(account, cursor)]``."""
    with engine.begin() as conn:
        due = conn.execute(sa.select(LT.c.name).where(LT.c.name.startswith(kind, autoescape=True),
                                                      LT.c.expires_at <= now)).scalars().all()
        taken = []
        for name in due:
            row = conn.execute(
                sa.update(LT).where(LT.c.name == name, LT.c.expires_at <= now)
                .values(owner=owner, expires_at=now + timedelta(seconds=hold_seconds), updated_at=now)
                .returning(LT.c.cursor)
            ).first()
            if row is not None:
                taken.append((name[len(kind):], dict(row.cursor or {})))
        return taken


def resume_parked(engine: Engine, account: str, *, now: datetime) -> int:
    """Every parked message of ``account`` -> ``pending``, due now, attempts counted afresh. Each keeps its
    ``sequence``, so the partitions deliver them in their order. Each resumption is written to
    ``delivery_attempt`` (outcome ``resumed``): :func:`park_counts` counts them."""
    with engine.begin() as conn:
        parked = conn.execute(sa.select(OM.c.id, OM.c.attempts).where(
            OM.c.account == account, OM.c.status == OutboxStatus.PARKED)).all()
        if not parked:
            return 0
        resumed = set(conn.execute(
            sa.update(OM).where(OM.c.id.in_([r.id for r in parked]), OM.c.status == OutboxStatus.PARKED)
            .values(status=OutboxStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
            .returning(OM.c.id)
        ).scalars())
        if resumed:
            conn.execute(sa.insert(DA), [
                dict(message_id=r.id, attempt=r.attempts, outcome=RESUMED, response_code=None,
                     error=f"resumed: account {account} delivered another message"[:2000], worker=None,
                     started_at=now, finished_at=now)
                for r in parked if r.id in resumed])
        return len(resumed)


def park_counts(engine: Engine, message_ids: list[int]) -> dict[int, int]:
    """How many times each message was resumed from ``parked`` because its account delivered other messages
    (:func:`resume_parked`), since an operator last retried it (``ctdd failures retry``: outcome
    ``redriven``). Park probes do not count: they run while the account delivers nothing."""
    if not message_ids:
        return {}
    later = sa.select(sa.func.max(DA2.c.id)).where(DA2.c.message_id == DA.c.message_id,
                                                   DA2.c.outcome == REDRIVEN).scalar_subquery()
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(DA.c.message_id, sa.func.count())
            .where(DA.c.message_id.in_(message_ids), DA.c.outcome == RESUMED, DA.c.id > sa.func.coalesce(later, 0))
            .group_by(DA.c.message_id)
        ).all()
    counts = {mid: 0 for mid in message_ids}
    counts.update({mid: int(n) for mid, n in rows})
    return counts


def auth_history(engine: Engine, account: str, message_ids: list[int]) -> tuple[bool, dict[int, int | None]]:
    """(is an auth pause of ``account`` open?, the last response code of each message) in one transaction:
    a message whose last code was 401/403 while no pause is open met it again after a probe proved the
    account's credentials work (only a successful probe ends an auth pause)."""
    with engine.begin() as conn:
        paused = conn.execute(sa.select(LT.c.name).where(LT.c.name == AUTH + account)).first() is not None
        codes = dict(conn.execute(sa.select(OM.c.id, OM.c.last_response_code)
                                  .where(OM.c.id.in_(message_ids))).all()) if message_ids else {}
    return paused, codes


def probe_parked(engine: Engine, account: str, *, attempts: int, now: datetime) -> int | None:
    """The oldest parked message of ``account`` -> ``pending`` with ``attempts`` already counted (one less
    than the limit: one more retryable failure parks it again). Its id, or None when nothing is parked."""
    with engine.begin() as conn:
        oldest = conn.execute(
            sa.select(sa.func.min(OM.c.id)).where(OM.c.account == account, OM.c.status == OutboxStatus.PARKED)
        ).scalar()
        if oldest is None:
            return None
        conn.execute(
            sa.update(OM).where(OM.c.id == oldest, OM.c.status == OutboxStatus.PARKED)
            .values(status=OutboxStatus.PENDING, attempts=attempts, next_attempt_at=now, updated_at=now)
        )
        return oldest
