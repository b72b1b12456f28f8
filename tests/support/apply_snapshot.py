"""What a service made of an event stream, with the ids that legitimately differ between two runs replaced by
what they stand for: contacts by their identifiers, outbox message ids by (contact, sequence), Dotdigital
contact ids by the sandbox contact's identifiers. Times the service took from its clock when it wrote a row
(``updated_at``, ``processed_at`` ...) are kept as "set or not"; times that come from the events (source
timestamps, due times, view times) are compared as they are. Two runs of the same stream must give equal
snapshots.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa

#: keys of outbox payloads that carry an id of this database or of the sandbox
_ID_KEYS = {"contact_id", "contactId", "message_id", "dotdigital_contact_id"}


#: columns holding the time a row was written (the clock's, never an event's)
_WRITE_TIMES = {"created_at", "updated_at", "processed_at", "decided_at", "delivered_at", "next_attempt_at",
                "lease_expires_at", "dd_email_status_at", "dd_sms_status_at"}
#: tables whose ``created_at`` is an event's time, not the clock's
_EVENT_CREATED_AT = {"order_summary"}


def _rows(conn, sql: str) -> list[dict]:
    table = sql.split(" FROM ")[1].split()[0]
    rows = []
    for r in conn.execute(sa.text(sql)):
        row = dict(r._mapping)
        for column in _WRITE_TIMES & row.keys():
            if not (column == "created_at" and table in _EVENT_CREATED_AT):
                row[column] = row[column] is not None
        rows.append(row)
    return rows


def contact_keys(conn) -> dict[int, str]:
    """Contact id -> a name that does not depend on ids: its identifiers (not the Dotdigital id), email, mobile."""
    idents: dict[int, list[str]] = defaultdict(list)
    for r in _rows(conn, "SELECT contact_id, kind, value FROM contact_identifier"):
        if "dotdigital" not in r["kind"]:
            idents[r["contact_id"]].append(f"{r['kind']}={r['value']}")
    keys = {}
    for c in _rows(conn, "SELECT id, email, mobile_number FROM contact"):
        keys[c["id"]] = "|".join(sorted(idents[c["id"]])) or f"email={c['email']}|mobile={c['mobile_number']}"
    assert len(set(keys.values())) == len(keys), "two contacts with the same identifiers"
    return keys


def _strip_ids(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("{"):
        try:  # a JSON column read back as text
            return _strip_ids(json.loads(value))
        except ValueError:
            return value
    if isinstance(value, dict):
        # a W3C trace carrier (kept while a tracer provider is installed, as after the tracing tests of this
        # process) names a span of this run: only whether it is there counts
        return {k: ("<id>" if k in _ID_KEYS and v is not None else "<trace>" if k == "trace" and v
                    else _strip_ids(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def database_snapshot(engine) -> dict[str, Any]:
    with engine.connect() as conn:
        keys = contact_keys(conn)
        key = lambda cid: None if cid is None else keys.get(cid, f"<missing contact {cid}>")  # noqa: E731
        messages = _rows(conn, "SELECT * FROM outbox_message ORDER BY contact_id, sequence")
        message_ref = {m["id"]: (key(m["contact_id"]), m["sequence"]) for m in messages}

        contacts = {}
        for c in _rows(conn, "SELECT * FROM contact"):
            name = keys[c.pop("id")]
            contacts[name] = {**c, "dotdigital_contact_id": c["dotdigital_contact_id"] is not None}

        field_state: dict[str, dict] = defaultdict(dict)
        for f in _rows(conn, "SELECT * FROM field_state"):
            field_state[key(f["contact_id"])][f["field"]] = (
                f["value"], f["source_ref"], f["source_version"], f["source_ts"], message_ref.get(f["message_id"]),
                f["updated_at"])

        outbox: dict[str, list] = defaultdict(list)
        for m in messages:
            outbox[key(m["contact_id"])].append(dict(
                sequence=m["sequence"], partition=m["partition_key"].split(":")[0], kind=m["kind"],
                payload=_strip_ids(m["payload"]), priority=m["priority"], store_key=m["store_key"],
                record_type=m["record_type"], record_id=m["record_id"], record_version=m["record_version"],
                # delivered or merged into an earlier message depends on the dispatcher's timing
                settled=m["status"] in ("delivered", "merged"), status_dead=m["status"] == "dead",
                created_at=m["created_at"]))

        triggers = sorted(
            (t["store_key"], t["account"], t["program_kind"], key(t["contact_id"]), t["subject_type"],
             key(int(t["subject_id"])) if t["subject_type"] == "browse" else t["subject_id"], t["subject_version"],
             t["step"], t["due_at"], t["first_due_at"], t["status"], t["reason"], t["program_id"], t["attempts"],
             t["created_at"], t["decided_at"])
            for t in _rows(conn, "SELECT * FROM program_trigger"))

        return {
            "contacts": contacts,
            "identifiers": sorted((key(r["contact_id"]), r["account"], r["kind"], r["value"], r["created_at"])
                                  for r in _rows(conn, "SELECT * FROM contact_identifier")
                                  if "dotdigital" not in r["kind"]),
            "field_state": dict(field_state),
            "outbox": dict(outbox),
            "processed_event": {r["dedupe_key"]: (r["store_key"], r["resource_type"], r["resource_id"], r["outcome"],
                                                  r["processed_at"])
                                for r in _rows(conn, "SELECT * FROM processed_event")},
            "inbox": [(r["id"], r["dedupe_key"], r["store_key"], r["status"], r["attempts"], r["outcome"],
                       r["last_error"], r["processed_at"])
                      for r in _rows(conn, "SELECT * FROM event_inbox ORDER BY id")],
            "rejected": sorted((r["operation"], r["store_key"], r["record_type"], r["record_id"], r["record_version"],
                                r["reason"], repr(r["violations"]), r["created_at"])
                               for r in _rows(conn, "SELECT * FROM rejected_record")),
            "identity_conflicts": sorted(
                repr({k: (key(v) if k.endswith("contact_id") else v) for k, v in r.items() if k != "id"})
                for r in _rows(conn, "SELECT * FROM identity_conflict")),
            "resource_state": sorted((r["project_key"], r["resource_type"], r["resource_id"], r["version"],
                                      key(r["contact_id"]), r["updated_at"])
                                     for r in _rows(conn, "SELECT * FROM resource_state")),
            "order_summary": sorted(repr({**{k: v for k, v in r.items() if k != "contact_id"},
                                          "contact": key(r["contact_id"])})
                                    for r in _rows(conn, "SELECT * FROM order_summary")),
            "carts": sorted(repr({**{k: v for k, v in r.items() if k != "contact_id"}, "contact": key(r["contact_id"])})
                            for r in _rows(conn, "SELECT * FROM cart")),
            "product_views": sorted(repr({**{k: v for k, v in r.items() if k != "contact_id"},
                                          "contact": key(r["contact_id"])})
                                    for r in _rows(conn, "SELECT * FROM product_view")),
            "program_triggers": triggers,
        }


def sandbox_snapshot(sandbox) -> dict[str, Any]:
    """Per sandbox contact (by its identifiers): its read model without ids and times, and its insight records
    of every contact-scoped collection."""
    collections = [c["collectionName"] for c in sandbox.collections if c["collectionScope"] == "contact"]
    result = {}
    for contact in sandbox.contacts:
        name = "|".join(f"{k}={v}" for k, v in sorted(contact["identifiers"].items()))
        records = {}
        for collection in collections:
            found = sandbox.insight_records(collection, contact_id=contact["contactId"])
            if found:
                records[collection] = _strip_ids(found)
        model = {k: v for k, v in contact.items() if k not in ("contactId", "created", "updated")}
        assert name not in result, f"two sandbox contacts named {name}"
        result[name] = {"contact": model, "insight": records}
    return result
