"""Bulk delivery: many outbox messages in one Dotdigital bulk import (used under backlog).

A bulk handler takes partition heads of one account and one kind (never two messages of one partition,
so per-contact order holds), sends them as one asynchronous import, polls its status and maps the
per-record report back to the messages:

- ``contact.upsert`` -> ``PUT /contacts/v3/import``: each message becomes
  one import item matched by ``contactId`` once known, else by email or mobile number. ``created`` /
  ``updated`` entries deliver their message and give the contact's ``contactId`` (stored, as after a
  PATCH); ``failures`` settle only their own message.
- ``insight.upsert`` -> ``PUT /insightData/v3/import``, one import per collection; a record is
  delivered unless it is listed in ``failures``. A merged view message (``ctdd.delivery.view_merge``) brings
  all its records; a record refused for good settles only the messages that carried it.

Per-record outcomes (:class:`ItemResult`): ``delivered``; ``dead`` for failures that cannot succeed on a
resend (invalid email / phone / data, unknown list ...); ``fallback`` - the message is sent on its own
with the single-record call, whose answer is authoritative - for failures whose cause the single call
handles or reports precisely (a contactId that no longer exists: the single call recreates the contact with
everything known of it, see ``ctdd.delivery.contact_handlers``; a suppressed contact, a duplicate
identifier, an unknown code, a record missing from the report); ``retry`` for the whole batch when the
import itself failed or could not be started for a transient reason.

Polling (:class:`ImportTimings`) learns how long imports of an account take: the first status poll is
made when the previous import of that kind would have finished, so an import usually costs two API
calls (start + one poll) whatever its size.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable, Mapping, Protocol

from ctdd.config import Settings
from ctdd.db.models import Contact
from ctdd.delivery.context import contact_path
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.delivery.outbox import CONTACT_UPSERT, INSIGHT_UPSERT, ClaimedMessage
from ctdd.delivery.view_merge import record_failures, view_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemResult:
    outcome: str  # "delivered" | "retry" | "dead" | "fallback"
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    dotdigital_contact_id: int | None = None
    #: delivered: messages carried by this one whose own record was refused (see ``outbox.Outcome``)
    record_failures: Mapping[int, tuple[int | None, str]] | None = None

    @classmethod
    def delivered(cls, status_code: int = 200, dotdigital_contact_id: int | None = None,
                  record_failures: Mapping[int, tuple[int | None, str]] | None = None) -> ItemResult:
        return cls("delivered", status_code, dotdigital_contact_id=dotdigital_contact_id,
                   record_failures=record_failures or None)

    @classmethod
    def retry(cls, error: str, status_code: int | None = None, retry_after: float | None = None) -> ItemResult:
        return cls("retry", status_code, error, retry_after)

    @classmethod
    def dead(cls, error: str, status_code: int | None = None, dotdigital_contact_id: int | None = None) -> ItemResult:
        return cls("dead", status_code, error, dotdigital_contact_id=dotdigital_contact_id)

    @classmethod
    def fallback(cls, error: str) -> ItemResult:
        return cls("fallback", None, error)


class ImportTimings:
    """How long imports take, per (account, kind): decides when to poll their status."""

    def __init__(self, min_poll: float = 1.0, max_poll: float = 30.0):
        self.min_poll = min_poll
        self.max_poll = max_poll
        self._estimate: dict[Hashable, float] = {}
        self.polls = 0

    def first_poll(self, key: Hashable) -> float:
        return min(self.max_poll, max(self.min_poll, self._estimate.get(key, 2 * self.min_poll)))

    def next_poll(self, previous: float, first: float, polls: int) -> float:
        """After an unfinished poll: soon after the estimate was missed, then backing off (x1.5)."""
        delay = first * 0.25 if polls == 1 else previous * 1.5
        return min(self.max_poll, max(self.min_poll, delay))

    def finished(self, key: Hashable, elapsed: float, polls: int) -> None:
        """Record an import that was seen finished after ``elapsed`` seconds and ``polls`` polls."""
        if polls <= 1:
            # finished at the first poll: it may have been done earlier; try a little sooner next time
            self._estimate[key] = max(self.min_poll, 0.85 * self.first_poll(key))
        else:
            self._estimate[key] = min(self.max_poll, elapsed)


@dataclass
class BulkContext:
    msgs: list[ClaimedMessage]
    #: the messages' contacts by id
    contacts: dict[int, Contact]
    client: DotdigitalClient
    settings: Settings
    timings: ImportTimings = field(default_factory=ImportTimings)
    timeout_seconds: float = 900.0
    max_bytes: int = 20_000_000
    #: called with the import id and its messages as soon as an import was accepted (the dispatcher
    #: records it on the messages, see ``outbox.record_import``)
    on_started: Callable[[str, list[ClaimedMessage]], Awaitable[None]] | None = None

    async def started(self, import_id: str, chunk: list[tuple[ClaimedMessage, Any]]) -> None:
        if self.on_started is not None:
            await self.on_started(import_id, [msg for msg, _ in chunk])


class BulkHandler(Protocol):
    kind: str

    def group_key(self, msg: ClaimedMessage) -> Hashable: ...

    async def deliver(self, ctx: BulkContext) -> dict[int, ItemResult]: ...

    async def status(self, client: DotdigitalClient, import_id: str) -> Any: ...


BULK_HANDLERS: dict[str, BulkHandler] = {}


def register(handler: BulkHandler) -> BulkHandler:
    if handler.kind in BULK_HANDLERS:
        raise ValueError(f"a bulk handler for {handler.kind!r} is already registered")
    BULK_HANDLERS[handler.kind] = handler
    return handler


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _chunks(items: list[tuple[ClaimedMessage, Any]], max_bytes: int) -> list[list[tuple[ClaimedMessage, Any]]]:
    """Split import items (one item, or a list of items that must stay together, per message) so that no
    request body exceeds ``max_bytes`` (Dotdigital: 50 MB)."""
    chunks: list[list[tuple[ClaimedMessage, Any]]] = [[]]
    size = 0
    for msg, item in items:
        n = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if chunks[-1] and size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append((msg, item))
        size += n
    return [c for c in chunks if c]


async def poll_import(ctx: BulkContext, key: Hashable, fetch: Callable[[], Awaitable[Any]],
                      is_finished: Callable[[Any], bool], what: str) -> Any:
    """Poll ``fetch`` until ``is_finished``; transient poll failures are retried, not the import."""
    t0 = time.monotonic()
    first = ctx.timings.first_poll(key)
    delay = first
    polls = 0
    while True:
        await asyncio.sleep(delay)
        elapsed = time.monotonic() - t0
        try:
            polls += 1
            ctx.timings.polls += 1
            report = await fetch()
        except DotdigitalError as exc:
            if not exc.retryable or elapsed > ctx.timeout_seconds:
                raise
            log.warning("%s: status poll failed (%s); polling again", what, exc)
            delay = max(delay, exc.retry_after or 0.0, ctx.timings.min_poll)
            continue
        if is_finished(report):
            ctx.timings.finished(key, time.monotonic() - t0, polls)
            return report
        if elapsed > ctx.timeout_seconds:
            raise DotdigitalError(f"{what} still running after {elapsed:.0f}s", code="IMPORT_TIMEOUT", retryable=True)
        delay = ctx.timings.next_poll(delay, first, polls)


# ---------------------------------------------------------------------------------------------------
# contacts
# ---------------------------------------------------------------------------------------------------
#: contacts import failure codes (compared case-insensitively) a resend cannot fix
CONTACT_DEAD_CODES = frozenset(code.casefold() for code in (
    "ApiSchemaViolation", "InvalidEmail", "InvalidContactId", "InvalidPhoneNumber", "InvalidDomain",
    "InvalidContact", "InvalidAddressBookIds", "InvalidMatchIdentifier", "InvalidContactStatus",
    "NoValidIdentifiers", "SuppressedByDomain", "consentRecordsNotApplied",
))
#: import statuses after which the import is over
IMPORT_DONE = frozenset(s.casefold() for s in ("Finished", "Complete", "Failed", "RejectedByWatchdog",
                                               "ExceedsAllowedContactLimit", "InvalidFileFormat",
                                               "NotAvailableInThisVersion"))
IMPORT_OK = frozenset(s.casefold() for s in ("Finished", "Complete"))
#: failed imports worth sending again as a whole later; any other failure sends the messages one by one
IMPORT_RETRY = frozenset(s.casefold() for s in ("Failed", "ExceedsAllowedContactLimit", "Unknown"))


async def run_import(ctx: BulkContext, chunk: list[tuple[ClaimedMessage, Any]], kind: str, *,
                     start: Callable[[], Awaitable[str]], status: Callable[[str], Awaitable[Any]],
                     describe: Callable[[str], str]) -> tuple[Any, str, dict[int, ItemResult] | None]:
    """Start an import for ``chunk``, record it, poll it to the end.

    Returns the final report, the import's description (for log lines) and, when the import as a whole did not succeed, the result for every message
    of the chunk (retry the whole import later, or fall back to single calls); ``None`` when it succeeded
    and the caller reads the per-record outcome from the report.
    """
    import_id = await start()
    await ctx.started(import_id, chunk)
    what = describe(import_id)
    log.info("%s started (messages %s..%s)", what, chunk[0][0].id, chunk[-1][0].id)
    report = await poll_import(ctx, (ctx.msgs[0].account, kind), lambda: status(import_id), import_done, what)
    final = str(_get(report, "status", ""))
    if final.casefold() in IMPORT_OK:
        return report, what, None
    reason = f"{what} ended with status {final}"
    if final.casefold() in IMPORT_RETRY:
        return report, what, {msg.id: ItemResult.retry(reason) for msg, _ in chunk}
    return report, what, {msg.id: ItemResult.fallback(reason) for msg, _ in chunk}


def import_done(report: Any) -> bool:
    done = _get(report, "done")
    return bool(done) if done is not None else str(_get(report, "status", "")).casefold() in IMPORT_DONE


def _mobile_key(value: Any) -> str:
    return "".join(ch for ch in str(value) if ch.isdigit())


def contact_import_item(contact: Contact, body: dict) -> tuple[dict, list[tuple[str, Any]]]:
    """The import item for one contact upsert, and the keys its report entries can be found by."""
    identifiers = dict(body.get("identifiers") or {})
    if contact.dotdigital_contact_id:
        match = "contactId"
        identifiers["contactId"] = int(contact.dotdigital_contact_id)
    else:
        match, value = contact_path(contact, body)
        identifiers.setdefault(match, value)
    return {**body, "matchIdentifier": match, "identifiers": identifiers}, _identifier_keys(identifiers)


def _identifier_keys(identifiers: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The keys an import item or report entry can be matched by (contactId, email, mobile number)."""
    keys: list[tuple[str, Any]] = []
    if identifiers.get("contactId"):
        keys.append(("contactId", int(identifiers["contactId"])))
    if identifiers.get("email"):
        keys.append(("email", str(identifiers["email"]).casefold()))
    if identifiers.get("mobileNumber"):
        keys.append(("mobileNumber", _mobile_key(identifiers["mobileNumber"])))
    return keys


def _entry_keys(entry: Any) -> list[tuple[str, Any]]:
    contact_id = _get(entry, "contactId", _get(entry, "contact_id"))
    keys = _identifier_keys(_get(entry, "identifiers") or {})
    return [("contactId", int(contact_id))] + keys if contact_id else keys


class ContactsImport:
    kind = CONTACT_UPSERT

    async def status(self, client: DotdigitalClient, import_id: str) -> Any:
        return await client.contacts_import_status(import_id)


    def group_key(self, msg: ClaimedMessage) -> Hashable:
        return None

    async def deliver(self, ctx: BulkContext) -> dict[int, ItemResult]:
        results: dict[int, ItemResult] = {}
        items: list[tuple[ClaimedMessage, dict]] = []
        keys: dict[int, list[tuple[str, Any]]] = {}
        for msg in ctx.msgs:
            contact = ctx.contacts.get(msg.contact_id) if msg.contact_id is not None else None
            if contact is None or not isinstance(msg.payload, dict):
                results[msg.id] = ItemResult.fallback("no contact to import")
                continue
            item, keys[msg.id] = contact_import_item(contact, msg.payload.get("body") or {})
            items.append((msg, item))
        for chunk in _chunks(items, ctx.max_bytes):
            results.update(await self._import(ctx, chunk, keys))
        return results

    async def _import(self, ctx: BulkContext, chunk: list[tuple[ClaimedMessage, dict]],
                      keys: dict[int, list[tuple[str, Any]]]) -> dict[int, ItemResult]:
        by_key: dict[tuple[str, Any], ClaimedMessage] = {}
        for msg, _ in chunk:
            for key in keys[msg.id]:
                by_key.setdefault(key, msg)
        report, what, failed = await run_import(
            ctx, chunk, self.kind,
            start=lambda: ctx.client.start_contacts_import([item for _, item in chunk], merge_option="overwrite"),
            status=ctx.client.contacts_import_status,
            describe=lambda import_id: f"contacts import {import_id} ({len(chunk)} contacts)",
        )
        if failed is not None:
            return failed

        def find(entry: Any) -> ClaimedMessage | None:
            for key in _entry_keys(entry):
                if key in by_key:
                    return by_key[key]
            return None

        results: dict[int, ItemResult] = {}
        for status_code, entries in ((201, _get(report, "created") or ()), (200, _get(report, "updated") or ())):
            for entry in entries:
                msg = find(entry)
                if msg is not None:
                    contact_id = _get(entry, "contactId", _get(entry, "contact_id"))
                    results[msg.id] = ItemResult.delivered(status_code, int(contact_id) if contact_id else None)
        for entry in _get(report, "failures") or ():
            msg = find(entry)
            if msg is None:
                log.warning("%s: a failure matches no message: %s", what, _failure_codes(entry))
                continue
            codes = _failure_codes(entry)
            reason = f"{what}: " + "; ".join(f"{code}: {desc}" for code, desc in codes)
            earlier = results.get(msg.id)
            contact_id = _get(entry, "contactId") or (earlier.dotdigital_contact_id if earlier else None)
            if codes and all(code.casefold() in CONTACT_DEAD_CODES for code, _ in codes):
                results[msg.id] = ItemResult.dead(reason, 400, int(contact_id) if contact_id else None)
            else:
                results[msg.id] = ItemResult.fallback(reason)
        return results


def _failure_codes(entry: Any) -> list[tuple[str, str]]:
    out = []
    for failure in _get(entry, "failures") or ():
        code = _get(failure, "failureCode", _get(failure, "failure_code", "")) or ""
        out.append((str(code), str(_get(failure, "description", "") or "")))
    return out


register(ContactsImport())


# ---------------------------------------------------------------------------------------------------
# insight records
# ---------------------------------------------------------------------------------------------------
#: insight import failure reasons a resend cannot fix
INSIGHT_DEAD_REASONS = frozenset(r.casefold() for r in (
    "InvalidClientKey", "InvalidJson", "JsonContainsNestedArray", "JsonKeyTooLong", "JsonKeyInvalidCharacters",
    "JsonValueTooLong", "JsonValueIncompatibleWithSchema", "JsonNumberValueTooLarge", "JsonDoesNotMatchSchema",
    "JsonContainsDashUnderscoreClash", "InconsistentTypes",
))


class InsightImport:
    kind = INSIGHT_UPSERT

    async def status(self, client: DotdigitalClient, import_id: str) -> Any:
        return await client.insight_import_status(import_id)

    def group_key(self, msg: ClaimedMessage) -> Hashable:
        p = msg.payload if isinstance(msg.payload, dict) else {}
        return (p.get("collection"), p.get("scope", "contact"), p.get("collection_type", "custom"))

    async def deliver(self, ctx: BulkContext) -> dict[int, ItemResult]:
        """One import item per record; a merged view message (``ctdd.delivery.view_merge``) brings all its
        records, kept in one import, and is settled from the outcomes of all of them."""
        results: dict[int, ItemResult] = {}
        items: list[tuple[ClaimedMessage, list[dict]]] = []
        for msg in ctx.msgs:
            p = msg.payload if isinstance(msg.payload, dict) else {}
            contact = ctx.contacts.get(msg.contact_id) if msg.contact_id is not None else None
            if not p.get("collection") or ("record" not in p and not p.get("records")) or (
                    p.get("scope", "contact") == "contact" and contact is None):
                results[msg.id] = ItemResult.fallback("not importable")
                continue
            identity = None
            if contact is not None and p.get("scope", "contact") == "contact":
                identifier, value = contact_path(contact, {})
                identity = {"identifier": identifier, "value": value}
            msg_items = []
            for record in view_records(p, msg.id):
                item: dict[str, Any] = {"key": record.record_id, "json": record.record}
                if identity is not None:
                    item["contactIdentity"] = identity
                msg_items.append(item)
            items.append((msg, msg_items))
        for chunk in _chunks(items, ctx.max_bytes):  # a message's items stay together
            results.update(await self._import(ctx, chunk))
        return results

    async def _import(self, ctx: BulkContext, chunk: list[tuple[ClaimedMessage, list[dict]]]
                      ) -> dict[int, ItemResult]:
        collection, scope, collection_type = self.group_key(chunk[0][0])
        by_key = {(item["key"], _identity_key((item.get("contactIdentity") or {}).get("value", ""))): msg
                  for msg, msg_items in chunk for item in msg_items}
        report, what, failed = await run_import(
            ctx, chunk, self.kind,
            start=lambda: ctx.client.start_insight_import(
                collection, scope=scope, collection_type=collection_type,
                records=[item for _, msg_items in chunk for item in msg_items]),
            status=ctx.client.insight_import_status,
            describe=lambda import_id: f"insight import {import_id} ({collection}, "
                                       f"{sum(len(i) for _, i in chunk)} records)",
        )
        if failed is not None:
            return failed
        #: per message: record id -> ("dead" | "fallback", reason)
        refused: dict[int, dict[str, tuple[str, str]]] = {}
        for failure in _get(report, "failures") or ():
            owner = _get(failure, "collectionOwner", _get(failure, "collection_owner")) or {}
            identity = _get(owner, "contactIdentity", _get(owner, "contact_identity")) or {}
            key = str(_get(failure, "key", ""))
            msg = by_key.get((key, _identity_key(_get(identity, "value", ""))))
            if msg is None:
                log.warning("%s: a failure matches no message: %s", what, _get(failure, "failureReason"))
                continue
            reason_code = str(_get(failure, "failureReason", _get(failure, "failure_reason", "")) or "")
            details = "; ".join(str(d) for d in _get(failure, "details") or ())
            reason = f"{what}: {reason_code}" + (f" ({details})" if details else "")
            refused.setdefault(msg.id, {})[key] = (
                "dead" if reason_code.casefold() in INSIGHT_DEAD_REASONS else "fallback", reason)
        return {msg.id: _message_result(msg, msg_items, refused.get(msg.id) or {}) for msg, msg_items in chunk}


def _identity_key(value: Any) -> str:
    """A contact identity's value as a failure report is matched by, whatever spelling Dotdigital echoes: an email
    case-folded, a mobile number or contact id by its digits (as the contacts import's report is matched)."""
    text = str(value).strip().casefold()
    return text if "@" in text else (_mobile_key(text) or text)


def _message_result(msg: ClaimedMessage, items: list[dict], refused: dict[str, tuple[str, str]]) -> ItemResult:
    """A message's outcome from those of its records: delivered when none was refused; sent on its own
    (``fallback``: the single calls' answers are authoritative) when a refusal may not be final; ``dead`` when
    all its records were refused for good; else delivered, with the messages of the refused records dead."""
    if not refused:
        return ItemResult.delivered(200)
    if any(outcome == "fallback" for outcome, _ in refused.values()):
        return ItemResult.fallback("; ".join(reason for _, reason in refused.values()))
    if len(refused) >= len(items):
        return ItemResult.dead("; ".join(reason for _, reason in refused.values()), 400)
    records = view_records(msg.payload, msg.id)
    return ItemResult.delivered(200, record_failures=record_failures(
        records, {key: (400, reason) for key, (_, reason) in refused.items()}))


register(InsightImport())
