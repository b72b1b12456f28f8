"""What a delivery handler gets (:class:`DeliveryContext`) and returns (:class:`Delivered`).

A handler is an async function taking a :class:`DeliveryContext` and returning :class:`Delivered`, or
raising a ``DotdigitalError`` (classified as retryable or not by the dispatcher). Delivery must be
idempotent in effect: after a crash the same message may be delivered again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ctdd.config import Settings
from ctdd.db.models import Contact
from ctdd.delivery.outbox import ClaimedMessage
from ctdd.dotdigital.client import DotdigitalClient


@dataclass(frozen=True)
class DeliveryContext:
    msg: ClaimedMessage
    #: the message's contact (None for account-scoped messages)
    contact: Contact | None
    client: DotdigitalClient
    settings: Settings
    #: loads, when called, what Dotdigital should know of the contact (a v3 contact body, see
    #: ``ctdd.delivery.known_state``): read only to recreate a contact deleted in Dotdigital with all of it.
    #: ``None``: nothing is known beyond the message (the contact is recreated with the message's body alone)
    known_contact: Callable[[], Awaitable[dict[str, Any]]] | None = None

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
    #: messages carried by a merged message whose own record was refused for good while the rest was
    #: delivered: message id -> (response code, error) (``ctdd.delivery.view_merge``)
    record_failures: dict[int, tuple[int | None, str]] | None = None


Handler = Callable[[DeliveryContext], Awaitable[Delivered]]


def contact_path(contact: Contact, body: dict) -> tuple[str, str]:
    """The identifier to address a contact by: contactId once known, else email, else mobile number."""
    if contact.dotdigital_contact_id:
        return "contactId", str(contact.dotdigital_contact_id)
    if email := (body.get("identifiers", {}).get("email") or contact.email):
        return "email", email
    return "mobileNumber", (contact.mobile_number or "").lstrip("+")
