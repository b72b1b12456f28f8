"""Example brand plugin: the ACME brand's rules (docs/plugins.md walks through it; tests in
tests/integration/test_example_brand_plugin.py). Scope it to ACME's stores in the configuration::

    [plugins.acme_brand]
    stores = ["acme-de"]
"""

from __future__ import annotations

from ctdd import hookimpl
from ctdd.hooks.types import SuppressDecision

#: store-specific data fields: per store, contact attribute -> Dotdigital data field
DATA_FIELDS = {"acme-de": {"first_name": "VORNAME", "custom.shoeSize": "SCHUHGROESSE"}}
#: a local lookup table (refresh it from a file or a cache elsewhere: hooks never do network I/O)
LOYALTY_TIERS = {"c-100": "gold", "c-200": "silver"}
STAFF_DOMAINS = ("@acme.example",)
TEST_MARKERS = ("+test@", "@test.acme.example")


@hookimpl
def ctdd_enrich_contact(ctx, contact, mapped):
    fields = {f"dataFields.{name}": contact.attributes[attribute]
              for attribute, name in DATA_FIELDS.get(ctx.store_key, {}).items() if attribute in contact.attributes}
    tier = LOYALTY_TIERS.get(contact.identity.customer_id or "")
    if tier:
        fields["dataFields.LOYALTY_TIER"] = tier
    return fields or None


@hookimpl
def ctdd_suppress_contact(ctx, contact, mapped):
    email = contact.identity.email or ""
    if email.endswith(STAFF_DOMAINS):
        return SuppressDecision("ACME staff address")
    if any(marker in email for marker in TEST_MARKERS):
        return SuppressDecision("ACME test address")
    return None


@hookimpl
def ctdd_map_order(ctx, order, record):
    record["brand"] = "ACME"
    custom = (order.get("custom") or {}).get("fields") or {}
    record["giftWrapped"] = bool(custom.get("giftWrap"))
    return record
