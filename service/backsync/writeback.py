"""Back-sync, two-way: what a contact changed in Dotdigital (a preference centre, a list, the profile) is written
to commercetools (commercetools HTTP API docs: Customer update actions, Custom Fields, CustomObjects).

The reader of Dotdigital's changes (the Events API export subscription, ``ctdd.backsync.events_feed``) hands
``ContactChange``\\ s (``ctdd.domain.dotdigital_changes``) to :func:`apply_changes`. Per change of a contact
ctdd-sync knows (by Dotdigital contact id, else email, else mobile number, within the account; unknown
contacts are counted and skipped), and per store of its account with a commercetools client:

- **preferences**: ``[stores.<key>.writeback] preferences`` maps a preference key (whose Dotdigital id
  ``[stores.<key>.preferences]`` gives) to a customer custom field, and to the key of that name in the guest's
  CustomObject ``<guest_container>/<sha256(email)>``; an opt-in is ``true`` (``"optedIn"`` for a String/Enum
  field), an opt-out ``false`` (``"optedOut"``);
- **lists**: ``lists`` maps a list key to a field in the same way: a member is opted in;
- **profile**: ``profile`` maps a Dotdigital data field to a customer field (``firstName`` ... through
  ``setFirstName`` ..., ``custom.<field>`` through ``setCustomField``); guests have no profile to write;
- **unsubscribes** take the opt-out path of the polling feeds (``BackSync.handle_opt_out``), so both feeds
  treat an opt-out alike.

Rules (``ctdd.domain.writeback_rules``):

1. **A newer commercetools change wins.** A field is skipped when ctdd-sync holds a newer value of it (its
   ``field_state`` time, the ``lastModifiedAt`` commercetools sent it with, is later than the change), or when
   commercetools was modified after the change (``lastModifiedAt``) and the field there is not what ctdd-sync
   last knew of it. The back-sync's own writes are no shop change: each write is remembered (``writeback_write``:
   the version commercetools answered it with, and the resource's last modification before it), and while the
   resource is still at that version its ``lastModifiedAt`` is replaced by that earlier one
   (``writeback_rules.shop_modified_at``). So a submission that changes a name and a preference writes both,
   while a shop write made in between moves the version on and still wins.
2. **Idempotent.** A field commercetools already holds is not written; a change older than one applied
   before is skipped by rule 1. Applying the same changes again (the reader re-reads after a crash) writes
   nothing more.
3. **No echo.** Before writing, the new value is remembered in ``field_state`` as the shop would send it
   (``preferences.<id>``, ``lists.<id>``, ``dataFields.<NAME>``: what Dotdigital now holds), stamped with the
   change's time. When commercetools notifies the write, TrackEvent maps the customer to exactly that and sends
   nothing back to Dotdigital. (A data field the store's ``data_fields`` fill from another written field, such
   as ``custom.<preference field>``, is not what Dotdigital holds: it is sent like any shop change.)

Writes are read-modify-write (409 -> re-read, ``update_with_retry``). A failure worth retrying (commercetools
unreachable, 5xx, 429) raises :class:`WritebackRetryable`: the reader keeps its checkpoint and applies the
changes again. Logs carry counts, customer ids and field names, never email addresses or phone numbers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.backsync.feeds import BackSync, OptOut, PollResult, Retryable, _was_customer, find_contact
from ctdd.commercetools.client import custom_object_key_for_email
from ctdd.commercetools.errors import CommercetoolsConflict, CommercetoolsError
from ctdd.config import Settings, StoreConfig
from ctdd.db.engine import utcnow
from ctdd.db.models import Contact, ContactIdentifier, FieldState, WritebackWrite
from ctdd.db.transactions import run_in_transaction
from ctdd.domain.commerce import parse_ts
from ctdd.domain.dotdigital_changes import LISTS, PREFERENCES, PROFILE, UNSUBSCRIBE, ContactChange
from ctdd.domain.identity import InvalidIdentifier, normalise_email, normalise_mobile
from ctdd.domain.writeback_rules import (
    NEWER, UNCHANGED, WRITE, decide, flag_of, flag_value, is_newer_known, profile_value, shop_modified_at,
)

log = logging.getLogger(__name__)

#: the feed name an unsubscribe of the events feed carries on the opt-out path
EVENTS_FEED = "events"
#: ``writeback_write.resource_type`` of a customer and of a guest's CustomObject
CUSTOMER, GUEST_OBJECT = "customer", "key-value-document"


class WritebackRetryable(Exception):
    """commercetools failed in a way worth retrying: apply the changes again later (keep the checkpoint).
    ``report`` counts what was done before the failure."""

    def __init__(self, message: str, report: WritebackReport):
        super().__init__(message)
        self.report = report


@dataclass
class WritebackReport:
    """What one :func:`apply_changes` did (counts only: no personal data)."""

    changes: int = 0
    unknown_contact: int = 0
    #: customer updates and guest CustomObject writes sent
    customers_written: int = 0
    guests_written: int = 0
    #: fields set by them
    fields_written: int = 0
    #: fields commercetools already held
    unchanged: int = 0
    #: fields skipped because commercetools (or a later change) is newer
    skipped_newer: int = 0
    #: preferences, lists and data fields of changes that no store maps in ``[stores.<key>.writeback]``
    not_mapped: int = 0
    #: nowhere to write: a deleted customer, a guest without email, a project without API client, a guest's profile
    no_target: int = 0
    failed: int = 0
    #: the unsubscribes, as the opt-out path counted them
    opt_outs: PollResult | None = None

    def summary(self) -> str:
        parts = [f"{self.changes} change(s)", f"{self.customers_written} customer(s) and {self.guests_written} guest "
                 f"object(s) written ({self.fields_written} field(s))", f"{self.unchanged} unchanged",
                 f"{self.skipped_newer} skipped (commercetools newer)", f"{self.unknown_contact} unknown",
                 f"{self.not_mapped} not mapped", f"{self.no_target} with nowhere to write", f"{self.failed} failed"]
        if self.opt_outs is not None and self.opt_outs.opt_outs:
            o = self.opt_outs
            parts.append(f"unsubscribes: {o.customers_written + o.guests_written} written, {o.unchanged} unchanged, "
                         f"{o.skipped_shop_newer} shop newer, {o.unknown_contact} unknown")
        return ", ".join(parts)


@dataclass(frozen=True)
class Target:
    """One field to write: ``path`` is its ``field_state`` path, ``value`` the value in the terms remembered there
    (a flag as True/False, a profile field as the customer field holds it)."""

    path: str
    #: the customer custom field / guest object key (flags), or the customer field (``firstName``, ``custom.x``)
    field: str
    value: Any
    flag: bool


@dataclass
class Remembered:
    """A ``field_state`` row as it was before the change."""

    exists: bool = False
    value: Any = None
    at: datetime | None = None


@dataclass
class Found:
    """What the database step found for one change."""

    contact_id: int | None = None
    customer_keys: list[str] = field(default_factory=list)
    email: str | None = None
    was_customer: bool = False
    remembered: dict[str, Remembered] = field(default_factory=dict)


# -- change -> targets (per store; pure) -------------------------------------------------------------

def targets_for(store: StoreConfig, change: ContactChange) -> tuple[list[Target], set[tuple[str, Any]]]:
    """The fields ``store`` maps for ``change``, and the entries it maps (``(kind, id or name)``)."""
    wb = store.writeback
    out: list[Target] = []
    mapped: set[tuple[str, Any]] = set()
    if change.kind == PREFERENCES:
        keys = {pref_id: key for key, pref_id in store.preferences.items()}
        for pref_id, opted_in in change.preferences.items():
            name = wb.preferences.get(keys.get(pref_id, ""))
            if name:
                mapped.add((PREFERENCES, pref_id))
                out.append(Target(f"preferences.{pref_id}", name, bool(opted_in), True))
    elif change.kind == LISTS:
        keys = {list_id: key for key, list_id in store.lists.items()}
        for list_id, member in change.lists.items():
            name = wb.lists.get(keys.get(list_id, ""))
            if name:
                mapped.add((LISTS, list_id))
                out.append(Target(f"lists.{list_id}", name, bool(member), True))
    elif change.kind == PROFILE:
        for data_field, value in change.data_fields.items():
            target = wb.profile.get(data_field)
            if target:
                mapped.add((PROFILE, data_field))
                out.append(Target(f"dataFields.{data_field}", target, profile_value(target, value), False))
    return out, mapped


def _entries(change: ContactChange) -> set[tuple[str, Any]]:
    if change.kind == PREFERENCES:
        return {(PREFERENCES, k) for k in change.preferences}
    if change.kind == LISTS:
        return {(LISTS, k) for k in change.lists}
    if change.kind == PROFILE:
        return {(PROFILE, k) for k in change.data_fields}
    return set()


def _merge(targets: Iterable[Target]) -> list[Target]:
    """One target per commercetools field (several stores of one project may map the same)."""
    seen: dict[str, Target] = {}
    for target in targets:
        seen.setdefault(target.field, target)
    return list(seen.values())


# -- the database side (runs in a worker thread) ----------------------------------------------------

def _identifiers(change: ContactChange) -> tuple[str | None, str | None]:
    email = mobile = None
    try:
        email = normalise_email(change.email) if change.email else None
    except InvalidIdentifier:
        pass
    try:
        mobile = normalise_mobile("+" + str(change.mobile_number).lstrip("+")) if change.mobile_number else None
    except InvalidIdentifier:
        pass
    return email, mobile


def remember_change(session: Session, contact_id: int, path: str, value: Any, at: datetime) -> None:
    """Remember ``value`` as the state of ``path``, stamped with the change's time ``at`` (no source record: a
    commercetools notification of a customer version older than the change is stale, a newer one is not)."""
    state = session.get(FieldState, (contact_id, path))
    now = utcnow()
    if state is None:
        session.add(FieldState(contact_id=contact_id, field=path, value=value, source_ts=at, updated_at=now))
        return
    state.value, state.source_ref, state.source_version, state.source_ts = value, None, None, at
    state.message_id, state.updated_at = None, now


def record_change(session: Session, settings: Settings, change: ContactChange, targets: list[Target]) -> Found:
    """Find the contact, snapshot what ctdd-sync remembers of the targets' fields and remember the change (inside
    the caller's transaction; before commercetools is written, so its notification finds it)."""
    email, mobile = _identifiers(change)
    found_contact = find_contact(session, change.account, dotdigital_contact_id=change.dotdigital_contact_id,
                                 email=email, mobile=mobile)
    if found_contact is None:
        return Found()
    contact = session.execute(sa.select(Contact).where(Contact.id == found_contact.id).with_for_update()).scalar_one()
    if contact.dotdigital_contact_id is None and change.dotdigital_contact_id is not None:
        contact.dotdigital_contact_id = change.dotdigital_contact_id
    found = Found(contact_id=contact.id, email=contact.email)
    occurred = _aware(change.occurred_at)
    for target in targets:
        if target.path not in found.remembered:
            state = session.get(FieldState, (contact.id, target.path))
            found.remembered[target.path] = (Remembered(True, state.value, _aware(state.source_ts))
                                             if state is not None else Remembered())
        if not is_newer_known(found.remembered[target.path].at, occurred):
            remember_change(session, contact.id, target.path, target.value, occurred)
    found.customer_keys = list(session.execute(sa.select(ContactIdentifier.value).where(
        ContactIdentifier.contact_id == contact.id, ContactIdentifier.account == change.account,
        ContactIdentifier.kind == "customer_id",
    ).order_by(ContactIdentifier.id)).scalars())
    if not found.customer_keys:
        found.was_customer = _was_customer(session, settings, change.account, contact.id)
    return found


@dataclass(frozen=True)
class OwnWrite:
    """The back-sync's last write of a commercetools resource (a ``writeback_write`` row)."""

    version: int | None = None
    shop_modified_at: datetime | None = None

    def shop_modified(self, resource: Mapping[str, Any]) -> datetime | None:
        """``resource``'s last modification by anyone but the back-sync."""
        raw = resource.get("lastModifiedAt")
        modified = parse_ts(raw) if isinstance(raw, str) else None
        return shop_modified_at(modified, resource.get("version"), self.version, self.shop_modified_at)


def own_write(session: Session, project: str, resource_type: str, resource_id: str) -> OwnWrite:
    row = session.get(WritebackWrite, (project, resource_type, resource_id))
    return OwnWrite() if row is None else OwnWrite(row.version, _aware(row.shop_modified_at))


def remember_write(session: Session, project: str, resource_type: str, resource_id: str, version: Any,
                   shop_modified: datetime | None) -> None:
    """Remember that commercetools answered the back-sync's write with ``version`` (``None``: the resource is
    gone, forget it), ``shop_modified`` being the last modification by anyone else before that write."""
    row = session.get(WritebackWrite, (project, resource_type, resource_id))
    if not isinstance(version, int) or isinstance(version, bool):
        if row is not None:
            session.delete(row)
        return
    if row is None:
        session.add(WritebackWrite(project_key=project, resource_type=resource_type, resource_id=resource_id,
                                   version=version, shop_modified_at=shop_modified, updated_at=utcnow()))
        return
    row.version, row.shop_modified_at, row.updated_at = version, shop_modified, utcnow()


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# -- applying -------------------------------------------------------------------------------------

async def apply_changes(engine: Engine, settings: Settings, commercetools_clients,
                        changes: list[ContactChange]) -> WritebackReport:
    """Write ``changes`` (in order) to commercetools; see the module docstring for the rules.

    ``commercetools_clients`` is ``ctdd.commercetools.clients.CommercetoolsClients`` (the back-sync's, or the
    ingest side's). Raises :class:`WritebackRetryable` when commercetools failed in a way worth retrying: the
    caller applies the same changes again later (what was written is not written twice)."""
    writer = _Writer(engine, settings, commercetools_clients)
    report = WritebackReport(changes=len(changes))
    for change in changes:
        try:
            await writer.apply(change, report)
        except Retryable as exc:
            log.warning("write-back stopped, to be retried: %s", exc)
            raise WritebackRetryable(str(exc), report) from exc
    if changes:
        log.info("write-back: %s", report.summary())
    return report


class _Writer:
    def __init__(self, engine: Engine, settings: Settings, ct):
        self.engine = engine
        self.settings = settings
        self.ct = ct
        self.opt_outs = BackSync(engine, settings, None, ct)

    def stores(self, account: str, project: str | None = None) -> list[StoreConfig]:
        return [s for s in self.settings.stores.values() if s.account == account and s.commercetools
                and (project is None or s.commercetools_project == project)]

    async def apply(self, change: ContactChange, report: WritebackReport) -> None:
        if change.kind == UNSUBSCRIBE:
            await self._unsubscribe(change, report)
            return
        per_store = {s.key: targets_for(s, change) for s in self.stores(change.account)}
        mapped = set().union(*(m for _, m in per_store.values())) if per_store else set()
        report.not_mapped += len(_entries(change) - mapped)
        all_targets = _merge(t for targets, _ in per_store.values() for t in targets)
        if not all_targets:
            return
        found: Found = await asyncio.to_thread(
            run_in_transaction, self.engine, lambda s: record_change(s, self.settings, change, all_targets))
        if found.contact_id is None:
            report.unknown_contact += 1
            return
        if found.customer_keys:
            for key in found.customer_keys:
                project, _, customer_id = key.partition("/")
                stores = self.stores(change.account, project)
                if not stores:
                    log.warning("write-back: no store of account %s has a commercetools client for project %s; "
                                "customer %s not written", change.account, project, customer_id)
                    report.no_target += 1
                    continue
                targets = _merge(t for s in stores for t in per_store[s.key][0])
                if not targets:  # the stores of this project map none of the change
                    continue
                await self._write_customer(stores[0], customer_id, change, targets, found, report)
            return
        if found.was_customer or not found.email:
            report.no_target += 1  # an erased customer's address does not come back as a guest
            return
        await self._write_guests(change, per_store, found, report)

    async def _unsubscribe(self, change: ContactChange, report: WritebackReport) -> None:
        email, mobile = _identifiers(change)
        channel = change.channel if change.channel in ("email", "sms") else "email"
        opt_out = OptOut(channel, "unsubscribed", _aware(change.occurred_at), EVENTS_FEED,
                         dotdigital_contact_id=change.dotdigital_contact_id, email=email, mobile=mobile)
        if report.opt_outs is None:
            report.opt_outs = PollResult(change.account)
        report.opt_outs.opt_outs += 1
        await self.opt_outs.handle_opt_out(change.account, opt_out, report.opt_outs)

    # -- the back-sync's own writes (``writeback_write``) ------------------------------------------
    async def _own_write(self, project: str, resource_type: str, resource_id: str) -> OwnWrite:
        return await asyncio.to_thread(
            run_in_transaction, self.engine, lambda s: own_write(s, project, resource_type, resource_id))

    async def _remember_write(self, project: str, resource_type: str, resource_id: str, version: Any,
                              shop_modified: datetime | None) -> None:
        await asyncio.to_thread(run_in_transaction, self.engine, lambda s: remember_write(
            s, project, resource_type, resource_id, version, shop_modified))

    # -- commercetools --------------------------------------------------------------------------
    async def _write_customer(self, store: StoreConfig, customer_id: str, change: ContactChange,
                              targets: list[Target], found: Found, report: WritebackReport) -> None:
        client = self.ct.get(store)
        occurred = _aware(change.occurred_at)
        decided: dict[str, str] = {}
        project = store.commercetools_project
        own = await self._own_write(project, CUSTOMER, customer_id)
        shop_modified: list[datetime | None] = [None]

        async def make_actions(customer: dict) -> list[dict]:
            decided.clear()
            fields = (customer.get("custom") or {}).get("fields") or {}
            types = await self.opt_outs.field_types_of(client, customer) if any(t.flag for t in targets) else {}
            modified = shop_modified[0] = own.shop_modified(customer)
            actions = []
            for target in targets:
                if target.flag:
                    raw = fields.get(target.field)
                    current = flag_of(raw)
                else:
                    raw = current = (fields.get(target.field[len("custom."):]) if target.field.startswith("custom.")
                                     else customer.get(target.field))
                before = found.remembered.get(target.path) or Remembered()
                outcome = decide(current=current, target=target.value, occurred_at=occurred, modified_at=modified,
                                 remembered=before.exists, remembered_value=before.value, remembered_at=before.at,
                                 absent_is_decision=not target.flag)
                decided[target.field] = outcome
                if outcome != WRITE:
                    continue
                if target.flag:
                    value = flag_value(target.value, raw, types.get(target.field))
                    actions.append({"action": "setCustomField", "name": target.field, "value": value})
                elif target.field.startswith("custom."):
                    action = {"action": "setCustomField", "name": target.field[len("custom."):]}
                    actions.append(action if target.value is None else {**action, "value": target.value})
                else:
                    action = {"action": "set" + target.field[0].upper() + target.field[1:]}
                    actions.append(action if target.value is None else {**action, target.field: target.value})
            return actions

        try:
            updated = await client.update_with_retry("customers", customer_id, make_actions)
        except CommercetoolsError as exc:
            if exc.retryable:
                raise Retryable(f"commercetools customer {customer_id}: {exc.code or exc.status_code}") from exc
            log.error("write-back: commercetools refused the update of customer %s: %s %s", customer_id,
                      exc.status_code, exc.code)
            report.failed += 1
            return
        if updated is None:
            log.info("write-back: customer %s no longer exists in commercetools", customer_id)
            report.no_target += 1
            if own.version is not None:
                await self._remember_write(project, CUSTOMER, customer_id, None, None)
            return
        written = [name for name, outcome in decided.items() if outcome == WRITE]
        if written:
            await self._remember_write(project, CUSTOMER, customer_id, updated.get("version"), shop_modified[0])
        report.fields_written += len(written)
        report.unchanged += sum(1 for o in decided.values() if o == UNCHANGED)
        report.skipped_newer += sum(1 for o in decided.values() if o == NEWER)
        skipped = [name for name, outcome in decided.items() if outcome == NEWER]
        if skipped:
            log.info("write-back: customer %s changed %s in commercetools after the Dotdigital change; kept",
                     customer_id, ", ".join(sorted(skipped)))
        if written:
            report.customers_written += 1
            log.info("write-back: %s written to customer %s (version %s)", ", ".join(sorted(written)), customer_id,
                     updated.get("version"))

    async def _write_guests(self, change: ContactChange, per_store: Mapping[str, tuple[list[Target], set]],
                            found: Found, report: WritebackReport) -> None:
        assert found.email is not None
        key = custom_object_key_for_email(found.email)
        occurred = _aware(change.occurred_at)
        groups: dict[tuple[str, str], list[Target]] = {}
        if change.kind == PROFILE:
            report.no_target += 1  # a guest has no profile in commercetools
            return
        for store in self.stores(change.account):
            targets = per_store[store.key][0]
            if targets:
                groups.setdefault((store.commercetools, store.consent.guest_container), []).extend(targets)
        for (client_name, container), targets in groups.items():
            store = next(s for s in self.stores(change.account)
                         if (s.commercetools, s.consent.guest_container) == (client_name, container))
            client = self.ct.get(store)
            targets = _merge(targets)
            project, object_id = store.commercetools_project, f"{container}/{key}"
            own = await self._own_write(project, GUEST_OBJECT, object_id)
            try:
                for attempt in range(5):
                    existing = await client.get_custom_object(container, key)
                    value = dict(existing.get("value") or {}) if existing and isinstance(existing.get("value"), dict) else {}
                    modified = own.shop_modified(existing) if existing else None
                    outcomes: dict[str, str] = {}
                    changes: dict[str, Any] = {}
                    for target in targets:
                        before = found.remembered.get(target.path) or Remembered()
                        outcome = decide(current=flag_of(value.get(target.field)), target=target.value,
                                         occurred_at=occurred, modified_at=modified, remembered=before.exists,
                                         remembered_value=before.value, remembered_at=before.at,
                                         absent_is_decision=False)
                        outcomes[target.field] = outcome
                        if outcome == WRITE:
                            changes[target.field] = flag_value(target.value, value.get(target.field), None)
                    if changes:
                        value.update(changes)
                        value.update({"email": found.email, "source": "dotdigital"})
                        try:
                            written = await client.upsert_custom_object(
                                container, key, value, version=existing["version"] if existing else None)
                        except CommercetoolsConflict:
                            if attempt == 4:
                                raise
                            continue
                        await self._remember_write(project, GUEST_OBJECT, object_id, written.get("version"), modified)
                        report.guests_written += 1
                        log.info("write-back: %s written to guest object %s/%s", ", ".join(sorted(changes)),
                                 container, key[:12])
                    report.fields_written += len(changes)
                    report.unchanged += sum(1 for o in outcomes.values() if o == UNCHANGED)
                    report.skipped_newer += sum(1 for o in outcomes.values() if o == NEWER)
                    break
            except CommercetoolsError as exc:
                if exc.retryable:
                    raise Retryable(f"commercetools custom object: {exc.code or exc.status_code}") from exc
                log.error("write-back: commercetools refused guest object %s/%s: %s %s", container, key[:12],
                          exc.status_code, exc.code)
                report.failed += 1
