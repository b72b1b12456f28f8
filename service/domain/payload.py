"""Turn flat Dotdigital field paths into a v3 contact upsert body, and combine such bodies (pure).

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
#: the first part of the field paths that make up a contact body (``field_state`` also holds others, e.g.
#: ``insight.<collection>.<id>`` for the insight records sent)
CONTACT_HEADS = ("identifiers", "dataFields", "channelProperties", "lists", "consentRecords", "preferences")


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


def merge_contact_bodies(first: dict, later: dict) -> dict | None:
    """The v3 contact write model that has the effect of sending ``first`` and then ``later``.

    Objects (``identifiers``, ``dataFields``, ``channelProperties``) merge per key, the later value
    winning; ``lists`` (which only ever add) are united; ``preferences`` merge by id, the later winning;
    consent records are appended. Returns ``None`` when the two cannot be combined into one request
    (more than the 5 consent records Dotdigital accepts per request).
    """
    def merge_obj(a: dict, b: dict) -> dict:
        out = dict(a)
        for key, value in b.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_obj(out[key], value)
            else:
                out[key] = value
        return out

    merged: dict = {}
    for key in dict.fromkeys([*first, *later]):
        if key not in later:
            merged[key] = first[key]
            continue
        if key not in first:
            merged[key] = later[key]
            continue
        a, b = first[key], later[key]
        if key == "lists":
            merged[key] = sorted(set(a or ()) | set(b or ()))
        elif key == "preferences":
            by_id = {p["id"]: p for p in (a or ())}
            by_id.update({p["id"]: p for p in (b or ())})
            merged[key] = list(by_id.values())
        elif key == "consentRecords":
            records = [*(a or ()), *(b or ())]
            if len(records) > MAX_CONSENT_RECORDS:
                return None
            merged[key] = records
        elif isinstance(a, dict) and isinstance(b, dict):
            merged[key] = merge_obj(a, b)
        else:
            merged[key] = b
    return merged


def known_contact_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The v3 contact body of what is known to have been sent for a contact (``field_state``: path -> value):
    the contact-body paths only, without ``None`` values (a field cleared, or never set) nor list memberships
    left (``False``). Unlike :func:`build_contact_body` every consent record is kept, latest consent first
    (:func:`recreate_contact_body` picks those that fit in one request)."""
    kept: dict[str, Any] = {}
    records: list[tuple[str, dict[str, Any]]] = []
    for path, value in fields.items():
        head = path.partition(".")[0]
        if head not in CONTACT_HEADS or value is None or (head == "lists" and not value):
            continue
        if head == "consentRecords":
            if isinstance(value, Mapping):
                records.append((path, dict(value)))
            continue
        kept[path] = value
    body = build_contact_body(kept)
    if records:
        records.sort(key=lambda entry: (str(entry[1].get("dateTimeConsented") or ""), entry[0]), reverse=True)
        body["consentRecords"] = [record for _, record in records]
    return body


def recreate_contact_body(known: Mapping[str, Any], body: Mapping[str, Any],
                          address: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body that recreates a contact deleted in Dotdigital: everything ``known`` of it (see
    :func:`known_contact_body`) with ``body`` (the message being delivered) winning, as :func:`merge_contact_bodies`
    combines them, and identifiers from ``body``, else ``address`` (ctdd-sync's own email / mobile number of the
    contact), else ``known``.

    Consent records: the message's own all go; the known ones that are not among them fill the request up to
    Dotdigital's :data:`MAX_CONSENT_RECORDS`, latest consent first."""
    base = {key: value for key, value in known.items() if key != "consentRecords"}
    own = list(body.get("consentRecords") or ())
    room = max(0, MAX_CONSENT_RECORDS - len(own))
    extra = [record for record in known.get("consentRecords") or () if record not in own][:room]
    if extra:
        base["consentRecords"] = extra
    merged = merge_contact_bodies(base, dict(body))
    if merged is None:  # unreachable: the records were counted to fit
        raise ValueError("too many consent records to recreate the contact in one request")
    identifiers = {**(known.get("identifiers") or {}), **(address or {}), **(body.get("identifiers") or {})}
    if identifiers:
        merged["identifiers"] = identifiers
    return merged
