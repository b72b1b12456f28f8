"""The contact-scoped Dotdigital insight collections the service writes, and their collection types."""

from __future__ import annotations

ORDERS_COLLECTION = "Orders"
CART_COLLECTION = "CartInsight"
BROWSE_COLLECTION = "ProductViews"
CUSTOM_EVENTS_COLLECTION = "CustomEvents"

#: collection name -> Dotdigital collection type (``ctdd dotdigital setup`` creates them with these)
COLLECTION_TYPES = {
    ORDERS_COLLECTION: "orders",
    CART_COLLECTION: "cartInsight",
    BROWSE_COLLECTION: "custom",
    CUSTOM_EVENTS_COLLECTION: "custom",
}
