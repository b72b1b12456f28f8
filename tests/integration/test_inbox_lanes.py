"""The inbox's apply lanes ([inbox] lanes, PostgreSQL): each queued event carries a hash of its contact identity,
each lane of a worker claims only its own share, and together they apply every event exactly once, in the
order two workers would (the contact's row lock numbers its outbox messages), over real gRPC and PostgreSQL."""

from __future__ import annotations

import zlib

import pytest

from support import make_settings, reset_postgres, wait_for
from ctdd.api.track_event import queued_event
from ctdd.config import InboxConfig, replace
from ctdd.ingest import inbox
from ctdd.runtime.app import App
from ctdd.sync.v1 import sync_service_pb2 as pb

QUEUED = pb.PROCESSING_QUEUED


def view(i: int, email: str, product: str) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key="uk", processing=QUEUED, behavioural_event=pb.BehaviouralEvent(
        event_id=f"lane-{i}", identity=pb.ContactIdentity(email=email), currency="GBP",
        product_viewed=pb.ProductViewed(product_id=product)))


def test_an_events_lane_is_a_stable_hash_of_its_identity():
    assert inbox.lane_of("") == 0
    assert inbox.lane_of("a@example.com") == zlib.crc32(b"a@example.com") % inbox.LANE_HASHES
    assert all(0 <= inbox.lane_of(f"c{i}@example.com") < inbox.LANE_HASHES for i in range(1000))
    assert len({inbox.lane_of(f"c{i}@example.com") % 2 for i in range(20)}) == 2  # both lanes get work


async def test_the_same_contact_gets_the_same_lane_however_its_email_is_written(database_url, sandbox):
    settings = make_settings(database_url, sandbox)
    events = App(settings).events
    lanes = {queued_event(events, settings, view(1, email, "p-1")).lane
             for email in ("Shopper@Example.com", " shopper@example.com", "shopper@example.com")}
    assert lanes == {inbox.lane_of("shopper@example.com")}
    # an internationalised domain in either spelling is one contact, so one lane
    idn = {queued_event(events, settings, view(1, email, "p-1")).lane
           for email in ("jane@b\u00fccher.de", "Jane@xn--bcher-kva.de")}
    assert idn == {inbox.lane_of("jane@xn--bcher-kva.de")}
    by_customer = pb.TrackEventRequest(store_key="uk", processing=QUEUED, behavioural_event=pb.BehaviouralEvent(
        event_id="c-1", identity=pb.ContactIdentity(customer_id="cust-9"), product_viewed=pb.ProductViewed(
            product_id="p-1")))
    assert queued_event(events, settings, by_customer).lane == inbox.lane_of("cust-9")
    # every version of a cart in one lane (applied in arrival order), whoever the shopper is by then
    carts = {queued_event(events, settings, pb.TrackEventRequest(
        store_key="uk", processing=QUEUED, behavioural_event=pb.BehaviouralEvent(
            event_id=f"cart-{i}", identity=pb.ContactIdentity(**identity),
            cart_updated=pb.CartUpdated(cart_id="cart-7", cart_version=i + 1)))).lane
        for i, identity in enumerate([{"anonymous_id": "anon-1"}, {"email": "later@example.com"},
                                      {"customer_id": "cust-1", "email": "later@example.com"}])}
    assert carts == {inbox.lane_of("cart:cart-7")}


@pytest.mark.postgres
async def test_two_lanes_apply_every_event_once_each_taking_its_own_contacts(service_factory, postgres_database,
                                                                            sandbox):
    reset_postgres(postgres_database)
    settings = make_settings(postgres_database, sandbox)
    settings = replace(settings, inbox=InboxConfig(batch_size=16, poll_interval_seconds=0.05, lanes=2))
    svc = await service_factory(settings, run_dispatcher=False)  # ingest only: nothing applied yet
    emails = [f"lane{c}@example.com" for c in range(30)]
    requests = [view(i, emails[i % 30], f"p-{i % 11}") for i in range(240)]
    for start in range(0, len(requests), 60):
        resp = await svc.stub.TrackEventBatch(pb.TrackEventBatchRequest(events=requests[start:start + 60]))
        assert all(r.response.queued for r in resp.results)
    stored = svc.rows("SELECT dedupe_key, lane FROM event_inbox ORDER BY id")
    assert [r["lane"] for r in stored] == [inbox.lane_of(emails[i % 30]) for i in range(240)]

    # a lane's claim takes only its own rows (and leaves them to be claimed again: short lease)
    claimed = inbox.claim(svc.app.engine, worker="probe", limit=500, lease_seconds=0.001, lane=(1, 2))
    lanes = {r["id"]: r["lane"] for r in svc.rows("SELECT id, lane FROM event_inbox")}
    assert claimed and {lanes[e.id] % 2 for e in claimed} == {1}
    assert len(claimed) == sum(1 for r in stored if r["lane"] % 2 == 1)

    worker = await service_factory(settings, serve_grpc=False)
    assert [p.lane for p in worker.app.inbox_processor.processors] == [(0, 2), (1, 2)]
    await wait_for(lambda: not svc.rows("SELECT id FROM event_inbox WHERE status = 'pending'"), timeout=60,
                   what="every queued event applied")
    assert {r["status"] for r in svc.rows("SELECT status FROM event_inbox")} == {"done"}
    assert len(svc.rows("SELECT dedupe_key FROM processed_event")) == 240
    # (a lane counts its batch once the commit has answered, a moment after the rows are done)
    await wait_for(lambda: worker.app.inbox_processor.stats["applied"] == 240, what="every event counted")
    applied = [p.stats["applied"] for p in worker.app.inbox_processor.processors]
    assert all(applied)  # both lanes did their share
    assert worker.app.inbox_processor.stats["applied"] == 240
    # each contact's messages numbered without a gap or a repeat, whichever lane applied its events
    messages = svc.rows("SELECT partition_key, sequence FROM outbox_message ORDER BY partition_key, sequence")
    by_partition: dict[str, list[int]] = {}
    for m in messages:
        by_partition.setdefault(m["partition_key"], []).append(m["sequence"])
    assert len(by_partition) == 30
    assert all(seq == list(range(seq[0], seq[0] + len(seq))) for seq in by_partition.values())
    # one browse record per (contact, product) viewed
    records = svc.rows("SELECT DISTINCT contact_id, record_id FROM outbox_message WHERE kind = 'insight.upsert'")
    assert len(records) == len({(i % 30, i % 11) for i in range(240)})
