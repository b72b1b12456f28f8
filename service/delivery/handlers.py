"""How each kind of outbox message is delivered to Dotdigital.

A handler is an async function taking a :class:`DeliveryContext` and returning :class:`Delivered`, or
raising a ``DotdigitalError`` (classified as retryable or not by the dispatcher). Handlers register
themselves per message kind with :func:`handler`. Delivery must be idempotent in effect: after a crash the
same message may be delivered again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from ctdd.config import Settings
from ctdd.db.models import Contact
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.delivery.outbox import CONTACT_UPSERT, ClaimedMessage

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DeliveryContext:
    msg: ClaimedMessage
    #: the message's contact (None for account-scoped messages)
    contact: Contact | None
    client: DotdigitalClient
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        """Sent with every call: lets the sandbox (and support staff) tie a request to its outbox message
        (and to the messages coalesced into it)."""
        headers = {"X-Ctdd-Message-Id": str(self.msg.id)}
        if self.msg.merged_ids:
            headers["X-Ctdd-Merged-Ids"] = ",".join(map(str, self.msg.merged_ids))
        return headers


@dataclass(frozen=True)
class Delivered:
    status_code: int
    #: Dotdigital contactId learnt from the response, stored on the contact
    dotdigital_contact_id: int | None = None
    #: channel -> status as Dotdigital reported it in the response (for the consent rules)
    channel_statuses: dict[str, str | None] | None = None


Handler = Callable[[DeliveryContext], Awaitable[Delivered]]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        if kind in HANDLERS:
            raise ValueError(f"a delivery handler for {kind!r} is already registered")
        HANDLERS[kind] = fn
        return fn

    return register


def contact_path(contact: Contact, body: dict) -> tuple[str, str]:
    """The identifier to address a contact by: contactId once known, else email, else mobile number."""
    if contact.dotdigital_contact_id:
        return "contactId", str(contact.dotdigital_contact_id)
    if email := (body.get("identifiers", {}).get("email") or contact.email):
        return "email", email
    return "mobileNumber", (contact.mobile_number or "").lstrip("+")


@handler(CONTACT_UPSERT)
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

# Handlers of other message kinds register themselves on import.
from ctdd.delivery import insight_handlers as delivery_insight# noqa: E402,F401
