"""ctdd.db.unnest on the real PostgreSQL: the rows it writes are the rows SQLAlchemy's own multi-row INSERT writes
(JSON payloads, time zones, NULLs, small integers), its RETURNING gives each row's id, and its statement text is
the same for 1 and 300 rows (what makes it cheap)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ctdd.db.engine import create_db_engine, upgrade_database
from ctdd.db.unnest import unnest_insert
from ctdd.delivery.outbox import OM
from support.helpers import reset_postgres

pytestmark = pytest.mark.postgres

COLUMNS = ("partition_key", "sequence", "account", "contact_id", "kind", "payload", "status", "attempts",
           "next_attempt_at", "store_key", "record_type", "record_id", "record_version", "priority", "created_at",
           "updated_at")
COMPARED = [c for c in COLUMNS] + ["id"]


def _rows(prefix: str, n: int) -> list[dict]:
    now = datetime(2026, 12, 3, 11, 0, tzinfo=timezone.utc)
    return [{
        "partition_key": f"{prefix}:{i}", "sequence": i, "account": "main", "contact_id": i if i % 3 else None,
        "kind": "insight.upsert",
        "payload": {"record": {"n": i, "name": "Zoë's \"quoted\" \\ name", "nested": [1, None, {"a": True}]},
                    "empty": {}, "when": "2026-12-03T11:00:00Z"},
        "status": "pending", "attempts": 0,
        # one in another offset: stored as the same instant
        "next_attempt_at": (now + timedelta(seconds=i)).astimezone(timezone(timedelta(hours=5))),
        "store_key": "uk" if i % 2 else None, "record_type": "event", "record_id": f"r-{i}",
        "record_version": None if i % 4 == 0 else 2 ** 40 + i, "priority": i % 3, "created_at": now, "updated_at": now,
    } for i in range(n)]


def _stored(conn, prefix: str) -> list[dict]:
    rows = conn.execute(sa.select(*(OM.c[c] for c in COMPARED)).where(OM.c.partition_key.like(f"{prefix}:%"))
                        .order_by(OM.c.sequence)).all()
    return [{k: v for k, v in r._mapping.items() if k != "id"} for r in rows]


def test_unnest_insert_writes_what_sqlalchemys_insert_writes(postgres_database):
    reset_postgres(postgres_database)
    engine = create_db_engine(postgres_database)
    upgrade_database(engine)
    insert = unnest_insert(OM, COLUMNS, returning=("id", "partition_key", "sequence"))
    try:
        with engine.begin() as conn:
            returned = conn.execute(insert.statement, insert.params(_rows("unnest", 300))).all()
            conn.execute(sa.insert(OM), _rows("core", 300))
            one = conn.execute(insert.statement, insert.params(_rows("single", 1))).all()
        with engine.connect() as conn:
            by_unnest, by_core = _stored(conn, "unnest"), _stored(conn, "core")
            ids = dict(conn.execute(sa.select(OM.c.partition_key, OM.c.id)).all())
    finally:
        engine.dispose()

    assert len(by_unnest) == 300
    for a, b in zip(by_unnest, by_core):
        assert {**a, "partition_key": None} == {**b, "partition_key": None}
    assert by_unnest[7]["payload"]["record"]["name"] == "Zoë's \"quoted\" \\ name"
    assert by_unnest[1]["next_attempt_at"] == datetime(2026, 12, 3, 11, 0, 1, tzinfo=timezone.utc)
    # RETURNING: every row's own id, matched by (partition, sequence)
    assert sorted((r.partition_key, r.sequence, r.id) for r in returned) == sorted(
        (f"unnest:{i}", i, ids[f"unnest:{i}"]) for i in range(300))
    assert [(r.partition_key, r.id) for r in one] == [("single:0", ids["single:0"])]
    # the statement does not grow with the rows
    text = str(insert.statement)
    assert ":u_payload" in text and text.count(":u_") == len(COLUMNS)
