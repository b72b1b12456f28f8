"""What Dotdigital says about a contact's channels, kept on the contact for the consent rules.

Sources: the channel statuses in contact upsert responses (a PATCH on a suppressed contact succeeds but
reports the sticky status) and the back-sync feeds (suppressed-since,
unsubscribed-since, contacts modified since). When Dotdigital's status differs from the value ctdd-sync
last sent, the remembered value is replaced by Dotdigital's, so that a later shop decision counts as a
change (delta) and an echo of Dotdigital's own state counts as none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.db.engine import utcnow
from ctdd.db.models import Contact, FieldState
from ctdd.domain.consent import normalise_status


def remembered_status(status: str) -> str:
    """The value ctdd-sync would have had to send to reach Dotdigital's status: an opt-out of any kind
    (hard bounce, complaint ...) is remembered as "unsubscribed", so a shop opt-out is not re-sent; a
    pending double opt-in as "subscribed" (what was sent)."""
    if status in ("subscribed", "pendingOptIn"):
        return "subscribed"
    if status == "noSubscription":
        return status
    return "unsubscribed"


def apply_channel_statuses(session: Session, contact: Contact, statuses: Mapping[str, str | None],
                           at: datetime | None = None) -> bool:
    """Record Dotdigital's channel statuses on ``contact`` inside the caller's transaction; True if any changed."""
    at = at or utcnow()
    changed = False
    for channel, raw in statuses.items():
        status = normalise_status(raw)
        if status is None or channel not in ("email", "sms"):
            continue
        if getattr(contact, f"dd_{channel}_status") != status:
            setattr(contact, f"dd_{channel}_status", status)
            setattr(contact, f"dd_{channel}_status_at", at)
            changed = True
        path = f"channelProperties.{channel}.status"
        state = session.get(FieldState, (contact.id, path))
        remembered = remembered_status(status)
        if state is not None and state.value != remembered:
            state.value = remembered
            state.updated_at = utcnow()
    return changed


_CONTACT = Contact.__table__
_FIELD_STATE = FieldState.__table__


def _set_status_statement(channel: str) -> sa.Update:
    column = _CONTACT.c[f"dd_{channel}_status"]
    status = sa.bindparam("status", type_=column.type)
    return (sa.update(_CONTACT)
            .where(_CONTACT.c.id == sa.bindparam("contact_id"), sa.or_(column.is_(None), column != status))
            .values({column: status,
                     _CONTACT.c[f"dd_{channel}_status_at"]: sa.bindparam("at", type_=_CONTACT.c.updated_at.type)}))


#: prepared once: these run for every delivered contact upsert
_SET_STATUS = {channel: _set_status_statement(channel) for channel in ("email", "sms")}
_SELECT_REMEMBERED = sa.select(_FIELD_STATE.c.contact_id, _FIELD_STATE.c.field, _FIELD_STATE.c.value).where(
    _FIELD_STATE.c.contact_id.in_(sa.bindparam("contact_ids", expanding=True)),
    _FIELD_STATE.c.field.in_(sa.bindparam("fields", expanding=True)))
_SET_REMEMBERED = (
    sa.update(_FIELD_STATE)
    .where(_FIELD_STATE.c.contact_id == sa.bindparam("b_contact_id"), _FIELD_STATE.c.field == sa.bindparam("path"))
    .values(value=sa.bindparam("b_value", type_=_FIELD_STATE.c.value.type),
            updated_at=sa.bindparam("at", type_=_FIELD_STATE.c.updated_at.type))
)


def record_channel_statuses_many(conn: sa.Connection, items: list[tuple[int, Mapping[str, str | None]]],
                                 at: datetime | None = None) -> None:
    """:func:`apply_channel_statuses` for many contacts at once, with Core statements on ``conn`` (the
    dispatcher's settle transaction): per channel one conditional UPDATE for all contacts (executemany), one
    lookup of the remembered values and one UPDATE for those that differ, whatever the number of contacts."""
    at = at or utcnow()
    per_channel: dict[str, list[dict]] = {}
    remembered: dict[tuple[int, str], str] = {}
    for contact_id, statuses in items:
        for channel, raw in statuses.items():
            status = normalise_status(raw)
            if status is None or channel not in _SET_STATUS:
                continue
            per_channel.setdefault(channel, []).append({"contact_id": contact_id, "status": status, "at": at})
            remembered[(contact_id, f"channelProperties.{channel}.status")] = remembered_status(status)
    for channel, params in per_channel.items():
        conn.execute(_SET_STATUS[channel], params)
    if not remembered:
        return
    stored = conn.execute(_SELECT_REMEMBERED, {"contact_ids": sorted({c for c, _ in remembered}),
                                               "fields": sorted({f for _, f in remembered})}).all()
    changes = [{"b_contact_id": contact_id, "path": path, "b_value": remembered[(contact_id, path)], "at": at}
               for contact_id, path, value in stored
               if (contact_id, path) in remembered and value != remembered[(contact_id, path)]]
    if changes:
        conn.execute(_SET_REMEMBERED, changes)


def record_channel_statuses(engine: Engine, contact_id: int, statuses: Mapping[str, str | None],
                            at: datetime | None = None) -> bool:
    """Same as :func:`apply_channel_statuses`, in its own transaction."""
    with Session(engine) as session, session.begin():
        contact = session.execute(sa.select(Contact).where(Contact.id == contact_id).with_for_update()).scalar_one_or_none()
        if contact is None:
            return False
        return apply_channel_statuses(session, contact, statuses, at)
