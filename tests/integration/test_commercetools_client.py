"""The async commercetools client against the fake commercetools API, over real HTTP on loopback.

Covers the token lifecycle, reads, deep paging, optimistic locking, custom objects,
error classification and secret hygiene, plus the fake's own API behaviour and the mapping helpers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import uuid
from pathlib import Path

import httpx
import pytest

from ctdd.commercetools import (
    REGIONS,
    CommercetoolsAuthError,
    CommercetoolsClient,
    CommercetoolsConflict,
    CommercetoolsError,
    CommercetoolsTransportError,
    custom_object_key_for_email,
    localized,
    money_to_major,
    predicate_string,
)
from ctdd.testing.commercetools_fake import FakeCommercetools

SHARED_DIR = Path(os.environ.get("CTDD_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
SHARED_FIXTURES = SHARED_DIR / "fixtures" / "commercetools"
SECRET = "s3cr3t-Cl1ent-Secret-Value"


@pytest.fixture
def fake():
    with FakeCommercetools(client_secret=SECRET) as f:
        yield f


def make_client(fake: FakeCommercetools, **overrides) -> CommercetoolsClient:
    kwargs = dict(project_key=fake.project_key, client_id=fake.client_id, client_secret=fake.client_secret,
                  api_url=fake.base_url, auth_url=fake.base_url, timeout=5.0)
    kwargs.update(overrides)
    return CommercetoolsClient(**kwargs)


@pytest.fixture
async def client(fake):
    async with make_client(fake) as c:
        yield c


def token_requests(fake: FakeCommercetools):
    return fake.requests_matching("POST", "/oauth/token")


def api_requests(fake: FakeCommercetools, path_contains: str = "/test-project/"):
    return [r for r in fake.requests if path_contains in r.path]


def shared_json(name: str) -> dict:
    path = SHARED_FIXTURES / name
    if not path.is_file():
        pytest.skip(f"shared commercetools fixtures not available ({path})")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
def test_default_hosts_follow_the_region():
    c = CommercetoolsClient(project_key="my-project", client_id="id", client_secret="secret-value",
                            region="us-central1.gcp")
    assert c.api_url == "https://api.us-central1.gcp.commercetools.com"
    assert c.auth_url == "https://auth.us-central1.gcp.commercetools.com"
    assert "secret-value" not in repr(c)
    assert "europe-west1.gcp" in REGIONS and len(REGIONS) == 5
    with pytest.raises(ValueError, match="region"):
        CommercetoolsClient(project_key="p", client_id="i", client_secret="s", region="eu-west-9.gcp")
    with pytest.raises(ValueError):
        CommercetoolsClient(project_key="p", client_id="i", client_secret="s", api_url="http://h/p", auth_url="http://h")


# ---------------------------------------------------------------------------------------------------
# token lifecycle
# ---------------------------------------------------------------------------------------------------
async def test_token_is_fetched_once_and_cached_across_calls(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com"})
    for _ in range(3):
        assert (await client.get("customers", customer["id"]))["email"] == "jane@example.com"
    await asyncio.gather(*(client.get("customers", customer["id"]) for _ in range(10)))
    await client.query("customers")

    tokens = token_requests(fake)
    assert len(tokens) == 1
    token_request = tokens[0]
    assert token_request.headers["authorization"] == "<redacted>"
    assert b"grant_type=client_credentials" in token_request.raw_body
    assert all(r.headers["authorization"] == "<redacted>" for r in api_requests(fake))
    assert len(api_requests(fake)) == 14
    assert client.token_scope == "manage_project:test-project"


async def test_scopes_are_requested(fake):
    async with make_client(fake, scopes=["view_customers:test-project", "view_orders:test-project"]) as c:
        assert await c.get("customers", "missing") is None
        assert c.token_scope == "view_customers:test-project view_orders:test-project"
    assert b"scope=view_customers%3Atest-project+view_orders%3Atest-project" in token_requests(fake)[0].raw_body


async def test_concurrent_first_calls_share_one_token_request(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com"})
    await asyncio.gather(*(client.get("customers", customer["id"]) for _ in range(8)))
    assert len(token_requests(fake)) == 1


async def test_401_refreshes_the_token_once_and_retries(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com"})
    await client.get("customers", customer["id"])
    fake.expire_tokens()
    fake.reset_requests()

    assert (await client.get("customers", customer["id"]))["id"] == customer["id"]
    assert [(r.method, r.status) for r in fake.requests] == [("GET", 401), ("POST", 200), ("GET", 200)]


async def test_concurrent_401s_refresh_the_token_once(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com"})
    await client.get("customers", customer["id"])
    fake.expire_tokens()
    results = await asyncio.gather(*(client.get("customers", customer["id"]) for _ in range(6)))
    assert all(r["id"] == customer["id"] for r in results)
    assert len(token_requests(fake)) == 2  # the first one plus exactly one refresh


async def test_token_expiry_is_honoured_without_a_401(fake):
    with FakeCommercetools(client_secret=SECRET, token_ttl_seconds=1) as short:
        async with make_client(short) as c:
            await c.query("customers")
            await c.query("customers")
            assert len(token_requests(short)) == 1  # reused while fresh
            await asyncio.sleep(0.6)  # a 1 s token is refreshed after half its lifetime, before it expires
            await c.query("customers")
            assert len(token_requests(short)) == 2
            assert all(r.status == 200 for r in short.requests)


async def test_a_second_401_is_an_auth_error(fake, client):
    fake.inject_fault(status=401, times=2, path_contains="/customers")
    with pytest.raises(CommercetoolsAuthError) as info:
        await client.query("customers")
    assert info.value.status_code == 401 and not info.value.retryable
    assert len(token_requests(fake)) == 2


async def test_bad_client_credentials_raise_an_auth_error(fake, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-value-123"
    async with make_client(fake, client_secret=wrong) as c:
        with pytest.raises(CommercetoolsAuthError) as info:
            await c.get("customers", "x")
    error = info.value
    assert (error.status_code, error.code, error.retryable) == (401, "invalid_client", False)
    assert wrong not in str(error) and wrong not in repr(error) and wrong not in caplog.text
    assert api_requests(fake) == []  # never reached the API


async def test_403_is_an_auth_error(fake, client):
    fake.inject_fault(status=403, path_contains="/orders", body={
        "statusCode": 403, "message": "Insufficient scope. One of the following scopes is missing: view_orders",
        "errors": [{"code": "insufficient_scope", "message": "Insufficient scope."}], "error": "insufficient_scope"})
    with pytest.raises(CommercetoolsAuthError) as info:
        await client.query("orders")
    assert info.value.code == "insufficient_scope"


async def test_token_endpoint_outage_is_retryable(fake, client):
    fake.inject_fault(status=503, path_contains="/oauth/token")
    with pytest.raises(CommercetoolsError) as info:
        await client.query("customers")
    assert info.value.retryable and not isinstance(info.value, CommercetoolsAuthError)
    assert (await client.query("customers"))["results"] == []  # the next call fetches a token


# ---------------------------------------------------------------------------------------------------
# secret hygiene
# ---------------------------------------------------------------------------------------------------
async def test_secrets_never_appear_in_errors_or_logs(fake, client, caplog):
    caplog.set_level(logging.DEBUG)
    await client.query("customers")
    token = client._token
    assert token
    # A misbehaving server (or proxy) that echoes credentials back must not leak them.
    fake.inject_fault(status=500, path_contains="/customers",
                      body={"statusCode": 500, "message": f"boom: Bearer {token} / {SECRET}",
                            "errors": [{"code": "General", "message": f"secret {SECRET}"}]})
    with pytest.raises(CommercetoolsError) as info:
        await client.query("customers")
    fake.inject_fault(status=502, path_contains="/customers", body=f"<html>bad gateway {SECRET} {token}</html>")
    with pytest.raises(CommercetoolsError) as info2:
        await client.query("customers")
    fake.expire_tokens()
    await client.query("customers")  # refresh path logs too

    for error in (info.value, info2.value):
        assert error.retryable
        for text in (str(error), repr(error), json.dumps(error.errors), error.message, error.response_excerpt or ""):
            assert SECRET not in text and token not in text
    assert SECRET not in caplog.text
    assert token not in caplog.text and client._token not in caplog.text
    assert "<redacted>" in info.value.message


# ---------------------------------------------------------------------------------------------------
# reads
# ---------------------------------------------------------------------------------------------------
async def test_404_returns_none(fake, client):
    assert await client.get("customers", str(uuid.uuid4())) is None
    assert await client.get_by_key("customers", "nobody") is None
    assert await client.get_custom_object("ctdd", "missing") is None
    assert fake.requests[-1].status == 404


async def test_get_by_id_and_key_with_expand(fake, client):
    payment = fake.add("payments", {"key": "pay-1", "amountPlanned": {"currencyCode": "EUR", "centAmount": 1000}})
    order = fake.add("orders", {"orderNumber": "o-1", "paymentInfo": {"payments": [
        {"typeId": "payment", "id": payment["id"]}]}})
    fetched = await client.get("orders", order["id"], expand=["paymentInfo.payments[*]"])
    assert fetched["paymentInfo"]["payments"][0]["obj"]["key"] == "pay-1"
    assert (await client.get_by_key("payments", "pay-1"))["id"] == payment["id"]
    assert fake.requests[-1].path == f"/test-project/payments/key=pay-1"


async def test_seeding_with_the_published_examples(fake, client):
    customer = fake.add("customers", shared_json("customer.example.json"))
    order = fake.add("orders", shared_json("order.example.json"))
    assert (await client.get("customers", customer["id"]))["email"] == "johndoe@example.com"
    page = await client.query("orders", where=['orderState = "Open"', f'id = {predicate_string(order["id"])}'])
    assert page["count"] == 1


async def test_query_parameters_and_paged_response(fake, client):
    for i in range(30):
        fake.add("customers", {"email": f"user{i:02d}@example.com", "firstName": "A" if i % 2 else "B"})
    page = await client.query("customers", where=['firstName = "A"'], sort=["email desc"], limit=5, offset=5)
    assert (page["limit"], page["offset"], page["count"], page["total"]) == (5, 5, 5, 15)
    assert [c["email"] for c in page["results"]] == [f"user{i:02d}@example.com" for i in (19, 17, 15, 13, 11)]
    no_total = await client.query("customers", with_total=False)
    assert "total" not in no_total and no_total["count"] == 20  # default limit
    request = fake.requests[-2]
    assert request.query["where"] == ['firstName = "A"'] and request.query["sort"] == ["email desc"]
    assert (request.query["limit"], request.query["offset"], request.query["withTotal"]) == (["5"], ["5"], ["true"])
    with pytest.raises(ValueError):
        await client.query("customers", limit=501)
    with pytest.raises(ValueError):
        await client.query("customers", offset=10_001)


async def test_query_predicates_supported_by_the_fake(fake, client):
    uk = fake.add("customers", {"email": "a@example.com", "stores": [{"typeId": "store", "key": "uk"}],
                                "custom": {"type": {"typeId": "type", "id": "t"}, "fields": {"dd-emailOptIn": True}},
                                "lastModifiedAt": "2026-01-10T10:00:00.000Z", "version": 3})
    de = fake.add("customers", {"email": "b@example.com", "stores": [{"typeId": "store", "key": "de"}],
                                "custom": {"type": {"typeId": "type", "id": "t"}, "fields": {"dd-emailOptIn": False}},
                                "firstName": "Bea", "lastModifiedAt": "2026-01-20T10:00:00.000Z", "version": 1})
    order = fake.add("orders", {"paymentInfo": {"payments": [{"typeId": "payment", "id": "pay-9"}]},
                                "store": {"typeId": "store", "key": "uk"}, "lineItems": []})

    async def ids(resource: str, *where: str) -> list[str]:
        return [r["id"] for r in (await client.query(resource, where=list(where), sort=["email asc"]))["results"]]

    assert await ids("customers", "custom(fields(dd-emailOptIn = true))") == [uk["id"]]
    assert await ids("customers", 'stores(key = "de")') == [de["id"]]
    assert await ids("customers", 'email != "a@example.com"') == [de["id"]]
    assert await ids("customers", 'lastModifiedAt > "2026-01-15T00:00:00Z"') == [de["id"]]  # instants, not text
    assert await ids("customers", 'lastModifiedAt <= "2026-01-10T10:00:00.000Z"') == [uk["id"]]
    assert await ids("customers", "version >= 2") == [uk["id"]]
    assert await ids("customers", "version < 2") == [de["id"]]
    assert await ids("customers", 'email in ("b@example.com", "c@example.com")') == [de["id"]]
    assert await ids("customers", "firstName is defined") == [de["id"]]
    assert await ids("customers", "firstName is not defined") == [uk["id"]]
    assert await ids("customers", '(email = "a@example.com" or firstName = "Bea") and version > 0') == [uk["id"], de["id"]]
    assert await ids("customers", 'not(email = "a@example.com")', "version = 1") == [de["id"]]
    assert await ids("orders", 'paymentInfo(payments(id = "pay-9"))', 'store(key = "uk")',
                     "lineItems is empty") == [order["id"]]
    with pytest.raises(CommercetoolsError) as info:
        await client.query("customers", where=["email = "])
    assert (info.value.status_code, info.value.code, info.value.retryable) == (400, "InvalidInput", False)
    assert "Malformed parameter: where" in info.value.message


async def test_fake_rejects_limits_beyond_the_api_maximum(fake, client):
    token = (await client.query("customers")) and client._token
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"Bearer {token}"}) as raw:
        response = await raw.get("/test-project/customers", params={"limit": "501"})
        assert response.status_code == 400 and response.json()["errors"][0]["code"] == "InvalidInput"
        response = await raw.get("/test-project/customers", params={"offset": "10001"})
        assert response.status_code == 400
        response = await raw.get("/test-project/customers")
        assert response.status_code == 200
        response = await raw.get("/test-project/customers", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401 and response.json()["errors"][0]["code"] == "invalid_token"


# ---------------------------------------------------------------------------------------------------
# deep paging
# ---------------------------------------------------------------------------------------------------
async def test_deep_paging_by_id_over_1200_customers(fake, client):
    ids = [str(uuid.uuid4()) for _ in range(1200)]
    random.Random(7).shuffle(ids)  # insertion order must not matter
    for i, customer_id in enumerate(ids):
        fake.add("customers", {"id": customer_id, "email": f"c{i}@example.com"})
    fake.reset_requests()

    pages = [page async for page in client.iterate_pages("customers", page_size=500)]
    assert [len(p) for p in pages] == [500, 500, 200]
    seen = [c["id"] for page in pages for c in page]
    assert seen == sorted(ids) and len(set(seen)) == 1200

    queries = [r for r in api_requests(fake) if r.method == "GET"]
    assert len(queries) == 3
    for request in queries:
        assert request.query["withTotal"] == ["false"]
        assert request.query["sort"] == ["id asc"]
        assert request.query["limit"] == ["500"]
        assert "offset" not in request.query or request.query["offset"] == ["0"]
    assert "where" not in queries[0].query
    # the last id travels as a predicate input variable, never inside the predicate's text
    assert queries[1].query["where"] == queries[2].query["where"] == ["id > :afterId"]
    assert queries[1].query["var.afterId"] == [pages[0][-1]["id"]]
    assert queries[2].query["var.afterId"] == [pages[1][-1]["id"]]


async def test_deep_paging_resumes_after_an_id_and_combines_predicates(fake, client):
    for i in range(10):
        fake.add("customers", {"id": f"00000000-0000-4000-8000-{i:012d}", "email": f"c{i}@example.com",
                               "firstName": "even" if i % 2 == 0 else "odd"})
    fake.reset_requests()
    pages = [p async for p in client.iterate_pages("customers", page_size=2, where=['firstName = "even"'],
                                                   after_id="00000000-0000-4000-8000-000000000003")]
    assert [[c["email"] for c in p] for p in pages] == [["c4@example.com", "c6@example.com"], ["c8@example.com"]]
    assert api_requests(fake)[0].query["where"] == ['firstName = "even"', "id > :afterId"]
    assert api_requests(fake)[0].query["var.afterId"] == ["00000000-0000-4000-8000-000000000003"]


async def test_deep_paging_stops_on_an_empty_page_without_yielding_it(fake, client):
    for i in range(4):
        fake.add("customers", {"email": f"c{i}@example.com"})
    fake.reset_requests()
    pages = [p async for p in client.iterate_pages("customers", page_size=2)]
    assert [len(p) for p in pages] == [2, 2]
    assert len(api_requests(fake)) == 3  # the third request returns an empty page


# ---------------------------------------------------------------------------------------------------
# writes and optimistic locking
# ---------------------------------------------------------------------------------------------------
async def test_create_update_and_delete_a_customer(fake, client):
    result = await client.create("customers", {"email": "Jane@Example.com", "firstName": "Jane", "password": "pw"})
    customer = result["customer"]  # CustomerSignInResult, like the real API
    assert customer["version"] == 1 and customer["email"] == "Jane@Example.com" and customer["password"] != "pw"

    type_ = await client.create("types", {"key": "dd-consent", "name": {"en": "Consent"},
                                          "resourceTypeIds": ["customer"], "fieldDefinitions": []})
    updated = await client.update("customers", customer["id"], 1, [
        {"action": "setFirstName", "firstName": "Janet"},
        {"action": "setLastName", "lastName": "Doe"},
        {"action": "setCustomType", "type": {"key": "dd-consent", "typeId": "type"}, "fields": {"dd-smsOptIn": False}},
        {"action": "setCustomField", "name": "dd-emailOptIn", "value": True},
        {"action": "setLocale", "locale": "en-GB"},
        {"action": "addAddress", "address": {"country": "GB", "city": "Leeds"}},
        {"action": "changeEmail", "email": "janet@example.com"},
    ])
    assert updated["version"] == 2
    assert (updated["firstName"], updated["lastName"], updated["locale"], updated["email"]) == (
        "Janet", "Doe", "en-GB", "janet@example.com")
    assert updated["custom"] == {"type": {"typeId": "type", "id": type_["id"]},
                                 "fields": {"dd-smsOptIn": False, "dd-emailOptIn": True}}
    assert updated["addresses"][0]["city"] == "Leeds" and updated["addresses"][0]["id"]
    assert updated["lastModifiedAt"] > customer["lastModifiedAt"]

    with pytest.raises(CommercetoolsError) as info:
        await client.create("customers", {"email": "janet@example.com"})
    assert (info.value.status_code, info.value.code) == (400, "DuplicateField")
    assert "janet@example.com" not in str(info.value)  # emails are masked in str()

    with pytest.raises(CommercetoolsError) as info:
        await client.update("customers", customer["id"], 2, [{"action": "setShoeSize", "size": 44}])
    assert (info.value.status_code, info.value.code) == (400, "InvalidInput")
    assert fake.get("customers", customer["id"])["version"] == 2  # atomic: nothing applied

    with pytest.raises(CommercetoolsConflict):
        await client.delete("customers", customer["id"], 1)
    deleted = await client.delete("customers", customer["id"], 2)
    assert deleted["id"] == customer["id"] and fake.get("customers", customer["id"]) is None


async def test_stale_version_is_a_conflict_with_the_current_version(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com"})
    fake.bump_version("customers", customer["id"], firstName="Other writer")
    with pytest.raises(CommercetoolsConflict) as info:
        await client.update("customers", customer["id"], 1, [{"action": "setFirstName", "firstName": "Jane"}])
    error = info.value
    assert (error.status_code, error.code, error.current_version, error.retryable) == (
        409, "ConcurrentModification", 2, False)


async def test_update_with_retry_rereads_after_a_conflict(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com"})
    seen_versions: list[int] = []

    def make_actions(current: dict) -> list[dict]:
        seen_versions.append(current["version"])
        if len(seen_versions) == 1:  # another writer gets in between our read and our write
            fake.bump_version("customers", customer["id"], lastName="Concurrent")
        return [{"action": "setCustomField", "name": "dd-emailOptIn", "value": True}]

    result = await client.update_with_retry("customers", customer["id"], make_actions)
    assert seen_versions == [1, 2]
    assert result["version"] == 3
    assert result["lastName"] == "Concurrent" and result["custom"]["fields"]["dd-emailOptIn"] is True
    posts = [r for r in api_requests(fake, "/customers/") if r.method == "POST"]
    assert [r.status for r in posts] == [409, 200]


async def test_update_with_retry_nothing_to_do_and_exhaustion(fake, client):
    customer = fake.add("customers", {"email": "jane@example.com", "firstName": "Jane"})

    async def unchanged(current: dict) -> list[dict] | None:  # async callbacks are accepted too
        return None if current["firstName"] == "Jane" else [{"action": "setFirstName", "firstName": "Jane"}]

    assert (await client.update_with_retry("customers", customer["id"], unchanged))["version"] == 1
    assert not [r for r in fake.requests if r.method == "POST" and "/customers/" in r.path]
    assert await client.update_with_retry("customers", str(uuid.uuid4()), unchanged) is None

    def always_conflicting(current: dict) -> list[dict]:
        fake.bump_version("customers", customer["id"])
        return [{"action": "setLastName", "lastName": "Doe"}]

    with pytest.raises(CommercetoolsConflict):
        await client.update_with_retry("customers", customer["id"], always_conflicting, max_attempts=3)
    assert fake.get("customers", customer["id"])["version"] == 4  # three concurrent bumps, none of ours


async def test_orders_import_and_state_actions(fake, client):
    order = await client.create("orders/import", {
        "orderNumber": "UK-1", "customerEmail": "jane@example.com", "store": {"key": "uk"},
        "totalPrice": {"currencyCode": "GBP", "centAmount": 9000},
        "lineItems": [{"productId": "p1", "name": {"en": "Shirt"}, "variant": {"sku": "S-1"},
                       "price": {"value": {"currencyCode": "GBP", "centAmount": 4500}}, "quantity": 2}],
    })
    assert order["orderState"] == "Open" and order["store"] == {"typeId": "store", "key": "uk"}
    assert order["lineItems"][0]["totalPrice"] == {"type": "centPrecision", "currencyCode": "GBP",
                                                   "centAmount": 9000, "fractionDigits": 2}
    assert money_to_major(order["totalPrice"]) == 90.0
    updated = await client.update("orders", order["id"], 1, [
        {"action": "changeOrderState", "orderState": "Confirmed"},
        {"action": "changeShipmentState", "shipmentState": "Shipped"},
        {"action": "changePaymentState", "paymentState": "Paid"},
        {"action": "setCustomField", "name": "giftWrap", "value": True},
    ])
    assert (updated["orderState"], updated["shipmentState"], updated["paymentState"]) == ("Confirmed", "Shipped", "Paid")
    with pytest.raises(CommercetoolsError) as info:
        await client.update("orders", order["id"], 2, [{"action": "changeOrderState", "orderState": "Lost"}])
    assert info.value.code == "InvalidInput"


async def test_subscriptions(fake, client):
    with pytest.raises(CommercetoolsError) as info:  # carts have no messages
        await client.create("subscriptions", {"destination": {"type": "GoogleCloudPubSub", "projectId": "p",
                                                              "topic": "t"},
                                              "messages": [{"resourceTypeId": "cart"}]})
    assert info.value.code == "InvalidInput"
    subscription = await client.create("subscriptions", {
        "key": "dotdigital-customer",
        "destination": {"type": "GoogleCloudPubSub", "projectId": "shop-gcp", "topic": "ct-events"},
        "messages": [{"resourceTypeId": "customer", "types": ["CustomerCreated"]}],
        "changes": [{"resourceTypeId": "customer"}],
    })
    assert (subscription["status"], subscription["format"]) == ("Healthy", {"type": "Platform"})
    updated = await client.update("subscriptions", subscription["id"], 1, [
        {"action": "changeDestination", "destination": {"type": "SNS", "topicArn": "arn:aws:sns:eu-west-1:1:t",
                                                        "authenticationMode": "IAM"}},
        {"action": "setMessages", "messages": [{"resourceTypeId": "order", "types": []}]},
        {"action": "setChanges"},
        {"action": "setKey", "key": "dotdigital-order"},
    ])
    assert (updated["destination"]["type"], updated["messages"][0]["resourceTypeId"], updated["changes"],
            updated["key"]) == ("SNS", "order", [], "dotdigital-order")
    found = await client.query("subscriptions", where=['key = "dotdigital-order"'])
    assert found["results"][0]["id"] == subscription["id"]


async def test_fake_carts_orders_from_carts_projections_and_sorting(fake, client):
    cart = await client.create("carts", {"currency": "EUR", "customerEmail": "jane@example.com", "lineItems": [
        {"sku": "S-1", "quantity": 2, "externalPrice": {"currencyCode": "EUR", "centAmount": 1250}}]})
    assert (cart["cartState"], cart["totalPrice"]["centAmount"], cart["totalLineItemQuantity"]) == ("Active", 2500, 2)
    order = await client.create("orders", {"cart": {"typeId": "cart", "id": cart["id"]}, "version": cart["version"]})
    assert order["lineItems"][0]["totalPrice"]["centAmount"] == 2500 and order["cart"]["id"] == cart["id"]
    assert fake.get("carts", cart["id"])["cartState"] == "Ordered"

    fake.add("products", {"key": "hat", "masterData": {
        "published": True, "hasStagedChanges": True,
        "current": {"name": {"en": "Hat"}, "slug": {"en": "hat"}, "categories": [], "masterVariant": {"id": 1}},
        "staged": {"name": {"en": "Hat v2"}, "slug": {"en": "hat"}, "categories": [], "masterVariant": {"id": 1}}}})
    fake.add("products", {"key": "draft", "masterData": {"published": False, "current": {"name": {"en": "Draft"}},
                                                         "staged": {"name": {"en": "Draft"}}}})
    current = await client.query("product-projections")
    assert [localized(p["name"], "en") for p in current["results"]] == ["Hat"]
    staged = await client.query("product-projections", params={"staged": True}, sort=["key asc"])
    assert [p["name"]["en"] for p in staged["results"]] == ["Draft", "Hat v2"]
    assert (await client.get_by_key("product-projections", "hat"))["published"] is True

    first = fake.add("customers", {"email": "first@example.com"})
    second = fake.add("customers", {"email": "second@example.com"})
    await client.update("customers", first["id"], 1, [{"action": "setFirstName", "firstName": "F"}])
    newest = await client.query("customers", sort=["lastModifiedAt desc", "id asc"], limit=1)
    assert newest["results"][0]["id"] == first["id"]
    by_var = await client.query("customers", where=["email = :email"], params={"var.email": "second@example.com"})
    assert [c["id"] for c in by_var["results"]] == [second["id"]]


# ---------------------------------------------------------------------------------------------------
# custom objects
# ---------------------------------------------------------------------------------------------------
async def test_custom_object_upsert_and_version_conflict(fake, client):
    key = custom_object_key_for_email("  Jane.Doe@Example.com ")
    assert key == custom_object_key_for_email("jane.doe@example.com") and len(key) == 64 and "@" not in key

    created = await client.upsert_custom_object("dd-consent", key, {"emailOptIn": True, "source": None})
    assert created["version"] == 1 and created["value"] == {"emailOptIn": True}  # nulls are not stored
    replaced = await client.upsert_custom_object("dd-consent", key, {"emailOptIn": False}, version=1)
    assert replaced["version"] == 2 and replaced["id"] == created["id"]
    with pytest.raises(CommercetoolsConflict) as info:
        await client.upsert_custom_object("dd-consent", key, {"emailOptIn": True}, version=1)
    assert info.value.current_version == 2
    assert (await client.get_custom_object("dd-consent", key))["value"] == {"emailOptIn": False}

    # version 0 = create only if absent (fake choice, see the fake's docstring)
    lock = await client.upsert_custom_object("ctdd-locks", "customer-backfill", "1", version=0)
    with pytest.raises(CommercetoolsConflict):
        await client.upsert_custom_object("ctdd-locks", "customer-backfill", "1", version=0)
    assert (await client.delete_custom_object("ctdd-locks", "customer-backfill", version=lock["version"]))["id"]
    assert await client.delete_custom_object("ctdd-locks", "customer-backfill") is None

    with pytest.raises(ValueError):
        await client.upsert_custom_object("dd-consent", "jane@example.com", {})


# ---------------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------------
async def test_server_and_transport_errors_are_retryable(fake, client):
    fake.inject_fault(status=503, path_contains="/customers")
    with pytest.raises(CommercetoolsError) as info:
        await client.query("customers")
    assert (info.value.status_code, info.value.code, info.value.retryable) == (503, "ServiceUnavailable", True)
    fake.inject_fault(status=429, path_contains="/customers")
    with pytest.raises(CommercetoolsError) as info:
        await client.query("customers")
    assert info.value.retryable
    fake.inject_fault(drop_connection=True, path_contains="/customers")
    with pytest.raises(CommercetoolsTransportError) as info:
        await client.query("customers")
    assert info.value.retryable and info.value.status_code is None
    assert (await client.query("customers"))["count"] == 0


async def test_transport_error_on_an_unreachable_host():
    async with CommercetoolsClient(project_key="p", client_id="i", client_secret="secret-xyz",
                                   api_url="http://127.0.0.1:9", auth_url="http://127.0.0.1:9", timeout=2) as c:
        with pytest.raises(CommercetoolsTransportError) as info:
            await c.query("customers")
    assert "secret-xyz" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def test_money_to_major():
    assert money_to_major({"type": "centPrecision", "currencyCode": "EUR", "centAmount": 5600, "fractionDigits": 2}) == 56.0
    assert money_to_major({"currencyCode": "JPY", "centAmount": 1500}) == 1500.0  # draft without fractionDigits
    assert money_to_major({"currencyCode": "KWD", "centAmount": 1234}) == 1.234
    assert money_to_major({"type": "highPrecision", "currencyCode": "EUR", "centAmount": 123,
                           "preciseAmount": 123456, "fractionDigits": 5}) == 1.23456
    with pytest.raises(ValueError):
        money_to_major({"currencyCode": "EUR"})


def test_localized():
    name = {"en": "Hats", "de-DE": "Hüte", "en-US": "Caps"}
    assert localized(name, "en-US") == "Caps"  # exact
    assert localized(name, "en-GB") == "Hats"  # language part
    assert localized(name, "de") == "Hüte"  # another tag of the same language
    assert localized(name, "fr-FR") == "Hats"  # en
    assert localized({"fr": "Chapeaux", "it": "Cappelli"}, "es") == "Chapeaux"  # first value
    assert localized({"EN_us": "x"}, "en-US") == "x"
    assert localized("plain", "de") == "plain"
    assert localized(None, "de") is None and localized({}, "de") is None


def test_predicate_string_escapes():
    assert predicate_string('a "quoted" \\ value') == '"a \\"quoted\\" \\\\ value"'
    assert predicate_string("jürgen@example.de") == '"jürgen@example.de"'
