"""The cart watcher against the fake commercetools API over HTTP: store-scoped queries with input variables,
paging by (lastModifiedAt, id), the overlap window, the cursor across restarts, one watcher per store across
processes (the lease), and ``ctdd serve`` running it. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from ctdd.db.engine import create_db_engine
from ctdd.domain.commerce import parse_ts
from ctdd.ingest.cart_watcher import CartWatcher, ct_time, lease_name, watcher_enabled
from ctdd.testing.commercetools_fake import FakeCommercetools
from support import all_settled, outbox_rows, wait_for
from support import ct_payloads as ct
from support.carts import cart_settings, create_cart, ct_client, line_draft


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    return await service_factory(cart_settings(database_url, sandbox, fake_ct))


def watcher(svc, owner: str = "w1", *, engine=None) -> CartWatcher:
    return CartWatcher(engine or svc.engine, svc.app.settings, svc.app.events, owner=owner, store_keys=["uk"])


def seed(fake, cart_id: str, modified: datetime, *, store: str = "uk", email: str | None = None, **extra) -> dict:
    items = [ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)]
    body = {"id": cart_id, "version": 1, "cartState": "Active", "lineItems": items, "totalPrice": ct.money(1250),
            "store": {"typeId": "store", "key": store}, "createdAt": ct_time(modified),
            "lastModifiedAt": ct_time(modified), **extra}
    if email:
        body["customerEmail"] = email
    return fake.add("carts", body)


def cart_queries(fake) -> list:
    return [r for r in fake.requests if r.method == "GET" and r.path.endswith("/carts") and r.status == 200]


def lease(svc) -> dict:
    [row] = svc.rows("SELECT owner, cursor FROM lease WHERE name = :n", n=lease_name("uk"))
    if isinstance(row["cursor"], str):  # SQLite hands raw JSON text to a textual query
        row["cursor"] = json.loads(row["cursor"])
    return row


async def test_a_changed_cart_is_picked_up_once(svc, sandbox, fake_ct):
    cart = await create_cart(svc, customerEmail="watch@example.com",
                             lineItems=[line_draft("p1", "HAT-1", "Blue Hat", 1, 1250)])
    w = watcher(svc)
    [first] = await w.run_once()
    assert (first.held_elsewhere, first.pages, first.carts_read, first.carts_applied) == (False, 1, 1, 1)
    [query] = cart_queries(fake_ct)
    assert query.path == f"/{ct.PROJECT}/in-store/key=uk/carts"
    assert query.query["where"] == ["cartState in :states", "lastModifiedAt >= :since"]
    assert query.query["var.states"] == ["Active", "Merged", "Frozen"] and query.query["var.since"]
    assert query.query["sort"] == ["lastModifiedAt asc", "id asc"]
    assert (query.query["limit"], query.query["withTotal"]) == (["500"], ["false"])
    await wait_for(lambda: all_settled(svc), what="deliveries")
    messages = len(outbox_rows(svc))
    [again] = await w.run_once()
    assert (again.carts_read, again.carts_applied) == (1, 0)  # re-read in the overlap window, nothing new
    assert len(outbox_rows(svc)) == messages
    changed = await ct_client(svc).update("carts", cart["id"], cart["version"], [
        {"action": "addLineItem", **line_draft("p2", "SCARF", "Scarf", 2, 999)}])
    [third] = await w.run_once()
    assert third.carts_applied == 1
    await wait_for(lambda: all_settled(svc), what="deliveries")
    record = sandbox.insight_records("CartInsight", contact_email="watch@example.com")[cart["id"]]
    assert [i["sku"] for i in record["lineItems"]] == ["HAT-1", "SCARF"] and record["grandTotal"] == 32.48
    assert lease(svc)["cursor"] == {"last_modified_at": changed["lastModifiedAt"], "last_id": cart["id"]}


async def test_pages_past_page_size_by_modification_time_and_id(service_factory, database_url, sandbox, fake_ct):
    svc = await service_factory(cart_settings(database_url, sandbox, fake_ct, page_size=2))
    t = datetime.now(timezone.utc) - timedelta(hours=1)
    same = t + timedelta(seconds=5)
    for cart_id, modified in (("c-1", t), ("c-4", same), ("c-2", same), ("c-3", same), ("c-5", same + timedelta(seconds=1))):
        seed(fake_ct, cart_id, modified)
    seed(fake_ct, "c-other-store", same, store="de")
    seed(fake_ct, "c-ordered", same, cartState="Ordered")
    [result] = await watcher(svc).run_once()
    assert (result.pages, result.carts_read, result.carts_applied) == (3, 5, 5)
    assert sorted(svc.rows("SELECT cart_id FROM cart"), key=lambda r: r["cart_id"]) == [
        {"cart_id": f"c-{i}"} for i in range(1, 6)]
    queries = cart_queries(fake_ct)
    assert [q.query.get("var.lid") for q in queries] == [None, ["c-2"], ["c-4"]]
    assert all("(lastModifiedAt > :lm or (lastModifiedAt = :lm and id > :lid))" in q.query["where"]
               for q in queries[1:])
    assert result.cursor == {"last_modified_at": ct_time(same + timedelta(seconds=1)), "last_id": "c-5"}


async def test_overlap_window_and_resuming_from_the_cursor(svc, fake_ct):
    now = datetime.now(timezone.utc).replace(microsecond=0)  # commercetools times have milliseconds
    t = now - timedelta(minutes=10)
    seed(fake_ct, "a", t)
    first = watcher(svc, "w1")
    [r1] = await first.run_once(now)
    assert r1.carts_applied == 1 and r1.cursor == {"last_modified_at": ct_time(t), "last_id": "a"}
    since = cart_queries(fake_ct)[0].query["var.since"][0]
    assert parse_ts(since) == now - timedelta(hours=48)  # first poll: initial_lookback_hours
    # committed late: B inside the 120 s overlap is still read; C before it is not
    seed(fake_ct, "b", t - timedelta(seconds=60))
    seed(fake_ct, "c", t - timedelta(seconds=600))
    [r2] = await first.run_once(now)
    assert (r2.carts_read, r2.carts_applied) == (2, 1)
    assert {r["cart_id"] for r in svc.rows("SELECT cart_id FROM cart")} == {"a", "b"}
    assert r2.cursor == r1.cursor  # never backwards
    # another process waits while the lease is held; after a restart the next watcher resumes from the cursor
    [blocked] = await watcher(svc, "w2").run_once(now)
    assert blocked.held_elsewhere and len(cart_queries(fake_ct)) == 2
    await first.stop()
    assert lease(svc)["owner"] is None
    fake_ct.reset_requests()
    [r3] = await watcher(svc, "w2").run_once(now + timedelta(minutes=1))
    assert not r3.held_elsewhere and r3.carts_applied == 0
    assert parse_ts(cart_queries(fake_ct)[0].query["var.since"][0]) == t - timedelta(seconds=120)
    assert lease(svc)["owner"] == "w2"


async def test_two_watchers_never_both_hold_the_stores_lease(svc, database_url, fake_ct):
    seed(fake_ct, "x", datetime.now(timezone.utc) - timedelta(minutes=5))
    engines = [create_db_engine(database_url) for _ in range(2)]  # two processes sharing the database
    try:
        watchers = [watcher(svc, f"p{i}", engine=engine) for i, engine in enumerate(engines)]
        for round_ in range(4):
            results = await asyncio.gather(*(w.run_once() for w in watchers))
            holders = [w.owner for w, [r] in zip(watchers, results) if not r.held_elsewhere]
            assert len(holders) == 1, f"round {round_}: {holders}"
            assert lease(svc)["owner"] == holders[0]
            await watchers[int(holders[0][1:])].stop()  # hand over: the other one may take it next round
        assert len(cart_queries(fake_ct)) == 4 and len(svc.rows("SELECT cart_id FROM cart")) == 1
    finally:
        for engine in engines:
            engine.dispose()


async def test_serve_runs_the_watcher_and_gives_the_lease_back(service_factory, database_url, sandbox, fake_ct):
    svc = await service_factory(cart_settings(database_url, sandbox, fake_ct, enabled=True, interval_seconds=0.2))
    cart = await create_cart(svc, customerEmail="served@example.com",
                             lineItems=[line_draft("p1", "HAT-1", "Blue Hat", 1, 1250)])

    def sent():
        try:
            return cart["id"] in sandbox.insight_records("CartInsight", contact_email="served@example.com")
        except KeyError:  # the collection is created with the first record
            return False

    await wait_for(sent, timeout=20, what="the polled cart in Dotdigital")
    assert lease(svc)["owner"] == svc.app.dispatcher.worker_id
    await svc.app.cart_watcher.stop()
    assert lease(svc)["owner"] is None


def test_enabled_by_default_with_a_client_and_an_abandoned_cart_program(database_url, sandbox, fake_ct):
    stores = cart_settings(database_url, sandbox, fake_ct, enabled=None).stores
    assert watcher_enabled(stores["uk"]) and not watcher_enabled(stores["de"])  # de: no programs
    without = cart_settings(database_url, sandbox, fake_ct, programs={}, enabled=None).stores["uk"]
    assert not watcher_enabled(without)


async def test_a_poison_cart_is_skipped_and_the_cursor_moves_on(svc, fake_ct, monkeypatch):
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    for i, cid in enumerate(["c-ok-1", "c-poison", "c-ok-2"]):
        seed(fake_ct, cid, base + timedelta(seconds=i), email=f"{cid}@example.com")
    carts = svc.app.events.carts
    real_apply = carts.apply

    def apply(session, store, snap, *args, **kwargs):
        if snap.cart_id == "c-poison":
            raise ValueError("cannot apply this cart")
        return real_apply(session, store, snap, *args, **kwargs)

    monkeypatch.setattr(carts, "apply", apply)
    [result] = await watcher(svc).run_once()
    assert (result.carts_read, result.carts_applied) == (3, 2)
    assert lease(svc)["cursor"]["last_id"] == "c-ok-2"
    assert sorted(r["cart_id"] for r in svc.rows("SELECT cart_id FROM cart")) == ["c-ok-1", "c-ok-2"]
    [rejected] = svc.rows("SELECT operation, record_type, record_id, reason FROM rejected_record")
    assert (rejected["operation"], rejected["record_type"], rejected["record_id"]) == ("CartWatcher", "cart", "c-poison")
    assert "cannot apply this cart" in rejected["reason"]


async def test_a_transport_failure_logs_one_line(svc, caplog):
    from ctdd.commercetools.errors import CommercetoolsTransportError

    w = watcher(svc)

    async def poll_store(store, now):
        w._stop.set()
        raise CommercetoolsTransportError("connection refused")

    w.poll_store = poll_store
    with caplog.at_level("WARNING", logger="ctdd"):
        await asyncio.wait_for(w._loop(), timeout=5)
    [record] = [r for r in caplog.records if "cart watcher poll" in r.getMessage()]
    assert record.levelname == "WARNING" and record.exc_info is None and "connection refused" in record.getMessage()
