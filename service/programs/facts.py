"""What the safeguards read at the moment of sending, loaded from the database for a batch of triggers.

One read per kind of fact for the whole batch (contacts, carts, orders, the contacts' latest orders, their
latest program entries); browse sessions are read per browse trigger. :func:`facts_for` turns them into the
pure :class:`ctdd.domain.programs.TriggerFacts` of one trigger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ctdd.config import ProgramsConfig, Settings
from ctdd.db.models import Cart, Contact, OrderSummary, ProductView, ProgramTrigger, TriggerStatus
from ctdd.domain import programs as rules

PT = ProgramTrigger.__table__
CT = Contact.__table__
CA = Cart.__table__
OS = OrderSummary.__table__
PV = ProductView.__table__

#: a trigger gives up waiting for its Dotdigital contact this long after its last scheduled step would be due
CONTACT_WAIT_LIMIT = timedelta(hours=24)
#: statuses that count as an entry into the program (sent, or decided "send" and waiting for its enrolment)
ENTERED = (TriggerStatus.SENT, TriggerStatus.ENROLLING)
#: a browse session looks back at most this far from its last view
BROWSE_SESSION = timedelta(hours=24)


@dataclass(frozen=True)
class TriggerRef:
    """The columns of a trigger the facts depend on (a claimed trigger, or one waiting for its enrolment)."""

    id: int
    store_key: str
    program_kind: str
    contact_id: int
    subject_type: str
    subject_id: str
    subject_version: int
    step: int
    created_at: datetime
    #: the step's first due time (None on rows written before it was recorded)
    first_due_at: datetime | None = None


@dataclass
class BatchFacts:
    contacts: dict[int, Any] = field(default_factory=dict)
    carts: dict[tuple[str, str], Any] = field(default_factory=dict)
    orders: dict[tuple[str, str], Any] = field(default_factory=dict)
    last_orders: dict[int, datetime] = field(default_factory=dict)
    #: (store, kind, contact) -> latest entry into the program
    last_entries: dict[tuple[str, str, int], datetime] = field(default_factory=dict)
    #: trigger id -> (viewed products left, first view of the session)
    browse: dict[int, tuple[int, datetime | None]] = field(default_factory=dict)


def load(conn: Connection, settings: Settings, triggers: Iterable[TriggerRef], *, entries: bool = True) -> BatchFacts:
    triggers = list(triggers)
    facts = BatchFacts()
    if not triggers:
        return facts
    contact_ids = sorted({t.contact_id for t in triggers})
    for row in conn.execute(sa.select(CT.c.id, CT.c.email, CT.c.mobile_number, CT.c.dotdigital_contact_id,
                                      CT.c.dd_email_status, CT.c.dd_email_status_at, CT.c.dd_sms_status,
                                      CT.c.dd_sms_status_at, CT.c.shop_email_consent, CT.c.shop_email_consent_at,
                                      CT.c.shop_sms_consent, CT.c.shop_sms_consent_at)
                            .where(CT.c.id.in_(contact_ids))):
        facts.contacts[row.id] = row
    carts = {(t.store_key, t.subject_id) for t in triggers if t.subject_type == rules.SUBJECT_CART}
    for store_key in {s for s, _ in carts}:
        ids = sorted(c for s, c in carts if s == store_key)
        for row in conn.execute(sa.select(CA).where(CA.c.store_key == store_key, CA.c.cart_id.in_(ids))):
            facts.carts[(store_key, row.cart_id)] = row
    orders = {(_project(settings, t.store_key), t.subject_id) for t in triggers if t.subject_type == rules.SUBJECT_ORDER}
    for project in {p for p, _ in orders}:
        ids = sorted(o for p, o in orders if p == project)
        for row in conn.execute(sa.select(OS.c.project_key, OS.c.order_id, OS.c.order_state, OS.c.total,
                                          OS.c.refund_total).where(OS.c.project_key == project,
                                                                   OS.c.order_id.in_(ids))):
            facts.orders[(row.project_key, row.order_id)] = row
    for contact_id, last in conn.execute(sa.select(OS.c.contact_id, sa.func.max(OS.c.created_at))
                                         .where(OS.c.contact_id.in_(contact_ids)).group_by(OS.c.contact_id)):
        facts.last_orders[contact_id] = aware(last)
    if entries:
        facts.last_entries = last_entries(conn, triggers)
    for t in triggers:
        if t.subject_type == rules.SUBJECT_BROWSE:
            facts.browse[t.id] = _browse_session(conn, t, facts.last_entries.get((t.store_key, t.program_kind,
                                                                                  t.contact_id)))
    return facts


def last_entries(conn: Connection, triggers: Iterable[TriggerRef]) -> dict[tuple[str, str, int], datetime]:
    """The latest entry (step 1 sent or being enrolled) of each trigger's contact into its store's program."""
    triggers = list(triggers)
    out: dict[tuple[str, str, int], datetime] = {}
    contact_ids = sorted({t.contact_id for t in triggers})
    kinds = sorted({t.program_kind for t in triggers})
    if not contact_ids:
        return out
    own = [t.id for t in triggers]
    rows = conn.execute(
        sa.select(PT.c.store_key, PT.c.program_kind, PT.c.contact_id, sa.func.max(PT.c.decided_at))
        .where(PT.c.contact_id.in_(contact_ids), PT.c.program_kind.in_(kinds), PT.c.step == 1,
               PT.c.status.in_(ENTERED), PT.c.id.not_in(own))
        .group_by(PT.c.store_key, PT.c.program_kind, PT.c.contact_id))
    for store_key, kind, contact_id, last in rows:
        if last is not None:
            out[(store_key, kind, contact_id)] = aware(last)
    return out


def _browse_session(conn: Connection, t: TriggerRef, last_entry: datetime | None) -> tuple[int, datetime | None]:
    """Products viewed in the session the trigger belongs to (after the last browse entry, up to the view
    that set the timer) that were not put in a cart since, and the session's first view."""
    last_view = datetime.fromtimestamp(t.subject_version / 1000, tz=timezone.utc)
    start = last_view - BROWSE_SESSION
    if last_entry is not None and last_entry > start:
        start = last_entry
    count, first = conn.execute(
        sa.select(sa.func.count(), sa.func.min(PV.c.viewed_at)).where(
            PV.c.store_key == t.store_key, PV.c.contact_id == t.contact_id, PV.c.viewed_at > start,
            PV.c.viewed_at <= last_view + timedelta(milliseconds=1))).one()
    return int(count or 0), (aware(first) if first is not None else None)


def _project(settings: Settings, store_key: str) -> str:
    store = settings.stores.get(store_key)
    return store.commercetools_project if store is not None else ""


def aware(value: datetime) -> datetime:
    """Aggregates (``max``) bypass the column type on SQLite: add the UTC offset the column type would."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def facts_for(t: TriggerRef, batch: BatchFacts, settings: Settings, now: datetime) -> rules.TriggerFacts:
    """The :class:`TriggerFacts` of trigger ``t`` (the plugin's answer is added by the processor)."""
    cfg: ProgramsConfig = settings.programs
    store = settings.stores.get(t.store_key)
    program = store.programs.get(t.program_kind) if store is not None else None
    contact = batch.contacts.get(t.contact_id)
    values: dict[str, Any] = dict(
        program_kind=t.program_kind, subject_type=t.subject_type, subject_version=t.subject_version, step=t.step,
        now=now, enabled=program is not None and program.enabled and contact is not None,
        last_order_at=batch.last_orders.get(t.contact_id),
        last_entry_at=batch.last_entries.get((t.store_key, t.program_kind, t.contact_id)),
        contact_wait_seconds=cfg.contact_wait_seconds,
    )
    if program is not None and store is not None:
        values.update(strategy=program.strategy, channel=program.channel,
                      retrigger_window_hours=program.retrigger_window_hours, time_zone=store.time_zone,
                      quiet_hours=program.quiet_hours, first_due_at=t.first_due_at,
                      max_age_hours=program.max_age_hours,
                      contact_wait_until=t.created_at + timedelta(minutes=program.steps_minutes[-1])
                      + CONTACT_WAIT_LIMIT)
    if contact is not None:
        channel = values.get("channel", "email")
        values.update(
            has_email=bool(contact.email), has_mobile=bool(contact.mobile_number),
            dotdigital_contact_known=contact.dotdigital_contact_id is not None,
            channel_status=rules.channel_status(
                getattr(contact, f"dd_{channel}_status"), getattr(contact, f"dd_{channel}_status_at"),
                getattr(contact, f"shop_{channel}_consent"), getattr(contact, f"shop_{channel}_consent_at")))
    if t.subject_type == rules.SUBJECT_CART:
        cart = batch.carts.get((t.store_key, t.subject_id))
        if cart is not None:
            values.update(cart_state=cart.state, cart_version=cart.version, cart_line_item_count=cart.line_item_count,
                          cart_merged=cart.merged_into is not None, cart_ordered=cart.order_id is not None,
                          cart_attributed=cart.contact_id is not None, since=cart.last_modified_at)
    elif t.subject_type == rules.SUBJECT_ORDER:
        order = batch.orders.get((_project(settings, t.store_key), t.subject_id))
        if order is not None:
            values.update(order_cancelled=order.order_state == "Cancelled",
                          order_refunded=order.total > 0 and order.refund_total >= order.total)
    elif t.subject_type == rules.SUBJECT_BROWSE:
        count, first = batch.browse.get(t.id, (0, None))
        values.update(browse_products=count, since=first)
    return rules.TriggerFacts(**values)
