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
from datetime import datetime

from sqlalchemy.orm import Session

from ctdd.config import StoreConfig


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


def on_cart_changed(session: Session, store: StoreConfig, cart: CartFacts, now: datetime) -> None:
    """A cart was created or changed (or became attributable). Cancels the pending abandoned-cart triggers of
    older versions of this cart and, for an Active non-empty attributed cart, schedules the steps of the
    store's abandoned_cart program for this version (one trigger per cart version and step at most)."""
    raise NotImplementedError


def on_cart_closed(session: Session, store: StoreConfig, cart_id: str, state: str, now: datetime, *,
                   order_id: str | None = None, merged_into: str | None = None) -> None:
    """A cart was ordered, merged into another cart at login, or frozen: its pending triggers are cancelled
    with that reason."""
    raise NotImplementedError


def on_order_placed(session: Session, store: StoreConfig, contact_id: int, order_id: str, placed_at: datetime,
                    now: datetime, *, first_order: bool, cart_id: str | None = None) -> None:
    """An order was created (not imported: a historical order is no purchase now). Schedules
    post_purchase_first or post_purchase_repeat. The contact's pending abandoned-cart and browse triggers are
    left to the processor, which skips them ("ordered since") when they fall due."""
    raise NotImplementedError


def on_order_cancelled(session: Session, store: StoreConfig, order_id: str, reason: str, now: datetime) -> None:
    """An order was cancelled or fully refunded: its pending post-purchase and review triggers are cancelled."""
    raise NotImplementedError


def on_shipment_delivered(session: Session, store: StoreConfig, contact_id: int, order_id: str,
                          delivered_at: datetime, now: datetime) -> None:
    """An order's shipment state became Delivered: schedules review_request."""
    raise NotImplementedError


def on_product_viewed(session: Session, store: StoreConfig, contact_id: int, product_id: str, viewed_at: datetime,
                      now: datetime, *, data: dict | None = None) -> None:
    """A contact viewed a product: the view is remembered (``product_view``) and the contact's browse-abandonment
    timer restarts from this view (after a quiet period without views it falls due)."""
    raise NotImplementedError


def on_product_added_to_cart(session: Session, store: StoreConfig, contact_id: int, product_ids: list[str],
                             now: datetime) -> None:
    """Products a contact put in a cart no longer count as browsed-and-abandoned."""
    raise NotImplementedError
