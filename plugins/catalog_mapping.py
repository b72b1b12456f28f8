"""Default catalog mapping: a catalog item (``ctdd.domain.catalog.CatalogItem``) -> the Dotdigital record.

Registered in code with ``trylast=True``, so a brand plugin's ``ctdd_map_catalog_item`` answers first. The
record follows the fields Dotdigital's own connectors send to ``Catalog_*`` collections (name, price, sale
price, url, image, sku, categories, stock ...) in the store's primary locale and currency, plus every locale
and currency of the store under ``locales`` and ``prices``. Each field always has one JSON type (numbers are
floats, absent texts are ``""``, an absent sale price or stock is left out), because the collection's
schema is fixed by its first records. ``brand`` is the ``brand`` attribute when it is a text (or an enum's
label/key).
"""

from __future__ import annotations

from typing import Any

from ctdd import hookimpl


def _text(value: Any, locale: str) -> str:
    """An attribute value as text: strings, numbers, enums (key/label), localized strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        label = value.get("label")
        if isinstance(label, dict):
            return _text(label, locale)
        if isinstance(label, str):
            return label
        if isinstance(value.get("key"), str):
            return value["key"]
        for candidate in (locale, locale.split("-")[0]):
            if isinstance(value.get(candidate), str):
                return value[candidate]
        strings = [v for v in value.values() if isinstance(v, str)]
        return strings[0] if strings else ""
    return ""


@hookimpl(trylast=True)
def ctdd_map_catalog_item(ctx, item) -> dict[str, Any]:
    text = item.text[item.locale]
    record: dict[str, Any] = {
        "id": item.key,
        "productId": item.product_id,
        "variantId": float(item.variant_id),
        "sku": item.sku,
        "store": item.store_key,
        "name": text.name,
        "description": text.description,
        "url": text.url,
        "imagePath": item.image_urls[0] if item.image_urls else "",
        "images": list(item.image_urls),
        "categories": list(text.category_paths),
        "categoryIds": list(item.category_ids),
        "brand": _text(item.attributes.get("brand"), item.locale),
        "locale": item.locale,
        "currency": item.currency,
        "status": "Enabled",
    }
    primary = item.prices.get(item.currency)
    if primary is not None:
        record["price"] = float(primary.price)
        if primary.sale_price is not None:
            record["salePrice"] = float(primary.sale_price)
    if item.in_stock is not None:
        record["inStock"] = item.in_stock
    if item.available_quantity is not None:
        record["stock"] = float(item.available_quantity)
    if item.created_at:
        record["created_date"] = item.created_at
    record["locales"] = {
        locale: {"name": t.name, "description": t.description, "url": t.url, "categories": list(t.category_paths)}
        for locale, t in item.text.items()
    }
    prices: dict[str, Any] = {}
    for currency, selected in item.prices.items():
        entry: dict[str, Any] = {"price": float(selected.price)}
        if selected.sale_price is not None:
            entry["salePrice"] = float(selected.sale_price)
        prices[currency] = entry
    record["prices"] = prices
    return record
