"""Insight data v3 and the contacts / insight bulk imports: the sandbox and the async client, over real HTTP.

Contract tests at the end validate the bodies the client sends (and the sandbox's responses) against the
JSON schemas of Dotdigital's OpenAPI documents, with the validator of ``test_dotdigital_sandbox_client.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from ctdd.dotdigital.client import (
    COLLECTION_TYPES,
    ContactsImportReport,
    DotdigitalClient,
    InsightImportReport,
)
from ctdd.dotdigital.errors import (
    DotdigitalAuthError,
    DotdigitalError,
    DotdigitalImportTimeout,
    DotdigitalThrottled,
)
from ctdd.testing import dotdigital_sandbox
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox
from test_dotdigital_sandbox_client import SchemaValidator, _spec_dir

JANE = "jane.doe@example.com"
JOHN = "john+shop@example.com"
GHOST = "ghost@example.com"
POLL = {"poll_interval": 0.01, "timeout": 5.0}


# ---------------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def sandbox():
    with DotdigitalSandbox() as sb:
        yield sb


@pytest.fixture
async def client(sandbox):
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url,
                                discover_endpoint=False) as c:
        yield c


@pytest.fixture
async def raw(sandbox):
    """A plain authenticated httpx client, for exercising the sandbox's own validation."""
    async with httpx.AsyncClient(base_url=sandbox.base_url, auth=(sandbox.api_user, sandbox.password)) as c:
        yield c


async def _contact(client: DotdigitalClient, email: str = JANE, **body: Any) -> int:
    return (await client.upsert_contact("email", email, body)).contact_id


def _order(order_id: str, email: str = JANE, **json_: Any) -> dict[str, Any]:
    record = {"id": order_id, "orderTotal": 75.79, "currency": "GBP",
              "products": [{"sku": "MH06", "name": "Hoodie", "qty": 1, "price": 59.0}]}
    record.update(json_)
    return {"contactIdentity": {"identifier": "email", "value": email}, "key": order_id, "json": record}


def _item(email: str, **extra: Any) -> dict[str, Any]:
    return {"matchIdentifier": "email", "identifiers": {"email": email}, **extra}


# ---------------------------------------------------------------------------------------------------
# single record upserts (contact scope)
# ---------------------------------------------------------------------------------------------------
async def test_single_record_upsert_creates_then_replaces_and_reads_back(sandbox, client):
    contact_id = await _contact(client, JOHN)
    assert await client.create_collection("Orders", scope="contact", collection_type="orders") is True

    first = {"id": "100000123", "orderTotal": 67.2, "products": [{"sku": "hat", "qty": 1}]}
    assert await client.upsert_insight_record("Orders", "100000123", first, identifier="email", value=JOHN) == 201
    replacement = {"id": "100000123", "orderTotal": 70.0, "products": [], "orderStatus": "complete"}
    assert await client.upsert_insight_record("Orders", "100000123", replacement, identifier="email",
                                              value=JOHN) == 204

    puts = sandbox.requests_matching("PUT", "/insightData/v3/contacts/")
    assert [r.status for r in puts] == [201, 204] and {r.contact_id for r in puts} == {contact_id}
    assert puts[0].path == "/insightData/v3/contacts/email/john%2Bshop%40example.com/Orders/100000123"
    assert puts[0].json == first  # the body is the record's JSON object itself
    assert puts[0].headers["content-type"] == "application/json" and puts[0].headers["authorization"] == "<redacted>"

    fetched = await client.get_insight_record("Orders", "100000123", identifier="email", value=JOHN)
    assert fetched is not None
    assert (fetched["key"], fetched["json"], fetched["ownerContactId"]) == ("100000123", replacement, contact_id)
    assert fetched["created"] <= fetched["updated"]
    by_id = await client.get_insight_record("Orders", "100000123", identifier="contactId", value=str(contact_id))
    assert by_id == fetched
    assert sandbox.insight_records("Orders", contact_email=JOHN) == {"100000123": replacement}
    assert sandbox.insight_records("Orders", contact_id=contact_id) == {"100000123": replacement}
    assert await client.get_insight_record("Orders", "nope", identifier="email", value=JOHN) is None

    assert await client.delete_insight_record("Orders", "100000123", identifier="email", value=JOHN) is True
    assert await client.delete_insight_record("Orders", "100000123", identifier="email", value=JOHN) is False
    assert sandbox.insight_records("Orders", contact_email=JOHN) == {}
    assert [c["recordCount"] for c in await client.list_collections()] == [0]


async def test_single_upsert_for_unknown_contact_is_non_retryable_404(sandbox, client):
    await client.create_collection("CartInsight", scope="contact", collection_type="cartInsight")
    for identifier, value in (("email", GHOST), ("contactId", "424242"), ("mobileNumber", "+447700900999")):
        with pytest.raises(DotdigitalError) as caught:
            await client.upsert_insight_record("CartInsight", "cart-1", {"cartId": "cart-1"},
                                               identifier=identifier, value=value)
        err = caught.value
        assert (err.status_code, err.code, err.retryable, err.throttled) == (404, "insightData:contactNotFound",
                                                                            False, False)
        assert err.description == "The following contacts could not be found"
        assert err.details[0]["description"] == f"Not found using the identifier '{identifier}'"
    assert err.details[0]["item"] == "447700900999"  # raw details keep the (normalised) value...
    err_str = str(caught.value)
    assert "+447700900999" not in err_str and "447700900999" not in err_str  # ...str() masks PII
    assert sandbox.contacts == [] and sandbox.collections[0]["recordCount"] == 0  # no contact created either
    with pytest.raises(DotdigitalError) as missing:
        await client.get_insight_record("CartInsight", "cart-1", identifier="email", value=GHOST)
    assert missing.value.code == "insightData:contactNotFound"  # only a missing *record* reads as None


async def test_single_upsert_does_not_create_a_collection(sandbox, client, raw):
    await _contact(client)
    with pytest.raises(DotdigitalError) as caught:
        await client.upsert_insight_record("Wishlist", "w-1", {"items": []}, identifier="email", value=JANE)
    assert (caught.value.status_code, caught.value.code) == (404, "insightData:collectionNotFound")
    assert caught.value.details == [{"item": "Wishlist", "description": "Not found"}] and not caught.value.retryable
    assert sandbox.collections == []

    sandbox.create_collection("Catalog_Default", scope="account", collection_type="catalog")
    with pytest.raises(DotdigitalError) as wrong_scope:
        await client.upsert_insight_record("Catalog_Default", "p-1", {"name": "x"}, identifier="email", value=JANE)
    assert wrong_scope.value.code == "insightData:collectionNotFound"
    assert wrong_scope.value.details[0]["description"] == "Not a contact scoped collection"

    bad_name = await raw.put("/insightData/v3/contacts/email/jane.doe%40example.com/1Orders/1", json={})
    assert bad_name.status_code == 400 and bad_name.json()["errorCode"] == "insightData:invalidId"
    bad_identifier = await raw.put("/insightData/v3/contacts/email/not-an-email/Catalog_Default/1", json={})
    assert bad_identifier.status_code == 400 and bad_identifier.json()["errorCode"] == "insightData:invalidId"


# ---------------------------------------------------------------------------------------------------
# schema locking and record rules
# ---------------------------------------------------------------------------------------------------
async def test_schema_locking_rejects_type_changes_and_accepts_new_fields(sandbox, client):
    await _contact(client, JANE)
    await _contact(client, JOHN)
    await client.create_collection("Orders", scope="contact", collection_type="orders")

    async def put(key: str, record: dict, email: str = JANE) -> int:
        return await client.upsert_insight_record("Orders", key, record, identifier="email", value=email)

    assert await put("1", {"orderTotal": 10, "currency": "GBP", "custom": {"gift": True},
                           "products": [{"sku": "a", "qty": 1}], "couponCode": None}) == 201
    assert await put("2", {"orderTotal": 12.5, "custom": {"gift": False, "note": "hi"}, "couponCode": "X10",
                           "products": [{"sku": "b", "qty": 2, "price": 9.99}], "channel": "web"}) == 201

    rejected = [
        ({"orderTotal": "12.50"}, "orderTotal", "Number"),  # number -> string
        ({"custom": ["gift"]}, "custom", "Object"),  # object -> list (issue #65 of the Magento 2 extension)
        ({"custom": {"gift": "yes"}}, "custom.gift", "Boolean"),  # nested field
        ({"products": {"sku": "c"}}, "products", "List of Object"),  # list -> object
        ({"products": [{"qty": "two"}]}, "products.qty", "Number"),  # inside an array of objects
        ({"couponCode": 5}, "couponCode", "String"),  # fixed by record 2 (record 1 sent null)
    ]
    for record, field_path, locked in rejected:
        with pytest.raises(DotdigitalError) as caught:
            await put("3", record, JOHN)  # the schema is per collection, not per contact
        err = caught.value
        assert (err.status_code, err.code, err.retryable) == (400, "insightData:badJson", False)
        assert err.failure_reason == "JsonValueIncompatibleWithSchema"
        assert err.details == [{"item": field_path, "description": "JsonValueIncompatibleWithSchema"}]
        assert f"A value named '{field_path}' of type {locked} already exists" in err.description
    assert sandbox.insight_records("Orders", contact_email=JOHN) == {}  # rejected records change nothing

    assert await put("3", {"orderTotal": 1, "giftWrap": True, "custom": {"gift": True, "tags": ["x"]}}, JOHN) == 201
    json_columns = {c["name"]: c for c in sandbox.collection_schema("Orders") if c["name"] == "json"}["json"]["fields"]
    by_name = {c["name"]: c for c in json_columns}
    assert by_name["orderTotal"] == {"name": "orderTotal", "type": "FLOAT", "fields": []}
    assert by_name["giftWrap"]["type"] == "BOOLEAN" and by_name["channel"]["type"] == "STRING"
    assert by_name["products"]["mode"] == "REPEATED" and by_name["products"]["type"] == "RECORD"
    assert {f["name"] for f in by_name["products"]["fields"]} == {"sku", "qty", "price"}
    assert {f["name"]: f.get("mode") for f in by_name["custom"]["fields"]} == {"gift": None, "note": None,
                                                                                "tags": "REPEATED"}


@pytest.mark.parametrize(
    ("record", "reason", "item"),
    [
        ({"lines": [[1, 2], [3, 4]]}, "JsonContainsNestedArray", "lines"),
        ({"a": {"b": [{"c": [["x"]]}]}}, "JsonContainsNestedArray", "a.b[0].c"),
        ({"unit price": 5}, "JsonKeyInvalidCharacters", "unit price"),
        ({"ok": {"bad.key": 1}}, "JsonKeyInvalidCharacters", "ok.bad.key"),
        ({"n": 2**64}, "JsonNumberValueTooLarge", "n"),
        ({"mixed": [1, "two"]}, "JsonValueIncompatibleWithSchema", "mixed"),
    ],
)
async def test_record_json_rules(sandbox, client, record, reason, item):
    await _contact(client)
    sandbox.create_collection("Custom_Data")
    with pytest.raises(DotdigitalError) as caught:
        await client.upsert_insight_record("Custom_Data", "k", record, identifier="email", value=JANE)
    assert caught.value.status_code == 400 and caught.value.failure_reason == reason
    assert caught.value.details[0]["item"] == item
    assert sandbox.insight_records("Custom_Data", contact_email=JANE) == {}
    assert sandbox.collection_schema("Custom_Data")[-1]["fields"] == []  # the schema did not move


async def test_record_body_must_be_a_json_object(sandbox, client, raw):
    await _contact(client)
    sandbox.create_collection("Custom_Data")
    path = "/insightData/v3/contacts/email/jane.doe%40example.com/Custom_Data/k1"
    # The Insight data v3 spec types the body as a JSON string; a double-encoded record is refused, only the
    # object works.
    for body in (json.dumps(json.dumps({"a": 1})), "[1, 2]", "{", ""):
        response = await raw.put(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["errorCode"] == "insightData:badJson", body
    assert (await raw.put(path, json={"a": [{"b": 1}, {"b": 2, "c": "x"}]})).status_code == 201
    with pytest.raises(TypeError):
        await client.upsert_insight_record("Custom_Data", "k", [1],  # type: ignore[arg-type]
                                           identifier="email", value=JANE)


# ---------------------------------------------------------------------------------------------------
# account scope (catalog) and collections
# ---------------------------------------------------------------------------------------------------
async def test_account_scoped_catalog_records(sandbox, client, raw):
    assert await client.create_collection("Catalog_Default", scope="account", collection_type="catalog")
    product = {"id": "24938", "name": "Armani Jeans beanie hat", "price": 56.0, "sku": "hat-24938-men",
               "url": "https://shop.example.com/p/24938", "categories": [{"Id": "3", "Name": "Hats"}]}
    assert await client.upsert_account_record("Catalog_Default", "24938", product) == 201
    assert await client.upsert_account_record("Catalog_Default", "24938", {**product, "price": 49.0}) == 204
    assert await client.upsert_account_record("Catalog_Default", "sku/with slash", {"name": "n"}) == 201
    (first_put, *_) = sandbox.requests_matching("PUT", "/insightData/v3/account/")
    assert first_put.path == "/insightData/v3/account/Catalog_Default/24938" and first_put.contact_id is None
    assert sandbox.requests_matching("PUT")[-1].path == "/insightData/v3/account/Catalog_Default/sku%2Fwith%20slash"

    assert sandbox.account_records("Catalog_Default") == {"24938": {**product, "price": 49.0},
                                                         "sku/with slash": {"name": "n"}}
    fetched = await client.get_account_record("Catalog_Default", "24938")
    assert fetched is not None and fetched["json"]["price"] == 49.0 and "ownerContactId" not in fetched
    with pytest.raises(DotdigitalError) as schema_error:
        await client.upsert_account_record("Catalog_Default", "1", {"price": "cheap"})
    assert schema_error.value.failure_reason == "JsonValueIncompatibleWithSchema"

    assert await client.delete_account_record("Catalog_Default", "24938") is True
    assert await client.get_account_record("Catalog_Default", "24938") is None
    with pytest.raises(DotdigitalError) as unknown:
        await client.get_account_record("Catalog_Other", "1")
    assert unknown.value.code == "insightData:collectionNotFound"

    sandbox.create_collection("Orders", scope="contact", collection_type="orders")
    account_only = (await raw.get("/insightData/v3/account")).json()
    assert account_only == [{"collectionName": "Catalog_Default", "collectionType": "catalog",
                             "collectionScope": "account", "recordCount": 1}]
    with pytest.raises(ValueError):
        sandbox.insight_records("Catalog_Default", contact_email=JANE)
    with pytest.raises(KeyError):
        sandbox.account_records("Nope")


async def test_collection_create_is_idempotent_and_validated(sandbox, client, raw):
    assert await client.create_collection("Orders", scope="contact", collection_type="orders") is True
    assert await client.create_collection("Orders", scope="contact", collection_type="orders") is False
    post = sandbox.requests_matching("POST", "/insightData/v3/collections/")
    assert [r.status for r in post] == [201, 200] and post[0].raw_body == b""
    assert post[0].query == {"collectionScope": ["contact"], "collectionType": ["orders"]}
    assert await client.create_collection("Catalog_Default", scope="account", collection_type="catalog") is True
    assert await client.list_collections() == [
        {"collectionName": "Orders", "collectionType": "orders", "collectionScope": "contact", "recordCount": 0},
        {"collectionName": "Catalog_Default", "collectionType": "catalog", "collectionScope": "account",
         "recordCount": 0},
    ]

    with pytest.raises(DotdigitalError) as clash:  # names are unique across scopes
        await client.create_collection("orders", scope="account", collection_type="catalog")
    assert clash.value.status_code == 400 and clash.value.code == "insightData:invalidId"

    for name in ("1orders", "my collection", "x", "a" * 256):
        with pytest.raises(ValueError):
            await client.create_collection(name, scope="contact", collection_type="custom")
        response = await raw.post(f"/insightData/v3/collections/{name}",
                                  params={"collectionScope": "contact", "collectionType": "custom"})
        assert response.status_code == 400 and response.json()["errorCode"] == "insightData:invalidId"
    for params in ({"collectionScope": "contact"}, {"collectionScope": "global", "collectionType": "custom"},
                   {"collectionScope": "contact", "collectionType": "Orders"}):
        response = await raw.post("/insightData/v3/collections/Reviews", params=params)
        assert response.status_code == 400 and response.json()["errorCode"] == "insightData:invalidParameter"
    with pytest.raises(ValueError):
        await client.create_collection("Reviews", scope="contact", collection_type="reviews")

    sandbox.max_insight_collections = 3
    assert await client.create_collection("Reviews", scope="contact", collection_type="custom") is True
    with pytest.raises(DotdigitalError) as limit:
        await client.create_collection("Wishlist", scope="contact", collection_type="wishList")
    assert limit.value.status_code == 412 and not limit.value.retryable
    assert await client.create_collection("Reviews", scope="contact", collection_type="custom") is False
    assert (await raw.get("/insightData/v3/collections/Nope/schema")).json()["errorCode"] == \
        "insightData:collectionNotFound"
    assert (await raw.delete("/insightData/v3/collections/Reviews")).status_code == 405  # not in the sandbox


# ---------------------------------------------------------------------------------------------------
# insight bulk import
# ---------------------------------------------------------------------------------------------------
async def test_insight_import_with_known_and_unknown_contacts(sandbox, client):
    sandbox.import_delay_seconds = 60  # finished below by complete_imports(), so the pending state is certain
    jane_id = await _contact(client, JANE)
    await _contact(client, JOHN)
    records = [
        _order("100001", JANE),
        _order("100002", GHOST),
        _order("100003", JOHN, orderTotal=12),
        {"contactIdentity": {"identifier": "contactId", "value": "999"}, "key": "100004", "json": {"id": "100004"}},
        {"contactIdentity": {"identifier": "contactId", "value": str(jane_id)}, "key": "100005",
         "json": {"id": "100005", "orderTotal": 1}},
    ]
    import_id = await client.start_insight_import("Orders", scope="contact", collection_type="orders", records=records)
    (put,) = sandbox.requests_matching("PUT", "/insightData/v3/import")
    assert put.status == 202 and put.json["records"] == records and put.json["collectionName"] == "Orders"
    assert sandbox.collections == [{"collectionName": "Orders", "collectionType": "orders",
                                    "collectionScope": "contact", "recordCount": 0}]  # created, still empty

    pending = await client.insight_import_status(import_id)
    assert isinstance(pending, InsightImportReport)
    assert pending.status == "NotStarted" and not pending.done and pending.failures == []

    sandbox.complete_imports()
    report = await client.wait_for_import(import_id, kind="insight", **POLL)
    assert isinstance(report, InsightImportReport)
    assert report.status == "Finished" and report.finished and not report.failed
    assert report.collection_name == "Orders"
    assert report.summary == {"totalRecords": 5, "totalImported": 3, "totalRejected": 2}
    assert report.failure_reasons() == {"100002": "ContactEmailDoesNotExist", "100004": "ContactIdDoesNotExist"}
    ghost = next(f for f in report.failures if f["key"] == "100002")
    assert ghost["collectionOwner"] == {"ownerType": "contact",
                                        "contactIdentity": {"identifier": "email", "value": GHOST}}
    assert ghost["json"] == records[1]["json"] and ghost["details"]
    assert set(sandbox.insight_records("Orders", contact_email=JANE)) == {"100001", "100005"}
    assert set(sandbox.insight_records("Orders", contact_email=JOHN)) == {"100003"}
    assert sandbox.get_contact(email=GHOST) is None  # imports never create contacts
    assert len([r for r in sandbox.requests if "/insightData/v3/import/" in r.path]) >= 2  # polled


async def test_imports_finish_by_themselves_after_the_delay(sandbox, client):
    delay = 0.3
    sandbox.import_delay_seconds = delay
    await _contact(client, JANE)
    started = time.monotonic()
    insight_id = await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                                   records=[_order("1", JANE)])
    contacts_id = await client.start_contacts_import([_item(JOHN)])
    seen: dict[str, list[tuple[float, str]]] = {"insight": [], "contacts": []}
    while not all(entries and entries[-1][1] == "Finished" for entries in seen.values()):
        assert time.monotonic() - started < 5, seen
        for kind, import_id, status_call in (("insight", insight_id, client.insight_import_status),
                                             ("contacts", contacts_id, client.contacts_import_status)):
            if not seen[kind] or seen[kind][-1][1] != "Finished":
                status = (await status_call(import_id)).status
                seen[kind].append((time.monotonic() - started, status))  # observed by now
        await asyncio.sleep(0.02)
    phases = {"insight": ["NotStarted", "Processing", "Finished"], "contacts": ["NotFinished", "Finished"]}
    for kind, allowed in phases.items():
        statuses = [status for _, status in seen[kind]]
        assert statuses == sorted(statuses, key=allowed.index)  # phases only move forward
        first_finished = next(at for at, status in seen[kind] if status == "Finished")
        assert first_finished >= delay  # never finished before the configured delay
    assert sandbox.insight_records("Orders", contact_email=JANE) == {"1": _order("1", JANE)["json"]}
    assert sandbox.get_contact(email=JOHN) is not None


async def test_insight_import_rejects_records_one_by_one(sandbox, client, raw):
    await _contact(client, JANE)
    records = [
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "a", "json": {"total": 1, "tags": ["x"]}},
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "a", "json": {"total": 2}},  # duplicate
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "b", "json": {"total": "2"}},  # type
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "c", "json": {"tags": [["x"]]}},
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "d", "json": {"bad key": 1}},
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": 24938, "json": {"total": 3}},  # spec ex.
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "e", "json": "{\"total\": 3}"},
        {"contactIdentity": {"identifier": "loyaltyId", "value": "L-1"}, "key": "f", "json": {"total": 3}},
        {"contactIdentity": {"identifier": "email", "value": "not-an-email"}, "key": "g", "json": {"total": 3}},
        {"key": "h", "json": {"total": 3}},
        {"contactIdentity": {"identifier": "email", "value": JANE}, "key": "i", "json": {"total": 4, "new": True}},
    ]
    response = await raw.put("/insightData/v3/import", json={
        "collectionName": "Custom_Things", "collectionScope": "contact", "collectionType": "custom", "records": records,
    })
    assert response.status_code == 202
    report = await client.wait_for_import(response.json()["importId"], kind="insight", **POLL)
    assert [(f["key"], f["failureReason"]) for f in report.failures] == [
        ("a", "DuplicateKey"),
        ("b", "JsonValueIncompatibleWithSchema"),
        ("c", "JsonContainsNestedArray"),
        ("d", "JsonKeyInvalidCharacters"),
        (24938, "InvalidClientKey"),
        ("e", "InvalidJson"),
        ("f", "InvalidContactIdentifier"),
        ("g", "InvalidContactIdentifier"),
        ("h", "InvalidContactIdentifier"),
    ]
    assert report.summary == {"totalRecords": 11, "totalImported": 2, "totalRejected": 9}
    assert sandbox.insight_records("Custom_Things", contact_email=JANE) == {
        "a": {"total": 1, "tags": ["x"]}, "i": {"total": 4, "new": True}}

    account = await client.start_insight_import("Catalog_Default", scope="account", collection_type="catalog",
                                                records=[{"key": "1", "json": {"name": "Hat", "price": 56}}])
    raw_account = await raw.put("/insightData/v3/import", json={
        "collectionName": "Catalog_Default", "collectionScope": "account", "collectionType": "catalog",
        "records": [{"contactIdentity": {"identifier": "email", "value": JANE}, "key": "2", "json": {"name": "x"}}],
    })
    sandbox.complete_imports()
    assert (await client.insight_import_status(account)).summary["totalImported"] == 1
    other = await client.insight_import_status(raw_account.json()["importId"])
    assert [f["failureReason"] for f in other.failures] == ["InvalidContactIdentifier"]
    assert other.failures[0]["collectionOwner"]["ownerType"] == "account"
    assert sandbox.account_records("Catalog_Default") == {"1": {"name": "Hat", "price": 56}}


async def test_insight_import_complete_status_counts_as_finished(sandbox, client):
    sandbox.insight_import_finished_status = "Complete"  # the spec's enum value
    import_id = await client.start_insight_import("Catalog_Default", scope="account", collection_type="catalog",
                                                  records=[{"key": "1", "json": {"name": "Hat"}}])
    report = await client.wait_for_import(import_id, kind="insight", **POLL)
    assert (report.status, report.finished, report.failed, report.failures) == ("Complete", True, False, [])
    assert "failures" not in report.body  # minItems 1 in the spec: omitted when nothing failed
    for status, finished, failed in (("Failed", False, True), ("Processing", False, False),
                                     ("Finished", True, False), ("RejectedByWatchdog", False, True)):
        parsed = InsightImportReport.from_body({"importId": "x", "status": status})
        assert (parsed.finished, parsed.failed, parsed.done) == (finished, failed, finished or failed)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"collectionScope": "contact", "collectionType": "orders", "records": [{"key": "1", "json": {}}]}, 400,
         "insightData:badJson"),
        ({"collectionName": "Orders", "collectionScope": "contact", "collectionType": "orders", "records": []}, 400,
         "insightData:badJson"),
        ({"collectionName": "Orders", "collectionScope": "people", "collectionType": "orders",
          "records": [{"key": "1", "json": {}}]}, 400, "insightData:badJson"),
        ({"collectionName": "Orders", "collectionScope": "contact", "collectionType": "order",
          "records": [{"key": "1", "json": {}}]}, 400, "insightData:badJson"),
        ({"collectionName": "9Orders", "collectionScope": "contact", "collectionType": "orders",
          "records": [{"key": "1", "json": {}}]}, 400, "insightData:invalidId"),
        ({"collectionName": "Orders", "collectionScope": "contact", "collectionType": "orders",
          "records": [{"key": "1", "json": {}, "contactId": 1}]}, 400, "insightData:badJson"),
        ({"collectionName": "Orders", "collectionScope": "contact", "collectionType": "orders",
          "records": [{"key": "1", "json": {}}], "mode": "upsert"}, 400, "insightData:badJson"),
        ([], 400, "insightData:badJson"),
    ],
)
async def test_sandbox_rejects_invalid_insight_import_bodies(sandbox, raw, body, status, code):
    response = await raw.put("/insightData/v3/import", json=body)
    assert response.status_code == status and response.json()["errorCode"] == code
    assert sandbox.collections == []


# ---------------------------------------------------------------------------------------------------
# contacts bulk import
# ---------------------------------------------------------------------------------------------------
async def test_contacts_import_creates_updates_and_fails_items_alone(sandbox, client):
    sandbox.import_delay_seconds = 60
    jane_id = await _contact(client, JANE, dataFields={"FIRSTNAME": "Jane", "LASTNAME": "Doe"}, lists=[1])
    old_id = await _contact(client, "old@example.com")
    sandbox.suppress(email="gone@example.com", reason="unsubscribed")
    gone_id = sandbox.get_contact(email="gone@example.com")["contactId"]

    contacts = [
        _item(JANE, dataFields={"LASTNAME": "Smith"}, lists=[2]),
        {"matchIdentifier": "email", "identifiers": {"email": JOHN, "mobileNumber": "+447700900123"},
         "dataFields": {"FIRSTNAME": "John"}, "channelProperties": {"email": {"emailType": "Html"}}},
        _item("gone@example.com", dataFields={"FIRSTNAME": "Gone"}),
        _item("shoes@example.com", dataFields={"FIRSTNAME": "Shoe", "SHOE_SIZE": 42}),
        {"matchIdentifier": "mobileNumber", "identifiers": {"mobileNumber": "07700 900123"}},
        _item("lists@example.com", lists=[1, 99]),
        {"matchIdentifier": "contactId", "identifiers": {"contactId": old_id, "email": "new@example.com"}},
        {"matchIdentifier": "contactId", "identifiers": {"contactId": 987654}},
        _item("status@example.com", channelProperties={"email": {"status": "pendingOptIn"}}),
    ]
    import_id = await client.start_contacts_import(contacts)
    (put,) = sandbox.requests_matching("PUT", "/contacts/v3/import")
    assert put.status == 202 and put.json == {"mergeOption": "overwrite", "contacts": contacts}

    pending = await client.contacts_import_status(import_id)
    assert isinstance(pending, ContactsImportReport)
    assert (pending.status, pending.finished, pending.failed, pending.created) == ("NotFinished", False, False, [])
    assert sandbox.get_contact(email=JOHN) is None  # nothing applied before the import runs

    sandbox.complete_imports()
    report = await client.wait_for_import(import_id, kind="contacts", **POLL)
    assert isinstance(report, ContactsImportReport) and report.status == "Finished" and report.finished
    john = sandbox.get_contact(email=JOHN)
    assert report.created == [{"contactId": john["contactId"],
                               "identifiers": {"email": JOHN, "mobileNumber": "447700900123"}}]
    assert report.updated == [{"contactId": jane_id, "identifiers": {"email": JANE}},
                              {"contactId": old_id, "identifiers": {"email": "new@example.com"}}]
    assert report.summary == {"newContacts": 1, "updatedContacts": 2, "globallySuppressed": 1,
                              "invalidEntries": 5, "duplicateIdentifiers": 0}

    assert report.failure_codes("email", "gone@example.com") == ["GloballySuppressed"]
    assert report.failure_codes("email", "SHOES@example.com") == ["InvalidContact"]
    assert report.failure_codes("mobileNumber", "07700 900123") == ["InvalidPhoneNumber"]
    assert report.failure_codes("email", "lists@example.com") == ["InvalidAddressBookIds"]
    assert report.failure_codes("contactId", 987654) == ["contactNotFound"]
    assert report.failure_codes("email", "status@example.com") == ["InvalidContactStatus"]
    gone = next(f for f in report.failures if f["identifiers"] == {"email": "gone@example.com"})
    assert gone["contactId"] == gone_id and gone["matchIdentifier"] == "email"
    shoes = next(f for f in report.failures if f["identifiers"] == {"email": "shoes@example.com"})
    assert "SHOE_SIZE" in shoes["failures"][0]["description"]

    jane = sandbox.get_contact(email=JANE)
    assert (jane["dataFields"]["FIRSTNAME"], jane["dataFields"]["LASTNAME"]) == ("Jane", "Smith")
    assert [entry["id"] for entry in jane["lists"]] == [1, 2]
    assert john["channelProperties"]["email"]["emailType"] == "Html" and john["status"] == "subscribed"
    suppressed = sandbox.get_contact(email="gone@example.com")
    assert suppressed["dataFields"]["FIRSTNAME"] is None and suppressed["status"] == "unsubscribed"
    assert sandbox.get_contact(contact_id=old_id)["identifiers"] == {"email": "new@example.com"}
    for email in ("shoes@example.com", "lists@example.com", "status@example.com", "old@example.com"):
        assert sandbox.get_contact(email=email) is None  # failed items leave no trace


async def test_contacts_import_duplicates_consent_and_resubscribe(sandbox, client, raw):
    sandbox.suppress(email="back@example.com", reason="unsubscribed")
    bad_consent = {"text": "Yes", "dateTimeConsented": "yesterday", "url": "https://shop.example.com",
                   "ipAddress": "203.0.113.5", "userAgent": "UA"}
    contacts = [
        _item("twice@example.com", dataFields={"FIRSTNAME": "One"}),
        _item("TWICE@example.com", dataFields={"FIRSTNAME": "Two"}),
        {"matchIdentifier": "email", "identifiers": {"email": "a@example.com", "mobileNumber": "+447700900001"}},
        {"matchIdentifier": "email", "identifiers": {"email": "b@example.com", "mobileNumber": "447700900001"}},
        _item("consent@example.com", dataFields={"FIRSTNAME": "Con"}, consentRecords=[bad_consent]),
        _item("back@example.com", channelProperties={"email": {
            "status": "subscribed", "resubscribeOptions": {"resubscribeWithNoChallenge": True}}}),
        {"matchIdentifier": "mobileNumber", "identifiers": {"email": "nomobile@example.com"}},
        {"identifiers": {"email": "nomatch@example.com"}},
        {"matchIdentifier": "email"},
        "not an object",
    ]
    response = await raw.put("/contacts/v3/import", json={"contacts": contacts})
    assert response.status_code == 202
    report = await client.wait_for_import(response.json()["importId"], kind="contacts", **POLL)

    assert report.summary == {"newContacts": 1, "updatedContacts": 1, "globallySuppressed": 0,
                              "invalidEntries": 4, "duplicateIdentifiers": 4}
    assert report.failure_codes("email", "twice@example.com") == ["duplicateIdentifier"] * 2
    for email in ("a@example.com", "b@example.com"):
        assert report.failure_codes("email", email) == ["duplicateIdentifier"]
    for email in ("twice@example.com", "a@example.com", "b@example.com"):
        assert sandbox.get_contact(email=email) is None  # none of the duplicates wins
    consent = sandbox.get_contact(email="consent@example.com")
    assert consent["dataFields"]["FIRSTNAME"] == "Con" and consent["consentRecords"] == []
    assert report.created == [{"contactId": consent["contactId"], "identifiers": {"email": "consent@example.com"}}]
    consent_failure = next(f for f in report.failures if f["identifiers"] == {"email": "consent@example.com"})
    assert consent_failure["contactId"] == consent["contactId"]
    assert consent_failure["failures"][0]["failureCode"] == "consentRecordsNotApplied"
    assert sandbox.get_contact(email="back@example.com")["status"] == "subscribed"  # explicit resubscribe applies
    assert report.failure_codes("email", "nomobile@example.com") == ["InvalidMatchIdentifier"]
    assert report.failure_codes("email", "nomatch@example.com") == ["InvalidMatchIdentifier"]
    codes = [f["failures"][0]["failureCode"] for f in report.failures[-2:]]
    assert codes == ["NoValidIdentifiers", "ApiSchemaViolation"]


async def test_contacts_import_merge_option_is_camel_case(sandbox, client):
    await _contact(client, JANE, dataFields={"FIRSTNAME": "Jane"})
    import_id = await client.start_contacts_import(
        [_item(JANE, dataFields={"FIRSTNAME": "Janet", "LASTNAME": "Doe"})], merge_option="overwriteIfEmpty")
    assert sandbox.requests_matching("PUT", "/contacts/v3/import")[0].json["mergeOption"] == "overwriteIfEmpty"
    report = await client.wait_for_import(import_id, kind="contacts", **POLL)
    assert report.summary["updatedContacts"] == 1
    fields = sandbox.get_contact(email=JANE)["dataFields"]
    assert (fields["FIRSTNAME"], fields["LASTNAME"]) == ("Jane", "Doe")
    with pytest.raises(ValueError):
        await client.start_contacts_import([_item(JANE)], merge_option="overwrite-if-empty")  # the PATCH spelling


@pytest.mark.parametrize(
    "body",
    [
        {"contacts": []},
        {},
        {"mergeOption": "overwrite-if-empty", "contacts": [_item(JANE)]},
        {"contacts": [_item(JANE)], "listId": 1},
        [_item(JANE)],
    ],
)
async def test_sandbox_rejects_invalid_contacts_import_bodies(sandbox, raw, body):
    response = await raw.put("/contacts/v3/import", json=body)
    assert response.status_code == 400 and response.json()["errorCode"] == "contacts:badJson"


# ---------------------------------------------------------------------------------------------------
# limits, status lookups, cross-cutting behaviour
# ---------------------------------------------------------------------------------------------------
async def test_concurrent_import_limits_answer_429_with_headers(sandbox, client, raw):
    sandbox.import_delay_seconds = 30
    sandbox.set_rate_limit(10_000)  # so that the X-RateLimit-* headers are sent too
    for _ in range(25):
        await client.start_contacts_import([_item(JANE)])
    with pytest.raises(DotdigitalThrottled) as contacts_limit:
        await client.start_contacts_import([_item(JANE)])
    err = contacts_limit.value
    assert (err.status_code, err.code, err.retryable, err.throttled) == (429, "contacts:tooManyActiveImports",
                                                                        True, True)
    assert err.too_many_imports and err.retry_after is not None and 1 <= err.retry_after <= 30
    response = await raw.put("/contacts/v3/import", json={"contacts": [_item(JANE)]})
    assert response.status_code == 429 and 1 <= int(response.headers["Retry-After"]) <= 30
    assert response.headers["X-RateLimit-Limit"] == "10000" and "X-RateLimit-Reset" in response.headers
    assert response.json()["description"].startswith("Your import request cannot be accepted")

    for _ in range(5):
        await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                          records=[_order("1", JANE)])
    with pytest.raises(DotdigitalThrottled) as insight_limit:
        await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                          records=[_order("1", JANE)])
    assert insight_limit.value.code == "insightData:tooManyActiveImports" and insight_limit.value.too_many_imports
    assert insight_limit.value.retry_after is not None

    sandbox.complete_imports()  # they finish; new imports are accepted again
    assert await client.start_contacts_import([_item(JANE)])
    assert await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                             records=[_order("1", JANE)])


async def test_import_status_of_unknown_or_malformed_ids(sandbox, client):
    unknown = "d7de900d-d337-43f6-b1e1-c8ec73e1a434"
    for status_call, service in ((client.contacts_import_status, "contacts"),
                                 (client.insight_import_status, "insightData")):
        with pytest.raises(DotdigitalError) as missing:
            await status_call(unknown)
        assert (missing.value.status_code, missing.value.code) == (404, f"{service}:importNotFound")
        assert missing.value.description == f"The import request '{unknown}' could not be found!"
        assert not missing.value.retryable
        with pytest.raises(DotdigitalError) as malformed:
            await status_call("not-a-guid")
        assert (malformed.value.status_code, malformed.value.code) == (400, f"{service}:invalidId")
    insight_id = await client.start_insight_import("Catalog_Default", scope="account", collection_type="catalog",
                                                   records=[{"key": "1", "json": {}}])
    with pytest.raises(DotdigitalError) as wrong_kind:
        await client.contacts_import_status(insight_id)
    assert wrong_kind.value.code == "contacts:importNotFound"
    assert (await client.insight_import_status(insight_id.upper())).import_id == insight_id


async def test_wait_for_import_times_out_with_a_retryable_error(sandbox, client):
    sandbox.import_delay_seconds = 10
    import_id = await client.start_contacts_import([_item(JANE)])
    started = time.monotonic()
    with pytest.raises(DotdigitalImportTimeout) as caught:
        await client.wait_for_import(import_id, kind="contacts", poll_interval=0.02, timeout=0.1)
    assert time.monotonic() - started < 2
    assert caught.value.retryable and caught.value.code == "IMPORT_TIMEOUT" and "NotFinished" in str(caught.value)
    assert len(sandbox.requests_matching("GET", "/contacts/v3/import/")) >= 2
    with pytest.raises(ValueError):
        await client.wait_for_import(import_id, kind="orders")


async def test_new_endpoints_honour_auth_rate_limits_and_faults(sandbox, client):
    async with DotdigitalClient(api_user=sandbox.api_user, password="wrong-secret", base_url=sandbox.base_url,
                                discover_endpoint=False) as intruder:
        with pytest.raises(DotdigitalAuthError) as denied:
            await intruder.start_insight_import("Orders", scope="contact", collection_type="orders",
                                                records=[_order("1")])
        with pytest.raises(DotdigitalAuthError) as denied_contacts:
            await intruder.start_contacts_import([_item(JANE)])
    assert denied.value.code == "insightData:unauthorized" and denied_contacts.value.code == "contacts:unauthorized"
    assert sandbox.collections == [] and sandbox.contacts == []

    sandbox.inject_fault(status=503, path_contains="/insightData/v3/import", headers={"Retry-After": "7"})
    with pytest.raises(DotdigitalError) as unavailable:
        await client.start_insight_import("Orders", scope="contact", collection_type="orders", records=[_order("1")])
    assert unavailable.value.retryable and unavailable.value.retry_after == 7
    assert unavailable.value.code == "insightData:serviceUnavailable"
    sandbox.inject_fault(drop_connection=True, method="GET", path_contains="/contacts/v3/import/")
    import_id = await client.start_contacts_import([_item(JANE)])
    with pytest.raises(DotdigitalError) as dropped:
        await client.contacts_import_status(import_id)
    assert dropped.value.status_code is None and dropped.value.retryable

    sandbox.set_rate_limit(1)  # the budget is spent by the next call
    await client.list_collections()
    with pytest.raises(DotdigitalThrottled) as throttled:
        await client.upsert_account_record("Catalog_Default", "1", {"name": "x"})
    assert throttled.value.code == "insightData:tooManyRequests" and not throttled.value.too_many_imports
    assert throttled.value.retry_after is not None and throttled.value.retry_after <= 60

    statuses = [(r.method, r.path.split("/")[1], r.status) for r in sandbox.requests]
    assert statuses == [("PUT", "insightData", 401), ("PUT", "contacts", 401), ("PUT", "insightData", 503),
                        ("PUT", "contacts", 202), ("GET", "contacts", 0), ("GET", "insightData", 200),
                        ("PUT", "insightData", 429)]
    assert all(r.headers["authorization"] == "<redacted>" for r in sandbox.requests)


async def test_client_checks_arguments_before_calling(sandbox, client):
    checks = [
        client.start_contacts_import([]),
        client.start_contacts_import([{"identifiers": {"email": JANE}}]),
        client.start_contacts_import([_item(JANE)], merge_option="merge"),
        client.start_insight_import("Orders", scope="contact", collection_type="orders", records=[]),
        client.start_insight_import("Orders", scope="global", collection_type="orders", records=[_order("1")]),
        client.start_insight_import("Orders", scope="contact", collection_type="order", records=[_order("1")]),
        client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                    records=[{**_order("1"), "key": 1}]),
        client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                    records=[{"key": "1", "json": {}}]),
        client.start_insight_import("Catalog", scope="account", collection_type="catalog", records=[_order("1")]),
        client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                    records=[{**_order("1"), "extra": 1}]),
        client.upsert_insight_record("Orders", "", {}, identifier="email", value=JANE),
        client.upsert_insight_record("Or ders", "1", {}, identifier="email", value=JANE),
        client.upsert_insight_record("Orders", "1", {}, identifier="e mail", value=JANE),
        client.upsert_account_record("Catalog", "1", {"price": float("nan")}),
        client.contacts_import_status(""),
    ]
    for check in checks:
        with pytest.raises(ValueError):
            await check
    assert sandbox.requests == []
    assert set(COLLECTION_TYPES) == set(dotdigital_sandbox.COLLECTION_TYPES)


# ---------------------------------------------------------------------------------------------------
# contract tests against Dotdigital's OpenAPI documents
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def specs() -> dict[str, dict]:
    directory = _spec_dir()
    if directory is None or not (directory / "dotdigital-insight-data-service.json").is_file():
        pytest.skip("Dotdigital OpenAPI specs not found (shared/specs/dotdigital or $CTDD_SHARED_DIR)")
    return {
        "contacts": json.loads((directory / "dotdigital-contacts-service.json").read_text("utf-8")),
        "insight": json.loads((directory / "dotdigital-insight-data-service.json").read_text("utf-8")),
    }


def _schema(spec: dict, path: str, method: str, status: str | None = None) -> dict:
    operation = spec["paths"][path][method]
    if status is None:
        return operation["requestBody"]["content"]["application/json"]["schema"]
    return operation["responses"][status]["content"]["application/json"]["schema"]


def _contacts_for_contract() -> list[dict[str, Any]]:
    return [
        {"matchIdentifier": "email", "identifiers": {"email": JANE},
         "dataFields": {"FIRSTNAME": "Jane", "NUMBER_OF_ORDERS": 3},
         "channelProperties": {"email": {"emailType": "html", "optInType": "single", "status": "subscribed"}},
         "lists": [1, 2],
         "consentRecords": [{"text": "Yes please", "dateTimeConsented": "2024-05-01T10:00:00Z",
                             "url": "https://shop.example.com/checkout", "ipAddress": "203.0.113.5",
                             "userAgent": "Mozilla/5.0"}]},
        {"matchIdentifier": "mobileNumber", "identifiers": {"mobileNumber": "447700900123", "email": JOHN},
         "channelProperties": {"sms": {"status": "subscribed"}}},
        {"matchIdentifier": "contactId", "identifiers": {"contactId": 1, "email": "jane.new@example.com"}},
    ]


async def test_contract_insight_import_bodies_match_spec(specs, sandbox, client):
    validator = SchemaValidator(specs["insight"])
    await _contact(client, JANE)
    await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                      records=[_order("1", JANE), _order("2", JANE, couponCode=None)])
    await client.start_insight_import("Catalog_Default", scope="account", collection_type="catalog",
                                      records=[{"key": "24938", "json": {"name": "Hat", "price": 56}}])
    sent = [json.loads(r.raw_body) for r in sandbox.requests_matching("PUT", "/insightData/v3/import")]
    assert len(sent) == 2
    request_schema = _schema(specs["insight"], "/insightData/v3/import", "put")
    for body in sent:
        assert validator.errors(body, request_schema) == []
    response_schema = _schema(specs["insight"], "/insightData/v3/import", "put", "202")
    (accepted, _) = sandbox.requests_matching("PUT", "/insightData/v3/import")
    assert accepted.status == 202
    # the client only sends what the operation declares
    body = sent[0]
    assert set(body) == set(validator.resolve("#/components/schemas/v3_import_body")["properties"])
    assert validator.errors({"importId": "d7de900d-d337-43f6-b1e1-c8ec73e1a434"}, response_schema) == []
    for mutate in (
        lambda b: b.update(collectionScope="Contact"),
        lambda b: b.update(collectionType="order"),
        lambda b: b.update(collectionName="my collection"),
        lambda b: b.update(records=[]),
        lambda b: b["records"][0].update(extra=1),
        lambda b: b["records"][0].pop("json"),
        lambda b: b["records"][0]["contactIdentity"].pop("identifier"),
    ):
        broken = json.loads(json.dumps(body))
        mutate(broken)
        assert validator.errors(broken, request_schema) != []


def test_spec_quirk_strict_allof_rejects_every_insight_record(specs):
    """``upsertInsightRecord`` is ``allOf`` of a closed object holding only ``contactIdentity`` and of
    ``insightRecord`` (``key``, ``json``). Strict JSON Schema rejects ``key``/``json`` in the first branch, so
    no record validates; the merged reading (what generators do) accepts them."""
    record = _order("1")
    schema = "#/components/schemas/upsertInsightRecord"
    strict = SchemaValidator(specs["insight"], merge_allof=False).errors(record, schema)
    assert any("'key'" in e for e in strict) and any("'json'" in e for e in strict)
    assert SchemaValidator(specs["insight"]).errors(record, schema) == []


async def test_contract_single_record_request_matches_spec(specs, sandbox, client):
    validator = SchemaValidator(specs["insight"])
    await _contact(client, JANE)
    await client.create_collection("Orders", scope="contact", collection_type="orders")
    record = _order("1")["json"]
    await client.upsert_insight_record("Orders", "1", record, identifier="email", value=JANE)
    post = sandbox.requests_matching("POST", "/insightData/v3/collections/")[0]
    create = specs["insight"]["paths"]["/insightData/v3/collections/{collectionName}"]["post"]
    params = {p["name"]: p["schema"] for p in create["parameters"]}
    assert validator.errors("Orders", params["collectionName"]) == []
    for name in ("collectionScope", "collectionType"):
        assert validator.errors(post.query[name][0], params[name]) == []

    put = sandbox.requests_matching("PUT", "/insightData/v3/contacts/")[0]
    path = "/insightData/v3/contacts/{identifier}/{value}/{collectionName}/{recordId}"
    put_params = {p["name"]: p["schema"] for p in specs["insight"]["paths"][path]["put"]["parameters"]}
    assert validator.errors("email", put_params["identifier"]) == []
    # Spec quirk: the body is typed ``type: string, format: json`` (its example is the record serialised into
    # a string). What is sent is the record object itself, valid as ``insightRecord.json``.
    declared = _schema(specs["insight"], path, "put")
    assert declared == {"type": "string", "format": "json", "example": declared["example"]}
    assert isinstance(json.loads(declared["example"]), dict)
    assert json.loads(put.raw_body) == record
    json_schema = validator.resolve("#/components/schemas/insightRecord")["properties"]["json"]
    assert validator.errors(json.loads(put.raw_body), json_schema) == []


async def test_contract_contacts_import_body_matches_spec(specs, sandbox, client):
    validator = SchemaValidator(specs["contacts"])
    await client.start_contacts_import(_contacts_for_contract(), merge_option="overwriteIfNotEmpty")
    (put,) = sandbox.requests_matching("PUT", "/contacts/v3/import")
    sent = json.loads(put.raw_body)
    assert sent == {"mergeOption": "overwriteIfNotEmpty", "contacts": _contacts_for_contract()}
    schema = _schema(specs["contacts"], "/contacts/v3/import", "put")
    assert validator.errors(sent, schema) == []
    for mutate in (
        lambda b: b.update(mergeOption="overwrite-if-not-empty"),  # the PATCH spelling
        lambda b: b.update(contacts=[]),
        lambda b: b["contacts"][0].pop("matchIdentifier"),
        lambda b: b["contacts"][0].pop("identifiers"),
        lambda b: b["contacts"][2]["identifiers"].update(contactId="1"),
        lambda b: b["contacts"][0]["channelProperties"]["email"].update(status="pendingOptIn"),
    ):
        broken = json.loads(json.dumps(sent))
        mutate(broken)
        assert validator.errors(broken, schema) != []


async def test_contract_import_reports_match_spec(specs, sandbox, client):
    contacts_validator = SchemaValidator(specs["contacts"])
    insight_validator = SchemaValidator(specs["insight"])
    sandbox.import_delay_seconds = 0
    await _contact(client, JANE)
    sandbox.suppress(email="gone@example.com")
    contacts = [_item(JANE, dataFields={"LASTNAME": "Doe"}), _item(JOHN), _item("gone@example.com"),
                _item("bad@example.com", dataFields={"NOPE": 1}), _item("bad@example.com", lists=[99])]
    report = await client.wait_for_import(await client.start_contacts_import(contacts), kind="contacts", **POLL)
    assert report.created and report.updated and len(report.failures) == 3
    contacts_status = _schema(specs["contacts"], "/contacts/v3/import/{importId}", "get", "200")
    assert contacts_validator.errors(report.body, contacts_status) == []

    insight = await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                                records=[_order("1", JANE), _order("2", GHOST)])
    done = await client.wait_for_import(insight, kind="insight", **POLL)
    insight_status = _schema(specs["insight"], "/insightData/v3/import/{importId}", "get", "200")
    # Spec quirk: the enum says Complete, the examples (and the sandbox's default) say Finished.
    assert insight_validator.errors(done.body, insight_status) == [
        "$.status: 'Finished' not in ['NotStarted', 'Processing', 'Complete', 'Failed']"]
    assert insight_validator.errors({**done.body, "status": "Complete"}, insight_status) == []
    examples = specs["insight"]["paths"]["/insightData/v3/import/{importId}"]["get"]["responses"]["200"]
    assert examples["content"]["application/json"]["examples"]["Import complete"]["value"]["status"] == "Finished"
    sandbox.import_delay_seconds = 10
    pending = await client.start_insight_import("Orders", scope="contact", collection_type="orders",
                                                records=[_order("3", JANE)])
    assert insight_validator.errors((await client.insight_import_status(pending)).body, insight_status) == []


async def test_contract_insight_responses_match_spec(specs, sandbox, client, raw):
    validator = SchemaValidator(specs["insight"])
    paths = specs["insight"]["paths"]
    await _contact(client, JANE)
    await client.create_collection("Orders", scope="contact", collection_type="orders")
    await client.upsert_insight_record("Orders", "1", _order("1")["json"], identifier="email", value=JANE)
    sandbox.create_collection("Catalog_Default", scope="account", collection_type="catalog")
    await client.upsert_account_record("Catalog_Default", "1", {"name": "Hat", "price": 56})

    assert validator.errors(await client.list_collections(), _schema(specs["insight"], "/insightData/v3/collections",
                                                                     "get", "200")) == []
    record = await client.get_insight_record("Orders", "1", identifier="email", value=JANE)
    assert validator.errors(record, "#/components/schemas/returnedInsightRecord") == []
    assert validator.errors(await client.get_account_record("Catalog_Default", "1"),
                            "#/components/schemas/returnedInsightRecord") == []

    schema_response = (await raw.get("/insightData/v3/collections/Orders/schema")).json()
    declared = _schema(specs["insight"], "/insightData/v3/collections/{collectionName}/schema", "get", "200")
    # Spec quirk: ``schema`` is declared an object, but its example (which the sandbox follows) is an array.
    assert validator.errors(schema_response, declared) == ["$.schema: expected object, got list"]
    example = validator.resolve("#/components/schemas/inline_response_200_3")["properties"]["schema"]["example"]
    assert [c["name"] for c in schema_response["schema"]] == [c["name"] for c in example]
    assert set(schema_response) == {"collectionName", "collectionType", "schema"}

    errors = [
        await raw.put("/insightData/v3/contacts/email/ghost%40example.com/Orders/1", json={"a": 1}),
        await raw.put("/insightData/v3/contacts/email/jane.doe%40example.com/Nope/1", json={"a": 1}),
        await raw.get("/insightData/v3/contacts/email/jane.doe%40example.com/Orders/404"),
        await raw.put("/insightData/v3/contacts/email/jane.doe%40example.com/Orders/1", json={"orderTotal": "x"}),
        await raw.get("/insightData/v3/import/d7de900d-d337-43f6-b1e1-c8ec73e1a434"),
        await raw.put("/insightData/v3/import", content=b"{", headers={"Content-Type": "application/json"}),
        await raw.post("/insightData/v3/collections/my%20collection?collectionScope=contact&collectionType=custom"),
    ]
    assert [r.status_code for r in errors] == [404, 404, 404, 400, 404, 400, 400]
    examples = {
        "insightData:contactNotFound": paths["/insightData/v3/contacts/{identifier}/{value}"]["get"],
        "insightData:importNotFound": paths["/insightData/v3/import/{importId}"]["get"],
    }
    for response in errors:
        body = response.json()
        assert validator.errors(body, "#/components/schemas/errorResponse") == []
        assert body["errorCode"].startswith("insightData:")
        if body["errorCode"] in examples:
            example = examples[body["errorCode"]]["responses"]["404"]["content"]["application/json"]["example"]
            assert body["description"].split("'")[0] == example["description"].split("'")[0]
    record_404 = paths["/insightData/v3/contacts/{identifier}/{value}/{collectionName}/{recordId}"]["get"]
    spec_examples = record_404["responses"]["404"]["content"]["application/json"]["examples"]
    assert {e["value"]["errorCode"] for e in spec_examples.values()} == {
        errors[0].json()["errorCode"], errors[1].json()["errorCode"], errors[2].json()["errorCode"]}
