"""Validation of behavioural events: the queued path's check (no domain event built) and the applied path's
parse must agree on every event, valid or not, down to the field violations."""

from datetime import datetime, timezone

import pytest
from google.protobuf import timestamp_pb2

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.api.convert import InvalidRequest, check_behavioural_event, parse_behavioural_event
from support import ct_payloads as ct


def _event(**fields) -> pb.BehaviouralEvent:
    event = pb.BehaviouralEvent(event_id=" ev-1 ", identity=pb.ContactIdentity(email="Ann@Example.com"), **fields)
    return event


def _cart(cart: dict | None = None, **fields) -> pb.BehaviouralEvent:
    event = _event(cart_updated=pb.CartUpdated(cart_id="cart-1", cart_version=2, **fields))
    event.cart_updated.cart.update(cart if cart is not None else {
        "lineItems": [ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)], "totalPrice": ct.money(1250),
        "cartState": "Active"})
    return event


def _with(event: pb.BehaviouralEvent, change) -> pb.BehaviouralEvent:
    change(event)
    return event


VALID = {
    "product viewed": _event(product_viewed=pb.ProductViewed(product_id="p-1", sku="S-1")),
    "custom event": _event(custom_event=pb.CustomEvent(name="wishlist_add")),
    "cart": _cart(),
    "anonymous only": pb.BehaviouralEvent(event_id="ev-2", identity=pb.ContactIdentity(anonymous_id="anon-7"),
                                          product_viewed=pb.ProductViewed(product_id="p-1")),
    "nanoseconds": _with(_event(custom_event=pb.CustomEvent(name="x")),
                         lambda e: e.occurred_at.FromJsonString("2026-11-27T09:30:15.123456789Z")),
    "before 1970": _with(_event(product_viewed=pb.ProductViewed(product_id="p")),
                         lambda e: e.occurred_at.FromJsonString("1969-07-20T20:17:40Z")),
    "locales": _event(product_viewed=pb.ProductViewed(product_id="p"), locale="zh-Hant-TW", currency="GBP"),
    "properties Dotdigital takes": _with(_event(custom_event=pb.CustomEvent(name="x")),
                                         lambda e: e.custom_event.properties.update(
                                             {"Size_1": "M", "tags": ["a", {"in-stock": True}], "n": 2})),
    "underscore locale": _event(product_viewed=pb.ProductViewed(product_id="p"), locale="en_GB"),
}

INVALID = {
    "no event id": (pb.BehaviouralEvent(identity=pb.ContactIdentity(email="a@example.com"),
                                        custom_event=pb.CustomEvent(name="x")), ["behavioural_event.event_id"]),
    "event id too long": (_with(_event(custom_event=pb.CustomEvent(name="x")),
                                lambda e: setattr(e, "event_id", "e" * 201)), ["behavioural_event.event_id"]),
    "no identity": (pb.BehaviouralEvent(event_id="ev", custom_event=pb.CustomEvent(name="x")),
                    ["behavioural_event.identity"]),
    "junk customer id": (pb.BehaviouralEvent(event_id="ev", identity=pb.ContactIdentity(customer_id="null"),
                                             custom_event=pb.CustomEvent(name="x")),
                         ["behavioural_event.identity.customer_id"]),
    "bad email and mobile": (pb.BehaviouralEvent(event_id="ev", identity=pb.ContactIdentity(
        email="not-an-address", mobile_number="07700900123"), custom_event=pb.CustomEvent(name="x")),
        ["behavioural_event.identity.email", "behavioural_event.identity.mobile_number"]),
    "no kind": (_event(), ["behavioural_event.kind"]),
    "product without id": (_event(product_viewed=pb.ProductViewed(sku="S")),
                           ["behavioural_event.product_viewed.product_id"]),
    "custom event without name": (_event(custom_event=pb.CustomEvent()), ["behavioural_event.custom_event.name"]),
    "custom event name too long": (_event(custom_event=pb.CustomEvent(name="n" * 101)),
                                   ["behavioural_event.custom_event.name"]),
    "cart without id": (_with(_cart(), lambda e: setattr(e.cart_updated, "cart_id", "")),
                        ["behavioural_event.cart_updated.cart_id"]),
    # blank ids would become blank Dotdigital record keys (/ProductViews/%20%20)
    "product with a blank id": (_event(product_viewed=pb.ProductViewed(product_id="  ")),
                                ["behavioural_event.product_viewed.product_id"]),
    "custom event with a blank name": (_event(custom_event=pb.CustomEvent(name=" \t")),
                                       ["behavioural_event.custom_event.name"]),
    # what Dotdigital refuses inside an insight record: refused here, not dead-lettered after an OK
    "a property key with a space": (_with(_event(product_viewed=pb.ProductViewed(product_id="p")),
                                          lambda e: e.product_viewed.properties.update({"size grid": "M"})),
                                    ["behavioural_event.product_viewed.properties.size grid"]),
    "a nested property key with a non-ASCII letter": (
        _with(_event(custom_event=pb.CustomEvent(name="x")),
              lambda e: e.custom_event.properties.update({"item": {"größe": "M"}})),
        ["behavioural_event.custom_event.properties.item.größe"]),
    "an array of arrays": (_with(_event(custom_event=pb.CustomEvent(name="x")),
                                 lambda e: e.custom_event.properties.update({"grid": [[1, 2], [3, 4]]})),
                           ["behavioural_event.custom_event.properties.grid[0]"]),
    "keys differing by - and _": (_with(_event(product_viewed=pb.ProductViewed(product_id="p")),
                                        lambda e: e.product_viewed.properties.update({"a-b": 1, "a_b": 2})),
                                  ["behavioural_event.product_viewed.properties.a_b"]),
    "cart with a blank id": (_with(_cart(), lambda e: setattr(e.cart_updated, "cart_id", "   ")),
                             ["behavioural_event.cart_updated.cart_id"]),
    "not a cart": (_cart({"lineItems": "nope"}), ["behavioural_event.cart_updated.cart"]),
    "timestamp beyond 9999": (_with(_event(custom_event=pb.CustomEvent(name="x")),
                                    lambda e: setattr(e.occurred_at, "seconds", 10**12)),
                              ["behavioural_event.occurred_at"]),
    "bad locale and currency": (_event(product_viewed=pb.ProductViewed(product_id="p"), locale="xx_!!",
                                       currency="euro"),
                                ["behavioural_event.currency", "behavioural_event.locale"]),
    "cart without its cart": (_with(_cart(), lambda e: e.cart_updated.ClearField("cart")),
                              ["behavioural_event.cart_updated.cart"]),
    "cart of another id": (_cart({"id": "cart-2", "lineItems": [], "totalPrice": ct.money(0), "cartState": "Active"}),
                           ["behavioural_event.cart_updated.cart.id"]),
    "cart with negative nanos": (_with(_cart(), lambda e: setattr(e.occurred_at, "nanos", -1)),
                                 ["behavioural_event.occurred_at"]),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_events_pass_both_and_the_check_returns_the_event_id(name):
    event = VALID[name]
    parsed = parse_behavioural_event(event, None, "uk")
    assert check_behavioural_event(event) == parsed.event_id == event.event_id.strip()
    if event.HasField("occurred_at"):
        expected = event.occurred_at.ToDatetime(tzinfo=timezone.utc)
        assert parsed.occurred_at == expected.replace(microsecond=event.occurred_at.nanos // 1000)


@pytest.mark.parametrize("name", INVALID)
def test_invalid_events_get_the_same_violations_from_both(name):
    event, fields = INVALID[name]
    with pytest.raises(InvalidRequest) as parsed:
        parse_behavioural_event(event, None, "uk")
    with pytest.raises(InvalidRequest) as checked:
        check_behavioural_event(event)
    assert [v.field for v in parsed.value.violations] == fields
    assert checked.value.violations == parsed.value.violations


def test_event_times_are_written_to_the_second_in_utc():
    """The text form of occurred_at in the insight data (lastViewedAt, occurredAt, cart modified time) is
    cached per second: neighbouring seconds and repeated ones must each get their own text."""
    seen = {}
    for seconds in (1795000000, 1795000001, 1795000000, 0, -1, 253402300799):
        event = _event(custom_event=pb.CustomEvent(name="x"), occurred_at=timestamp_pb2.Timestamp(seconds=seconds,
                                                                                                 nanos=999_999_999))
        text = parse_behavioural_event(event, None, "uk").data["occurredAt"]
        expected = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if seconds >= 0 \
            else "1969-12-31T23:59:59Z"
        assert text == expected
        seen.setdefault(seconds, text)
        assert seen[seconds] == text
    viewed = parse_behavioural_event(_with(_event(product_viewed=pb.ProductViewed(product_id="p")),
                                           lambda e: e.occurred_at.FromJsonString("2026-11-27T09:30:15.5Z")),
                                     None, "uk")
    assert viewed.data["lastViewedAt"] == "2026-11-27T09:30:15Z"
    assert viewed.occurred_at == datetime(2026, 11, 27, 9, 30, 15, 500000, tzinfo=timezone.utc)
