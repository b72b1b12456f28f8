"""The ingest side of the programs: calls into ``ctdd.programs.scheduling`` from inside a unit of work, only
for stores that have a program the call concerns (a store without programs writes no trigger and pays for
no lookup).

Each function mirrors one of ``scheduling``'s and is called with the same arguments; the module attribute is
looked up at call time, so the engine (and a test's stand-in) is whatever ``scheduling`` holds then.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from ctdd.config import StoreConfig
from ctdd.programs import scheduling
from ctdd.programs.scheduling import CartFacts

__all__ = ["CartFacts", "cart_changed", "cart_closed", "order_placed", "order_cancelled", "order_moved",
           "shipment_delivered",
           "product_viewed", "products_added_to_cart", "wants"]

ABANDONED_CART = ("abandoned_cart",)
BROWSE = ("browse_abandonment",)
POST_PURCHASE = ("post_purchase_first", "post_purchase_repeat")
REVIEW = ("review_request",)


def wants(store: StoreConfig, kinds: tuple[str, ...]) -> bool:
    """Whether ``store`` has a program of one of ``kinds`` configured."""
    return any(kind in store.programs for kind in kinds)


def cart_changed(session: Session, store: StoreConfig, cart: CartFacts, now: datetime) -> None:
    if wants(store, ABANDONED_CART):
        scheduling.on_cart_changed(session, store, cart, now)


def cart_closed(session: Session, store: StoreConfig, cart_id: str, state: str, now: datetime, *,
                order_id: str | None = None, merged_into: str | None = None) -> None:
    if wants(store, ABANDONED_CART):
        scheduling.on_cart_closed(session, store, cart_id, state, now, order_id=order_id, merged_into=merged_into)


def order_placed(session: Session, store: StoreConfig, contact_id: int, order_id: str, placed_at: datetime,
                 now: datetime, *, first_order: bool, cart_id: str | None = None) -> None:
    if wants(store, POST_PURCHASE):
        scheduling.on_order_placed(session, store, contact_id, order_id, placed_at, now, first_order=first_order,
                                   cart_id=cart_id)


def order_cancelled(session: Session, store: StoreConfig, order_id: str, reason: str, now: datetime) -> None:
    if wants(store, POST_PURCHASE + REVIEW):
        scheduling.on_order_cancelled(session, store, order_id, reason, now)


def order_moved(session: Session, store: StoreConfig, order_id: str, old_contact_id: int, new_contact_id: int,
                now: datetime) -> None:
    if wants(store, POST_PURCHASE + REVIEW):
        scheduling.on_order_moved(session, store, order_id, old_contact_id, new_contact_id, now)


def shipment_delivered(session: Session, store: StoreConfig, contact_id: int, order_id: str,
                       delivered_at: datetime, now: datetime) -> None:
    if wants(store, REVIEW):
        scheduling.on_shipment_delivered(session, store, contact_id, order_id, delivered_at, now)


def product_viewed(session: Session, store: StoreConfig, contact_id: int, product_id: str, viewed_at: datetime,
                   now: datetime, *, data: dict | None = None) -> None:
    if wants(store, BROWSE):
        scheduling.on_product_viewed(session, store, contact_id, product_id, viewed_at, now, data=data)


def products_added_to_cart(session: Session, store: StoreConfig, contact_id: int, product_ids: list[str],
                           now: datetime) -> None:
    if product_ids and wants(store, BROWSE):
        scheduling.on_product_added_to_cart(session, store, contact_id, product_ids, now)
