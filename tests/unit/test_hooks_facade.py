"""The plugin facade (ctdd.hooks.manager.Hooks): the "modify the record we built" hooks chain their answers
and pass a schema guard, a failure names the plugin and the hook, plugins scoped to stores run only for them,
and start-up stops naming a plugin that cannot be loaded."""

from __future__ import annotations

import json
import sys

import pytest

from ctdd import hookimpl
from ctdd.cli.main import main
from ctdd.config import ConfigError, settings_from_mapping
from ctdd.domain.behaviour import BehaviouralEventInput
from ctdd.domain.contact import ContactInput, Identity
from ctdd.hooks.manager import create_plugin_manager
from ctdd.hooks.types import HookContext, PluginFailed, SuppressDecision

SETTINGS = settings_from_mapping({"accounts": {"main": {"api_user": "u", "password_env": "PW"}},
                                  "stores": {"uk": {}, "de": {}},
                                  "plugins": {"scoped": {"stores": ["uk"]}}}, env={"PW": "x"})
UK = HookContext(store=SETTINGS.stores["uk"], settings=SETTINGS)
DE = HookContext(store=SETTINGS.stores["de"], settings=SETTINGS)
ORDER = {"id": "o-1", "orderNumber": "A-1"}
RECORD = {"id": "o-1", "orderTotal": 25.0, "currency": "EUR", "products": [{"sku": "S", "price": 25.0}]}


def hooks(*plugins, settings=None):
    return create_plugin_manager(plugins, load_entrypoints=False, env={}, settings=settings)


class InPlace:
    @hookimpl
    def ctdd_map_order(self, record):
        record["brand"] = "ACME"


class Replace:
    @hookimpl
    def ctdd_map_order(self, order, record):
        return {**record, "orderNumber": order["orderNumber"], "seen_brand": record.get("brand", "")}


def test_no_plugin_sends_the_built_record_itself():
    assert hooks().map_order(UK, ORDER, RECORD) is RECORD


def test_answers_are_chained_in_call_order_and_the_built_record_is_not_touched():
    # the last registered is called first: InPlace, then Replace sees its change
    record = hooks(Replace(), InPlace()).map_order(UK, ORDER, RECORD)
    assert record == {**RECORD, "brand": "ACME", "orderNumber": "A-1", "seen_brand": "ACME"}
    assert "brand" not in RECORD


class TypeChanger:
    @hookimpl
    def ctdd_map_order(self, record):
        record["orderTotal"] = "25.00"
        return record


class Adds:
    def __init__(self, value):
        self.value = value

    @hookimpl
    def ctdd_map_cart(self, record):
        return {**record, "tier": self.value}


def test_a_field_changing_json_type_is_refused_naming_the_plugin():
    with pytest.raises(PluginFailed) as info:
        hooks(TypeChanger()).map_order(UK, ORDER, RECORD)
    assert (info.value.plugin, info.value.hook) == ("TypeChanger", "ctdd_map_order")
    assert str(info.value) == ("plugin 'TypeChanger' failed in ctdd_map_order: answer refused: field 'orderTotal' "
                               "would change from number to string (the record the service built)")


def test_a_field_changing_type_relative_to_the_collection_is_refused():
    facade = hooks(Adds("gold"))
    assert facade.map_cart(UK, {}, {"cartId": "c-1"})["tier"] == "gold"
    facade.pm.unregister(name=[n for n, p in facade.pm.list_name_plugin() if isinstance(p, Adds)][0])
    facade.pm.register(Adds(3))
    with pytest.raises(PluginFailed, match="'tier' would change from string to number .the type the collection"):
        facade.map_cart(DE, {}, {"cartId": "c-2"})  # same account, same CartInsight collection


class Raises:
    @hookimpl
    def ctdd_map_behavioural_event(self, event, record):
        raise ValueError(f"no product {event.data['productId']} for ann@example.com")


class NotAnObject:
    @hookimpl
    def ctdd_transform_payload(self, body):
        return ["x"]


def test_an_exception_names_plugin_and_hook_but_no_value():
    event = BehaviouralEventInput(event_id="e-1", kind="product_viewed", identity=Identity(email="ann@example.com"),
                                  occurred_at=None, locale=None, currency=None, data={"productId": "p-1"})
    with pytest.raises(PluginFailed) as info:
        hooks(Raises()).map_behavioural_event(UK, event, "ProductViews", {"productId": "p-1"})
    assert str(info.value) == "plugin 'Raises' failed in ctdd_map_behavioural_event: raised ValueError"
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(PluginFailed, match="returned list, expected a JSON object or None"):
        hooks(NotAnObject()).transform_payload(UK, "contact", None, {"identifiers": {}})
    with pytest.raises(ValueError, match="unknown payload kind"):
        hooks().transform_payload(UK, "program", None, {})


class BrandCatalog:
    @hookimpl
    def ctdd_map_catalog_item(self, item):
        return {"id": item.key, "price": "cheap"}


def test_a_brand_catalog_record_is_checked_against_the_bundled_one():
    from ctdd.domain.catalog import CatalogOptions, catalog_items

    projection = {"id": "p-1", "key": "p-1", "version": 1, "name": {"en": "Hat"}, "slug": {"en": "hat"},
                  "categories": [], "masterVariant": {"id": 1, "sku": "S-1", "prices": [
                      {"id": "pr", "value": {"type": "centPrecision", "currencyCode": "EUR", "centAmount": 1000,
                                             "fractionDigits": 2}}]}, "variants": []}
    options = CatalogOptions(store_key="uk", locales=("en",), currencies=("EUR",))
    [item] = list(catalog_items(projection, options, {}, None))
    assert hooks().map_catalog_item(UK, item)["price"] == 10.0
    with pytest.raises(PluginFailed, match="ctdd_map_catalog_item: answer refused: field 'price' would change"):
        hooks(BrandCatalog()).map_catalog_item(UK, item)


class Everything:
    """Answers every hook; scoped to store uk by [plugins.scoped]."""

    def __init__(self):
        self.stores = []

    @hookimpl
    def ctdd_map_contact(self, ctx, contact):
        self.stores.append(ctx.store_key)
        return {"identifiers.email": "scoped"}

    @hookimpl
    def ctdd_suppress_contact(self, ctx):
        return SuppressDecision("scoped")

    @hookimpl
    def ctdd_map_order(self, record):
        return {**record, "scoped": True}


def test_a_plugin_scoped_to_store_uk_never_runs_for_store_de():
    plugin = Everything()
    facade = hooks(("scoped", plugin), settings=SETTINGS)
    contact = ContactInput(store_key="de", identity=Identity(email="ann@example.com"))
    assert facade.map_contact(DE, contact)["identifiers.email"] == "ann@example.com"  # the default mapping
    assert facade.suppress_contact(DE, contact, {}) == [] and "scoped" not in facade.map_order(DE, ORDER, RECORD)
    assert plugin.stores == []
    assert facade.map_contact(UK, contact) == {"identifiers.email": "scoped"}
    assert facade.suppress_contact(UK, contact, {}) == ["scoped"] and facade.map_order(UK, ORDER, RECORD)["scoped"]


def test_scoping_an_unknown_or_bundled_plugin_stops_start_up():
    settings = SETTINGS.replace(plugins={"scopd": {"name": "scopd", "stores": ["uk"]}})
    with pytest.raises(ConfigError, match=r"plugins.scopd: no plugin named 'scopd' .*did you mean \[plugins.scoped\]"):
        hooks(("scoped", Everything()), settings=settings)
    settings = SETTINGS.replace(plugins={"default_mapping": {"name": "default_mapping", "stores": ["uk"]}})
    with pytest.raises(ConfigError, match="bundled with ctdd-sync and applies to every store"):
        hooks(settings=settings)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution ``acme-plugins 1.2`` with two ``ctdd`` entry points put on sys.path."""
    def install(module_source: str):
        (tmp_path / "acme_plugin.py").write_text(module_source)
        info = tmp_path / "acme_plugins-1.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugins\nVersion: 1.2\n")
        (info / "entry_points.txt").write_text("[ctdd]\nacme = acme_plugin\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "acme_plugin", raising=False)
    return install


def test_an_entry_point_that_cannot_be_imported_stops_start_up_naming_it(installed):
    installed("import acme_loyalty_tables  # not installed\n")
    with pytest.raises(ConfigError, match=r"plugin 'acme' could not be loaded \(entry point acme = 'acme_plugin' "
                                          r"of acme-plugins 1.2\): ModuleNotFoundError"):
        create_plugin_manager(env={})


def test_plugins_list_shows_hooks_distribution_version_and_stores(installed, tmp_path, capsys, monkeypatch):
    installed("from ctdd import hookimpl\n\n@hookimpl\ndef ctdd_map_order(record):\n    return None\n")
    config = tmp_path / "ctdd.toml"
    config.write_text('[accounts.main]\napi_user = "u"\npassword_env = "PW"\n[stores.uk]\n[stores.de]\n'
                      '[plugins.acme]\nstores = ["de"]\n')
    monkeypatch.setenv("PW", "x")
    assert main(["plugins", "list", "--config", str(config), "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["acme"] == {"name": "acme", "hooks": ["ctdd_map_order"], "distribution": "acme-plugins",
                              "version": "1.2", "stores": ["de"], "bundled": False}
    assert listed["default_mapping"]["stores"] is None and listed["default_mapping"]["bundled"]
    assert main(["plugins", "list", "--config", str(config)]) == 0
    assert "acme: acme-plugins 1.2\n  hooks:  ctdd_map_order\n  stores: de\n" in capsys.readouterr().out


def test_implementations_follow_plugins_registered_and_unregistered_after_a_call():
    # the facade remembers which implementations apply per hook and store: a later (un)registration counts
    h = hooks()
    assert h.map_order(UK, ORDER, RECORD) is RECORD
    assert h.implementations("ctdd_map_order", "uk") == ()
    plugin = InPlace()
    h.pm.register(plugin)  # no [plugins.<name>] scope: applies to every store
    assert h.map_order(UK, ORDER, RECORD)["brand"] == "ACME"
    assert [impl.plugin for impl in h.implementations("ctdd_map_order", "de")] == [plugin]
    h.pm.unregister(plugin)
    assert h.map_order(UK, ORDER, RECORD) is RECORD
    assert h.implementations("ctdd_map_order", "de") == ()


def test_remembered_implementations_keep_their_store_scopes():
    h = hooks(("scoped", InPlace()), settings=SETTINGS)
    for _ in range(2):  # the second answer comes from what was remembered
        assert h.map_order(UK, ORDER, RECORD)["brand"] == "ACME"
        assert h.map_order(DE, ORDER, RECORD) is RECORD
