"""Catalog export rules, pure: price selection, catalog items from product projections, content hashes.

- :func:`select_price`: commercetools price selection on embedded prices (commercetools HTTP API docs,
  "Products" > "Price selection"): the price must have the currency and be valid at the given moment; then
  the most specific scope wins in the documented fallback order (country + customer group + channel, country
  + customer group, country + channel, country, customer group + channel, customer group, channel, none),
  and within one scope a price with validity dates beats one without.
- :func:`catalog_items`: a product projection -> :class:`CatalogItem` per product or per variant, in the
  store's locales and currencies (the mapping hook turns an item into the Dotdigital record).
- :func:`category_record`: the record of a category (names, slugs, parent, ancestors' names, order hint).
- :func:`content_hash`: the hash of a record as sent, the unit of the delta (unchanged -> not sent).
- :func:`json_shape`: every field path of a record with its JSON type (a collection's schema is fixed by
  its first records: a field's type must never change).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Iterable, Mapping, Sequence  # (isinstance on typing's aliases is several times slower)
from typing import Any

from ctdd.domain.json_values import json_type

#: price selection scopes, most specific first (commercetools "Price selection" fallback order)
_SCOPES: tuple[tuple[bool, bool, bool], ...] = (
    (True, True, True), (True, True, False), (True, False, True), (True, False, False),
    (False, True, True), (False, True, False), (False, False, True), (False, False, False),
)


@dataclass(frozen=True)
class PriceScope:
    """What a price is selected for: the currency (required), country, channel id and customer group id."""

    currency: str
    country: str | None = None
    channel_id: str | None = None
    customer_group_id: str | None = None


@dataclass(frozen=True)
class SelectedPrice:
    currency: str
    #: the price's value in currency units (centAmount / 10**fractionDigits)
    price: float
    #: the discounted value when a product discount applies (the sale price), else None
    sale_price: float | None = None
    price_id: str | None = None


def money(value: Mapping[str, Any] | None) -> float | None:
    """A commercetools Money/TypedMoney -> a float in currency units."""
    if not isinstance(value, Mapping) or not isinstance(value.get("centAmount"), int):
        return None
    digits = value.get("fractionDigits", 2)
    digits = digits if isinstance(digits, int) and 0 <= digits <= 20 else 2
    return round(value["centAmount"] / (10 ** digits), digits) * 1.0


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _ref_id(ref: Any) -> str | None:
    return ref.get("id") if isinstance(ref, Mapping) and isinstance(ref.get("id"), str) else None


def _valid_at(price: Mapping[str, Any], at: datetime) -> bool:
    start, end = _parse_time(price.get("validFrom")), _parse_time(price.get("validUntil"))
    return (start is None or start <= at) and (end is None or at < end)


def select_price(prices: Iterable[Mapping[str, Any]], scope: PriceScope, at: datetime) -> SelectedPrice | None:
    """The price commercetools would select for ``scope`` at ``at`` from embedded ``prices``, or None."""
    candidates = [p for p in prices if isinstance(p, Mapping) and isinstance(p.get("value"), Mapping)
                  and p["value"].get("currencyCode") == scope.currency and _valid_at(p, at)]
    for with_country, with_group, with_channel in _SCOPES:
        if with_country and not scope.country or with_group and not scope.customer_group_id \
                or with_channel and not scope.channel_id:
            continue
        matching = [
            p for p in candidates
            if (p.get("country") == scope.country if with_country else p.get("country") is None)
            and (_ref_id(p.get("customerGroup")) == scope.customer_group_id if with_group
                 else p.get("customerGroup") is None)
            and (_ref_id(p.get("channel")) == scope.channel_id if with_channel else p.get("channel") is None)
        ]
        if matching:
            matching.sort(key=lambda p: 0 if (p.get("validFrom") or p.get("validUntil")) else 1)
            chosen = matching[0]
            discounted = chosen.get("discounted")
            sale = money(discounted.get("value")) if isinstance(discounted, Mapping) else None
            return SelectedPrice(scope.currency, money(chosen["value"]) or 0.0, sale,
                                 chosen.get("id") if isinstance(chosen.get("id"), str) else None)
    return None


_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def plain_text(value: str | None, limit: int) -> str:
    """HTML or text -> plain text, whitespace collapsed, at most ``limit`` characters (cut at a word, with …)."""
    if not value:
        return ""
    text = _SPACE.sub(" ", html.unescape(_TAG.sub(" ", value))).strip()
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip() + "…"


def localized(value: Any, locale: str, fallbacks: Sequence[str] = ()) -> str:
    """A LocalizedString in ``locale`` (then its language, then ``fallbacks``), or ''."""
    if not isinstance(value, Mapping):
        return ""
    for candidate in (locale, locale.split("-")[0], *fallbacks):
        if isinstance(value.get(candidate), str):
            return value[candidate]
    return ""


@dataclass(frozen=True)
class CatalogOptions:
    """How a store's catalog is read: see ``[stores.<key>.catalog]`` in docs/configuration.md."""

    store_key: str
    locales: tuple[str, ...]
    currencies: tuple[str, ...]
    country: str | None = None
    channel_id: str | None = None
    customer_group_id: str | None = None
    sku_per: str = "product"  # "product" | "variant"
    url_template: str | None = None
    description_max_chars: int = 1000


@dataclass(frozen=True)
class LocalizedText:
    name: str
    slug: str
    description: str
    url: str
    #: each category as its path of names, root first ("Women > Shoes")
    category_paths: tuple[str, ...]


@dataclass(frozen=True)
class CatalogItem:
    """One product (or variant) of a store, ready for the mapping hook (``ctdd_map_catalog_item``)."""

    key: str
    product_id: str
    product_key: str | None
    variant_id: int
    sku: str
    store_key: str
    locale: str
    currency: str
    text: Mapping[str, LocalizedText]
    prices: Mapping[str, SelectedPrice]
    image_urls: tuple[str, ...]
    category_ids: tuple[str, ...]
    #: product and variant attributes (variant wins), raw commercetools values
    attributes: Mapping[str, Any]
    in_stock: bool | None
    available_quantity: int | None
    created_at: str | None
    modified_at: str | None
    #: the product projection as read (for plugins that need more)
    projection: Mapping[str, Any] = field(repr=False, default_factory=dict)


def category_path(category_id: str, categories: Mapping[str, Mapping[str, Any]], locale: str,
                  fallbacks: Sequence[str] = ()) -> str:
    """The names of a category's ancestors and itself, root first, joined with " > "."""
    category = categories.get(category_id)
    if category is None:
        return ""
    ids = [_ref_id(a) for a in category.get("ancestors") or ()] + [category_id]
    names = [localized(categories[i].get("name"), locale, fallbacks) for i in ids if i in categories]
    return " > ".join(n for n in names if n)


def _url(template: str | None, **values: str) -> str:
    if not template:
        return ""
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", value)
    return out


def catalog_items(projection: Mapping[str, Any], options: CatalogOptions,
                  categories: Mapping[str, Mapping[str, Any]], at: datetime) -> list[CatalogItem]:
    """The catalog items of one published product projection for one store (one, or one per variant)."""
    master = projection.get("masterVariant") if isinstance(projection.get("masterVariant"), Mapping) else {}
    variants = [master] + [v for v in projection.get("variants") or () if isinstance(v, Mapping)]
    if options.sku_per == "product":
        variants = variants[:1]
    product_id = str(projection.get("id"))
    primary_locale = options.locales[0]
    category_ids = tuple(i for i in (_ref_id(c) for c in projection.get("categories") or ()) if i)
    product_attributes = {a["name"]: a.get("value") for a in projection.get("attributes") or ()
                          if isinstance(a, Mapping) and isinstance(a.get("name"), str)}
    items = []
    for variant in variants:
        variant_id = variant.get("id") if isinstance(variant.get("id"), int) else 1
        sku = variant.get("sku") if isinstance(variant.get("sku"), str) else ""
        key = product_id if options.sku_per == "product" else (sku or f"{product_id}-{variant_id}")
        text = {}
        for locale in options.locales:
            slug = localized(projection.get("slug"), locale, options.locales)
            text[locale] = LocalizedText(
                name=localized(projection.get("name"), locale, options.locales),
                slug=slug,
                description=plain_text(localized(projection.get("description"), locale, options.locales),
                                       options.description_max_chars),
                url=_url(options.url_template, slug=slug, product_id=product_id, sku=sku, locale=locale,
                         store=options.store_key, key=str(projection.get("key") or ""),
                         variant_id=str(variant_id)),
                category_paths=tuple(p for p in (category_path(c, categories, locale, options.locales)
                                                 for c in category_ids) if p),
            )
        prices = {}
        for currency in options.currencies:
            scope = PriceScope(currency, options.country, options.channel_id, options.customer_group_id)
            selected = select_price(variant.get("prices") or (), scope, at)
            if selected is not None:
                prices[currency] = selected
        availability = variant.get("availability") if isinstance(variant.get("availability"), Mapping) else {}
        if options.channel_id and isinstance(availability.get("channels"), Mapping) \
                and isinstance(availability["channels"].get(options.channel_id), Mapping):
            availability = availability["channels"][options.channel_id]
        quantity = availability.get("availableQuantity")
        attributes = dict(product_attributes)
        attributes.update({a["name"]: a.get("value") for a in variant.get("attributes") or ()
                           if isinstance(a, Mapping) and isinstance(a.get("name"), str)})
        items.append(CatalogItem(
            key=key, product_id=product_id,
            product_key=projection.get("key") if isinstance(projection.get("key"), str) else None,
            variant_id=variant_id, sku=sku, store_key=options.store_key, locale=primary_locale,
            currency=options.currencies[0], text=text, prices=prices,
            image_urls=tuple(i["url"] for i in variant.get("images") or ()
                             if isinstance(i, Mapping) and isinstance(i.get("url"), str)),
            category_ids=category_ids, attributes=attributes,
            in_stock=availability.get("isOnStock") if isinstance(availability.get("isOnStock"), bool) else None,
            available_quantity=quantity if isinstance(quantity, int) and not isinstance(quantity, bool) else None,
            created_at=projection.get("createdAt") if isinstance(projection.get("createdAt"), str) else None,
            modified_at=projection.get("lastModifiedAt") if isinstance(projection.get("lastModifiedAt"), str) else None,
            projection=projection,
        ))
    return items


def category_record(category: Mapping[str, Any], categories: Mapping[str, Mapping[str, Any]],
                    locales: Sequence[str]) -> dict[str, Any]:
    """The record of a category in the category collection (names and slugs in the store's locales)."""
    locale = locales[0]
    record: dict[str, Any] = {
        "id": str(category.get("id")),
        "key": category.get("key") if isinstance(category.get("key"), str) else "",
        "name": localized(category.get("name"), locale, locales),
        "slug": localized(category.get("slug"), locale, locales),
        "parentId": _ref_id(category.get("parent")) or "",
        "path": category_path(str(category.get("id")), categories, locale, locales),
        "ancestorIds": [i for i in (_ref_id(a) for a in category.get("ancestors") or ()) if i],
        "orderHint": str(category.get("orderHint") or ""),
        "locales": {loc: {"name": localized(category.get("name"), loc, locales),
                          "slug": localized(category.get("slug"), loc, locales),
                          "path": category_path(str(category.get("id")), categories, loc, locales)}
                    for loc in locales},
    }
    return record


#: what Dotdigital takes as an insight collection name (else ERROR_TRANSACTIONAL_DATA_INVALID_COLLECTION_NAME)
_COLLECTION_NAME = re.compile(r"[-A-Za-z_][-A-Za-z0-9_]{1,255}")
COLLECTION_NAME_RULE = "2-256 characters of A-Z, a-z, 0-9, '-' and '_', not starting with a digit"


def is_collection_name(name: str) -> bool:
    """Whether ``name`` is a valid Dotdigital insight collection name (:data:`COLLECTION_NAME_RULE`)."""
    return _COLLECTION_NAME.fullmatch(name) is not None


def collection_names(store_key: str, collection: str | None = None,
                     categories_collection: str | None = None) -> tuple[str, str]:
    """The account-scoped collections of a store's catalog: products (``Catalog_<store>``) and categories
    (``Categories_<store>``) unless configured; characters a collection name cannot have (anything but ASCII letters,
    digits, ``-`` and ``_``) become ``_``."""
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_" else "_" for ch in store_key)
    return collection or f"Catalog_{safe}", categories_collection or f"Categories_{safe}"


def content_hash(record: Mapping[str, Any]) -> str:
    """sha256 of the record's canonical JSON: equal content, equal hash, whatever the key order."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def json_shape(record: Any, prefix: str = "") -> dict[str, str]:
    """Every field path of ``record`` (arrays as ``path[]``) -> its JSON type."""
    shape: dict[str, str] = {}
    if isinstance(record, Mapping):
        for name, value in record.items():
            path = f"{prefix}.{name}" if prefix else str(name)
            shape[path] = json_type(value)
            shape.update(json_shape(value, path))
    elif isinstance(record, (list, tuple)):
        for value in record:
            shape[f"{prefix}[]"] = json_type(value)
            shape.update(json_shape(value, f"{prefix}[]"))
    return shape


def shape_conflicts(known: dict[str, str], record: Mapping[str, Any]) -> list[str]:
    """Field paths whose JSON type in ``record`` differs from ``known`` (which learns the new paths)."""
    conflicts = []
    for path, kind in json_shape(record).items():
        if kind == "null":
            continue
        seen = known.setdefault(path, kind)
        if seen != kind:
            conflicts.append(f"{path}: {kind}, was {seen}")
    return conflicts
