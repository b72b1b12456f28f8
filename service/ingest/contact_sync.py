"""The SyncContact core: map, resolve identity, compute the delta and enqueue, in one transaction.

Plugins (mapping, enrichment, suppression) run before the transaction; everything that reads or writes
the database happens in one transaction, so an accepted update is either wholly committed (contact,
identifiers, field state, outbox message) or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.delivery import outbox
from ctdd.config import Settings, StoreConfig
from ctdd.db.engine import utcnow
from ctdd.redaction import mask_emails, redact_text, redact_value
from ctdd.db.models import Contact, ContactIdentifier, FieldState, IdentityConflictRecord, RejectedRecord
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

        def unit(session: Session) -> SyncResult:
            return self.apply(session, contact, dict(mapped), list(suppression))

        return unit

    def known_customer(self, session: Session, store_key: str, customer_id: str) -> int | None:
        """The contact a commercetools customer id resolves to, if any (read only)."""
        store = self.settings.stores[store_key]
        session.flush()  # what the ORM query this replaces would have autoflushed
        row = session.connection().execute(
            _owners_statement(("customer_id",)),
            {"account": store.account, "v_customer_id": customer_key(store.commercetools_project, customer_id)},
        ).first()
        return None if row is None else row.contact_id

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
        *, priority: int = outbox.PRIORITY_LIVE, clear_own: Collection[str] = (),
    ) -> SyncResult:
        """Resolve identity, compute the delta and enqueue, inside the caller's transaction.

        ``clear_own``: Dotdigital field paths the source no longer has (a commercetools customer is a full
        snapshot: a removed ``companyName`` is absent from it). Each is cleared (set to ``None``) only when its
        current value came from this same source record (``field_state.source_ref``); a value another source
        set (SyncContact from elsewhere, a store default) stays as it is.

        Hot path: every statement is a prepared Core statement (compiled once, no ORM unit of work);
        ORM objects the caller has pending are flushed first, as the ORM's autoflush used to do.
        """
        now = utcnow()
        store = self.settings.stores[contact.store_key]
        account = store.account
        requested = self._requested_identifiers(contact)
        session.flush()
        conn = session.connection()
        owners: dict[str, int | None] = dict.fromkeys(requested)
        if requested:
            params: dict[str, Any] = {"account": account}
            for kind, value in requested.items():
                params[f"v_{kind}"] = value
            for kind, owner in conn.execute(_owners_statement(tuple(requested)), params):
                owners[kind] = owner
        resolution = resolve(requested, owners)

        created = resolution.contact_id is None
        defaults = _store_defaults(store, mapped)
        if created:
            if not (contact.identity.email or contact.identity.mobile_number):
                raise NewContactNeedsAddress()
            # A new contact: nobody can have conflicting identifiers or stored fields, so every requested
            # identifier is attached and the row is written once, with its final values.
            row = dict(_NEW_CONTACT)
            if "email" in requested:
                row["email"] = requested["email"]
            if "mobile_number" in requested:
                row["mobile_number"] = requested["mobile_number"]
            _decide_shop_consent(row, contact, now)
            contact_id = conn.execute(
                _INSERT_CONTACT, {**row, "account": account, "created_at": now, "updated_at": now}
            ).scalar_one()
            stored: dict[str, StoredField] = {}
        else:
            # Row lock: serialises concurrent updates of this contact on PostgreSQL.
            row = dict(conn.execute(_LOCK_CONTACT, {"contact_id": resolution.contact_id}).one()._mapping)
            contact_id = row["id"]
            state_before = {name: row[name] for name in _CONTACT_STATE}
            wanted = set(mapped)
            wanted.update(IDENTIFIER_FIELDS.values())
            wanted.update(defaults)
            wanted.update(clear_own)
            stored = {
                r[0]: StoredField(r[1], r[2], r[3], r[4])
                for r in conn.execute(_SELECT_FIELDS, {"contact_id": contact_id, "fields": sorted(wanted)})
            }
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
                conn.execute(_DELETE_IDENTIFIERS, {"contact_id": contact_id, "kind": kind})
            new_identifiers.append(
                {"account": account, "kind": kind, "value": value, "contact_id": contact_id, "created_at": now}
            )
        if new_identifiers:
            # a lost uniqueness race raises IntegrityError here: the caller retries the unit
            conn.execute(_INSERT_IDENTIFIER, new_identifiers)
        if resolution.conflicts:
            conn.execute(_INSERT_CONFLICT, [
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
            state = {name: row[name] for name in _CONTACT_STATE}
            if state != state_before:  # most updates (a page view, a cart) change none of it
                conn.execute(_UPDATE_CONTACT, {**state, "contact_id": contact_id, "now": now})

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
            message_ids["upsert"] = outbox.enqueue(
                session, contact_id=contact_id, account=account, kind=CONTACT_UPSERT,
                payload={"body": build_contact_body(upsert_fields), "trace": current_trace_carrier()},
                ref=ref, now=now, priority=priority,
            )
            enqueued_counter.add(1, {"kind": CONTACT_UPSERT, "store": contact.store_key})
        if leave_lists:
            message_ids["leave"] = outbox.enqueue(
                session, contact_id=contact_id, account=account, kind=outbox.CONTACT_REMOVE_FROM_LISTS,
                payload={"list_ids": leave_lists}, ref=ref, now=now, priority=priority,
            )
            enqueued_counter.add(1, {"kind": outbox.CONTACT_REMOVE_FROM_LISTS, "store": contact.store_key})
        # Field state: whether each row exists is known from ``stored`` (the contact row lock keeps it so),
        # so write it directly instead of merge's SELECT-then-write per field.
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for path, value in delta.changed.items():
            carrier = message_ids["leave"] if path.startswith("lists.") and value is False else message_ids["upsert"]
            values = {"contact_id": contact_id, "field": path, "value": value, "source_ref": source.ref,
                      "source_version": source.version, "source_ts": source.modified_at, "message_id": carrier,
                      "updated_at": now}
            (updates if path in stored else inserts).append(values)
        if updates:
            conn.execute(UPDATE_FIELD_STATE, [{f"b_{k}": v for k, v in u.items()} for u in updates])
        if inserts:
            conn.execute(INSERT_FIELD_STATE, inserts)
        result.changed = True
        result.outbox_message_ids.extend(message_ids.values())
        return result


# -- prepared statements of the hot path ---------------------------------------------------------------
_CI = ContactIdentifier.__table__
_CT = Contact.__table__
_FS = FieldState.__table__
_ICR = IdentityConflictRecord.__table__

#: contact columns apply reads (``id`` and ``dotdigital_contact_id``) and may change (the rest)
_CONTACT_STATE = ("email", "mobile_number", "shop_email_consent", "shop_email_consent_at", "shop_sms_consent",
                  "shop_sms_consent_at")
_CONTACT_READ = ("id", "dotdigital_contact_id", "dd_email_status", "dd_email_status_at", "dd_sms_status",
                 "dd_sms_status_at", *_CONTACT_STATE)
_NEW_CONTACT: dict[str, Any] = {**dict.fromkeys(_CONTACT_READ), "next_sequence": 1}
del _NEW_CONTACT["id"]

_LOCK_CONTACT = (
    sa.select(*(_CT.c[name] for name in _CONTACT_READ))
    .where(_CT.c.id == sa.bindparam("contact_id"))
    .with_for_update()
)
_INSERT_CONTACT = sa.insert(_CT).returning(_CT.c.id)
_UPDATE_CONTACT = (
    sa.update(_CT)
    .where(_CT.c.id == sa.bindparam("contact_id"))
    .values(updated_at=sa.bindparam("now", type_=_CT.c.updated_at.type),
            **{name: sa.bindparam(name, type_=_CT.c[name].type) for name in _CONTACT_STATE})
)
_SELECT_FIELDS = sa.select(_FS.c.field, _FS.c.value, _FS.c.source_ref, _FS.c.source_version, _FS.c.source_ts).where(
    _FS.c.contact_id == sa.bindparam("contact_id"), _FS.c.field.in_(sa.bindparam("fields", expanding=True))
)
_FIELD_COLUMNS = ("value", "source_ref", "source_version", "source_ts", "message_id", "updated_at")
#: shared with ctdd.ingest.events (insight records keep their field state the same way); parameters ``b_<column>``
UPDATE_FIELD_STATE = (
    sa.update(_FS)
    .where(_FS.c.contact_id == sa.bindparam("b_contact_id"), _FS.c.field == sa.bindparam("b_field"))
    .values(**{name: sa.bindparam(f"b_{name}", type_=_FS.c[name].type) for name in _FIELD_COLUMNS})
)
INSERT_FIELD_STATE = sa.insert(_FS)
_DELETE_IDENTIFIERS = sa.delete(_CI).where(_CI.c.contact_id == sa.bindparam("contact_id"),
                                           _CI.c.kind == sa.bindparam("kind"))
_INSERT_IDENTIFIER = sa.insert(_CI)
_INSERT_CONFLICT = sa.insert(_ICR)
_OWNERS: dict[tuple[str, ...], sa.Executable] = {}


def _owners_statement(kinds: tuple[str, ...]):
    """(kind, contact_id) of the owners of the requested identifiers: one index lookup per kind, one round trip."""
    stmt = _OWNERS.get(kinds)
    if stmt is None:
        selects = [
            sa.select(_CI.c.kind, _CI.c.contact_id).where(
                _CI.c.account == sa.bindparam("account"), _CI.c.kind == kind,
                _CI.c.value == sa.bindparam(f"v_{kind}"),
            )
            for kind in kinds
        ]
        stmt = selects[0] if len(selects) == 1 else sa.union_all(*selects)
        _OWNERS[kinds] = stmt
    return stmt


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
