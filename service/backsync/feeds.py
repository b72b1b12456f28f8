"""Back-sync: opt-outs made in Dotdigital reach commercetools (Dotdigital API docs: contact suppression and
unsubscribe feeds; commercetools HTTP API docs: Custom Fields and CustomObjects).

Per Dotdigital account, on a schedule (``[backsync]``), ctdd-sync polls three feeds from a cursor kept in
the ``backsync_cursor`` table:

- ``GET /v2/contacts/suppressed-since/{date}``: every email suppression (unsubscribes, bounces,
  complaints ...), with ``dateRemoved``;
- ``GET /v2/contacts/unsubscribed-since/{date}``: the unsubscribes (a subset; polled as well, as the
  Magento connector does);
- ``GET /contacts/v3?~modified=gte::<ts>&include=channelProperties``: contacts changed in Dotdigital, for
  the SMS channel's opt-outs, which the v2 feeds do not carry.

Each poll asks from the stored cursor minus ``overlap_seconds`` and, once every page was handled, stores
the time the poll started as the new cursor. Entries seen twice (the overlap) are harmless: every step
below is idempotent.

For each opt-out of a contact ctdd-sync knows (by ``dotdigital_contact_id``, else its email, else its
mobile number, within the account):

1. **Shop decided later: skipped.** If the shop's newest decision for the channel is an opt-in made after
   the Dotdigital removal (``contact.shop_<channel>_consent_at > dateRemoved``), commercetools is left
   alone, as the Magento connector does. The same holds when commercetools itself says opted in
   with a newer ``updated_at_field``.
2. **Recorded** on the contact (``consent_state.apply_channel_statuses``) and in the remembered field
   state: the channel status, and the store's ``email_list`` / ``sms_list`` membership, are remembered as
   the opt-out a shop would send. So when commercetools notifies the change the back-sync makes, the
   customer maps to exactly what is remembered and TrackEvent sends nothing (no echo).
3. **Written to commercetools**:
   - registered customers (``customer_id`` identifiers ``<project>/<customerId>``): ``setCustomField`` on
     the store's consent fields (``false`` for a Boolean field, ``"optedOut"`` for a String/Enum one;
     ``updated_at_field`` = ``dateRemoved``), read-modify-write with ``update_with_retry`` (409 -> re-read);
   - guests and newsletter-only contacts: the CustomObject ``<guest_container>/<sha256(email)>`` with
     ``{email, emailOptIn, smsOptIn?, updatedAt, source: "dotdigital"}``.
   Nothing is written when commercetools already says opted out - in particular for opt-outs the shop
   made itself and ctdd-sync sent to Dotdigital, which come back through the feeds (no loop).
   The consent fields share one ``updated_at_field``: when the back-sync moves it forward, a stale opt-in
   on the other channel (older than that channel's Dotdigital opt-out) is written as opted out too, so
   the newer time cannot make it look like a fresh decision.

Several processes on one database poll an account in turn: a poll leases the account's cursor row
(``lease_seconds``, renewed while a long poll runs; a crashed poller's lease lapses after that time).
Logs carry counts and customer ids, never email addresses or phone numbers.

Where the events feed (``ctdd.backsync.events_feed``) reads an account, ``BackSync.events_feed`` is set and a
scheduled poll of that account runs only when the feed says so (``EventsFeed.due_for_poll``: every
``reconcile_interval_seconds``, or at once after the feed may have missed events).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.background import finish_or_cancel
from ctdd.commercetools.client import custom_object_key_for_email
from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.commercetools.errors import CommercetoolsConflict, CommercetoolsError
from ctdd.config import ConsentFieldsConfig, Settings, StoreConfig
from ctdd.db.consent_state import apply_channel_statuses
from ctdd.db.engine import utcnow
from ctdd.db.models import BacksyncCursor, Contact, ContactIdentifier, FieldState, ResourceState
from ctdd.domain.commerce import consent_value, parse_ts
from ctdd.domain.consent import normalise_status
from ctdd.domain.identity import InvalidIdentifier, normalise_email, normalise_mobile
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.db.transactions import run_in_transaction

log = logging.getLogger(__name__)

#: the feeds, as named in logs, results and the cursor table
SUPPRESSED, UNSUBSCRIBED, MODIFIED = "suppressed", "unsubscribed", "modified"
FEEDS = (SUPPRESSED, UNSUBSCRIBED, MODIFIED)
_CURSOR_COLUMNS = {SUPPRESSED: "suppressed_since", UNSUBSCRIBED: "unsubscribed_since", MODIFIED: "modified_since"}

#: Dotdigital email statuses that stop email marketing: each is an opt-out for commercetools
EMAIL_OPT_OUTS = frozenset({
    "unsubscribed", "suppressed", "softBounced", "hardBounced", "ispComplained", "directComplaint", "spamTrap",
    "blockedlocalpart", "sharedsuppression", "sharedDomainSuppression", "domainSuppressed", "knownComplainer",
    "knownLitigator", "mailBlocked", "notAllowed", "noMxRecord", "domainSuppression", "sharedSuppression",
})
#: the same for the SMS channel
SMS_OPT_OUTS = frozenset({"unsubscribed", "suppressed", "bounced"})
#: what the shop-side mapping sends for an opt-out: the value remembered so the echo is no change
REMEMBERED_OPT_OUT = "unsubscribed"
PAGE_SIZE = 1000

# outcomes of one opt-out
WRITTEN, UNCHANGED, SHOP_NEWER, UNKNOWN, FAILED, NO_TARGET = (
    "written", "unchanged", "shop_newer", "unknown_contact", "failed", "no_target")


def opt_outs_for(channel: str) -> frozenset[str]:
    return EMAIL_OPT_OUTS if channel == "email" else SMS_OPT_OUTS


@dataclass(frozen=True)
class OptOut:
    """One opt-out reported by a feed."""

    channel: str  # "email" | "sms"
    status: str  # lower-camel Dotdigital status, e.g. "unsubscribed", "hardBounced"
    removed_at: datetime
    feed: str
    dotdigital_contact_id: int | None = None
    email: str | None = None
    mobile: str | None = None  # E.164 with "+"


@dataclass
class PollResult:
    """What one poll of one account did (counts only: no personal data)."""

    account: str
    #: feed -> the time the feed was asked from
    since: dict[str, datetime] = field(default_factory=dict)
    #: False when another process held the account's lease (nothing was polled)
    polled: bool = True
    #: the cursor moved forward (every page was fetched and nothing failed in a retryable way)
    complete: bool = False
    opt_outs: int = 0
    unknown_contact: int = 0
    skipped_shop_newer: int = 0
    #: contacts whose Dotdigital status changed in ctdd-sync's records
    recorded: int = 0
    customers_written: int = 0
    guests_written: int = 0
    #: commercetools already said opted out
    unchanged: int = 0
    #: nowhere to write: a deleted customer, a contact without email, a project without API client
    no_target: int = 0
    failed: int = 0
    error: str | None = None

    def summary(self) -> str:
        if not self.polled:
            return f"account {self.account}: skipped, another process is polling it"
        parts = [f"{self.opt_outs} opt-out(s)", f"{self.customers_written} customer(s) and "
                 f"{self.guests_written} guest object(s) written", f"{self.unchanged} already opted out",
                 f"{self.skipped_shop_newer} skipped (newer shop opt-in)", f"{self.unknown_contact} unknown",
                 f"{self.recorded} status(es) recorded", f"{self.no_target} with nowhere to write",
                 f"{self.failed} failed"]
        state = "cursor advanced" if self.complete else f"cursor kept ({self.error or 'incomplete'})"
        return f"account {self.account}: " + ", ".join(parts) + f"; {state}"


# -- feeds -> opt-outs (pure) -----------------------------------------------------------------------

def opt_out_from_suppression(entry: Mapping[str, Any], feed: str) -> OptOut | None:
    """A v2 suppression ``{suppressedContact: {id, email}, dateRemoved, reason}`` -> an email OptOut."""
    contact = entry.get("suppressedContact") if isinstance(entry.get("suppressedContact"), dict) else {}
    removed = _parse_time(entry.get("dateRemoved"))
    if removed is None:
        return None
    # v2 reasons are PascalCase ApiContactStatuses (HardBounced ...); anything unexpected still suppresses
    status = normalise_status(str(entry.get("reason") or contact.get("status") or ""))
    if status not in EMAIL_OPT_OUTS:
        status = "suppressed"
    contact_id = contact.get("id")
    email = contact.get("email") if isinstance(contact.get("email"), str) else None
    try:
        email = normalise_email(email) if email else None
    except InvalidIdentifier:
        email = None
    return OptOut("email", status, removed, feed,
                  dotdigital_contact_id=contact_id if isinstance(contact_id, int) and not isinstance(contact_id, bool) else None,
                  email=email)


def opt_out_from_contact(item: Mapping[str, Any]) -> OptOut | None:
    """A v3 contact of the modified feed -> an SMS OptOut when its SMS channel is opted out."""
    sms = ((item.get("channelProperties") or {}).get("sms") or {}) if isinstance(item.get("channelProperties"), dict) else {}
    status = normalise_status(sms.get("status")) if isinstance(sms, dict) else None
    updated = _parse_time(item.get("updated"))
    if status not in SMS_OPT_OUTS or updated is None:
        return None
    identifiers = item.get("identifiers") if isinstance(item.get("identifiers"), dict) else {}
    email = mobile = None
    try:
        email = normalise_email(identifiers["email"]) if isinstance(identifiers.get("email"), str) else None
    except InvalidIdentifier:
        pass
    try:
        raw = identifiers.get("mobileNumber")
        mobile = normalise_mobile("+" + str(raw).lstrip("+")) if raw else None
    except InvalidIdentifier:
        pass
    contact_id = item.get("contactId")
    return OptOut("sms", status, updated, MODIFIED,
                  dotdigital_contact_id=contact_id if isinstance(contact_id, int) and not isinstance(contact_id, bool) else None,
                  email=email, mobile=mobile)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = parse_ts(value)
    except ValueError:
        return None
    return moment.astimezone(timezone.utc) if moment else None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- what to write to commercetools (pure) ----------------------------------------------------------

def opted_out_value(current: Any, field_type: str | None) -> Any:
    """The opted-out value of a consent field: ``False`` for a Boolean, ``"optedOut"`` for an Enum/String.
    Decided by the current value's JSON type, else by the field's Type definition."""
    if isinstance(current, bool):
        return False
    if isinstance(current, (str, dict)):
        return "optedOut"
    if field_type in ("Enum", "LocalizedEnum", "String"):
        return "optedOut"
    return False


@dataclass(frozen=True)
class ChannelState:
    """Dotdigital's status of a channel as ctdd-sync recorded it."""

    status: str | None
    since: datetime | None


def consent_updates(values: Mapping[str, Any], *, channel: str, removed_at: datetime,
                    names: Mapping[str, str], dotdigital: Mapping[str, ChannelState],
                    field_types: Mapping[str, str | None] | None = None) -> tuple[str, dict[str, Any]]:
    """Decide how an opt-out changes a consent record: ``(outcome, {field name: new value})``.

    ``values`` are the current fields (a customer's custom fields, or a guest CustomObject's value);
    ``names`` maps ``"email"``, ``"sms"`` and ``"updated_at"`` to the field names. Outcomes:
    ``UNCHANGED`` (already says opted out), ``SHOP_NEWER`` (an opt-in newer than the removal) or
    ``WRITTEN`` with the fields to set.
    """
    field_types = field_types or {}
    name = names[channel]
    current = consent_value(values.get(name)) if name in values else None
    updated_raw = values.get(names["updated_at"])
    updated = _parse_time(updated_raw) if isinstance(updated_raw, str) else None
    if current == "unsubscribed":
        return UNCHANGED, {}
    if current == "subscribed" and updated is not None and updated > removed_at:
        return SHOP_NEWER, {}
    changes: dict[str, Any] = {name: opted_out_value(values.get(name), field_types.get(name))}
    if updated is None or updated < removed_at:
        changes[names["updated_at"]] = iso(removed_at)
        # The decision time is shared: an opt-in of the other channel that Dotdigital has since revoked
        # must not look newer than that revocation once the time moves forward.
        other = "sms" if channel == "email" else "email"
        other_name = names[other]
        state = dotdigital.get(other)
        if (other_name in values and consent_value(values.get(other_name)) == "subscribed" and state is not None
                and normalise_status(state.status) in opt_outs_for(other)
                and (updated is None or state.since is None or state.since >= updated)):
            changes[other_name] = opted_out_value(values.get(other_name), field_types.get(other_name))
    return WRITTEN, changes


# -- the database side (runs in a worker thread) ------------------------------------------------------

@dataclass
class Recorded:
    """What the database step found and did for one opt-out; the commercetools step works from it."""

    outcome: str | None = None  # UNKNOWN / SHOP_NEWER when decided here, else None (go on)
    contact_id: int | None = None
    removed_at: datetime | None = None
    changed: bool = False
    customer_keys: list[str] = field(default_factory=list)
    email: str | None = None
    dotdigital: dict[str, ChannelState] = field(default_factory=dict)


def _find_contact(session: Session, account: str, opt_out: OptOut) -> Contact | None:
    return find_contact(session, account, dotdigital_contact_id=opt_out.dotdigital_contact_id, email=opt_out.email,
                        mobile=opt_out.mobile)


def find_contact(session: Session, account: str, *, dotdigital_contact_id: int | None, email: str | None,
                 mobile: str | None) -> Contact | None:
    """The contact of ``account`` a Dotdigital contact is: by its Dotdigital contact id, else its (normalised)
    email, else its E.164 mobile number."""
    if dotdigital_contact_id is not None:
        row = session.execute(sa.select(Contact).where(
            Contact.account == account, Contact.dotdigital_contact_id == dotdigital_contact_id,
        ).order_by(Contact.id).limit(1)).scalar_one_or_none()
        if row is not None:
            return row
    for kind, value in (("email", email), ("mobile_number", mobile)):
        if not value:
            continue
        contact_id = session.execute(sa.select(ContactIdentifier.contact_id).where(
            ContactIdentifier.account == account, ContactIdentifier.kind == kind, ContactIdentifier.value == value,
        )).scalar_one_or_none()
        if contact_id is not None:
            return session.get(Contact, contact_id)
    return None


def _remember(session: Session, contact_id: int, path: str, value: Any) -> None:
    """Remember ``value`` as the state of ``path``, as if it had been sent (echo prevention)."""
    state = session.get(FieldState, (contact_id, path))
    now = utcnow()
    if state is None:
        session.add(FieldState(contact_id=contact_id, field=path, value=value, updated_at=now))
    elif state.value != value:
        state.value = value
        state.updated_at = now


def record_opt_out(session: Session, settings: Settings, account: str, opt_out: OptOut) -> Recorded:
    """Find the contact and record the opt-out (inside the caller's transaction)."""
    found = _find_contact(session, account, opt_out)
    if found is None:
        return Recorded(outcome=UNKNOWN)
    contact = session.execute(sa.select(Contact).where(Contact.id == found.id).with_for_update()).scalar_one()
    channel = opt_out.channel
    removed_at = opt_out.removed_at
    if opt_out.feed == MODIFIED and normalise_status(getattr(contact, f"dd_{channel}_status")) == opt_out.status:
        # The modified feed only says "changed by then"; once recorded, the recorded time stands, so later
        # modifications of the contact do not look like new opt-outs.
        removed_at = _aware(getattr(contact, f"dd_{channel}_status_at")) or removed_at
    result = Recorded(contact_id=contact.id, removed_at=removed_at)
    if contact.dotdigital_contact_id is None and opt_out.dotdigital_contact_id is not None:
        contact.dotdigital_contact_id = opt_out.dotdigital_contact_id
    result.changed = apply_channel_statuses(session, contact, {channel: opt_out.status}, at=removed_at)
    if opt_out.feed != MODIFIED or getattr(contact, f"dd_{channel}_status_at") is None:
        # dateRemoved is the latest removal: more exact than the time an upsert response reported the
        # status, and newer than a removal recorded before an unnoticed resubscribe
        setattr(contact, f"dd_{channel}_status_at", removed_at)
    shop, shop_at = getattr(contact, f"shop_{channel}_consent"), _aware(getattr(contact, f"shop_{channel}_consent_at"))
    if shop == "subscribed" and shop_at is not None and shop_at > removed_at:
        result.outcome = SHOP_NEWER
        return result
    _remember(session, contact.id, f"channelProperties.{channel}.status", REMEMBERED_OPT_OUT)
    for store in settings.stores.values():
        list_key = store.email_list if channel == "email" else store.sms_list
        list_id = store.lists.get(list_key) if store.account == account and list_key else None
        if list_id is not None:
            _remember(session, contact.id, f"lists.{list_id}", False)
    result.customer_keys = list(session.execute(sa.select(ContactIdentifier.value).where(
        ContactIdentifier.contact_id == contact.id, ContactIdentifier.account == account,
        ContactIdentifier.kind == "customer_id",
    ).order_by(ContactIdentifier.id)).scalars())
    if not result.customer_keys and _was_customer(session, settings, account, contact.id):
        # Its commercetools customer was deleted (maybe erased): do not put the address back as a guest.
        result.outcome = NO_TARGET
        return result
    result.email = contact.email
    result.dotdigital = {ch: ChannelState(normalise_status(getattr(contact, f"dd_{ch}_status")),
                                          _aware(getattr(contact, f"dd_{ch}_status_at"))) for ch in ("email", "sms")}
    return result


def _was_customer(session: Session, settings: Settings, account: str, contact_id: int) -> bool:
    """Whether the contact belonged to a commercetools customer (one that has since been deleted)."""
    if session.execute(sa.select(ResourceState.resource_id).where(
        ResourceState.contact_id == contact_id, ResourceState.resource_type == "customer",
    ).limit(1)).first() is not None:
        return True
    paths = {f"dataFields.{s.data_fields['customer_id']}" for s in settings.stores.values()
             if s.account == account and s.data_fields.get("customer_id")}
    return bool(paths) and session.execute(sa.select(FieldState.field).where(
        FieldState.contact_id == contact_id, FieldState.field.in_(sorted(paths)),
    ).limit(1)).first() is not None


def _claim(engine: Engine, account: str, owner: str, lease_seconds: float) -> dict[str, datetime | None] | None:
    """Lease the account's cursor row; its cursors, or ``None`` when another process holds the lease."""

    def unit(session: Session) -> dict[str, datetime | None] | None:
        now = utcnow()
        row = session.get(BacksyncCursor, account, with_for_update=True)
        if row is None:
            row = BacksyncCursor(account=account, updated_at=now)
            session.add(row)
            session.flush()
        expires = _aware(row.lease_expires_at)
        if row.lease_owner not in (None, owner) and expires is not None and expires > now:
            return None
        row.lease_owner, row.lease_expires_at, row.updated_at = owner, now + timedelta(seconds=lease_seconds), now
        return {feed: _aware(getattr(row, column)) for feed, column in _CURSOR_COLUMNS.items()}

    return run_in_transaction(engine, unit)


def _release(engine: Engine, account: str, owner: str, cursor: datetime | None) -> None:
    """Give the lease back; with ``cursor``, store it as every feed's new cursor."""

    def unit(session: Session) -> None:
        row = session.get(BacksyncCursor, account, with_for_update=True)
        if row is None or row.lease_owner != owner:
            return
        now = utcnow()
        if cursor is not None:
            for column in _CURSOR_COLUMNS.values():
                setattr(row, column, cursor)
            row.last_poll_at = now
        row.lease_owner, row.lease_expires_at, row.updated_at = None, None, now

    run_in_transaction(engine, unit)


def read_cursors(engine: Engine, account: str) -> dict[str, datetime | None]:
    """The stored cursors of ``account`` (all ``None`` before its first complete poll)."""
    with Session(engine) as session:
        row = session.get(BacksyncCursor, account)
        return {feed: _aware(getattr(row, column)) if row else None for feed, column in _CURSOR_COLUMNS.items()}


def read_last_poll(engine: Engine, account: str) -> datetime | None:
    """When the last complete poll of ``account`` ended (``None`` before the first)."""
    with Session(engine) as session:
        row = session.get(BacksyncCursor, account)
        return _aware(row.last_poll_at) if row else None


# -- the poller ------------------------------------------------------------------------------------

class _Retryable(Exception):
    """A failure worth retrying at the next poll (the cursor stays)."""


#: the public name of a retryable failure, for the other back-sync feeds (``ctdd.backsync.writeback``)
Retryable = _Retryable


class BackSync:
    """Polls the Dotdigital feeds of every account and writes the opt-outs to commercetools.

    ``clients`` is ``ctdd.delivery.dispatcher.DotdigitalClients`` (shared with the dispatcher, so the same rate
    budget paces both); commercetools clients come from ``ct_clients`` (``ctdd.ingest.events.CommercetoolsClients``),
    created here when not given.
    """

    def __init__(self, engine: Engine, settings: Settings, clients, ct_clients=None, *,
                 commercetools_factory=None, clock: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.settings = settings
        self.cfg = settings.backsync
        self.clients = clients
        self._own_ct = ct_clients is None
        self.ct = ct_clients if ct_clients is not None else CommercetoolsClients(settings, commercetools_factory)
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._field_types: dict[tuple[int, str], dict[str, str | None]] = {}
        #: ``ctdd.backsync.events_feed.EventsFeed`` when it runs: accounts it reads are polled only to reconcile
        self.events_feed = None

    # -- schedule --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="ctdd-backsync")
            log.info("back-sync every %ss for account(s) %s", self.cfg.interval_seconds,
                     ", ".join(self.accounts()) or "-")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop polling: the poll in progress may finish within ``grace`` seconds, then it is cancelled."""
        task, self._task = self._task, None
        self._stop.set()
        await finish_or_cancel(task, grace)
        if self._own_ct:
            await self.ct.aclose()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("back-sync poll failed")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.cfg.interval_seconds)
            except asyncio.TimeoutError:
                pass

    def accounts(self) -> list[str]:
        """Accounts with at least one store that has a commercetools client (nothing to write otherwise)."""
        return [a for a in self.settings.accounts
                if any(s.account == a and s.commercetools for s in self.settings.stores.values())]

    # -- one poll --------------------------------------------------------------------------------
    async def run_once(self, accounts: Iterable[str] | None = None) -> list[PollResult]:
        """Poll every account (or ``accounts``) once; one result per account."""
        results = []
        if accounts is None and self.events_feed is not None:
            now = self.clock()
            accounts = [a for a in self.accounts() if self.events_feed.due_for_poll(
                a, await asyncio.to_thread(read_last_poll, self.engine, a), now)]
        for account in (list(accounts) if accounts is not None else self.accounts()):
            result = await self.poll_account(account)
            log.info("back-sync %s", result.summary())
            results.append(result)
        return results

    async def poll_account(self, account: str) -> PollResult:
        result = PollResult(account)
        cursors = await asyncio.to_thread(_claim, self.engine, account, self.owner, self.cfg.lease_seconds)
        if cursors is None:
            result.polled = False
            return result
        new_cursor: datetime | None = None
        try:
            started = self.clock()
            overlap = timedelta(seconds=self.cfg.overlap_seconds)
            first = started - timedelta(seconds=self.cfg.initial_lookback_seconds)
            result.since = {feed: (cursors[feed] - overlap) if cursors[feed] is not None else first for feed in FEEDS}
            opt_outs = await self._fetch(account, result.since)
            result.opt_outs = len(opt_outs)
            retry = False
            renewed = time.monotonic()
            for opt_out in opt_outs:
                if time.monotonic() - renewed > self.cfg.lease_seconds / 3:  # a long poll keeps its lease
                    await asyncio.to_thread(_claim, self.engine, account, self.owner, self.cfg.lease_seconds)
                    renewed = time.monotonic()
                try:
                    await self.handle_opt_out(account, opt_out, result)
                except _Retryable as exc:
                    retry = True
                    result.failed += 1
                    result.error = str(exc)
            if not retry:
                new_cursor = started
                result.complete = True
        except _Retryable as exc:
            result.error = str(exc)
        finally:
            await asyncio.to_thread(_release, self.engine, account, self.owner, new_cursor)
        return result

    async def _fetch(self, account: str, since: Mapping[str, datetime]) -> list[OptOut]:
        """Every opt-out of the three feeds, one per (channel, contact), the latest removal winning."""
        client = self.clients.get(account)
        found: dict[tuple, OptOut] = {}

        def keep(opt_out: OptOut | None) -> None:
            if opt_out is None:
                return
            key = (opt_out.channel, opt_out.dotdigital_contact_id or opt_out.email or opt_out.mobile)
            if key[1] is None:
                return
            if key not in found or found[key].removed_at < opt_out.removed_at:
                found[key] = opt_out

        try:
            for feed, call in ((SUPPRESSED, client.suppressed_since), (UNSUBSCRIBED, client.unsubscribed_since)):
                skip = 0
                while True:
                    page = await call(since[feed], select=PAGE_SIZE, skip=skip)
                    for entry in page:
                        keep(opt_out_from_suppression(entry, feed))
                    if len(page) < PAGE_SIZE:
                        break
                    skip += PAGE_SIZE
            marker = None
            while True:
                page = await client.contacts_modified_since(since[MODIFIED], include=("channelProperties",),
                                                             limit=PAGE_SIZE, marker=marker)
                for item in page.items:
                    keep(opt_out_from_contact(item))
                if page.next_marker is None:
                    break
                marker = page.next_marker
        except DotdigitalError as exc:
            raise _Retryable(f"Dotdigital feed: {exc.code or exc.status_code or type(exc).__name__}") from exc
        return sorted(found.values(), key=lambda o: o.removed_at)

    async def handle_opt_out(self, account: str, opt_out: OptOut, result: PollResult) -> None:
        """Record one opt-out and write it to commercetools, counting in ``result`` (the same path for every
        feed: the polling feeds here, the events feed through ``ctdd.backsync.writeback``). Raises
        ``Retryable`` when commercetools failed in a way worth retrying."""
        recorded: Recorded = await asyncio.to_thread(
            run_in_transaction, self.engine, lambda s: record_opt_out(s, self.settings, account, opt_out))
        if recorded.changed:
            result.recorded += 1
        if recorded.outcome == UNKNOWN:
            result.unknown_contact += 1
            return
        if recorded.outcome == SHOP_NEWER:
            result.skipped_shop_newer += 1
            return
        if recorded.outcome == NO_TARGET:
            result.no_target += 1
            return
        assert recorded.removed_at is not None
        outcomes: list[str] = []
        if recorded.customer_keys:
            for key in recorded.customer_keys:
                outcomes.append(await self._write_customer(account, key, opt_out.channel, recorded))
        else:
            outcomes += await self._write_guest(account, opt_out.channel, recorded)
        for outcome in outcomes:
            if outcome == WRITTEN:
                if recorded.customer_keys:
                    result.customers_written += 1
                else:
                    result.guests_written += 1
            elif outcome == UNCHANGED:
                result.unchanged += 1
            elif outcome == SHOP_NEWER:
                result.skipped_shop_newer += 1
            elif outcome == FAILED:
                result.failed += 1
            elif outcome == NO_TARGET:
                result.no_target += 1

    # -- commercetools -----------------------------------------------------------------------------
    def _stores_for(self, account: str, project: str | None = None) -> list[StoreConfig]:
        """Stores of ``account`` (of ``project``) with a commercetools client, one per (client, consent config)."""
        seen, out = set(), []
        for store in self.settings.stores.values():
            if store.account != account or not store.commercetools:
                continue
            if project is not None and store.commercetools_project != project:
                continue
            key = (store.commercetools, store.consent if project is not None else store.consent.guest_container)
            if key not in seen:
                seen.add(key)
                out.append(store)
        return out

    @staticmethod
    def _names(consent: ConsentFieldsConfig, guest: bool = False) -> dict[str, str]:
        if guest:
            return {"email": "emailOptIn", "sms": "smsOptIn", "updated_at": "updatedAt"}
        return {"email": consent.email_opt_in_field, "sms": consent.sms_opt_in_field,
                "updated_at": consent.updated_at_field}

    async def field_types_of(self, client, customer: Mapping[str, Any]) -> dict[str, str | None]:
        """Field name -> type name of the customer's custom Type (cached per client and type id)."""
        type_ref = ((customer.get("custom") or {}).get("type") or {})
        type_id = type_ref.get("id") if isinstance(type_ref, dict) else None
        if not type_id:
            return {}
        key = (id(client), type_id)
        if key not in self._field_types:
            definition = await client.get("types", type_id)
            self._field_types[key] = {
                d.get("name"): (d.get("type") or {}).get("name")
                for d in (definition or {}).get("fieldDefinitions") or [] if isinstance(d, dict)
            }
        return self._field_types[key]

    async def _write_customer(self, account: str, customer_key: str, channel: str, recorded: Recorded) -> str:
        project, _, customer_id = customer_key.partition("/")
        stores = self._stores_for(account, project)
        if not stores:
            log.warning("back-sync: no store of account %s has a commercetools client for project %s; "
                        "customer %s not written", account, project, customer_id)
            return NO_TARGET
        store = stores[0]
        client = self.ct.get(store)
        names = self._names(store.consent)
        decided: dict[str, str] = {}

        async def make_actions(customer: dict) -> list[dict]:
            fields = (customer.get("custom") or {}).get("fields") or {}
            types = await self.field_types_of(client, customer)
            outcome, changes = consent_updates(fields, channel=channel, removed_at=recorded.removed_at,
                                               names=names, dotdigital=recorded.dotdigital, field_types=types)
            decided["outcome"] = outcome
            actions = []
            for name, value in changes.items():
                if name == names["updated_at"] and types.get(name) == "Date":
                    value = value[:10]
                actions.append({"action": "setCustomField", "name": name, "value": value})
            return actions

        try:
            updated = await client.update_with_retry("customers", customer_id, make_actions)
        except CommercetoolsError as exc:
            if exc.retryable:
                raise _Retryable(f"commercetools customer {customer_id}: {exc.code or exc.status_code}") from exc
            log.error("back-sync: commercetools refused the opt-out of customer %s: %s %s", customer_id,
                      exc.status_code, exc.code)
            return FAILED
        if updated is None:
            log.info("back-sync: customer %s no longer exists in commercetools", customer_id)
            return NO_TARGET
        outcome = decided.get("outcome", UNCHANGED)
        if outcome == WRITTEN:
            log.info("back-sync: %s opt-out written to customer %s (version %s)", channel, customer_id,
                     updated.get("version"))
        return outcome

    async def _write_guest(self, account: str, channel: str, recorded: Recorded) -> list[str]:
        if not recorded.email:
            return [NO_TARGET]
        outcomes = []
        key = custom_object_key_for_email(recorded.email)
        names = self._names(ConsentFieldsConfig(), guest=True)
        for store in self._stores_for(account):
            client = self.ct.get(store)
            container = store.consent.guest_container
            try:
                for attempt in range(5):
                    existing = await client.get_custom_object(container, key)
                    value = dict(existing.get("value") or {}) if existing and isinstance(existing.get("value"), dict) else {}
                    outcome, changes = consent_updates(value, channel=channel, removed_at=recorded.removed_at,
                                                       names=names, dotdigital=recorded.dotdigital)
                    if outcome != WRITTEN:
                        outcomes.append(outcome)
                        break
                    value.update(changes)
                    value.update({"email": recorded.email, "source": "dotdigital"})
                    try:
                        await client.upsert_custom_object(container, key, value,
                                                          version=existing["version"] if existing else None)
                    except CommercetoolsConflict:
                        if attempt == 4:
                            raise
                        continue
                    log.info("back-sync: %s opt-out written to guest consent object %s/%s", channel, container,
                             key[:12])
                    outcomes.append(WRITTEN)
                    break
            except CommercetoolsError as exc:
                if exc.retryable:
                    raise _Retryable(f"commercetools custom object: {exc.code or exc.status_code}") from exc
                log.error("back-sync: commercetools refused guest consent object %s/%s: %s %s", container,
                          key[:12], exc.status_code, exc.code)
                outcomes.append(FAILED)
        return outcomes
