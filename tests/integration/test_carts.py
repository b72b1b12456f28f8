"""Cart signals end to end: cart_updated events, ResourceCreated for carts, orders placed from carts, product
views, attribution of anonymous carts and the CartInsight records Dotdigital receives. Real gRPC, the fake
commercetools API over HTTP, the Dotdigital sandbox, SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from ctdd.ingest.cart_watcher import CartWatcher
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools
from support import SHARED_DIR, all_settled, wait_for
from support import ct_payloads as ct
from support.carts import SchedulingSpy, cart_puts, cart_rows, cart_settings, create_cart, ct_client, line_draft


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        fake.add("subscriptions", {"key": "ctdd", "destination": {"type": "SQS", "queueUrl": "q", "region": "eu"},
                                   "changes": [{"resourceTypeId": "cart"}],
                                   "messages": [{"resourceTypeId": "order", "types": []}]})
        yield fake


@pytest.fixture
def spy(monkeypatch):
    return SchedulingSpy().install(monkeypatch)


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    return await service_factory(cart_settings(database_url, sandbox, fake_ct))


def deliver(notification: dict) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw(notification))


def contact_of(resp: pb.TrackEventResponse) -> int | None:
    """The contact id the (single) notification's outcome names, None for none."""
    value = resp.notifications[0].contact_id
    return int(value) if value else None


def outcomes(resp: pb.TrackEventResponse) -> list[str]:
    return [pb.EventOutcome.Name(n.outcome).removeprefix("EVENT_OUTCOME_") for n in resp.notifications]


def cart_event(event_id: str, cart_id: str, version: int, cart: dict, **identity) -> pb.TrackEventRequest:
    event = pb.BehaviouralEvent(event_id=event_id, identity=pb.ContactIdentity(**identity),
                                cart_updated=pb.CartUpdated(cart_id=cart_id, cart_version=version))
    event.cart_updated.cart.update(cart)
    event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
    return pb.TrackEventRequest(store_key="uk", behavioural_event=event)


def cart_json(*items: dict, **fields) -> dict:
    total = sum(li["totalPrice"]["centAmount"] for li in items)
    return {"lineItems": list(items), "totalPrice": ct.money(total), "cartState": "Active", **fields}


async def customer(svc, cid: str, email: str) -> None:
    msg = ct.message("customer", cid, "CustomerCreated", version=1, customer=ct.customer(cid, email))
    assert outcomes(await svc.stub.TrackEvent(deliver(msg))) == ["APPLIED"]


async def test_resource_created_for_a_cart_fetches_it_and_sends_urls(svc, sandbox, fake_ct, spy):
    cart = await create_cart(svc, customerEmail="Cart@Example.com",
                             lineItems=[line_draft("p1", "HAT-1", "Blue Hat", 2, 1250)])
    [created] = fake_ct.take_notifications()
    assert created["notificationType"] == "ResourceCreated" and created["resource"]["typeId"] == "cart"
    first = await svc.stub.TrackEvent(deliver(created))
    again = await svc.stub.TrackEvent(deliver(created))
    assert (outcomes(first), outcomes(again)) == (["APPLIED"], ["DUPLICATE"])
    assert len([r for r in fake_ct.requests if r.method == "GET" and r.path.endswith(f"/carts/{cart['id']}")]) == 1
    row = cart_rows(svc)[cart["id"]]
    assert (row["version"], row["state"], row["line_item_count"]) == (1, "Active", 1)
    assert row["contact_id"] == contact_of(first)
    [changed] = spy.of("on_cart_changed")
    facts = changed.args[0]
    assert (facts.cart_id, facts.version, facts.contact_id, facts.line_item_count) == (cart["id"], 1, row["contact_id"], 1)
    await wait_for(lambda: all_settled(svc), what="deliveries")
    record = sandbox.insight_records("CartInsight", contact_email="cart@example.com")[cart["id"]]
    assert record["cartUrl"] == f"https://shop.example/uk/cart/{cart['id']}"
    [item] = record["lineItems"]
    assert item["productUrl"] == "https://shop.example/en-GB/p/blue-hat"
    assert item["imageUrl"] == "https://img.example/HAT-1.jpg"
    assert (item["unitPrice"], item["salePrice"], item["quantity"], record["grandTotal"]) == (12.5, 12.5, 2.0, 25.0)


async def test_order_created_marks_the_cart_ordered_and_sends_order_complete(svc, sandbox, fake_ct, spy):
    await customer(svc, "cust-o", "olive@example.com")
    client = ct_client(svc)
    cart = await create_cart(svc, customerId="cust-o", customerEmail="olive@example.com",
                             lineItems=[line_draft("p1", "HAT-1", "Blue Hat", 1, 1250)])
    assert outcomes(await svc.stub.TrackEvent(deliver(fake_ct.take_notifications()[0]))) == ["APPLIED"]
    order = await client.create("orders", {"cart": {"typeId": "cart", "id": cart["id"]}, "version": cart["version"],
                                           "orderNumber": "5001"})
    [placed] = fake_ct.take_notifications()
    assert placed["type"] == "OrderCreated" and placed["order"]["cart"]["id"] == cart["id"]
    assert outcomes(await svc.stub.TrackEvent(deliver(placed))) == ["APPLIED"]
    row = cart_rows(svc)[cart["id"]]
    assert (row["state"], row["order_id"]) == ("Ordered", order["id"]) and row["ordered_at"] is not None
    closed = spy.of("on_cart_closed")
    assert [(c.args[0], c.args[1], c.kwargs["order_id"]) for c in closed] == [(cart["id"], "Ordered", order["id"])]
    [first] = spy.of("on_order_placed")
    assert first.args[1] == order["id"] and first.kwargs == {"first_order": True, "cart_id": cart["id"]}
    await wait_for(lambda: all_settled(svc), what="deliveries")
    record = sandbox.insight_records("CartInsight", contact_email="olive@example.com")[cart["id"]]
    assert record["cartPhase"] == "ORDER_COMPLETE" and record["lineItems"][0]["sku"] == "HAT-1"
    assert [json.loads(r.raw_body)["cartPhase"] for r in cart_puts(sandbox)] == ["ORDER_PENDING", "ORDER_COMPLETE"]

    # a second order is a repeat purchase; delivery and cancellation reach the programs
    cart2 = await create_cart(svc, customerId="cust-o", customerEmail="olive@example.com",
                              lineItems=[line_draft("p2", "SCARF", "Scarf", 1, 999)])
    order2 = await client.create("orders", {"cart": {"typeId": "cart", "id": cart2["id"]}, "version": cart2["version"]})
    delivered = await client.update("orders", order["id"], order["version"],
                                    [{"action": "changeShipmentState", "shipmentState": "Delivered"}])
    await client.update("orders", order2["id"], order2["version"],
                        [{"action": "changeOrderState", "orderState": "Cancelled"}])
    for notification in fake_ct.take_notifications():
        assert outcomes(await svc.stub.TrackEvent(deliver(notification))) == ["APPLIED"]
    assert [c.kwargs["first_order"] for c in spy.of("on_order_placed")] == [True, False]
    [shipped] = spy.of("on_shipment_delivered")
    assert shipped.args[:2] == (row["contact_id"], order["id"]) and delivered["shipmentState"] == "Delivered"
    [cancelled] = spy.of("on_order_cancelled")
    assert cancelled.args[:2] == (order2["id"], "order_cancelled")

    # an imported order is history: no post-purchase program
    imported = ct.order("ord-imp", number="IMP-1", email="olive@example.com", customer_id="cust-o")
    resp = await svc.stub.TrackEvent(deliver(ct.message("order", "ord-imp", "OrderImported", version=1, order=imported)))
    assert outcomes(resp) == ["APPLIED"] and len(spy.of("on_order_placed")) == 2


async def test_anonymous_cart_is_attributed_when_an_email_appears(svc, sandbox, spy):
    hat = ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)
    r1 = await svc.stub.TrackEvent(cart_event("ev-a1", "cart-a", 1, cart_json(hat, anonymousId="anon-1"),
                                              anonymous_id="anon-1"))
    assert outcomes(r1) == ["APPLIED"] and contact_of(r1) is None
    assert cart_rows(svc)["cart-a"]["contact_id"] is None
    assert spy.of("on_cart_changed")[0].args[0].contact_id is None
    r2 = await svc.stub.TrackEvent(cart_event("ev-a2", "cart-a", 2, cart_json(
        hat, anonymousId="anon-1", customerEmail="anon@example.com"), anonymous_id="anon-1"))
    contact_id = contact_of(r2)
    assert outcomes(r2) == ["APPLIED"] and contact_id
    assert cart_rows(svc)["cart-a"]["contact_id"] == contact_id
    assert spy.of("on_cart_changed")[-1].args[0].contact_id == contact_id
    assert svc.rows("SELECT contact_id FROM contact_identifier WHERE kind = 'anonymous_id' AND value = 'anon-1'") \
        == [{"contact_id": contact_id}]
    # the anonymous id now resolves to the contact: a product view of that visitor counts for browse abandonment
    view = pb.BehaviouralEvent(event_id="ev-v1", identity=pb.ContactIdentity(anonymous_id="anon-1"),
                               product_viewed=pb.ProductViewed(product_id="p9", sku="SOCK"))
    assert outcomes(await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=view))) \
        == ["APPLIED"]
    [viewed] = spy.of("on_product_viewed")
    assert viewed.args[:2] == (contact_id, "p9")
    [added] = spy.of("on_product_added_to_cart")  # only once attributed
    assert added.args[:2] == (contact_id, ["p1"])
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert list(sandbox.insight_records("CartInsight", contact_email="anon@example.com")) == ["cart-a"]
    # an older version arriving late changes nothing
    late = await svc.stub.TrackEvent(cart_event("ev-a0", "cart-a", 1, cart_json(hat), email="anon@example.com"))
    assert outcomes(late) == ["STALE"]


async def test_an_empty_active_cart_is_still_sent(svc, sandbox, spy):
    hat = ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)
    await svc.stub.TrackEvent(cart_event("ev-e1", "cart-e", 1, cart_json(hat), email="empty@example.com"))
    resp = await svc.stub.TrackEvent(cart_event("ev-e2", "cart-e", 2, {"lineItems": [], "cartState": "Active",
                                                                        "totalPrice": ct.money(0)},
                                                email="empty@example.com"))
    assert outcomes(resp) == ["APPLIED"]
    assert [c.args[0].line_item_count for c in spy.of("on_cart_changed")] == [1, 0]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    record = sandbox.insight_records("CartInsight", contact_email="empty@example.com")["cart-e"]
    assert record["lineItems"] == [] and record["grandTotal"] == 0.0 and record["cartPhase"] == "ORDER_PENDING"


async def test_merge_at_login_counts_the_anonymous_cart_once(svc, sandbox, fake_ct, spy):
    client = ct_client(svc)
    created = await client.create("in-store/key=uk/customers", {"email": "max@example.com", "password": "pw"})
    cid = created["customer"]["id"]
    await customer(svc, cid, "max@example.com")
    own = await create_cart(svc, customerId=cid, customerEmail="max@example.com",
                            lineItems=[line_draft("p2", "SCARF", "Scarf", 1, 999)])
    anonymous = await create_cart(svc, anonymousId="anon-m", lineItems=[line_draft("p1", "HAT-1", "Blue Hat", 1, 1250)])
    watcher = CartWatcher(svc.engine, svc.app.settings, svc.app.events, owner="test", store_keys=["uk"])
    [first] = await watcher.run_once()
    assert first.carts_applied == 2
    assert cart_rows(svc)[anonymous["id"]]["contact_id"] is None
    signed_in = await client.create("in-store/key=uk/login", {
        "email": "max@example.com", "password": "pw", "anonymousId": "anon-m",
        "anonymousCart": {"typeId": "cart", "id": anonymous["id"]}})
    assert signed_in["cart"]["id"] == own["id"] and len(signed_in["cart"]["lineItems"]) == 2
    [second] = await watcher.run_once()
    assert second.carts_applied == 2
    rows = cart_rows(svc)
    contact_id = rows[own["id"]]["contact_id"]
    assert (rows[anonymous["id"]]["state"], rows[anonymous["id"]]["merged_into"]) == ("Merged", own["id"])
    assert rows[anonymous["id"]]["contact_id"] == contact_id
    [closed] = spy.of("on_cart_closed")
    assert closed.args[:2] == (anonymous["id"], "Merged") and closed.kwargs["merged_into"] == own["id"]
    assert [c.args[0].line_item_count for c in spy.of("on_cart_changed") if c.args[0].cart_id == own["id"]] == [1, 2]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    records = sandbox.insight_records("CartInsight", contact_email="max@example.com")
    assert list(records) == [own["id"]] and len(records[own["id"]]["lineItems"]) == 2
    triggers = svc.rows("SELECT subject_id FROM program_trigger WHERE program_kind = 'abandoned_cart' "
                        "AND status = 'pending'")
    assert [t["subject_id"] for t in triggers] == [own["id"]]


async def test_anonymous_cart_becomes_the_customers_cart_at_login(svc, sandbox, fake_ct, spy):
    client = ct_client(svc)
    created = await client.create("in-store/key=uk/customers", {"email": "nia@example.com", "password": "pw"})
    anonymous = await create_cart(svc, anonymousId="anon-n", lineItems=[line_draft("p1", "HAT-1", "Blue Hat", 1, 1250)])
    watcher = CartWatcher(svc.engine, svc.app.settings, svc.app.events, owner="test", store_keys=["uk"])
    await watcher.run_once()
    assert cart_rows(svc)[anonymous["id"]]["contact_id"] is None
    await client.create("in-store/key=uk/login", {
        "email": "nia@example.com", "password": "pw", "anonymousCartSignInMode": "UseAsNewActiveCustomerCart",
        "anonymousCart": {"typeId": "cart", "id": anonymous["id"]}})
    [result] = await watcher.run_once()
    assert result.carts_applied == 1
    row = cart_rows(svc)[anonymous["id"]]
    assert row["state"] == "Active" and row["contact_id"] and row["customer_id"] == created["customer"]["id"]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert list(sandbox.insight_records("CartInsight", contact_email="nia@example.com")) == [anonymous["id"]]


async def test_stores_without_programs_write_no_triggers(service_factory, database_url, sandbox, fake_ct, monkeypatch):
    svc = await service_factory(cart_settings(database_url, sandbox, fake_ct, programs={}))
    from ctdd.programs import scheduling

    def refuse(*args, **kwargs):
        raise AssertionError("no program is configured")

    for name in ("on_cart_changed", "on_cart_closed", "on_product_viewed", "on_product_added_to_cart"):
        monkeypatch.setattr(scheduling, name, refuse)
    hat = ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)
    resp = await svc.stub.TrackEvent(cart_event("ev-n1", "cart-n", 1, cart_json(hat), email="none@example.com"))
    assert outcomes(resp) == ["APPLIED"] and cart_rows(svc)["cart-n"]["state"] == "Active"


# -- contract: the CartInsight bodies against Dotdigital's insight-data OpenAPI document ------------------
def _insight_spec() -> dict:
    path = SHARED_DIR / "specs" / "dotdigital" / "dotdigital-insight-data-service.json"
    if not path.is_file():
        pytest.skip(f"Dotdigital OpenAPI documents not available ({path})")
    return json.loads(path.read_text("utf-8"))


async def test_cartinsight_bodies_match_the_insight_data_openapi_document(svc, sandbox):
    from ctdd.testing.openapi import SchemaValidator

    spec = _insight_spec()
    validator = SchemaValidator(spec)
    discounted = ct.line_item("p1", "HAT-1", "Blue Hat", 2, 1250)
    discounted["discountedPricePerQuantity"] = [{"quantity": 2, "discountedPrice": {"value": ct.money(1000)}}]
    discounted["totalPrice"] = ct.money(2000)
    await svc.stub.TrackEvent(cart_event("ev-c1", "cart-c", 1, cart_json(discounted), email="spec@example.com"))
    await svc.stub.TrackEvent(cart_event("ev-c2", "cart-c2", 1, cart_json(), email="spec@example.com"))
    await wait_for(lambda: all_settled(svc), what="deliveries")
    bodies = [json.loads(r.raw_body) for r in cart_puts(sandbox)]
    imports = [json.loads(r.raw_body) for r in sandbox.requests
               if r.method == "PUT" and r.path.endswith("/insightData/v3/import") and r.status < 300]
    bodies += [rec["json"] for body in imports if body.get("collectionName") == "CartInsight" for rec in body["records"]]
    assert len(bodies) == 2
    record_schema = validator.resolve("#/components/schemas/insightRecord")["properties"]["json"]
    for body in bodies:
        assert validator.errors(body, record_schema) == []
        assert validator.errors({"key": body["cartId"], "json": body},
                                "#/components/schemas/insightRecord") == []
    assert {b["lineItems"][0]["salePrice"] for b in bodies if b["lineItems"]} == {10.0}


async def test_cancelling_a_subjects_triggers_has_an_index(svc):
    """Cancelling a cart's triggers filters on store, subject type and id (not on program kind)."""
    import sqlalchemy as sa

    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(svc.engine).get_indexes("program_trigger")}
    assert indexes.get("ix_program_trigger_subject") == ["store_key", "subject_type", "subject_id"]


async def test_a_cart_update_without_a_version_restarts_the_timer_from_its_last_change(svc, spy):
    hat = ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)
    r1 = await svc.stub.TrackEvent(cart_event("ev-n1", "cart-n", 0, cart_json(
        hat, lastModifiedAt="2026-11-02T10:00:00.000Z"), email="noversion@example.com"))
    r2 = await svc.stub.TrackEvent(cart_event("ev-n2", "cart-n", 0, cart_json(
        hat, hat, lastModifiedAt="2026-11-02T10:50:00.000Z"), email="noversion@example.com"))
    assert outcomes(r1) == outcomes(r2) == ["APPLIED"]
    first, second = (c.args[0] for c in spy.of("on_cart_changed"))
    assert first.version and second.version > first.version
    assert cart_rows(svc)["cart-n"]["version"] == second.version
    triggers = svc.rows("SELECT subject_version, status FROM program_trigger WHERE subject_id = 'cart-n' "
                        "ORDER BY subject_version")
    assert [(t["subject_version"], t["status"]) for t in triggers] == [(first.version, "cancelled"),
                                                                       (second.version, "pending")]
    # an earlier change arriving late changes nothing
    late = await svc.stub.TrackEvent(cart_event("ev-n0", "cart-n", 0, cart_json(
        hat, lastModifiedAt="2026-11-02T10:20:00.000Z"), email="noversion@example.com"))
    assert outcomes(late) == ["STALE"]
    # a commercetools version after derived ones is compared by its lastModifiedAt
    later = await svc.stub.TrackEvent(cart_event("ev-n3", "cart-n", 7, cart_json(
        hat, lastModifiedAt="2026-11-02T11:00:00.000Z"), email="noversion@example.com"))
    assert outcomes(later) == ["APPLIED"] and cart_rows(svc)["cart-n"]["version"] > second.version


async def test_linking_an_anonymous_cart_starts_its_timer(svc, spy):
    hat = ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)
    r1 = await svc.stub.TrackEvent(cart_event("ev-l1", "cart-l1", 1, cart_json(hat, anonymousId="anon-l"),
                                              anonymous_id="anon-l"))
    assert outcomes(r1) == ["APPLIED"] and contact_of(r1) is None
    assert svc.rows("SELECT subject_id FROM program_trigger WHERE subject_id = 'cart-l1'") == []
    r2 = await svc.stub.TrackEvent(cart_event("ev-l2", "cart-l2", 1, cart_json(
        hat, anonymousId="anon-l", customerEmail="linked@example.com"), anonymous_id="anon-l"))
    contact_id = contact_of(r2)
    assert outcomes(r2) == ["APPLIED"] and contact_id
    assert cart_rows(svc)["cart-l1"]["contact_id"] == contact_id
    linked = [c.args[0] for c in spy.of("on_cart_changed") if c.args[0].cart_id == "cart-l1"]
    assert [(f.contact_id, f.version, f.line_item_count) for f in linked] == [(None, 1, 1), (contact_id, 1, 1)]
    triggers = svc.rows("SELECT contact_id, status FROM program_trigger WHERE subject_id = 'cart-l1'")
    assert triggers == [{"contact_id": contact_id, "status": "pending"}]
