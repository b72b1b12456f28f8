"""Catalog export against the commercetools fake and the Dotdigital sandbox over real HTTP, on SQLite and
PostgreSQL: full export, delta by content hash, removals, resume, schema stability and OpenAPI bodies."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctdd.catalog.export import CatalogExporter, ExportBusy, ExportNotPossible
from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.domain.catalog import shape_conflicts
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.hooks.manager import create_plugin_manager
from ctdd.programs import leases
from ctdd.testing.commercetools_fake import FakeCommercetools
from ctdd.testing.openapi import OpenApiDocuments
from support.catalog import product, seed_catalog
from support.helpers import field_violations, make_settings  # noqa: E402

N = 5000
SPECS = Path("/work/shared/specs/dotdigital")
CATALOG = {"enabled": True, "include_categories": True, "url_template": "https://shop.example.com/{locale}/p/{slug}",
           "import_max_records": 5000, "page_size": 500}


@pytest.fixture
def fake():
    with FakeCommercetools() as ct:
        yield ct


_OPEN_CLIENTS: list = []


@pytest.fixture(autouse=True)
async def _close_clients():
    """The API clients the exporters of a test opened are closed at its end (no unclosed aiohttp session)."""
    yield
    while _OPEN_CLIENTS:
        await _OPEN_CLIENTS.pop().aclose()


def _settings(engine, sandbox, fake, **catalog):
    return make_settings(str(engine.url.render_as_string(hide_password=False)), sandbox, commercetools=fake,
                         bulk_poll_min_seconds=0.05, bulk_poll_max_seconds=0.2,
                         stores_extra={"uk": {"catalog": {**CATALOG, "country": "GB", **catalog}},
                                       "de": {"catalog": {**CATALOG, "country": "DE", "currencies": ["EUR", "GBP"]}}})


def _exporter(engine, settings, owner=None):
    ct = CommercetoolsClients(settings)
    dd = DotdigitalClients(settings.accounts)
    _OPEN_CLIENTS.extend((ct, dd))
    return CatalogExporter(engine, settings, create_plugin_manager(load_entrypoints=False),
                           commercetools=ct.get, dotdigital=dd.get, owner=owner)


async def _run(exporter, store, **kwargs):
    last = None
    async for progress in exporter.export(store, **kwargs):
        last = progress
    return last


def _imported_records(sandbox, collection):
    return [rec for r in sandbox.requests_matching("PUT", "/insightData/v3/import")
            if (r.json or {}).get("collectionName") == collection for rec in r.json["records"]]


@pytest.mark.timeout(900)
async def test_full_export_delta_removal_and_two_stores(engine, sandbox, fake):
    seeded = seed_catalog(fake, N)
    settings = _settings(engine, sandbox, fake)
    exporter = _exporter(engine, settings)

    first = await _run(exporter, "uk")
    uk = sandbox.account_records("Catalog_uk")
    assert first.done and first.products_read == N
    assert len(uk) == N // 2 == first.records_enqueued - 3  # products + 3 categories
    rec = uk["p000002"]["json"] if "json" in uk["p000002"] else uk["p000002"]
    assert rec["price"] == 11.02 and rec["salePrice"] == 9.02 and rec["currency"] == "GBP"  # GB price, discounted
    assert rec["categories"] == ["Clothing > Shoes"] and rec["url"] == "https://shop.example.com/en-GB/p/product-2"
    assert rec["description"] == "The best product 2." and rec["brand"] == "Acme"
    assert len(sandbox.account_records("Categories_uk")) == 3

    de = await _run(exporter, "de")
    de_records = sandbox.account_records("Catalog_de")
    assert len(de_records) == N - N // 10
    de_rec = de_records["p000002"]["json"] if "json" in de_records["p000002"] else de_records["p000002"]
    # the DE price valid until 2020 is not selected; the country-less EUR price is
    assert de_rec["price"] == 20.02 and de_rec["prices"]["GBP"]["price"] == 10.02 and "salePrice" not in de_rec

    sandbox.reset_requests()
    second = await _run(exporter, "uk")
    assert second.records_enqueued == 0 and second.dotdigital_calls == 0
    assert sandbox.requests_matching("PUT", "/insightData/v3/import") == []

    for i in range(0, 20, 2):  # 10 products of the uk store change
        fake.add("products", product(i, seeded["leaves"], name_suffix=" (new)", version=2))
    third = await _run(exporter, "uk")
    sent = _imported_records(sandbox, "Catalog_uk")
    assert third.records_enqueued == 10 and sorted(r["key"] for r in sent) == [f"p{i:06d}" for i in range(0, 20, 2)]

    sandbox.reset_requests()
    fake.add("products", product(40, seeded["leaves"], published=False, version=3))  # unpublished
    fake.unassign_products("sel-uk", ["p000042"])  # left the store's selection
    fourth = await _run(exporter, "uk")
    assert fourth.records_removed == 2
    deletes = sandbox.requests_matching("DELETE", "/insightData/v3/accounts/Catalog_uk/deleteRecords")
    assert [sorted(r.json["keys"]) for r in deletes] == [["p000040", "p000042"]]  # one bulk delete
    docs = OpenApiDocuments.from_directory(SPECS)
    assert docs.check("DELETE", deletes[0].path, deletes[0].json) == ([], True)
    assert "p000040" not in sandbox.account_records("Catalog_uk")
    assert "p000042" not in sandbox.account_records("Catalog_uk")
    assert _imported_records(sandbox, "Catalog_uk") == []


@pytest.mark.timeout(600)
async def test_killed_export_resumes_without_resending(engine, sandbox, fake):
    seed_catalog(fake, 3000)
    settings = _settings(engine, sandbox, fake, import_max_records=500, include_categories=False)
    first = _exporter(engine, settings, owner="first")
    stream = first.export("uk")
    progress = await stream.__anext__()
    await stream.__anext__()
    await stream.aclose()  # the process stops mid-export
    assert progress.products_read == 1000  # two pages read (the stream yields one live Progress)
    # a dead holder: its lease expired
    with engine.begin() as conn:
        leases.set_cursor(conn, "catalog-export:uk", leases.cursor(conn, "catalog-export:uk"), first.clock())
    resumed = await _run(_exporter(engine, settings, owner="second"), "uk")
    assert resumed.resumed and resumed.done and resumed.products_read == 2000
    keys = [r["key"] for r in _imported_records(sandbox, "Catalog_uk")]
    assert len(keys) == len(set(keys)) == 1500  # every uk product sent exactly once
    assert len(sandbox.account_records("Catalog_uk")) == 1500


async def test_second_export_is_refused_and_disabled_store_is_not_exported(engine, sandbox, fake):
    seed_catalog(fake, 10)
    settings = _settings(engine, sandbox, fake)
    stream = _exporter(engine, settings, owner="a").export("uk")
    await stream.__anext__()
    with pytest.raises(ExportBusy):
        await _run(_exporter(engine, settings, owner="b"), "uk")
    await stream.aclose()
    plain = make_settings(str(engine.url.render_as_string(hide_password=False)), sandbox, commercetools=fake)
    with pytest.raises(ExportNotPossible, match="not enabled"):
        await _run(_exporter(engine, plain), "uk")


async def test_one_stable_schema_and_bodies_follow_the_openapi_documents(engine, sandbox, fake):
    seed_catalog(fake, 600)
    settings = _settings(engine, sandbox, fake, sku_per="variant")
    await _run(_exporter(engine, settings), "uk")
    await _run(_exporter(engine, settings), "de")
    docs = OpenApiDocuments.from_directory(SPECS)
    imports = sandbox.requests_matching("PUT", "/insightData/v3/import")
    assert imports
    for request in imports:
        violations, known = docs.check("PUT", request.path, request.json)
        assert known and violations == []
    for collection in ("Catalog_uk", "Catalog_de"):
        known_types: dict[str, str] = {}
        for record in _imported_records(sandbox, collection):
            assert shape_conflicts(known_types, record["json"]) == []
        assert known_types["price"] == "number" and known_types["categories"] == "array"


async def test_export_catalog_over_grpc_streams_progress(service_factory, database_url, sandbox, fake):
    import grpc

    from ctdd.sync.v1 import sync_service_pb2 as pb

    seeded = seed_catalog(fake, 1200)
    settings = make_settings(database_url, sandbox, commercetools=fake, bulk_poll_min_seconds=0.05,
                             bulk_poll_max_seconds=0.2,
                             stores_extra={"uk": {"catalog": {**CATALOG, "country": "GB"}}})
    service = await service_factory(settings)
    replies = [r async for r in service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="uk"))]
    assert [r.products_read for r in replies] == [500, 1000, 1200, 1200] and replies[-1].done
    assert replies[-1].records_enqueued == 600 + 3 and len(sandbox.account_records("Catalog_uk")) == 600
    again = [r async for r in service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="uk"))]
    assert again[-1].done and again[-1].records_enqueued == 0

    # modified_since: only products modified after it are read (version 2 is stamped 00:00:02); nothing removed
    for i in (4, 5):  # 4 is a uk product, 5 is not
        fake.add("products", product(i, seeded["leaves"], name_suffix=" (new)", version=2))
    request = pb.ExportCatalogRequest(store_key="uk")
    request.modified_since.FromJsonString("2026-01-01T00:00:01Z")
    since = [r async for r in service.stub.ExportCatalog(request)]
    assert [(r.products_read, r.records_enqueued, r.done) for r in since] == [(2, 1, False), (2, 1, True)]
    assert sandbox.account_records("Catalog_uk")["p000004"]["name"] == "Product 4 (new)"
    assert len(sandbox.account_records("Catalog_uk")) == 600

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="de")):
            pass
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="nope")):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(info.value) == {"store_key": "unknown store 'nope'"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in service.stub.ExportCatalog(pb.ExportCatalogRequest()):
            pass
    assert field_violations(info.value) == {"store_key": "required"}  # as SyncContact and TrackEvent say it
    # input Dotdigital or the Timestamp range would refuse: INVALID_ARGUMENT before the store's setup is looked at
    request = pb.ExportCatalogRequest(store_key="de", collection_name="bad name!")
    request.modified_since.seconds = -10**12
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in service.stub.ExportCatalog(request):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(info.value)) == {"collection_name", "modified_since"}
