"""What a behavioural event must carry, and what stands in for what it leaves out, through real gRPC against the
Dotdigital sandbox (SQLite and PostgreSQL): an event without ``occurred_at`` takes the time it was received (applied
and queued: a queued event is stored with it, not stamped when it is applied), and a ``cart_updated`` needs its cart,
whose id must be the event's ``cart_id``."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import grpc
import pytest

from support import all_settled, contact_request, field_violations, make_settings, outbox_rows, wait_for
from ctdd.domain.collections import BROWSE_COLLECTION, CUSTOM_EVENTS_COLLECTION
from ctdd.sync.v1 import sync_service_pb2 as pb

EMAIL = "when@example.com"


@pytest.fixture
async def svc(service_factory, database_url, sandbox):
    svc = await service_factory(make_settings(database_url, sandbox))
    await svc.stub.SyncContact(contact_request(email=EMAIL, first_name="Wen"))
    await wait_for(lambda: all_settled(svc), what="contact created")
    return svc


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


@pytest.mark.parametrize("processing", [pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED])
async def test_an_event_without_occurred_at_takes_the_time_it_was_received(svc, sandbox, processing):
    before = int(time.time())
    view = pb.BehaviouralEvent(event_id="v-1", identity=pb.ContactIdentity(email=EMAIL),
                               product_viewed=pb.ProductViewed(product_id="p-1"))
    custom = pb.BehaviouralEvent(event_id="c-1", identity=pb.ContactIdentity(email=EMAIL),
                                 custom_event=pb.CustomEvent(name="wishlist_added"))
    for event in (view, custom):
        await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=processing))
    await wait_for(lambda: len(outbox_rows(svc)) >= 3 and all_settled(svc), what="events applied and delivered")
    after = time.time()
    viewed = sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)["p-1"]["lastViewedAt"]
    (occurred,) = [r["occurredAt"] for r in sandbox.insight_records(CUSTOM_EVENTS_COLLECTION,
                                                                    contact_email=EMAIL).values()]
    for text in (viewed, occurred):
        assert text and before <= _seconds(text) <= after


async def test_a_cart_without_its_cart_or_with_another_cart_id_is_refused(svc, sandbox):
    def cart_event(cart: dict | None) -> pb.TrackEventRequest:
        event = pb.BehaviouralEvent(event_id="cart-1", identity=pb.ContactIdentity(email=EMAIL),
                                    cart_updated=pb.CartUpdated(cart_id="cart-a", cart_version=2))
        if cart is not None:
            event.cart_updated.cart.update(cart)
        return pb.TrackEventRequest(store_key="uk", behavioural_event=event)

    cart = {"id": "cart-b", "version": 2, "cartState": "Active", "lineItems": [],
            "totalPrice": {"type": "centPrecision", "currencyCode": "GBP", "centAmount": 0, "fractionDigits": 2}}
    for body, field in ((None, "behavioural_event.cart_updated.cart"), (cart, "behavioural_event.cart_updated.cart.id")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.stub.TrackEvent(cart_event(body))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(info.value)
    # the same cart under its own id is applied
    response = await svc.stub.TrackEvent(cart_event({**cart, "id": "cart-a"}))
    assert [n.outcome for n in response.notifications] == [pb.EVENT_OUTCOME_APPLIED]


async def test_two_unversioned_cart_changes_within_one_second_both_apply(svc):
    # a cart without a version or lastModifiedAt is ordered by the time it came in: stamped to the whole second,
    # the second change of one second looked as old as the first and was dropped as stale
    def change(i: int, items: int) -> pb.TrackEventRequest:
        event = pb.BehaviouralEvent(event_id=f"cart-s{i}", identity=pb.ContactIdentity(email=EMAIL),
                                    cart_updated=pb.CartUpdated(cart_id="cart-s"))
        event.cart_updated.cart.update({"cartState": "Active", "lineItems": [
            {"id": f"li-{k}", "productId": f"p-{k}", "quantity": 1} for k in range(items)],
            "totalPrice": {"currencyCode": "GBP", "centAmount": 100 * items}})
        return pb.TrackEventRequest(store_key="uk", behavioural_event=event)

    while time.time() % 1 > 0.5:  # both in one second
        time.sleep(0.05)
    first = await svc.stub.TrackEvent(change(1, 1))
    await asyncio.sleep(0.01)
    second = await svc.stub.TrackEvent(change(2, 2))
    assert [n.outcome for n in (*first.notifications, *second.notifications)] == [pb.EVENT_OUTCOME_APPLIED] * 2
