"""The SyncContact core: map, resolve identity, compute the delta and enqueue, in one transaction.

Plugins (mapping, enrichment, suppression) run before the transaction; everything that reads or writes
the database happens in one transaction, so an accepted update is either wholly committed (contact,
identifiers, field state, outbox message) or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Mapping

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.delivery import outbox
from ctdd.config import Settings, StoreConfig
from ctdd.db.engine import utcnow
from ctdd.redaction import mask_emails, redact_text, redact_value
from ctdd.db.models import RejectedRecord
from ctdd.ingest.access import CONTACT_STATE, NEW_CONTACT, ContactAccess, DirectAccess, NewContactNeedsAddress
from ctdd.ingest.plans import ContactPlan
from ctdd.domain.contact import ContactInput
from ctdd.domain.echo import clip
from ctdd.domain.consent import ChannelState, guard_channel
from ctdd.domain.delta import StoredField, compute_delta, is_older
from ctdd.domain.identity import SINGLE_VALUED, Conflict, customer_key, hash_identifier, resolve
from ctdd.domain.payload import build_contact_body
from ctdd.delivery.outbox import CONTACT_UPSERT
from ctdd.hooks.manager import HookContext, Hooks
from ctdd.telemetry import current_trace_carrier, enqueued_counter
from ctdd.db.transactions import run_in_transaction

log = logging.getLogger(__name__)

#: identifier kind -> the field path that carries it to Dotdigital
IDENTIFIER_FIELDS = {"email": "identifiers.email", "mobile_number": "identifiers.mobileNumber"}


@dataclass
class SyncResult:
    contact_id: int
    dotdigital_contact_id: int | None
    created: bool
    changed: bool
    outbox_message_ids: list[int] = field(default_factory=list)
    stale_fields: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    suppression_reasons: list[str] = field(default_factory=list)
    withheld_fields: list[str] = field(default_factory=list)


class ContactSync:
    def __init__(self, engine: Engine, settings: Settings, hooks: Hooks):
        self.engine = engine
        self.settings = settings
        self.hooks = hooks

    # -- plugin phase (no database) -------------------------------------------------------------
    def map_contact(self, contact: ContactInput) -> tuple[dict[str, Any], list[str]]:
        store = self.settings.stores[contact.store_key]
        ctx = HookContext(store=store, settings=self.settings)
        mapped = self.hooks.map_contact(ctx, contact)
        mapped.update(self.hooks.enrich_contact(ctx, contact, mapped))
        return mapped, self.hooks.suppress_contact(ctx, contact, mapped)

    def absent_paths(self, contact: ContactInput, names: Collection[str], mapped: Mapping[str, Any]) -> list[str]:
        """The Dotdigital field paths the mapping plugin gives the attributes ``names`` when the contact has
        none of them (mapped to ``None``), less the paths ``mapped`` sets: what ``apply(clear_own=...)`` may
        clear."""
        if not names:
            return []
        store = self.settings.stores[contact.store_key]
        probe = replace(contact, attributes=dict.fromkeys(names), lists={}, preferences={}, email_consent=None,
                        sms_consent=None)
        probe_mapped = self.hooks.map_contact(HookContext(store=store, settings=self.settings), probe)
        return sorted(path for path, value in probe_mapped.items() if value is None and path not in mapped)

    # -- database phase -------------------------------------------------------------------------
    def sync(self, contact: ContactInput) -> SyncResult:
        """Blocking convenience: plugins, then one transaction (used by tools and tests)."""
        unit = self.prepare(contact)
        return run_in_transaction(self.engine, unit)

    def prepare(self, contact: ContactInput) -> Callable[[Session], SyncResult]:
        """Run the plugins (no database) and return the unit of work that applies the contact.

        The unit may be applied several times (a retried uniqueness race), so it copies its inputs.
        """
        mapped, suppression = self.map_contact(contact)
        return ContactPlan(self, self.settings.stores[contact.store_key], contact, mapped, suppression)

    def known_customer(self, session: Session, store_key: str, customer_id: str) -> int | None:
        """The contact a commercetools customer id resolves to, if any (read only)."""
        store = self.settings.stores[store_key]
        return DirectAccess(session).owners(
            store.account, {"customer_id": customer_key(store.commercetools_project, customer_id)})["customer_id"]

    def requested_identifiers(self, contact: ContactInput) -> dict[str, str]:
        store = self.settings.stores[contact.store_key]
        ident = contact.identity
        requested: dict[str, str] = {}
        if ident.customer_id:
            requested["customer_id"] = customer_key(store.commercetools_project, ident.customer_id)
        if ident.email:
            requested["email"] = ident.email
        if ident.mobile_number:
            requested["mobile_number"] = ident.mobile_number
        if ident.anonymous_id:
            requested["anonymous_id"] = ident.anonymous_id
        return requested

    def apply(
        self, session: Session, contact: ContactInput, mapped: dict[str, Any], suppression: list[str],
        *, priority: int = outbox.PRIORITY_LIVE, clear_own: Collection[str] = (),
        access: ContactAccess | None = None,
    ) -> SyncResult:
        """Resolve identity, compute the delta and enqueue, inside the caller's transaction.

        ``clear_own``: Dotdigital field paths the source no longer has (a commercetools customer is a full
        snapshot: a removed ``companyName`` is absent from it). Each is cleared (set to ``None``) only when its
        current value came from this same source record (``field_state.source_ref``); a value another source
        set (SyncContact from elsewhere, a store default) stays as it is.

        Reads and writes go through ``access`` (``ctdd.ingest.access``): by default a :class:`DirectAccess` on
        ``session`` (one prepared Core statement per step); the set-based path (``ctdd.ingest.set_apply``)
        passes its batch's access, which answers from state read up front and writes when the batch ends.
        """
        if access is None:
            access = DirectAccess(session)
        return self.apply_with(access, contact, mapped, suppression, priority=priority, clear_own=clear_own)

    def wanted_paths(self, contact: ContactInput, mapped: Mapping[str, Any], clear_own: Collection[str] = ()
                     ) -> set[str]:
        """The field paths whose stored state applying ``contact`` (mapped to ``mapped``) reads."""
        wanted = set(mapped)
        wanted.update(IDENTIFIER_FIELDS.values())
        wanted.update(_store_defaults(self.settings.stores[contact.store_key], mapped))
        wanted.update(clear_own)
        return wanted

    def apply_with(
        self, access: ContactAccess, contact: ContactInput, mapped: dict[str, Any], suppression: list[str],
        *, priority: int = outbox.PRIORITY_LIVE, clear_own: Collection[str] = (),
    ) -> SyncResult:
        """:meth:`apply` through ``access``."""
        now = access.now()
        store = self.settings.stores[contact.store_key]
        account = store.account
        requested = self.requested_identifiers(contact)
        resolution = resolve(requested, access.owners(account, requested))

        created = resolution.contact_id is None
        defaults = _store_defaults(store, mapped)
        if created:
            if not (contact.identity.email or contact.identity.mobile_number):
                raise NewContactNeedsAddress()
            # A new contact: nobody can have conflicting identifiers or stored fields, so every requested
            # identifier is attached and the row is written once, with its final values.
            row = dict(NEW_CONTACT)
            if "email" in requested:
                row["email"] = requested["email"]
            if "mobile_number" in requested:
                row["mobile_number"] = requested["mobile_number"]
            _decide_shop_consent(row, contact, now)
            contact_id = access.create_contact(account, row, now)
            stored: dict[str, StoredField] = {}
        else:
            # Row lock: serialises concurrent updates of this contact on PostgreSQL.
            row = access.lock_contact(resolution.contact_id)
            contact_id = row["id"]
            state_before = {name: row[name] for name in CONTACT_STATE}
            stored = access.stored_fields(contact_id, self.wanted_paths(contact, mapped, clear_own))
            own = contact.source.ref
            for path in clear_own:
                previous = stored.get(path)
                if (own is not None and path not in mapped and previous is not None and previous.value is not None
                        and previous.source_ref == own):
                    mapped[path] = None
        # a store default only fills a field the contact has no value for (not one sent before, nor a cleared one)
        mapped.update({path: value for path, value in defaults.items() if path not in stored})

        skipped: set[str] = set()
        new_identifiers: list[dict[str, Any]] = []
        for kind, value in resolution.attach:
            previous = stored.get(IDENTIFIER_FIELDS.get(kind, ""))
            if kind in SINGLE_VALUED and previous is not None and is_older(contact.source, previous):
                # An older record still carries the previous address: do not move the contact back.
                skipped.add(kind)
                continue
            if kind in SINGLE_VALUED and not created:
                # The contact moves to the new address; the old one no longer resolves to it.
                access.delete_identifiers(contact_id, kind)
            new_identifiers.append(
                {"account": account, "kind": kind, "value": value, "contact_id": contact_id, "created_at": now}
            )
        if new_identifiers:
            access.insert_identifiers(new_identifiers)
        if resolution.conflicts:
            access.insert_conflicts([
                {"account": account, "kind": conflict.kind, "value_hash": hash_identifier(requested[conflict.kind]),
                 "owner_contact_id": conflict.owner_contact_id, "requested_contact_id": contact_id,
                 "rule": conflict.rule, "created_at": now}
                for conflict in resolution.conflicts
            ])
        for conflict in resolution.conflicts:
            log.warning("identity conflict: %s belongs to contact %s (%s)", conflict.kind,
                        conflict.owner_contact_id, conflict.rule)
            mapped.pop(IDENTIFIER_FIELDS.get(conflict.kind, ""), None)
        if not created:
            unchanged = {c.kind for c in resolution.conflicts} | skipped
            if "email" in requested and "email" not in unchanged:
                row["email"] = requested["email"]
            if "mobile_number" in requested and "mobile_number" not in unchanged:
                row["mobile_number"] = requested["mobile_number"]
            # remember the shop's newest decision per channel (back-sync compares Dotdigital opt-outs with it)
            _decide_shop_consent(row, contact, now)
            state = {name: row[name] for name in CONTACT_STATE}
            if state != state_before:  # most updates (a page view, a cart) change none of it
                access.update_contact(contact_id, state, now)

        withheld: list[str] = []
        for channel, consent, list_key, status, since in (
            ("email", contact.email_consent, store.email_list, row["dd_email_status"], row["dd_email_status_at"]),
            ("sms", contact.sms_consent, store.sms_list, row["dd_sms_status"], row["dd_sms_status_at"]),
        ):
            withheld += guard_channel(
                mapped, channel=channel, consent=consent, state=ChannelState(status, since),
                list_id=store.lists.get(list_key) if list_key else None, resubscribe_mode=store.resubscribe,
            )
        # resubscribeOptions are instructions, not state: never delta'd, sent with the status they qualify
        volatile = {p: mapped.pop(p) for p in [p for p in mapped if ".resubscribeOptions." in p]}

        delta = compute_delta(mapped, stored, contact.source)
        result = SyncResult(
            contact_id=contact_id, dotdigital_contact_id=row["dotdigital_contact_id"], created=created,
            changed=False, stale_fields=list(delta.stale), conflicts=list(resolution.conflicts),
            suppression_reasons=suppression, withheld_fields=withheld,
        )
        if suppression or not delta.changed:
            return result

        source = contact.source
        ref = outbox.RecordRef(contact.store_key, source.resource_type, source.resource_id, source.version)
        upsert_fields = {p: v for p, v in delta.changed.items() if not (p.startswith("lists.") and v is False)}
        leave_lists = sorted(int(p.split(".", 1)[1]) for p, v in delta.changed.items()
                             if p.startswith("lists.") and v is False)
        if "channelProperties.email.status" in upsert_fields:
            upsert_fields.update(volatile)
        message_ids: dict[str, int] = {}
        if upsert_fields:
            message_ids["upsert"] = access.enqueue(
                contact_id=contact_id, account=account, kind=CONTACT_UPSERT,
                payload={"body": build_contact_body(upsert_fields), "trace": current_trace_carrier()},
                ref=ref, now=now, priority=priority,
            )
            enqueued_counter.add(1, {"kind": CONTACT_UPSERT, "store": contact.store_key})
        if leave_lists:
            message_ids["leave"] = access.enqueue(
                contact_id=contact_id, account=account, kind=outbox.CONTACT_REMOVE_FROM_LISTS,
                payload={"list_ids": leave_lists}, ref=ref, now=now, priority=priority,
            )
            enqueued_counter.add(1, {"kind": outbox.CONTACT_REMOVE_FROM_LISTS, "store": contact.store_key})
        # Field state: whether each row exists is known from ``stored`` (the contact row lock keeps it so),
        # so write it directly instead of merge's SELECT-then-write per field.
        rows = [
            {"field": path, "value": value, "source_ref": source.ref, "source_version": source.version,
             "source_ts": source.modified_at,
             "message_id": message_ids["leave"] if path.startswith("lists.") and value is False else message_ids["upsert"],
             "updated_at": now}
            for path, value in delta.changed.items()
        ]
        access.write_fields(contact_id, rows, set(stored))
        result.changed = True
        result.outbox_message_ids.extend(message_ids.values())
        return result


def _store_defaults(store: StoreConfig, mapped: dict[str, Any]) -> dict[str, Any]:
    """The store's documented defaults (``locale`` -> ``LOCALE``, ``currency`` -> ``CURRENCY``, where mapped) for
    the fields this update does not set: applied only when the contact has no value for them yet."""
    defaults: dict[str, Any] = {}
    for attribute, value in (("locale", store.locale), ("currency", store.currency)):
        name = store.data_fields.get(attribute)
        if value and name and f"dataFields.{name}" not in mapped:
            defaults[f"dataFields.{name}"] = value
    return defaults


def _decide_shop_consent(row: dict[str, Any], contact: ContactInput, now) -> None:
    """Remember the shop's newest consent decision per channel in ``row`` (back-sync compares with it)."""
    for channel, consent in (("email", contact.email_consent), ("sms", contact.sms_consent)):
        if consent is None or not consent.status:
            continue
        decided = consent.decided_at or contact.source.modified_at
        previous = row[f"shop_{channel}_consent_at"]
        if previous is None or (decided is not None and decided >= previous):
            row[f"shop_{channel}_consent"] = consent.status
            row[f"shop_{channel}_consent_at"] = decided or now


#: what one rejected record keeps (see :func:`log_rejected`)
MAX_REJECTED_REASON = 2000
MAX_REJECTED_VIOLATIONS = 20


def _capped(value: str | None, limit: int) -> str | None:
    return clip(value, limit) if value else value


def log_rejected(
    engine: Engine,
    *,
    operation: str,
    reason: str,
    store_key: str | None = None,
    record_type: str | None = None,
    record_id: str | None = None,
    record_version: int | None = None,
    violations: list[Mapping[str, str]] | None = None,
) -> int:
    """Write a rejected-record log entry (no personal data: field names and reasons only).

    What one rejection keeps is capped (the values were refused, perhaps for their size): each value to its
    column's length, the reason to ``MAX_REJECTED_REASON`` characters, at most ``MAX_REJECTED_VIOLATIONS``
    violations; control characters (NUL included, which PostgreSQL refuses) are escaped."""
    store_key, record_id = _capped(store_key, 100), _capped(record_id, 200)
    record_type = _capped(record_type, 50)
    reason = clip(reason, MAX_REJECTED_REASON)
    if violations is not None:
        violations = [{"field": clip(str(v.get("field", "")), 160), "description": clip(str(v.get("description", "")), 240)}
                      for v in violations[:MAX_REJECTED_VIOLATIONS]]
    with Session(engine) as session, session.begin():
        rec = RejectedRecord(  # a store key or record id sent as an email address is not kept either
            operation=operation, store_key=store_key and mask_emails(store_key), record_type=record_type,
            record_id=record_id and mask_emails(record_id),
            record_version=record_version, reason=redact_text(reason), violations=redact_value(violations),
            created_at=utcnow(),
        )
        session.add(rec)
        session.flush()
        assert rec.id is not None
        rid = rec.id
    log.warning("rejected %s for store %s (%s/%s v%s): %s", operation, store_key, record_type, record_id,
                record_version, reason)
    return rid
