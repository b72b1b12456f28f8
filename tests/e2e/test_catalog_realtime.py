"""Product and inventory messages through gRPC TrackEvent update the catalog collection through the same delta
as ExportCatalog, in order per product, with the commercetools fake and the Dotdigital sandbox over HTTP, on
SQLite and PostgreSQL."""

from __future__ import annotations

import copy

import pytest

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools
from support import ct_payloads as ct
from support.catalog import product, seed_catalog
from support.helpers import make_settings, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def fake():
    with FakeCommercetools() as f:
        yield f


def track(payload: dict, store: str = "uk") -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key=store, commercetools_delivery=ct.raw(payload))


def projection(stored: dict) -> dict:
    """The current product projection of a product as stored (what ProductPublished carries)."""
    return {"id": stored["id"], "version": stored["version"], "key": stored["key"],
            "productType": stored["productType"], **copy.deepcopy(stored["masterData"]["current"]),
            "published": True, "createdAt": stored["createdAt"], "lastModifiedAt": stored["lastModifiedAt"]}


def outcome(resp) -> tuple[str, str]:
    n = resp.notifications[0]
    return pb.EventOutcome.Name(n.outcome).removeprefix("EVENT_OUTCOME_"), n.reason


def records(sandbox) -> dict:
    return {k: (v["json"] if "json" in v else v) for k, v in sandbox.account_records("Catalog_uk").items()}


async def test_product_messages_update_the_catalog_in_order(service_factory, database_url, sandbox, fake):
    seeded = seed_catalog(fake, 40)
    leaves = seeded["leaves"]
    settings = make_settings(database_url, sandbox, commercetools=fake, bulk_poll_min_seconds=0.05,
                             bulk_poll_max_seconds=0.2,
                             stores_extra={"uk": {"catalog": {"enabled": True, "country": "GB"}}})
    svc = await service_factory(settings)
    replies = [r async for r in svc.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="uk"))]
    assert replies[-1].done and len(records(sandbox)) == 20

    # ProductPublished carries the projection: no commercetools read
    renamed = fake.add("products", product(2, leaves, name_suffix=" (new)", version=2))
    reads = len(fake.requests)
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000002", "ProductPublished", version=2,
                                                      productProjection=projection(renamed), scope="All",
                                                      removedImageUrls=[])))
    assert outcome(resp) == ("APPLIED", "catalog: 1 record(s) of product p000002 changed")
    await wait_for(lambda: records(sandbox)["p000002"]["name"] == "Product 2 (new)", what="renamed record")
    assert not [r for r in fake.requests[reads:] if "/product-projections/" in r.path]
    # an older version arriving late changes nothing
    old = projection(product(2, leaves, version=1))
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000002", "ProductPublished", version=1,
                                                      productProjection=old, scope="All", removedImageUrls=[])))
    assert outcome(resp) == ("APPLIED", "catalog: 0 record(s) of product p000002 changed")

    # a price change carries no projection: the published one is read
    repriced = product(4, leaves, version=2)
    repriced["masterData"]["current"]["masterVariant"]["prices"][1]["value"]["centAmount"] = 4321
    repriced["masterData"]["current"]["masterVariant"]["prices"][1].pop("discounted")
    fake.add("products", repriced)
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000004", "ProductPriceChanged", version=2,
                                                      variantId=1, staged=False, oldPrice={}, newPrice={})))
    assert outcome(resp)[0] == "APPLIED"
    await wait_for(lambda: records(sandbox)["p000004"]["price"] == 43.21, what="new price")
    assert "salePrice" not in records(sandbox)["p000004"]
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000004", "ProductPriceAdded", version=3,
                                                      variantId=1, staged=True, price={})))
    assert outcome(resp) == ("IGNORED", "a staged change: the published product is unchanged")

    # stock: the inventory message names the SKU; the product is found by it and read
    restocked = product(6, leaves, version=2)
    restocked["masterData"]["current"]["masterVariant"]["availability"] = {"isOnStock": True, "availableQuantity": 99}
    fake.add("products", restocked)
    resp = await svc.stub.TrackEvent(track(ct.message("inventory-entry", "inv-6", "InventoryEntryQuantitySet",
                                                      version=5, sku="SKU-000006", oldQuantityOnStock=6,
                                                      newQuantityOnStock=99, oldAvailableQuantity=6,
                                                      newAvailableQuantity=99)))
    assert outcome(resp)[0] == "APPLIED"
    await wait_for(lambda: records(sandbox)["p000006"].get("stock") == 99.0, what="new stock")

    # unpublished: removed; a publish of an older version arriving after it does not bring it back
    unpublished = fake.add("products", product(8, leaves, published=False, version=3))
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000008", "ProductUnpublished", version=3)))
    assert outcome(resp)[0] == "APPLIED"
    await wait_for(lambda: "p000008" not in records(sandbox), what="removal")
    assert [r.json for r in sandbox.requests_matching("DELETE", "/insightData/v3/accounts/Catalog_uk/deleteRecords")] == [{"keys": ["p000008"]}]
    stale = projection(product(8, leaves, version=2))
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000008", "ProductPublished", version=2,
                                                      productProjection=stale, scope="All", removedImageUrls=[])))
    assert outcome(resp) == ("APPLIED", "catalog: 0 record(s) of product p000008 changed")
    assert unpublished["version"] == 3

    # payloadNotIncluded and change notifications read the product; deleted: removed
    fake.add("products", product(10, leaves, name_suffix=" (big)", version=2))
    big = ct.message("product", "p000010", "ProductPublished", version=2)
    del big["type"]
    big["payloadNotIncluded"] = {"reason": "Payload too large.", "payloadType": "ProductPublished"}
    resp = await svc.stub.TrackEvent(track(big))
    assert outcome(resp)[0] == "APPLIED"
    await wait_for(lambda: records(sandbox)["p000010"]["name"] == "Product 10 (big)", what="fetched record")
    resp = await svc.stub.TrackEvent(track(ct.change("ResourceDeleted", "product", "p000012", version=4)))
    assert outcome(resp)[0] == "APPLIED"
    await wait_for(lambda: "p000012" not in records(sandbox), what="deleted product removed")

    # not in the store's selection: nothing is written; a store whose catalog is off ignores product messages
    odd = fake.add("products", product(3, leaves, name_suffix=" (odd)", version=2))
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000003", "ProductPublished", version=2,
                                                      productProjection=projection(odd), scope="All",
                                                      removedImageUrls=[])))
    assert outcome(resp) == ("APPLIED", "catalog: 0 record(s) of product p000003 changed")
    resp = await svc.stub.TrackEvent(track(ct.message("product", "p000002", "ProductUnpublished", version=9),
                                           store="de"))
    assert outcome(resp) == ("IGNORED", "the catalog of store 'de' is not enabled")
    # the next export finds nothing left to send
    again = [r async for r in svc.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="uk"))]
    assert again[-1].done and again[-1].records_enqueued == 0
    assert "p000003" not in records(sandbox) and len(records(sandbox)) == 18
