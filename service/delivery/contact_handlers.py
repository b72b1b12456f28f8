"""Delivery of contact upserts: ``PATCH /contacts/v3/{identifier}/{value}`` with the changed fields.

A contact addressed by its stored ``contactId`` that Dotdigital no longer has (404: deleted in Dotdigital by a user
or a retention rule) is upserted again by its address (:func:`recreate_contact`), with everything known of it
(``DeliveryContext.known_contact``: the field values sent before) and the message's body winning: delta sync sent
only what changed, so the message alone would recreate the contact without the rest. The new ``contactId``
replaces the old one.
"""

from __future__ import annotations

import logging

from ctdd.delivery.context import Delivered, DeliveryContext, contact_path
from ctdd.dotdigital.client import ContactUpsertResult
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.domain.payload import recreate_contact_body

log = logging.getLogger(__name__)


async def deliver_contact_upsert(ctx: DeliveryContext) -> Delivered:
    """``PATCH /contacts/v3/{identifier}/{value}`` with the changed fields."""
    contact = ctx.contact
    if contact is None:
        raise ValueError("contact.upsert message without a contact")
    body = ctx.msg.payload["body"]
    identifier, value = contact_path(contact, body)
    try:
        result = await ctx.client.upsert_contact(identifier, value, body, headers=ctx.headers)
    except DotdigitalError as exc:
        if not (identifier == "contactId" and exc.status_code == 404 and can_recreate(ctx)):
            raise
        log.warning("message %s: Dotdigital contact %s no longer exists; recreating it by address", ctx.msg.id, value)
        result = await recreate_contact(ctx, body)
    return Delivered(result.status_code, result.contact_id, channel_statuses(result))


def can_recreate(ctx: DeliveryContext) -> bool:
    """The contact has an address to be upserted again by (a contactId alone cannot create a contact)."""
    return ctx.contact is not None and bool(ctx.contact.email or ctx.contact.mobile_number)


async def recreate_contact(ctx: DeliveryContext, body: dict) -> ContactUpsertResult:
    """Upsert the contact by its email (else mobile number) with everything known of it and ``body`` winning
    (``ctdd.domain.payload.recreate_contact_body``): what recreates a contact deleted in Dotdigital."""
    contact = ctx.contact
    assert contact is not None
    known = await ctx.known_contact() if ctx.known_contact is not None else {}
    address: dict[str, str] = {}
    if contact.email:
        address["email"] = contact.email
    if contact.mobile_number:
        address["mobileNumber"] = contact.mobile_number.lstrip("+")
    full = recreate_contact_body(known, body, address)
    identifiers = full["identifiers"]
    identifier = "email" if identifiers.get("email") else "mobileNumber"
    return await ctx.client.upsert_contact(identifier, str(identifiers[identifier]), full, headers=ctx.headers)


def channel_statuses(result: ContactUpsertResult) -> dict[str, str | None] | None:
    """channel -> status as Dotdigital reported it in a contact upsert's response (for the consent rules)."""
    channels = (result.body or {}).get("channelProperties") or {}
    statuses = {ch: (channels.get(ch) or {}).get("status") for ch in ("email", "sms") if isinstance(channels.get(ch), dict)}
    return statuses or None
