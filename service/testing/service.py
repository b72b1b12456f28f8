"""The whole service in-process for tests of plugins: a temporary SQLite database, the Dotdigital sandbox,
the given plugins registered, real gRPC on loopback (used by ``ctdd.testing.pytest_plugin``).

The service runs on an event loop of its own, in a background thread, so tests using it are plain
(synchronous) test functions and need no asyncio plugin.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa

#: the store a test gets when it names none
DEFAULT_STORES: dict[str, dict[str, Any]] = {
    "uk": {"locale": "en-GB", "currency": "GBP", "commercetools_project": "test-project",
           "lists": {"customers": 1, "newsletter": 2, "sms": 3}},
}
#: outbox states a message does not leave
SETTLED = ("delivered", "dead")


def service_settings(database: Path, sandbox: Any, *, stores: Mapping[str, Mapping[str, Any]] | None = None,
                     plugins: Mapping[str, Mapping[str, Any]] | None = None, **dispatcher: Any):
    """Settings for a service on ``database`` (a SQLite file) sending to ``sandbox``; ``stores``: the
    ``[stores.<key>]`` tables (default :data:`DEFAULT_STORES`), ``plugins``: the ``[plugins.<name>]`` tables."""
    from ctdd.cli.loading import provision_sandbox
    from ctdd.config import settings_from_mapping

    raw: dict[str, Any] = {
        "service": {"listen": "127.0.0.1:0", "database_url": f"sqlite:///{database}"},
        "accounts": {"main": {"api_user": sandbox.api_user}},
        "stores": {key: {"account": "main", **table} for key, table in (stores or DEFAULT_STORES).items()},
        "dispatcher": {"concurrency": 4, "backoff_base_seconds": 0.05, "backoff_cap_seconds": 0.5,
                       "poll_interval_seconds": 0.05, "lease_seconds": 5.0, **dispatcher},
    }
    if plugins:
        raw["plugins"] = {name: dict(table) for name, table in plugins.items()}
    settings = settings_from_mapping(raw, env={"CTDD_ACCOUNT_MAIN_PASSWORD": sandbox.password,
                                               "CTDD_DOTDIGITAL_BASE_URL": sandbox.base_url})
    provision_sandbox(sandbox, settings.stores.values())
    return settings


class InProcessService:
    """A running service: ``stub`` (the SyncService gRPC stub), ``sandbox``, ``settings``, ``app``, and
    helpers to call it, wait for delivery and read what the sandbox received."""

    def __init__(self, settings: Any, sandbox: Any, plugins: Iterable[object] = ()):
        import grpc

        from ctdd.runtime.app import App
        from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc

        self.settings = settings
        self.sandbox = sandbox
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ctdd-test-service", daemon=True)
        self._thread.start()
        self.app = self._run(self._make_app(App, list(plugins)))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stub = pb_grpc.SyncServiceStub(self.channel)

    async def _make_app(self, app_class, plugins: list[object]):
        app = app_class(self.settings, extra_plugins=plugins, run_backsync=False)
        await app.start()
        return app

    def _run(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        self.channel.close()
        try:
            self._run(self.app.stop(grace=1.0))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self.app.engine.dispose()

    # -- calling the service --------------------------------------------------------------------
    def sync_contact(self, store: str | None = None, *, email: str = "", customer_id: str = "", mobile: str = "",
                     custom: Mapping[str, Any] | None = None, **profile: Any):
        """``SyncContact`` for one contact; ``profile``: ContactProfile fields (``first_name`` ...), ``custom``:
        its custom fields (attributes ``custom.<name>``)."""
        from google.protobuf import struct_pb2

        from ctdd.sync.v1 import sync_service_pb2 as pb

        request = pb.SyncContactRequest(
            store_key=store or self.default_store,
            identity=pb.ContactIdentity(customer_id=customer_id, email=email, mobile_number=mobile),
            profile=pb.ContactProfile(**profile))
        if custom:
            fields = struct_pb2.Struct()
            fields.update(dict(custom))
            request.profile.custom_fields.CopyFrom(fields)
        return self.stub.SyncContact(request)

    def order_created(self, order: Mapping[str, Any], store: str | None = None):
        """``TrackEvent`` with a commercetools ``OrderCreated`` message carrying ``order`` (a commercetools
        Order: ``id``, ``version``, ``customerEmail``, ``lineItems``, ``totalPrice`` ...)."""
        from ctdd.sync.v1 import sync_service_pb2 as pb

        key = store or self.default_store
        message = {
            "notificationType": "Message", "projectKey": self.settings.stores[key].commercetools_project,
            "id": str(uuid.uuid4()), "version": 1, "sequenceNumber": int(order.get("version") or 1),
            "resource": {"typeId": "order", "id": order["id"]}, "resourceVersion": int(order.get("version") or 1),
            "resourceUserProvidedIdentifiers": {}, "type": "OrderCreated", "order": dict(order),
            "createdAt": order.get("createdAt") or "2026-01-01T00:00:00.000Z",
            "lastModifiedAt": order.get("lastModifiedAt") or order.get("createdAt") or "2026-01-01T00:00:00.000Z",
        }
        return self.stub.TrackEvent(pb.TrackEventRequest(store_key=key,
                                                         commercetools_delivery=json.dumps(message).encode()))

    @property
    def default_store(self) -> str:
        return next(iter(self.settings.stores))

    # -- waiting and reading ----------------------------------------------------------------------
    def rows(self, sql: str, **params: Any) -> list[dict]:
        with self.app.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def wait_delivered(self, timeout: float = 15.0) -> list[dict]:
        """Wait until every outbox message is delivered or dead; returns the outbox rows."""
        return wait_until(lambda: (rows := self.rows("SELECT * FROM outbox_message ORDER BY id"))
                          and all(r["status"] in SETTLED for r in rows) and rows, timeout, "delivery")

    def contact(self, email: str) -> dict | None:
        """The contact as the sandbox holds it (v3 read model: ``dataFields``, ``lists`` ...), or None."""
        return self.sandbox.get_contact(email=email)

    def insight(self, collection: str, email: str) -> dict[str, Any]:
        """The records of the contact with ``email`` in a contact-scoped collection (``Orders`` ...)."""
        return self.sandbox.insight_records(collection, contact_email=email)

    def dead_letters(self) -> list[dict]:
        return self.rows("SELECT * FROM outbox_message WHERE status = 'dead' ORDER BY id")

    def rejected(self) -> list[dict]:
        """``rejected_record`` rows (records refused, with the reason: a plugin that failed is named)."""
        return self.rows("SELECT * FROM rejected_record ORDER BY id")


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
