"""Turn flat Dotdigital field paths into a v3 contact upsert body (pure).

Field paths used by ctdd-sync (the vocabulary mapping hooks return):

- ``identifiers.email`` / ``identifiers.mobileNumber``
- ``dataFields.<NAME>``: a data field (must exist in the account)
- ``channelProperties.email.status`` / ``.optInType`` / ``.emailType``; ``channelProperties.sms.status``
- ``lists.<id>``: ``True`` to add the contact to address book ``<id>`` (v3 ``lists`` only adds)
- ``consentRecords.<channel>.<digest>``: one consent record (dict with text, dateTimeConsented, url,
  ipAddress, userAgent); keyed by digest so a record is sent once
- ``preferences.<id>``: ``True``/``False`` opt-in to a preference
"""

from __future__ import annotations

from typing import Any, Mapping

#: Dotdigital accepts at most 5 consent records per request
MAX_CONSENT_RECORDS = 5


def build_contact_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    lists: list[int] = []
    consent: list[dict[str, Any]] = []
    preferences: list[dict[str, Any]] = []
    for path in sorted(fields):
        value = fields[path]
        head, _, rest = path.partition(".")
        if head == "lists":
            if value:
                lists.append(int(rest))
        elif head == "consentRecords":
            consent.append(dict(value))
        elif head == "preferences":
            preferences.append({"id": int(rest), "isOptedIn": bool(value)})
        elif head in ("identifiers", "dataFields", "channelProperties"):
            node = body.setdefault(head, {})
            parts = rest.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        else:
            raise ValueError(f"unknown Dotdigital field path {path!r}")
    if lists:
        body["lists"] = sorted(lists)
    if consent:
        body["consentRecords"] = consent[:MAX_CONSENT_RECORDS]
    if preferences:
        body["preferences"] = preferences
    return body
