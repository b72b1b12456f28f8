"""Builders for the project's own commercetools fixtures: resources and subscription deliveries in the
shapes of the commercetools API reference (Platform format, CloudEvents, Pub/Sub push, SNS, EventBridge)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

PROJECT = "test-project"
T0 = "2026-11-01T10:00:00.000Z"


def money(cents: int, currency: str = "GBP") -> dict:
    return {"type": "centPrecision", "currencyCode": currency, "centAmount": cents, "fractionDigits": 2}


def customer(cid: str, email: str, *, version: int = 1, first: str = "Jane", last: str = "Doe",
             modified: str = T0, **extra: Any) -> dict:
    return {
        "id": cid, "version": version, "email": email, "firstName": first, "lastName": last,
        "addresses": [], "shippingAddressIds": [], "billingAddressIds": [], "isEmailVerified": True,
        "stores": [], "authenticationMode": "Password", "customerGroupAssignments": [],
        "createdAt": T0, "lastModifiedAt": modified, **extra,
    }


def line_item(product_id: str, sku: str, name: str, qty: int, unit_cents: int, currency: str = "GBP") -> dict:
    return {
        "id": str(uuid.uuid4()), "productId": product_id, "name": {"en": name},
        "variant": {"id": 1, "sku": sku, "images": [{"url": f"https://img.example/{sku}.jpg",
                                                     "dimensions": {"w": 400, "h": 400}}]},
        "price": {"id": str(uuid.uuid4()), "value": money(unit_cents, currency)},
        "quantity": qty, "totalPrice": money(unit_cents * qty, currency),
        "priceMode": "Platform", "lineItemMode": "Standard",
    }


def order(oid: str, *, number: str | None, email: str | None, customer_id: str | None = None, version: int = 1,
          items: list[dict] | None = None, currency: str = "GBP", created: str = T0, state: str = "Open",
          store: str = "uk", **extra: Any) -> dict:
    items = items if items is not None else [line_item("prod-1", "SKU-1", "Blue Hat", 2, 1250, currency)]
    total = sum(li["totalPrice"]["centAmount"] for li in items)
    body = {
        "type": "Order", "id": oid, "version": version, "createdAt": created, "lastModifiedAt": created,
        "totalPrice": money(total, currency), "orderState": state, "lineItems": items,
        "customLineItems": [], "returnInfo": [], "discountCodes": [], "syncInfo": [],
        "store": {"typeId": "store", "key": store}, "locale": "en-GB",
        "shippingAddress": {"country": "GB", "city": "London", "postalCode": "N1 9GU", "streetName": "High St",
                            "streetNumber": "1"},
        "billingAddress": {"country": "GB", "city": "London", "postalCode": "N1 9GU"},
        **extra,
    }
    if number:
        body["orderNumber"] = number
    if email:
        body["customerEmail"] = email
    if customer_id:
        body["customerId"] = customer_id
    return body


def message(resource_type: str, resource_id: str, message_type: str, *, version: int, seq: int | None = None,
            msg_id: str | None = None, project: str = PROJECT, created: str = T0, **fields: Any) -> dict:
    return {
        "notificationType": "Message", "projectKey": project, "id": msg_id or str(uuid.uuid4()), "version": 1,
        "sequenceNumber": seq if seq is not None else version,
        "resource": {"typeId": resource_type, "id": resource_id}, "resourceVersion": version,
        "resourceUserProvidedIdentifiers": {}, "type": message_type, "createdAt": created,
        "lastModifiedAt": created, **fields,
    }


def change(notification_type: str, resource_type: str, resource_id: str, *, version: int,
           project: str = PROJECT) -> dict:
    body = {"notificationType": notification_type, "projectKey": project,
            "resource": {"typeId": resource_type, "id": resource_id}, "version": version, "modifiedAt": T0}
    if notification_type == "ResourceUpdated":
        body["oldVersion"] = version - 1
    return body


def raw(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def pubsub_push(payload: dict) -> bytes:
    data = base64.b64encode(raw(payload)).decode()
    return raw({"message": {"data": data, "attributes": {}, "messageId": "2070443601311540",
                            "publishTime": "2026-11-01T10:00:01.000Z"},
                "subscription": "projects/p/subscriptions/ctdd-push"})


def sns_notification(payload: dict) -> bytes:
    return raw({"Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": "arn:aws:sns:eu-west-1:1:ct",
                "Message": json.dumps(payload), "Timestamp": "2026-11-01T10:00:01.000Z", "SignatureVersion": "1"})


def eventbridge(payload: dict) -> bytes:
    return raw({"version": "0", "id": str(uuid.uuid4()), "detail-type": payload.get("type", "Message"),
                "source": "aws.partner/commercetools.com/test/ctdd", "account": "123456789012",
                "time": "2026-11-01T10:00:01Z", "region": "eu-west-1", "resources": [], "detail": payload})


def cloudevent(payload: dict) -> bytes:
    typ = payload["resource"]["typeId"]
    kind = "message" if payload["notificationType"] == "Message" else "change"
    name = payload.get("type") or payload["notificationType"]
    return raw({"id": payload.get("id", str(uuid.uuid4())), "source": f"/{payload['projectKey']}/{typ}s",
                "specversion": "1.0", "type": f"com.commercetools.{typ}.{kind}.{name}",
                "subject": payload["resource"]["id"], "time": T0, "sequence": str(payload.get("sequenceNumber", 1)),
                "sequencetype": "Integer", "data": payload})
