"""Parsing of commercetools Subscription deliveries (``ctdd.domain.notifications``).

Built from the project's own fixtures (``tests/fixtures/commercetools``) and from commercetools' published
examples in the shared fixtures directory (skipped when that directory is absent). Every envelope
(Platform, CloudEvents, Pub/Sub push, SNS, EventBridge, SQS, batches) is built here around those payloads.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ctdd.domain.notifications import (
    InvalidDelivery,
    Notification,
    SnsSubscriptionConfirmation,
    UnsupportedNotification,
    parse_delivery,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "commercetools"
SHARED_DIR = Path(os.environ.get("CTDD_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
SHARED_FIXTURES = SHARED_DIR / "fixtures" / "commercetools"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def shared(name: str) -> bytes:
    path = SHARED_FIXTURES / "subscription" / name
    if not path.is_file():
        pytest.skip(f"shared commercetools fixtures not available ({path})")
    return path.read_bytes()


# -- envelope builders -------------------------------------------------------------------------------
def pubsub(payload: bytes | dict, **message: Any) -> bytes:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    body = {
        "message": {"data": base64.b64encode(data).decode(), "attributes": {}, "messageId": "2070443601311540",
                    "message_id": "2070443601311540", "publishTime": "2026-04-20T11:03:52.001Z",
                    "publish_time": "2026-04-20T11:03:52.001Z", **message},
        "subscription": "projects/shop-eu-gcp/subscriptions/ctdd-push",
    }
    return json.dumps(body).encode()


def sns(payload: bytes | dict) -> bytes:
    message = payload.decode() if isinstance(payload, bytes) else json.dumps(payload)
    return json.dumps({
        "Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:commercetools", "Message": message,
        "Timestamp": "2026-04-20T11:03:52.001Z", "SignatureVersion": "1", "Signature": "EXAMPLE==",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    }).encode()


def eventbridge(payload: dict) -> bytes:
    return json.dumps({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": payload.get("type") or payload["notificationType"],
        "source": "aws.partner/commercetools.com/shop-eu/ctdd", "account": "123456789012",
        "time": "2026-04-20T11:03:52Z", "region": "eu-west-1", "resources": [], "detail": payload,
    }).encode()


def only(notifications: list[Notification]) -> Notification:
    assert len(notifications) == 1
    return notifications[0]


# -- Platform format ---------------------------------------------------------------------------------
def test_customer_created_message():
    n = only(parse_delivery(raw("customer-created.message.json")))
    assert n.notification_type == "Message"
    assert n.project_key == "shop-eu"
    assert (n.resource_type, n.resource_id) == ("customer", "7d3b2a94-6c1f-4e0b-8a57-3f2e9c1d4b60")
    assert n.message_id == n.dedupe_key == "5b0f6c1e-2a51-4c55-9e53-2c7e3f0d9a11"
    assert n.message_type == "CustomerCreated"
    assert (n.resource_version, n.sequence_number) == (1, 1)
    assert n.occurred_at == datetime(2026, 3, 2, 9, 15, 27, 301000, tzinfo=timezone.utc)
    assert n.payload["customer"]["custom"]["fields"]["dd-emailOptIn"] is True
    assert not n.payload_not_included and not n.is_subscription_test
    assert n.envelope == ("platform",)
    assert n.resource_key == "customer/7d3b2a94-6c1f-4e0b-8a57-3f2e9c1d4b60"


def test_customer_email_changed_message_keeps_message_fields():
    n = only(parse_delivery(raw("customer-email-changed.message.json").decode()))  # str input works too
    assert n.message_type == "CustomerEmailChanged"
    assert (n.payload["email"], n.payload["oldEmail"]) == ("amelia.hart@example.com", "amelia.hart@example.co.uk")
    assert (n.resource_version, n.sequence_number) == (5, 4)


def test_order_created_with_line_items():
    n = only(parse_delivery(raw("order-created.message.json")))
    assert (n.resource_type, n.message_type) == ("order", "OrderCreated")
    order = n.payload["order"]
    assert [li["variant"]["sku"] for li in order["lineItems"]] == ["LS-BLUE-M", "TOTE-NAT"]
    assert order["totalPrice"]["centAmount"] == 11497


def test_order_state_changed_with_offset_timestamp():
    n = only(parse_delivery(raw("order-state-changed.message.json")))
    assert n.message_type == "OrderStateChanged"
    assert (n.payload["orderState"], n.payload["oldOrderState"]) == ("Complete", "Confirmed")
    assert n.occurred_at == datetime(2026, 4, 23, 8, 30, 0, 512000, tzinfo=timezone.utc)
    assert n.occurred_at.tzinfo is timezone.utc


def test_payload_not_included_takes_the_type_from_payload_type():
    n = only(parse_delivery(raw("product-published.payload-not-included.json")))
    assert n.payload_not_included
    assert n.message_type == "ProductPublished"  # "Value of the type field in the original payload"
    assert "productProjection" not in n.payload
    assert (n.resource_type, n.resource_version) == ("product", 37)


def test_resource_updated_change_notification_gets_a_synthetic_stable_id():
    n = only(parse_delivery(raw("customer-resource-updated.change.json")))
    assert n.notification_type == "ResourceUpdated"
    assert n.message_type is None and n.sequence_number is None
    assert n.resource_version == 7
    assert n.message_id == n.dedupe_key == "ResourceUpdated:customer:7d3b2a94-6c1f-4e0b-8a57-3f2e9c1d4b60:7"
    assert n.occurred_at == datetime(2026, 4, 22, 14, 5, 59, 871000, tzinfo=timezone.utc)
    # the same notification delivered twice has the same dedupe key
    assert only(parse_delivery(raw("customer-resource-updated.change.json"))).dedupe_key == n.dedupe_key


def test_subscription_test_notification_is_flagged():
    n = only(parse_delivery(raw("subscription-test.resource-created.json")))
    assert n.is_subscription_test
    assert (n.notification_type, n.resource_type) == ("ResourceCreated", "subscription")


def test_utf8_bom_and_whitespace_are_tolerated():
    assert only(parse_delivery(b"\xef\xbb\xbf\n  " + raw("customer-resource-updated.change.json") + b"\n"))


# -- CloudEvents -------------------------------------------------------------------------------------
def test_cloudevents_structured_mode():
    n = only(parse_delivery(raw("customer-created.cloudevents.json")))
    assert n.envelope == ("cloudevents", "platform")
    assert n.message_id == "8b7a6c5d-4e3f-4a21-9b0c-1d2e3f4a5b6c"
    assert (n.resource_type, n.message_type) == ("customer", "CustomerCreated")
    assert n.payload["customer"]["email"] == "jonas.becker@example.de"
    assert n.payload["notificationType"] == "Message"  # payload is the Platform dict, not the CloudEvent


def test_cloudevents_data_base64_and_time_fallback():
    change = load("customer-resource-updated.change.json")
    del change["modifiedAt"]
    event = {"specversion": "1.0", "id": "x", "source": "/shop-eu/customers", "subject": "y",
             "type": "com.commercetools.customer.change.ResourceUpdated", "time": "2026-04-22T14:06:00.000Z",
             "data_base64": base64.b64encode(json.dumps(change).encode()).decode()}
    n = only(parse_delivery(json.dumps(event)))
    assert n.occurred_at == datetime(2026, 4, 22, 14, 6, tzinfo=timezone.utc)


def test_cloudevents_batch():
    event = load("customer-created.cloudevents.json")
    second = json.loads(json.dumps(event))
    second["data"]["id"] = second["id"] = "11111111-2222-4333-8444-555555555555"
    result = parse_delivery(json.dumps([event, second]))
    assert [n.message_id for n in result] == [event["id"], "11111111-2222-4333-8444-555555555555"]
    assert result[0].envelope == ("batch", "cloudevents", "platform")


# -- Google Pub/Sub push -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "customer-created.message.json", "order-created.message.json", "customer-resource-updated.change.json",
    "customer-created.cloudevents.json",
])
def test_pubsub_push(name):
    direct = only(parse_delivery(raw(name)))
    wrapped = only(parse_delivery(pubsub(raw(name))))
    assert wrapped.envelope == ("pubsub",) + direct.envelope
    assert (wrapped.dedupe_key, wrapped.payload) == (direct.dedupe_key, direct.payload)


def test_pubsub_accepts_urlsafe_base64_without_padding():
    data = base64.urlsafe_b64encode(raw("order-state-changed.message.json")).decode().rstrip("=")
    body = json.dumps({"message": {"data": data, "messageId": "1"}, "subscription": "projects/p/subscriptions/s"})
    assert only(parse_delivery(body)).message_type == "OrderStateChanged"


# -- AWS ---------------------------------------------------------------------------------------------
def test_sns_notification():
    n = only(parse_delivery(sns(raw("order-created.message.json"))))
    assert n.envelope == ("sns", "platform")
    assert n.message_type == "OrderCreated"


def test_sns_subscription_confirmation_carries_the_subscribe_url():
    url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:1:t&Token=abc"
    body = {"Type": "SubscriptionConfirmation", "MessageId": "m", "Token": "abc",
            "TopicArn": "arn:aws:sns:eu-west-1:1:t", "Message": "You have chosen to subscribe...",
            "SubscribeURL": url, "Timestamp": "2026-04-20T11:00:00.000Z"}
    with pytest.raises(SnsSubscriptionConfirmation) as info:
        parse_delivery(json.dumps(body))
    assert info.value.subscribe_url == url
    assert info.value.topic_arn == "arn:aws:sns:eu-west-1:1:t"
    assert isinstance(info.value, InvalidDelivery)


def test_sns_subscription_confirmation_with_a_foreign_url_is_refused():
    body = {"Type": "SubscriptionConfirmation", "MessageId": "m", "TopicArn": "t",
            "SubscribeURL": "https://attacker.example.com/sns.eu-west-1.amazonaws.com"}
    with pytest.raises(InvalidDelivery) as info:
        parse_delivery(json.dumps(body))
    assert not isinstance(info.value, SnsSubscriptionConfirmation)
    assert "SubscribeURL" in info.value.reason


def test_eventbridge_event():
    n = only(parse_delivery(eventbridge(load("customer-email-changed.message.json"))))
    assert n.envelope == ("eventbridge", "platform")
    assert n.message_type == "CustomerEmailChanged"


def test_sqs_body_raw_and_sns_wrapped():
    assert only(parse_delivery(raw("order-state-changed.message.json"))).message_type == "OrderStateChanged"
    assert only(parse_delivery(sns(raw("order-state-changed.message.json")))).message_type == "OrderStateChanged"


def test_sqs_lambda_event_records():
    records = {"Records": [
        {"messageId": "a", "receiptHandle": "h1", "eventSource": "aws:sqs",
         "body": raw("customer-created.message.json").decode()},
        {"messageId": "b", "receiptHandle": "h2", "eventSource": "aws:sqs",
         "body": sns(raw("order-created.message.json")).decode()},
    ]}
    result = parse_delivery(json.dumps(records))
    assert [n.message_type for n in result] == ["CustomerCreated", "OrderCreated"]
    assert result[1].envelope == ("sqs", "sns", "platform")


def test_mixed_batch_array():
    body = json.dumps([load("customer-created.message.json"), json.loads(pubsub(raw("order-created.message.json"))),
                       json.loads(sns(raw("customer-resource-updated.change.json"))),
                       json.loads(eventbridge(load("order-state-changed.message.json")))])
    result = parse_delivery(body)
    assert [n.message_type or n.notification_type for n in result] == [
        "CustomerCreated", "OrderCreated", "ResourceUpdated", "OrderStateChanged"]
    assert parse_delivery("[]") == []


# -- commercetools' published examples (shared fixtures) -------------------------------------------------
def test_shared_message_payload_example():
    n = only(parse_delivery(shared("message-payload.example.json")))
    assert (n.message_type, n.payload["lastName"]) == ("CustomerLastNameSet", "Doe")
    assert (n.resource_version, n.sequence_number) == (2, 2)


@pytest.mark.parametrize("name,kind,version", [
    ("resource-created-payload.example.json", "ResourceCreated", 1),
    ("resource-updated-payload.example.json", "ResourceUpdated", 3),
    ("resource-deleted-payload.example.json", "ResourceDeleted", 3),
])
def test_shared_change_examples(name, kind, version):
    body = shared(name)
    for delivery in (body, pubsub(body), sns(body)):
        n = only(parse_delivery(delivery))
        assert (n.notification_type, n.resource_type, n.resource_version) == (kind, "product", version)
        assert n.dedupe_key.startswith(f"{kind}:product:")


def test_shared_cloudevents_example():
    body = shared("cloudevents-payload.example.json")
    n = only(parse_delivery(pubsub(body)))
    assert (n.message_type, n.resource_type) == ("ProductPublished", "product")
    assert n.envelope == ("pubsub", "cloudevents", "platform")


def test_shared_event_payload_is_unsupported():
    with pytest.raises(UnsupportedNotification, match="Event"):
        parse_delivery(shared("event-payload.example.json"))
    with pytest.raises(UnsupportedNotification, match="Event"):  # a batch of nothing else, too
        parse_delivery(json.dumps([json.loads(shared("event-payload.example.json"))] * 2))


def test_an_event_in_a_batch_of_messages_comes_back_ignored_and_the_batch_parses():
    event = json.loads(shared("event-payload.example.json"))
    message = json.loads(shared("message-payload.example.json"))
    first, second = parse_delivery(json.dumps([event, message]))
    assert first.ignored_reason and "Event" in first.ignored_reason and first.message_type == "ImportContainerCreated"
    assert second.ignored_reason is None and second.message_type == "CustomerLastNameSet"


# -- refusals ----------------------------------------------------------------------------------------
def _mutated(name: str, **changes: Any) -> str:
    payload = load(name)
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return json.dumps(payload)


@pytest.mark.parametrize("body,reason", [
    (b"", "empty body"),
    (b"\xff\xfe{", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b'"just a string"', "expected a JSON object or array, got string"),
    (b'{"hello": "world"}', "unrecognised delivery"),
    (json.dumps({"message": {"data": "%%%not base64%%%", "messageId": "1"}, "subscription": "s"}),
     "base64 message.data is not valid"),
    (json.dumps({"message": {"messageId": "1"}, "subscription": "s"}), "Pub/Sub message has no data"),
    (json.dumps({"message": {"data": base64.b64encode(b"<xml/>").decode()}, "subscription": "s"}),
     "Pub/Sub message.data is not JSON"),
    (json.dumps({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "nope"}),
     "SNS Message is not JSON"),
    (json.dumps({"specversion": "1.0", "id": "x", "type": "t", "source": "s"}), "CloudEvent has no data"),
    (json.dumps({"specversion": "2.0", "data": {}}), "unsupported CloudEvents specversion"),
])
def test_invalid_deliveries_have_precise_reasons(body, reason):
    with pytest.raises(InvalidDelivery) as info:
        parse_delivery(body)
    assert reason in info.value.reason


@pytest.mark.parametrize("changes,reason", [
    ({"resource": {"id": "x"}}, "missing resource.typeId"),
    ({"resource": {"typeId": "customer"}}, "missing resource.id"),
    ({"projectKey": None}, "missing projectKey"),
    ({"id": None}, "missing message id"),
    ({"type": None}, "missing message type"),
    ({"resourceVersion": "5"}, "resourceVersion must be an integer"),
    ({"sequenceNumber": None}, "missing sequenceNumber"),
    ({"createdAt": "yesterday"}, "createdAt is not an ISO 8601 date-time"),
    ({"notificationType": "Something"}, "unknown notificationType"),
])
def test_invalid_platform_payloads(changes, reason):
    with pytest.raises(InvalidDelivery) as info:
        parse_delivery(_mutated("customer-email-changed.message.json", **changes))
    assert info.value.reason == reason


def test_change_notification_without_version_is_refused():
    with pytest.raises(InvalidDelivery, match="missing version"):
        parse_delivery(_mutated("customer-resource-updated.change.json", version=None))


def test_batch_errors_name_the_element_and_reasons_never_quote_payload_values():
    bad = load("customer-email-changed.message.json")
    del bad["resource"]["typeId"]
    with pytest.raises(InvalidDelivery) as info:
        parse_delivery(json.dumps([load("customer-created.message.json"), bad]))
    assert info.value.reason == "batch[1]: missing resource.typeId"
    # nothing of the payload (emails, ids) leaks into a reason
    for body in (json.dumps(bad), pubsub(json.dumps(bad).encode()), sns(json.dumps(bad).encode())):
        with pytest.raises(InvalidDelivery) as info:
            parse_delivery(body)
        assert "@" not in str(info.value) and "7d3b2a94" not in str(info.value)
