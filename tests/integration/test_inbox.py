"""TrackEvent with PROCESSING_QUEUED: the event inbox, over real gRPC, against the fake commercetools API and
the Dotdigital sandbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa

from support import ct_payloads as ct
from support import all_settled, field_violations, make_settings, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.api.track_event import stored_request_preparer
from ctdd.ingest import inbox
from ctdd.ingest.contact_sync import ContactSync
from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.ingest.events import EventProcessor
from ctdd.hooks.manager import create_plugin_manager
from ctdd.testing.commercetools_fake import FakeCommercetools
from ctdd.db.transactions import TransactionRunner

QUEUED = pb.PROCESSING_QUEUED


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


def make_inbox_settings(database_url, sandbox, fake_ct, **inbox_cfg):
    settings = make_settings(database_url, sandbox, commercetools=fake_ct)
    from ctdd.config import InboxConfig, replace

    cfg = dict(batch_size=16, poll_interval_seconds=0.05, backoff_base_seconds=0.05, backoff_cap_seconds=0.2,
               lease_seconds=5.0)
    cfg.update(inbox_cfg)
    return replace(settings, inbox=InboxConfig(**cfg))


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    return await service_factory(make_inbox_settings(database_url, sandbox, fake_ct))


def queued_delivery(delivery: bytes, store: str = "uk") -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key=store, commercetools_delivery=delivery, processing=QUEUED)


def cart_event(event_id: str, version: int, email: str, total_cents: int) -> pb.TrackEventRequest:
    event = pb.BehaviouralEvent(event_id=event_id, identity=pb.ContactIdentity(email=email), currency="GBP",
                                cart_updated=pb.CartUpdated(cart_id="cart-q", cart_version=version))
    event.cart_updated.cart.update({"lineItems": [ct.line_item("p1", "HAT-1", "Blue Hat", 1, total_cents)],
                                    "totalPrice": ct.money(total_cents), "cartState": "Active"})
    event.occurred_at.FromJsonString(f"2026-11-02T10:00:0{version}Z")
    return pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=QUEUED)


def inbox_rows(svc):
    return svc.rows("SELECT id, dedupe_key, status, attempts, outcome, last_error FROM event_inbox ORDER BY id")


def all_processed(svc) -> bool:
    rows = inbox_rows(svc)
    return bool(rows) and all(r["status"] != "pending" for r in rows)


async def test_queued_events_are_stored_answered_and_applied_in_the_background(svc, sandbox):
    created = ct.message("customer", "cust-q1", "CustomerCreated", version=1,
                         customer=ct.customer("cust-q1", "queue@example.com", first="Quinn"))
    first = await svc.stub.TrackEvent(queued_delivery(ct.raw(created)))
    assert first.queued and not first.duplicate
    assert not first.outbox_message_ids and not first.notifications  # nothing applied yet when answered
    # the same message again, in another wrapper, while the first may still be queued: duplicate at once
    again = await svc.stub.TrackEvent(queued_delivery(ct.pubsub_push(created)))
    assert again.duplicate and not again.queued

    v1 = await svc.stub.TrackEvent(cart_event("cart-ev-1", 1, "queue@example.com", 1000))
    v2 = await svc.stub.TrackEvent(cart_event("cart-ev-2", 2, "queue@example.com", 2500))
    assert v1.queued and v2.queued

    await wait_for(lambda: all_processed(svc), what="inbox processed")
    rows = inbox_rows(svc)
    assert [(r["status"], r["outcome"]) for r in rows] == [("done", "applied")] * 3
    assert rows[0]["dedupe_key"] == created["id"]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    contact = sandbox.get_contact(email="queue@example.com")
    assert contact["dataFields"]["FIRSTNAME"] == "Quinn" and contact["dataFields"]["CUSTOMER_ID"] == "cust-q1"
    carts = sandbox.insight_records("CartInsight", contact_email="queue@example.com")
    assert carts["cart-q"]["grandTotal"] == 25.0  # applied in arrival order: version 2 last
    assert len(svc.rows("SELECT dedupe_key FROM processed_event")) == 3


async def test_invalid_queued_events_are_refused_before_anything_is_stored(svc):
    missing_id = pb.BehaviouralEvent(identity=pb.ContactIdentity(email="x@example.com"),
                                     product_viewed=pb.ProductViewed(product_id="p-1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=missing_id, processing=QUEUED))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(err.value)) == ["behavioural_event.event_id"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.TrackEvent(queued_delivery(b"{not json", store="uk"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.TrackEvent(queued_delivery(b"{}", store="nowhere"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert inbox_rows(svc) == []
    rejected = svc.rows("SELECT operation FROM rejected_record")
    assert len(rejected) == 3 and {r["operation"] for r in rejected} == {"TrackEvent"}


async def test_batch_stores_the_valid_queued_events_and_reports_each(svc, sandbox):
    good = [cart_event(f"b-{i}", i + 1, f"batch{i}@example.com", 100 * (i + 1)) for i in range(3)]
    bad = pb.TrackEventRequest(store_key="uk", processing=QUEUED)  # no payload
    irrelevant = queued_delivery(ct.raw({"notificationType": "Event", "projectKey": ct.PROJECT, "id": "ev-imp-1",
                                          "type": "ImportContainerCreated", "resource": {"typeId": "import-container"}}))
    resp = await svc.stub.TrackEventBatch(pb.TrackEventBatchRequest(events=[good[0], bad, good[1], good[2], good[0]]))
    assert [(r.index, r.code) for r in resp.results] == [(0, 0), (1, 3), (2, 0), (3, 0), (4, 0)]
    assert [r.response.queued for r in resp.results] == [True, False, True, True, False]
    assert resp.results[4].response.duplicate  # the same event twice in one batch is stored once
    assert len(inbox_rows(svc)) == 3
    ignored = await svc.stub.TrackEvent(irrelevant)
    assert not ignored.queued and [n.outcome for n in ignored.notifications] == [pb.EVENT_OUTCOME_IGNORED]
    await wait_for(lambda: all_processed(svc), what="inbox processed")
    await wait_for(lambda: all_settled(svc), what="deliveries")
    for i in range(3):
        assert sandbox.get_contact(email=f"batch{i}@example.com") is not None


async def test_fetch_failures_are_retried_by_the_inbox_not_the_caller(svc, sandbox, fake_ct):
    fake_ct.add("customers", ct.customer("cust-down", "down@example.com", version=4, first="Dana"))
    fake_ct.inject_fault(status=503, times=12, path_contains="/customers/cust-down")
    resp = await svc.stub.TrackEvent(queued_delivery(ct.raw(ct.message(
        "customer", "cust-down", "CustomerFirstNameSet", version=4, firstName="Dana"))))
    assert resp.queued  # the caller is done: the fetch is the inbox's business now
    row = (await wait_for(lambda: [r for r in inbox_rows(svc) if r["status"] == "done"], timeout=20,
                          what="event applied after the outage"))[0]
    assert row["attempts"] >= 1 and "503" in (row["last_error"] or "")
    await wait_for(lambda: all_settled(svc), what="delivery")
    assert sandbox.get_contact(email="down@example.com")["dataFields"]["FIRSTNAME"] == "Dana"


async def test_an_event_that_keeps_failing_is_marked_failed_and_logged(service_factory, database_url, sandbox, fake_ct):
    svc = await service_factory(make_inbox_settings(database_url, sandbox, fake_ct, max_attempts=2))
    fake_ct.inject_fault(status=503, times=100, path_contains="/customers/cust-gone")
    await svc.stub.TrackEvent(queued_delivery(ct.raw(ct.message(
        "customer", "cust-gone", "CustomerFirstNameSet", version=2, firstName="G"))))
    await wait_for(lambda: all_processed(svc), timeout=20, what="event given up")
    row = inbox_rows(svc)[0]
    assert row["status"] == "failed" and row["attempts"] == 2
    rejected = svc.rows("SELECT operation, record_type, record_id, reason FROM rejected_record")
    assert len(rejected) == 1 and rejected[0]["record_type"] == "event_inbox"
    assert rejected[0]["record_id"] == str(row["id"]) and "after 2 attempt(s)" in rejected[0]["reason"]


def processor_parts(settings, fake_ct):
    from ctdd.db.engine import create_db_engine

    engine = create_db_engine(settings.database_url)
    contact_sync = ContactSync(engine, settings, create_plugin_manager())
    events = EventProcessor(settings, contact_sync, TransactionRunner(engine), CommercetoolsClients(settings))
    return engine, events


async def test_an_expired_claim_is_taken_over_and_applied_exactly_once(service_factory, database_url, sandbox,
                                                                      fake_ct):
    # Ingest only (no dispatcher, so no inbox processor in the service); two processors by hand.
    settings = make_inbox_settings(database_url, sandbox, fake_ct)
    svc = await service_factory(settings, run_dispatcher=False)
    for i in range(5):
        assert (await svc.stub.TrackEvent(cart_event(f"x-{i}", i + 1, "twice@example.com", 100 + i))).queued
    engine, events = processor_parts(settings, fake_ct)
    slow = inbox.InboxProcessor(engine, settings, events, worker_id="slow", prepare=stored_request_preparer(events, settings))
    fast = inbox.InboxProcessor(engine, settings, events, worker_id="fast", prepare=stored_request_preparer(events, settings))
    try:
        # "slow" claims everything, then stalls past its lease (a paused or dying worker) ...
        claimed = await asyncio.to_thread(inbox.claim, engine, worker="slow", limit=10, lease_seconds=0.01)
        assert len(claimed) == 5
        await asyncio.sleep(0.05)
        # ... "fast" takes the expired claims over and applies them
        assert await fast.run_once() == 5
        # "slow" wakes up and tries to apply what it had prepared: every unit finds its row taken
        prepare = stored_request_preparer(events, settings)
        steps = [await prepare(c.request, c.stores) for c in claimed]
        results = await asyncio.gather(*(slow.runner.run(slow._unit(c, s)) for c, s in zip(claimed, steps)),
                                       return_exceptions=True)
        assert all(isinstance(r, inbox._TakenOver) for r in results), results  # each unit rolled back
    finally:
        await slow.runner.close()
        await fast.runner.close()
        engine.dispose()
    assert [r["status"] for r in inbox_rows(svc)] == ["done"] * 5
    assert len(svc.rows("SELECT dedupe_key FROM processed_event")) == 5
    # one contact upsert and one cart record per applied event at most, never twice
    kinds = [r["kind"] for r in svc.rows("SELECT kind FROM outbox_message")]
    assert kinds.count("insight.upsert") == 5


@pytest.mark.postgres
async def test_processors_in_parallel_apply_every_event_once(service_factory, postgres_database, sandbox, fake_ct):
    # several processors on one database is the PostgreSQL deployment (SQLite has one background worker per file)
    from support import reset_postgres

    database_url = postgres_database
    reset_postgres(database_url)
    settings = make_inbox_settings(database_url, sandbox, fake_ct, batch_size=8)
    svc = await service_factory(settings, run_dispatcher=False)
    batch = pb.TrackEventBatchRequest(events=[
        pb.TrackEventRequest(store_key="uk", processing=QUEUED, behavioural_event=pb.BehaviouralEvent(
            event_id=f"pv-{i}", identity=pb.ContactIdentity(email=f"pv{i % 7}@example.com"),
            product_viewed=pb.ProductViewed(product_id=f"p-{i}")))
        for i in range(120)])
    resp = await svc.stub.TrackEventBatch(batch)
    assert all(r.response.queued for r in resp.results)
    engines = []
    processors = []
    for name in ("a", "b", "c"):
        engine, events = processor_parts(settings, fake_ct)
        engines.append(engine)
        processors.append(inbox.InboxProcessor(engine, settings, events, worker_id=name, prepare=stored_request_preparer(events, settings)))

    async def drain(p):
        # until nothing is pending: an event that lost a deadlock three times comes back after its backoff
        while await asyncio.to_thread(inbox.pending_count, p.engine):
            if not await p.run_once():
                await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(asyncio.gather(*(drain(p) for p in processors)), timeout=60)
    finally:
        for p in processors:
            await p.runner.close()
        for engine in engines:
            engine.dispose()
    assert sum(p.stats["applied"] for p in processors) == 120
    assert sum(1 for p in processors if p.stats["applied"]) >= 2  # the work was shared
    assert {r["status"] for r in inbox_rows(svc)} == {"done"}
    views = svc.rows("SELECT count(*) AS n FROM outbox_message WHERE kind = 'insight.upsert'")[0]["n"]
    assert views == 120


async def test_events_queued_by_an_ingest_only_process_are_applied_by_another(service_factory, database_url,
                                                                             sandbox, fake_ct):
    settings = make_inbox_settings(database_url, sandbox, fake_ct)
    ingest_only = await service_factory(settings, run_dispatcher=False)  # `ctdd serve --no-dispatcher`
    for i in range(4):
        await ingest_only.stub.TrackEvent(cart_event(f"r-{i}", i + 1, "restart@example.com", 500 + i))
    await asyncio.sleep(0.2)
    assert [r["status"] for r in inbox_rows(ingest_only)] == ["pending"] * 4
    full = await service_factory(settings)  # another process, with the background work, on the same database
    await wait_for(lambda: all_processed(full), what="inbox processed after restart")
    await wait_for(lambda: all_settled(full), what="deliveries")
    assert sandbox.insight_records("CartInsight", contact_email="restart@example.com")["cart-q"]["grandTotal"] == 5.03


async def test_inbox_writer_batches_concurrent_writes_and_never_waits_for_a_lock_on_the_event_loop(engine):
    from ctdd.db.engine import sqlite_write_lock

    writer = inbox.InboxWriter(engine, min_commit_interval=0.01)
    events = [inbox.QueuedEvent("uk", f"request-{i}".encode(), f"event:uk:w-{i}") for i in range(60)]
    try:
        first = await asyncio.gather(*(writer.add([e]) for e in events[:30]))
        assert first == [[True]] * 30
        assert writer.batches < 30 and writer.largest_batch > 1  # concurrent RPCs shared commits
        if engine.dialect.name == "sqlite":
            assert writer.inline_batches == writer.batches  # nothing else was writing: all on the event loop
            # Another thread of this process holds the SQLite write lock: the writer must not block the
            # event loop on it; the batch goes to a thread and completes once the lock is free.
            lock = sqlite_write_lock(engine.url.database)
            lock.acquire()
            pending = asyncio.ensure_future(writer.add(events[30:32] + events[:1]))
            await asyncio.sleep(0.1)
            assert not pending.done()  # waiting in its thread while the event loop kept running
            lock.release()
            assert await pending == [True, True, False]  # the third was queued before: duplicate
            assert writer.inline_batches == writer.batches - 1
        else:
            assert await writer.add(events[30:32] + events[:1]) == [True, True, False]
    finally:
        await writer.close()
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT dedupe_key FROM event_inbox ORDER BY id")).scalars().all()
    assert keys == [e.dedupe_key for e in events[:32]]


async def test_inbox_writer_answers_duplicates_within_a_batch_and_keeps_arrival_order_in_large_batches(engine):
    writer = inbox.InboxWriter(engine, min_commit_interval=0.0)
    try:
        # 450 rows: more than one multi-row INSERT on SQLite; a repeated key and keyless requests in between
        many = [inbox.QueuedEvent("uk", f"r-{i}".encode(), f"event:uk:big-{i}" if i % 50 else None)
                for i in range(450)]
        repeated = inbox.QueuedEvent("uk", b"again", "event:uk:big-1")
        flags = await writer.add(many[:200] + [repeated] + many[200:])
        assert flags == [True] * 200 + [False] + [True] * 250
        assert await writer.add([repeated, many[0]]) == [False, True]  # many[0] has no key: always new
    finally:
        await writer.close()
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT dedupe_key, request FROM event_inbox ORDER BY id")).all()
    assert [bytes(r.request) for r in rows] == [e.request for e in many] + [b"r-0"]
    assert [r.dedupe_key for r in rows][:3] == [None, "event:uk:big-1", "event:uk:big-2"]


async def test_finished_rows_are_purged_after_retention_and_a_later_redelivery_is_still_a_duplicate(svc, sandbox):
    from datetime import timedelta

    from ctdd.db.engine import utcnow

    assert (await svc.stub.TrackEvent(cart_event("old-1", 1, "purge@example.com", 100))).queued
    await wait_for(lambda: all_processed(svc), what="inbox processed")
    await wait_for(lambda: all_settled(svc), what="deliveries")
    engine = svc.app.engine
    # nothing is old enough yet
    assert inbox.purge_finished(engine, older_than=utcnow() - timedelta(days=7)) == 0
    assert inbox.purge_finished(engine, older_than=utcnow() + timedelta(seconds=1)) == 1
    assert inbox_rows(svc) == []
    # the same event again, after its inbox row is gone: queued, then recognised by its dedupe record
    again = await svc.stub.TrackEvent(cart_event("old-1", 1, "purge@example.com", 100))
    assert again.queued
    await wait_for(lambda: all_processed(svc), what="redelivery processed")
    assert [r["outcome"] for r in inbox_rows(svc)] == ["duplicate"]
    assert len([r for r in sandbox.requests if "/CartInsight/" in r.path and r.method == "PUT" and r.status < 300]) == 1
