"""Contact events ready to apply: what a SyncContact or a behavioural event writes, decided once for both paths.

A :class:`ContactPlan` is built in the preparation phase (plugins have run, no database) and applied later
through a :class:`~ctdd.ingest.access.ContactAccess`:

- on its own (``plan(session)``: a unit of work, one statement at a time through ``DirectAccess``), or
- with the other plans of a batch (``ctdd.ingest.set_apply``: state read up front, writes at the end).

The logic is :meth:`ContactPlan.apply`, the same for both, so both leave the same rows.

A plan covers: the dedupe record (``processed_event``) of an event, the contact (identity, delta, outbox
messages: ``ContactSync.apply_with``), the event's insight record (with its own delta: an identical record is
not sent again), and the browse-abandonment timer of a product view. Carts, orders and customer messages keep
their units in ``ctdd.ingest.events`` (applied one at a time, in order, between the batch's plans).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Collection, Mapping, Protocol

from sqlalchemy.orm import Session

from ctdd.config import StoreConfig
from ctdd.delivery import outbox
from ctdd.domain.collections import BROWSE_COLLECTION, COLLECTION_TYPES
from ctdd.domain.contact import ContactInput, SourceStamp
from ctdd.domain.delta import is_older
from ctdd.telemetry import tracing_enabled
from ctdd.ingest.access import ContactAccess, DirectAccess, NewContactNeedsAddress, processed_row


class ContactCore(Protocol):
    """What a plan needs of ``ctdd.ingest.contact_sync.ContactSync`` (which builds on this module)."""

    settings: Any

    def requested_identifiers(self, contact: ContactInput) -> dict[str, str]: ...

    def wanted_paths(self, contact: ContactInput, mapped: Mapping[str, Any], clear_own: Collection[str] = ()
                     ) -> set[str]: ...

    def apply_with(self, access: ContactAccess, contact: ContactInput, mapped: dict[str, Any], suppression: list[str],
                   *, priority: int = ..., clear_own: Collection[str] = ()) -> Any: ...

APPLIED, DUPLICATE, IGNORED = "applied", "duplicate", "ignored"


def record_digest(value: Any) -> str:
    """What the delta of an insight record compares: a hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def insight_path(collection: str, record_id: str) -> str:
    """The field-state path remembering what was last enqueued for one insight record of a contact."""
    return f"insight.{collection}.{record_id}"


def view_coalesce_window(store_settings: Any) -> timedelta:
    """How long a product view's insight message waits for more views of the contact to merge with
    (``[dispatcher] view_coalesce_seconds``; 0 when the setting is absent or off)."""
    seconds = getattr(getattr(store_settings, "dispatcher", None), "view_coalesce_seconds", 0) or 0
    return timedelta(seconds=seconds)


def enqueue_insight(access: ContactAccess, *, contact_id: int, store: StoreConfig, collection: str,
                    record_id: str, record: dict, source: SourceStamp, priority: int,
                    hold: timedelta = timedelta(0), digest: str | None = None) -> int | None:
    """Enqueue an insight record unless the identical record, or a newer one of the record (by ``source``: its
    version, else its time), was already enqueued (delta for records); the message id. ``hold``: the message falls
    due that much later (product views wait to be merged). ``digest``: the record's ``record_digest``, when known."""
    path = insight_path(collection, record_id)
    digest = digest or record_digest(record)
    stored = access.stored_fields(contact_id, (path,)).get(path)
    if stored is not None and (stored.value == digest or is_older(source, stored)):
        return None  # the same record again, or an older one than what was sent (newest wins, as for fields)
    now = access.now()
    mid = access.enqueue(
        contact_id=contact_id, account=store.account, kind=outbox.INSIGHT_UPSERT,
        payload={"collection": collection, "record_id": record_id, "record": record, "scope": "contact",
                 "collection_type": COLLECTION_TYPES.get(collection, "custom")},
        ref=outbox.RecordRef(store.key, source.resource_type, source.resource_id, source.version),
        now=now, priority=priority, not_before=now + hold if hold else None,
    )
    access.write_fields(contact_id, [{
        "field": path, "value": digest, "source_ref": source.ref, "source_version": source.version,
        "source_ts": source.modified_at, "message_id": mid, "updated_at": now,
    }], {path} if stored is not None else set())
    return mid


@dataclass(frozen=True)
class InsightPart:
    """The insight record an event writes for its contact (unless the contact update is suppressed)."""

    collection: str
    record_id: str
    record: dict
    source: SourceStamp
    #: ``record_digest(record)``, computed when the event is prepared: off the apply transaction's path (the record
    #: is final by then: plugins shaped it before)
    digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", record_digest(self.record))


@dataclass(frozen=True)
class ViewPart:
    """A product view: the browse-abandonment timer it (re)starts."""

    product_id: str
    viewed_at: datetime
    data: dict | None


class ContactPlan:
    """One contact-scoped change, prepared (see the module docstring).

    Without ``outcome`` it is a SyncContact: applying answers the ``SyncResult`` and a contact that cannot
    be created raises ``NewContactNeedsAddress``. With ``outcome`` (a ``ctdd.ingest.events.NotificationOutcome``)
    it is an event:
    applying fills and answers the outcome (``duplicate`` for a dedupe key seen before; ``ignored`` when the
    contact cannot be created) and records the dedupe key.
    """

    __slots__ = ("sync", "store", "contact", "mapped", "suppression", "priority", "clear_own", "dedupe_key",
                 "outcome", "insight", "view", "refused", "trace_context")

    def __init__(self, sync: ContactCore, store: StoreConfig, contact: ContactInput, mapped: dict[str, Any],
                 suppression: list[str], *, priority: int = outbox.PRIORITY_LIVE, clear_own: Collection[str] = (),
                 dedupe_key: str | None = None, outcome: Any = None,
                 insight: InsightPart | None = None, view: ViewPart | None = None,
                 refused: dict[str, Any] | None = None):
        self.sync = sync
        self.store = store
        self.contact = contact
        self.mapped = mapped
        self.suppression = suppression
        self.priority = priority
        self.clear_own = tuple(clear_own)
        self.dedupe_key = dedupe_key
        self.outcome = outcome
        self.insight = insight
        self.view = view
        #: the rejected-record row of the event's insight record when a plugin failed it (then ``insight`` is None)
        self.refused = refused
        #: while tracing is on, the context of the call that prepared the plan: applied in it (by a group commit's
        #: committer, in a thread), the messages it enqueues keep that call's trace (ctdd.telemetry)
        self.trace_context = contextvars.copy_context() if tracing_enabled() else None

    def __call__(self, session: Session) -> Any:
        """The plan as a unit of work of its own (one statement at a time)."""
        return self.apply(DirectAccess(session))

    def wanted_paths(self) -> set[str]:
        """Every field-state path applying this plan may read (read up front by the set-based path)."""
        paths = self.sync.wanted_paths(self.contact, self.mapped, self.clear_own)
        if self.insight is not None:
            paths.add(insight_path(self.insight.collection, self.insight.record_id))
        return paths

    def apply(self, access: ContactAccess) -> Any:
        if self.trace_context is not None:
            return self.trace_context.run(self._apply, access)
        return self._apply(access)

    def _apply(self, access: ContactAccess) -> Any:
        outcome = self.outcome
        if outcome is None:  # SyncContact
            return self.sync.apply_with(access, self.contact, dict(self.mapped), list(self.suppression),
                                        priority=self.priority, clear_own=self.clear_own)
        outcome.reset()
        key = self.dedupe_key
        if key is not None and access.processed(key):
            outcome.outcome, outcome.reason = DUPLICATE, "message already processed"
            return outcome
        try:
            result = self.sync.apply_with(access, self.contact, dict(self.mapped), list(self.suppression),
                                          priority=self.priority, clear_own=self.clear_own)
        except NewContactNeedsAddress:
            outcome.outcome, outcome.reason = IGNORED, "unknown contact and no email or mobile number to create one"
        else:
            outcome.contact_id = result.contact_id
            outcome.outbox_message_ids = list(result.outbox_message_ids)
            if not result.suppression_reasons:
                self._insight_and_view(access, result.contact_id)
        if self.refused is not None:
            outcome.reason = self.refused["reason"]
            access.reject(self.refused)
        if key is not None:
            access.mark_processed(processed_row(key, self.store.key, outcome.resource_type, outcome.resource_id,
                                                outcome.outcome, access.now()))
        return outcome

    def _insight_and_view(self, access: ContactAccess, contact_id: int) -> None:
        assert self.outcome is not None
        part = self.insight
        if part is not None:
            hold = (view_coalesce_window(self.sync.settings) if part.collection == BROWSE_COLLECTION
                    else timedelta(0))
            mid = enqueue_insight(access, contact_id=contact_id, store=self.store, collection=part.collection,
                                  record_id=part.record_id, record=part.record, source=part.source,
                                  priority=self.priority, hold=hold, digest=part.digest)
            if mid:
                self.outcome.outbox_message_ids.append(mid)
        if self.view is not None:
            access.product_viewed(self.store, contact_id, self.view.product_id, self.view.viewed_at, access.now(),
                                  self.view.data)


def is_plan(step: Any) -> bool:
    return isinstance(step, ContactPlan)
