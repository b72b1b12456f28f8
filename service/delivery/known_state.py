"""What Dotdigital should know of a contact, to recreate a contact deleted in Dotdigital with all of it.

Delta sync sends only what changed, so when a stored ``contactId`` turns out to be gone in Dotdigital (a user or
a retention rule deleted the contact), upserting the contact again with the message's body alone would leave out
everything sent before, and ``field_state`` would keep saying it was sent. The handlers that meet the deleted
contact (``ctdd.delivery.contact_handlers``, ``ctdd.delivery.insight_handlers``) ask for the contact's known state
through ``DeliveryContext.known_contact``, which the dispatcher fills with :func:`known_contact_loader`: the
``field_state`` values that reached Dotdigital (or came from it), built into a v3 contact body and transformed by
the store's ``ctdd_transform_payload`` plugins like any outbound contact body. It is read only on that path.

Left out: the values carried by messages of the contact that are still to be delivered (``pending``,
``in_flight``, ``parked`` or ``merged`` into one of those), other than the message being delivered and the
messages merged into it. Those messages send their values themselves, in order, and a value Dotdigital would
refuse must fail its own message, not the recreation.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.config import Settings
from ctdd.db.models import FieldState, OutboxMessage, OutboxStatus
from ctdd.delivery.outbox import ClaimedMessage
from ctdd.delivery.transform import transformed_contact_body
from ctdd.domain.payload import CONTACT_HEADS, known_contact_body
from ctdd.hooks.manager import Hooks

FS = FieldState.__table__
OM = OutboxMessage.__table__

#: a message in one of these statuses has not reached Dotdigital (yet)
_UNDELIVERED = (*OutboxStatus.BLOCKING, OutboxStatus.MERGED)


def known_fields(engine: Engine, contact_id: int, own_ids: tuple[int, ...] = ()) -> dict[str, Any]:
    """The contact's ``field_state`` values (contact-body paths only) except those of messages not delivered yet,
    other than ``own_ids`` (the message being delivered and those merged into it)."""
    undelivered = sa.and_(OM.c.status.in_(_UNDELIVERED), OM.c.id.not_in(own_ids) if own_ids else sa.true())
    stmt = (
        sa.select(FS.c.field, FS.c.value)
        .select_from(FS.outerjoin(OM, OM.c.id == FS.c.message_id))
        .where(FS.c.contact_id == contact_id,
               sa.or_(*(FS.c.field.like(f"{head}.%") for head in CONTACT_HEADS)),
               sa.or_(OM.c.id.is_(None), sa.not_(undelivered)))
    )
    with engine.begin() as conn:
        return {row.field: row.value for row in conn.execute(stmt)}


def known_contact_loader(engine: Engine, hooks: Hooks, settings: Settings, msg: ClaimedMessage,
                         contact_id: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The ``DeliveryContext.known_contact`` of ``msg``: loads, when called, the known state of its contact as a
    v3 contact body transformed for ``msg``'s store. A failing transform plugin raises PluginFailed (the message
    is dead-lettered, as when its own body's transform fails)."""
    async def load() -> dict[str, Any]:
        fields = await asyncio.to_thread(known_fields, engine, contact_id, (msg.id, *msg.merged_ids))
        return transformed_contact_body(hooks, settings, msg.store_key, known_contact_body(fields))

    return load
