"""``ctdd catalog export`` through the real entry point (``python -m ctdd``), against the commercetools fake and
the Dotdigital sandbox over HTTP, on SQLite and PostgreSQL: progress lines (a bar on a terminal), the delta,
--full, --modified-since, --target (a running service's ExportCatalog), refusals and exit codes."""

from __future__ import annotations

import asyncio
import os
import re
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from ctdd.testing.commercetools_fake import FakeCommercetools
from support.catalog import product, seed_catalog
from support.helpers import commercetools_section, make_settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fake():
    with FakeCommercetools() as ct:
        yield ct


def _config(tmp_path: Path, database_url: str, sandbox, fake) -> str:
    path = tmp_path / "ctdd.toml"
    path.write_text(f"""
[service]
database_url = "{database_url}"

[accounts.main]
api_user = "{sandbox.api_user}"
password_env = "SANDBOX_PASSWORD"
base_url = "{sandbox.base_url}"

{commercetools_section(fake, "ct")}
[stores.uk]
account = "main"
commercetools = "ct"
commercetools_project = "{fake.project_key}"
locale = "en-GB"
currency = "GBP"

[stores.uk.catalog]
enabled = true
country = "GB"
include_categories = true
url_template = "https://shop.example.com/{{locale}}/p/{{slug}}"

[stores.de]
account = "main"
commercetools = "ct"
commercetools_project = "{fake.project_key}"
locale = "de-DE"
currency = "EUR"

[dispatcher]
bulk_poll_min_seconds = 0.05
bulk_poll_max_seconds = 0.2
""")
    return str(path)


def _env(sandbox, fake) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTDD_")}
    return {**env, "SANDBOX_PASSWORD": sandbox.password, "CT_SECRET": fake.client_secret,
            "CTDD_LOG_LEVEL": "WARNING"}


def ctdd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctdd", *args], capture_output=True, text=True, env=env,
                          timeout=240)


def _imported_keys(sandbox, collection: str) -> list[str]:
    return [rec["key"] for r in sandbox.requests_matching("PUT", "/insightData/v3/import")
            if (r.json or {}).get("collectionName") == collection for rec in r.json["records"]]


def test_cli_exports_with_progress_then_only_changes(database_url, sandbox, fake, tmp_path):
    seeded = seed_catalog(fake, 1200)
    env = _env(sandbox, fake)
    config = _config(tmp_path, database_url, sandbox, fake)

    first = ctdd(env, "catalog", "export", "--store", "uk", "--config", config)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["progress", "progress", "progress", "done", "store exported"]
    assert [int(line.split()[1]) for line in lines[:4]] == [500, 1000, 1200, 1200]
    assert lines[3] == "done: 1200 products read, 603 records sent or removed, 0 rejected"
    assert len(sandbox.account_records("Catalog_uk")) == 600 and len(sandbox.account_records("Categories_uk")) == 3

    sandbox.reset_requests()
    again = ctdd(env, "catalog", "export", "--store", "uk", "--config", config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == ("store exported: 1200 products read, 0 records changed, 0 removed, "
                                             "0 Dotdigital calls")
    assert sandbox.requests_matching("PUT", "/insightData/v3/import") == []

    # two uk products change (version 2 is stamped 2026-01-01T00:00:02Z), one de-only product too
    for i in (4, 6, 7):
        fake.add("products", product(i, seeded["leaves"], name_suffix=" (new)", version=2))
    since = ctdd(env, "catalog", "export", "--store", "uk", "--config", config,
                 "--modified-since", "2026-01-01T00:00:01Z")
    assert since.returncode == 0, since.stderr
    assert since.stdout.splitlines()[-2] == "done: 3 products read, 2 records sent or removed, 0 rejected"
    assert sorted(_imported_keys(sandbox, "Catalog_uk")) == ["p000004", "p000006"]
    assert sandbox.account_records("Catalog_uk")["p000004"]["name"] == "Product 4 (new)"

    sandbox.reset_requests()
    full = ctdd(env, "catalog", "export", "--store", "uk", "--config", config, "--full")
    assert full.returncode == 0, full.stderr
    assert len(_imported_keys(sandbox, "Catalog_uk")) == 600 and len(_imported_keys(sandbox, "Categories_uk")) == 3


def test_cli_draws_a_progress_bar_on_a_terminal(sqlite_url, sandbox, fake, tmp_path):
    seed_catalog(fake, 1000)
    config = _config(tmp_path, sqlite_url, sandbox, fake)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ctdd", "catalog", "export", "--store", "uk", "--config", config],
                            stdout=follower, stderr=subprocess.PIPE, env=_env(sandbox, fake))
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        out += chunk
    code = proc.wait(timeout=120)
    with proc.stderr:
        err = proc.stderr.read()
    os.close(leader)
    assert code == 0, err
    text = out.decode()
    # tqdm's bar (100 columns on a terminal that reports no width), redrawn in place, the counts after it
    assert re.search(r"\ruk  50%\|█{15,}[▏▎▍▌▋▊▉ ]* *\| 500 products read, \d+ records sent or removed, 0 rejected", text)
    assert re.search(r"\ruk 100%\|█+\| 1000 products read, 503 records sent or removed, 0 rejected *\r\n", text)
    assert "progress:" not in text


def test_cli_refusals_and_exit_codes(sqlite_url, sandbox, fake, tmp_path):
    seed_catalog(fake, 10)
    env = _env(sandbox, fake)
    config = _config(tmp_path, sqlite_url, sandbox, fake)

    disabled = ctdd(env, "catalog", "export", "--store", "de", "--config", config)
    assert disabled.returncode == 1 and disabled.stdout == ""
    assert disabled.stderr.strip() == ("ctdd catalog export: refused (FAILED_PRECONDITION): the catalog of store 'de' "
                                       "is not enabled ([stores.de.catalog] enabled = true)")
    unknown = ctdd(env, "catalog", "export", "--store", "nope", "--config", config)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "ctdd catalog export: unknown store 'nope' (known: de, uk)"
    bad_time = ctdd(env, "catalog", "export", "--store", "uk", "--config", config, "--modified-since", "yesterday")
    assert bad_time.returncode == 2 and "is not an ISO 8601 time" in bad_time.stderr
    both = ctdd(env, "catalog", "export", "--store", "uk", "--config", config, "--full",
                "--modified-since", "2026-01-01T00:00:00Z")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr

    # another export of the store holds the lease (as a running service's would): refused, nothing sent
    from ctdd.db.engine import create_db_engine, upgrade_database
    from ctdd.programs import leases
    from datetime import datetime, timezone

    engine = create_db_engine(sqlite_url)
    upgrade_database(engine)
    assert leases.acquire(engine, "catalog-export:uk", "another-process", 300.0, datetime.now(timezone.utc))
    engine.dispose()
    busy = ctdd(env, "catalog", "export", "--store", "uk", "--config", config)
    assert busy.returncode == 1
    assert busy.stderr.strip() == ("ctdd catalog export: refused (ABORTED): an export of store 'uk' is already "
                                   "running; try again when it has finished")
    assert sandbox.requests_matching("PUT", "/insightData/v3/import") == []


async def test_cli_target_calls_a_running_services_export_catalog(service_factory, database_url, sandbox, fake,
                                                                  tmp_path):
    seed_catalog(fake, 700)
    settings = make_settings(database_url, sandbox, commercetools=fake, bulk_poll_min_seconds=0.05,
                             bulk_poll_max_seconds=0.2,
                             stores_extra={"uk": {"catalog": {"enabled": True, "country": "GB"}}})
    service = await service_factory(settings)
    config = _config(tmp_path, database_url, sandbox, fake)

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ctdd", "catalog", "export", "--config", config, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(sandbox, fake))
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode, out.decode(), err.decode()

    target = f"127.0.0.1:{service.app.port}"
    code, out, err = await run("--store", "uk", "--target", target)
    assert code == 0, err
    assert out.splitlines() == ["progress: 500 products read, 250 records sent or removed, 0 rejected",
                                "progress: 700 products read, 350 records sent or removed, 0 rejected",
                                "done: 700 products read, 350 records sent or removed, 0 rejected",
                                "store exported: 700 products read, 350 records changed"]
    assert len(sandbox.account_records("Catalog_uk")) == 350
    code, out, err = await run("--store", "de", "--target", target)
    assert code == 1 and out == ""
    assert err.strip() == ("ctdd catalog export: refused (FAILED_PRECONDITION): the catalog of store 'de' is not "
                           "enabled ([stores.de.catalog] enabled = true)")
    code, out, err = await run("--store", "uk", "--target", target, "--full")
    assert code == 2 and "--full runs in this process only" in err
    # the running service knows its stores: a store only it has is exported, one it lacks is its refusal
    code, out, err = await run("--store", "nope", "--target", target)
    assert code == 2 and out == ""
    assert err.strip() == "ctdd catalog export: refused (INVALID_ARGUMENT): unknown store"
    code, out, err = await run("--store", "uk", "--target", target, "--collection", "bad name!")
    assert code == 2 and "--collection: not a Dotdigital collection name" in err


def test_dotdigital_setup_creates_the_catalog_collections(sqlite_url, sandbox, fake, tmp_path):
    env = _env(sandbox, fake)
    config = _config(tmp_path, sqlite_url, sandbox, fake)
    plan = ctdd(env, "dotdigital", "setup", "--config", config, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert [line.split() for line in plan.stdout.splitlines() if "Catalog_" in line or "Categories_" in line] == [
        ["collection", "Catalog_uk", "(account/catalog)", "create"],
        ["collection", "Categories_uk", "(account/productCategories)", "create"]]
    assert not any(c["collectionName"].startswith(("Catalog_", "Categories_")) for c in sandbox.collections)

    done = ctdd(env, "dotdigital", "setup", "--config", config)
    assert done.returncode == 0, done.stderr
    catalog = {c["collectionName"]: (c["collectionScope"], c["collectionType"]) for c in sandbox.collections
               if c["collectionName"].startswith(("Catalog_", "Categories_"))}
    # only the store whose catalog is enabled (uk, with its categories); de's catalog is off
    assert catalog == {"Catalog_uk": ("account", "catalog"), "Categories_uk": ("account", "productCategories")}
    again = ctdd(env, "dotdigital", "setup", "--config", config)
    assert again.returncode == 0, again.stderr
    assert len([c for c in sandbox.collections if c["collectionName"] == "Catalog_uk"]) == 1
    assert sandbox.requests_matching("POST", "/insightData/v3/collections/Catalog_uk")
