"""The SyncContact core: map, resolve identity, compute the delta and enqueue, in one transaction.

Plugins (mapping, enrichment, suppression) run before the transaction; everything that reads or writes
the database happens in one transaction, so an accepted update is either wholly committed (contact,
identifiers, field state, outbox message) or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service import outbox
from service.config import Settings
from service.db.engine import utcnow
from service.db.models import Contact, ContactIdentifier, FieldState, IdentityConflictRecord, RejectedRecord
from service.domain.contact import ContactInput
from service.domain.consent import ChannelState, guard_channel
from service.domain.delta import StoredField, compute_delta, is_older
from service.domain.identity import SINGLE_VALUED, Conflict, customer_key, hash_identifier, resolve
from service.domain.payload import build_contact_body
from service.outbox import CONTACT_UPSERT
from service.plugins import HookContext, Hooks
from service.telemetry import current_trace_carrier, enqueued_counter
from service.transactions import run_in_transaction

log = logging.getLogger(__name__)

#: identifier kind -> the field path that carries it to Dotdigital
IDENTIFIER_FIELDS = {"email": "identifiers.email", "mobile_number": "identifiers.mobileNumber"}


class NewContactNeedsAddress(Exception):
    """No identifier matched and there is neither an email nor a mobile number to create a contact with."""


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

        def unit(session: Session) -> SyncResult:
            return self.apply(session, contact, dict(mapped), list(suppression))

        return unit

    def known_customer(self, session: Session, store_key: str, customer_id: str) -> int | None:
        """The contact a commercetools customer id resolves to, if any (read only)."""
        store = self.settings.stores[store_key]
        return session.execute(
            sa.select(ContactIdentifier.contact_id).where(
                ContactIdentifier.account == store.account,
                ContactIdentifier.kind == "customer_id",
                ContactIdentifier.value == customer_key(store.commercetools_project, customer_id),
            )
        ).scalar_one_or_none()

    def _requested_identifiers(self, contact: ContactInput) -> dict[str, str]:
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
        *, priority: int = outbox.PRIORITY_LIVE,
    ) -> SyncResult:
        """Resolve identity, compute the delta and enqueue, inside the caller's transaction."""
        now = utcnow()
        account = self.settings.stores[contact.store_key].account
        requested = self._requested_identifiers(contact)
        owners: dict[str, int | None] = {}
        for kind, value in requested.items():
            owners[kind] = session.execute(
                sa.select(ContactIdentifier.contact_id).where(
                    ContactIdentifier.account == account,
                    ContactIdentifier.kind == kind,
                    ContactIdentifier.value == value,
                )
            ).scalar_one_or_none()
        resolution = resolve(requested, owners)

        created = resolution.contact_id is None
        if created:
            if not (contact.identity.email or contact.identity.mobile_number):
                raise NewContactNeedsAddress()
            row = Contact(account=account, created_at=now, updated_at=now)
            session.add(row)
            session.flush()
        else:
            # Row lock: serialises concurrent updates of this contact on PostgreSQL.
            row = session.execute(
                sa.select(Contact).where(Contact.id == resolution.contact_id).with_for_update()
            ).scalar_one()
        assert row.id is not None
        stored = {
            fs.field: StoredField(fs.value, fs.source_ref, fs.source_version, fs.source_ts)
            for fs in session.execute(sa.select(FieldState).where(FieldState.contact_id == row.id)).scalars()
        }

        skipped: set[str] = set()
        for kind, value in resolution.attach:
            previous = stored.get(IDENTIFIER_FIELDS.get(kind, ""))
            if kind in SINGLE_VALUED and previous is not None and is_older(contact.source, previous):
                # An older record still carries the previous address: do not move the contact back.
                skipped.add(kind)
                continue
            if kind in SINGLE_VALUED:
                # The contact moves to the new address; the old one no longer resolves to it.
                session.execute(
                    sa.delete(ContactIdentifier).where(
                        ContactIdentifier.contact_id == row.id, ContactIdentifier.kind == kind
                    )
                )
            session.add(ContactIdentifier(account=account, kind=kind, value=value, contact_id=row.id, created_at=now))
        for conflict in resolution.conflicts:
            session.add(
                IdentityConflictRecord(
                    account=account, kind=conflict.kind, value_hash=hash_identifier(requested[conflict.kind]),
                    owner_contact_id=conflict.owner_contact_id, requested_contact_id=row.id,
                    rule=conflict.rule, created_at=now,
                )
            )
            log.warning("identity conflict: %s belongs to contact %s (%s)", conflict.kind,
                        conflict.owner_contact_id, conflict.rule)
            mapped.pop(IDENTIFIER_FIELDS.get(conflict.kind, ""), None)
        unchanged = {c.kind for c in resolution.conflicts} | skipped
        if "email" in requested and "email" not in unchanged:
            row.email = requested["email"]
        if "mobile_number" in requested and "mobile_number" not in unchanged:
            row.mobile_number = requested["mobile_number"]
        row.updated_at = now
        session.flush()

        store = self.settings.stores[contact.store_key]
        # remember the shop's newest decision per channel (back-sync compares Dotdigital opt-outs with it)
        for channel, consent in (("email", contact.email_consent), ("sms", contact.sms_consent)):
            if consent is None or not consent.status:
                continue
            decided = consent.decided_at or contact.source.modified_at
            previous = getattr(row, f"shop_{channel}_consent_at")
            if previous is None or (decided is not None and decided >= previous):
                setattr(row, f"shop_{channel}_consent", consent.status)
                setattr(row, f"shop_{channel}_consent_at", decided or now)
        withheld: list[str] = []
        for channel, consent, list_key, status, since in (
            ("email", contact.email_consent, store.email_list, row.dd_email_status, row.dd_email_status_at),
            ("sms", contact.sms_consent, store.sms_list, row.dd_sms_status, row.dd_sms_status_at),
        ):
            withheld += guard_channel(
                mapped, channel=channel, consent=consent, state=ChannelState(status, since),
                list_id=store.lists.get(list_key) if list_key else None, resubscribe_mode=store.resubscribe,
            )
        # resubscribeOptions are instructions, not state: never delta'd, sent with the status they qualify
        volatile = {p: mapped.pop(p) for p in [p for p in mapped if ".resubscribeOptions." in p]}

        delta = compute_delta(mapped, stored, contact.source)
        result = SyncResult(
            contact_id=row.id, dotdigital_contact_id=row.dotdigital_contact_id, created=created,
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
            message_ids["upsert"] = outbox.enqueue(
                session, contact_id=row.id, account=account, kind=CONTACT_UPSERT,
                payload={"body": build_contact_body(upsert_fields), "trace": current_trace_carrier()},
                ref=ref, now=now, priority=priority,
            )
            enqueued_counter.add(1, {"kind": CONTACT_UPSERT, "store": contact.store_key})
        if leave_lists:
            message_ids["leave"] = outbox.enqueue(
                session, contact_id=row.id, account=account, kind=outbox.CONTACT_REMOVE_FROM_LISTS,
                payload={"list_ids": leave_lists}, ref=ref, now=now, priority=priority,
            )
            enqueued_counter.add(1, {"kind": outbox.CONTACT_REMOVE_FROM_LISTS, "store": contact.store_key})
        for path, value in delta.changed.items():
            carrier = message_ids["leave"] if path.startswith("lists.") and value is False else message_ids["upsert"]
            session.merge(
                FieldState(
                    contact_id=row.id, field=path, value=value, source_ref=source.ref,
                    source_version=source.version, source_ts=source.modified_at, message_id=carrier,
                    updated_at=now,
                )
            )
        result.changed = True
        result.outbox_message_ids.extend(message_ids.values())
        return result


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
    """Write a rejected-record log entry (no personal data: field names and reasons only)."""
    with Session(engine) as session, session.begin():
        rec = RejectedRecord(
            operation=operation, store_key=store_key, record_type=record_type, record_id=record_id,
            record_version=record_version, reason=reason, violations=violations, created_at=utcnow(),
        )
        session.add(rec)
        session.flush()
        assert rec.id is not None
        rid = rec.id
    log.warning("rejected %s for store %s (%s/%s v%s): %s", operation, store_key, record_type, record_id,
                record_version, reason)
    return rid
