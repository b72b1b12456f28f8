"""Trigger timers, written in the same transaction as the change that causes them.

Every function here runs inside an ingest unit of work (``session`` is its open transaction) and only writes
``program_trigger`` rows (and ``product_view`` rows); nothing calls Dotdigital here. Whether a due trigger is
really sent is decided later by ``ctdd.programs.processor``, which checks every safeguard again.

Callers (``ctdd.ingest.events``, the cart watcher) pass facts, not protobuf or commercetools JSON:
:class:`CartFacts` for a cart, ids and times for orders and views. ``now`` is the caller's clock (virtual in
``ctdd simulate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ctdd.config import ProgramConfig, StoreConfig
from ctdd.db.models import CartStatus, ProductView, ProgramTrigger, TriggerStatus
from ctdd.domain import programs as rules
from ctdd.programs.leases import insert_ignore

PT = ProgramTrigger.__table__
PV = ProductView.__table__

#: statuses a subject change can still cancel: not decided yet, or decided "send" but waiting for its
#: enrolment batch (``enrolling`` without an enrolment call)
_OPEN = (TriggerStatus.PENDING, TriggerStatus.CLAIMED)


@dataclass(frozen=True)
class CartFacts:
    """What scheduling needs to know of one cart version (already written to the ``cart`` table)."""

    cart_id: str
    version: int
    #: the contact the cart is attributed to; None for an anonymous cart without an email
    contact_id: int | None
    #: commercetools cartState: Active | Ordered | Merged | Frozen
    state: str
    line_item_count: int
    #: the cart's lastModifiedAt: timers run from the latest change
    last_modified_at: datetime


def enabled_program(store: StoreConfig, kind: str) -> ProgramConfig | None:
    """The store's program of ``kind`` when configured and enabled."""
    program = store.programs.get(kind)
    return program if program is not None and program.enabled else None


def cancel_triggers(session: Session, store_key: str, subject_type: str, subject_id: str, reason: str,
                    now: datetime, *, kinds: tuple[str, ...] | None = None, below_version: int | None = None) -> int:
    """Cancel the undecided triggers of a subject (those not sent yet: pending, claimed by a processor, or
    waiting for their enrolment batch); returns how many. A processor holding one of them finds it cancelled
    when it records its decision, and records nothing."""
    conditions = [PT.c.store_key == store_key, PT.c.subject_type == subject_type, PT.c.subject_id == subject_id,
                  sa.or_(PT.c.status.in_(_OPEN),
                         sa.and_(PT.c.status == TriggerStatus.ENROLLING, PT.c.enrolment_call_id.is_(None)))]
    if kinds is not None:
        conditions.append(PT.c.program_kind.in_(kinds))
    if below_version is not None:
        conditions.append(PT.c.subject_version < below_version)
    return session.connection().execute(
        sa.update(PT).where(*conditions).values(status=TriggerStatus.CANCELLED, reason=reason, decided_at=now,
                                                lease_owner=None, lease_expires_at=None)
    ).rowcount


def schedule(session: Session, store: StoreConfig, kind: str, *, contact_id: int, subject_type: str,
             subject_id: str, version: int, due_at: datetime, now: datetime, step: int = 1) -> bool:
    """Write one trigger; False when it exists already (one per store, kind, subject, version and step)."""
    return bool(insert_ignore(session.connection(), PT, [{
        "store_key": store.key, "account": store.account, "program_kind": kind, "contact_id": contact_id,
        "subject_type": subject_type, "subject_id": subject_id, "subject_version": version, "step": step,
        "due_at": due_at, "first_due_at": due_at, "status": TriggerStatus.PENDING, "reason": None, "attempts": 0, "created_at": now,
    }]))


def _newest_version(session: Session, store_key: str, kind: str, subject_type: str, subject_id: str) -> int | None:
    return session.connection().execute(
        sa.select(sa.func.max(PT.c.subject_version)).where(
            PT.c.store_key == store_key, PT.c.program_kind == kind, PT.c.subject_type == subject_type,
            PT.c.subject_id == subject_id)
    ).scalar_one_or_none()


_CLOSED_REASONS = {CartStatus.ORDERED: rules.CART_ORDERED, CartStatus.MERGED: rules.CART_MERGED,
                   CartStatus.FROZEN: rules.CART_FROZEN}


def on_cart_changed(session: Session, store: StoreConfig, cart: CartFacts, now: datetime) -> None:
    """A cart was created or changed (or became attributable). Cancels the pending abandoned-cart triggers of
    older versions of this cart and, for an Active non-empty attributed cart, schedules the steps of the
    store's abandoned_cart program for this version (one trigger per cart version and step at most)."""
    if cart.state != CartStatus.ACTIVE:
        on_cart_closed(session, store, cart.cart_id, cart.state, now)
        return
    reason = rules.CART_EMPTIED if cart.line_item_count <= 0 else rules.CART_CHANGED
    cancel_triggers(session, store.key, rules.SUBJECT_CART, cart.cart_id, reason, now,
                    below_version=cart.version + (1 if cart.line_item_count <= 0 else 0))
    program = enabled_program(store, rules.ABANDONED_CART)
    if program is None or cart.line_item_count <= 0 or cart.contact_id is None:
        return
    newest = _newest_version(session, store.key, rules.ABANDONED_CART, rules.SUBJECT_CART, cart.cart_id)
    if newest is not None and newest > cart.version:
        return  # an older version arriving late: the newer one has its timer already
    schedule(session, store, rules.ABANDONED_CART, contact_id=cart.contact_id, subject_type=rules.SUBJECT_CART,
             subject_id=cart.cart_id, version=cart.version,
             due_at=cart.last_modified_at + timedelta(minutes=program.delay_minutes), now=now)


def on_cart_closed(session: Session, store: StoreConfig, cart_id: str, state: str, now: datetime, *,
                   order_id: str | None = None, merged_into: str | None = None) -> None:
    """A cart was ordered, merged into another cart at login, or frozen: its pending triggers are cancelled
    with that reason."""
    reason = _CLOSED_REASONS.get(state, rules.CART_ORDERED if order_id else rules.CART_MERGED if merged_into
                                 else rules.CART_CHANGED)
    cancel_triggers(session, store.key, rules.SUBJECT_CART, cart_id, reason, now)


def on_order_placed(session: Session, store: StoreConfig, contact_id: int, order_id: str, placed_at: datetime,
                    now: datetime, *, first_order: bool, cart_id: str | None = None) -> None:
    """An order was created (not imported: a historical order is no purchase now). Schedules
    post_purchase_first or post_purchase_repeat. The contact's pending abandoned-cart and browse triggers are
    left to the processor, which skips them ("ordered since") when they fall due; those of the ordered cart
    (``cart_id``) are cancelled at once ("cart_ordered")."""
    if cart_id:
        cancel_triggers(session, store.key, rules.SUBJECT_CART, cart_id, rules.CART_ORDERED, now)
    kind = rules.POST_PURCHASE_FIRST if first_order else rules.POST_PURCHASE_REPEAT
    program = enabled_program(store, kind)
    if program is None:
        return
    schedule(session, store, kind, contact_id=contact_id, subject_type=rules.SUBJECT_ORDER, subject_id=order_id,
             version=0, due_at=placed_at + timedelta(minutes=program.delay_minutes), now=now)


def on_order_cancelled(session: Session, store: StoreConfig, order_id: str, reason: str, now: datetime) -> None:
    """An order was cancelled or fully refunded: its pending post-purchase and review triggers are cancelled.
    ``reason``: ``order_cancelled`` or ``order_refunded``."""
    cancel_triggers(session, store.key, rules.SUBJECT_ORDER, order_id, reason or rules.ORDER_CANCELLED, now,
                    kinds=rules.ORDER_KINDS)


def on_order_moved(session: Session, store: StoreConfig, order_id: str, old_contact_id: int, new_contact_id: int,
                   now: datetime) -> int:
    """An order now belongs to another contact (its email corrected, a customer set on a guest order): its
    pending post-purchase and review triggers go to that contact instead (the program is for whoever placed
    the order, never the address it was first written with); returns how many. A trigger a processor is
    deciding at this moment keeps its contact."""
    return session.connection().execute(
        sa.update(PT).where(PT.c.store_key == store.key, PT.c.subject_type == rules.SUBJECT_ORDER,
                            PT.c.subject_id == order_id, PT.c.contact_id == old_contact_id,
                            PT.c.status == TriggerStatus.PENDING, PT.c.program_kind.in_(rules.ORDER_KINDS))
        .values(contact_id=new_contact_id)
    ).rowcount


def on_shipment_delivered(session: Session, store: StoreConfig, contact_id: int, order_id: str,
                          delivered_at: datetime, now: datetime) -> None:
    """An order's shipment state became Delivered: schedules review_request."""
    program = enabled_program(store, rules.REVIEW_REQUEST)
    if program is None:
        return
    schedule(session, store, rules.REVIEW_REQUEST, contact_id=contact_id, subject_type=rules.SUBJECT_ORDER,
             subject_id=order_id, version=0, due_at=delivered_at + timedelta(minutes=program.delay_minutes), now=now)


def on_product_viewed(session: Session, store: StoreConfig, contact_id: int, product_id: str, viewed_at: datetime,
                      now: datetime, *, data: dict | None = None) -> None:
    """A contact viewed a product: the view is remembered (``product_view``) and the contact's browse-abandonment
    timer restarts from this view (after a quiet period without views it falls due).

    The browse trigger's subject is ``browse/<contact id>`` and its version the view time in epoch
    milliseconds: a later view cancels the earlier timer ("viewed_again") and sets its own."""
    program = enabled_program(store, rules.BROWSE_ABANDONMENT)
    if program is None:
        return
    conn = session.connection()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(PV).values(store_key=store.key, contact_id=contact_id, product_id=product_id,
                                     viewed_at=viewed_at, data=data)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[PV.c.store_key, PV.c.contact_id, PV.c.product_id],
        set_={"viewed_at": stmt.excluded.viewed_at, "data": stmt.excluded.data},
        where=PV.c.viewed_at < stmt.excluded.viewed_at))
    version = rules.epoch_ms(viewed_at)
    subject_id = str(contact_id)
    cancel_triggers(session, store.key, rules.SUBJECT_BROWSE, subject_id, rules.VIEWED_AGAIN, now,
                    kinds=(rules.BROWSE_ABANDONMENT,), below_version=version)
    newest = _newest_version(session, store.key, rules.BROWSE_ABANDONMENT, rules.SUBJECT_BROWSE, subject_id)
    if newest is not None and newest >= version:
        return  # a later view has its timer already
    schedule(session, store, rules.BROWSE_ABANDONMENT, contact_id=contact_id, subject_type=rules.SUBJECT_BROWSE,
             subject_id=subject_id, version=version, due_at=viewed_at + timedelta(minutes=program.delay_minutes),
             now=now)


@dataclass(frozen=True)
class View:
    """One product view of a batch (``on_products_viewed``)."""

    contact_id: int
    product_id: str
    viewed_at: datetime
    data: dict | None


def on_products_viewed(session: Session, store: StoreConfig, views: list[View], now: datetime) -> None:
    """:func:`on_product_viewed` for many views at once (the set-based apply path): the same rows as calling it
    for each view in order, with a few statements for the whole list.

    The views are remembered with one multi-row upsert (a later view of a product wins). Per contact, calling
    ``on_product_viewed`` view after view cancels every undecided timer older than each view and adds a timer
    for each view newer than every timer before it; here the contacts' timers are read once, that sequence is
    played in memory, and the result written: one UPDATE cancelling the database's timers, one INSERT of the
    new ones (those a later view of the batch cancelled are inserted cancelled)."""
    program = enabled_program(store, rules.BROWSE_ABANDONMENT)
    if program is None or not views:
        return
    conn = session.connection()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(PV)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[PV.c.store_key, PV.c.contact_id, PV.c.product_id],
        set_={"viewed_at": stmt.excluded.viewed_at, "data": stmt.excluded.data},
        where=PV.c.viewed_at < stmt.excluded.viewed_at),
        [{"store_key": store.key, "contact_id": v.contact_id, "product_id": v.product_id, "viewed_at": v.viewed_at,
          "data": v.data} for v in views])
    subjects = sorted({str(v.contact_id) for v in views})
    kind, subject_type = rules.BROWSE_ABANDONMENT, rules.SUBJECT_BROWSE
    where = (PT.c.store_key == store.key, PT.c.program_kind == kind, PT.c.subject_type == subject_type,
             PT.c.subject_id.in_(subjects))
    newest: dict[str, int] = {sid: version for sid, version in conn.execute(
        sa.select(PT.c.subject_id, sa.func.max(PT.c.subject_version)).where(*where).group_by(PT.c.subject_id))}
    undecided = sa.or_(PT.c.status.in_(_OPEN),
                       sa.and_(PT.c.status == TriggerStatus.ENROLLING, PT.c.enrolment_call_id.is_(None)))
    open_rows: dict[str, list[tuple[int, int]]] = {}
    for tid, sid, version in conn.execute(sa.select(PT.c.id, PT.c.subject_id, PT.c.subject_version)
                                          .where(*where, undecided)):
        open_rows.setdefault(sid, []).append((tid, version))
    cancel_ids: list[int] = []
    new: list[dict] = []
    for v in views:
        sid, version = str(v.contact_id), rules.epoch_ms(v.viewed_at)
        kept = []
        for tid, older in open_rows.get(sid, ()):
            (cancel_ids if older < version else kept).append(tid if older < version else (tid, older))
        open_rows[sid] = kept
        for row in new:
            if row["subject_id"] == sid and row["status"] == TriggerStatus.PENDING and row["subject_version"] < version:
                row.update(status=TriggerStatus.CANCELLED, reason=rules.VIEWED_AGAIN, decided_at=now)
        if newest.get(sid) is not None and newest[sid] >= version:
            continue  # a later view has its timer already
        newest[sid] = version
        due_at = v.viewed_at + timedelta(minutes=program.delay_minutes)
        new.append({"store_key": store.key, "account": store.account, "program_kind": kind,
                    "contact_id": v.contact_id, "subject_type": subject_type, "subject_id": sid,
                    "subject_version": version, "step": 1, "due_at": due_at, "first_due_at": due_at,
                    "status": TriggerStatus.PENDING, "reason": None, "decided_at": None, "attempts": 0,
                    "created_at": now})
    if cancel_ids:
        conn.execute(sa.update(PT).where(PT.c.id.in_(cancel_ids), undecided).values(
            status=TriggerStatus.CANCELLED, reason=rules.VIEWED_AGAIN, decided_at=now, lease_owner=None,
            lease_expires_at=None))
    insert_ignore(conn, PT, new)


def on_product_added_to_cart(session: Session, store: StoreConfig, contact_id: int, product_ids: list[str],
                             now: datetime) -> None:
    """Products a contact put in a cart no longer count as browsed-and-abandoned: their views are forgotten, and
    a browse trigger left with no viewed product is skipped ("products_in_cart") when it falls due."""
    if not product_ids or enabled_program(store, rules.BROWSE_ABANDONMENT) is None:
        return
    session.connection().execute(sa.delete(PV).where(
        PV.c.store_key == store.key, PV.c.contact_id == contact_id, PV.c.product_id.in_(list(product_ids))))


def schedule_next_step(session: Session, store: StoreConfig, *, kind: str, contact_id: int, subject_type: str,
                       subject_id: str, version: int, step: int, sent_at: datetime, now: datetime) -> bool:
    """Step ``step`` of a series was sent at ``sent_at``: write the next step (reminders count from the previous
    step), if the program has one. The next step is checked again in full when it falls due."""
    program = enabled_program(store, kind)
    if program is None:
        return False
    due = rules.next_step_due(sent_at, step, program.steps_minutes)
    if due is None:
        return False
    return schedule(session, store, kind, contact_id=contact_id, subject_type=subject_type, subject_id=subject_id,
                    version=version, due_at=due, now=now, step=step + 1)
