"""Helpers shared by the tests: settings for a service on the sandbox, a running service over real gRPC,
CLI subprocesses, waiting, and reading the outbox."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ctdd.config import DispatcherConfig, settings_from_mapping
from ctdd.runtime.app import App
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox

POSTGRES_ADMIN_URL = os.environ.get("CTDD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED_DIR = Path(os.environ.get("CTDD_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))

FAST_DISPATCH = dict(
    concurrency=8, batch_size=32, max_attempts=10, backoff_base_seconds=0.05, backoff_cap_seconds=0.5,
    lease_seconds=5.0, poll_interval_seconds=0.05,
    # product views are sent at once, one call each (tests of their coalescing set these themselves)
    view_coalesce_seconds=0.0, merge_queued_views=False,
)


def reset_postgres(url: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


def make_settings(database_url: str, sandbox: DotdigitalSandbox, *, commercetools=None, stores_extra=None,
                  accounts_extra: dict[str, DotdigitalSandbox] | None = None, **dispatcher: Any):
    """Settings for a service talking to ``sandbox`` (and to the fake commercetools API ``commercetools``).

    The sandbox account gets the default data fields (as ``ctdd dotdigital setup`` would create them);
    fields only mapped by a test (LOYALTY_TIER) are left for the test to create. ``accounts_extra`` adds
    ``[accounts.<name>]`` tables, each on a sandbox of its own (a store uses one with ``stores_extra``).
    """
    from ctdd.config import DEFAULT_DATA_FIELDS, data_field_type

    for account in (sandbox, *(accounts_extra or {}).values()):
        for name in DEFAULT_DATA_FIELDS.values():
            account.add_data_field(name, data_field_type(name))
    raw = {
        "service": {"listen": "127.0.0.1:0", "database_url": database_url},
        "accounts": {"main": {"api_user": sandbox.api_user}},
        "stores": {
            "uk": {
                "account": "main",
                "commercetools_project": "shop-eu",
                "locale": "en-GB",
                "currency": "GBP",
                "lists": {"customers": 1, "newsletter": 2, "sms": 3},
                "data_fields": {"custom.loyaltyTier": "LOYALTY_TIER"},
            },
            "de": {"account": "main", "commercetools_project": "shop-eu", "locale": "de-DE", "currency": "EUR"},
        },
        "dispatcher": {**FAST_DISPATCH, **dispatcher},
    }
    env = {"CTDD_ACCOUNT_MAIN_PASSWORD": sandbox.password, "CTDD_DOTDIGITAL_BASE_URL": sandbox.base_url}
    if accounts_extra:  # each account on its own sandbox: a base_url each instead of one for all
        del env["CTDD_DOTDIGITAL_BASE_URL"]
        raw["accounts"]["main"]["base_url"] = sandbox.base_url
        for name, account in accounts_extra.items():
            raw["accounts"][name] = {"api_user": account.api_user, "base_url": account.base_url}
            env[f"CTDD_ACCOUNT_{name.upper()}_PASSWORD"] = account.password
    if commercetools is not None:
        raw["commercetools"] = {"ct": {"project_key": commercetools.project_key, "client_id": commercetools.client_id,
                                       "client_secret_env": "CT_SECRET", "api_url": commercetools.base_url,
                                       "auth_url": commercetools.base_url}}
        env["CT_SECRET"] = commercetools.client_secret
        for store in raw["stores"].values():
            store["commercetools"] = "ct"
            store["commercetools_project"] = commercetools.project_key
    for key, extra in (stores_extra or {}).items():
        raw["stores"].setdefault(key, {"account": "main"}).update(extra)
    return settings_from_mapping(raw, env=env)


def commercetools_section(fake, name: str = "shop") -> str:
    """The ``[commercetools.<name>]`` TOML section of an API client of the fake commercetools API ``fake``;
    its secret comes from the ``CT_SECRET`` environment variable."""
    return f"""[commercetools.{name}]
project_key = "{fake.project_key}"
client_id = "{fake.client_id}"
client_secret_env = "CT_SECRET"
api_url = "{fake.base_url}"
auth_url = "{fake.base_url}"
"""


def write_service_config(path: Path, database_url: str, sandbox: DotdigitalSandbox, *, listen: str | None = None,
                         dispatcher: dict[str, Any] | None = None) -> str:
    """A TOML config for a ``ctdd`` subprocess talking to ``sandbox`` (its password from SANDBOX_PASSWORD)."""
    service = f'listen = "{listen}"\n' if listen else ""
    settings = "".join(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}\n"
                       for key, value in (dispatcher or {}).items())
    path.write_text(f"""
[service]
{service}database_url = "{database_url}"

[accounts.main]
api_user = "{sandbox.api_user}"
password_env = "SANDBOX_PASSWORD"
base_url = "{sandbox.base_url}"

[stores.uk]
account = "main"
commercetools_project = "shop-eu"

[dispatcher]
{settings}""")
    return str(path)


def start_cli(args: list[str], sandbox: DotdigitalSandbox, log_path: Path):
    """Start ``python -m ctdd ARGS`` with the sandbox password, appending its output to ``log_path``."""
    import sys

    env = {**os.environ, "SANDBOX_PASSWORD": sandbox.password, "CTDD_LOG_LEVEL": "INFO"}
    env.pop("CTDD_DOTDIGITAL_BASE_URL", None)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "ctdd", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env)


async def stop_with_sigterm(proc: subprocess.Popen, timeout: float = 15) -> int | None:
    """Stop a CLI subprocess as a process manager does: SIGTERM, then wait. Its return code, or None when it
    did not end within ``timeout`` (it is then killed, so no test leaves a process behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)
        return None


class RunningService:
    """A started App plus a real gRPC channel to it."""

    def __init__(self, app: App, channel: grpc.aio.Channel):
        self.app = app
        self.channel = channel
        self.stub = pb_grpc.SyncServiceStub(channel)

    @property
    def engine(self):
        return self.app.engine

    def rows(self, sql: str, **params) -> list[dict]:
        with self.app.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` (sync) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def contact_request(store_key: str = "uk", *, customer_id: str = "", email: str = "", mobile: str = "",
                    version: int = 0, resource_id: str | None = None, **profile: Any) -> pb.SyncContactRequest:
    req = pb.SyncContactRequest(
        store_key=store_key,
        identity=pb.ContactIdentity(customer_id=customer_id, email=email, mobile_number=mobile),
        profile=pb.ContactProfile(**profile),
    )
    if version:
        req.source.resource_type = "customer"
        req.source.resource_id = resource_id or customer_id or "c-unknown"
        req.source.version = version
    return req


def outbox_rows(svc: RunningService) -> list[dict]:
    return svc.rows("SELECT * FROM outbox_message ORDER BY id")


def statuses(svc: RunningService) -> dict[int, str]:
    return {r["id"]: r["status"] for r in outbox_rows(svc)}


def all_settled(svc: RunningService) -> bool:
    return all(s in ("delivered", "dead") for s in statuses(svc).values())


def field_violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an INVALID_ARGUMENT error (field -> description)."""
    status = rpc_status.from_call(err)
    assert status is not None, "rich error details missing"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


__all__ = [
    "reset_postgres",
    "make_settings",
    "commercetools_section",
    "write_service_config",
    "start_cli",
    "stop_with_sigterm",
    "RunningService",
    "wait_for",
    "contact_request",
    "outbox_rows",
    "statuses",
    "all_settled",
    "field_violations",
    "POSTGRES_ADMIN_URL",
    "SHARED_DIR",
    "FAST_DISPATCH",
    "DispatcherConfig",
]
