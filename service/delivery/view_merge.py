"""Coalescing of product views: many ``ProductViews`` insight messages of one contact become one message.

A ``product_viewed`` event enqueues an ``insight.upsert`` of the contact-scoped ``ProductViews`` collection
(record id = product id), due ``[dispatcher] view_coalesce_seconds`` after it was enqueued. When the
dispatcher claims such a message, the never-attempted ``ProductViews`` messages queued right behind it in its
partition are merged into it (``ctdd.delivery.outbox``): its payload gains ``records``, one entry per product,
the latest view winning, each with the ids of the messages whose view it carries. A merged message with one
record is still the single ``PUT``; with several, one ``PUT /insightData/v3/import`` carries them all
(``ctdd.delivery.bulk``), and a record the import rejects settles only the messages that carried it.

Pure functions on payloads: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ctdd.domain.collections import BROWSE_COLLECTION

#: the message kind of insight records (``ctdd.delivery.outbox.INSIGHT_UPSERT``)
INSIGHT_UPSERT = "insight.upsert"
#: at most this many records (distinct products) in one merged message
MAX_VIEW_RECORDS = 100
#: at most this many messages merged into one (repeated views of the same products)
MAX_MERGED_VIEWS = 500


@dataclass(frozen=True)
class ViewRecord:
    """One record of a (merged) view message and the messages whose view it carries."""

    record_id: str
    record: dict
    message_ids: tuple[int, ...]


def is_view_message(kind: str, payload: Any) -> bool:
    """An insight message of the contact-scoped ``ProductViews`` collection (the ones that are coalesced)."""
    return (kind == INSIGHT_UPSERT and isinstance(payload, dict) and payload.get("collection") == BROWSE_COLLECTION
            and payload.get("scope", "contact") == "contact")


def view_records(payload: Mapping[str, Any], message_id: int) -> list[ViewRecord]:
    """The records an insight message carries: its ``records`` once views were merged into it, else its one
    ``record`` (carried by the message itself, ``message_id``)."""
    records = payload.get("records")
    if records:
        return [ViewRecord(str(r["record_id"]), r["record"], tuple(int(i) for i in r["message_ids"])) for r in records]
    return [ViewRecord(str(payload["record_id"]), payload["record"], (message_id,))]


def is_multi_record(kind: str, payload: Any) -> bool:
    """A merged view message carrying several records (delivered by an insight import)."""
    return is_view_message(kind, payload) and len(payload.get("records") or ()) > 1


@dataclass(frozen=True)
class Follower:
    """A pending message queued behind a claimed view message (what the claim read of it)."""

    id: int
    payload: Any


def merge_views(payload: Mapping[str, Any], head_id: int, followers: Iterable[Follower],
                max_records: int = MAX_VIEW_RECORDS, max_merged: int = MAX_MERGED_VIEWS) -> tuple[dict, list[int]]:
    """The payload of view message ``head_id`` with ``followers`` (later views of its contact, in order)
    merged in, and the ids of the followers taken.

    Per record id the latest view wins; a product not seen yet adds a record while there are fewer than
    ``max_records``. The run stops at the first follower that would exceed a cap (it and the rest wait for
    the next claim). ``merged`` is not touched here (the outbox keeps those references).
    """
    by_id: dict[str, ViewRecord] = {r.record_id: r for r in view_records(payload, head_id)}
    already = len(payload.get("merged") or ())
    taken: list[int] = []
    for row in followers:
        p = row.payload if isinstance(row.payload, dict) else {}
        record_id = str(p.get("record_id") or "")
        if not record_id or "record" not in p or already + len(taken) >= max_merged:
            break
        earlier = by_id.get(record_id)
        if earlier is None and len(by_id) >= max_records:
            break
        by_id[record_id] = ViewRecord(record_id, p["record"], (*(earlier.message_ids if earlier else ()), row.id))
        taken.append(row.id)
    records = [{"record_id": r.record_id, "record": r.record, "message_ids": list(r.message_ids)}
               for r in by_id.values()]
    return {**payload, "records": records}, taken


def record_failures(records: list[ViewRecord], failed: Mapping[str, tuple[int | None, str]]
                    ) -> dict[int, tuple[int | None, str]]:
    """Per message id, the failure of the record it carried (``failed``: record id -> (code, error))."""
    out: dict[int, tuple[int | None, str]] = {}
    for record in records:
        if record.record_id in failed:
            for mid in record.message_ids:
                out[mid] = failed[record.record_id]
    return out
