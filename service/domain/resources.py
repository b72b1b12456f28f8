"""Typed models of the parts of commercetools resources this service reads (pure: no I/O).

commercetools resources reach the service as JSON: embedded in a subscription message (``CustomerCreated``
carries ``customer``, ``OrderCreated`` ``order``), fetched from the API (customers, orders, carts, payments,
product projections, categories) or sent as the cart of a ``cart_updated`` event. Before anything reads
them they are checked here against pydantic models: lenient about fields the service does not use (any
other field, any value) and strict about the types of the fields it does use (``email`` is a string,
``totalPrice`` a Money object, ``lineItems`` a list of line items, ``id`` a string, ``version`` a 64-bit
integer, times ISO 8601 date-times that exist in UTC). A resource that fails is poison: it can never be
processed, so it is refused (``InvalidResource``), never retried.

Lengths follow the columns the values are stored in (``ctdd.db.models``; tests/unit/test_input_limits.py
checks that they agree).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Mapping, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

__all__ = ["InvalidResource", "check_resource", "RESOURCE_KINDS", "MAX_ID", "MAX_VERSION", "MAX_LOCALE",
           "MAX_STATE", "MAX_REASON_FIELDS"]

#: resource ids and keys (resource_state.resource_id, cart.cart_id, order_summary.order_id ...)
MAX_ID = 200
#: versions are stored as 64-bit integers
MAX_VERSION = 2**63 - 1
#: order_summary.locale
MAX_LOCALE = 20
#: order_summary.order_state and shipment_state, cart.state
MAX_STATE = 20
#: at most this many problems are named in a reason
MAX_REASON_FIELDS = 5


class InvalidResource(ValueError):
    """A resource that does not have the shape the service reads; ``reason`` names the fields, never values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _utc_time(value: str) -> str:
    """An ISO 8601 date-time whose instant exists in UTC (an offset must not push it out of years 1-9999)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ValueError("not an ISO 8601 date-time in years 0001 to 9999 (UTC)") from None
    return value


Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID)]
Version = Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)]
Time = Annotated[StrictStr, AfterValidator(_utc_time)]
Text = Optional[StrictStr]
LocalizedString = dict[str, StrictStr]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Money(_Lenient):
    currencyCode: Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
    centAmount: Annotated[StrictInt, Field(ge=-MAX_VERSION, le=MAX_VERSION)]
    fractionDigits: Optional[Annotated[StrictInt, Field(ge=0, le=20)]] = None
    preciseAmount: Optional[Annotated[StrictInt, Field(ge=-MAX_VERSION, le=MAX_VERSION)]] = None
    type: Text = None


class Reference(_Lenient):
    id: Id
    typeId: Text = None
    obj: Optional[dict[str, Any]] = None


class LooseReference(_Lenient):
    """A reference read for its key or id, whichever is there (``customerGroup``, ``store``)."""

    id: Optional[Id] = None
    key: Text = None
    obj: Optional[dict[str, Any]] = None


class Address(_Lenient):
    id: Text = None
    streetName: Text = None
    streetNumber: Text = None
    additionalStreetInfo: Text = None
    city: Text = None
    postalCode: Text = None
    region: Text = None
    state: Text = None
    country: Text = None
    phone: Text = None
    mobile: Text = None
    email: Text = None


class CustomFields(_Lenient):
    fields: dict[str, Any] = {}


class Customer(_Lenient):
    id: Id
    version: Optional[Version] = None
    email: Text = None
    firstName: Text = None
    lastName: Text = None
    middleName: Text = None
    title: Text = None
    salutation: Text = None
    dateOfBirth: Text = None
    companyName: Text = None
    locale: Text = None
    customerGroup: Optional[LooseReference] = None
    defaultBillingAddressId: Text = None
    defaultShippingAddressId: Text = None
    addresses: list[Address] = []
    custom: Optional[CustomFields] = None
    #: store KeyReferences; empty: a global customer
    stores: list[LooseReference] = []
    createdAt: Optional[Time] = None
    lastModifiedAt: Optional[Time] = None


class Image(_Lenient):
    url: StrictStr


class Variant(_Lenient):
    sku: Text = None
    images: list[Image] = []


class Price(_Lenient):
    value: Optional[Money] = None


class LineItem(_Lenient):
    productId: Optional[Id] = None
    name: Optional[LocalizedString] = None
    variant: Optional[Variant] = None
    quantity: Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)] = 0
    price: Optional[Price] = None
    totalPrice: Optional[Money] = None


class CustomLineItem(_Lenient):
    name: Optional[LocalizedString] = None
    quantity: Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)] = 0
    money: Optional[Money] = None
    totalPrice: Optional[Money] = None


class TaxedPrice(_Lenient):
    totalTax: Optional[Money] = None
    totalGross: Optional[Money] = None


class TrackingData(_Lenient):
    trackingId: Text = None
    carrier: Text = None


class Parcel(_Lenient):
    trackingData: Optional[TrackingData] = None


class Delivery(_Lenient):
    id: Text = None
    createdAt: Text = None
    parcels: list[Parcel] = []


class ShippingInfo(_Lenient):
    price: Optional[Money] = None
    shippingMethodName: Text = None
    deliveries: list[Delivery] = []


class ShippingEntry(_Lenient):
    """One shipping of an order or cart with ``shippingMode`` Multiple."""

    shippingInfo: Optional[ShippingInfo] = None


class ReturnItem(_Lenient):
    quantity: Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)] = 0


class ReturnInfo(_Lenient):
    returnDate: Text = None
    items: list[ReturnItem] = []


class DiscountCodeInfo(_Lenient):
    discountCode: Optional[LooseReference] = None


class PaymentInfo(_Lenient):
    payments: list[Reference] = []


class _Purchase(_Lenient):
    """What orders and carts share."""

    id: Id
    version: Optional[Version] = None
    customerId: Optional[Id] = None
    customerEmail: Text = None
    anonymousId: Optional[Id] = None
    locale: Optional[Annotated[StrictStr, Field(max_length=MAX_LOCALE)]] = None
    country: Text = None
    totalPrice: Optional[Money] = None
    taxedPrice: Optional[TaxedPrice] = None
    lineItems: list[LineItem] = []
    customLineItems: list[CustomLineItem] = []
    shippingInfo: Optional[ShippingInfo] = None
    #: shippingMode Multiple: the shippings (shippingInfo is then empty)
    shipping: list[ShippingEntry] = []
    billingAddress: Optional[Address] = None
    shippingAddress: Optional[Address] = None
    store: Optional[LooseReference] = None
    createdAt: Optional[Time] = None
    lastModifiedAt: Optional[Time] = None


class Order(_Purchase):
    orderNumber: Optional[Id] = None
    orderState: Optional[Annotated[StrictStr, Field(max_length=MAX_STATE)]] = None
    shipmentState: Optional[Annotated[StrictStr, Field(max_length=MAX_STATE)]] = None
    paymentState: Text = None
    cart: Optional[Reference] = None
    paymentInfo: Optional[PaymentInfo] = None
    returnInfo: list[ReturnInfo] = []
    discountCodes: list[DiscountCodeInfo] = []


class DiscountOnTotalPrice(_Lenient):
    discountedAmount: Optional[Money] = None


class Cart(_Purchase):
    cartState: Optional[Annotated[StrictStr, Field(max_length=MAX_STATE)]] = None
    discountOnTotalPrice: Optional[DiscountOnTotalPrice] = None
    taxedShippingPrice: Optional[TaxedPrice] = None


class Transaction(_Lenient):
    type: Text = None
    state: Text = None
    amount: Optional[Money] = None


class Payment(_Lenient):
    id: Id
    version: Optional[Version] = None
    transactions: list[Transaction] = []


class ProductProjection(_Lenient):
    id: Id
    categories: list[Reference] = []


class Category(_Lenient):
    id: Id
    name: Optional[LocalizedString] = None


#: resource kind (commercetools API path, or the key of a message's embedded resource) -> model
RESOURCE_KINDS: dict[str, type[BaseModel]] = {
    "customer": Customer, "customers": Customer,
    "order": Order, "orders": Order,
    "cart": Cart, "carts": Cart,
    "payment": Payment, "payments": Payment,
    "product-projections": ProductProjection,
    "categories": Category,
}


def check_resource(kind: str, resource: Any, *, name: str | None = None) -> None:
    """Check ``resource`` (parsed JSON) against the model of ``kind``; raise ``InvalidResource`` naming at
    most :data:`MAX_REASON_FIELDS` bad fields (paths like ``order.lineItems[0]``; values are never quoted).
    A kind without a model is not checked."""
    model = RESOURCE_KINDS.get(kind)
    if model is None:
        return
    label = name or kind
    if not isinstance(resource, Mapping):
        raise InvalidResource(f"{label}: must be a JSON object")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        problems = [f"{_path(label, e['loc'])}: {e['msg']}" for e in errors[:MAX_REASON_FIELDS]]
        if len(errors) > MAX_REASON_FIELDS:
            problems.append(f"and {len(errors) - MAX_REASON_FIELDS} more")
        raise InvalidResource("; ".join(problems)) from None


def _path(label: str, loc: tuple[Any, ...]) -> str:
    out = label
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += "." + _short(str(part))
    return out


def _short(text: str, limit: int = 64) -> str:
    """A field name as it may be echoed: at most ``limit`` characters, control characters escaped."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
