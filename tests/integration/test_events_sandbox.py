"""The Events API export subscriptions: the sandbox's contract (Dotdigital's ``events.json`` and the developer hub
pages "Export events" / "Retrieve events") through the real client over HTTP, the events the sandbox emits for
changes of its contacts (API writes and the ``preference_centre`` helper), checked against the spec's schemas and
read back as ``ContactChange``\\ s, and ``ctdd dotdigital setup``'s subscription."""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from ctdd.domain.dotdigital_changes import LISTS, PREFERENCES, PROFILE, UNSUBSCRIBE
from ctdd.domain.dotdigital_events import BACKSYNC_EVENT_TYPES, parse_events, subscription_name
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.errors import (
    DotdigitalError,
    DotdigitalInactiveSubscription,
    DotdigitalInvalidCheckpoint,
    DotdigitalSubscriptionNotFound,
)
from ctdd.dotdigital.event_subscriptions import (
    CREATE, EXISTS, REACTIVATE, UPDATE, ensure_event_subscription, plan_event_subscription,
)
from ctdd.testing.openapi import SchemaValidator

EMAIL = "jane@example.com"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def client(sandbox):
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url) as c:
        yield c


@pytest.fixture
def raw(sandbox):
    with httpx.Client(base_url=sandbox.base_url, auth=(sandbox.api_user, sandbox.password)) as c:
        yield c


@pytest.fixture(scope="module")
def events_spec() -> dict:
    candidates = []
    if os.environ.get("CTDD_SHARED_DIR"):
        candidates += [Path(os.environ["CTDD_SHARED_DIR"]) / "specs" / "dotdigital" / "events.json"]
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "specs" / "dotdigital" / "events.json")
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        pytest.skip("Dotdigital events.json not found (shared/specs/dotdigital or $CTDD_SHARED_DIR)")
    return json.loads(found.read_text("utf-8"))


def new_contact(raw, email: str = EMAIL, **body) -> None:
    resp = raw.patch(f"/contacts/v3/email/{email.replace('@', '%40')}", json=body or {"dataFields": {"FIRSTNAME": "Jane"}})
    assert resp.status_code in (200, 201), resp.text


async def subscribe(client, types=BACKSYNC_EVENT_TYPES, name="ctdd-sync-main"):
    return await client.create_event_subscription(name, list(types))


# -- subscriptions ----------------------------------------------------------------------------------

async def test_subscription_lifecycle_and_rules(client, raw, sandbox, events_spec):
    validator = SchemaValidator(events_spec)
    sub = await subscribe(client)
    assert sub.active and sub.name == "ctdd-sync-main" and set(sub.event_types) == set(BACKSYNC_EVENT_TYPES)
    assert validator.errors(sub.body, "#/components/schemas/subscription") == []
    assert [s.id for s in await client.list_event_subscriptions()] == [sub.id]
    listed = raw.get("/events/v3/export/subscriptions").json()
    assert validator.errors(listed, "#/components/schemas/inline_response_200_1") == []

    with pytest.raises(DotdigitalError) as taken:  # names are unique in the account
        await subscribe(client)
    assert (taken.value.status_code, taken.value.code) == (409, "events:nameAlreadyExists")
    too_long = raw.post("/events/v3/export/subscriptions", json={
        "name": "x" * 51, "status": "active", "subscribedEventTypes": [{"eventType": "contact.updated"}],
        "alertsConfiguration": {"alertChannels": "none"}})
    assert (too_long.status_code, too_long.json()["errorCode"]) == (400, "events:badJson")
    with pytest.raises(ValueError):  # the client checks the name locally too
        await client.create_event_subscription("x" * 51, ["contact.updated"])
    unknown = raw.post("/events/v3/export/subscriptions", json={
        "name": "other", "status": "active", "subscribedEventTypes": [{"eventType": "example.unknownType"}],
        "alertsConfiguration": {"alertChannels": "none"}})
    assert (unknown.status_code, unknown.json()["errorCode"]) == (400, "events:invalidEventType")
    no_email = raw.post("/events/v3/export/subscriptions", json={
        "name": "other", "status": "active", "subscribedEventTypes": [{"eventType": "contact.updated"}],
        "alertsConfiguration": {"alertChannels": "email"}})
    assert no_email.status_code == 400

    updated = await client.update_event_subscription(sub.id, "renamed", ["contact.updated"], status="inactive")
    assert (updated.name, updated.status, updated.event_types) == ("renamed", "inactive", ("contact.updated",))
    assert (await client.get_event_subscription(sub.id)).name == "renamed"
    for index in range(4):
        await subscribe(client, name=f"extra-{index}")
    with pytest.raises(DotdigitalError) as full:  # at most 5 per account (developer hub)
        await subscribe(client, name="sixth")
    assert full.value.status_code == 400
    await client.delete_event_subscription(sub.id)
    with pytest.raises(DotdigitalSubscriptionNotFound):
        await client.get_event_subscription(sub.id)
    with pytest.raises(DotdigitalSubscriptionNotFound):
        await client.read_events(sub.id)


# -- reading ------------------------------------------------------------------------------------------

async def test_events_come_in_order_and_a_checkpoint_acknowledges_them(client, raw, sandbox, events_spec):
    validator = SchemaValidator(events_spec)
    sub = await subscribe(client)
    new_contact(raw)
    for first_name in ("A", "B", "C"):
        sandbox.preference_centre(email=EMAIL, data_fields={"FIRSTNAME": first_name})

    first = await client.read_events(sub.id, limit=2)
    names = [e["data"]["dataFields"]["FIRSTNAME"] for e in first.events]
    assert names == ["Jane", "A"]
    assert validator.errors({"checkPoint": first.checkpoint, "events": first.events},
                            "#/components/schemas/inline_response_200") == []
    again = await client.read_events(sub.id, limit=2)  # not acknowledged yet: the same events come again
    assert [e["id"] for e in again.events] == [e["id"] for e in first.events]

    second = await client.read_events(sub.id, checkpoint=first.checkpoint, limit=2)
    assert [e["data"]["dataFields"]["FIRSTNAME"] for e in second.events] == ["B", "C"]
    replay = await client.read_events(sub.id, checkpoint=first.checkpoint, limit=2)  # crash before storing
    assert [e["id"] for e in replay.events] == [e["id"] for e in second.events]
    done = await client.read_events(sub.id, checkpoint=second.checkpoint)
    assert done.events == [] and done.checkpoint == second.checkpoint
    assert sandbox.queued_events(sub.id) == 0
    # without a checkpoint: the earliest events still queued (none: all were acknowledged)
    assert (await client.read_events(sub.id)).events == []


async def test_limits_and_errors_of_a_read(client, raw, sandbox):
    sub = await subscribe(client, ["contact.updated"])
    other = await subscribe(client, ["contact.updated"], name="other")
    new_contact(raw)
    for index in range(2004):
        sandbox.preference_centre(email=EMAIL, data_fields={"FIRSTNAME": f"n{index}"})
    page = await client.read_events(sub.id)
    assert len(page.events) == 2000  # the default limit
    assert len((await client.read_events(sub.id, checkpoint=page.checkpoint, limit=5000)).events) == 5
    for bad in ("0", "5001", "x"):
        resp = raw.get(f"/events/v3/export/{sub.id}", params={"limit": bad})
        assert resp.status_code == 400, bad
    with pytest.raises(ValueError):
        await client.read_events(sub.id, limit=5001)
    with pytest.raises(DotdigitalInvalidCheckpoint) as invalid:
        await client.read_events(sub.id, checkpoint="XXXXYYYYY")
    assert (invalid.value.status_code, invalid.value.code) == (400, "events:invalidCheckpoint")
    with pytest.raises(DotdigitalInvalidCheckpoint):  # a checkpoint of another subscription
        await client.read_events(other.id, checkpoint=page.checkpoint)
    with pytest.raises(DotdigitalSubscriptionNotFound) as missing:
        await client.read_events(999)
    assert (missing.value.status_code, missing.value.code) == (404, "events:subscriptionNotFound")
    assert len(sandbox.requests_matching("GET", f"/events/v3/export/{sub.id}")) == 6  # every read is counted


async def test_a_subscription_not_read_for_30_days_goes_inactive(client, raw, sandbox):
    clock = Clock()
    sandbox.clock = clock
    sub = await subscribe(client)
    new_contact(raw)
    clock.now += timedelta(days=29, hours=23)
    page = await client.read_events(sub.id)  # read in time: stays active
    assert len(page.events) == 1
    clock.now += timedelta(days=30)
    sandbox.preference_centre(email=EMAIL, preferences={7: True})  # not captured: the subscription is inactive now
    with pytest.raises(DotdigitalInactiveSubscription) as inactive:
        await client.read_events(sub.id, checkpoint=page.checkpoint)
    assert (inactive.value.status_code, inactive.value.code) == (409, "events:inactiveSubscription")
    assert (await client.get_event_subscription(sub.id)).status == "inactive"

    plan = await ensure_event_subscription(client, "main")  # setup makes it active again
    assert plan.action == REACTIVATE and plan.subscription.active
    with pytest.raises(DotdigitalInvalidCheckpoint) as out_of_range:  # the old checkpoint died with it
        await client.read_events(sub.id, checkpoint=page.checkpoint)
    assert out_of_range.value.code == "events:checkpointOutOfRange"
    assert (await client.read_events(sub.id)).events == []  # what happened while inactive is lost
    sandbox.preference_centre(email=EMAIL, preferences={7: False})
    assert [e["type"] for e in (await client.read_events(sub.id)).events] == ["contact.preferenceUpdated"]


async def test_filters_capture_only_matching_events(client, raw, sandbox):
    sub = await client.create_event_subscription("sms only", [
        {"eventType": "interaction.unsubscribe", "filters": [{"field": "$.channel", "matchPattern": "SM?",
                                                              "caseSensitive": False}]}])
    new_contact(raw)
    new_contact(raw, "sms@example.com")
    raw.patch("/contacts/v3/mobileNumber/447700900123", json={"channelProperties": {"sms": {"status": "subscribed"}}})
    sandbox.preference_centre(email=EMAIL, unsubscribe=True)
    sandbox.preference_centre(mobile="+447700900123", unsubscribe=True)
    events = (await client.read_events(sub.id)).events
    assert [(e["type"], e["data"]["channel"]) for e in events] == [("interaction.unsubscribe", "sms")]


# -- what the sandbox emits -----------------------------------------------------------------------------

async def test_preference_centre_emits_events_the_back_sync_reads(client, raw, sandbox, events_spec):
    validator = SchemaValidator(events_spec)
    sub = await subscribe(client)
    new_contact(raw, lists=[2], preferences=[{"id": 5, "isOptedIn": True}])
    contact_id = sandbox.get_contact(email=EMAIL)["contactId"]
    start = len(sandbox.emitted_events)

    model = sandbox.preference_centre(email=EMAIL, preferences={5: False, 6: True}, lists={2: False, 3: True},
                                      data_fields={"LASTNAME": "Doe"}, unsubscribe=True)
    assert model["channelProperties"]["email"]["status"] == "unsubscribed"
    assert [lst["id"] for lst in model["lists"]] == [3] and model["preferences"] == [{"id": 6, "isOptedIn": True}]
    emitted = sandbox.emitted_events[start:]
    assert [e["type"] for e in emitted] == ["contact.updated", "contact.membershipUpdated",
                                            "contact.membershipUpdated", "contact.preferenceUpdated",
                                            "interaction.unsubscribe"]
    for event in emitted:
        assert validator.errors(event, "#/components/schemas/event") == []
        assert event["data"]["contactId"] == contact_id and event["data"]["eventId"] == event["id"]
        assert event["data"]["identifiers"] == {"email": EMAIL}
    assert sandbox.get_contact(email=EMAIL)["channelProperties"]["email"]["status"] == "unsubscribed"
    # the suppression feeds report the unsubscribe too
    assert [r["suppressedContact"]["email"] for r in raw.get("/v2/contacts/unsubscribed-since/2000-01-01").json()] == [EMAIL]

    page = await client.read_events(sub.id, limit=5000)
    parsed = parse_events("main", page.events)
    assert parsed.skipped == {}
    by_kind = [(c.kind, dict(c.preferences) or dict(c.lists) or dict(c.data_fields) or c.channel)
               for c in parsed.changes]
    assert by_kind[:2] == [(LISTS, {2: True}), (PREFERENCES, {5: True})]  # the API upsert
    assert by_kind[-6:] == [(PROFILE, {"LASTNAME": "Doe"}), (UNSUBSCRIBE, "email"), (LISTS, {3: True}),
                            (LISTS, {2: False}), (PREFERENCES, {5: False, 6: True}), (UNSUBSCRIBE, "email")]
    assert all(c.dotdigital_contact_id == contact_id and c.email == EMAIL for c in parsed.changes)
    assert len({c.event_id for c in parsed.changes}) == len(parsed.changes)


async def test_api_changes_emit_events_too(client, raw, sandbox):
    sub = await subscribe(client, ["contact.created", "contact.membershipUpdated", "contact.removed",
                                   "contact.updated"])
    new_contact(raw, lists=[1], dataFields={"FIRSTNAME": "Jane"})
    contact_id = sandbox.get_contact(email=EMAIL)["contactId"]
    assert raw.delete(f"/v2/address-books/1/contacts/{contact_id}").status_code == 204
    sandbox.suppress(email=EMAIL, reason="hardBounced")
    assert raw.delete(f"/contacts/v3/contactId/{contact_id}").status_code == 200
    events = (await client.read_events(sub.id)).events
    assert [(e["type"], e["data"].get("status") or e["data"].get("channelProperties")) for e in events] == [
        ("contact.created", None), ("contact.updated", None), ("contact.membershipUpdated", "added"),
        ("contact.membershipUpdated", "removed"), ("contact.updated", {"email": {"status": "hardBounced"}}),
        ("contact.removed", None)]
    assert [c.kind for c in parse_events("main", events).changes] == [PROFILE, LISTS, LISTS, UNSUBSCRIBE]


def test_preference_centre_refuses_what_does_not_exist(sandbox, raw):
    with pytest.raises(ValueError):
        sandbox.preference_centre(email="nobody@example.com", preferences={1: True})
    new_contact(raw)
    with pytest.raises(ValueError):
        sandbox.preference_centre(email=EMAIL, lists={99: True})
    with pytest.raises(ValueError):
        sandbox.preference_centre(email=EMAIL, data_fields={"NO_SUCH_FIELD": "x"})
    with pytest.raises(ValueError):
        sandbox.preference_centre(email=EMAIL, data_fields={"DOB": "not a date"})
    assert sandbox.emitted_events[-1]["type"] == "contact.updated"  # nothing emitted by the refused calls


# -- setup --------------------------------------------------------------------------------------------

async def test_setup_keeps_one_subscription_per_account(client, sandbox):
    assert (await plan_event_subscription(client, "main")).action == CREATE
    created = await ensure_event_subscription(client, "main")
    assert created.subscription.name == subscription_name("main") == "ctdd-sync-main"
    assert (await ensure_event_subscription(client, "main")).action == EXISTS  # a second run creates nothing
    await client.update_event_subscription(created.subscription.id, "ctdd-sync-main", ["contact.updated"])
    completed = await ensure_event_subscription(client, "main")
    assert completed.action == UPDATE and set(completed.subscription.event_types) == set(BACKSYNC_EVENT_TYPES)
    assert len(sandbox.event_subscriptions) == 1


async def test_dotdigital_setup_creates_the_subscription(sandbox, tmp_path):
    from ctdd.dotdigital.accounts import DotdigitalClients
    from ctdd.dotdigital.provisioning import run_setup
    from ctdd.testing.commercetools_fake import FakeCommercetools
    from support import make_settings

    with FakeCommercetools(project_key="shop-eu") as fake:
        settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", sandbox, commercetools=fake)
        clients = DotdigitalClients(settings.accounts)
        try:
            out = io.StringIO()
            await run_setup(settings, clients, out=out)
            assert [s["name"] for s in sandbox.event_subscriptions] == ["ctdd-sync-main"]
            assert "ctdd-sync-main" in out.getvalue()
            again = io.StringIO()
            result = await run_setup(settings, clients, out=again)
            assert [i.action for i in result.items if i.kind == "events"] == ["exists"]
        finally:
            await clients.aclose()
