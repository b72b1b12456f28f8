"""The CartInsight record: one schema for every cart (Dotdigital locks a collection's schema on its first
record), prices after discounts, and the store's product and cart URL templates."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from ctdd.domain.commerce import CartContext, cart_record, fill_template, sale_price

CTX = CartContext(store_key="uk", locale="en-GB", currency="GBP",
                  product_url_template="https://shop.example/{locale}/p/{slug}?sku={sku}&id={product_id}&s={store}",
                  cart_url_template="https://shop.example/{store}/cart/{cart_id}?lang={locale}")
DIGITS = {"GBP": 2, "EUR": 2, "JPY": 0, "KWD": 3}


def money(amount: int, currency: str) -> dict:
    return {"type": "centPrecision", "currencyCode": currency, "centAmount": amount, "fractionDigits": DIGITS[currency]}


def line(rng: random.Random, currency: str, *, discounted: bool, images: bool, slug: bool) -> dict:
    qty = rng.randint(1, 4)
    unit = rng.randint(1, 50_000)
    li = {"id": f"li-{rng.random()}", "productId": f"p-{rng.randint(1, 99)}", "name": {"en": "Hat", "de": "Hut"},
          "variant": {"id": 1, "sku": f"SKU {rng.randint(1, 9)}/x"}, "price": {"value": money(unit, currency)},
          "quantity": qty, "totalPrice": money(unit * qty, currency), "discountedPricePerQuantity": []}
    if images:
        li["variant"]["images"] = [{"url": "https://img.example/1.jpg"}, {"url": "https://img.example/2.jpg"}]
    if slug:
        li["productSlug"] = {"en": "blue-hat", "de-DE": "blauer-hut"}
    if discounted:
        off = unit // 3
        li["discountedPricePerQuantity"] = [{"quantity": qty - 1, "discountedPrice": {
            "value": money(unit - off, currency), "includedDiscounts": []}}] if qty > 1 else []
        li["price"]["discounted"] = {"value": money(unit - 1, currency)}
        li["totalPrice"] = money((unit - off) * (qty - 1) + (unit - 1), currency)
    return li


def generated_carts():
    rng = random.Random(13)
    for currency, discounted, images, slug, n, state in itertools.product(
            DIGITS, (False, True), (False, True), (False, True), (0, 1, 3), ("Active", "Ordered")):
        items = [line(rng, currency, discounted=discounted, images=images, slug=slug) for _ in range(n)]
        total = sum(li["totalPrice"]["centAmount"] for li in items)
        cart = {"id": f"c-{rng.random()}", "version": 2, "cartState": state, "lineItems": items,
                "totalPrice": money(total, currency), "createdAt": "2026-11-01T10:00:00.000Z",
                "lastModifiedAt": "2026-11-01T10:05:00.000Z"}
        if discounted:
            cart["discountOnTotalPrice"] = {"discountedAmount": money(100, currency)}
            cart["taxedPrice"] = {"totalTax": money(17, currency)}
        if n == 1:
            cart["locale"] = "de-DE"
        if n == 3:
            del cart["createdAt"]
        yield cart
    yield {"lineItems": [], "cartState": "Active"}  # a cart as a storefront may send it: no totals at all


def json_types(value):
    """The JSON shape of a record: key -> JSON type, lists by their first element's shape."""
    if isinstance(value, dict):
        return {k: json_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list"]
    return {bool: "boolean", float: "number", str: "string"}[type(value)]


LINE_KEYS = {"sku", "name", "imageUrl", "productUrl", "unitPrice", "salePrice", "quantity", "totalPrice"}


def test_every_cart_gives_the_same_keys_and_json_types():
    shapes, line_shapes = set(), set()
    carts = list(generated_carts())
    for cart in carts:
        record = cart_record(cart.get("id", "c-x"), cart, CTX)
        json.dumps(record, allow_nan=False)
        shapes.add(json.dumps(json_types(record), sort_keys=True))
        for item in record["lineItems"]:
            assert set(item) == LINE_KEYS
            line_shapes.add(json.dumps(json_types(item), sort_keys=True))
    assert len(carts) > 90
    assert len(shapes) == 1 and len(line_shapes) == 1
    shape = json.loads(shapes.pop())
    assert shape["subTotal"] == shape["grandTotal"] == shape["discountAmount"] == "number"
    assert json.loads(line_shapes.pop())["quantity"] == "number"


def test_empty_cart_is_a_record_without_lines():
    record = cart_record("c-1", {"lineItems": [], "cartState": "Active", "totalPrice": money(0, "GBP")}, CTX)
    assert record["lineItems"] == [] and record["subTotal"] == 0.0 and isinstance(record["subTotal"], float)
    assert record["cartPhase"] == "ORDER_PENDING" and record["currency"] == "GBP"


def test_prices_after_discounts():
    li = {"productId": "p", "quantity": 3, "price": {"value": money(1000, "GBP"), "discounted": {"value": money(900, "GBP")}},
          "discountedPricePerQuantity": [{"quantity": 2, "discountedPrice": {"value": money(750, "GBP")}}],
          "totalPrice": money(2 * 750 + 900, "GBP"), "variant": {"sku": "S"}}
    # two units with the cart discount, one with the product discount
    assert sale_price(li) == 8.0
    assert sale_price({**li, "discountedPricePerQuantity": []}) == 9.0
    assert sale_price({"quantity": 1, "price": {"value": money(1234, "GBP")}}) == 12.34
    cart = {"lineItems": [li], "totalPrice": money(2300, "GBP"),
            "discountOnTotalPrice": {"discountedAmount": money(100, "GBP")}}
    record = cart_record("c", cart, CTX)
    [item] = record["lineItems"]
    assert (item["unitPrice"], item["salePrice"], item["totalPrice"], item["quantity"]) == (10.0, 8.0, 24.0, 3.0)
    assert record["subTotal"] == 24.0 and record["grandTotal"] == 23.0
    assert record["discountAmount"] == 7.0  # 30.00 listed - 24.00 lines + 1.00 off the total


def test_urls_from_the_store_templates():
    li = {"productId": "p-7", "quantity": 1, "price": {"value": money(500, "GBP")}, "totalPrice": money(500, "GBP"),
          "productSlug": {"en": "blue-hat", "de": "blauer-hut"}, "variant": {"sku": "HAT 1/B"}}
    record = cart_record("cart-9", {"lineItems": [li], "locale": "de-DE"}, CTX)
    assert record["lineItems"][0]["productUrl"] == "https://shop.example/de-DE/p/blauer-hut?sku=HAT%201%2FB&id=p-7&s=uk"
    assert record["cartUrl"] == "https://shop.example/uk/cart/cart-9?lang=de-DE"
    # no slug for a template that needs one: no URL rather than a broken one; no template: ""
    assert cart_record("c", {"lineItems": [{**li, "productSlug": None}]}, CTX)["lineItems"][0]["productUrl"] == ""
    assert cart_record("c", {"lineItems": [li]}, CartContext())["lineItems"][0]["productUrl"] == ""
    assert cart_record("c", {"lineItems": [li]}, CartContext())["cartUrl"] == ""


@pytest.mark.parametrize("template, values, expected", [
    (None, {"a": "x"}, ""),
    ("https://s/{a}", {"a": "x y"}, "https://s/x%20y"),
    ("https://s/{a}/{b}", {"a": "x", "b": None}, ""),
    ("https://s/static", {"a": None}, "https://s/static"),
])
def test_fill_template(template, values, expected):
    assert fill_template(template, values) == expected


def test_order_complete_phase():
    assert cart_record("c", {"cartState": "Ordered"}, CTX)["cartPhase"] == "ORDER_COMPLETE"
    assert cart_record("c", {"cartState": "Active"}, CTX, phase="ORDER_COMPLETE")["cartPhase"] == "ORDER_COMPLETE"
