"""Outbox claim rules on the real databases (SQLite and PostgreSQL)."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import outbox
from service.db.engine import create_db_engine, upgrade_database, utcnow
from service.db.models import Contact


@pytest.fixture
def engine(database_url):
    eng = create_db_engine(database_url)
    upgrade_database(eng)
    yield eng
    eng.dispose()


def _contact(engine) -> int:
    with Session(engine) as s, s.begin():
        c = Contact(account="acc", created_at=utcnow(), updated_at=utcnow())
        s.add(c)
        s.flush()
        return c.id


def _enqueue(engine, contact_id, n=1):
    ids = []
    with Session(engine) as s, s.begin():
        for i in range(n):
            ids.append(outbox.enqueue(s, contact_id=contact_id, account="acc", kind="contact.upsert",
                                      payload={"body": {"i": i}}, ref=outbox.RecordRef("uk")))
    return ids


def test_only_partition_heads_are_claimed_and_sequences_are_consecutive(engine):
    a, b = _contact(engine), _contact(engine)
    ids_a = _enqueue(engine, a, 3)
    ids_b = _enqueue(engine, b, 2)
    with engine.connect() as conn:
        seqs = conn.execute(sa.text("SELECT sequence FROM outbox_message WHERE contact_id = :c ORDER BY id"), {"c": a}).scalars().all()
    assert seqs == [1, 2, 3]
    claimed = outbox.claim(engine, worker="w1", limit=10, lease_seconds=30)
    assert [m.id for m in claimed] == [ids_a[0], ids_b[0]]
    assert outbox.claim(engine, worker="w2", limit=10, lease_seconds=30) == []


def test_failing_head_blocks_only_its_partition_and_dead_head_releases_it(engine):
    a, b = _contact(engine), _contact(engine)
    ids_a = _enqueue(engine, a, 2)
    ids_b = _enqueue(engine, b, 2)
    head_a, head_b = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    now = utcnow()
    outbox.mark_retry(engine, head_a, worker="w", started_at=now, delay_seconds=60, response_code=503, error="down")
    outbox.mark_delivered(engine, head_b, worker="w", started_at=now, response_code=200)
    assert [m.id for m in outbox.claim(engine, worker="w", limit=10, lease_seconds=30)] == [ids_b[1]]
    # once due, the failed head is retried before anything else of its partition
    later = utcnow() + timedelta(seconds=61)
    [again] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, now=later)
    assert again.id == ids_a[0] and again.attempts == 1
    outbox.mark_dead(engine, again, worker="w", started_at=now, response_code=400, error="bad")
    assert [m.id for m in outbox.claim(engine, worker="w", limit=10, lease_seconds=30)] == [ids_a[1]]


def test_expired_leases_are_rescued_and_lost_leases_cannot_complete(engine):
    a = _contact(engine)
    [mid] = _enqueue(engine, a)
    [m] = outbox.claim(engine, worker="dead-worker", limit=1, lease_seconds=1)
    assert outbox.rescue_expired(engine, now=utcnow() + timedelta(seconds=2)) == 1
    [m2] = outbox.claim(engine, worker="w2", limit=1, lease_seconds=30)
    assert m2.id == mid
    # the dead worker wakes up late: its completion is refused, the new owner's is kept
    assert outbox.mark_delivered(engine, m, worker="dead-worker", started_at=utcnow(), response_code=200) is False
    assert outbox.mark_delivered(engine, m2, worker="w2", started_at=utcnow(), response_code=200) is True
    assert outbox.counts_by_status(engine) == {"delivered": 1}


def test_one_in_flight_message_per_partition_is_enforced_by_the_database(engine):
    a = _contact(engine)
    _enqueue(engine, a, 2)
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE outbox_message SET status = 'in_flight'"))
