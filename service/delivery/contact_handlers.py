"""Delivery of contact upserts: ``PATCH /contacts/v3/{identifier}/{value}`` with the changed fields."""

from __future__ import annotations

import logging

from ctdd.delivery.context import Delivered, DeliveryContext, contact_path
from ctdd.dotdigital.errors import DotdigitalError

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
        if not (identifier == "contactId" and exc.status_code == 404 and (contact.email or contact.mobile_number)):
            raise
        # The contact was deleted in Dotdigital since we stored its id: upsert it again by its address
        # (with the identifiers, so it can be created); the new contactId replaces the old one.
        log.warning("message %s: Dotdigital contact %s no longer exists; upserting by address", ctx.msg.id, value)
        identifiers = dict(body.get("identifiers", {}))
        if contact.email:
            identifiers.setdefault("email", contact.email)
        if contact.mobile_number:
            identifiers.setdefault("mobileNumber", contact.mobile_number.lstrip("+"))
        body = {**body, "identifiers": identifiers}
        if contact.email:
            identifier, value = "email", identifiers["email"]
        else:
            identifier, value = "mobileNumber", identifiers["mobileNumber"]
        result = await ctx.client.upsert_contact(identifier, value, body, headers=ctx.headers)
    channels = (result.body or {}).get("channelProperties") or {}
    statuses = {ch: (channels.get(ch) or {}).get("status") for ch in ("email", "sms") if isinstance(channels.get(ch), dict)}
    return Delivered(result.status_code, result.contact_id, statuses or None)
