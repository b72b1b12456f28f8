"""Built-in defaults that are more than a literal: the service address, the database, and the mapping of
profile attributes to Dotdigital data fields with the data-field types ``ctdd dotdigital setup`` creates."""

from __future__ import annotations

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///ctdd.db"

#: Default mapping of profile attributes to Dotdigital data fields (the names the Dotdigital Magento 2
#: connector uses). A store's ``[stores.<key>.data_fields]`` table is merged over it.
DEFAULT_DATA_FIELDS: dict[str, str] = {
    "customer_id": "CUSTOMER_ID",
    "first_name": "FIRSTNAME",
    "last_name": "LASTNAME",
    "middle_name": "MIDDLENAME",
    "title": "TITLE",
    "date_of_birth": "DOB",
    "company_name": "COMPANY",
    "customer_group": "CUSTOMER_GROUP",
    "locale": "LOCALE",
    "currency": "CURRENCY",
    "store": "STORE",
    "billing_address.city": "BILLING_CITY",
    "billing_address.country": "BILLING_COUNTRY",
    "billing_address.postal_code": "BILLING_POSTCODE",
    "shipping_address.city": "DELIVERY_CITY",
    "shipping_address.country": "DELIVERY_COUNTRY",
    "shipping_address.postal_code": "DELIVERY_POSTCODE",
    # contact aggregates recomputed from the contact's orders (ctdd.domain.commerce.order_aggregates)
    "orders.last_order_date": "LAST_ORDER_DATE",
    "orders.last_order_id": "LAST_ORDER_ID",
    "orders.number_of_orders": "NUMBER_OF_ORDERS",
    "orders.total_spend": "TOTAL_SPEND",
    "orders.average_order_value": "AVERAGE_ORDER_VALUE",
    "orders.total_refund": "TOTAL_REFUND",
    "orders.first_category": "FIRST_CATEGORY_PUR",
    "orders.last_category": "LAST_CATEGORY_PUR",
    "orders.most_category": "MOST_PUR_CATEGORY",
    "orders.last_order_store": "LAST_ORDER_STORE",
    "orders.last_order_locale": "LAST_ORDER_LOCALE",
    "orders.last_order_currency": "LAST_ORDER_CCY",
}

#: Dotdigital data-field types of the default fields (anything else is a String)
DATA_FIELD_TYPES: dict[str, str] = {
    "DOB": "Date",
    "LAST_ORDER_DATE": "Date",
    "NUMBER_OF_ORDERS": "Numeric",
    "TOTAL_SPEND": "Numeric",
    "AVERAGE_ORDER_VALUE": "Numeric",
    "TOTAL_REFUND": "Numeric",
}


def data_field_type(name: str) -> str:
    """The Dotdigital type ``ctdd dotdigital setup`` gives data field ``name``: String unless listed above."""
    return DATA_FIELD_TYPES.get(name, "String")
