"""docs/plugins.md cannot drift from the hook specifications: every hook has a section whose heading is its
signature as specified, every documented hook exists, every hook section has an example, and every example
runs: each Python block is executed, and the hooks it implements are called through the facade."""

from __future__ import annotations

import inspect
import re
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ctdd import hookimpl
from ctdd.config import settings_from_mapping
from ctdd.domain.behaviour import BehaviouralEventInput
from ctdd.domain.catalog import CatalogOptions, catalog_items
from ctdd.domain.contact import ContactInput, Identity
from ctdd.hooks import spec
from ctdd.hooks.manager import create_plugin_manager
from ctdd.hooks.types import DeliveryOutcome, HookContext, TriggerInfo

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = {name: getattr(spec, name) for name in dir(spec) if name.startswith("ctdd_")}
HEADING = re.compile(r"^### (ctdd_\w+)\(([^)]*)\)\s*$", re.M)
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def sections() -> dict[str, tuple[str, str]]:
    """Hook name -> (the arguments in its heading, the text of its section)."""
    found = list(HEADING.finditer(DOCS))
    out = {}
    for n, match in enumerate(found):
        end = found[n + 1].start() if n + 1 < len(found) else DOCS.find("\n## ", match.end())
        out[match.group(1)] = (match.group(2), DOCS[match.end():end])
    return out


def test_every_hook_is_documented_with_its_signature():
    documented = sections()
    assert sorted(documented) == sorted(HOOKS), "docs/plugins.md headings and ctdd.hooks.spec differ"
    for name, (args, _) in documented.items():
        specified = ", ".join(inspect.signature(HOOKS[name]).parameters)
        assert args == specified, f"docs/plugins.md documents {name}({args}); the spec is {name}({specified})"


def test_every_hook_section_has_an_example_implementing_it():
    for name, (_, text) in sections().items():
        assert any(f"def {name}(" in block for block in BLOCK.findall(text)), f"{name} has no example"


SETTINGS = settings_from_mapping({"accounts": {"main": {"api_user": "u", "password_env": "PW"}},
                                  "stores": {"acme-de": {"locale": "de-DE"}}}, env={"PW": "x"})
CTX = HookContext(store=SETTINGS.stores["acme-de"], settings=SETTINGS)
NOW = datetime(2026, 6, 7, 12, tzinfo=timezone.utc)  # a Sunday
CONTACT = ContactInput(store_key="acme-de", identity=Identity(customer_id="c-100", email="bob@acme.example"),
                       attributes={"first_name": "Bob"})
PRICE = {"type": "centPrecision", "currencyCode": "EUR", "centAmount": 1000, "fractionDigits": 2}
PROJECTION = {"id": "p-1", "key": "p-1", "version": 1, "name": {"de-DE": "Hut"}, "slug": {"de-DE": "hut"},
              "categories": [], "variants": [],
              "masterVariant": {"id": 1, "sku": "S-1", "prices": [{"id": "pr", "value": PRICE}]}}
[ITEM] = catalog_items(PROJECTION, CatalogOptions(store_key="acme-de", locales=("de-DE",), currencies=("EUR",)),
                       {}, NOW)
EVENT = BehaviouralEventInput(event_id="e-1", kind="product_viewed", identity=Identity(email="ann@example.com"),
                              occurred_at=NOW, locale="de-DE", currency="EUR", data={"productId": "p-1"})
TRIGGER = TriggerInfo(trigger_id=1, program_kind="review_request", program=7, strategy="enrolment", channel="email",
                      contact_id=3, email="ann@example.com", mobile_number=None, subject_type="order",
                      subject_id="o-1", subject_version=1, step=1, due_at=NOW, now=NOW)
def _not_failed(decision):
    assert decision is None or decision.action != "failed", decision
    return decision


#: how each hook is called through the facade in the examples' test
CALLS = {
    "ctdd_map_contact": lambda h: h.map_contact(CTX, CONTACT),
    "ctdd_enrich_contact": lambda h: h.enrich_contact(CTX, CONTACT, {"identifiers.email": "bob@acme.example"}),
    "ctdd_suppress_contact": lambda h: h.suppress_contact(CTX, CONTACT, {}),
    # the facade swallows what this notification hook raises: the examples' are called directly
    "ctdd_delivery_result": lambda h: [impl.function(CTX, DeliveryOutcome(1, "contact.upsert", "dead", 1, 400, "bad",
                                                                          "customer", "c-1"))
                                       for impl in h.implementations("ctdd_delivery_result", CTX.store_key)],
    "ctdd_map_catalog_item": lambda h: h.map_catalog_item(CTX, ITEM),
    # the facade turns an exception of this hook into a "failed" decision
    "ctdd_should_trigger": lambda h: _not_failed(h.should_trigger(CTX, TRIGGER)),
    "ctdd_map_order": lambda h: h.map_order(CTX, {"id": "o-1", "custom": {"fields": {"giftWrap": True}}},
                                            {"id": "o-1", "orderTotal": 10.0}),
    "ctdd_map_cart": lambda h: h.map_cart(CTX, {"id": "c-1"}, {"cartId": "c-1", "cartUrl": "http://shop/c-1"}),
    "ctdd_map_behavioural_event": lambda h: h.map_behavioural_event(CTX, EVENT, "ProductViews", {"productId": "p-1"}),
    "ctdd_transform_payload": lambda h: h.transform_payload(CTX, "contact", None,
                                                            {"dataFields": {"INTERNAL_NOTE": "x", "FIRSTNAME": "B"}}),
}


def test_every_hook_has_a_call_in_this_test():
    assert sorted(CALLS) == sorted(HOOKS)


@pytest.mark.parametrize("number", range(len(BLOCK.findall(DOCS))))
def test_every_example_runs(number):
    source = BLOCK.findall(DOCS)[number]
    module = types.ModuleType(f"plugins_md_example_{number}")
    module.hookimpl = hookimpl  # snippets under a heading may leave out the import shown above them
    exec(compile(source, f"docs/plugins.md example {number + 1}", "exec"), module.__dict__)
    implemented = [name for name in HOOKS if callable(getattr(module, name, None))]
    if not implemented:
        return
    facade = create_plugin_manager([(module.__name__, module)], load_entrypoints=False, env={})
    for name in implemented:
        CALLS[name](facade)  # raises (PluginFailed, naming the example) when the example does not run


def test_the_end_to_end_test_is_quoted_verbatim_and_fits_15_lines():
    quoted = [b for b in BLOCK.findall(DOCS) if "def test_brand_plugin_end_to_end(ctdd_service)" in b]
    assert len(quoted) == 1
    assert len(quoted[0].strip().splitlines()) <= 15
    assert quoted[0] in (ROOT / "tests" / "integration" / "test_example_brand_plugin.py").read_text()
