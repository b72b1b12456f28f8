"""Delivery handlers for insight records and contact removals (listed in ``ctdd.delivery.handlers``).

- ``insight.upsert``: ``PUT /insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}``. The
  record is delivered in the contact's partition, after the contact upsert that creates the contact, so
  the contact always exists first (Dotdigital rejects records of unknown contacts). A contact deleted in
  Dotdigital since (404 ``insightData:contactNotFound`` for its stored ``contactId``) is recreated as a contact
  upsert recreates it (``ctdd.delivery.contact_handlers.recreate_contact``: by its address, with everything known
  of it) and the record sent again for the new ``contactId``, which replaces the old one. A
  missing collection is created (contact scope, with the collection type) and the record sent again. A merged
  product-view message (``ctdd.delivery.view_merge``) with one record is this single ``PUT``; with several, the
  dispatcher sends them in one insight import (``ctdd.delivery.bulk``) and falls back to one ``PUT`` per record
  here when the import's answer is not final.
- ``insight.delete``: ``DELETE /insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}`` (204), in
  the contact's partition; a record that is not there (404 ``insightData:recordNotFound``, or the contact or the
  collection not found: no record either) counts as deleted. Queued when an order's record moves to another key
  or another contact (``ctdd.ingest.events``).
- ``contact.remove_from_lists``: v2 ``DELETE /v2/address-books/{id}/contacts/{contactId}`` per list
  (a contact that is not a member is fine).
- ``contact.delete``: v3 ``DELETE /contacts/v3/contactId/{id}`` (200 ``{contactId}``); a contact already gone
  (404 ``contacts:contactNotFound``) is fine. A later upsert of the same contact finds its stored contactId gone
  and upserts it again by its address (``ctdd.delivery.contact_handlers``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ctdd.delivery.account_guard import is_auth_failure
from ctdd.delivery.contact_handlers import can_recreate, channel_statuses, recreate_contact
from ctdd.delivery.context import Delivered, DeliveryContext, contact_path
from ctdd.delivery.view_merge import record_failures, view_records
from ctdd.dotdigital.client import ContactUpsertResult
from ctdd.dotdigital.errors import DotdigitalError

log = logging.getLogger(__name__)


def _is_collection_missing(exc: DotdigitalError) -> bool:
    return exc.status_code == 404 and "collection" in (exc.code or "").lower()


@dataclass
class _Owner:
    """How a message's records address their contact: its stored contactId (else its address) until the contact
    was found deleted in Dotdigital and recreated (``recreated``: that upsert's answer), then the new contactId."""

    identifier: str
    value: str
    recreated: ContactUpsertResult | None = None
    #: the recreation failed: the message's other records do not try again
    failed: DotdigitalError | None = None

    def delivered(self, status: int, failures: dict[int, tuple[int | None, str]] | None = None) -> Delivered:
        if self.recreated is None:
            return Delivered(status, record_failures=failures)
        return Delivered(status, self.recreated.contact_id, channel_statuses(self.recreated), record_failures=failures)


async def deliver_insight_upsert(ctx: DeliveryContext) -> Delivered:
    """One ``PUT`` per record: the message's record, or each record of a merged view message (the dispatcher
    sends those in one import; this is their authoritative one-by-one path when the import could not settle
    them). A record refused for good (a non-retryable 4xx other than 401/403) settles only the messages that
    carried it; any other failure fails the whole message (it is retried as a whole: upserts are idempotent)."""
    if ctx.contact is None:
        raise ValueError("insight.upsert message without a contact")
    records = view_records(ctx.msg.payload, ctx.msg.id)
    owner = _Owner(*contact_path(ctx.contact, {}))
    if len(records) == 1:
        return owner.delivered(await _put_record(ctx, owner, records[0].record_id, records[0].record))
    refused: dict[str, tuple[int | None, str]] = {}
    last: DotdigitalError | None = None
    status = 204
    for record in records:
        try:
            status = await _put_record(ctx, owner, record.record_id, record.record)
        except DotdigitalError as exc:
            if exc.retryable or is_auth_failure(exc):
                raise
            refused[record.record_id] = (exc.status_code, f"record {record.record_id}: {exc}")
            last = exc
    if last is not None and len(refused) == len(records):
        raise last
    return owner.delivered(status, record_failures(records, refused) or None)


def _is_contact_gone(ctx: DeliveryContext, owner: _Owner, exc: DotdigitalError) -> bool:
    """The record's contact, addressed by its stored contactId, no longer exists in Dotdigital."""
    return (owner.identifier == "contactId" and owner.recreated is None and exc.status_code == 404
            and (exc.code or "").casefold().endswith("contactnotfound") and can_recreate(ctx))


async def _put_record(ctx: DeliveryContext, owner: _Owner, record_id: str, record: dict) -> int:
    try:
        return await _put(ctx, owner, record_id, record)
    except DotdigitalError as exc:
        if not _is_contact_gone(ctx, owner, exc):
            raise
    if owner.failed is not None:
        raise owner.failed
    log.warning("message %s: Dotdigital contact %s no longer exists; recreating it by address before its insight "
                "record", ctx.msg.id, owner.value)
    try:
        owner.recreated = await recreate_contact(ctx, {})
    except DotdigitalError as exc:
        owner.failed = exc
        raise
    owner.identifier, owner.value = "contactId", str(owner.recreated.contact_id)
    return await _put(ctx, owner, record_id, record)


async def _put(ctx: DeliveryContext, owner: _Owner, record_id: str, record: dict) -> int:
    p = ctx.msg.payload
    try:
        return await ctx.client.upsert_insight_record(
            p["collection"], record_id, record, identifier=owner.identifier, value=owner.value, headers=ctx.headers
        )
    except DotdigitalError as exc:
        if not _is_collection_missing(exc):
            raise
        log.info("creating insight collection %s (%s)", p["collection"], p.get("collection_type"))
        await ctx.client.create_collection(p["collection"], scope=p.get("scope", "contact"),
                                           collection_type=p.get("collection_type", "custom"))
        return await ctx.client.upsert_insight_record(
            p["collection"], record_id, record, identifier=owner.identifier, value=owner.value, headers=ctx.headers
        )


async def deliver_insight_delete(ctx: DeliveryContext) -> Delivered:
    """Delete one record of the contact; already gone (any 404: the record, its contact or its collection not
    found) is success, answered 404."""
    if ctx.contact is None:
        raise ValueError("insight.delete message without a contact")
    p = ctx.msg.payload
    identifier, value = contact_path(ctx.contact, {})
    try:
        deleted = await ctx.client.delete_insight_record(p["collection"], str(p["record_id"]), identifier=identifier,
                                                         value=value, headers=ctx.headers)
    except DotdigitalError as exc:
        if exc.status_code != 404:
            raise
        log.info("message %s: insight record %s/%s already gone (%s)", ctx.msg.id, p["collection"], p["record_id"],
                 exc.code)
        return Delivered(404)
    return Delivered(204 if deleted else 404)


async def deliver_remove_from_lists(ctx: DeliveryContext) -> Delivered:
    contact = ctx.contact
    if contact is None or not contact.dotdigital_contact_id:
        return Delivered(204)  # never reached Dotdigital: nothing to remove
    for list_id in ctx.msg.payload.get("list_ids", []):
        try:
            await ctx.client.remove_contact_from_address_book(int(list_id), contact.dotdigital_contact_id)
        except DotdigitalError as exc:
            if exc.status_code != 404:
                raise
    return Delivered(204)


async def deliver_contact_delete(ctx: DeliveryContext) -> Delivered:
    contact = ctx.contact
    if contact is None or not contact.dotdigital_contact_id:
        return Delivered(204)
    # 404 (already gone) is success: the client answers False for it
    deleted = await ctx.client.delete_contact("contactId", str(contact.dotdigital_contact_id), headers=ctx.headers)
    return Delivered(200 if deleted else 404)
