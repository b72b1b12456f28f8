"""The support view of one contact: everything ctdd-sync holds and decided for it, read in one place.

Used by ``ctdd contact show`` (``ctdd.cli.contact_cmd``) and the operator's gRPC ``AdminService.GetContact``
(``ctdd.api.admin``). Pure reads (SQLAlchemy Core): nothing is written, nothing is logged. The view holds
personal data (identifiers, field values): the callers print it or return it to an operator and never log it.

What it reads:

* ``contact`` (the current email and mobile number, the channel statuses Dotdigital last reported and the
  shop's newest consent decision per channel) and ``contact_identifier`` (every identifier that resolves to it);
* ``identity_conflict``: identifiers another contact already owned when a request tried to give them to this
  one (or that this contact owns and another asked for); the value is stored only as a hash;
* ``field_state``: per Dotdigital field the value last enqueued, its source record (``source_ref``, version,
  time) and the outbox message that carried it, with that message's status and last response. An older update
  whose value was not sent leaves the newer value here. List memberships are the ``lists.<id>`` fields;
* ``outbox_message`` with its ``delivery_attempt`` rows: the messages not yet settled and the most recent
  settled ones;
* ``program_trigger`` (``ctdd.programs.queries``): pending triggers and decided ones.

The contact is found as ``ctdd.programs.queries.find_contact`` finds it (the same selectors and errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ctdd.db.models import (
    Contact, ContactIdentifier, DeliveryAttempt, FieldState, IdentityConflictRecord, OutboxMessage, OutboxStatus,
)
from ctdd.programs.queries import TriggerView, list_triggers

if TYPE_CHECKING:
    from ctdd.config import Settings

_C = Contact.__table__
_CI = ContactIdentifier.__table__
_FS = FieldState.__table__
_IC = IdentityConflictRecord.__table__
_OM = OutboxMessage.__table__
_DA = DeliveryAttempt.__table__

#: outbox statuses of messages still to be settled (listed as pending, oldest first)
UNSETTLED = (OutboxStatus.PENDING, OutboxStatus.IN_FLIGHT, OutboxStatus.PARKED)
DEFAULT_MESSAGES = 20
DEFAULT_TRIGGERS = 50
MAX_ROWS = 500
#: delivery attempts shown per message (the newest)
ATTEMPTS_PER_MESSAGE = 10
LIST_PREFIX = "lists."


@dataclass(frozen=True)
class IdentifierView:
    kind: str
    value: str
    created_at: datetime | None


@dataclass(frozen=True)
class ConflictView:
    """An identifier of ``kind`` that two contacts wanted. ``role``: ``"requested"`` when this contact asked
    for an identifier ``other_contact_id`` owned (it was not given to this contact), ``"owner"`` when this
    contact kept it against ``other_contact_id``."""

    id: int
    kind: str
    role: str
    other_contact_id: int
    rule: str
    value_hash: str
    created_at: datetime | None


@dataclass(frozen=True)
class MessageOutcome:
    """The outbox message that carried a field value, as it stands now (None fields: no such message any more)."""

    id: int
    status: str | None
    response_code: int | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class FieldView:
    field: str
    value: Any
    source_ref: str | None
    source_version: int | None
    source_ts: datetime | None
    updated_at: datetime | None
    message: MessageOutcome | None


@dataclass(frozen=True)
class ChannelView:
    """A channel (``email``, ``sms``) as Dotdigital last reported it and as the shop last decided it."""

    channel: str
    dotdigital_status: str | None
    dotdigital_status_at: datetime | None
    shop_consent: str | None
    shop_consent_at: datetime | None


@dataclass(frozen=True)
class ListView:
    list_id: int
    #: the store list keys configured for this id (``customers``, ``newsletter``): empty when none is
    names: tuple[str, ...]
    member: bool
    since: datetime | None
    message: MessageOutcome | None


@dataclass(frozen=True)
class AttemptView:
    attempt: int
    outcome: str
    response_code: int | None
    error: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class MessageView:
    id: int
    kind: str
    status: str
    sequence: int
    store_key: str | None
    record_type: str | None
    record_id: str | None
    record_version: int | None
    attempts: int
    response_code: int | None
    error: str | None
    merged_into: int | None
    created_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    attempt_log: list[AttemptView] = field(default_factory=list)


@dataclass(frozen=True)
class ContactCard:
    contact_id: int
    account: str
    dotdigital_contact_id: int | None
    email: str | None
    mobile_number: str | None
    created_at: datetime | None
    updated_at: datetime | None
    identifiers: list[IdentifierView]
    conflicts: list[ConflictView]
    fields: list[FieldView]
    channels: list[ChannelView]
    lists: list[ListView]
    pending_messages: list[MessageView]
    recent_messages: list[MessageView]
    #: more settled messages exist than ``recent_messages`` shows
    more_messages: bool
    triggers: list[TriggerView]
    #: more triggers exist than ``triggers`` shows
    more_triggers: bool


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (stored as UTC): make every time aware UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _outcomes(conn: Connection, ids: set[int]) -> dict[int, MessageOutcome]:
    if not ids:
        return {}
    rows = conn.execute(sa.select(_OM.c.id, _OM.c.status, _OM.c.last_response_code, _OM.c.delivered_at)
                        .where(_OM.c.id.in_(sorted(ids)))).all()
    found = {r.id: MessageOutcome(r.id, r.status, r.last_response_code, _utc(r.delivered_at)) for r in rows}
    return {i: found.get(i, MessageOutcome(i, None, None, None)) for i in ids}


def _message_view(row: Any) -> MessageView:
    return MessageView(
        id=row.id, kind=row.kind, status=row.status, sequence=row.sequence, store_key=row.store_key,
        record_type=row.record_type, record_id=row.record_id, record_version=row.record_version,
        attempts=row.attempts, response_code=row.last_response_code, error=row.last_error,
        merged_into=row.merged_into, created_at=_utc(row.created_at), next_attempt_at=_utc(row.next_attempt_at),
        delivered_at=_utc(row.delivered_at),
    )


def _with_attempts(conn: Connection, views: list[MessageView]) -> list[MessageView]:
    if not views:
        return views
    by_message: dict[int, list[AttemptView]] = {}
    rows = conn.execute(sa.select(_DA).where(_DA.c.message_id.in_([v.id for v in views]))
                        .order_by(_DA.c.message_id, _DA.c.id)).all()
    for r in rows:
        by_message.setdefault(r.message_id, []).append(AttemptView(
            r.attempt, r.outcome, r.response_code, r.error, r.worker, _utc(r.started_at), _utc(r.finished_at)))
    for v in views:
        v.attempt_log.extend(by_message.get(v.id, [])[-ATTEMPTS_PER_MESSAGE:])
    return views


def _list_names(settings: "Settings | None", account: str) -> dict[int, tuple[str, ...]]:
    names: dict[int, list[str]] = {}
    if settings is None:
        return {}
    for store in settings.stores.values():
        if store.account != account:
            continue
        for key, list_id in (store.lists or {}).items():
            if key not in names.setdefault(int(list_id), []):
                names[int(list_id)].append(key)
    return {list_id: tuple(keys) for list_id, keys in names.items()}


def contact_card(engine: Engine, contact_id: int, *, settings: "Settings | None" = None,
                 store_key: str | None = None, message_limit: int = DEFAULT_MESSAGES,
                 trigger_limit: int = DEFAULT_TRIGGERS) -> ContactCard | None:
    """Everything about contact ``contact_id`` (None: no such contact). ``store_key`` limits the messages and
    triggers to that store's (a store-restricted operator); ``message_limit`` and ``trigger_limit`` (1..500)
    bound the settled messages and the triggers shown."""
    message_limit = max(1, min(message_limit, MAX_ROWS))
    trigger_limit = max(1, min(trigger_limit, MAX_ROWS))
    with engine.connect() as conn:
        contact = conn.execute(sa.select(_C).where(_C.c.id == contact_id)).first()
        if contact is None:
            return None
        identifiers = [IdentifierView(r.kind, r.value, _utc(r.created_at)) for r in conn.execute(
            sa.select(_CI.c.kind, _CI.c.value, _CI.c.created_at).where(_CI.c.contact_id == contact_id)
            .order_by(_CI.c.kind, _CI.c.id))]
        conflicts = [
            ConflictView(r.id, r.kind, "requested" if r.requested_contact_id == contact_id else "owner",
                         r.owner_contact_id if r.requested_contact_id == contact_id else r.requested_contact_id,
                         r.rule, r.value_hash, _utc(r.created_at))
            for r in conn.execute(sa.select(_IC).where(
                _IC.c.account == contact.account,
                sa.or_(_IC.c.requested_contact_id == contact_id, _IC.c.owner_contact_id == contact_id),
            ).order_by(_IC.c.id.desc()).limit(MAX_ROWS))
        ]
        states = conn.execute(sa.select(_FS).where(_FS.c.contact_id == contact_id).order_by(_FS.c.field)).all()
        outcomes = _outcomes(conn, {r.message_id for r in states if r.message_id is not None})
        names = _list_names(settings, contact.account)
        fields: list[FieldView] = []
        lists: list[ListView] = []
        for r in states:
            carried = outcomes.get(r.message_id) if r.message_id is not None else None
            list_id = r.field[len(LIST_PREFIX):] if r.field.startswith(LIST_PREFIX) else None
            if list_id is not None and list_id.isdigit():
                lists.append(ListView(int(list_id), names.get(int(list_id), ()), r.value is True,
                                      _utc(r.updated_at), carried))
                continue
            fields.append(FieldView(r.field, r.value, r.source_ref, r.source_version, _utc(r.source_ts),
                                    _utc(r.updated_at), carried))

        where = [_OM.c.contact_id == contact_id, _OM.c.account == contact.account]
        if store_key is not None:
            where.append(_OM.c.store_key == store_key)
        pending = [_message_view(r) for r in conn.execute(
            sa.select(_OM).where(*where, _OM.c.status.in_(UNSETTLED)).order_by(_OM.c.sequence).limit(MAX_ROWS))]
        recent_rows = conn.execute(
            sa.select(_OM).where(*where, _OM.c.status.not_in(UNSETTLED))
            .order_by(_OM.c.sequence.desc()).limit(message_limit + 1)).all()
        recent = [_message_view(r) for r in recent_rows[:message_limit]]
        _with_attempts(conn, pending + recent)

    triggers = list_triggers(engine, contact_id, limit=trigger_limit + 1, store_key=store_key)
    return ContactCard(
        contact_id=contact.id, account=contact.account, dotdigital_contact_id=contact.dotdigital_contact_id,
        email=contact.email, mobile_number=contact.mobile_number, created_at=_utc(contact.created_at),
        updated_at=_utc(contact.updated_at), identifiers=identifiers, conflicts=conflicts, fields=fields,
        channels=[ChannelView("email", contact.dd_email_status, _utc(contact.dd_email_status_at),
                              contact.shop_email_consent, _utc(contact.shop_email_consent_at)),
                  ChannelView("sms", contact.dd_sms_status, _utc(contact.dd_sms_status_at),
                              contact.shop_sms_consent, _utc(contact.shop_sms_consent_at))],
        lists=lists, pending_messages=pending, recent_messages=recent,
        more_messages=len(recent_rows) > message_limit,
        triggers=triggers[:trigger_limit], more_triggers=len(triggers) > trigger_limit,
    )
