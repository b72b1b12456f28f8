"""Cart state: the ``cart`` table (one row per store and cart), written in the unit of work of every cart
signal - a ``cart_updated`` behavioural event, the cart watcher, a ``ResourceCreated`` change notification
for a cart, and the order placed from a cart.

Rules:

- **Versions only move forward.** A cart version not newer than the row's is stale and changes nothing,
  with one exception: the same version may still attribute a cart that had no contact yet. An Ordered or
  Merged cart never becomes Active again (commercetools: both states are final).
  A signal without a version gets the cart's lastModifiedAt in epoch milliseconds (``effective_version``),
  so a later change always wins and restarts the cart's timer.
- **Attribution.** A cart belongs to the contact of its ``customerId``, else of its ``customerEmail`` (the
  caller's identity of a behavioural event comes first). A cart with only an ``anonymousId`` belongs to the
  contact that anonymous id was linked to, else to nobody yet: no CartInsight, no trigger. When a cart is
  attributed and carries an ``anonymousId``, that id is linked to the contact (a contact identifier) and
  the store's other carts of that anonymous id without a contact are attributed too.
- **Merge at login** (commercetools HTTP API: Customers, "Sign-in"): the anonymous cart is merged into the
  customer's active cart and becomes ``Merged``. Its pending triggers are cancelled and it points at the
  cart it went into (``merged_into``), so it counts once, as that cart.
- **CartInsight** goes to the attributed contact for every version that is not Merged, an empty cart
  included (a program can then let the contact go); ``ORDER_COMPLETE`` is sent again when the order is
  placed.

Everything here runs inside the caller's transaction; ``ctdd.ingest.triggers`` passes the facts on to the
programs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.config import StoreConfig
from ctdd.db.engine import utcnow
from ctdd.db.models import Cart, CartStatus, FieldState, RejectedRecord
from ctdd.delivery import outbox
from ctdd.domain.collections import CART_COLLECTION
from ctdd.domain.commerce import CART_PHASE_COMPLETE, CartContext, cart_record, parse_ts
from ctdd.domain import programs as rules
from ctdd.domain.contact import ContactInput, Identity, SourceStamp
from ctdd.domain.identity import InvalidIdentifier, normalise_email
from ctdd.ingest import triggers
from ctdd.ingest.contact_sync import ContactSync, NewContactNeedsAddress
from ctdd.hooks.types import HookContext, PluginFailed

log = logging.getLogger(__name__)

ACTIVE, ORDERED, MERGED, FROZEN = CartStatus.ACTIVE, CartStatus.ORDERED, CartStatus.MERGED, CartStatus.FROZEN
#: states whose pending triggers are cancelled
CLOSED = frozenset({ORDERED, MERGED, FROZEN})
#: states a cart never leaves
FINAL = frozenset({ORDERED, MERGED})

#: a cart version at least this large was derived from the cart's lastModifiedAt (epoch milliseconds), not
#: given by commercetools (whose versions count changes from 1)
DERIVED_VERSION_MIN = 10**12

#: ``enqueue_insight(session, contact_id, store, collection, record_id, record, source, priority)``
EnqueueInsight = Callable[[Session, int, StoreConfig, str, str, dict, SourceStamp, int], "int | None"]


@dataclass(frozen=True)
class CartSnapshot:
    """One version of a commercetools cart, as the cart table and the programs see it."""

    cart_id: str
    #: None: unknown (a behavioural event without a version); :meth:`CartApplier.apply` then derives one from
    #: ``last_modified_at`` (see :func:`effective_version`)
    version: int | None
    state: str
    customer_id: str | None
    email: str | None
    anonymous_id: str | None
    line_item_count: int
    product_ids: tuple[str, ...]
    last_modified_at: datetime
    #: the cart as commercetools represents it (for the CartInsight record)
    cart: Mapping[str, Any]
    #: the record's modifiedDate when the cart has no lastModifiedAt
    modified_text: str = ""


def snapshot(cart_id: str, cart: Mapping[str, Any], *, version: int | None, fallback_time: datetime,
             modified_text: str = "") -> CartSnapshot:
    """The facts of ``cart`` (a commercetools Cart; ``version`` wins over the cart's own field)."""
    try:
        email = normalise_email(cart["customerEmail"]) if cart.get("customerEmail") else None
    except InvalidIdentifier:
        email = None
    if version is None and isinstance(cart.get("version"), int):
        version = cart["version"]
    items = [li for li in cart.get("lineItems") or [] if isinstance(li, Mapping)]
    modified = cart.get("lastModifiedAt")
    return CartSnapshot(
        cart_id=str(cart_id), version=int(version) if version else None,
        state=str(cart.get("cartState") or ACTIVE),
        customer_id=str(cart["customerId"]) if cart.get("customerId") else None,
        email=email,
        anonymous_id=str(cart["anonymousId"]) if cart.get("anonymousId") else None,
        line_item_count=len(items),
        product_ids=tuple(dict.fromkeys(str(li["productId"]) for li in items if li.get("productId"))),
        last_modified_at=(parse_ts(modified) if isinstance(modified, str) else None) or fallback_time,
        cart=cart, modified_text=modified_text,
    )


def effective_version(snap: CartSnapshot, stored: Mapping[str, Any] | None) -> int:
    """The version ``snap`` is applied as. A cart without a version gets its lastModifiedAt in epoch
    milliseconds (a later change always wins and restarts its timer); once a cart's row holds such a derived
    version, every later snapshot of it is compared by lastModifiedAt the same way (a commercetools version,
    counting from 1, would otherwise look older)."""
    derived = rules.epoch_ms(snap.last_modified_at)
    if snap.version is None:
        return derived
    if stored is not None and (stored.get("version") or 0) >= DERIVED_VERSION_MIN:
        return derived
    return snap.version


def cart_context(store: StoreConfig, modified_text: str = "") -> CartContext:
    return CartContext(store_key=store.key, locale=store.locale, currency=store.currency,
                       product_url_template=store.product_url_template, cart_url_template=store.cart_url_template,
                       modified_at=modified_text)


@dataclass
class CartApplied:
    """What applying a cart signal did."""

    outcome: str = "applied"  # applied | stale
    reason: str = ""
    contact_id: int | None = None
    outbox_message_ids: list[int] = field(default_factory=list)


# -- the cart table ------------------------------------------------------------------------------------
_C = Cart.__table__
_KEY = (_C.c.store_key == sa.bindparam("store_key"), _C.c.cart_id == sa.bindparam("cart_id"))
_LOCK = sa.select(_C).where(*_KEY).with_for_update()


def lock_row(session: Session, store_key: str, cart_id: str) -> Mapping[str, Any] | None:
    """The cart's row, locked for this transaction (None: not known yet)."""
    session.flush()
    row = session.connection().execute(_LOCK, {"store_key": store_key, "cart_id": cart_id}).first()
    return None if row is None else dict(row._mapping)


def write_row(session: Session, store_key: str, cart_id: str, stored: Mapping[str, Any] | None,
              values: Mapping[str, Any]) -> None:
    """Insert the cart's row, or update ``stored`` (the locked row) with ``values``."""
    conn = session.connection()
    now = utcnow()
    if stored is None:
        row = {"store_key": store_key, "cart_id": cart_id, "contact_id": None, "customer_id": None,
               "anonymous_id": None, "line_item_count": 0, "order_id": None, "ordered_at": None,
               "merged_into": None, **values, "updated_at": now}
        conn.execute(sa.insert(_C).values(**row))  # a concurrent first insert: IntegrityError, the unit re-runs
    else:
        conn.execute(sa.update(_C).where(_C.c.store_key == store_key, _C.c.cart_id == cart_id)
                     .values(**values, updated_at=now))


def link_anonymous(session: Session, store_key: str, anonymous_id: str, contact_id: int,
                   except_cart: str) -> list[Mapping[str, Any]]:
    """Attribute the store's other carts of ``anonymous_id`` that have no contact yet; returns their rows (as
    they were before, locked for this transaction)."""
    conn = session.connection()
    where = (_C.c.store_key == store_key, _C.c.anonymous_id == anonymous_id, _C.c.contact_id.is_(None),
             _C.c.cart_id != except_cart)
    rows = [dict(r._mapping) for r in conn.execute(sa.select(_C).where(*where).with_for_update())]
    if rows:
        conn.execute(sa.update(_C).where(*where, _C.c.cart_id.in_([r["cart_id"] for r in rows]))
                     .values(contact_id=contact_id, updated_at=utcnow()))
    return rows


def merge_target(session: Session, store_key: str, cart_id: str, customer_id: str | None,
                 contact_id: int | None) -> str | None:
    """The cart a Merged cart went into: the customer's (else the contact's) latest Active cart."""
    owner = []
    if customer_id:
        owner.append(_C.c.customer_id == customer_id)
    if contact_id is not None:
        owner.append(_C.c.contact_id == contact_id)
    if not owner:
        return None
    row = session.connection().execute(
        sa.select(_C.c.cart_id).where(_C.c.store_key == store_key, _C.c.state == ACTIVE, _C.c.cart_id != cart_id,
                                      sa.or_(*owner))
        .order_by(_C.c.last_modified_at.desc()).limit(1)).first()
    return None if row is None else row.cart_id


def adopt_merged(session: Session, store_key: str, into_cart: str, customer_id: str, contact_id: int) -> None:
    """Point Merged carts of this customer that did not know their target yet at ``into_cart``."""
    session.connection().execute(
        sa.update(_C).where(_C.c.store_key == store_key, _C.c.state == MERGED, _C.c.merged_into.is_(None),
                            _C.c.cart_id != into_cart,
                            sa.or_(_C.c.customer_id == customer_id, _C.c.contact_id == contact_id))
        .values(merged_into=into_cart, updated_at=utcnow()))


def _insight_sent(session: Session, contact_id: int, cart_id: str) -> bool:
    fs = FieldState.__table__
    return session.connection().execute(
        sa.select(fs.c.field).where(fs.c.contact_id == contact_id,
                                    fs.c.field == f"insight.{CART_COLLECTION}.{cart_id}")).first() is not None


class CartApplier:
    """Applies cart signals inside a unit of work: contact, cart row, CartInsight record, triggers."""

    def __init__(self, contact_sync: ContactSync, enqueue_insight: EnqueueInsight):
        self.contact_sync = contact_sync
        self.enqueue_insight = enqueue_insight

    # -- a version of a cart -----------------------------------------------------------------------
    def apply(self, session: Session, store: StoreConfig, snap: CartSnapshot, identity: Identity | None = None,
              *, priority: int = outbox.PRIORITY_LIVE) -> CartApplied:
        """Apply one cart version; ``identity`` is the caller's (a behavioural event's), if any."""
        result = CartApplied()
        stored = lock_row(session, store.key, snap.cart_id)
        snap = replace(snap, version=effective_version(snap, stored))
        ident, cart_email = _identity(snap, identity)
        stale = _stale(stored, snap, ident)
        if stale:
            result.outcome, result.reason = "stale", stale
            return result
        contact_id, suppressed = self._contact(session, store, snap, ident, cart_email, priority, result)
        if stored is not None and contact_id is None and snap.version == stored["version"]:
            result.outcome, result.reason = "stale", f"cart version {snap.version} is not newer than the last applied"
            return result
        owner = contact_id if contact_id is not None else (stored or {}).get("contact_id")
        result.contact_id = owner
        merged_into = None
        if snap.state == MERGED:
            merged_into = (stored or {}).get("merged_into") or merge_target(
                session, store.key, snap.cart_id, snap.customer_id, owner)
        version = snap.version
        write_row(session, store.key, snap.cart_id, stored, {
            "version": version, "contact_id": owner, "state": snap.state,
            "customer_id": snap.customer_id or (stored or {}).get("customer_id"),
            "anonymous_id": snap.anonymous_id or (stored or {}).get("anonymous_id"),
            "line_item_count": snap.line_item_count, "last_modified_at": snap.last_modified_at,
            "merged_into": merged_into,
        })
        linked = []
        if owner is not None and snap.anonymous_id:
            linked = link_anonymous(session, store.key, snap.anonymous_id, owner, snap.cart_id)
        if owner is not None and snap.customer_id and snap.state == ACTIVE:
            adopt_merged(session, store.key, snap.cart_id, snap.customer_id, owner)
        attributed = owner if not suppressed else None
        if attributed is not None:
            # the anonymous carts just attributed start their timers as a cart attributed directly does
            for row in linked:
                if row["state"] == ACTIVE:
                    triggers.cart_changed(session, store, triggers.CartFacts(
                        row["cart_id"], int(row["version"] or 0), attributed, row["state"], row["line_item_count"],
                        row["last_modified_at"]), utcnow())
        if attributed is not None and snap.state != MERGED:
            record = self._mapped(session, store, snap.cart, snap.cart_id, version,
                                  cart_record(snap.cart_id, snap.cart, cart_context(store, snap.modified_text)))
            mid = record is not None and self.enqueue_insight(
                session, attributed, store, CART_COLLECTION, snap.cart_id, record,
                SourceStamp("cart", snap.cart_id, version, snap.last_modified_at), priority)
            if mid:
                result.outbox_message_ids.append(mid)
        now = utcnow()
        if snap.state == ACTIVE:
            triggers.cart_changed(session, store, triggers.CartFacts(
                snap.cart_id, int(version or 0), attributed, snap.state, snap.line_item_count, snap.last_modified_at),
                now)
            if attributed is not None:
                triggers.products_added_to_cart(session, store, attributed, list(snap.product_ids), now)
        elif snap.state in CLOSED:
            triggers.cart_closed(session, store, snap.cart_id, snap.state, now,
                                 order_id=(stored or {}).get("order_id"), merged_into=merged_into)
        return result

    def _contact(self, session: Session, store: StoreConfig, snap: CartSnapshot, ident: Identity,
                 cart_email: bool, priority: int, result: CartApplied) -> tuple[int | None, bool]:
        """The contact the cart belongs to (None: not attributable yet) and whether plugins suppress it."""
        if ident.customer_id and cart_email and self.contact_sync.known_customer(session, store.key,
                                                                                 ident.customer_id):
            # a known customer keeps its own email: a cart with another address must not move it
            ident = Identity(customer_id=ident.customer_id, anonymous_id=ident.anonymous_id)
        if ident.is_empty():
            return None, False
        contact = ContactInput(store_key=store.key, identity=ident, source=SourceStamp(modified_at=snap.last_modified_at))
        mapped, suppression = self.contact_sync.map_contact(contact)
        try:
            synced = self.contact_sync.apply(session, contact, dict(mapped), list(suppression), priority=priority)
        except NewContactNeedsAddress:
            return None, False
        result.outbox_message_ids.extend(synced.outbox_message_ids)
        return synced.contact_id, bool(synced.suppression_reasons)

    # -- the order placed from a cart --------------------------------------------------------------
    def order_placed(self, session: Session, store: StoreConfig, cart_id: str, order: Mapping[str, Any],
                     contact_id: int, *, cart: Mapping[str, Any] | None, priority: int) -> list[int]:
        """Mark the cart Ordered (once) and cancel its triggers; when its CartInsight record was sent, send
        it again as ``ORDER_COMPLETE`` (from ``cart`` as commercetools now has it, else from the order)."""
        stored = lock_row(session, store.key, cart_id)
        if stored is not None and stored["state"] == ORDERED and stored["order_id"]:
            return []
        order_id = str(order["id"])
        ordered_at = parse_ts(order.get("createdAt")) or utcnow()
        version = (stored or {}).get("version", 0)
        if cart is not None and isinstance(cart.get("version"), int):
            version = max(version, cart["version"])
        owner = (stored or {}).get("contact_id") or contact_id
        write_row(session, store.key, cart_id, stored, {
            "version": version, "contact_id": owner, "state": ORDERED, "order_id": order_id,
            "ordered_at": ordered_at,
            "customer_id": (stored or {}).get("customer_id") or order.get("customerId"),
            "anonymous_id": (stored or {}).get("anonymous_id") or order.get("anonymousId"),
            "line_item_count": len(order.get("lineItems") or []),
            "last_modified_at": (stored or {}).get("last_modified_at") or ordered_at,
        })
        triggers.cart_closed(session, store, cart_id, ORDERED, utcnow(), order_id=order_id)
        if stored is None or stored["contact_id"] is None or not _insight_sent(session, stored["contact_id"], cart_id):
            return []
        # without the cart, the order is its last state (it does not know when the cart was created)
        source = cart if cart is not None else {**order, "createdAt": None, "lastModifiedAt": order.get("createdAt")}
        record = self._mapped(session, store, source, cart_id, version,
                              cart_record(cart_id, source, cart_context(store), phase=CART_PHASE_COMPLETE))
        if record is None:
            return []
        mid = self.enqueue_insight(session, stored["contact_id"], store, CART_COLLECTION, cart_id, record,
                                   SourceStamp("cart", cart_id, version, ordered_at), priority)
        return [mid] if mid else []

    def _mapped(self, session: Session, store: StoreConfig, cart: Mapping[str, Any], cart_id: str,
                version: int | None, record: dict) -> dict | None:
        """The CartInsight record after the plugins (``ctdd_map_cart``); None when a plugin failed it: the
        record is not sent, a rejected record names the plugin and the hook, the rest of the cart applies."""
        try:
            return self.contact_sync.hooks.map_cart(HookContext(store=store, settings=self.contact_sync.settings),
                                                    cart, record)
        except PluginFailed as exc:
            reason = f"CartInsight record not sent: {exc}"
            log.warning("cart %s of store %s: %s", cart_id, store.key, reason)
            session.add(RejectedRecord(operation="TrackEvent", store_key=store.key[:100], record_type="cart",
                                       record_id=cart_id[:200], record_version=version, reason=reason[:2000],
                                       created_at=utcnow()))
            return None


def _identity(snap: CartSnapshot, caller: Identity | None) -> tuple[Identity, bool]:
    """The cart's identity (the caller's identifiers first, the cart's fill the gaps) and whether its email
    came from the cart's ``customerEmail``."""
    caller = caller or Identity()
    email = caller.email or snap.email
    return Identity(customer_id=caller.customer_id or snap.customer_id, email=email,
                    mobile_number=caller.mobile_number,
                    anonymous_id=caller.anonymous_id or snap.anonymous_id), bool(email and not caller.email)


def _stale(stored: Mapping[str, Any] | None, snap: CartSnapshot, ident: Identity) -> str:
    """Why ``snap`` changes nothing ("" when it may)."""
    if stored is None:
        return ""
    if stored["state"] in FINAL and snap.state == ACTIVE:
        return f"cart is {stored['state']} already"
    if snap.version is None:
        return ""
    if snap.version < stored["version"]:
        return f"cart version {snap.version} is not newer than the last applied ({stored['version']})"
    if snap.version == stored["version"]:
        could_attribute = stored["contact_id"] is None and (ident.customer_id or ident.email or ident.mobile_number
                                                            or ident.anonymous_id)
        if not could_attribute:
            return f"cart version {snap.version} is not newer than the last applied"
    return ""
