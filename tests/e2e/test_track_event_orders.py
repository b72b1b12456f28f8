"""Order notifications whose effect depends on what was applied before them: the review request of an order
delivered by an update that emits several messages of one version, an order number set after the order was
created, and an order moving to another contact (its email or customer set). Real gRPC, the fake commercetools
API over HTTP, the Dotdigital sandbox over HTTP; every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools
from support import all_settled, wait_for
from support import ct_payloads as ct
from support.carts import SchedulingSpy, cart_settings, ct_client


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        fake.add("subscriptions", {"key": "ctdd", "destination": {"type": "SQS", "queueUrl": "q", "region": "eu"},
                                   "messages": [{"resourceTypeId": "order", "types": []}]})
        yield fake


@pytest.fixture
def spy(monkeypatch):
    return SchedulingSpy().install(monkeypatch)


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    return await service_factory(cart_settings(database_url, sandbox, fake_ct))


def track(notification: dict) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw(notification))


def outcomes(resp: pb.TrackEventResponse) -> list[str]:
    return [pb.EventOutcome.Name(n.outcome).removeprefix("EVENT_OUTCOME_") for n in resp.notifications]


def review_triggers(svc) -> list[dict]:
    return svc.rows("SELECT subject_id, status FROM program_trigger WHERE program_kind = 'review_request'")


# -- review_request: whichever message of the delivering update comes first -------------------------------------
@pytest.mark.parametrize("first", ["OrderStateChanged", "OrderShipmentStateChanged"])
async def test_review_request_follows_the_delivered_state_whichever_message_brings_it(svc, fake_ct, spy, first):
    order = fake_ct.add("orders", ct.order("ord-rv", number="RV-1", email="rev@example.com", version=1,
                                           shipmentState="Pending"))
    created = await svc.stub.TrackEvent(track(ct.message("order", "ord-rv", "OrderCreated", version=1, order=order)))
    assert outcomes(created) == ["APPLIED"] and review_triggers(svc) == []
    # one update (Complete + Delivered): commercetools emits both messages with the same resourceVersion
    await ct_client(svc).update("orders", "ord-rv", 1, [
        {"action": "changeOrderState", "orderState": "Complete"},
        {"action": "changeShipmentState", "shipmentState": "Delivered"}])
    messages = {m["type"]: m for m in fake_ct.take_notifications()}
    assert sorted(messages) == ["OrderShipmentStateChanged", "OrderStateChanged"]
    assert {m["resourceVersion"] for m in messages.values()} == {2}
    second = next(t for t in messages if t != first)
    r1 = await svc.stub.TrackEvent(track(messages[first]))
    r2 = await svc.stub.TrackEvent(track(messages[second]))
    assert (outcomes(r1), outcomes(r2)) == (["APPLIED"], ["STALE"])
    assert review_triggers(svc) == [{"subject_id": "ord-rv", "status": "pending"}]

    # a later update of the delivered order (still Delivered) asks for no second review
    await ct_client(svc).update("orders", "ord-rv", 2, [{"action": "changePaymentState", "paymentState": "Paid"}])
    later = await svc.stub.TrackEvent(track(ct.message("order", "ord-rv", "OrderPaymentStateChanged", version=3,
                                                       paymentState="Paid")))
    assert outcomes(later) == ["APPLIED"]
    assert len(spy.of("on_shipment_delivered")) == 1 and len(review_triggers(svc)) == 1


async def test_an_imported_order_first_seen_by_its_change_notification_starts_no_program(svc, fake_ct, spy):
    """An order imported already delivered (Order Import API: it has completedAt) whose ResourceCreated change
    notification comes before its OrderImported message: its record is sent, no review is requested."""
    order = fake_ct.add("orders", ct.order("ord-imp", number="IMP-1", email="imp@example.com", version=1,
                                           created="2024-03-01T10:00:00.000Z", state="Complete",
                                           shipmentState="Delivered", completedAt="2024-03-01T10:00:00.000Z"))
    created = await svc.stub.TrackEvent(track(ct.change("ResourceCreated", "order", "ord-imp", version=1)))
    imported = await svc.stub.TrackEvent(track(ct.message("order", "ord-imp", "OrderImported", version=1,
                                                          order=order)))
    assert (outcomes(created), outcomes(imported)) == (["APPLIED"], ["STALE"])
    assert review_triggers(svc) == [] and spy.of("on_shipment_delivered") == []
    assert svc.rows("SELECT program_kind FROM program_trigger") == []


def orders_of(sandbox, email: str) -> dict[str, dict]:
    return sandbox.insight_records("Orders", contact_email=email)


def record_deletes(sandbox) -> list:
    return [r for r in sandbox.requests if r.method == "DELETE" and "/insightData/v3/contacts/" in r.path]


# -- an order number set after the order was created: the record moves to the number ----------------------------
async def test_an_order_number_set_later_moves_the_record_to_it(svc, sandbox, fake_ct):
    order = fake_ct.add("orders", ct.order("ord-nn", number=None, email="num@example.com", version=1))
    created = await svc.stub.TrackEvent(track(ct.message("order", "ord-nn", "OrderCreated", version=1, order=order)))
    assert outcomes(created) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="the first record")
    assert set(orders_of(sandbox, "num@example.com")) == {"ord-nn"}  # keyed by the id while it has no number

    await ct_client(svc).update("orders", "ord-nn", 1, [{"action": "setOrderNumber", "orderNumber": "N-100"},
                                                        {"action": "changeOrderState", "orderState": "Confirmed"}])
    [changed] = fake_ct.take_notifications()
    assert outcomes(await svc.stub.TrackEvent(track(changed))) == ["APPLIED"]
    late = ct.message("order", "ord-nn", "OrderCreated", version=1, order=order, msg_id="late-created")
    assert outcomes(await svc.stub.TrackEvent(track(late))) == ["STALE"]
    await wait_for(lambda: all_settled(svc), what="the move")

    records = orders_of(sandbox, "num@example.com")
    assert set(records) == {"N-100"}  # one record per order, under its number
    assert records["N-100"]["orderId"] == "ord-nn" and records["N-100"]["orderStatus"] == "Confirmed"
    [deleted] = record_deletes(sandbox)
    assert deleted.path.endswith("/Orders/ord-nn") and deleted.status == 204
    assert svc.rows("SELECT order_key FROM order_summary") == [{"order_key": "N-100"}]
    fields = sandbox.get_contact(email="num@example.com")["dataFields"]
    assert fields["LAST_ORDER_ID"] == "N-100" and fields["NUMBER_OF_ORDERS"] == 1
    assert {r["status"] for r in svc.rows("SELECT status FROM outbox_message")} == {"delivered"}


# -- an order moving to another contact: counted once, its record only there ------------------------------------
async def test_an_order_email_corrected_later_counts_on_the_right_contact_only(svc, sandbox, fake_ct):
    order = fake_ct.add("orders", ct.order("ord-em", number="EM-1", email="typo@example.com", version=1))
    created = await svc.stub.TrackEvent(track(ct.message("order", "ord-em", "OrderCreated", version=1, order=order)))
    assert outcomes(created) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="the guest order")
    assert "EM-1" in orders_of(sandbox, "typo@example.com")
    [(typo_contact, placed)] = [(r["contact_id"], r["program_kind"]) for r in svc.rows(
        "SELECT contact_id, program_kind FROM program_trigger WHERE subject_id = 'ord-em' AND status = 'pending'")]
    assert placed == "post_purchase_first"

    fake_ct.add("orders", {**order, "version": 2, "customerEmail": "right@example.com"})  # setCustomerEmail
    moved = await svc.stub.TrackEvent(track(ct.message("order", "ord-em", "OrderCustomerEmailSet", version=2,
                                                       email="right@example.com", oldEmail="typo@example.com")))
    assert outcomes(moved) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="the move")

    right = sandbox.get_contact(email="right@example.com")["dataFields"]
    assert (right["NUMBER_OF_ORDERS"], right["TOTAL_SPEND"], right["LAST_ORDER_ID"]) == (1, 25.0, "EM-1")
    assert set(orders_of(sandbox, "right@example.com")) == {"EM-1"}
    typo = sandbox.get_contact(email="typo@example.com")["dataFields"]
    assert typo["NUMBER_OF_ORDERS"] == 0 and typo["TOTAL_SPEND"] is None and typo["LAST_ORDER_ID"] is None
    assert orders_of(sandbox, "typo@example.com") == {}
    [deleted] = record_deletes(sandbox)
    assert deleted.path.endswith("/Orders/EM-1") and deleted.status == 204
    assert {r["status"] for r in svc.rows("SELECT status FROM outbox_message")} == {"delivered"}
    # the post-purchase program goes to whoever placed the order, not to the mistyped address
    assert svc.rows("SELECT contact_id, status FROM program_trigger WHERE subject_id = 'ord-em'") == [
        {"contact_id": int(moved.notifications[0].contact_id), "status": "pending"}]
    assert int(moved.notifications[0].contact_id) != typo_contact


async def test_a_guest_order_set_to_a_known_customer_moves_to_its_contact(svc, sandbox, fake_ct):
    known = await svc.stub.TrackEvent(track(ct.message("customer", "cust-k", "CustomerCreated", version=1,
                                                       customer=ct.customer("cust-k", "known@example.com"))))
    order = fake_ct.add("orders", ct.order("ord-cs", number="CS-1", email="guest@example.com", version=1))
    await svc.stub.TrackEvent(track(ct.message("order", "ord-cs", "OrderCreated", version=1, order=order)))
    await wait_for(lambda: all_settled(svc), what="the customer and the guest order")
    # the guest contact is deleted in Dotdigital meanwhile (its record with it): its removal still settles
    assert sandbox.delete_contact(email="guest@example.com")

    fake_ct.add("orders", {**order, "version": 2, "customerId": "cust-k"})
    moved = await svc.stub.TrackEvent(track(ct.message("order", "ord-cs", "OrderCustomerSet", version=2,
                                                       customer={"typeId": "customer", "id": "cust-k"})))
    assert outcomes(moved) == ["APPLIED"] and moved.notifications[0].contact_id == known.notifications[0].contact_id
    await wait_for(lambda: all_settled(svc), what="the move")

    fields = sandbox.get_contact(email="known@example.com")["dataFields"]
    assert (fields["NUMBER_OF_ORDERS"], fields["TOTAL_SPEND"]) == (1, 25.0)
    assert set(orders_of(sandbox, "known@example.com")) == {"CS-1"}
    guest = sandbox.get_contact(email="guest@example.com")["dataFields"]  # upserted again with its aggregates
    assert guest["NUMBER_OF_ORDERS"] == 0 and guest["TOTAL_SPEND"] is None
    assert orders_of(sandbox, "guest@example.com") == {}
    [deleted] = record_deletes(sandbox)
    assert deleted.path.endswith("/Orders/CS-1") and deleted.status == 404  # already gone: fine
    rows = svc.rows("SELECT kind, status, last_response_code FROM outbox_message WHERE kind = 'insight.delete'")
    assert rows == [{"kind": "insight.delete", "status": "delivered", "last_response_code": 404}]
    assert svc.rows("SELECT contact_id FROM order_summary") == [{"contact_id": int(known.notifications[0].contact_id)}]


async def test_custom_line_items_multiple_shippings_and_discount_codes_reach_the_orders_record(svc, fake_ct, sandbox):
    """A gift wrap (custom line item) is a product of the record and counts in its subtotal; with shippingMode
    Multiple the shippings' prices, methods and deliveries are the record's; a discount code named by id in the
    message is sent as the code the shopper typed (read once), one that cannot be read as its id."""
    fake_ct.add("discount-codes", {"id": "dc-1", "version": 1, "code": "WINTER10", "cartDiscounts": []})
    shipping = [
        {"shippingKey": "home", "shippingInfo": {"shippingMethodName": "DHL", "price": ct.money(499),
                                                 "deliveries": [{"id": "d-1", "createdAt": "2026-01-02T00:00:00.000Z",
                                                                 "parcels": [{"trackingData": {"trackingId": "TRK1",
                                                                                               "carrier": "DHL"}}]}]}},
        {"shippingKey": "work", "shippingInfo": {"shippingMethodName": "UPS", "price": ct.money(301)}},
    ]
    order = fake_ct.add("orders", ct.order(
        "ord-x", number="X-1", email="extras@example.com", shippingMode="Multiple", shipping=shipping,
        customLineItems=[{"id": "cli-1", "name": {"en": "Gift wrap"}, "slug": "gift-wrap", "quantity": 1,
                          "money": ct.money(300), "totalPrice": ct.money(300)}],
        discountCodes=[{"discountCode": {"typeId": "discount-code", "id": "dc-1"}, "state": "MatchesCart"},
                       {"discountCode": {"typeId": "discount-code", "id": "dc-gone"}, "state": "MatchesCart"}]))
    created = await svc.stub.TrackEvent(track(ct.message("order", "ord-x", "OrderCreated", version=1, order=order)))
    assert outcomes(created) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="the order")
    record = orders_of(sandbox, "extras@example.com")["X-1"]
    assert [(p["name"], p["totalPrice"]) for p in record["products"]] == [("Blue Hat", 25.0), ("Gift wrap", 3.0)]
    assert record["orderSubtotal"] == 28.0
    assert (record["shippingTotal"], record["deliveryMethod"]) == (8.0, "DHL, UPS")
    assert record["deliveries"] == [{"id": "d-1", "createdAt": "2026-01-02T00:00:00.000Z",
                                     "parcels": [{"trackingId": "TRK1", "carrier": "DHL"}]}]
    assert record["discountCodes"] == ["WINTER10", "dc-gone"]


@pytest.mark.parametrize("erasure", [True, False], ids=["erased", "deleted"])
async def test_an_order_deleted_with_data_erasure_has_its_record_deleted(svc, fake_ct, sandbox, erasure):
    order = fake_ct.add("orders", ct.order("ord-del", number="DEL-1", email="del@example.com"))
    created = ct.message("order", "ord-del", "OrderCreated", version=1, order=order)
    await svc.stub.TrackEvent(track(created))
    await wait_for(lambda: all_settled(svc), what="the order")
    assert "DEL-1" in orders_of(sandbox, "del@example.com")
    gone = await svc.stub.TrackEvent(track({**ct.change("ResourceDeleted", "order", "ord-del", version=2),
                                            "dataErasure": erasure}))
    await wait_for(lambda: all_settled(svc), what="the deletion")
    if not erasure:  # a plain deletion keeps the record (the shop's history)
        assert outcomes(gone) == ["IGNORED"] and "DEL-1" in orders_of(sandbox, "del@example.com")
        return
    assert outcomes(gone) == ["APPLIED"] and len(gone.outbox_message_ids) == 1
    assert "DEL-1" not in orders_of(sandbox, "del@example.com")
    # the creation message delivered again later is stale: the record is not sent again
    again = await svc.stub.TrackEvent(track({**created, "id": "another-delivery-id"}))
    assert outcomes(again) == ["STALE"]
    await wait_for(lambda: all_settled(svc), what="nothing")
    assert "DEL-1" not in orders_of(sandbox, "del@example.com")


async def test_discount_codes_the_api_client_may_not_read_are_named_by_id_without_asking_again(svc, fake_ct,
                                                                                                sandbox):
    """No view_discount_codes scope (403): the order is applied with the id, and the next order does not ask."""
    fake_ct.inject_fault(status=403, times=5, method="GET", path_contains="/discount-codes/",
                         body={"statusCode": 403, "message": "Insufficient scope", "errors": []})
    for i in (1, 2):
        order = fake_ct.add("orders", ct.order(f"ord-s{i}", number=f"S-{i}", email="scope@example.com",
                                               discountCodes=[{"discountCode": {"typeId": "discount-code",
                                                                                "id": f"dc-{i}"}}]))
        created = await svc.stub.TrackEvent(track(ct.message("order", f"ord-s{i}", "OrderCreated", version=1,
                                                             order=order)))
        assert outcomes(created) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="the orders")
    records = orders_of(sandbox, "scope@example.com")
    assert (records["S-1"]["discountCodes"], records["S-2"]["discountCodes"]) == (["dc-1"], ["dc-2"])
    assert len(fake_ct.requests_matching("GET", "/discount-codes/")) == 1
