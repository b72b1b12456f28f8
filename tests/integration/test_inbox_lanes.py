"""The inbox's apply lanes ([inbox] lanes, PostgreSQL): each queued event carries a hash of its contact identity,
each lane of a worker claims only its own share, and together they apply every event exactly once, in the
order two workers would (the contact's row lock numbers its outbox messages), over real gRPC and PostgreSQL."""

from __future__ import annotations

import asyncio
import zlib

import pytest
import sqlalchemy as sa

from support import make_settings, reset_postgres, wait_for
from ctdd.api.track_event import queued_event
from ctdd.config import InboxConfig, replace
from ctdd.db.engine import create_db_engine, upgrade_database
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
    def cart_event(i: int, identity: dict) -> pb.TrackEventRequest:
        event = pb.BehaviouralEvent(event_id=f"cart-{i}", identity=pb.ContactIdentity(**identity),
                                    cart_updated=pb.CartUpdated(cart_id="cart-7", cart_version=i + 1))
        event.cart_updated.cart.update({"lineItems": [], "cartState": "Active",
                                        "totalPrice": {"currencyCode": "GBP", "centAmount": 0}})
        return pb.TrackEventRequest(store_key="uk", processing=QUEUED, behavioural_event=event)

    carts = {queued_event(events, settings, cart_event(i, identity)).lane
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


def _pending_inbox(url: str, rows: int):
    """A new schema whose inbox holds ``rows`` due pending events, lane hashes 1, 2, ... 999, 0, 1, ...: an engine."""
    reset_postgres(url)
    engine = create_db_engine(url)
    upgrade_database(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO event_inbox (store_key, request, status, attempts, next_attempt_at, received_at, lane) "
            "SELECT 'uk', '\\x00'::bytea, 'pending', 0, now() - interval '1 s', now(), g % 1000 "
            "FROM generate_series(1, :rows) g"), {"rows": rows})
    return engine


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


@pytest.mark.postgres
def test_a_lane_claim_walks_the_pending_index_in_order_and_stops_at_its_limit(postgres_database):
    """A backlog queued since the last ANALYZE and the lane condition (``lane % n = i``, which the planner cannot
    estimate) made PostgreSQL read every pending row and sort them for each claim. The claim's plan must walk the
    pending index in id order and stop once it has its rows."""
    engine = _pending_inbox(postgres_database, 6000)
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    claimed = inbox.claim(engine, worker="w", limit=100, lease_seconds=60, lane=(1, 2))
    sa.event.remove(engine, "before_cursor_execute", capture)
    assert len(claimed) == 100 and [e.id for e in claimed] == sorted(e.id for e in claimed)
    # the claim's transaction, replayed with its UPDATE explained
    update = [i for i, (sql, _) in enumerate(statements) if sql.lstrip().startswith("WITH candidates")]
    assert len(update) == 1
    with engine.connect() as conn:
        lanes = dict(conn.execute(sa.text("SELECT id, lane FROM event_inbox")).all())
    assert all(lanes[e.id] % 2 == 1 for e in claimed)
    # the oldest 100 pending rows of lane 1
    assert [e.id for e in claimed] == sorted(i for i, lane in lanes.items() if lane % 2 == 1)[:100]
    with engine.connect() as conn:  # EXPLAIN ANALYZE runs the UPDATE: rolled back
        conn.exec_driver_sql("UPDATE event_inbox SET lease_owner = NULL, lease_expires_at = NULL")
        for sql, parameters in statements[:update[0]]:
            conn.exec_driver_sql(sql, parameters or ())
        sql, parameters = statements[update[0]]
        plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, parameters).scalar_one()[0]["Plan"]
        conn.rollback()
    nodes = list(_plan_nodes(plan))
    assert not [n for n in nodes if n["Node Type"] in ("Sort", "Seq Scan", "Bitmap Heap Scan")]
    # the candidates' scan (the other one finds the oldest due event: the lanes' lead, LANE_LEAD_BATCHES)
    scans = [n for n in nodes if n.get("Index Name") == "ix_event_inbox_pending_claim_order"
             and "lane" in n.get("Filter", "")]
    assert len(scans) == 1
    # it stopped after its 100 rows of lane 1: about as many of lane 0 were passed over, not the 6,000 pending
    assert scans[0]["Actual Rows"] == 100
    assert scans[0]["Actual Rows"] + scans[0].get("Rows Removed by Filter", 0) < 400
    engine.dispose()


@pytest.mark.postgres
def test_a_lane_runs_no_further_ahead_of_the_oldest_unapplied_event_than_a_few_batches(postgres_database):
    """One contact's events can hash to different lanes (a delivery by customer id, a view by email), so a lane
    that fell behind must hold the others back: none claims further than LANE_LEAD_BATCHES batches per lane past
    the oldest due event not yet applied, whichever lane holds it."""
    engine = _pending_inbox(postgres_database, 3000)
    with engine.connect() as conn:
        first = conn.execute(sa.text("SELECT min(id) FROM event_inbox")).scalar_one()
    lead = inbox.LANE_LEAD_BATCHES * 2 * 50
    stuck = inbox.claim(engine, worker="lane0", limit=50, lease_seconds=60, lane=(0, 2))  # held, never applied
    assert stuck[0].id == first + 1  # lane hash 0 is every other row: 2, 4, ... after 1
    taken = []
    while batch := inbox.claim(engine, worker="lane1", limit=50, lease_seconds=60, lane=(1, 2)):
        taken += batch
        assert len(taken) <= 3000
    assert taken and max(e.id for e in taken) < first + lead
    assert len(taken) == (lead + 1) // 2  # every lane-1 row below the bound
    # a row waiting for its retry (not due) holds nobody back: only what could be applied now counts
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE event_inbox SET status = 'done' WHERE id = ANY(:ids)"),
                     {"ids": [e.id for e in stuck[1:]] + [e.id for e in taken]})
        conn.execute(sa.text("UPDATE event_inbox SET next_attempt_at = now() + interval '1 h', lease_owner = NULL, "
                             "lease_expires_at = NULL WHERE id = :id"), {"id": stuck[0].id})
    more = inbox.claim(engine, worker="lane1", limit=50, lease_seconds=60, lane=(1, 2))
    assert len(more) == 50 and min(e.id for e in more) > max(e.id for e in taken)
    engine.dispose()


async def test_every_lane_is_stopped_even_when_one_lanes_stop_fails():
    class Lane:
        def __init__(self, fails: bool):
            self.fails, self.stopped = fails, False

        async def stop(self):
            await asyncio.sleep(0.01 if self.fails else 0.05)  # the failing one ends first
            self.stopped = True
            if self.fails:
                raise RuntimeError("lane 0 could not hand back its leases")

    lanes = inbox.InboxLanes.__new__(inbox.InboxLanes)
    lanes.processors = [Lane(True), Lane(False), Lane(False)]
    with pytest.raises(RuntimeError, match="lane 0"):
        await lanes.stop()
    assert all(lane.stopped for lane in lanes.processors)
