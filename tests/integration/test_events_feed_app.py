"""The events feed wired into the running service (``ctdd.runtime.app``) with the real write-back: a change a
contact makes in the sandbox's preference centre reaches the fake commercetools API within seconds, and the
events of ctdd-sync's own writes to Dotdigital write nothing back. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from support import ct_payloads as ct
from support import all_settled, make_settings, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.backsync.feeds import iso
from ctdd.config import BacksyncConfig, replace
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.event_subscriptions import ensure_event_subscription
from ctdd.testing.commercetools_fake import FakeCommercetools

TYPE_ID = "type-dd-consent"
OFFERS = 7
STORE = {"uk": {
    "email_list": "newsletter", "sms_list": "sms", "customers_list": "customers",
    "preferences": {"offers": OFFERS},
    "writeback": {"preferences": {"offers": "dd-prefOffers"}, "profile": {"FIRSTNAME": "firstName"}},
}}


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        fake.add("types", {"id": TYPE_ID, "key": "dd-consent", "resourceTypeIds": ["customer"], "fieldDefinitions": [
            {"name": "dd-emailOptIn", "type": {"name": "Boolean"}},
            {"name": "dd-consentUpdatedAt", "type": {"name": "DateTime"}},
            {"name": "dd-prefOffers", "type": {"name": "Boolean"}},
        ]})
        yield fake


async def start(service_factory, database_url, sandbox, fake_ct):
    """The service with the events feed on, its subscription set up, and customer c-1 signed up through it."""
    settings = make_settings(database_url, sandbox, commercetools=fake_ct, stores_extra=STORE)
    settings = replace(settings, backsync=BacksyncConfig(enabled=True, interval_seconds=3600,
                                                         events_interval_seconds=0.2))
    clients = DotdigitalClients(settings.accounts)
    try:
        await ensure_event_subscription(clients.get("main"), "main")  # what `ctdd dotdigital setup` does
    finally:
        await clients.aclose()
    svc = await service_factory(settings)
    assert svc.app.events_feed is not None

    custom = {"dd-emailOptIn": True, "dd-prefOffers": False,
              "dd-consentUpdatedAt": iso(datetime.now(timezone.utc) - timedelta(days=2))}
    body = fake_ct.add("customers", ct.customer("c-1", "jane@example.com", custom={
        "type": {"typeId": "type", "id": TYPE_ID}, "fields": custom}))
    resp = await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw(
        ct.message("customer", "c-1", "CustomerCreated", version=body["version"], customer=body))))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED
    await wait_for(lambda: all_settled(svc), what="sign-up delivered")
    # ctdd-sync's own upsert came back as events: read and applied, nothing written to commercetools
    await wait_for(lambda: sandbox.queued_events(sandbox.event_subscriptions[0]["id"]) == 0, what="events read")
    await wait_for(lambda: svc.app.events_feed.covers("main"), what="feed reading")
    assert fake_ct.get("customers", "c-1")["version"] == body["version"]
    return svc


async def test_preference_centre_changes_reach_commercetools_in_seconds(service_factory, database_url, sandbox,
                                                                        fake_ct):
    await start(service_factory, database_url, sandbox, fake_ct)
    for change, done in (
        ({"data_fields": {"FIRSTNAME": "Janet"}}, lambda c: c.get("firstName") == "Janet"),
        ({"preferences": {OFFERS: True}}, lambda c: c["custom"]["fields"].get("dd-prefOffers") is True),
    ):
        changed = time.monotonic()
        sandbox.preference_centre(email="jane@example.com", **change)
        await wait_for(lambda: done(fake_ct.get("customers", "c-1")), what=f"{change} in commercetools", timeout=20)
        assert time.monotonic() - changed < 10  # seconds, not the 15 minutes of polling


async def test_one_submission_with_a_name_and_a_preference(service_factory, database_url, sandbox, fake_ct):
    await start(service_factory, database_url, sandbox, fake_ct)
    sandbox.preference_centre(email="jane@example.com", data_fields={"FIRSTNAME": "Janet"},
                              preferences={OFFERS: True})

    def written() -> bool:
        customer = fake_ct.get("customers", "c-1")
        return customer.get("firstName") == "Janet" and customer["custom"]["fields"].get("dd-prefOffers") is True

    await wait_for(written, what="both changes in commercetools", timeout=10)
