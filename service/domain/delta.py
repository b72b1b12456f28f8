"""Delta sync (pure): which Dotdigital fields changed, and which updates are stale.

A contact's desired state is a flat mapping of Dotdigital field paths to values, for example
``{"dataFields.FIRSTNAME": "Jane", "channelProperties.email.status": "subscribed", "lists.12": True}``.
For every field ctdd-sync remembers the value it last enqueued and the source stamp it came from.

Staleness, per field: an incoming value is stale when the stored value came from

- the same source record (same ``resource_type/resource_id``) with a higher version, or
- any source with a strictly later modification time (when both sides have one).

Stale fields are dropped and reported; they are not errors. Unchanged fields are not sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from .contact import SourceStamp


@dataclass(frozen=True)
class StoredField:
    value: Any
    source_ref: str | None
    source_version: int | None
    source_ts: datetime | None


@dataclass(frozen=True)
class Delta:
    #: field path -> new value, for the fields to send
    changed: dict[str, Any]
    #: field paths dropped because newer data was already applied
    stale: tuple[str, ...]


def is_older(incoming: SourceStamp, stored: StoredField) -> bool:
    """True when ``incoming`` is older than the source of ``stored``."""
    if (
        incoming.ref is not None
        and incoming.ref == stored.source_ref
        and incoming.version is not None
        and stored.source_version is not None
    ):
        return incoming.version < stored.source_version
    if incoming.modified_at is not None and stored.source_ts is not None:
        return incoming.modified_at < stored.source_ts
    return False


def compute_delta(desired: Mapping[str, Any], stored: Mapping[str, StoredField], source: SourceStamp) -> Delta:
    changed: dict[str, Any] = {}
    stale: list[str] = []
    for path in sorted(desired):
        value = desired[path]
        previous = stored.get(path)
        if previous is None:
            changed[path] = value
            continue
        if is_older(source, previous):
            if previous.value != value:
                stale.append(path)
            continue
        if previous.value != value:
            changed[path] = value
    return Delta(changed, tuple(stale))
