"""A plugin that fails in a hook fails that record only, naming the plugin and the hook: a catalog item it
cannot map or transform is logged in rejected_record and the export goes on; a message whose transform fails
is dead-lettered at once (not retried) and the dispatcher delivers the others, one by one and in bulk."""

from __future__ import annotations

import pytest

from ctdd import hookimpl
from ctdd.catalog.export import CatalogExporter
from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.hooks.manager import create_plugin_manager
from ctdd.testing.commercetools_fake import FakeCommercetools
from support.catalog import seed_catalog
from support.helpers import make_settings


class CatalogBreaker:
    @hookimpl
    def ctdd_map_catalog_item(self, item):
        if item.product_id == "p000002":
            raise RuntimeError("no brand table for this product")
        return None  # the bundled mapping answers

    @hookimpl
    def ctdd_transform_payload(self, kind, body):
        if kind == "catalog" and body.get("productId") == "p000004":
            body["price"] = "12.50"  # a number becoming a string: refused


async def test_a_failing_catalog_plugin_rejects_its_items_and_the_export_goes_on(engine, sandbox):
    with FakeCommercetools() as fake:
        seed_catalog(fake, 10)
        settings = make_settings(str(engine.url.render_as_string(hide_password=False)), sandbox, commercetools=fake,
                                 bulk_poll_min_seconds=0.05, bulk_poll_max_seconds=0.2,
                                 stores_extra={"uk": {"catalog": {"enabled": True, "country": "GB"}}})
        ct, dd = CommercetoolsClients(settings), DotdigitalClients(settings.accounts)
        hooks = create_plugin_manager([("breaker", CatalogBreaker())], load_entrypoints=False, env={})
        exporter = CatalogExporter(engine, settings, hooks, commercetools=ct.get, dotdigital=dd.get)
        try:
            async for progress in exporter.export("uk"):
                pass
        finally:
            await ct.aclose()
            await dd.aclose()
    assert progress.done and progress.records_rejected == 2
    sent = {record["productId"] for record in sandbox.account_records("Catalog_uk").values()}
    assert sent == {"p000000", "p000006", "p000008"}
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.exec_driver_sql(
            "SELECT operation, record_id, reason FROM rejected_record ORDER BY operation")]
    assert [(r["operation"], r["record_id"]) for r in rows] == [("catalog.map", "p000002"),
                                                                ("catalog.transform", "p000004")]
    assert "plugin 'breaker' failed in ctdd_map_catalog_item: raised RuntimeError" in rows[0]["reason"]
    assert "plugin 'breaker' failed in ctdd_transform_payload" in rows[1]["reason"]
    assert "'price' would change from number to string" in rows[1]["reason"]


class TransformBreaker:
    def __init__(self):
        self.calls = 0

    @hookimpl
    def ctdd_transform_payload(self, kind, body):
        if kind == "contact" and body.get("identifiers", {}).get("email", "").startswith("bad"):
            self.calls += 1
            raise KeyError("LOYALTY")
        body.setdefault("dataFields", {})
        return body


@pytest.mark.parametrize("bulk", [False, True], ids=["single", "bulk"])
def test_a_failing_transform_dead_letters_its_message_only(ctdd_service, bulk):
    breaker = TransformBreaker()
    dispatcher = {"bulk_backlog_threshold": 1, "bulk_min_batch": 1} if bulk else {"batching": False}
    svc = ctdd_service(("breaker", breaker), **dispatcher)
    for email in ("ann@example.com", "bad@example.com", "cat@example.com"):
        svc.sync_contact(email=email, first_name="X")
    rows = svc.wait_delivered()
    assert sorted(r["status"] for r in rows) == ["dead", "delivered", "delivered"]
    [dead] = svc.dead_letters()
    assert dead["last_error"] == "plugin 'breaker' failed in ctdd_transform_payload: raised KeyError"
    assert dead["attempts"] == 1 and breaker.calls == 1  # poison: not retried
    assert svc.contact("ann@example.com") and svc.contact("cat@example.com") and not svc.contact("bad@example.com")
