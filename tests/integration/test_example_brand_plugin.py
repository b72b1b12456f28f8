"""The example brand plugin (plugins/examples/acme_brand.py), tested as a plugin author would: with the
fixtures of the ``ctdd`` pytest plugin (``ctdd_service``), scoped to its store by configuration."""

from __future__ import annotations

from ctdd.plugins.examples import acme_brand

STORES = {"acme-de": {"locale": "de-DE", "currency": "EUR", "commercetools_project": "test-project"},
          "other": {"locale": "en-GB", "currency": "GBP", "commercetools_project": "test-project"}}
SCOPE = {"acme_brand": {"stores": ["acme-de"]}}
FIELDS = ["VORNAME", "SCHUHGROESSE", "LOYALTY_TIER"]


def start(ctdd_service):
    return ctdd_service(("acme_brand", acme_brand), stores=STORES, plugins_config=SCOPE, data_fields=FIELDS)


def test_acme_fields_enrichment_and_suppression(ctdd_service):
    svc = start(ctdd_service)
    assert list(svc.sync_contact("acme-de", email="bob@acme.example").suppression_reasons) == ["ACME staff address"]
    assert list(svc.sync_contact("acme-de", email="qa+test@example.com").suppression_reasons) == ["ACME test address"]
    svc.sync_contact("acme-de", email="ann@example.com", customer_id="c-100", first_name="Ann",
                     custom={"shoeSize": "38"})
    svc.wait_delivered()
    fields = svc.contact("ann@example.com")["dataFields"]
    assert (fields["VORNAME"], fields["SCHUHGROESSE"], fields["LOYALTY_TIER"]) == ("Ann", "38", "gold")
    assert svc.contact("bob@acme.example") is None and svc.contact("qa+test@example.com") is None


def test_the_plugin_never_runs_for_another_store(ctdd_service):
    svc = start(ctdd_service)
    assert not svc.sync_contact("other", email="bob@acme.example").suppression_reasons
    svc.sync_contact("other", email="cat@example.com", customer_id="c-100", first_name="Cat")
    svc.wait_delivered()
    assert svc.contact("bob@acme.example") is not None
    fields = svc.contact("cat@example.com")["dataFields"]
    assert fields["FIRSTNAME"] == "Cat" and not fields.get("VORNAME") and not fields.get("LOYALTY_TIER")


def order(order_id: str, email: str, gift_wrap: bool) -> dict:
    price = {"type": "centPrecision", "currencyCode": "EUR", "centAmount": 2500, "fractionDigits": 2}
    return {"id": order_id, "version": 1, "orderNumber": "A-1", "customerEmail": email, "orderState": "Open",
            "createdAt": "2026-11-01T10:00:00.000Z", "lastModifiedAt": "2026-11-01T10:00:00.000Z",
            "totalPrice": price, "locale": "de-DE", "custom": {"fields": {"giftWrap": gift_wrap}},
            "lineItems": [{"id": "li-1", "productId": "p-1", "name": {"de-DE": "Hut"}, "quantity": 1,
                           "variant": {"id": 1, "sku": "SKU-1"}, "price": {"value": price}, "totalPrice": price}]}


def test_orders_records_carry_the_brand(ctdd_service):
    # needs ctdd_map_order to be called where the Orders record is built (ctdd.ingest.events)
    svc = start(ctdd_service)
    svc.order_created(order("o-1", "ann@example.com", True), store="acme-de")
    svc.order_created(order("o-2", "cat@example.com", True), store="other")
    svc.wait_delivered()
    [acme] = svc.insight("Orders", "ann@example.com").values()
    assert acme["brand"] == "ACME" and acme["giftWrapped"] is True
    [other] = svc.insight("Orders", "cat@example.com").values()
    assert "brand" not in other and "giftWrapped" not in other


def test_brand_plugin_end_to_end(ctdd_service):  # quoted in docs/plugins.md: at most 15 lines
    svc = ctdd_service(("acme_brand", acme_brand), stores={"acme-de": {"locale": "de-DE"}, "other": {}},
                       plugins_config={"acme_brand": {"stores": ["acme-de"]}}, data_fields=["VORNAME"])
    assert svc.sync_contact("acme-de", email="bob@acme.example").suppression_reasons
    svc.sync_contact("acme-de", email="ann@example.com", first_name="Ann")
    svc.sync_contact("other", email="udo@example.com", first_name="Udo")
    svc.wait_delivered()
    assert svc.contact("ann@example.com")["dataFields"]["VORNAME"] == "Ann"
    assert not svc.contact("udo@example.com")["dataFields"].get("VORNAME")
    assert svc.contact("bob@acme.example") is None
