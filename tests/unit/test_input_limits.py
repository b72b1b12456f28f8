"""Poison is refused, with one set of limits matching the schema (issue 14, items 8-11).

The typed models of commercetools resources (``ctdd.domain.resources``), the limits of deliveries
(``ctdd.domain.notifications``) and of API values (``ctdd.api.convert``) checked against the columns of
``ctdd.db.models``, and the bounded echo of input in errors (``ctdd.domain.echo``, ``ctdd.api.errors``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from ctdd.api import convert
from ctdd.api.errors import MAX_DESCRIPTION, MAX_FIELD, MAX_VIOLATIONS, bad_request
from ctdd.api.convert import Violation
from ctdd.db import models
from ctdd.domain import notifications, resources
from ctdd.domain.echo import MAX_ECHO, clip, echo
from ctdd.domain.notifications import InvalidDelivery, parse_delivery
from ctdd.domain.resources import InvalidResource, check_resource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "commercetools"
SHARED_DIR = Path(os.environ.get("CTDD_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
SHARED_FIXTURES = SHARED_DIR / "fixtures" / "commercetools"
#: shared example file -> resource kind (the "-create" files are drafts, not resources)
SHARED_RESOURCES = {"customer": "customer", "order": "order", "cart": "cart", "payment": "payment",
                    "product-projection": "product-projections", "category": "categories"}


def _length(model, column: str) -> int:
    return model.__table__.c[column].type.length


# -- limits against the schema ---------------------------------------------------------------------
def test_api_and_delivery_limits_fit_the_columns_they_are_stored_in():
    assert resources.MAX_ID <= min(_length(models.ResourceState, "resource_id"), _length(models.Cart, "cart_id"),
                                   _length(models.Cart, "customer_id"), _length(models.Cart, "anonymous_id"),
                                   _length(models.ProductView, "product_id"), _length(models.OrderSummary, "order_id"),
                                   _length(models.OrderSummary, "order_key"), _length(models.RejectedRecord, "record_id"),
                                   _length(models.OutboxMessage, "record_id"), _length(models.ProcessedEvent, "resource_id"))
    assert convert.MAX_RESOURCE_TYPE <= min(_length(models.RejectedRecord, "record_type"),
                                            _length(models.OutboxMessage, "record_type"))
    assert notifications.MAX_TYPE_ID <= min(_length(models.ResourceState, "resource_type"),
                                            _length(models.ProcessedEvent, "resource_type"))
    assert notifications.MAX_PROJECT_KEY <= _length(models.ResourceState, "project_key")
    assert notifications.MAX_MESSAGE_ID <= _length(models.ProcessedEvent, "dedupe_key")
    # the synthetic key of a change notification: "{notificationType}:{typeId}:{id}:{version}"
    longest_type = max(len(t) for t in notifications.CHANGE_NOTIFICATION_TYPES)
    synthetic = longest_type + 1 + notifications.MAX_TYPE_ID + 1 + resources.MAX_ID + 1 + len(str(resources.MAX_VERSION))
    assert synthetic <= _length(models.ProcessedEvent, "dedupe_key")
    # a behavioural event's dedupe key: "event:{store_key}:{event_id}"
    behavioural = len("event:") + _length(models.ProcessedEvent, "store_key") + 1 + convert.MAX_EVENT_ID
    assert behavioural <= min(_length(models.ProcessedEvent, "dedupe_key"), _length(models.EventInbox, "dedupe_key"))
    assert resources.MAX_LOCALE <= _length(models.OrderSummary, "locale") and convert.MAX_LOCALE <= resources.MAX_LOCALE
    assert resources.MAX_STATE <= min(_length(models.OrderSummary, "order_state"),
                                      _length(models.OrderSummary, "shipment_state"), _length(models.Cart, "state"))
    assert _length(models.OrderSummary, "currency") == 3  # Money.currencyCode: three capital letters
    assert resources.MAX_VERSION == 2**63 - 1  # BIGINT


# -- typed models of commercetools resources ---------------------------------------------------------
@pytest.mark.skipif(not SHARED_FIXTURES.is_dir(), reason="shared commercetools fixtures not present")
@pytest.mark.parametrize("name", sorted(SHARED_RESOURCES))
def test_every_shared_commercetools_example_resource_is_accepted(name):
    check_resource(SHARED_RESOURCES[name], json.loads((SHARED_FIXTURES / f"{name}.example.json").read_text()))


@pytest.mark.skipif(not SHARED_FIXTURES.is_dir(), reason="shared commercetools fixtures not present")
@pytest.mark.parametrize("path", sorted((SHARED_FIXTURES / "subscription").glob("*.json"))
                         if (SHARED_FIXTURES / "subscription").is_dir() else [])
def test_every_shared_subscription_example_still_parses(path):
    try:
        parse_delivery(path.read_bytes())
    except notifications.UnsupportedNotification:  # an Event (Import API): acknowledged and dropped, as before
        assert "event" in path.name


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")))
def test_every_project_fixture_still_parses(path):
    parse_delivery(path.read_bytes())


def _order() -> dict:
    return {"id": "o-1", "version": 2, "customerEmail": "a@example.com", "orderNumber": "N-1",
            "createdAt": "2024-05-01T10:00:00.000Z", "lastModifiedAt": "2024-05-01T10:00:00.000Z",
            "totalPrice": {"type": "centPrecision", "currencyCode": "EUR", "centAmount": 1000, "fractionDigits": 2},
            "lineItems": [{"id": "li", "productId": "p-1", "quantity": 1, "name": {"en": "Shoe"},
                           "totalPrice": {"currencyCode": "EUR", "centAmount": 1000}}],
            "paymentInfo": {"payments": [{"typeId": "payment", "id": "pay-1"}]}, "unknownField": {"any": [1]}}


@pytest.mark.parametrize("change, field", [
    (lambda o: o.__setitem__("customerEmail", {"x": 1}), "order.customerEmail"),
    (lambda o: o.__setitem__("totalPrice", "10"), "order.totalPrice"),
    (lambda o: o.__setitem__("lineItems", [1]), "order.lineItems[0]"),
    (lambda o: o.pop("id"), "order.id"),
    (lambda o: o.__setitem__("id", 7), "order.id"),
    (lambda o: o.__setitem__("version", 2**63), "order.version"),
    (lambda o: o.__setitem__("version", True), "order.version"),
    (lambda o: o["totalPrice"].__setitem__("currencyCode", "EURO"), "order.totalPrice.currencyCode"),
    (lambda o: o["totalPrice"].__setitem__("centAmount", 10.5), "order.totalPrice.centAmount"),
    (lambda o: o.__setitem__("createdAt", "0001-01-01T00:00:00+23:59"), "order.createdAt"),
    (lambda o: o.__setitem__("lastModifiedAt", "yesterday"), "order.lastModifiedAt"),
    (lambda o: o["paymentInfo"]["payments"][0].pop("id"), "order.paymentInfo.payments[0].id"),
    (lambda o: o.__setitem__("orderNumber", "n" * 201), "order.orderNumber"),
])
def test_orders_with_wrong_types_are_refused_naming_the_field(change, field):
    check_resource("order", _order())  # the unchanged order (with an unknown field) is fine
    order = copy.deepcopy(_order())
    change(order)
    with pytest.raises(InvalidResource) as refused:
        check_resource("order", order)
    assert refused.value.reason.startswith(field + ":")


def test_a_refusal_names_fields_but_never_quotes_values():
    with pytest.raises(InvalidResource) as refused:
        check_resource("customer", {"id": "c", "email": {"secret": "jane@example.com"}, "addresses": ["x" * 10_000]})
    assert "jane@example.com" not in refused.value.reason and "xxxx" not in refused.value.reason
    assert "customer.email" in refused.value.reason and "customer.addresses[0]" in refused.value.reason


# -- deliveries ----------------------------------------------------------------------------------------
def _message(**overrides) -> dict:
    message = {"notificationType": "Message", "projectKey": "shop", "id": "m-1", "version": 1,
               "sequenceNumber": 1, "resource": {"typeId": "customer", "id": "c-1"}, "resourceVersion": 1,
               "type": "CustomerCreated", "createdAt": "2024-05-01T10:00:00.000Z",
               "customer": {"id": "c-1", "version": 1, "email": "a@example.com"}}
    message.update(overrides)
    return message


@pytest.mark.parametrize("body, reason", [
    (json.dumps(_message()).replace('"resourceVersion": 1', '"resourceVersion": NaN'), "not JSON"),
    (json.dumps(_message()).replace('"sequenceNumber": 1', '"sequenceNumber": Infinity'), "not JSON"),
    (json.dumps(_message(resourceVersion=2**63)), "resourceVersion must be from 0 to 2^63-1"),
    (json.dumps(_message(sequenceNumber=-1)), "sequenceNumber must be from 0 to 2^63-1"),
    (json.dumps(_message(createdAt="0001-01-01T00:00:00+23:59")), "createdAt is not an ISO 8601 date-time"),
    (json.dumps(_message(id="m" * 301)), "message id longer than 300 characters"),
    (json.dumps(_message(resource={"typeId": "customer", "id": "c" * 201})), "resource.id longer than 200"),
    (json.dumps(_message(resource={"typeId": "customer", "id": 5})), "missing resource.id"),
    (json.dumps(_message(customer={"id": "c-1", "email": {"a": 1}})), "customer.email:"),
    (json.dumps(_message(customer={"email": "a@example.com"})), "customer.id:"),
    (json.dumps(_message(resource={"typeId": "customer", "id": "c\u0000"})), "NUL"),
    (json.dumps([_message(id=f"m-{i}") for i in range(notifications.MAX_NOTIFICATIONS + 1)]),
     f"more than {notifications.MAX_NOTIFICATIONS} notifications"),
])
def test_malformed_deliveries_are_invalid_deliveries(body, reason):
    with pytest.raises(InvalidDelivery) as refused:
        parse_delivery(body)
    assert reason in refused.value.reason


def test_a_delivery_of_the_maximum_size_is_accepted():
    body = json.dumps([_message(id=f"m-{i}") for i in range(notifications.MAX_NOTIFICATIONS)])
    assert len(parse_delivery(body)) == notifications.MAX_NOTIFICATIONS


# -- bounded echoes ------------------------------------------------------------------------------------
def test_echoed_values_are_bounded_and_escaped():
    assert echo("s" * 20_000) == "'" + "s" * (MAX_ECHO - 1) + "…'"
    assert clip("store\nCRITICAL forged\x00", 100) == "store\\nCRITICAL forged\\x00"
    assert len(clip("\x00" * 1000, 50)) <= 50


def test_a_bad_request_detail_stays_small_whatever_the_input():
    detail = bad_request([Violation("profile.custom_fields." + "k" * 20_000, "d" * 20_000)] * 100)
    assert len(detail.field_violations) == MAX_VIOLATIONS
    assert all(len(v.field) <= MAX_FIELD and len(v.description) <= MAX_DESCRIPTION for v in detail.field_violations)
    assert detail.field_violations[-1].description == f"and {100 - MAX_VIOLATIONS + 1} more violations"
    assert detail.ByteSize() < 8 * 1024
