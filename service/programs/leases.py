"""Named leases (``lease`` table): one holder at a time per name, across processes sharing the database.

A lease is taken when it is free, expired or already ours (one conditional UPDATE, atomic on SQLite and
PostgreSQL), renewed by taking it again, and handed back with :func:`release`. Its ``cursor`` (JSON) keeps
what the holder wants the next holder to know (the enrolment batcher keeps its account pause there).

Also :func:`insert_ignore`: a multi-row ``INSERT ... ON CONFLICT DO NOTHING`` on both dialects.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ctdd.db.models import Lease

LT = Lease.__table__


def insert_ignore(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows``, leaving out those a unique constraint already has; returns how many were inserted."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return conn.execute(dialect.insert(table).values(rows).on_conflict_do_nothing()).rowcount


def acquire(engine: Engine, name: str, owner: str, seconds: float, now: datetime) -> bool:
    """Take (or renew) the lease ``name`` for ``owner`` until ``now + seconds``; False while another holds it."""
    with engine.begin() as conn:
        insert_ignore(conn, LT, [{"name": name, "owner": None, "expires_at": None, "cursor": None, "updated_at": now}])
        taken = conn.execute(
            sa.update(LT)
            .where(LT.c.name == name,
                   sa.or_(LT.c.owner.is_(None), LT.c.owner == owner, LT.c.expires_at.is_(None), LT.c.expires_at <= now))
            .values(owner=owner, expires_at=now + timedelta(seconds=seconds), updated_at=now)
        ).rowcount
    return bool(taken)


def release(engine: Engine, name: str, owner: str, now: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(LT).where(LT.c.name == name, LT.c.owner == owner)
                     .values(owner=None, expires_at=None, updated_at=now))


def cursor(conn: Connection, name: str) -> dict[str, Any]:
    value = conn.execute(sa.select(LT.c.cursor).where(LT.c.name == name)).scalar_one_or_none()
    return dict(value) if isinstance(value, dict) else {}


def set_cursor(conn: Connection, name: str, value: dict[str, Any], now: datetime) -> None:
    conn.execute(sa.update(LT).where(LT.c.name == name).values(cursor=value, updated_at=now))
