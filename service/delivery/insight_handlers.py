"""Delivery handlers for insight records and contact removals (listed in ``ctdd.delivery.handlers``).

- ``insight.upsert``: ``PUT /insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}``. The
  record is delivered in the contact's partition, after the contact upsert that creates the contact, so
  the contact always exists first (Dotdigital rejects records of unknown contacts). A
  missing collection is created (contact scope, with the collection type) and the record sent again.
- ``contact.remove_from_lists``: v2 ``DELETE /v2/address-books/{id}/contacts/{contactId}`` per list
  (a contact that is not a member is fine).
- ``contact.delete``: v3 ``DELETE /contacts/v3/contactId/{id}`` (200 ``{contactId}``); a contact already gone
  (404 ``contacts:contactNotFound``) is fine. A later upsert of the same contact finds its stored contactId gone
  and upserts it again by its address (``ctdd.delivery.contact_handlers``).
"""

from __future__ import annotations

import logging

from ctdd.delivery.context import Delivered, DeliveryContext, contact_path
from ctdd.dotdigital.errors import DotdigitalError

log = logging.getLogger(__name__)


def _is_collection_missing(exc: DotdigitalError) -> bool:
    return exc.status_code == 404 and "collection" in (exc.code or "").lower()


async def deliver_insight_upsert(ctx: DeliveryContext) -> Delivered:
    if ctx.contact is None:
        raise ValueError("insight.upsert message without a contact")
    p = ctx.msg.payload
    identifier, value = contact_path(ctx.contact, {})
    try:
        status = await ctx.client.upsert_insight_record(
            p["collection"], p["record_id"], p["record"], identifier=identifier, value=value, headers=ctx.headers
        )
    except DotdigitalError as exc:
        if not _is_collection_missing(exc):
            raise
        log.info("creating insight collection %s (%s)", p["collection"], p.get("collection_type"))
        await ctx.client.create_collection(p["collection"], scope=p.get("scope", "contact"),
                                           collection_type=p.get("collection_type", "custom"))
        status = await ctx.client.upsert_insight_record(
            p["collection"], p["record_id"], p["record"], identifier=identifier, value=value, headers=ctx.headers
        )
    return Delivered(status)


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
