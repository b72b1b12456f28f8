"""Plugins (pluggy hooks through real gRPC), configuration and the CLI's refusal to start without credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from support import all_settled, contact_request, make_settings, outbox_rows, wait_for
from ctdd import hookimpl
from ctdd.config import ConfigError, load_settings, settings_from_mapping
from ctdd.hooks.manager import SuppressDecision, create_plugin_manager


def test_default_mapping_is_registered_in_code_not_through_an_entry_point():
    names = {ep.name for ep in entry_points(group="ctdd")}
    assert "default_mapping" not in names  # disabling entry points cannot break start-up
    hooks = create_plugin_manager(load_entrypoints=False)
    assert any(name == "default_mapping" for name, _ in hooks.pm.list_name_plugin())


def test_a_misspelt_hook_fails_loudly_at_start():
    class Typo:
        @hookimpl
        def ctdd_map_contcat(self, ctx, contact):  # misspelt on purpose
            return {}

    with pytest.raises(ConfigError, match="plugin 'Typo'.*ctdd_map_contcat.*did you mean ctdd_map_contact"):
        create_plugin_manager([Typo()])


def test_disabled_plugins_are_not_loaded():
    hooks = create_plugin_manager(env={"CTDD_DISABLE_PLUGINS": "default_mapping"})
    assert hooks.pm.get_plugin("default_mapping") is None


class StaffSuppression:
    @hookimpl
    def ctdd_suppress_contact(self, ctx, contact, mapped):
        if contact.identity.email and contact.identity.email.endswith("@staff.example"):
            return SuppressDecision(reason="internal staff address")


class LoyaltyEnrichment:
    @hookimpl
    def ctdd_enrich_contact(self, ctx, contact, mapped):
        return {"dataFields.LOYALTY_TIER": "gold"} if ctx.store_key == "uk" else None


class BrandMapping:
    """A brand plugin answering first: the default mapping (trylast) is not consulted."""

    @hookimpl
    def ctdd_map_contact(self, ctx, contact):
        if ctx.store_key == "de":
            return {"identifiers.email": contact.identity.email, "dataFields.STORE": "brand-de"}


class Outcomes:
    def __init__(self):
        self.seen = []

    @hookimpl
    def ctdd_delivery_result(self, ctx, outcome):
        self.seen.append((ctx.store_key, outcome.outcome, outcome.response_code))


async def test_hooks_run_around_the_core(service_factory, database_url, sandbox):
    sandbox.add_data_field("LOYALTY_TIER")
    outcomes = Outcomes()
    svc = await service_factory(make_settings(database_url, sandbox),
                                extra_plugins=[StaffSuppression(), LoyaltyEnrichment(), BrandMapping(), outcomes])
    staff = await svc.stub.SyncContact(contact_request(email="bob@staff.example"))
    assert list(staff.suppression_reasons) == ["internal staff address"]
    assert not staff.changed and not staff.outbox_message_ids

    await svc.stub.SyncContact(contact_request(email="ann@example.com", first_name="Ann"))
    await svc.stub.SyncContact(contact_request("de", email="udo@example.de", first_name="Udo"))
    await wait_for(lambda: all_settled(svc) and len(outcomes.seen) == 2, what="deliveries")
    assert sandbox.get_contact(email="ann@example.com")["dataFields"]["LOYALTY_TIER"] == "gold"
    udo = sandbox.get_contact(email="udo@example.de")["dataFields"]
    assert udo["STORE"] == "brand-de" and udo["FIRSTNAME"] is None
    assert sorted(outcomes.seen) == [("de", "delivered", 201), ("uk", "delivered", 201)]
    assert sandbox.get_contact(email="bob@staff.example") is None
    assert len(outbox_rows(svc)) == 2


def test_literal_password_in_config_file_is_refused(tmp_path):
    cfg = tmp_path / "ctdd.toml"
    cfg.write_text('[accounts.main]\napi_user = "u"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match="literal 'password'") as info:
        load_settings(cfg, env={})
    assert "hunter2" not in str(info.value)


def test_password_from_env_or_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    raw = {"accounts": {"a": {"api_user": "u", "password_file": str(secret)},
                        "b-2": {"api_user": "u", "password_env": "MY_PW"}},
           "stores": {"s": {"account": "a", "data_fields": {"custom.x": "X_FIELD"}}}}
    s = settings_from_mapping(raw, env={"MY_PW": "from-env", "CTDD_DOTDIGITAL_BASE_URL": "http://127.0.0.1:9/"})
    assert s.accounts["a"].password.get_secret_value() == "s3cret"
    assert s.accounts["b-2"].password.get_secret_value() == "from-env"
    assert s.accounts["a"].base_url == "http://127.0.0.1:9"
    assert "s3cret" not in repr(s)
    assert s.stores["s"].data_fields["custom.x"] == "X_FIELD" and s.stores["s"].data_fields["first_name"] == "FIRSTNAME"


def test_invalid_data_field_names_are_refused():
    raw = {"accounts": {"a": {"api_user": "u", "password_env": "P"}},
           "stores": {"s": {"data_fields": {"custom.x": "THIS_NAME_IS_FAR_TOO_LONG"}}}}
    with pytest.raises(ConfigError, match="data-field name"):
        settings_from_mapping(raw, env={"P": "x"})


def test_serve_without_sandbox_or_credentials_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTDD_")}
    proc = subprocess.run([sys.executable, "-m", "ctdd", "serve", "--database-url", f"sqlite:///{tmp_path}/x.db"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--sandbox" in proc.stderr and "no Dotdigital account" in proc.stderr

    cfg = tmp_path / "ctdd.toml"
    cfg.write_text('[accounts.main]\napi_user = "apiuser@apiconnector.com"\n[stores.uk]\naccount = "main"\n')
    proc = subprocess.run([sys.executable, "-m", "ctdd", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "credentials missing" in proc.stderr


def test_every_hook_is_documented_for_plugin_authors():
    from pathlib import Path

    from ctdd.hooks import spec as hookspecs

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("ctdd_")]
    assert hooks, "no hookspecs found"
    for name in hooks:
        assert f"### {name}(" in docs, f"{name} is not documented in docs/plugins.md"
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
