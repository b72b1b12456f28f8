"""The order of contact locks across processes on PostgreSQL (one advisory lock, shared or exclusive).

Every transaction that writes contacts takes their row locks. Two transactions that each hold some contacts
and wait for the other's deadlock (PostgreSQL breaks the cycle after ``deadlock_timeout``, a second, by
aborting one). The rule that keeps the cycles out:

- **in id order, all at once**: a set-based apply run (``ctdd.ingest.set_apply``: one
  ``SELECT ... ORDER BY id FOR UPDATE`` before it writes) and the dispatcher's settle of a batch
  (``ctdd.delivery.outbox.lock_contacts``) lock every contact they will write in one statement, in ascending
  id order. Any number of these can run at once: they wait for each other, never in a circle. They take the
  advisory lock below **shared**.
- **as they go**: other units of work (orders, carts, customer messages, applied one at a time) lock each
  contact when they get to it, in the order of their events. Two of these, or one of these and an in-order
  locker, could wait in a circle, so they take the advisory lock **exclusive**: they run alone.

The advisory lock is taken first in the transaction (before any row lock), so waiting for it never closes a
circle. It is transaction-scoped (released at COMMIT or ROLLBACK). SQLite needs none of this: it has one
writer at a time.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

#: the key of the advisory lock ("ctddinbx": it first ordered the inbox processors' transactions)
APPLY_LOCK_KEY = 0x63746464_696E6278 & 0x7FFFFFFFFFFFFFFF

_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(:k)")
_EXCLUSIVE = sa.text("SELECT pg_advisory_xact_lock(:k)")


def take_apply_lock(conn: Any, *, in_order: bool) -> None:
    """On PostgreSQL, the first statement of a transaction that writes contacts: ``in_order`` (shared) when it
    locks all its contacts at once in id order, else exclusive. ``conn``: a Connection or a Session."""
    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn
    if bind.dialect.name == "postgresql":
        conn.execute(_SHARED if in_order else _EXCLUSIVE, {"k": APPLY_LOCK_KEY})
