"""ctdd.domain.store_routing: which ctdd stores an order, cart or customer of a commercetools project goes to."""

from __future__ import annotations

import pytest

from ctdd.domain.store_routing import Route, route

PROJECT_STORES = ("at", "de", "uk")


def routed(kind: str, resource: dict, caller: str = "uk") -> Route:
    return route(kind, resource, caller, PROJECT_STORES, project="shop")


def stores(*keys: str) -> list[dict]:
    return [{"typeId": "store", "key": key} for key in keys]


@pytest.mark.parametrize("kind", ["order", "cart"])
def test_an_order_or_cart_goes_to_the_store_it_names_else_the_callers(kind):
    assert routed(kind, {"store": {"typeId": "store", "key": "de"}}) == Route(("de",))
    assert routed(kind, {"store": {"key": "uk"}}, caller="de") == Route(("uk",))
    for storeless in ({}, {"store": None}, {"store": {"typeId": "store", "id": "s-1"}}, {"store": {"key": ""}}):
        assert routed(kind, storeless, caller="de") == Route(("de",))
    assert routed(kind, {"store": {"key": "fr"}}) == Route((), f"{kind} of commercetools store 'fr', which is not a "
                                                               "configured store of commercetools project 'shop'")


def test_a_customer_goes_to_each_configured_store_it_lists_the_callers_first():
    assert routed("customer", {"stores": []}, caller="de") == Route(("de",))  # a global customer
    assert routed("customer", {}, caller="de") == Route(("de",))
    assert routed("customer", {"stores": stores("de")}) == Route(("de",))
    listed = {"stores": stores("uk", "de", "at", "de", "fr")}
    assert routed("customer", listed, caller="de") == Route(("de", "at", "uk"))
    assert routed("customer", {"stores": stores("uk", "de")}, caller="at") == Route(("de", "uk"))


def test_a_customer_of_stores_none_of_which_is_configured_is_ignored_with_a_bounded_reason():
    assert routed("customer", {"stores": stores("fr")}).reason == (
        "customer of commercetools store 'fr', which is not a configured store of commercetools project 'shop'")
    many = routed("customer", {"stores": stores(*(f"s{i}" for i in range(8)), "x" * 500)})
    assert many.store_keys == () and many.reason.startswith("customer of commercetools stores 's0', 's1', 's2', 's3', "
                                                            "'s4' ..., none of which is a configured store")
    assert len(many.reason) < 200
