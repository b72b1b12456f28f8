"""``ctdd dotdigital setup`` against the Dotdigital sandbox over HTTP, and lists configured by name."""

from __future__ import annotations

import pytest

from support import all_settled, contact_request, make_settings, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.runtime.app import App
from ctdd.cli import main
from ctdd.cli.loading import with_sandbox
from ctdd.config import ConfigError, load_settings
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox

SYSTEM_FIELDS = {"FIRSTNAME": "String", "LASTNAME": "String", "FULLNAME": "String", "GENDER": "String",
                 "POSTCODE": "String"}


@pytest.fixture
def bare_sandbox():
    """A new account: only Dotdigital's system data fields and lists 1-3, no insight collections."""
    with DotdigitalSandbox(data_fields=SYSTEM_FIELDS) as sb:
        yield sb


def write_config(tmp_path, sandbox, monkeypatch, lists: str) -> str:
    monkeypatch.setenv("DD_PASSWORD", sandbox.password)
    path = tmp_path / "ctdd.toml"
    path.write_text(f"""
[service]
database_url = "sqlite:///{tmp_path / 'ctdd.db'}"

[accounts.main]
api_user = "{sandbox.api_user}"
password_env = "DD_PASSWORD"
base_url = "{sandbox.base_url}"

[stores.uk]
account = "main"
email_list = "newsletter"
[stores.uk.data_fields]
"custom.loyaltyTier" = "LOYALTY_TIER"
"custom.points" = "LOYALTY_POINTS"
[stores.uk.lists]
{lists}

[stores.de]
account = "main"
[stores.de.lists]
vip = "vip club"
""")
    return str(path)


def writes(sandbox, after=0):
    return [(r.method, r.path) for r in sandbox.requests[after:] if r.method != "GET"]


def test_setup_creates_everything_once_and_dry_run_writes_nothing(tmp_path, bare_sandbox, monkeypatch, capsys):
    sandbox = bare_sandbox
    config = write_config(tmp_path, sandbox, monkeypatch,
                          'customers = 1\nnewsletter = "NEWSLETTER"\nvip = "VIP Club"')

    assert main(["dotdigital", "setup", "--dry-run", "--config", config]) == 0
    plan = capsys.readouterr().out
    assert writes(sandbox) == []  # a dry run only reads
    assert "dry run" in plan
    lines = {line.split()[2] if line.split()[0] == "data" else line.split()[1]: line for line in plan.splitlines()
             if line.startswith("  ") and not line.startswith("    ")}
    assert lines["LOYALTY_TIER"].rstrip().endswith("create") and lines["FIRSTNAME"].rstrip().endswith("exists")
    assert "create" in lines['"VIP'] and "exists" in lines['"NEWSLETTER"'] and "-> id 2" in lines['"NEWSLETTER"']
    assert lines["Orders"].split()[-1] == "create" and "(contact/orders)" in lines["Orders"]
    assert "stores.uk.lists.vip = (created by setup)" in plan and "stores.de.lists.vip = (created by setup)" in plan

    assert main(["dotdigital", "setup", "--config", config]) == 0
    out = capsys.readouterr().out
    created_fields = [r.json["name"] for r in sandbox.requests if r.method == "POST" and r.path == "/v2/data-fields"]
    wanted = set(load_settings(config).stores["uk"].data_fields.values())
    assert sorted(created_fields) == sorted(wanted - set(SYSTEM_FIELDS))  # one POST per missing field
    assert {f["name"]: f["type"] for f in sandbox.data_fields}["TOTAL_SPEND"] == "Numeric"
    books = {b["name"]: b["id"] for b in sandbox.address_books}
    assert books["VIP Club"] == 4 and len(books) == 4  # "vip club" of store de is the same list
    assert "stores.uk.lists.vip = 4" in out and "stores.de.lists.vip = 4" in out and "stores.uk.lists.newsletter = 2" in out
    assert {(c["collectionName"], c["collectionScope"], c["collectionType"]) for c in sandbox.collections} == {
        ("Orders", "contact", "orders"), ("CartInsight", "contact", "cartInsight"),
        ("ProductViews", "contact", "custom"), ("CustomEvents", "contact", "custom")}
    assert "problem:" not in out and "0 problem(s)" in out

    mark = len(sandbox.requests)
    assert main(["dotdigital", "setup", "--config", config]) == 0
    again = capsys.readouterr().out
    assert writes(sandbox, mark) == []  # idempotent: the second run creates nothing
    assert "done: 0 created" in again
    assert not [line for line in again.splitlines() if line.split()[-1:] in (["create"], ["created"])]


def test_setup_reports_a_list_id_the_account_does_not_have(tmp_path, bare_sandbox, monkeypatch, capsys):
    config = write_config(tmp_path, bare_sandbox, monkeypatch, "customers = 1\nnewsletter = 99")
    assert main(["dotdigital", "setup", "--config", config]) == 1
    out = capsys.readouterr().out
    assert "id 99" in out and "missing" in out and "problem: account main: list id 99" in out


async def test_named_lists_resolve_at_start(service_factory, database_url, sandbox):
    named = {"uk": {"lists": {"customers": "customers", "newsletter": "newsletter", "sms": 3},
                    "email_list": "newsletter", "customers_list": "customers"}}
    settings = make_settings(database_url, sandbox, stores_extra=named)
    assert settings.stores["uk"].list_names == {"customers": "customers", "newsletter": "newsletter"}
    svc = await service_factory(settings)
    assert dict(svc.app.settings.stores["uk"].lists) == {"customers": 1, "newsletter": 2, "sms": 3}

    req = contact_request(customer_id="c-1", email="nia@example.com")
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    req.lists.add(list_key="sms", member=True)
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="delivery")
    assert sorted(lst["id"] for lst in sandbox.get_contact(email="nia@example.com")["lists"]) == [1, 2, 3]
    assert len([r for r in sandbox.requests if r.path == "/v2/address-books"]) == 1  # once per account


async def test_a_named_list_that_does_not_exist_stops_start_up(sqlite_url, sandbox):
    settings = make_settings(sqlite_url, sandbox, stores_extra={"uk": {"lists": {"newsletter": "Weekly News"}}})
    app = App(settings)
    with pytest.raises(ConfigError, match=r"stores\.uk\.lists\.newsletter = 'Weekly News'.*ctdd dotdigital setup"):
        await app.start()
    await app.stop(grace=0.1)


def test_sandbox_mode_creates_the_named_lists(sqlite_url, sandbox):
    settings = make_settings(sqlite_url, sandbox, stores_extra={"uk": {"lists": {"vip": "VIP"}}})
    with_sandbox(settings, sandbox)
    assert "VIP" in {b["name"] for b in sandbox.address_books}
