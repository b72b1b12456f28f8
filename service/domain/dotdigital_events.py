"""Events of Dotdigital's Events API export subscription -> :class:`ContactChange` (pure, no I/O).

The envelope is the Events spec's ``event`` (``{id, accountId, processedDate, type, eventDate, data}``); the spec
documents no per-type ``data``, so the parser reads the fields the sandbox emits (``ctdd.testing.dotdigital_events``,
modelled on the spec's ``data`` example) and is lenient about the rest: what it cannot use is skipped and
counted, never guessed. Per type:

- ``contact.preferenceUpdated``: ``preferences: [{id, isOptedIn}]`` -> PREFERENCES;
- ``contact.membershipUpdated``: ``listId`` and ``status`` (``added`` / ``removed``; also ``subscribed`` /
  ``unsubscribed``) -> LISTS;
- ``contact.updated``: ``dataFields: {NAME: value}`` -> PROFILE; ``channelProperties.<email|sms>.status`` that
  closes the channel (not subscribed, not pending) -> UNSUBSCRIBE of that channel;
- ``interaction.unsubscribe``: ``channel`` (default ``email``) -> UNSUBSCRIBE.

The contact: ``data.contactId``, ``data.identifiers.email`` / ``.mobileNumber`` (E.164 with ``+``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from ctdd.domain.commerce import parse_ts
from ctdd.domain.consent import EMAIL_OPEN, PENDING, SMS_OPEN, normalise_status
from ctdd.domain.dotdigital_changes import LISTS, PREFERENCES, PROFILE, UNSUBSCRIBE, ContactChange

PREFERENCE_UPDATED = "contact.preferenceUpdated"
MEMBERSHIP_UPDATED = "contact.membershipUpdated"
CONTACT_UPDATED = "contact.updated"
INTERACTION_UNSUBSCRIBE = "interaction.unsubscribe"
#: what the back-sync subscribes to
BACKSYNC_EVENT_TYPES = (CONTACT_UPDATED, MEMBERSHIP_UPDATED, PREFERENCE_UPDATED, INTERACTION_UNSUBSCRIBE)
_MEMBER = {"added": True, "subscribed": True, "joined": True, "removed": False, "unsubscribed": False, "left": False}
_NAME_LIMIT = 50  # the Events spec: a subscription name is at most 50 characters


def subscription_name(account: str) -> str:
    """The export subscription ctdd-sync keeps for ``account``: ``ctdd-sync-<account>``, at most 50 characters
    (a longer one ends in a short hash of the account, so it stays unique and stable)."""
    name = f"ctdd-sync-{account}"
    if len(name) <= _NAME_LIMIT:
        return name
    digest = hashlib.sha256(account.encode("utf-8")).hexdigest()[:8]
    return f"{name[:_NAME_LIMIT - 9]}-{digest}"


@dataclass
class ParsedEvents:
    """The changes of a page of events, in event order, and what was skipped (event type -> count)."""

    changes: list[ContactChange] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def parse_events(account: str, events: Iterable[Mapping[str, Any]]) -> ParsedEvents:
    """Every change of ``events`` (oldest first) for ``account``; unknown or unusable events are counted."""
    parsed = ParsedEvents()
    for event in events:
        changes = changes_from_event(account, event)
        if changes:
            parsed.changes += changes
        else:
            kind = str(event.get("type") or "?") if isinstance(event, Mapping) else "?"
            parsed.skipped[kind] = parsed.skipped.get(kind, 0) + 1
    return parsed


def changes_from_event(account: str, event: Mapping[str, Any]) -> list[ContactChange]:
    """The changes one event carries ([] when its type is not the back-sync's, or it says nothing usable)."""
    if not isinstance(event, Mapping) or not isinstance(event.get("id"), str) or not event["id"]:
        return []
    data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
    occurred = _time(event.get("eventDate")) or _time(data.get("timeStamp")) or _time(event.get("processedDate"))
    if occurred is None:
        return []
    who = _identity(data)
    if not any(who.values()):
        return []
    event_id, kind = event["id"], event.get("type")

    def change(what: str, suffix: str = "", **values: Any) -> ContactChange:
        return ContactChange(event_id=event_id + suffix, account=account, kind=what, occurred_at=occurred,
                             **who, **values)

    if kind == PREFERENCE_UPDATED:
        prefs = {}
        for pref in data.get("preferences") or []:
            if isinstance(pref, Mapping) and _int(pref.get("id")) is not None and isinstance(pref.get("isOptedIn"), bool):
                prefs[_int(pref["id"])] = pref["isOptedIn"]
        return [change(PREFERENCES, preferences=prefs)] if prefs else []
    if kind == MEMBERSHIP_UPDATED:
        list_id, member = _int(data.get("listId")), _MEMBER.get(str(data.get("status") or "").strip().lower())
        return [change(LISTS, lists={list_id: member})] if list_id is not None and member is not None else []
    if kind == CONTACT_UPDATED:
        out = []
        fields = data.get("dataFields")
        if isinstance(fields, Mapping) and fields:
            out.append(change(PROFILE, data_fields={str(k).upper(): v for k, v in fields.items()}))
        channels = data.get("channelProperties") if isinstance(data.get("channelProperties"), Mapping) else {}
        for channel, open_statuses in (("email", EMAIL_OPEN), ("sms", SMS_OPEN)):
            props = channels.get(channel)
            status = normalise_status(props.get("status")) if isinstance(props, Mapping) else None
            if status and status not in open_statuses and status != PENDING:
                out.append(change(UNSUBSCRIBE, f"/unsubscribe-{channel}", channel=channel))
        return out
    if kind == INTERACTION_UNSUBSCRIBE:
        channel = str(data.get("channel") or "email").strip().lower()
        return [change(UNSUBSCRIBE, channel=channel)] if channel in ("email", "sms") else []
    return []


def _identity(data: Mapping[str, Any]) -> dict[str, Any]:
    ids = data.get("identifiers") if isinstance(data.get("identifiers"), Mapping) else {}
    email = ids.get("email") if isinstance(ids.get("email"), str) and ids.get("email") else None
    raw_mobile = ids.get("mobileNumber")
    mobile = "+" + str(raw_mobile).lstrip("+") if isinstance(raw_mobile, (str, int)) and str(raw_mobile) else None
    return {"dotdigital_contact_id": _int(data.get("contactId")), "email": email, "mobile_number": mobile}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = parse_ts(value)
    except ValueError:
        return None
    return moment.astimezone(timezone.utc) if moment else None
