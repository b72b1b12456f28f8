"""Parsing of commercetools Subscription deliveries (pure: no I/O).

commercetools has no plain webhook destination (commercetools HTTP API docs: Subscriptions): an HTTP
endpoint receives notifications wrapped by whatever carried them. ``parse_delivery`` takes the request
body exactly as received and unwraps, recursively:

* **Platform format**: the ``DeliveryPayload`` itself, discriminated by ``notificationType``:
  ``Message`` (message fields merged into the envelope), ``ResourceCreated``, ``ResourceUpdated``,
  ``ResourceDeleted``.
* **CloudEvents**: ``{"specversion": "1.0", ..., "data": <Platform payload>}`` in structured mode
  (``data_base64`` is accepted too), and CloudEvents JSON batches (arrays).
* **Google Pub/Sub push**: ``{"message": {"data": <base64>, "attributes", "messageId", ...},
  "subscription"}``; ``message.data`` decodes to a Platform payload or a CloudEvent.
* **AWS SNS** HTTP(S) delivery: ``{"Type": "Notification", "Message": "<JSON string>", ...}``. A
  ``SubscriptionConfirmation`` raises ``SnsSubscriptionConfirmation`` (with ``subscribe_url``) so that the
  HTTP adapter can confirm the subscription. SNS signatures are *not* verified here (that needs the
  signing certificate, i.e. I/O): the adapter must verify them before trusting the body.
* **Amazon EventBridge** events: ``{"detail-type", "source", "detail": <Platform payload>}``.
* **Amazon SQS**: a message body is the raw Platform payload or an SNS notification (both covered above);
  a Lambda SQS event (``{"Records": [{"body": ...}]}``), a single record, or a boto3 message (``Body``) are
  unwrapped as well.
* A JSON **array** of any of these is a batch; the result lists the notifications in order.

Anything else raises ``InvalidDelivery`` whose ``reason`` names the problem (e.g. ``"not JSON"``,
``"missing resource.typeId"``, ``"base64 message.data is not valid"``) and never quotes the payload, so it
is safe to log. A delivery of nothing but ``Event`` notifications (beta; Import API / Checkout only) raises
the subclass ``UnsupportedNotification``, which an adapter should acknowledge and drop; an ``Event`` in a batch
with messages is returned with ``ignored_reason`` set (ignored on its own, the messages are applied).

Limits (the columns the values are stored in, ``ctdd.db.models``; tests/unit/test_input_limits.py checks
them): at most :data:`MAX_NOTIFICATIONS` notifications per delivery, ids and keys of the lengths below,
versions and sequence numbers from 0 to 2^63-1, no NaN or Infinity, no NUL character anywhere. The
resource a message carries (``customer``, ``order``) is checked against the typed models of
``ctdd.domain.resources``. Every failure is an ``InvalidDelivery``: poison, never retried.

Each ``Notification`` carries the dedupe key (message ``id``, or a synthetic id for change notifications),
the ordering data (``resource_version``, ``sequence_number``) and a flag for the test notification
commercetools sends when a Subscription is created (``resource.typeId == "subscription"``), which
consumers must ignore.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from ctdd.domain.json_values import json_type as _json_type
from ctdd.domain.resources import MAX_ID, MAX_VERSION, InvalidResource, check_resource

__all__ = [
    "CHANGE_NOTIFICATION_TYPES",
    "NOTIFICATION_TYPES",
    "InvalidDelivery",
    "Notification",
    "SnsSubscriptionConfirmation",
    "UnsupportedNotification",
    "parse_delivery",
]

#: ``notificationType`` values this parser turns into ``Notification`` objects.
NOTIFICATION_TYPES = ("Message", "ResourceCreated", "ResourceUpdated", "ResourceDeleted")
CHANGE_NOTIFICATION_TYPES = ("ResourceCreated", "ResourceUpdated", "ResourceDeleted")
#: Envelopes nest at most this deep (e.g. SQS record -> SNS -> CloudEvent -> Platform is 4).
MAX_NESTING = 6
#: notifications in one delivery (a batch); more are refused as a whole (split the batch instead)
MAX_NOTIFICATIONS = 500
#: ``resource.typeId`` (resource_state.resource_type)
MAX_TYPE_ID = 50
#: ``projectKey`` (resource_state.project_key)
MAX_PROJECT_KEY = 100
#: a Message ``id``, the dedupe key (processed_event.dedupe_key)
MAX_MESSAGE_ID = 300
#: the resource a message carries, by message type (checked against ``ctdd.domain.resources``)
EMBEDDED_RESOURCES = {"CustomerCreated": "customer", "OrderCreated": "order", "OrderImported": "order",
                      "OrderCreatedFromRecurringOrder": "order"}

_SNS_HOST_RE = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})$")


class InvalidDelivery(ValueError):
    """The body is not a commercetools notification this service understands.

    ``reason`` is precise and safe to log: it names fields and envelope types, never payload values.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedNotification(InvalidDelivery):
    """A well-formed delivery of a kind this service does not process (``notificationType: Event``).

    Retrying will not help; an HTTP adapter should acknowledge it (2xx) and drop it.
    """


class SnsSubscriptionConfirmation(InvalidDelivery):
    """An SNS ``SubscriptionConfirmation``: not a notification, but the adapter must GET ``subscribe_url``.

    ``subscribe_url`` is checked to be ``https://sns.<region>.amazonaws.com/...`` (otherwise the body is an
    ``InvalidDelivery``), so that confirming cannot be abused to make the service call arbitrary URLs.
    """

    def __init__(self, subscribe_url: str, *, topic_arn: str | None = None, token: str | None = None) -> None:
        super().__init__("SNS SubscriptionConfirmation: confirm by visiting SubscribeURL")
        self.subscribe_url = subscribe_url
        self.topic_arn = topic_arn
        self.token = token


@dataclass(frozen=True)
class Notification:
    """One commercetools notification (a Message or a change notification), transport removed.

    Attributes:
        notification_type: ``Message``, ``ResourceCreated``, ``ResourceUpdated`` or ``ResourceDeleted``.
        project_key: ``projectKey`` - which commercetools project sent it.
        resource_type: ``resource.typeId`` (``customer``, ``order``, ``payment``, ``product`` ...).
        resource_id: ``resource.id``.
        message_id: the Message ``id`` (unique); for change notifications the stable synthetic
            ``"{notificationType}:{typeId}:{id}:{version}"``.
        message_type: the Message ``type`` (``CustomerCreated``, ``OrderCreated`` ...), or
            ``payloadNotIncluded.payloadType`` when the payload was left out; ``None`` for change notifications.
        resource_version: ``resourceVersion`` (messages) or ``version`` (change notifications): the
            resource's version after the change, for dropping stale notifications.
        sequence_number: ``sequenceNumber`` of a Message (per resource, +1 per message).
        occurred_at: ``createdAt`` (messages) or ``modifiedAt`` (change notifications), tz-aware UTC;
            for CloudEvents without either, the event's ``time``.
        payload: the whole Platform-format notification dict, message-specific fields included.
        payload_not_included: ``payloadNotIncluded`` is present: GET the resource instead.
        is_subscription_test: the test notification sent when a Subscription is created
            (``resource.typeId == "subscription"``) - consumers must ignore it.
        envelope: the wrappers removed, outermost first, e.g. ``("pubsub", "cloudevents", "platform")``.
        ignored_reason: why ctdd-sync ignores it (an ``Event`` of the Import API or Checkout, which may share a
            batch with messages); ``None`` for every notification it handles.
    """

    notification_type: str
    project_key: str
    resource_type: str
    resource_id: str
    message_id: str | None
    message_type: str | None
    resource_version: int | None
    sequence_number: int | None
    occurred_at: datetime | None
    payload: dict
    payload_not_included: bool
    is_subscription_test: bool
    envelope: tuple[str, ...] = ()
    #: set for a notification ctdd-sync does not handle (an ``Event``): why it is ignored
    ignored_reason: str | None = None

    @property
    def dedupe_key(self) -> str:
        """Idempotency key: the Message id, or the synthetic change-notification id."""
        if self.message_id is not None:
            return self.message_id
        return f"{self.notification_type}:{self.resource_type}:{self.resource_id}:{self.resource_version}"

    @property
    def resource_key(self) -> str:
        """``"{typeId}/{id}"`` - the per-resource ordering partition."""
        return f"{self.resource_type}/{self.resource_id}"


def parse_delivery(raw: bytes | str) -> list[Notification]:
    """Parse one delivery body, as received, into its notifications (see the module docstring).

    Returns a list because batches (JSON arrays, Lambda SQS events) carry several; an empty batch gives
    ``[]``. Raises ``InvalidDelivery`` (or its subclasses ``SnsSubscriptionConfirmation`` and
    ``UnsupportedNotification``) for anything else. A batch fails as a whole; the reason names the
    offending element (``"batch[2]: missing resource.id"``). An ``Event`` in a batch of messages does not fail
    it: it comes back with ``ignored_reason`` set; a delivery of nothing but ``Event`` notifications raises
    ``UnsupportedNotification``.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidDelivery("not UTF-8") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidDelivery(f"expected bytes or str, got {type(raw).__name__}")
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise InvalidDelivery("empty body")
    document = _loads(text, "not JSON")
    notifications = _parse(document, (), 0)
    if notifications and all(n.ignored_reason for n in notifications):
        raise UnsupportedNotification(notifications[0].ignored_reason or EVENT_NOT_SUPPORTED)
    if len(notifications) > MAX_NOTIFICATIONS:
        raise InvalidDelivery(f"more than {MAX_NOTIFICATIONS} notifications in one delivery")
    for index, notification in enumerate(notifications):
        _check_embedded(notification, f"notification[{index}]: " if len(notifications) > 1 else "")
    return notifications


def _check_embedded(notification: "Notification", where: str) -> None:
    """The resource a message carries, checked against its typed model (``ctdd.domain.resources``)."""
    key = EMBEDDED_RESOURCES.get(notification.message_type or "")
    if key is None or notification.payload_not_included or notification.payload.get(key) is None:
        return
    try:
        check_resource(key, notification.payload[key])
    except InvalidResource as exc:
        raise InvalidDelivery(f"{where}{exc.reason}") from None


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# ---------------------------------------------------------------------------------------------------
# envelope detection
# ---------------------------------------------------------------------------------------------------
def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str, reason: str) -> Any:
    try:  # NaN and Infinity are not JSON (Python's json would accept them)
        document = json.loads(text, parse_constant=_not_a_number)
    except (ValueError, RecursionError):
        raise InvalidDelivery(reason) from None
    if "\\u0000" in text and _has_nul(document):  # PostgreSQL stores no NUL in text
        raise InvalidDelivery("contains a NUL character (\\u0000)")
    return document


def _parse(document: Any, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    if depth > MAX_NESTING:
        raise InvalidDelivery("envelopes nested too deeply")
    if isinstance(document, list):
        if envelope and envelope[-1] == "batch":
            raise InvalidDelivery("nested batch arrays are not supported")
        out: list[Notification] = []
        for index, item in enumerate(document):
            try:
                out.extend(_parse(item, envelope + ("batch",), depth + 1))
            except SnsSubscriptionConfirmation:
                raise
            except InvalidDelivery as exc:
                raise type(exc)(f"batch[{index}]: {exc.reason}") from None
        return out
    if not isinstance(document, dict):
        raise InvalidDelivery(f"expected a JSON object or array, got {_json_type(document)}")

    if "notificationType" in document:
        return [_platform(document, envelope + ("platform",))]
    if "specversion" in document:
        return _cloudevent(document, envelope, depth)
    if isinstance(document.get("message"), dict) and (
        "subscription" in document or any(k in document["message"] for k in ("data", "messageId", "message_id"))
    ):
        return _pubsub(document, envelope, depth)
    if isinstance(document.get("Type"), str) and ("TopicArn" in document or "MessageId" in document):
        return _sns(document, envelope, depth)
    if "detail-type" in document and "detail" in document:
        return _eventbridge(document, envelope, depth)
    if isinstance(document.get("Records"), list):
        return _sqs_records(document["Records"], envelope, depth)
    if isinstance(document.get("Messages"), list):  # boto3 receive_message() response
        return _sqs_records(document["Messages"], envelope, depth)
    if _looks_like_sqs_message(document):
        return _sqs_message(document, envelope, depth)
    if "resource" in document or "projectKey" in document:
        raise InvalidDelivery("missing notificationType")
    raise InvalidDelivery(
        "unrecognised delivery: no notificationType, specversion, Pub/Sub message, SNS Type, "
        "EventBridge detail or SQS body"
    )


def _cloudevent(event: dict, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    """CloudEvents 1.0 structured mode: ``data`` holds the Platform payload."""
    version = event.get("specversion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise InvalidDelivery("unsupported CloudEvents specversion")
    if "data" in event:
        data = event["data"]
        if isinstance(data, str):  # data serialised as a JSON string by some transports
            data = _loads(data, "CloudEvents data is not JSON")
    elif "data_base64" in event:
        data = _loads(_b64decode(event["data_base64"], "CloudEvents data_base64 is not valid base64"),
                      "CloudEvents data_base64 is not JSON")
    else:
        raise InvalidDelivery("CloudEvent has no data")
    if not isinstance(data, dict):
        raise InvalidDelivery(f"CloudEvents data must be a JSON object, got {_json_type(data)}")
    if "notificationType" not in data:
        raise InvalidDelivery("CloudEvents data has no notificationType")
    notification = _platform(data, envelope + ("cloudevents", "platform"))
    if notification.occurred_at is None and isinstance(event.get("time"), str):
        occurred = _datetime(event["time"], "CloudEvents time")
        notification = replace(notification, occurred_at=occurred)
    return [notification]


def _pubsub(document: dict, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    """Google Pub/Sub push envelope: base64 ``message.data`` holds the notification."""
    message = document["message"]
    if "data" not in message:
        raise InvalidDelivery("Pub/Sub message has no data")
    data = message["data"]
    if not isinstance(data, str) or not data:
        raise InvalidDelivery("Pub/Sub message.data must be a non-empty base64 string")
    text = _b64decode(data, "base64 message.data is not valid")
    inner = _loads(text, "Pub/Sub message.data is not JSON")
    return _parse(inner, envelope + ("pubsub",), depth + 1)


def _sns(document: dict, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    """AWS SNS HTTP(S) delivery: ``Notification`` carries ``Message`` (a JSON string)."""
    kind = document["Type"]
    if kind == "SubscriptionConfirmation":
        url = document.get("SubscribeURL")
        if not isinstance(url, str):
            raise InvalidDelivery("SNS SubscriptionConfirmation has no SubscribeURL")
        parts = urlsplit(url)
        if parts.scheme != "https" or not _SNS_HOST_RE.match(parts.hostname or "") or parts.username or parts.port:
            raise InvalidDelivery("SNS SubscribeURL is not an https://sns.<region>.amazonaws.com URL")
        raise SnsSubscriptionConfirmation(url, topic_arn=_str_or_none(document.get("TopicArn")),
                                          token=_str_or_none(document.get("Token")))
    if kind == "UnsubscribeConfirmation":
        raise InvalidDelivery("SNS UnsubscribeConfirmation is not a notification")
    if kind != "Notification":
        raise InvalidDelivery("unknown SNS message Type")
    message = document.get("Message")
    if not isinstance(message, str) or not message.strip():
        raise InvalidDelivery("SNS Notification has no Message")
    return _parse(_loads(message, "SNS Message is not JSON"), envelope + ("sns",), depth + 1)


def _eventbridge(document: dict, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    """Amazon EventBridge event: ``detail`` is the Platform payload."""
    detail = document["detail"]
    if isinstance(detail, str):
        detail = _loads(detail, "EventBridge detail is not JSON")
    if not isinstance(detail, dict):
        raise InvalidDelivery(f"EventBridge detail must be a JSON object, got {_json_type(detail)}")
    if "notificationType" not in detail:
        raise InvalidDelivery("EventBridge detail has no notificationType")
    return [_platform(detail, envelope + ("eventbridge", "platform"))]


def _looks_like_sqs_message(document: dict) -> bool:
    body = document.get("body", document.get("Body"))
    return isinstance(body, str) and (
        "receiptHandle" in document or "ReceiptHandle" in document or document.get("eventSource") == "aws:sqs"
        or "messageId" in document or "MessageId" in document
    )


def _sqs_message(document: dict, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    body = document.get("body", document.get("Body"))
    if not isinstance(body, str) or not body.strip():
        raise InvalidDelivery("SQS message has no body")
    return _parse(_loads(body, "SQS message body is not JSON"), envelope + ("sqs",), depth + 1)


def _sqs_records(records: list, envelope: tuple[str, ...], depth: int) -> list[Notification]:
    out: list[Notification] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not _looks_like_sqs_message(record):
            raise InvalidDelivery(f"Records[{index}]: not an SQS message")
        try:
            out.extend(_sqs_message(record, envelope, depth + 1))
        except SnsSubscriptionConfirmation:
            raise
        except InvalidDelivery as exc:
            raise type(exc)(f"Records[{index}]: {exc.reason}") from None
    return out


# ---------------------------------------------------------------------------------------------------
# Platform format
# ---------------------------------------------------------------------------------------------------
def _platform(payload: dict, envelope: tuple[str, ...]) -> Notification:
    notification_type = payload.get("notificationType")
    if not isinstance(notification_type, str):
        raise InvalidDelivery("notificationType must be a string")
    if notification_type == "Event":
        return _unsupported_event(payload, envelope)
    if notification_type not in NOTIFICATION_TYPES:
        raise InvalidDelivery("unknown notificationType")
    project_key = payload.get("projectKey")
    if not isinstance(project_key, str) or not project_key:
        raise InvalidDelivery("missing projectKey")
    if len(project_key) > MAX_PROJECT_KEY:
        raise InvalidDelivery(f"projectKey longer than {MAX_PROJECT_KEY} characters")
    resource = payload.get("resource")
    if not isinstance(resource, dict):
        raise InvalidDelivery("missing resource")
    type_id, resource_id = resource.get("typeId"), resource.get("id")
    if not isinstance(type_id, str) or not type_id:
        raise InvalidDelivery("missing resource.typeId")
    if not isinstance(resource_id, str) or not resource_id:
        raise InvalidDelivery("missing resource.id")
    if len(type_id) > MAX_TYPE_ID:
        raise InvalidDelivery(f"resource.typeId longer than {MAX_TYPE_ID} characters")
    if len(resource_id) > MAX_ID:
        raise InvalidDelivery(f"resource.id longer than {MAX_ID} characters")

    not_included = payload.get("payloadNotIncluded")
    if not_included is not None and not isinstance(not_included, dict):
        raise InvalidDelivery("payloadNotIncluded must be an object")

    if notification_type == "Message":
        message_id = payload.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise InvalidDelivery("missing message id")
        if len(message_id) > MAX_MESSAGE_ID:
            raise InvalidDelivery(f"message id longer than {MAX_MESSAGE_ID} characters")
        message_type = payload.get("type")
        if message_type is None and not_included is not None:
            message_type = not_included.get("payloadType")  # "Value of the type field in the original payload"
        if not isinstance(message_type, str) or not message_type:
            raise InvalidDelivery("missing message type")
        resource_version = _int_field(payload, "resourceVersion", required=True)
        sequence_number = _int_field(payload, "sequenceNumber", required=True)
        occurred_at = _datetime_field(payload, "createdAt")
    else:
        resource_version = _int_field(payload, "version", required=True)
        message_id = f"{notification_type}:{type_id}:{resource_id}:{resource_version}"
        message_type = None
        sequence_number = None
        occurred_at = _datetime_field(payload, "modifiedAt")

    return Notification(
        notification_type=notification_type,
        project_key=project_key,
        resource_type=type_id,
        resource_id=resource_id,
        message_id=message_id,
        message_type=message_type,
        resource_version=resource_version,
        sequence_number=sequence_number,
        occurred_at=occurred_at,
        payload=payload,
        payload_not_included=not_included is not None,
        is_subscription_test=type_id == "subscription",
        envelope=envelope,
    )


#: why an ``Event`` notification is ignored
EVENT_NOT_SUPPORTED = "notificationType Event is not supported (Import API / Checkout events)"


def _unsupported_event(payload: dict, envelope: tuple[str, ...]) -> Notification:
    """An ``Event`` (Import API, Checkout): not for ctdd-sync. A notification with ``ignored_reason`` set, so that
    in a batch it is ignored on its own and the other notifications are applied; a delivery of nothing else
    raises ``UnsupportedNotification`` (:func:`parse_delivery`)."""
    event_id, event_type = payload.get("id"), payload.get("type")
    return Notification(
        notification_type="Event", project_key=str(payload.get("projectKey") or ""),
        resource_type=str(payload.get("resourceType") or ""), resource_id="",
        message_id=f"Event:{event_id}" if isinstance(event_id, str) and 0 < len(event_id) <= MAX_MESSAGE_ID else None,
        message_type=event_type if isinstance(event_type, str) and 0 < len(event_type) <= MAX_TYPE_ID else None,
        resource_version=None, sequence_number=None, occurred_at=None, payload=payload,
        payload_not_included=False, is_subscription_test=False, envelope=envelope,
        ignored_reason=EVENT_NOT_SUPPORTED)


def _int_field(payload: dict, name: str, *, required: bool) -> int | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise InvalidDelivery(f"missing {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDelivery(f"{name} must be an integer")
    if not 0 <= value <= MAX_VERSION:
        raise InvalidDelivery(f"{name} must be from 0 to 2^63-1")
    return value


def _datetime_field(payload: dict, name: str) -> datetime | None:
    value = payload.get(name)
    if value is None:
        return None
    return _datetime(value, name)


def _datetime(value: Any, name: str) -> datetime:
    """ISO 8601 date-time with an offset (``2022-10-25T13:30:09.760Z``) -> tz-aware UTC ``datetime``."""
    if not isinstance(value, str) or not _DATETIME_RE.match(value):
        raise InvalidDelivery(f"{name} is not an ISO 8601 date-time")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    head, dot, rest = text.partition(".")
    if dot:  # datetime accepts at most 6 fractional digits
        digits = re.match(r"\d+", rest).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # an offset can push year 1 or 9999 out of range
        raise InvalidDelivery(f"{name} is not an ISO 8601 date-time") from None


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _b64decode(value: Any, reason: str) -> str:
    """Standard base64 (Pub/Sub's encoding), URL-safe alphabet and missing padding tolerated."""
    if not isinstance(value, str):
        raise InvalidDelivery(reason)
    compact = "".join(value.split())
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDelivery(reason) from None
    try:
        return decoded.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise InvalidDelivery(f"{reason}: decoded bytes are not UTF-8") from None




def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None

