"""The Events API export subscriptions of a sandbox account (stdlib only; part of ``DotdigitalSandbox``).

Dotdigital's Events OpenAPI document (``events.json``, "Events" v3.1.1) and the developer hub's "Export events"
and "Retrieve events" pages are the source of these rules:

* ``POST /events/v3/export/subscriptions`` (201), ``GET /events/v3/export/subscriptions?limit=&marker=``,
  ``GET|PUT|DELETE /events/v3/export/subscriptions/{subscriptionId}`` (200 / 200 / 204). The body is the
  spec's ``subscriptionRequest``: ``name`` 1-50 characters and unique in the account (else 409
  ``events:nameAlreadyExists``), ``status`` ``active`` | ``inactive``, ``subscribedEventTypes`` 1-100 items of
  ``{eventType, filters?}`` (an unknown type -> 400 ``events:invalidEventType``), ``filters`` 1-5 items of
  ``{field, matchPattern (1-1024), caseSensitive?}`` (all must match), ``alertsConfiguration``
  ``{alertChannels: none | inApp | email | emailAndInApp, email}`` (``email`` required with the e-mail
  channels). Other shapes -> 400 ``events:badJson``. An unknown id -> 404 ``events:subscriptionNotFound``.
  At most 5 subscriptions per account (developer hub); a sixth -> 400 ``events:tooManySubscriptions``
  (sandbox choice: the code is not documented).
* ``GET /events/v3/export/{subscriptionId}?limit=&checkPoint=`` -> ``{checkPoint, events: [{id, accountId,
  processedDate, type, eventDate, data}]}``, oldest first. ``limit`` 1-5000, default 2000 (else 400
  ``events:invalidParameter``, sandbox choice). Passing a ``checkPoint`` acknowledges every event up to it: they
  leave the queue. Without one, the earliest queued (unacknowledged) events come. The checkpoint is opaque;
  one that cannot be parsed, or belongs to another subscription -> 400 ``events:invalidCheckpoint``; one
  issued before the subscription was suspended -> 400 ``events:checkpointOutOfRange`` (developer hub). An empty
  ``events`` array means caught up; the checkpoint returned then is the one passed (or the current position).
* An active subscription captures the events that happen while it is active (none from before); an inactive
  one captures nothing and answers 409 ``events:inactiveSubscription``. A subscription not read for 30 days of
  sandbox time is set ``inactive`` (its queue is dropped). ``PUT`` with ``status: active`` reactivates it.
* ``GET /events/v3/lob/{lobId}``: the sandbox never emits large objects, so every id -> 404.

The events the sandbox emits (``DotdigitalSandbox`` calls :meth:`ExportEvents.contact_changed` after each
change of a contact, through the API or a test helper such as ``preference_centre``). ``events.json`` documents
only the envelope; its ``data`` example is ``{optinCode, contactId, eventId, userAccountId, timeStamp}``. The
``data`` of each type below is therefore a **sandbox choice** in that style, and every one carries
``contactId``, ``eventId`` (= the event ``id``), ``timeStamp`` (= ``eventDate``) and ``identifiers``
(``{email?, mobileNumber?}``, as the Contacts v3 read model names them):

* ``contact.created``: nothing more.
* ``contact.updated``: ``dataFields`` ``{NAME: value or null}`` (the changed fields only) and/or
  ``channelProperties`` ``{email|sms: {status}}`` (the changed channels only).
* ``contact.membershipUpdated``: one event per list: ``listId`` and ``status`` ``added`` | ``removed``.
* ``contact.preferenceUpdated``: ``preferences`` ``[{id, isOptedIn}]`` (the changed ones; the Contacts v3
  ``preference`` shape).
* ``interaction.unsubscribe``: ``channel`` ``email`` | ``sms`` (the contact unsubscribed themself: an
  unsubscribe link, a preference centre, ``suppress(reason="unsubscribed")``).
* ``contact.removed``: ``contactId`` and ``timeStamp`` only.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlencode

__all__ = ["EVENT_TYPES", "INACTIVITY_LIMIT", "MAX_SUBSCRIPTIONS", "ContactSnapshot", "ExportEvents", "snapshot"]

#: event types the Events spec and the developer hub name
EVENT_TYPES = frozenset({
    "contact.created", "contact.updated", "contact.removed", "contact.membershipUpdated",
    "contact.preferenceUpdated", "contact.consentAdded", "interaction.unsubscribe", "interaction.click",
    "message.sent", "message.status", "insightData.set", "insightData.removed", "insightData.collectionCreated",
    "insightData.collectionRemoved",
})
MAX_SUBSCRIPTIONS = 5
INACTIVITY_LIMIT = timedelta(days=30)
MAX_LIMIT, DEFAULT_LIMIT = 5000, 2000
#: emitted events kept for inspection (a long simulation or benchmark must not grow without bound)
EMITTED_KEPT = 100_000
_NAME_MAX, _TYPES_MAX, _FILTERS_MAX, _PATTERN_MAX = 50, 100, 5, 1024
_ALERT_CHANNELS = ("none", "inApp", "email", "emailAndInApp")
_REQUEST_KEYS = frozenset({"name", "status", "subscribedEventTypes", "alertsConfiguration"})
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_FIELD_RE = re.compile(r"^\$(\.[A-Za-z0-9_]+)+$")


@dataclass(frozen=True)
class ContactSnapshot:
    """What the events compare, before and after a change of one contact."""

    contact_id: int
    email: str | None
    mobile: str | None
    data: dict[str, Any]
    email_status: str
    sms_status: str
    lists: frozenset[int]
    preferences: dict[int, bool]


def snapshot(contact: Any) -> ContactSnapshot:
    """A copy of the sandbox contact's state (``dotdigital_sandbox._Contact``)."""
    return ContactSnapshot(contact.contact_id, contact.email, contact.mobile, dict(contact.data),
                           contact.email_status, contact.sms_status, frozenset(contact.lists),
                           dict(contact.preferences))


@dataclass
class _Subscription:
    id: int
    name: str
    status: str
    event_types: list[dict[str, Any]]
    alerts: dict[str, Any]
    created: datetime
    updated: datetime
    last_read: datetime
    #: bumped when the subscription is suspended: older checkpoints are out of range
    epoch: int = 0
    #: sequence number of the last acknowledged event
    acked: int = 0
    queue: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status,
                "subscribedEventTypes": json.loads(json.dumps(self.event_types)),
                "alertsConfiguration": dict(self.alerts), "created": _iso(self.created), "updated": _iso(self.updated)}

    def wants(self, event: dict[str, Any]) -> bool:
        return any(t["eventType"] == event["type"] and all(_matches(f, event["data"]) for f in t.get("filters", ()))
                   for t in self.event_types)


class _Refused(Exception):
    def __init__(self, status: int, code: str, description: str, details: list[dict[str, str]] | None = None):
        super().__init__(code)
        self.status, self.code, self.description, self.details = status, code, description, details or []


class ExportEvents:
    """The export subscriptions and the events of one sandbox account (the caller holds the sandbox's lock).

    ``respond(status, body)`` builds the sandbox's response object; ``now()`` is the sandbox clock.
    """

    def __init__(self, account_id: int, now: Callable[[], datetime], respond: Callable[[int, Any], Any]) -> None:
        self.account_id = account_id
        self._now = now
        self._respond = respond
        self._subscriptions: dict[int, _Subscription] = {}
        self._next_id = 1
        self._seq = 0
        #: the events emitted, in order, the latest ``EMITTED_KEPT`` of them (tests read them through
        #: ``DotdigitalSandbox.emitted_events``)
        self.emitted: deque[dict[str, Any]] = deque(maxlen=EMITTED_KEPT)

    # -- emitting -------------------------------------------------------------------------------------
    def emit(self, event_type: str, data: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
        """Record one event and queue it for every active subscription that wants it."""
        self.expire()
        now = self._now()
        event_id = str(uuid.uuid4())
        moment = at or now
        event = {"id": event_id, "accountId": self.account_id, "processedDate": _iso(now), "type": event_type,
                 "eventDate": _iso(moment), "data": {**data, "eventId": event_id, "timeStamp": _iso(moment)}}
        self._seq += 1
        self.emitted.append(event)
        for sub in self._subscriptions.values():
            if sub.status == "active" and sub.wants(event):
                sub.queue.append((self._seq, event))
        return event

    def contact_changed(self, before: ContactSnapshot | None, after: ContactSnapshot | None, *,
                        at: datetime | None = None, unsubscribed: Iterable[str] = ()) -> None:
        """Emit what Dotdigital would for a contact going from ``before`` to ``after`` (``None``: not there).

        ``unsubscribed`` names channels the contact unsubscribed from themself (``interaction.unsubscribe``).
        """
        if after is None:
            if before is not None:
                self.emit("contact.removed", {"contactId": before.contact_id}, at)
            return
        base = {"contactId": after.contact_id, "identifiers": _identifiers(after)}
        if before is None:
            self.emit("contact.created", dict(base), at)
            before = ContactSnapshot(after.contact_id, after.email, after.mobile, {}, after.email_status,
                                     after.sms_status, frozenset(), {})
        changed: dict[str, Any] = {}
        fields = {name: after.data.get(name) for name in sorted(set(before.data) | set(after.data))
                  if before.data.get(name) != after.data.get(name)}
        if fields:
            changed["dataFields"] = fields
        channels = {ch: {"status": new} for ch, old, new in (("email", before.email_status, after.email_status),
                                                             ("sms", before.sms_status, after.sms_status))
                    if old != new and (after.email if ch == "email" else after.mobile) is not None}
        if channels:
            changed["channelProperties"] = channels
        if changed:
            self.emit("contact.updated", {**base, **changed}, at)
        for list_id in sorted(after.lists - before.lists):
            self.emit("contact.membershipUpdated", {**base, "listId": list_id, "status": "added"}, at)
        for list_id in sorted(before.lists - after.lists):
            self.emit("contact.membershipUpdated", {**base, "listId": list_id, "status": "removed"}, at)
        prefs = [{"id": pid, "isOptedIn": flag} for pid, flag in sorted(after.preferences.items())
                 if before.preferences.get(pid) != flag]
        if prefs:
            self.emit("contact.preferenceUpdated", {**base, "preferences": prefs}, at)
        for channel in unsubscribed:
            self.emit("interaction.unsubscribe", {**base, "channel": channel}, at)

    # -- time -----------------------------------------------------------------------------------------
    def expire(self) -> None:
        """Suspend the active subscriptions not read for ``INACTIVITY_LIMIT`` of sandbox time."""
        now = self._now()
        for sub in self._subscriptions.values():
            if sub.status == "active" and now - sub.last_read >= INACTIVITY_LIMIT:
                self._deactivate(sub, now)

    @staticmethod
    def _deactivate(sub: _Subscription, now: datetime) -> None:
        sub.status, sub.updated = "inactive", now
        sub.queue.clear()
        sub.epoch += 1

    # -- inspection (tests) ---------------------------------------------------------------------------
    def subscriptions(self) -> list[dict[str, Any]]:
        self.expire()
        return [s.as_json() for s in self._subscriptions.values()]

    def queued(self, subscription_id: int) -> int:
        self.expire()
        sub = self._subscriptions.get(subscription_id)
        return 0 if sub is None else sum(1 for seq, _ in sub.queue if seq > sub.acked)

    # -- HTTP -----------------------------------------------------------------------------------------
    def route(self, method: str, segments: list[str], lowered: list[str], query: dict[str, list[str]],
              body: bytes) -> tuple[bool, Callable[[], Any] | None]:
        """``(path known, handler)`` for a path below ``/events/v3/`` (``segments`` after ``v3``)."""
        handler: Callable[[], Any] | None = None
        if lowered == ["export", "subscriptions"]:
            if method == "GET":
                handler = lambda: self._list(query)  # noqa: E731
            elif method == "POST":
                handler = lambda: self._create(body)  # noqa: E731
            return True, handler and self._guard(handler)
        if len(lowered) == 3 and lowered[:2] == ["export", "subscriptions"]:
            if method == "GET":
                handler = lambda: self._get(segments[2])  # noqa: E731
            elif method == "PUT":
                handler = lambda: self._update(segments[2], body)  # noqa: E731
            elif method == "DELETE":
                handler = lambda: self._delete(segments[2])  # noqa: E731
            return True, handler and self._guard(handler)
        if len(lowered) == 2 and lowered[0] == "export":
            if method == "GET":
                handler = lambda: self._export(segments[1], query)  # noqa: E731
            return True, handler and self._guard(handler)
        if len(lowered) == 2 and lowered[0] == "lob":
            if method == "GET":
                handler = lambda: self._respond(404, {"errorCode": "events:lobNotFound",  # sandbox choice
                                                      "description": "Large object not found", "details": []})
            return True, handler
        return False, None

    def _guard(self, handler: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            self.expire()
            try:
                return handler()
            except _Refused as exc:
                return self._respond(exc.status, {"errorCode": exc.code, "description": exc.description,
                                                  "details": exc.details})
        return run

    def _list(self, query: dict[str, list[str]]) -> Any:
        limit = _int_query(query, "limit", DEFAULT_LIMIT)
        marker = (query.get("marker") or [""])[-1]
        start = 0
        if marker:
            try:
                start = int(base64.b64decode(marker.encode(), validate=True).decode())
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise _Refused(400, "events:invalidParameter", "The marker is invalid",
                               [{"item": marker, "description": "Invalid marker"}]) from None
        items = list(self._subscriptions.values())
        page = items[start:start + limit]

        def link(at: int) -> dict[str, str]:
            token = base64.b64encode(str(at).encode()).decode() if at else ""
            query_text = urlencode({"limit": limit, **({"marker": token} if token else {})})
            return {"marker": token, "link": f"/events/v3/export/subscriptions?{query_text}"}

        links: dict[str, Any] = {"self": link(start), "first": link(0)}
        if start + limit < len(items):
            links["next"] = link(start + limit)
        if start > 0:
            links["prev"] = link(max(0, start - limit))
        return self._respond(200, {"_links": links, "_items": [s.as_json() for s in page]})

    def _create(self, raw: bytes) -> Any:
        request = _validate_request(raw)
        self._check_name(request["name"], None)
        if len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
            raise _Refused(400, "events:tooManySubscriptions",
                           f"An account can have at most {MAX_SUBSCRIPTIONS} event subscriptions")
        now = self._now()
        sub = _Subscription(self._next_id, request["name"], request["status"], request["subscribedEventTypes"],
                            request["alertsConfiguration"], now, now, now)
        self._next_id += 1
        self._subscriptions[sub.id] = sub
        return self._respond(201, sub.as_json())

    def _get(self, raw_id: str) -> Any:
        return self._respond(200, self._find(raw_id).as_json())

    def _update(self, raw_id: str, raw: bytes) -> Any:
        sub = self._find(raw_id)
        request = _validate_request(raw)
        self._check_name(request["name"], sub.id)
        now = self._now()
        if request["status"] == "active" and sub.status != "active":
            sub.last_read = now  # capture starts now; nothing from while it was inactive
        elif request["status"] == "inactive" and sub.status == "active":
            self._deactivate(sub, now)
        sub.name, sub.status = request["name"], request["status"]
        sub.event_types, sub.alerts, sub.updated = request["subscribedEventTypes"], request["alertsConfiguration"], now
        return self._respond(200, sub.as_json())

    def _delete(self, raw_id: str) -> Any:
        sub = self._find(raw_id)
        del self._subscriptions[sub.id]
        return self._respond(204, None)

    def _export(self, raw_id: str, query: dict[str, list[str]]) -> Any:
        sub = self._find(raw_id)
        limit = _int_query(query, "limit", DEFAULT_LIMIT)
        raw_checkpoint = (query.get("checkPoint") or [None])[-1]
        if sub.status != "active":
            raise _Refused(409, "events:inactiveSubscription",
                           "The subscription is set to inactive and therefore cannot be used.",
                           [{"item": str(sub.id), "description": "Inactive subscription"}])
        if raw_checkpoint is not None:
            position = self._parse_checkpoint(sub, raw_checkpoint)
            if position > self._seq:
                raise _Refused(400, "events:invalidCheckpoint", "The checkpoint passed is invalid and cannot be parsed.",
                               [{"item": raw_checkpoint, "description": "Invalid checkpoint."}])
            if position > sub.acked:
                sub.acked = position
                sub.queue = [(seq, e) for seq, e in sub.queue if seq > position]
        sub.last_read = self._now()
        page = [(seq, e) for seq, e in sub.queue if seq > sub.acked][:limit]
        last = page[-1][0] if page else sub.acked
        return self._respond(200, {"checkPoint": _checkpoint(sub, last), "events": [e for _, e in page]})

    # -- helpers --------------------------------------------------------------------------------------
    def _find(self, raw_id: str) -> _Subscription:
        text = unquote(raw_id)
        sub = self._subscriptions.get(int(text)) if text.isdigit() and len(text) <= 10 else None
        if sub is None:
            raise _Refused(404, "events:subscriptionNotFound", "The following subscription could not be found",
                           [{"item": text, "description": "Not found."}])
        return sub

    def _check_name(self, name: str, own_id: int | None) -> None:
        if any(s.name == name and s.id != own_id for s in self._subscriptions.values()):
            raise _Refused(409, "events:nameAlreadyExists",
                           f"The name value '{name}' already exists. All names must be unique!")

    @staticmethod
    def _parse_checkpoint(sub: _Subscription, raw: str) -> int:
        invalid = _Refused(400, "events:invalidCheckpoint", "The checkpoint passed is invalid and cannot be parsed.",
                           [{"item": raw, "description": "Invalid checkpoint."}])
        try:
            text = base64.urlsafe_b64decode(raw.encode("ascii") + b"=" * (-len(raw) % 4)).decode("ascii")
            sub_id, epoch, position = (int(part) for part in text.split(":"))
        except (binascii.Error, ValueError, UnicodeError):
            raise invalid from None
        if sub_id != sub.id or position < 0:
            raise invalid
        if epoch != sub.epoch:
            raise _Refused(400, "events:checkpointOutOfRange",
                           "The checkpoint is out of range: omit it to start from the earliest queued events.",
                           [{"item": raw, "description": "Checkpoint out of range."}])
        return position


def _checkpoint(sub: _Subscription, position: int) -> str:
    return base64.urlsafe_b64encode(f"{sub.id}:{sub.epoch}:{position}".encode()).decode().rstrip("=")


def _identifiers(snap: ContactSnapshot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if snap.email is not None:
        out["email"] = snap.email
    if snap.mobile is not None:
        out["mobileNumber"] = snap.mobile
    return out


def _matches(flt: dict[str, Any], data: dict[str, Any]) -> bool:
    """A filter's JSON path (``$.a.b``; the base is the event data) matched against its glob pattern."""
    value: Any = data
    for part in flt["field"].split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    text = value if isinstance(value, str) else json.dumps(value)
    pattern = flt["matchPattern"]
    if not flt.get("caseSensitive", True):
        text, pattern = text.casefold(), pattern.casefold()
    return fnmatch.fnmatchcase(text, pattern)


def _int_query(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    raw = values[-1]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _Refused(400, "events:invalidParameter", f"{name} must be an integer from 1 to {MAX_LIMIT}",
                       [{"item": name, "description": f"'{raw}' is not allowed"}])
    return int(raw)


def _bad(description: str, item: str) -> _Refused:
    return _Refused(400, "events:badJson", description, [{"item": item, "description": description}])


def _validate_request(raw: bytes) -> dict[str, Any]:
    """The Events spec's ``subscriptionRequest`` (closed object, every property required)."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        raise _bad("The request JSON is badly formed", "body") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object", "body")
    extra = sorted(set(body) - _REQUEST_KEYS)
    if extra:
        raise _bad(f"Unknown properties: {', '.join(extra)}", extra[0])
    missing = sorted(_REQUEST_KEYS - set(body))
    if missing:
        raise _bad(f"Missing required properties: {', '.join(missing)}", missing[0])
    name = body["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= _NAME_MAX:
        raise _bad(f"name must be a string of 1 to {_NAME_MAX} characters", "name")
    if body["status"] not in ("active", "inactive"):
        raise _bad("status must be active or inactive", "status")
    types = body["subscribedEventTypes"]
    if not isinstance(types, list) or not 1 <= len(types) <= _TYPES_MAX:
        raise _bad(f"subscribedEventTypes must have 1 to {_TYPES_MAX} items", "subscribedEventTypes")
    clean_types = []
    for index, item in enumerate(types):
        where = f"subscribedEventTypes[{index}]"
        if not isinstance(item, dict) or set(item) - {"eventType", "filters"} or not isinstance(item.get("eventType"), str):
            raise _bad("Each event type is {eventType, filters?}", where)
        if item["eventType"] not in EVENT_TYPES:
            raise _Refused(400, "events:invalidEventType", f"The type value '{item['eventType']}' is invalid.")
        clean: dict[str, Any] = {"eventType": item["eventType"]}
        if "filters" in item:
            filters = item["filters"]
            if not isinstance(filters, list) or not 1 <= len(filters) <= _FILTERS_MAX:
                raise _bad(f"filters must have 1 to {_FILTERS_MAX} items", f"{where}.filters")
            for f_index, flt in enumerate(filters):
                f_where = f"{where}.filters[{f_index}]"
                if (not isinstance(flt, dict) or set(flt) - {"field", "matchPattern", "caseSensitive"}
                        or not isinstance(flt.get("field"), str) or not _FIELD_RE.match(flt["field"])
                        or not isinstance(flt.get("matchPattern"), str)
                        or not 1 <= len(flt["matchPattern"]) <= _PATTERN_MAX
                        or not isinstance(flt.get("caseSensitive", True), bool)):
                    raise _bad("A filter is {field: JSON path, matchPattern: 1-1024 characters, caseSensitive?}", f_where)
            clean["filters"] = [dict(f) for f in filters]
        clean_types.append(clean)
    alerts = body["alertsConfiguration"]
    if not isinstance(alerts, dict) or alerts.get("alertChannels") not in _ALERT_CHANNELS:
        raise _bad(f"alertsConfiguration.alertChannels must be one of {', '.join(_ALERT_CHANNELS)}",
                   "alertsConfiguration")
    if alerts["alertChannels"] in ("email", "emailAndInApp") and not (
            isinstance(alerts.get("email"), str) and _EMAIL_RE.match(alerts["email"])):
        raise _bad("alertsConfiguration.email is required for e-mail alerts", "alertsConfiguration.email")
    return {"name": name, "status": body["status"], "subscribedEventTypes": clean_types,
            "alertsConfiguration": dict(alerts)}


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
