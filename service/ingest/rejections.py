"""Retention of ``rejected_record``: rows older than ``[service] rejected_retention_days`` are deleted.

The inbox processor of every running service (``ctdd serve`` with its dispatcher, ``ctdd worker``) calls
:func:`purge_rejected` on its purge tick. The work is bounded: each batch reads at most ``batch_size`` of the
oldest rows by primary key (no index on ``created_at`` is needed, ids grow with time) and deletes those of
them past the retention; a tick runs at most ``max_batches`` batches and stops at the first batch that
deletes nothing.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.db.models import RejectedRecord

__all__ = ["purge_rejected"]

REJECTED = RejectedRecord.__table__
BATCH_SIZE = 1000
MAX_BATCHES = 20


def purge_rejected(engine: Engine, *, older_than: datetime, batch_size: int = BATCH_SIZE,
                   max_batches: int = MAX_BATCHES) -> int:
    """Delete rejected records written before ``older_than``, in batches of at most ``batch_size`` rows (one
    transaction each), at most ``max_batches`` batches. Returns the number of rows deleted."""
    deleted = 0
    after = 0  # ids at or below it were looked at by an earlier batch of this call and kept
    for _ in range(max_batches):
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(REJECTED.c.id, (REJECTED.c.created_at < older_than).label("expired"))
                .where(REJECTED.c.id > after).order_by(REJECTED.c.id).limit(batch_size)
            ).all()
            expired = [row.id for row in rows if row.expired]
            if expired:
                deleted += conn.execute(sa.delete(REJECTED).where(REJECTED.c.id.in_(expired))).rowcount
        if not expired or len(rows) < batch_size:
            break
        after = rows[-1].id
    return deleted
