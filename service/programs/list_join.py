"""The list-join strategy: start a program that starts when a contact joins its trigger list.

The join goes through the outbox, in the contact's partition, so it reaches Dotdigital after the contact's
own upsert (the contact exists first) and in order with everything else of that contact.

Dotdigital starts a list-triggered program when a contact *joins* the list; adding a contact who is already a
member joins nothing. So each trigger queues two messages, in this order:

1. ``contact.remove_from_lists`` of the trigger list (``DELETE /v2/address-books/{id}/contacts/{contactId}``; a
   contact who is not a member, or not in Dotdigital yet, is fine: 404 counts as done);
2. ``contact.upsert`` with ``lists: [trigger list]`` (a fresh join, which starts the program).

Leaving *before* joining (rather than after) keeps the contact in the list until its next trigger, so the
program has all the time it needs to pick the join up, and no removal can race the program's start. The
trigger list is a technical list: do not send campaigns to it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from ctdd.config import StoreConfig
from ctdd.db.models import Contact
from ctdd.delivery import outbox
from ctdd.telemetry import enqueued_counter

RECORD_TYPE = "program_trigger"


def enqueue_list_join(session: Session, store: StoreConfig, trigger, list_id: int | None, *, now: datetime) -> None:
    """Queue the leave-then-join of ``list_id`` for the trigger's contact, in the caller's transaction."""
    if list_id is None:
        raise ValueError(f"trigger {trigger.id}: list_join without a resolved trigger list")
    contact = session.get(Contact, trigger.contact_id)
    if contact is None:
        raise LookupError(f"trigger {trigger.id}: contact {trigger.contact_id} not found")
    ref = outbox.RecordRef(store.key, RECORD_TYPE, str(trigger.id), trigger.step)
    outbox.enqueue(session, contact_id=contact.id, account=store.account, kind=outbox.CONTACT_REMOVE_FROM_LISTS,
                   payload={"list_ids": [list_id]}, ref=ref, now=now)
    body: dict = {"lists": [list_id]}
    if contact.dotdigital_contact_id is None:
        # not in Dotdigital yet (its upsert is still queued, or it never had one): the join may create it
        identifiers = {}
        if contact.email:
            identifiers["email"] = contact.email
        if contact.mobile_number:
            identifiers["mobileNumber"] = contact.mobile_number.lstrip("+")
        body["identifiers"] = identifiers
    outbox.enqueue(session, contact_id=contact.id, account=store.account, kind=outbox.CONTACT_UPSERT,
                   payload={"body": body}, ref=ref, now=now)
    enqueued_counter.add(2, {"kind": "program.list_join", "store": store.key})
