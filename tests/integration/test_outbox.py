"""Outbox claim rules on the real databases (SQLite and PostgreSQL)."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.delivery import outbox
from ctdd.db.engine import utcnow
from ctdd.db.models import Contact


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


def test_coalescing_merges_only_unclaimed_upserts_up_to_another_kind(engine):
    from ctdd.db.models import FieldState

    a, b = _contact(engine), _contact(engine)
    with Session(engine) as s, s.begin():
        def put(cid, kind, payload):
            return outbox.enqueue(s, contact_id=cid, account="acc", kind=kind, payload=payload,
                                  ref=outbox.RecordRef("uk", "customer", f"c{cid}", 1))
        a1 = put(a, "contact.upsert", {"body": {"dataFields": {"A": 1, "B": 1}}})
        a2 = put(a, "contact.upsert", {"body": {"dataFields": {"B": 2}, "lists": [3]}})
        a3 = put(a, "insight.upsert", {"collection": "Orders", "record_id": "o1", "record": {}})
        a4 = put(a, "contact.upsert", {"body": {"dataFields": {"B": 4}}})
        s.add(FieldState(contact_id=a, field="dataFields.B", value=2, message_id=a2, updated_at=utcnow()))
        b1 = put(b, "contact.upsert", {"body": {"dataFields": {"X": 1}}})
    # b's head is in flight (another worker) when a later upsert of b arrives
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status='in_flight', lease_owner='w2', "
                             "lease_expires_at=:t WHERE id=:i"), {"t": utcnow() + timedelta(seconds=30), "i": b1})
    with Session(engine) as s, s.begin():
        b2 = outbox.enqueue(s, contact_id=b, account="acc", kind="contact.upsert",
                            payload={"body": {"dataFields": {"X": 2}}}, ref=outbox.RecordRef("uk"))

    claimed = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, coalesce=True)
    assert [m.id for m in claimed] == [a1]  # b2 waits behind b1 (in flight): nothing merged into b1
    head = claimed[0]
    assert head.merged_ids == (a2,)  # stops at the insight record a3; a4 stays behind it
    assert head.payload["body"] == {"dataFields": {"A": 1, "B": 2}, "lists": [3]}
    assert head.payload["merged"][0]["record_id"] == f"c{a}"
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.text("SELECT id, status, merged_into FROM outbox_message"))}
    assert (rows[a2].status, rows[a2].merged_into) == ("merged", a1)
    assert rows[a3].status == rows[a4].status == rows[b2].status == "pending"

    # the merged message takes its head's fate: dead, and its field values are forgotten
    outbox.mark_dead(engine, head, worker="w", started_at=utcnow(), response_code=400, error="bad")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM outbox_message WHERE id=:i"), {"i": a2}).scalar_one() == "dead"
        assert conn.execute(sa.text("SELECT count(*) FROM field_state WHERE message_id=:i"), {"i": a2}).scalar_one() == 0


@pytest.mark.parametrize("kind", ["contact.upsert", "insight.upsert"])
def test_coalescing_stops_at_another_store_and_at_a_message_that_carries_merged_ones(engine, kind):
    """A merged run keeps to the head's store (each store's transform plugins shape its own messages) and never
    swallows a message that carries merged ones of its own (an operator's retry of a dead merged head puts it,
    with its merged messages, behind later ones): those would be left merged into nothing, never settled."""
    a = _contact(engine)

    def payload(i: int) -> dict:
        if kind == "contact.upsert":
            return {"body": {"dataFields": {f"F{i}": i}}}
        return {"collection": "ProductViews", "record_id": f"p{i}", "record": {"productId": f"p{i}"}}

    with Session(engine) as s, s.begin():
        def put(i: int, store: str, extra: dict | None = None) -> int:
            return outbox.enqueue(s, contact_id=a, account="acc", kind=kind, payload={**payload(i), **(extra or {})},
                                  ref=outbox.RecordRef(store))
        m1, m2, m3 = put(1, "uk"), put(2, "uk"), put(3, "de")
    claim = dict(coalesce=kind == "contact.upsert", merge_views=kind == "insight.upsert")
    [head] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, **claim)
    assert head.id == m1 and head.merged_ids == (m2,)  # not m3, of store de
    outbox.mark_delivered(engine, head, worker="w", started_at=utcnow(), response_code=200)
    [de] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, **claim)
    assert de.id == m3 and de.merged_ids == ()
    outbox.mark_delivered(engine, de, worker="w", started_at=utcnow(), response_code=200)

    # a message carrying merged ones of its own, queued behind a later one (as a retried dead head is)
    with Session(engine) as s, s.begin():
        later = outbox.enqueue(s, contact_id=a, account="acc", kind=kind, payload=payload(4), ref=outbox.RecordRef("uk"))
        carrier = outbox.enqueue(s, contact_id=a, account="acc", kind=kind,
                                 payload={**payload(5), "merged": [{"id": 999_999, "sequence": 1}]},
                                 ref=outbox.RecordRef("uk"))
    [head] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, **claim)
    assert head.id == later and head.merged_ids == ()  # the carrier is not swallowed
    outbox.mark_delivered(engine, head, worker="w", started_at=utcnow(), response_code=200)
    [next_head] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, **claim)
    assert next_head.id == carrier
