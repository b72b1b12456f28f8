"""Tests for the Dotdigital sandbox and the async Dotdigital client, through real HTTP on loopback.

Also contract tests: request bodies the client sends (and responses the sandbox returns) are validated
against the JSON schemas in Dotdigital's own OpenAPI documents (``shared/specs/dotdigital``), with a small
hand-written validator (``ctdd.testing.openapi``, which ``ctdd simulate --openapi`` uses too).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ctdd.dotdigital.client import (
    R1_BASE_URL,
    REGION_BASE_URLS,
    ContactUpsertResult,
    DotdigitalClient,
)
from ctdd.dotdigital.errors import (
    DotdigitalAuthError,
    DotdigitalError,
    DotdigitalThrottled,
    DotdigitalTransportError,
    error_from_response,
)
from ctdd.dotdigital.rate_budget import BudgetTransport, RateBudget
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox, RecordedRequest
from ctdd.testing.openapi import SchemaValidator  # also imported from here by test_dotdigital_insight_import

JANE = "jane.doe@example.com"


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def sandbox():
    with DotdigitalSandbox() as sb:
        yield sb


def _transport(kind: str):
    """The client's transport as CLI commands make it ("httpx": httpx's own) or as the dispatcher makes it
    ("dispatcher": paced by a RateBudget, its HTTP exchanges through aiohttp)."""
    return BudgetTransport(RateBudget(), "main") if kind == "dispatcher" else None


@pytest.fixture(params=["httpx", "dispatcher"])
async def client(request, sandbox):
    """The client with either transport: both must behave the same on the wire and in errors."""
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url,
                                transport=_transport(request.param)) as c:
        yield c


@pytest.fixture
async def raw(sandbox):
    """A plain authenticated httpx client, for exercising the sandbox's own validation."""
    async with httpx.AsyncClient(base_url=sandbox.base_url, auth=(sandbox.api_user, sandbox.password)) as c:
        yield c


def _consent(**overrides: Any) -> dict[str, Any]:
    record = {
        "text": "Yes, I would like to receive the newsletter",
        "dateTimeConsented": "2024-05-01T10:00:00Z",
        "url": "https://shop.example.com/checkout",
        "ipAddress": "203.0.113.5",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
    }
    record.update(overrides)
    return record


# ---------------------------------------------------------------------------------------------------
# region discovery
# ---------------------------------------------------------------------------------------------------
async def test_region_discovery_uses_api_endpoint_once_and_concurrently():
    with DotdigitalSandbox() as r1, DotdigitalSandbox() as account_region:
        r1.api_endpoint = account_region.base_url + "/"  # the account lives "elsewhere"
        async with DotdigitalClient(api_user=r1.api_user, password=r1.password, base_url=r1.base_url) as client:
            endpoints = await asyncio.gather(*(client.api_endpoint() for _ in range(10)))
            assert set(endpoints) == {account_region.base_url}  # trailing slash stripped
            await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane"}})
            info = await client.account_info()

        assert [(r.method, r.path) for r in r1.requests] == [("GET", "/v2/account-info")]
        assert [(r.method, r.path) for r in account_region.requests] == [
            ("PATCH", "/contacts/v3/email/jane.doe%40example.com"),
            ("GET", "/v2/account-info"),
        ]
        assert account_region.get_contact(email=JANE) is not None and r1.contacts == []
        props = {p["name"]: p for p in info["properties"]}
        assert props["ApiEndpoint"]["value"] == account_region.base_url + "/"
        assert props["ApiCallsRemaining"]["type"] == "Int"


async def test_discovery_defaults_to_r1_and_region_without_discovery():
    default = DotdigitalClient(api_user="u", password="p")
    assert default.discovery_base_url == R1_BASE_URL == REGION_BASE_URLS["r1"]
    static = DotdigitalClient(api_user="u", password="p", region="r2", discover_endpoint=False)
    assert await static.api_endpoint() == "https://r2-api.dotdigital.com"
    await default.aclose()
    await static.aclose()
    with pytest.raises(ValueError):
        DotdigitalClient(api_user="u", password="p", region="r9")


async def test_discover_endpoint_false_uses_base_url_directly(sandbox):
    async with DotdigitalClient(
        api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url + "/", discover_endpoint=False
    ) as client:
        assert await client.api_endpoint() == sandbox.base_url
        await client.list_data_fields()
    assert [r.path for r in sandbox.requests] == ["/v2/data-fields"]


# ---------------------------------------------------------------------------------------------------
# auth, headers, recording
# ---------------------------------------------------------------------------------------------------
async def test_bad_password_raises_auth_error_and_creates_nothing(sandbox):
    async with DotdigitalClient(api_user=sandbox.api_user, password="wrong-secret", base_url=sandbox.base_url) as client:
        with pytest.raises(DotdigitalAuthError) as discovery_error:
            await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane"}})
    async with DotdigitalClient(api_user=sandbox.api_user, password="wrong-secret", base_url=sandbox.base_url,
                                discover_endpoint=False) as client:
        with pytest.raises(DotdigitalAuthError) as v3_error:
            await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane"}})

    for exc in (discovery_error.value, v3_error.value):
        assert exc.status_code == 401 and not exc.retryable and not exc.throttled
        assert "wrong-secret" not in str(exc) and "wrong-secret" not in repr(exc)
    assert discovery_error.value.description == "Authorization has been denied for this request."  # v2 body
    assert v3_error.value.code == "contacts:unauthorized"  # v3 envelope
    assert sandbox.contacts == []
    assert [r.status for r in sandbox.requests] == [401, 401]


async def test_requests_recorded_with_authorization_redacted(sandbox, client, caplog):
    caplog.set_level(logging.DEBUG)
    body = {"identifiers": {"email": JANE}, "dataFields": {"FIRSTNAME": "Jane"}}
    await client.upsert_contact("email", JANE, body, headers={"Idempotency-Key": "abc-1"})

    patch = sandbox.requests_matching(method="patch", path_contains=JANE)
    assert len(patch) == 1
    rec = patch[0]
    assert isinstance(rec, RecordedRequest)
    assert rec.headers["authorization"] == "<redacted>"
    assert rec.headers["accept"] == "application/json"
    assert rec.headers["content-type"] == "application/json"
    assert rec.headers["user-agent"] == "ctdd-sync"
    assert rec.headers["idempotency-key"] == "abc-1"
    assert rec.json == body and json.loads(rec.raw_body) == body
    assert rec.query == {"merge-option": ["overwrite"]}
    assert rec.status == 201 and rec.contact_id == 1 and rec.at <= time.time()
    assert [r.method for r in sandbox.requests] == ["GET", "PATCH"]  # arrival order

    token = base64.b64encode(f"{sandbox.api_user}:{sandbox.password}".encode()).decode()
    dumped = repr(sandbox.requests) + caplog.text + repr(client) + repr(sandbox)
    assert sandbox.password not in dumped and token not in dumped

    with pytest.raises(ValueError):
        await client.upsert_contact("email", JANE, body, headers={"Authorization": "Basic x"})

    sandbox.reset_requests()
    assert sandbox.requests == []


# ---------------------------------------------------------------------------------------------------
# contacts v3 upsert semantics
# ---------------------------------------------------------------------------------------------------
async def test_patch_creates_then_updates_only_supplied_fields(sandbox, client):
    created = await client.upsert_contact(
        "email", JANE,
        {"identifiers": {"email": JANE}, "dataFields": {"FIRSTNAME": "Jane", "LASTNAME": "Doe", "DOB": "1990-04-01"},
         "lists": [1]},
    )
    assert isinstance(created, ContactUpsertResult)
    assert created.created and created.status_code == 201 and created.contact_id == 1
    assert created.email_status == "subscribed"  # documented default for new contacts
    assert created.body["dataFields"]["GENDER"] is None  # every account field, null where unset
    assert created.body["lists"] == [{"id": 1, "name": "Customers", "status": "subscribed"}]

    updated = await client.upsert_contact("email", JANE, {"dataFields": {"lastname": "Smith"}, "lists": [2]})
    assert not updated.created and updated.status_code == 200 and updated.contact_id == created.contact_id
    fields = updated.body["dataFields"]
    assert (fields["FIRSTNAME"], fields["LASTNAME"], fields["DOB"]) == ("Jane", "Smith", "1990-04-01")
    assert [entry["id"] for entry in updated.body["lists"]] == [1, 2]  # lists only ever add
    assert updated.body["created"] == created.body["created"]

    second = await client.upsert_contact("email", "john@example.com", {"dataFields": {"FIRSTNAME": "John"}})
    assert second.created and second.contact_id == 2  # sequential ids
    assert sandbox.get_contact(contact_id=1)["dataFields"]["LASTNAME"] == "Smith"
    assert [c["contactId"] for c in sandbox.contacts] == [1, 2]
    assert (await client.get_contact("contactId", "2"))["identifiers"] == {"email": "john@example.com"}
    assert await client.get_contact("email", "nobody@example.com") is None


async def test_unknown_data_field_is_non_retryable_v3_error_naming_the_field(sandbox, client):
    with pytest.raises(DotdigitalError) as exc_info:
        await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane", "SHOE_SIZE": 42}})
    exc = exc_info.value
    assert type(exc) is DotdigitalError
    assert exc.status_code == 400 and exc.code == "contacts:invalidContacts" and not exc.retryable
    assert [d["item"] for d in exc.details] == ["SHOE_SIZE"]
    assert "SHOE_SIZE" in str(exc) and "400" in str(exc) and "contacts:invalidContacts" in str(exc)
    assert sandbox.contacts == []


async def test_data_field_values_must_fit_the_field_type(sandbox, raw):
    sandbox.add_data_field("IS_VIP", "Boolean")
    bad = {"dataFields": {"NUMBER_OF_ORDERS": "3", "DOB": "01/04/1990", "IS_VIP": "yes", "FIRSTNAME": 7}}
    response = await raw.patch("/contacts/v3/email/a%40example.com", json=bad)
    assert response.status_code == 400
    assert sorted(d["item"] for d in response.json()["details"]) == ["DOB", "FIRSTNAME", "IS_VIP", "NUMBER_OF_ORDERS"]

    good = {"dataFields": {"NUMBER_OF_ORDERS": 3, "TOTAL_SPEND": 12.5, "DOB": "1990-04-01", "IS_VIP": True,
                           "LAST_ORDER_DATE": "2024-05-01T10:00:00Z"}}
    response = await raw.patch("/contacts/v3/email/a%40example.com", json=good)
    assert response.status_code == 201
    assert response.json()["dataFields"]["IS_VIP"] is True

    cleared = await raw.patch("/contacts/v3/email/a%40example.com", json={"dataFields": {"IS_VIP": None}})
    assert cleared.status_code == 200 and cleared.json()["dataFields"]["IS_VIP"] is None  # null clears


async def test_merge_options(sandbox, client):
    await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane", "LASTNAME": "Doe"}})
    r = await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "X", "TITLE": "Dr"}},
                                    merge_option="overwrite-if-empty")
    assert (r.body["dataFields"]["FIRSTNAME"], r.body["dataFields"]["TITLE"]) == ("Jane", "Dr")
    r = await client.upsert_contact("email", JANE, {"dataFields": {"LASTNAME": None, "TITLE": ""}},
                                    merge_option="overwrite-if-not-empty")
    assert (r.body["dataFields"]["LASTNAME"], r.body["dataFields"]["TITLE"]) == ("Doe", "Dr")
    r = await client.upsert_contact("email", JANE, {"dataFields": {"LASTNAME": None}})
    assert r.body["dataFields"]["LASTNAME"] is None
    assert sandbox.requests_matching("PATCH")[-2].query == {"merge-option": ["overwrite-if-not-empty"]}
    with pytest.raises(ValueError):
        await client.upsert_contact("email", JANE, {}, merge_option="overwriteIfEmpty")


async def test_delete_contact_by_id_and_by_email_and_already_gone(sandbox, client):
    jane = await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane"}})
    plus = await client.upsert_contact("email", "a+b@example.com", {})
    assert await client.delete_contact("contactId", str(jane.contact_id), headers={"X-Ctdd-Message-Id": "7"}) is True
    assert sandbox.get_contact(email=JANE) is None
    assert await client.delete_contact("contactId", str(jane.contact_id)) is False  # 404: already gone
    assert await client.delete_contact("email", "a+b@example.com") is True  # '+' travels as %2B
    assert sandbox.get_contact(contact_id=plus.contact_id) is None
    calls = sandbox.requests_matching("DELETE")
    assert [c.status for c in calls] == [200, 404, 200] and calls[2].path == "/contacts/v3/email/a%2Bb%40example.com"
    assert calls[0].headers["x-ctdd-message-id"] == "7"
    with pytest.raises(DotdigitalError) as info:  # an invalid identifier value is not "already gone"
        await client.delete_contact("contactId", "not-a-number")
    assert info.value.status_code == 400


async def test_suppressed_contact_stays_suppressed_but_data_fields_update(sandbox, client):
    await client.upsert_contact("email", JANE, {"dataFields": {"FIRSTNAME": "Jane"}})
    sandbox.suppress(email=JANE)  # e.g. the contact clicked "unsubscribe" in a Dotdigital email

    result = await client.upsert_contact(
        "email", JANE,
        {"dataFields": {"FIRSTNAME": "Janet"}, "channelProperties": {"email": {"status": "subscribed"}}},
    )
    assert result.status_code == 200 and result.email_status == "unsubscribed"
    assert result.body["status"] == "unsubscribed"
    assert result.body["dataFields"]["FIRSTNAME"] == "Janet"

    challenged = await client.upsert_contact(
        "email", JANE,
        {"channelProperties": {"email": {"status": "subscribed",
                                         "resubscribeOptions": {"resubscribeWithNoChallenge": False,
                                                                "preferredLocale": "en-EN"}}}},
    )
    assert challenged.email_status == "pendingOptIn"

    sandbox.suppress(email="bounced@example.com", reason="hardBounced")
    hard = await client.upsert_contact(
        "email", "bounced@example.com",
        {"channelProperties": {"email": {"status": "subscribed", "resubscribeOptions": {}}}},
    )
    assert hard.email_status == "hardBounced" and hard.body["status"] == "suppressed"  # cannot be lifted


async def test_resubscribe_with_no_challenge_by_default(sandbox, client):
    sandbox.suppress(email=JANE, reason="suppressed")
    result = await client.upsert_contact(
        "email", JANE, {"channelProperties": {"email": {"status": "subscribed", "resubscribeOptions": {}}}}
    )
    assert result.created is False and result.email_status == "subscribed"


async def test_explicit_status_and_opt_in_on_create(sandbox, client):
    r = await client.upsert_contact("email", "u@example.com",
                                    {"channelProperties": {"email": {"status": "unsubscribed", "emailType": "plainText"}}})
    assert r.email_status == "unsubscribed"
    assert r.body["channelProperties"]["email"]["emailType"] == "PlainText"  # Pascal-case read enum
    r = await client.upsert_contact("email", "v@example.com",
                                    {"channelProperties": {"email": {"optInType": "verifiedDouble"}}})
    assert r.email_status == "pendingOptIn"
    assert r.body["channelProperties"]["email"]["optInType"] == "VerifiedDouble"
    assert r.body["lists"] == []


async def test_identifier_conflict_returns_409(sandbox, client):
    await client.upsert_contact("email", JANE, {})
    await client.upsert_contact("email", "john@example.com", {})
    with pytest.raises(DotdigitalError) as exc_info:
        await client.upsert_contact("email", "john@example.com", {"identifiers": {"email": JANE.upper()}})
    assert exc_info.value.status_code == 409 and exc_info.value.code == "contacts:idAlreadyExists"
    assert not exc_info.value.retryable
    assert JANE.upper() not in str(exc_info.value)  # PII masked in the message

    moved = await client.upsert_contact("email", "john@example.com", {"identifiers": {"email": "j2@example.com"}})
    assert moved.body["identifiers"]["email"] == "j2@example.com" and moved.contact_id == 2


async def test_contact_id_path_not_found_is_404(sandbox, client):
    with pytest.raises(DotdigitalError) as exc_info:
        await client.upsert_contact("contactId", "999", {"dataFields": {"FIRSTNAME": "X"}})
    assert exc_info.value.status_code == 404 and exc_info.value.code == "contacts:contactNotFound"
    assert not exc_info.value.retryable
    assert exc_info.value.details[0]["item"] == "999"
    assert sandbox.contacts == []


async def test_email_with_plus_is_url_encoded(sandbox, client):
    email = "jane+promo@example.com"
    result = await client.upsert_contact("email", email, {"dataFields": {"FIRSTNAME": "Jane"}})
    assert result.body["identifiers"]["email"] == email
    (rec,) = sandbox.requests_matching("PATCH")
    assert rec.path == "/contacts/v3/email/jane%2Bpromo%40example.com"
    assert (await client.get_contact("email", email))["contactId"] == result.contact_id
    assert sandbox.get_contact(email=email)["contactId"] == result.contact_id


async def test_sandbox_rejects_unencoded_plus_in_path(raw):
    response = await raw.patch("/contacts/v3/email/jane+promo@example.com", json={})
    assert response.status_code == 400 and response.json()["errorCode"] == "contacts:invalidId"


async def test_mobile_number_identifier_is_stored_without_plus(sandbox, client):
    r = await client.upsert_contact("mobileNumber", "+447123123123", {"channelProperties": {"sms": {"status": "subscribed"}}})
    assert r.created and r.body["identifiers"] == {"mobileNumber": "447123123123"}
    assert r.body["channelProperties"]["sms"] == {"countryCode": "GB", "status": "subscribed"}
    assert sandbox.requests_matching("PATCH")[0].path == "/contacts/v3/mobileNumber/%2B447123123123"
    assert sandbox.get_contact(mobile="+447123123123")["contactId"] == r.contact_id
    again = await client.upsert_contact("mobileNumber", "447123123123", {"identifiers": {"email": JANE}})
    assert not again.created and again.body["identifiers"] == {"email": JANE, "mobileNumber": "447123123123"}
    with pytest.raises(DotdigitalError) as exc_info:
        await client.upsert_contact("mobileNumber", "07123 123123", {})
    assert exc_info.value.code == "contacts:invalidId"


async def test_concurrent_upserts_get_unique_sequential_ids(sandbox, client):
    results = await asyncio.gather(
        *(client.upsert_contact("email", f"user{i}@example.com", {"dataFields": {"CUSTOMER_ID": str(i)}})
          for i in range(20))
    )
    assert sorted(r.contact_id for r in results) == list(range(1, 21))
    assert all(r.created for r in results) and len(sandbox.contacts) == 20


# ---------------------------------------------------------------------------------------------------
# sandbox strictness on the v3 write model
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"datafields": {"FIRSTNAME": "x"}}, "contacts:badJson"),  # unknown top-level key (typo)
        ([], "contacts:badJson"),
        ({"identifiers": {"email": "not-an-email"}}, "contacts:invalidId"),
        ({"identifiers": {"customerNo": "C1"}}, "contacts:invalidId"),  # no custom identifiers in the account
        ({"channelProperties": {"email": {"status": "pendingOptIn"}}}, "contacts:badJson"),  # not a write status
        ({"channelProperties": {"email": {"emailType": "rtf"}}}, "contacts:badJson"),
        ({"channelProperties": {"sms": {"status": "bounced"}}}, "contacts:badJson"),
        ({"channelProperties": {"push": {}}}, "contacts:badJson"),
        ({"lists": []}, "contacts:badJson"),
        ({"lists": list(range(1, 102))}, "contacts:badJson"),
        ({"lists": [99]}, "contacts:invalidContacts"),
        ({"lists": ["1"]}, "contacts:badJson"),
        ({"consentRecords": [_consent()] * 6}, "contacts:badJson"),
        ({"consentRecords": [{k: v for k, v in _consent().items() if k != "userAgent"}]}, "contacts:badJson"),
        ({"consentRecords": [_consent(extra="x")]}, "contacts:badJson"),
        ({"consentRecords": [_consent(ipAddress="999.1.1.1")]}, "contacts:badJson"),
        ({"consentRecords": [_consent(url="checkout")]}, "contacts:badJson"),
        ({"preferences": [{"id": 1}]}, "contacts:badJson"),
    ],
)
async def test_sandbox_rejects_invalid_write_models(sandbox, raw, body, code):
    response = await raw.patch("/contacts/v3/email/a%40example.com", json=body)
    assert response.status_code == 400
    assert response.json()["errorCode"] == code
    assert sandbox.contacts == []


async def test_sandbox_accepts_full_write_model_and_case_insensitive_enums(sandbox, raw):
    body = {
        "matchIdentifier": "email",
        "identifiers": {"email": "a@example.com", "mobileNumber": "+4915112345678"},
        "dataFields": {"firstName": "Anna"},
        "channelProperties": {"email": {"emailType": "Html", "optInType": "single", "status": "subscribed"},
                              "sms": {"status": "subscribed"}, "whatsApp": {"status": "noSubscription"}},
        "lists": [1, 3],
        "preferences": [{"id": 7, "isOptedIn": True}],
        "consentRecords": [_consent(), _consent(ipAddress="2b01:1234:136:0:116f:3244:a476:d6b7")],
    }
    response = await raw.patch("/contacts/v3/email/a%40example.com", json=body)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["identifiers"] == {"email": "a@example.com", "mobileNumber": "4915112345678"}
    assert model["channelProperties"]["email"] == {"emailType": "Html", "optInType": "Single", "status": "subscribed"}
    assert model["channelProperties"]["sms"]["countryCode"] == "DE"
    assert len(model["consentRecords"]) == 2 and "dateTimeCreated" in model["consentRecords"][0]
    assert model["preferences"] == [{"id": 7, "isOptedIn": True}]


async def test_sandbox_malformed_json_and_unknown_routes(raw):
    r = await raw.patch("/contacts/v3/email/a%40example.com", content=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["errorCode"] == "contacts:badJson"
    r = await raw.post("/v2/data-fields", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "ERROR_MALFORMED_REQUEST" in r.json()["message"]
    r = await raw.get("/v2/campaigns")
    assert r.status_code == 404 and set(r.json()) == {"message"}
    r = await raw.get("/insightData/v3/account/Catalog_Default")
    assert r.status_code == 404 and r.json()["errorCode"].startswith("insightData:")
    r = await raw.post("/contacts/v3/email/a%40example.com", json={})
    assert r.status_code == 405 and r.json()["errorCode"].startswith("contacts:")
    r = await raw.delete("/contacts/v3/email/a%40example.com")  # deleteContact of a contact that does not exist
    assert r.status_code == 404 and r.json()["errorCode"] == "contacts:contactNotFound"
    r = await raw.patch("/contacts/v3/email/a%40example.com?merge-option=overwriteIfEmpty", json={})
    assert r.status_code == 400
    r = await raw.get("/contacts/v3/customerNo/C1")
    assert r.status_code == 400 and r.json()["errorCode"] == "contacts:invalidId"


async def test_sandbox_unauthenticated_envelopes(sandbox):
    async with httpx.AsyncClient(base_url=sandbox.base_url) as anonymous:
        v2 = await anonymous.get("/v2/account-info")
        v3 = await anonymous.get("/contacts/v3/email/a%40example.com")
    assert v2.status_code == 401 and v2.json() == {"message": "Authorization has been denied for this request."}
    assert v3.status_code == 401 and v3.json()["errorCode"] == "contacts:unauthorized"


# ---------------------------------------------------------------------------------------------------
# v2 data fields and address books
# ---------------------------------------------------------------------------------------------------
async def test_data_field_creation_is_idempotent(sandbox, client):
    assert await client.create_data_field("LOYALTY_TIER") is True
    assert await client.create_data_field("LOYALTY_TIER") is False
    assert await client.create_data_field("loyalty_tier", type="Numeric") is False  # case-insensitive
    assert await client.create_data_field("POINTS", type="Numeric", visibility="Public", default_value=0) is True
    fields = {f["name"]: f for f in await client.list_data_fields()}
    assert fields["LOYALTY_TIER"] == {"name": "LOYALTY_TIER", "type": "String", "visibility": "Private",
                                      "defaultValue": None}
    assert fields["POINTS"]["defaultValue"] == 0 and fields["FIRSTNAME"]["visibility"] == "Public"
    (dup,) = [r for r in sandbox.requests_matching("POST", "/v2/data-fields") if r.status == 400][:1]
    assert dup.json == {"name": "LOYALTY_TIER", "type": "String", "visibility": "Private"}
    with pytest.raises(ValueError):
        await client.create_data_field("THIS_NAME_IS_WAY_TOO_LONG")
    await client.upsert_contact("email", JANE, {"dataFields": {"LOYALTY_TIER": "gold"}})  # usable at once


@pytest.mark.parametrize(
    "body",
    [{"name": "BAD NAME", "type": "String"}, {"name": "A" * 21, "type": "String"}, {"name": "X"},
     {"name": "X", "type": "Text"}, {"name": "X", "type": "Numeric", "defaultValue": "ten"},
     {"name": "X", "type": "String", "colour": "red"}],
)
async def test_sandbox_rejects_invalid_data_fields(raw, body):
    r = await raw.post("/v2/data-fields", json=body)
    assert r.status_code == 400 and r.json()["message"].endswith("ERROR_DATAFIELD_INVALID")


async def test_address_books_and_membership_removal(sandbox, client, raw):
    books = await client.list_address_books()
    assert [(b["id"], b["name"]) for b in books] == [(1, "Customers"), (2, "Newsletter"), (3, "SMS")]

    created = await raw.post("/v2/address-books", json={"name": "VIP"})
    assert created.status_code == 201
    assert created.json() == {"id": 4, "name": "VIP", "visibility": "Private", "contacts": 0}
    for name in ("vip", "Test", "ALL CONTACTS"):
        r = await raw.post("/v2/address-books", json={"name": name})
        assert r.status_code == 400 and "ERROR_ADDRESSBOOK_DUPLICATE" in r.json()["message"]
    r = await raw.post("/v2/address-books", json={"name": "x" * 129})
    assert r.status_code == 400 and "ERROR_ADDRESSBOOK_INVALID" in r.json()["message"]

    contact = await client.upsert_contact("email", JANE, {"lists": [2, 4]})
    assert {b["id"]: b["contacts"] for b in await client.list_address_books()}[4] == 1
    await client.remove_contact_from_address_book(4, contact.contact_id)
    await client.remove_contact_from_address_book(4, contact.contact_id)  # idempotent in the sandbox
    assert [entry["id"] for entry in sandbox.get_contact(email=JANE)["lists"]] == [2]
    deletes = sandbox.requests_matching("DELETE")
    assert [d.status for d in deletes] == [204, 204] and deletes[0].contact_id == contact.contact_id

    with pytest.raises(DotdigitalError) as missing_book:
        await client.remove_contact_from_address_book(99, contact.contact_id)
    assert missing_book.value.status_code == 404 and missing_book.value.code == "ERROR_ADDRESSBOOK_NOT_FOUND"
    with pytest.raises(DotdigitalError) as missing_contact:
        await client.remove_contact_from_address_book(2, 12345)
    assert missing_contact.value.code == "ERROR_CONTACT_NOT_FOUND" and not missing_contact.value.retryable


async def test_list_address_books_pages_through_everything():
    with DotdigitalSandbox(address_books={i: f"List {i}" for i in range(1, 1203)}) as sandbox:
        async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password,
                                    base_url=sandbox.base_url, discover_endpoint=False) as client:
            books = await client.list_address_books()
        assert len(books) == 1202 and books[-1]["id"] == 1202
        # the first page goes without skip (the programs API declares it with a minimum of 1)
        assert [r.query.get("skip") for r in sandbox.requests] == [None, ["1000"]]


# ---------------------------------------------------------------------------------------------------
# throttling, faults, transport errors
# ---------------------------------------------------------------------------------------------------
async def test_rate_limit_429_with_headers_becomes_throttled(sandbox, client, request):
    if request.node.callspec.params["client"] == "dispatcher":
        pytest.skip("the dispatcher's client waits for the window instead of meeting the 429 "
                    "(test_rate_budget.py tests that)")
    sandbox.set_rate_limit(3)
    await client.api_endpoint()  # 1
    await client.list_data_fields()  # 2
    await client.list_address_books()  # 3
    ok = sandbox.requests[-1]
    assert ok.status == 200
    with pytest.raises(DotdigitalThrottled) as exc_info:
        await client.upsert_contact("email", JANE, {})
    exc = exc_info.value
    assert exc.status_code == 429 and exc.throttled and exc.retryable
    assert exc.code == "contacts:tooManyRequests"
    assert exc.retry_after is not None and 0 < exc.retry_after <= 60
    assert sandbox.requests[-1].status == 429 and sandbox.contacts == []

    async with httpx.AsyncClient(base_url=sandbox.base_url, auth=(sandbox.api_user, sandbox.password)) as raw:
        r = await raw.get("/v2/data-fields")
    assert r.status_code == 429 and "message" in r.json()  # v2 envelope on v2 paths
    assert r.headers["X-RateLimit-Limit"] == "3" and r.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(r.headers["X-RateLimit-Reset"]) <= 60 and r.headers["X-RateLimit-Scope"]

    sandbox.set_rate_limit(None)
    assert (await client.upsert_contact("email", JANE, {})).created


async def test_successful_responses_carry_rate_limit_headers(sandbox, raw):
    sandbox.set_rate_limit(10)
    r1 = await raw.get("/v2/data-fields")
    r2 = await raw.get("/v2/data-fields")
    assert (r1.headers["X-RateLimit-Limit"], r1.headers["X-RateLimit-Remaining"]) == ("10", "9")
    assert r2.headers["X-RateLimit-Remaining"] == "8" and int(r2.headers["X-RateLimit-Reset"]) <= 60
    sandbox.set_rate_limit(None)
    assert "X-RateLimit-Limit" not in (await raw.get("/v2/data-fields")).headers


async def test_injected_503_is_retryable_and_honours_retry_after(sandbox, client):
    await client.api_endpoint()
    sandbox.inject_fault(status=503, times=2, method="PATCH", headers={"Retry-After": "7"})
    for _ in range(2):
        with pytest.raises(DotdigitalError) as exc_info:
            await client.upsert_contact("email", JANE, {})
        exc = exc_info.value
        assert exc.status_code == 503 and exc.retryable and not exc.throttled and exc.retry_after == 7
    assert (await client.upsert_contact("email", JANE, {})).created  # fault used up
    assert [r.status for r in sandbox.requests_matching("PATCH")] == [503, 503, 201]


async def test_injected_flat_limit_error_is_throttled(sandbox, client):
    sandbox.inject_fault(status=400, body={"message": "Error: ERROR_APIUSAGE_EXCEEDED"}, path_contains="data-fields")
    await client.api_endpoint()  # not matched by the fault
    with pytest.raises(DotdigitalThrottled) as exc_info:
        await client.create_data_field("NEW_FIELD")
    exc = exc_info.value
    assert exc.status_code == 400 and exc.code == "ERROR_APIUSAGE_EXCEEDED"
    assert exc.retryable and exc.throttled and exc.retry_after == 60


async def test_injected_403_wrong_region_is_auth_error(sandbox, client):
    sandbox.inject_fault(status=403, body={"message": "Access is denied"})
    with pytest.raises(DotdigitalAuthError) as exc_info:
        await client.api_endpoint()
    assert exc_info.value.status_code == 403 and not exc_info.value.retryable


async def test_dropped_connection_is_transport_error(sandbox, client):
    await client.api_endpoint()
    sandbox.inject_fault(drop_connection=True, method="PATCH")
    with pytest.raises(DotdigitalTransportError) as exc_info:
        await client.upsert_contact("email", JANE, {})
    exc = exc_info.value
    assert exc.status_code is None and exc.retryable and exc.code == "TRANSPORT_ERROR"
    assert sandbox.requests_matching("PATCH")[0].status == 0
    assert sandbox.contacts == []
    assert (await client.upsert_contact("email", JANE, {})).created  # the client recovers


@pytest.mark.parametrize("transport", ["httpx", "dispatcher"])
async def test_latency_beyond_client_timeout_is_transport_error(sandbox, transport):
    sandbox.set_latency(0.6)
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url,
                                discover_endpoint=False, timeout=0.15, transport=_transport(transport)) as client:
        started = time.monotonic()
        with pytest.raises(DotdigitalTransportError) as exc_info:
            await client.list_data_fields()
        assert time.monotonic() - started < 0.5
    assert exc_info.value.code == "TIMEOUT" and exc_info.value.retryable


async def test_fault_delay_and_string_body(sandbox, raw):
    sandbox.inject_fault(status=502, body="<html>Bad gateway</html>", delay=0.05)
    started = time.monotonic()
    r = await raw.get("/v2/data-fields")
    assert time.monotonic() - started >= 0.05
    assert r.status_code == 502 and r.text == "<html>Bad gateway</html>"
    assert r.headers["content-type"].startswith("text/plain")
    err = error_from_response(r.status_code, r.headers, r.content)
    assert err.retryable and err.code is None and err.response_excerpt == "<html>Bad gateway</html>"


# ---------------------------------------------------------------------------------------------------
# error classification (pure)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "retryable", "code"),
    [
        (500, b"", True, None),
        (502, b"<html>oops</html>", True, None),
        (408, b"", True, None),
        (425, b"", True, None),
        (400, b'{"message": "Error: ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE"}', True,
         "ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE"),
        (400, b'{"message": "List is being used. ERROR_ADDRESSBOOK_IN_USE"}', True, "ERROR_ADDRESSBOOK_IN_USE"),
        (400, b'{"message": "Error: ERROR_UNKNOWN"}', True, "ERROR_UNKNOWN"),
        (400, b'{"message": "ERROR_TRANSACTIONAL_DATA_COLLECTION_IS_RESTORING"}', True,
         "ERROR_TRANSACTIONAL_DATA_COLLECTION_IS_RESTORING"),
        (400, b'{"message": "Contact is suppressed. ERROR_CONTACT_SUPPRESSED"}', False, "ERROR_CONTACT_SUPPRESSED"),
        (404, b'{"errorCode": "contacts:contactNotFound", "description": "nope", "details": []}', False,
         "contacts:contactNotFound"),
        (409, b'{"type": "x", "title": "Conflict", "status": 409, "detail": "in use"}', False, None),
    ],
)
def test_error_classification(status, body, retryable, code):
    err = error_from_response(status, {}, body)
    assert (err.retryable, err.code, err.status_code) == (retryable, code, status)
    assert type(err) is DotdigitalError


def test_retry_after_variants():
    now = time.time()
    epoch = error_from_response(429, {"x-ratelimit-reset": str(int(now) + 30)}, b"")
    assert isinstance(epoch, DotdigitalThrottled) and 28 <= epoch.retry_after <= 30
    seconds = error_from_response(429, {"X-RateLimit-Reset": "12"}, b"")
    assert seconds.retry_after == 12
    http_date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True)
    dated = error_from_response(503, {"Retry-After": http_date}, b"")
    assert dated.retryable and 15 <= dated.retry_after <= 20
    no_hint = error_from_response(429, {}, b"")
    assert no_hint.throttled and no_hint.retry_after is None
    imports = error_from_response(400, {}, b'{"message": "Error: ERROR_IMPORT_TOOMANYACTIVEIMPORTS"}')
    assert isinstance(imports, DotdigitalThrottled) and imports.retryable and imports.too_many_imports
    assert error_from_response(400, {"Retry-After": "5"}, b'{"message": "x ERROR_PARAMETER_INVALID"}').retry_after is None


def test_error_excerpt_is_short_and_pii_minimised():
    body = json.dumps({"errorCode": "contacts:idAlreadyExists",
                       "description": "The id value 'jane.doe@example.com' for the identifier 'email' already exists",
                       "details": [{"item": "+447123123123", "description": "x" * 1000}]}).encode()
    err = error_from_response(409, {}, body, method="PATCH", path="/contacts/v3/email/jane.doe%40example.com")
    assert err.response_excerpt is not None and len(err.response_excerpt) <= 500
    for text in (err.response_excerpt, str(err)):
        assert "jane.doe@example.com" not in text and "447123123123" not in text
    assert "409" in str(err) and "contacts:idAlreadyExists" in str(err) and "<email>" in str(err)
    assert err.description.startswith("The id value 'jane.doe@example.com'")  # raw for programmatic use


# ---------------------------------------------------------------------------------------------------
# contract tests against Dotdigital's OpenAPI documents
# ---------------------------------------------------------------------------------------------------
def _spec_dir() -> Path | None:
    candidates = []
    shared = os.environ.get("CTDD_SHARED_DIR")
    if shared:
        candidates += [Path(shared) / "specs" / "dotdigital", Path(shared)]
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "specs" / "dotdigital")
    return next((c for c in candidates if (c / "dotdigital-contacts-service.json").is_file()), None)


@pytest.fixture(scope="module")
def specs() -> dict[str, dict]:
    directory = _spec_dir()
    if directory is None:
        pytest.skip("Dotdigital OpenAPI specs not found (shared/specs/dotdigital or $CTDD_SHARED_DIR)")
    loaded = {"contacts": json.loads((directory / "dotdigital-contacts-service.json").read_text("utf-8"))}
    for key, name in (("v2", "dotdigital-v2-api-swagger.json"),
                      ("data_fields", "Dotdigital-dotdigital-contact-data-fields-2.0.0-resolved-1.yaml")):
        path = directory / name
        if path.is_file():
            loaded[key] = json.loads(path.read_text("utf-8"))  # these "yaml" files are single-line JSON
    return loaded


UPDATE_REQUEST = "#/components/schemas/updateContactRequest"
CONTACT = "#/components/schemas/contact"
ERROR_RESPONSE = "#/components/schemas/errorResponse"


def _full_patch_body() -> dict[str, Any]:
    return {
        "identifiers": {"email": JANE, "mobileNumber": "447123123123"},
        "dataFields": {"FIRSTNAME": "Jane", "NUMBER_OF_ORDERS": 3, "DOB": "1990-04-01"},
        "channelProperties": {"email": {"emailType": "html", "optInType": "single", "status": "subscribed"},
                              "sms": {"status": "subscribed"}},
        "lists": [1, 3],
        "preferences": [{"id": 7, "isOptedIn": True}],
        "consentRecords": [_consent()],
    }


async def test_contract_patch_body_sent_by_client_matches_spec(specs, sandbox, client):
    validator = SchemaValidator(specs["contacts"])
    result = await client.upsert_contact("email", JANE, _full_patch_body())
    assert result.created
    (rec,) = sandbox.requests_matching("PATCH")
    sent = json.loads(rec.raw_body)
    assert sent == _full_patch_body()  # the client sends the body unchanged
    assert validator.errors(sent, UPDATE_REQUEST) == []
    assert set(sent) <= {"identifiers", "dataFields", "channelProperties", "lists", "preferences", "consentRecords"}
    # the query parameter and path segments follow the spec's parameter schemas
    patch_op = specs["contacts"]["paths"]["/contacts/v3/{identifier}/{value}"]["patch"]
    params = {p["name"]: p["schema"] for p in patch_op["parameters"]}
    assert validator.errors(rec.query["merge-option"][0], params["merge-option"]) == []
    assert validator.errors("email", params["identifier"]) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b["channelProperties"]["email"].update(emailType="Html"),  # read enum, not write enum
        lambda b: b["channelProperties"]["email"].update(status="pendingOptIn"),
        lambda b: b["consentRecords"][0].update(extra="x"),
        lambda b: b["consentRecords"][0].pop("userAgent"),
        lambda b: b["consentRecords"][0].update(ipAddress="not-an-ip"),
        lambda b: b.update(consentRecords=[_consent()] * 6),
        lambda b: b.update(lists=list(range(101))),
        lambda b: b.update(lists=["1"]),
        lambda b: b["channelProperties"].update(push={}),
        lambda b: b["preferences"][0].pop("isOptedIn"),
    ],
)
def test_contract_validator_catches_spec_violations(specs, mutate):
    body = _full_patch_body()
    mutate(body)
    assert SchemaValidator(specs["contacts"]).errors(body, UPDATE_REQUEST) != []


def test_spec_quirk_strict_allof_rejects_resubscribe_options(specs):
    """``updateContactRequest`` composes ``channelProperties`` (email closed with additionalProperties:
    false) and ``channelPropertiesWithResubscribe`` (adds ``resubscribeOptions``) via ``allOf``. Strict JSON
    Schema rejects ``resubscribeOptions``; the merged reading (what the docs intend) accepts it."""
    body = {"channelProperties": {"email": {"status": "subscribed",
                                            "resubscribeOptions": {"resubscribeWithNoChallenge": True}}}}
    strict = SchemaValidator(specs["contacts"], merge_allof=False).errors(body, UPDATE_REQUEST)
    assert any("resubscribeOptions" in e for e in strict)
    assert SchemaValidator(specs["contacts"]).errors(body, UPDATE_REQUEST) == []


async def test_contract_sandbox_responses_match_spec(specs, sandbox, client, raw):
    validator = SchemaValidator(specs["contacts"])
    body = _full_patch_body()
    body.pop("preferences")  # the spec's preferenceFull requires a "name" it never defines (spec bug)
    created = await client.upsert_contact("email", JANE, body)
    assert validator.errors(created.body, CONTACT) == []
    sandbox.suppress(email=JANE)
    fetched = await client.get_contact("email", JANE)
    assert validator.errors(fetched, CONTACT) == []
    mobile_only = await client.upsert_contact("mobileNumber", "+61412345678", {})
    assert validator.errors(mobile_only.body, CONTACT) == []

    for response in (
        await raw.patch("/contacts/v3/email/x%40example.com", json={"dataFields": {"NOPE": 1}}),
        await raw.get("/contacts/v3/email/missing%40example.com"),
        await raw.patch("/contacts/v3/email/x%40example.com", content=b"{", headers={"Content-Type": "application/json"}),
    ):
        assert response.status_code in (400, 404)
        assert validator.errors(response.json(), ERROR_RESPONSE) == []


async def test_contract_data_field_body_matches_v2_specs(specs, sandbox, client):
    if "v2" not in specs or "data_fields" not in specs:
        pytest.skip("v2 specs not available")
    await client.create_data_field("BIRTHDAY", type="Date", default_value="2000-01-01")
    (rec,) = sandbox.requests_matching("POST", "/v2/data-fields")
    v2 = SchemaValidator(specs["v2"])
    assert v2.errors(rec.json, "#/components/schemas/ApiDataField") == []
    hub = specs["data_fields"]
    request_schema = hub["paths"]["/v2/data-fields"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert SchemaValidator(hub).errors(rec.json, request_schema) == []
    listing = hub["paths"]["/v2/data-fields"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert SchemaValidator(hub).errors(await client.list_data_fields(), listing) == []
