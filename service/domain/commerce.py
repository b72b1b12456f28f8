"""commercetools resources -> ctdd-sync domain objects (pure: no I/O).

- :func:`customer_to_contact`: a commercetools Customer -> the same ``ContactInput`` SyncContact builds.
- :func:`order_record`: an Order -> the record of the contact-scoped ``Orders`` insight collection.
- :func:`order_summary_values` and :func:`order_aggregates`: per-contact aggregates recomputed from all
  known orders of the contact, so duplicates and out-of-order events cannot skew them.
- :func:`cart_record`: a Cart -> the record of the contact-scoped ``CartInsight`` collection, with product
  and cart URLs from the store's templates (:class:`CartContext`).

Money is converted to major units (``centAmount / 10**fractionDigits``).
The Orders record keeps stable JSON types for every field (Dotdigital locks a collection's schema on the
first record): strings default to "", numbers to 0.0, lists to [].
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from ctdd.domain.contact import ChannelConsent, ContactInput, Identity, SourceStamp
from ctdd.domain.identity import InvalidIdentifier, mobile_from_text, normalise_email

#: refund transactions that count towards the refund total
REFUND_STATES = frozenset({"Initial", "Pending", "Success"})
#: attributes :func:`customer_to_contact` reads from a customer (besides ``custom.*`` and the addresses)
CUSTOMER_ATTRIBUTES = frozenset({"first_name", "last_name", "middle_name", "title", "date_of_birth", "company_name",
                                 "customer_group", "locale"})
#: attributes whose absence from a customer never clears the Dotdigital field: a customer without a locale
#: keeps the LOCALE it has (set by SyncContact, or the store default a new contact gets); not attributes of
#: the customer's data at all: ``customer_id`` (its identity) and ``store``
KEPT_WHEN_ABSENT = frozenset({"locale", "customer_id", "store"})
_SNAPSHOT_PREFIXES = ("billing_address.", "shipping_address.", "custom.")


def parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def money(value: Mapping[str, Any] | None) -> float:
    """Major units of a Money value; 0.0 when absent (records keep numeric types stable)."""
    return money_to_major(value) if value else 0.0


_CURRENCY_EXPONENTS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0,
    "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}


def money_to_major(money: Mapping[str, Any]) -> float:
    """Amount of a commercetools Money value in major units (e.g. 56.0 for 5600 EUR cents).

    ``centPrecision`` (and drafts without ``type``): ``centAmount / 10**fractionDigits``. ``highPrecision``:
    ``preciseAmount / 10**fractionDigits`` - its ``fractionDigits`` is the *high* precision, so dividing
    ``centAmount`` by it would be wrong (see the commercetools type ``HighPrecisionMoney``).
    A missing ``fractionDigits`` (allowed in drafts) defaults to the
    currency's ISO 4217 minor units (2 unless listed in ``_CURRENCY_EXPONENTS``). Computed in ``Decimal``.
    """
    if not isinstance(money, Mapping):
        raise TypeError("money must be a dict")
    currency_digits = _CURRENCY_EXPONENTS.get(str(money.get("currencyCode") or "").upper(), 2)
    fraction_digits = money.get("fractionDigits")
    if fraction_digits is None:
        fraction_digits = currency_digits
    if isinstance(fraction_digits, bool) or not isinstance(fraction_digits, int) or fraction_digits < 0:
        raise ValueError(f"invalid fractionDigits {fraction_digits!r}")
    amount = money.get("centAmount")
    if money.get("type") == "highPrecision":
        if money.get("preciseAmount") is not None:
            amount = money["preciseAmount"]
        else:  # centAmount is always in the currency's smallest unit
            fraction_digits = currency_digits
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError("money has no integer centAmount")
    return float(Decimal(amount).scaleb(-fraction_digits))


def localized(value: Mapping[str, Any] | str | None, locale: str | None) -> str | None:
    """Pick one text of a LocalizedString ``{"en": "Hats", "de-DE": "Hüte"}`` ("pick preferred locale with fallback").

    Order: the exact ``locale`` (tags compared case-insensitively, ``_`` accepted for ``-``); its language
    part (``en-GB`` -> ``en``); another tag of the same language (``en`` -> ``en-US``); ``en``; then the
    first non-empty value. A plain string is returned as is; ``None`` or an empty mapping gives ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        raise TypeError("value must be a LocalizedString dict, a str or None")
    texts = {str(k).replace("_", "-").lower(): v for k, v in value.items() if isinstance(v, str) and v != ""}
    if not texts:
        return None
    candidates: list[str] = []
    if locale:
        tag = locale.replace("_", "-").lower()
        language = tag.split("-", 1)[0]
        candidates += [tag, language]
        candidates += [k for k in texts if k.split("-", 1)[0] == language]
    candidates.append("en")
    for candidate in candidates:
        if candidate in texts:
            return texts[candidate]
    return next(iter(texts.values()))


def _address(addr: Mapping[str, Any] | None) -> dict[str, Any]:
    if not addr:
        return {}
    street = " ".join(p for p in (addr.get("streetName"), addr.get("streetNumber")) if p)
    return {
        "street_line1": street or None,
        "street_line2": addr.get("additionalStreetInfo"),
        "city": addr.get("city"),
        "postal_code": addr.get("postalCode"),
        "region": addr.get("region") or addr.get("state"),
        "country": addr.get("country"),
        "phone": addr.get("phone") or addr.get("mobile"),
    }


def _address_by_id(customer: Mapping[str, Any], address_id: str | None) -> Mapping[str, Any] | None:
    if not address_id:
        return None
    return next((a for a in customer.get("addresses", []) if a.get("id") == address_id), None)


def consent_value(value: Any) -> str | None:
    """A commercetools consent custom-field value -> "subscribed" / "unsubscribed" / None (no decision).

    Accepts a Boolean field or an Enum field
    (``optedIn | optedOut | pending | unknown``; ``pending`` and ``unknown`` are no decision yet).
    """
    if isinstance(value, dict):  # Enum values may come as {"key": ..., "label": ...}
        value = value.get("key")
    if value is True or value in ("optedIn", "subscribed", "true"):
        return "subscribed"
    if value is False or value in ("optedOut", "unsubscribed", "false"):
        return "unsubscribed"
    return None


def consent_from_custom_fields(fields: Mapping[str, Any], *, email_field: str, sms_field: str,
                               updated_at_field: str) -> tuple[ChannelConsent | None, ChannelConsent | None]:
    """The email and SMS consent of a customer's custom fields. The time of the decision is read from
    ``updated_at_field`` (a DateTime field, or a String holding an ISO 8601 time); a value that is no such time
    (a String field the shop fills in its own way, "02/01/2026") counts as no time: the customer's own
    ``lastModifiedAt`` then dates the decision, as for a customer without the field."""
    raw = fields.get(updated_at_field)
    try:
        decided_at = parse_ts(raw) if isinstance(raw, str) else None
        decided_at = decided_at.astimezone(timezone.utc) if decided_at else None  # (overflows past year 9999)
    except (ValueError, OverflowError):
        decided_at = None
    out = []
    for name in (email_field, sms_field):
        status = consent_value(fields.get(name)) if name in fields else None
        out.append(ChannelConsent(status=status, decided_at=decided_at) if status else None)
    return out[0], out[1]


def customer_to_contact(customer: Mapping[str, Any], store_key: str, *,
                        extra_attributes: Mapping[str, Any] | None = None,
                        consent_fields: tuple[str, str, str] | None = None) -> ContactInput:
    """Map a commercetools Customer to a ContactInput.

    Only attributes the customer has are present: commercetools leaves unset fields out of a resource, and an
    absent attribute is never sent as ``null`` here (which would clear the Dotdigital field whatever set it,
    e.g. a ``LOCALE`` set by SyncContact). A customer is a full snapshot, though: an attribute removed in
    commercetools is cleared in Dotdigital when the value there came from this customer
    (:func:`absent_customer_attributes`, ``ContactSync.apply(clear_own=...)``). The source stamp (customer id
    + version + lastModifiedAt) makes older customer versions stale.
    """
    try:
        email = normalise_email(customer["email"]) if customer.get("email") else None
    except InvalidIdentifier:
        email = None
    attributes: dict[str, Any] = {
        "first_name": customer.get("firstName"),
        "last_name": customer.get("lastName"),
        "middle_name": customer.get("middleName"),
        "title": customer.get("title") or customer.get("salutation"),
        "date_of_birth": customer.get("dateOfBirth"),
        "company_name": customer.get("companyName"),
        "customer_group": (customer.get("customerGroup") or {}).get("key")
        or ((customer.get("customerGroup") or {}).get("obj") or {}).get("key")
        or (customer.get("customerGroup") or {}).get("id"),
        "locale": customer.get("locale"),
    }
    for prefix, addr_id in (("billing_address", customer.get("defaultBillingAddressId")),
                            ("shipping_address", customer.get("defaultShippingAddressId"))):
        for name, value in _address(_address_by_id(customer, addr_id)).items():
            attributes[f"{prefix}.{name}"] = value
    for name, value in ((customer.get("custom") or {}).get("fields") or {}).items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            attributes[f"custom.{name}"] = value
    attributes = {name: value for name, value in attributes.items() if value is not None}
    attributes.update(extra_attributes or {})
    mobile = None
    for addr in customer.get("addresses", []):
        raw = addr.get("mobile")
        if raw:
            try:
                mobile = mobile_from_text(raw)  # free text in commercetools
                break
            except InvalidIdentifier:
                continue
    email_consent = sms_consent = None
    if consent_fields is not None:
        email_consent, sms_consent = consent_from_custom_fields(
            (customer.get("custom") or {}).get("fields") or {}, email_field=consent_fields[0],
            sms_field=consent_fields[1], updated_at_field=consent_fields[2],
        )
        if sms_consent is not None and sms_consent.status == "subscribed" and mobile is None:
            sms_consent = None  # an SMS opt-in without a valid mobile number cannot be honoured
    return ContactInput(
        store_key=store_key,
        identity=Identity(customer_id=customer["id"], email=email, mobile_number=mobile),
        attributes=attributes,
        email_consent=email_consent,
        sms_consent=sms_consent,
        source=SourceStamp("customer", customer["id"], customer.get("version"), parse_ts(customer.get("lastModifiedAt"))),
    )


def absent_customer_attributes(contact: ContactInput, mapped_attributes: Iterable[str]) -> list[str]:
    """The attributes a customer (mapped by :func:`customer_to_contact`) does not have, among those it could
    have (:data:`CUSTOMER_ATTRIBUTES`, and the address parts and ``custom.*`` fields of ``mapped_attributes``,
    the store's ``data_fields`` keys), less :data:`KEPT_WHEN_ABSENT`. Their Dotdigital fields are cleared
    when this customer set them before."""
    candidates = CUSTOMER_ATTRIBUTES.union(
        name for name in mapped_attributes if name.startswith(_SNAPSHOT_PREFIXES))
    return sorted(name for name in candidates if name not in contact.attributes and name not in KEPT_WHEN_ABSENT)


def order_key(order: Mapping[str, Any]) -> str:
    """Record key of an order: its order number, else its id (as the Magento 2 connector keys its Orders records)."""
    return str(order.get("orderNumber") or order["id"])


def order_email(order: Mapping[str, Any]) -> str | None:
    raw = order.get("customerEmail") or (order.get("billingAddress") or {}).get("email")
    if not raw:
        return None
    try:
        return normalise_email(raw)
    except InvalidIdentifier:
        return None


def order_without_email(order: Mapping[str, Any]) -> str:
    """What is wrong with the email of an order :func:`order_email` finds none for (for the reasons given)."""
    raw = order.get("customerEmail") or (order.get("billingAddress") or {}).get("email")
    return "the order's email address is not valid" if raw else "the order has no email"


def refund_total(payments: Iterable[Mapping[str, Any]]) -> float:
    """Sum of Refund transactions in Initial/Pending/Success state (as the Klaviyo connector counts them)."""
    total = 0.0
    for payment in payments:
        for tx in payment.get("transactions", []):
            if tx.get("type") == "Refund" and tx.get("state") in REFUND_STATES:
                total += money(tx.get("amount"))
    return round(total, 6)


@dataclass(frozen=True)
class OrderContext:
    """What an Orders record needs beyond the order itself."""

    store_key: str
    locale: str | None = None
    #: product id -> category names (first = most specific)
    categories: Mapping[str, list[str]] | None = None
    refund_total: float = 0.0
    #: discount code id -> its code, for the order's discount codes whose reference is not expanded
    discount_codes: Mapping[str, str] | None = None


def _line_items(order: Mapping[str, Any], ctx: OrderContext, locale: str | None) -> list[dict[str, Any]]:
    items = []
    for li in order.get("lineItems", []):
        variant = li.get("variant") or {}
        images = variant.get("images") or []
        quantity = int(li.get("quantity", 0))
        total = money(li.get("totalPrice"))
        items.append({
            "productId": str(li.get("productId", "")),
            "sku": str(variant.get("sku") or ""),
            "name": localized(li.get("name"), locale) or "",
            "quantity": quantity,
            "unitPrice": money((li.get("price") or {}).get("value")),
            "totalPrice": total,
            "imageUrl": str(images[0].get("url", "")) if images else "",
            "categories": list((ctx.categories or {}).get(li.get("productId", ""), [])),
        })
    for cli in order.get("customLineItems") or []:  # gift wrap, a fee: no product, counted like a line item
        items.append({
            "productId": "",
            "sku": "",
            "name": localized(cli.get("name"), locale) or "",
            "quantity": int(cli.get("quantity", 0)),
            "unitPrice": money(cli.get("money")),
            "totalPrice": money(cli.get("totalPrice")),
            "imageUrl": "",
            "categories": [],
        })
    return items


def _shipping_infos(order: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The shipping infos of an order: its ``shippingInfo``, or with ``shippingMode`` Multiple those of its
    ``shipping`` entries."""
    if order.get("shippingInfo"):
        return [order["shippingInfo"]]
    return [entry["shippingInfo"] for entry in order.get("shipping") or [] if entry.get("shippingInfo")]


def _record_address(addr: Mapping[str, Any] | None) -> dict[str, str]:
    a = _address(addr)
    return {k: str(a.get(k) or "") for k in ("street_line1", "street_line2", "city", "postal_code", "region", "country")}


def order_record(order: Mapping[str, Any], ctx: OrderContext) -> dict[str, Any]:
    """The ``Orders`` insight record of ``order`` (one schema, stable types)."""
    locale = order.get("locale") or ctx.locale
    items = _line_items(order, ctx, locale)
    total = money(order.get("totalPrice"))
    taxed = order.get("taxedPrice") or {}
    shippings = _shipping_infos(order)
    deliveries = []
    for delivery in (d for shipping in shippings for d in shipping.get("deliveries") or []):
        parcels = [
            {"trackingId": str((p.get("trackingData") or {}).get("trackingId") or ""),
             "carrier": str((p.get("trackingData") or {}).get("carrier") or "")}
            for p in delivery.get("parcels", [])
        ]
        deliveries.append({"id": str(delivery.get("id", "")), "createdAt": str(delivery.get("createdAt", "")),
                           "parcels": parcels})
    returns = [
        {"returnDate": str(ri.get("returnDate") or ""),
         "quantity": int(sum(item.get("quantity", 0) for item in ri.get("items", [])))}
        for ri in order.get("returnInfo", [])
    ]
    codes = []
    for dc in order.get("discountCodes", []):
        ref = dc.get("discountCode") or {}
        code = (ref.get("obj") or {}).get("code") or (ctx.discount_codes or {}).get(str(ref.get("id") or ""))
        codes.append(str(code or ref.get("id") or ""))  # the code the shopper typed; its id when not known
    return {
        "id": order_key(order),
        "orderId": str(order["id"]),
        "orderNumber": str(order.get("orderNumber") or ""),
        "email": order_email(order) or "",
        "customerId": str(order.get("customerId") or ""),
        "purchaseDate": str(order.get("createdAt") or ""),
        "storeKey": str((order.get("store") or {}).get("key") or ctx.store_key),
        "locale": str(locale or ""),
        "currency": str((order.get("totalPrice") or {}).get("currencyCode") or ""),
        "orderTotal": total,
        "orderSubtotal": round(sum((i["totalPrice"] for i in items), 0.0), 6),
        "taxTotal": money(taxed.get("totalTax")) if taxed.get("totalTax") else 0.0,
        "shippingTotal": round(sum((money(sh["price"]) for sh in shippings if sh.get("price")), 0.0), 6),
        "deliveryMethod": ", ".join(dict.fromkeys(str(sh["shippingMethodName"]) for sh in shippings
                                                  if sh.get("shippingMethodName"))),
        "discountCodes": codes,
        "orderStatus": str(order.get("orderState") or ""),
        "shipmentStatus": str(order.get("shipmentState") or ""),
        "paymentStatus": str(order.get("paymentState") or ""),
        "refundTotal": float(ctx.refund_total),
        "deliveries": deliveries,
        "returns": returns,
        "billingAddress": _record_address(order.get("billingAddress")),
        "deliveryAddress": _record_address(order.get("shippingAddress")),
        "products": items,
    }


def order_summary_values(order: Mapping[str, Any], ctx: OrderContext) -> dict[str, Any]:
    """The columns of ``order_summary`` for this order."""
    cats: list[str] = []
    for li in order.get("lineItems", []):
        for name in (ctx.categories or {}).get(li.get("productId", ""), [])[:1]:
            cats.append(name)
    return {
        "order_key": order_key(order),
        "version": int(order.get("version", 0)),
        "created_at": parse_ts(order.get("createdAt")) or datetime.now(timezone.utc),
        "total": money(order.get("totalPrice")),
        "currency": str((order.get("totalPrice") or {}).get("currencyCode") or ""),
        "store_key": (order.get("store") or {}).get("key") or ctx.store_key,
        "locale": order.get("locale") or ctx.locale,
        "order_state": str(order.get("orderState") or "Open"),
        "shipment_state": str(order.get("shipmentState") or ""),
        "refund_total": float(ctx.refund_total),
        "categories": cats,
    }


def became_delivered(current: str | None, previous: str | None, *, first_seen: bool) -> bool | None:
    """Whether an order's shipment state became ``Delivered`` with the order version being applied, compared with
    the version applied before it (``first_seen``: none was), whichever message brought that version (one update
    can emit ``OrderStateChanged`` and ``OrderShipmentStateChanged`` of the same version, in any order). None
    when the previous state is not known (``previous`` None for an order seen before: a summary row written
    before its shipment state was kept)."""
    if current != "Delivered":
        return False
    if first_seen:
        return True
    if previous is None:
        return None
    return previous != "Delivered"


@dataclass(frozen=True)
class SummaryRow:
    order_key: str
    created_at: datetime
    total: float
    currency: str
    store_key: str | None
    locale: str | None
    order_state: str
    refund_total: float
    categories: list[str]


#: the attributes order_aggregates() produces (mapped to data fields by ctdd.config.DEFAULT_DATA_FIELDS)
AGGREGATE_ATTRIBUTES = (
    "orders.last_order_date", "orders.last_order_id", "orders.number_of_orders", "orders.total_spend",
    "orders.average_order_value", "orders.total_refund", "orders.first_category", "orders.last_category",
    "orders.most_category", "orders.last_order_store", "orders.last_order_locale", "orders.last_order_currency",
)


def order_aggregates(rows: Iterable[SummaryRow]) -> dict[str, Any]:
    """Aggregates over a contact's orders, independent of the order events arrived in.

    Cancelled orders are not counted. Spend, average and refunds are in the currency of the latest
    order; orders in other currencies count towards the number of orders only.
    """
    ordered = sorted(rows, key=lambda r: (r.created_at, r.order_key))
    live = [r for r in ordered if r.order_state != "Cancelled"]
    if not live:
        return {attr: None for attr in AGGREGATE_ATTRIBUTES} | {"orders.number_of_orders": 0}
    last = live[-1]
    same_ccy = [r for r in live if r.currency == last.currency]
    digits = _CURRENCY_EXPONENTS.get(str(last.currency or "").upper(), 2)  # KWD 1.235 stays 1.235
    spend = round(sum(r.total for r in same_ccy), digits)
    categories = [c for r in live for c in r.categories]
    most = None
    if categories:
        counts = Counter(categories)
        best = max(counts.values())
        most = next(c for c in categories if counts[c] == best)  # earliest wins ties: deterministic
    return {
        "orders.last_order_date": last.created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "orders.last_order_id": last.order_key,
        "orders.number_of_orders": len(live),
        "orders.total_spend": spend,
        "orders.average_order_value": round(spend / len(same_ccy), digits),
        "orders.total_refund": round(sum(r.refund_total for r in same_ccy), digits),
        "orders.first_category": categories[0] if categories else None,
        "orders.last_category": categories[-1] if categories else None,
        "orders.most_category": most,
        "orders.last_order_store": last.store_key,
        "orders.last_order_locale": last.locale,
        "orders.last_order_currency": last.currency,
    }


#: CartInsight ``cartPhase`` values (as the Magento 2 connector and Dotdigital's tag use them)
CART_PHASE_PENDING = "ORDER_PENDING"
CART_PHASE_COMPLETE = "ORDER_COMPLETE"


@dataclass(frozen=True)
class CartContext:
    """What a ``CartInsight`` record needs beyond the cart itself (the store's configuration)."""

    store_key: str = ""
    locale: str | None = None
    currency: str | None = None
    #: ``{slug}``, ``{product_id}``, ``{sku}``, ``{locale}``, ``{store}`` are replaced (None: no product URLs)
    product_url_template: str | None = None
    #: ``{cart_id}``, ``{locale}``, ``{store}`` are replaced (None: no cart URL)
    cart_url_template: str | None = None
    #: the record's ``modifiedDate`` when the cart has no ``lastModifiedAt`` (a behavioural event's time)
    modified_at: str = ""


def fill_template(template: str | None, values: Mapping[str, str | None]) -> str:
    """``template`` with each ``{name}`` replaced by its URL-quoted value; "" when there is no template or a
    placeholder it uses has no value (a link to the wrong page is worse than none)."""
    if not template:
        return ""
    out = template
    for name, value in values.items():
        token = "{" + name + "}"
        if token in out:
            if not value:
                return ""
            out = out.replace(token, quote(str(value), safe="-_.~"))
    return out


def _round_money(value: float, currency_code: str | None) -> float:
    return round(float(value), _CURRENCY_EXPONENTS.get(str(currency_code or "").upper(), 2))


def sale_price(line_item: Mapping[str, Any]) -> float:
    """The price of one unit after discounts: the average of ``discountedPricePerQuantity`` (cart
    discounts), else the product discount (``price.discounted``), else the price itself."""
    price = line_item.get("price") or {}
    base = (price.get("discounted") or {}).get("value") or price.get("value")
    unit = money(base)
    parts = [p for p in line_item.get("discountedPricePerQuantity") or [] if isinstance(p, Mapping)]
    quantity = int(line_item.get("quantity") or 0)
    if not parts or quantity <= 0:
        return unit
    discounted_units = sum(int(p.get("quantity") or 0) for p in parts)
    total = sum(int(p.get("quantity") or 0) * money((p.get("discountedPrice") or {}).get("value")) for p in parts)
    total += max(quantity - discounted_units, 0) * unit
    return _round_money(total / quantity, (base or {}).get("currencyCode"))


def _cart_line(li: Mapping[str, Any], ctx: CartContext, locale: str | None) -> dict[str, Any]:
    variant = li.get("variant") or {}
    images = variant.get("images") or []
    sku = str(variant.get("sku") or "")
    product_id = str(li.get("productId") or "")
    slug = localized(li.get("productSlug"), locale)
    url = fill_template(ctx.product_url_template, {"slug": slug, "product_id": product_id, "sku": sku,
                                                   "locale": locale, "store": ctx.store_key})
    return {
        "sku": sku,
        "name": localized(li.get("name"), locale) or "",
        "imageUrl": str(images[0].get("url") or "") if images else "",
        "productUrl": url,
        "unitPrice": money((li.get("price") or {}).get("value")),
        "salePrice": sale_price(li),
        "quantity": float(int(li.get("quantity") or 0)),
        "totalPrice": money(li.get("totalPrice")),
    }


def cart_record(cart_id: str, cart: Mapping[str, Any], ctx: CartContext, *, phase: str | None = None
                ) -> dict[str, Any]:
    """The ``CartInsight`` record of ``cart`` (the Magento 2 connector's field set).

    One schema for every cart (Dotdigital locks a collection's schema on the first record): every field is
    always present, amounts and quantities are floats, texts are strings ("" when unknown). An empty cart
    is a record with ``lineItems: []`` (so a program can let the contact go). ``unitPrice`` is the list
    price, ``salePrice`` the price of a unit after discounts; ``discountAmount`` is what the discounts take
    off the list prices and the cart total. ``cartPhase`` is ``ORDER_COMPLETE`` for an ordered cart (or
    ``phase``), else ``ORDER_PENDING``.
    """
    locale = cart.get("locale") or ctx.locale
    items = [_cart_line(li, ctx, locale) for li in cart.get("lineItems") or []]
    total_price = cart.get("totalPrice") or {}
    currency = str(total_price.get("currencyCode") or ctx.currency or "")
    subtotal = _round_money(sum((i["totalPrice"] for i in items), 0.0), currency)
    listed = sum((i["unitPrice"] * i["quantity"] for i in items), 0.0)
    on_total = money((cart.get("discountOnTotalPrice") or {}).get("discountedAmount"))
    shipping = (cart.get("taxedShippingPrice") or {}).get("totalGross") or \
        ((cart.get("shippingInfo") or {}).get("price"))
    if phase is None:
        phase = CART_PHASE_COMPLETE if cart.get("cartState") == "Ordered" else CART_PHASE_PENDING
    return {
        "cartId": str(cart_id),
        "cartUrl": fill_template(ctx.cart_url_template, {"cart_id": str(cart_id), "locale": locale,
                                                         "store": ctx.store_key}),
        "createdDate": str(cart.get("createdAt") or ctx.modified_at or ""),
        "modifiedDate": str(cart.get("lastModifiedAt") or ctx.modified_at or ""),
        "currency": currency,
        "subTotal": subtotal,
        "taxAmount": money((cart.get("taxedPrice") or {}).get("totalTax")),
        "shipping": money(shipping),
        "discountAmount": _round_money(max(listed - subtotal, 0.0) + on_total, currency),
        "grandTotal": money(total_price),
        "cartPhase": phase,
        "lineItems": items,
    }
