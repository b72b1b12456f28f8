"""Reading a recorded stream: JSON lines, one timed input each.

Every line is an object with:

- ``at``: when it happens: an ISO 8601 time with an offset (``2026-11-30T10:00:00Z``), or a duration after
  the previous line's time (``+90s``, ``+15m``, ``+2h``, ``+1d``, ``+1h30m``). The first line needs a time.
- ``store``: the store key (a ``track_event`` may carry its own ``store_key`` instead);
- exactly one of
  - ``track_event``: a ``TrackEventRequest`` in protobuf JSON (``{"behaviouralEvent": {"cartUpdated": ...}}``);
  - ``commercetools_delivery``: a commercetools subscription delivery as delivered (an object, or the raw
    text), sent as ``TrackEvent`` with ``commercetools_delivery``;
  - ``sync_contact``: a ``SyncContactRequest`` in protobuf JSON (a customer's profile and consent);
  - ``cart``: a commercetools cart as ``GET /carts`` returns it: put into the commercetools fake, where the
    cart watcher finds it (``lastModifiedAt`` defaults to ``at``);
  - ``commercetools``: a change to the commercetools fake: ``{"action": "add", "resource": "orders",
    "object": {...}}``, ``{"action": "remove", "resource": "carts", "id": "..."}``;
- optionally ``label``: a note shown in the timeline.

Blank lines and lines starting with ``#`` are skipped. Errors name the line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

KINDS = ("track_event", "commercetools_delivery", "sync_contact", "cart", "commercetools")
COMMERCETOOLS_ACTIONS = ("add", "remove")
_KNOWN_KEYS = frozenset({"at", "store", "label", *KINDS})
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class StreamError(ValueError):
    """A line of the stream is not valid: the message names the line."""


@dataclass(frozen=True)
class StreamEvent:
    """One input of the stream, at its (absolute, UTC) time."""

    at: datetime
    store: str
    kind: str  # one of KINDS
    payload: Any
    line: int
    label: str | None = None

    def describe(self) -> str:
        """A short human description for the timeline."""
        if self.label:
            return self.label
        return describe_payload(self.kind, self.payload)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``, ``250ms`` -> a timedelta (ValueError otherwise)."""
    text = text.strip()
    position, seconds = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"not a duration (like 90s, 15m, 2h, 1d, 1h30m): {text!r}")
    return timedelta(seconds=seconds)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with an offset (``Z`` allowed) -> an aware UTC datetime (ValueError otherwise)."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"a time needs an offset (e.g. Z): {text!r}")
    return moment.astimezone(timezone.utc)


def resolve_time(text: str, previous: datetime | None) -> datetime:
    """``at`` of a line: an absolute time, or ``+DURATION`` after ``previous``."""
    if text.strip().startswith("+"):
        if previous is None:
            raise ValueError("the first line needs an absolute time, not an offset")
        return previous + parse_duration(text.strip()[1:])
    return parse_time(text)


def parse_line(obj: Any, line: int, previous: datetime | None) -> StreamEvent:
    if not isinstance(obj, dict):
        raise StreamError(f"line {line}: expected a JSON object")
    unknown = sorted(set(obj) - _KNOWN_KEYS)
    if unknown:
        raise StreamError(f"line {line}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}")
    kinds = [k for k in KINDS if k in obj]
    if len(kinds) != 1:
        raise StreamError(f"line {line}: needs exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    if not isinstance(obj.get("at"), str):
        raise StreamError(f"line {line}: 'at' (an ISO time or +DURATION) is required")
    try:
        at = resolve_time(obj["at"], previous)
    except ValueError as exc:
        raise StreamError(f"line {line}: at: {exc}") from None
    if previous is not None and at < previous:
        raise StreamError(f"line {line}: at {at.isoformat()} is before the previous line ({previous.isoformat()})")
    payload = obj[kind]
    store = obj.get("store")
    if kind in ("track_event", "sync_contact"):
        if not isinstance(payload, dict):
            what = "TrackEventRequest" if kind == "track_event" else "SyncContactRequest"
            raise StreamError(f"line {line}: {kind} must be a {what} in protobuf JSON")
        store = store or payload.get("storeKey") or payload.get("store_key")
    elif kind == "commercetools_delivery":
        if not isinstance(payload, (dict, list, str)):
            raise StreamError(f"line {line}: commercetools_delivery must be the delivery (JSON or its text)")
    elif kind == "cart":
        if not isinstance(payload, dict) or not payload.get("id"):
            raise StreamError(f"line {line}: cart must be a commercetools cart with an id")
    elif kind == "commercetools":
        if not isinstance(payload, dict) or payload.get("action") not in COMMERCETOOLS_ACTIONS:
            raise StreamError(f"line {line}: commercetools needs an action: {', '.join(COMMERCETOOLS_ACTIONS)}")
        if not isinstance(payload.get("resource"), str):
            raise StreamError(f"line {line}: commercetools {payload['action']} needs a resource (carts, orders, ...)")
        if payload["action"] == "add" and not isinstance(payload.get("object"), dict):
            raise StreamError(f"line {line}: commercetools add needs an object")
        if payload["action"] == "remove" and not isinstance(payload.get("id"), str):
            raise StreamError(f"line {line}: commercetools remove needs an id")
    if not isinstance(store, str) or not store:
        raise StreamError(f"line {line}: 'store' (a store key) is required")
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise StreamError(f"line {line}: label must be a string")
    return StreamEvent(at=at, store=store, kind=kind, payload=payload, line=line, label=label)


def parse_lines(lines: Iterable[str]) -> list[StreamEvent]:
    """The events of a stream's lines, in order (StreamError for a bad line)."""
    events: list[StreamEvent] = []
    previous: datetime | None = None
    for number, text in enumerate(lines, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StreamError(f"line {number}: not JSON ({exc.msg})") from None
        event = parse_line(obj, number, previous)
        events.append(event)
        previous = event.at
    return events


def read_stream(path: str | Path) -> list[StreamEvent]:
    """The events of the stream file ``path``."""
    with open(path, encoding="utf-8") as handle:
        return parse_lines(handle)


# -- descriptions -----------------------------------------------------------------------------------------
def _camel(obj: dict, *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    return None


def describe_payload(kind: str, payload: Any) -> str:
    if kind == "track_event":
        event = _camel(payload, "behaviouralEvent", "behavioural_event")
        if isinstance(event, dict):
            who = _identity_text(_camel(event, "identity") or {})
            cart = _camel(event, "cartUpdated", "cart_updated")
            if isinstance(cart, dict):
                body = cart.get("cart") or {}
                items = len(body.get("lineItems") or []) if isinstance(body, dict) else 0
                return (f"cart_updated cart {_camel(cart, 'cartId', 'cart_id')} v{_camel(cart, 'cartVersion', 'cart_version')}"
                        f" ({items} item{'s' if items != 1 else ''}){who}")
            viewed = _camel(event, "productViewed", "product_viewed")
            if isinstance(viewed, dict):
                return f"product_viewed {_camel(viewed, 'productId', 'product_id')}{who}"
            custom = _camel(event, "customEvent", "custom_event")
            if isinstance(custom, dict):
                return f"custom_event {custom.get('name')}{who}"
        if _camel(payload, "commercetoolsDelivery", "commercetools_delivery"):
            return "commercetools delivery"
        return "track_event"
    if kind == "commercetools_delivery":
        return "commercetools " + _delivery_text(payload)
    if kind == "sync_contact":
        source = _camel(payload, "source") or {}
        return (f"sync_contact{_identity_text(_camel(payload, 'identity') or {})}"
                + (f" from {source.get('resourceType') or source.get('resource_type')} v{source.get('version')}"
                   if isinstance(source, dict) and source.get("version") else ""))
    if kind == "cart":
        items = len(payload.get("lineItems") or [])
        who = payload.get("customerId") or payload.get("customerEmail") or payload.get("anonymousId") or "anonymous"
        return (f"cart {payload.get('id')} v{payload.get('version', 1)} {payload.get('cartState', 'Active')} "
                f"({items} item{'s' if items != 1 else ''}, {who}) in commercetools")
    if kind == "commercetools":
        target = payload.get("id") or (payload.get("object") or {}).get("id") or ""
        return f"commercetools {payload['action']} {payload['resource']} {target}".rstrip()
    return kind


def _identity_text(identity: dict) -> str:
    for name, keys in (("customer", ("customerId", "customer_id")), ("email", ("email",)),
                       ("anonymous", ("anonymousId", "anonymous_id")), ("mobile", ("mobileNumber", "mobile_number"))):
        value = _camel(identity, *keys)
        if value:
            return f" ({name} {value})"
    return ""


def _delivery_text(payload: Any) -> str:
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError:
            return "delivery"
    if isinstance(payload, list):
        return ", ".join(_delivery_text(p) for p in payload)
    if not isinstance(payload, dict):
        return "delivery"
    kind = payload.get("type") or payload.get("notificationType") or "delivery"
    resource = payload.get("resource") or {}
    rid = resource.get("id") if isinstance(resource, dict) else None
    type_id = resource.get("typeId") if isinstance(resource, dict) else None
    text = f"{kind} {type_id or ''} {rid or ''}".strip()
    version = payload.get("resourceVersion")
    return f"{text} v{version}" if version else text
