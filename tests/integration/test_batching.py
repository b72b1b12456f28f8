"""Adaptive batching: under backlog the dispatcher sends bulk imports to the real sandbox and settles each
message from the per-record report; at low load it sends single calls. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from support import contact_request, make_settings, outbox_rows, wait_for
from ctdd.delivery import outbox
from ctdd.delivery.bulk import ImportTimings
from ctdd.delivery.dispatcher import Dispatcher

BULK = dict(bulk_backlog_threshold=10, bulk_min_batch=5, bulk_poll_min_seconds=0.02, bulk_poll_max_seconds=0.5)


def _settled(svc) -> bool:
    return all(r["status"] in ("delivered", "dead", "merged") for r in outbox_rows(svc)) and not any(
        r["status"] == "merged" and _status(svc, r["merged_into"]) not in ("delivered", "dead")
        for r in outbox_rows(svc))


def _status(svc, mid) -> str:
    return svc.rows("SELECT status FROM outbox_message WHERE id = :i", i=mid)[0]["status"]


async def _start_dispatcher(svc, settings) -> Dispatcher:
    dispatcher = Dispatcher(svc.engine, settings, svc.app.clients, svc.app.hooks)
    dispatcher.start()
    return dispatcher


async def test_backlog_goes_out_as_one_import_and_each_record_settles_alone(service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox, **BULK)
    svc = await service_factory(settings)
    sandbox.import_delay_seconds = 0.1

    # Low load: a single PATCH (latency first), and the contactId is stored.
    gone = await svc.stub.SyncContact(contact_request(customer_id="c-gone", email="gone@example.com", first_name="G"))
    await wait_for(lambda: _settled(svc), what="single delivery")
    assert [r.method for r in sandbox.requests if "/contacts/v3/" in r.path] == ["PATCH"]
    sandbox.delete_contact(email="gone@example.com")  # its stored contactId no longer exists

    # Build a backlog while nothing delivers.
    await svc.app.dispatcher.stop(drain_seconds=1)
    sandbox.reset_requests()
    for i in range(40):
        await svc.stub.SyncContact(contact_request(email=f"bulk{i}@example.com", first_name=f"B{i}"))
    multi = [await svc.stub.SyncContact(contact_request(email="multi@example.com", first_name=name, last_name=last))
             for name, last in (("One", "A"), ("Two", "A"), ("Three", "Z"))]
    bad = contact_request(email="bad@example.com", first_name="Bad")
    bad.profile.custom_fields.update({"loyaltyTier": "gold"})  # LOYALTY_TIER does not exist in the account
    bad = await svc.stub.SyncContact(bad)
    await svc.stub.SyncContact(contact_request(customer_id="c-gone", last_name="Again"))

    dispatcher = await _start_dispatcher(svc, settings)
    try:
        await wait_for(lambda: _settled(svc), timeout=20, what="bulk delivery")
    finally:
        await dispatcher.stop(drain_seconds=1)

    imports = [r for r in sandbox.requests if r.method == "PUT" and r.path == "/contacts/v3/import"]
    assert len(imports) == 1 and imports[0].status == 202
    assert len(imports[0].json["contacts"]) == 43  # 40 + multi + bad + gone: one head per contact
    polls = [r for r in sandbox.requests if r.method == "GET" and r.path.startswith("/contacts/v3/import/")]
    assert 1 <= len(polls) <= 4

    rows = {r["id"]: r for r in outbox_rows(svc)}
    # Coalesced: the three pending updates of one contact went out as one item, later values winning.
    first, second, third = (m.outbox_message_ids[0] for m in multi)
    assert rows[second]["merged_into"] == first and rows[third]["merged_into"] == first
    assert {rows[i]["status"] for i in (first, second, third)} == {"delivered"}
    item = next(c for c in imports[0].json["contacts"] if c["identifiers"].get("email") == "multi@example.com")
    assert item["dataFields"]["FIRSTNAME"] == "Three" and item["dataFields"]["LASTNAME"] == "Z"
    assert sandbox.get_contact(email="multi@example.com")["dataFields"]["FIRSTNAME"] == "Three"

    # A rejected record dead-letters only its own message, with the import's failure code.
    dead = rows[bad.outbox_message_ids[0]]
    assert dead["status"] == "dead" and "InvalidContact" in dead["last_error"]
    assert sum(r["status"] == "dead" for r in rows.values()) == 1

    # contactIds were harvested from the report, as after a PATCH.
    stored = {r["email"]: r["dotdigital_contact_id"] for r in svc.rows("SELECT email, dotdigital_contact_id FROM contact")}
    for i in (0, 17, 39):
        assert stored[f"bulk{i}@example.com"] == sandbox.get_contact(email=f"bulk{i}@example.com")["contactId"]

    # The contact deleted in Dotdigital failed in the import (contactNotFound) and was sent on its own,
    # which re-creates it by address with everything sent before, not only the message's LASTNAME.
    patches = [r for r in sandbox.requests if r.method == "PATCH"]
    assert [(p.path, p.status) for p in patches] == [("/contacts/v3/contactId/1", 404),
                                                     ("/contacts/v3/email/gone%40example.com", 201)]
    recreated = sandbox.get_contact(email="gone@example.com")
    assert recreated["dataFields"]["LASTNAME"] == "Again"
    assert (recreated["dataFields"]["FIRSTNAME"], recreated["dataFields"]["CUSTOMER_ID"]) == ("G", "c-gone")
    assert (recreated["dataFields"]["STORE"], recreated["dataFields"]["LOCALE"]) == ("uk", "en-GB")
    assert stored["gone@example.com"] == recreated["contactId"]
    assert gone.changed


async def test_import_that_cannot_start_is_retried_and_throttle_of_imports_does_not_pause_the_account(
    service_factory, database_url, sandbox
):
    settings = make_settings(database_url, sandbox, **BULK)
    svc = await service_factory(settings, run_dispatcher=False)
    for i in range(12):
        await svc.stub.SyncContact(contact_request(email=f"r{i}@example.com", first_name=f"R{i}"))
    sandbox.inject_fault(status=503, times=1, method="PUT", path_contains="/contacts/v3/import")
    sandbox.inject_fault(status=429, times=1, method="PUT", path_contains="/contacts/v3/import",
                         body={"errorCode": "contacts:tooManyActiveImports", "description": "too many"},
                         headers={"Retry-After": "0"})
    dispatcher = await _start_dispatcher(svc, settings)
    try:
        await wait_for(lambda: _settled(svc), timeout=20, what="delivery after failed import starts")
    finally:
        await dispatcher.stop(drain_seconds=1)
    imports = [r.status for r in sandbox.requests if r.method == "PUT" and r.path == "/contacts/v3/import"]
    assert imports[:2] == [503, 429] and imports[-1] == 202
    assert all(r["status"] == "delivered" for r in outbox_rows(svc))
    assert dispatcher.budget.paused_for("main") == 0
    assert len(sandbox.contacts) == 12


def test_merge_contact_bodies_keeps_per_field_order():
    a = {"identifiers": {"email": "a@x.com"}, "dataFields": {"A": 1, "B": 1}, "lists": [2],
         "channelProperties": {"email": {"status": "subscribed", "optInType": "single"}},
         "preferences": [{"id": 1, "isOptedIn": True}], "consentRecords": [{"text": "1"}]}
    b = {"dataFields": {"B": 2, "C": None}, "lists": [1],
         "channelProperties": {"email": {"status": "unsubscribed"}},
         "preferences": [{"id": 1, "isOptedIn": False}, {"id": 2, "isOptedIn": True}],
         "consentRecords": [{"text": "2"}]}
    assert outbox.merge_contact_bodies(a, b) == {
        "identifiers": {"email": "a@x.com"}, "dataFields": {"A": 1, "B": 2, "C": None}, "lists": [1, 2],
        "channelProperties": {"email": {"status": "unsubscribed", "optInType": "single"}},
        "preferences": [{"id": 1, "isOptedIn": False}, {"id": 2, "isOptedIn": True}],
        "consentRecords": [{"text": "1"}, {"text": "2"}],
    }
    many = {"consentRecords": [{"text": str(i)} for i in range(4)]}
    assert outbox.merge_contact_bodies(many, {"consentRecords": [{"text": "x"}, {"text": "y"}]}) is None


def test_import_timings_learn_when_to_poll():
    t = ImportTimings(min_poll=0.1, max_poll=10)
    assert t.first_poll("k") == 0.2
    t.finished("k", 3.0, polls=4)  # needed several polls: next time poll first after ~3 s
    assert t.first_poll("k") == 3.0
    t.finished("k", 3.0, polls=1)  # done at the first poll: try a bit earlier next time
    assert t.first_poll("k") == pytest.approx(2.55)
    assert asyncio.iscoroutinefunction(Dispatcher.deliver_bulk)


async def test_a_backlog_of_insight_records_goes_out_as_an_insight_import(service_factory, database_url, sandbox):
    """TrackEvent's records of known contacts (``insight.upsert``) travel in one ``PUT /insightData/v3/import``
    under backlog, and every record lands with its contact."""
    from ctdd.sync.v1 import sync_service_pb2 as pb

    settings = make_settings(database_url, sandbox, **BULK)
    svc = await service_factory(settings)
    for i in range(12):
        await svc.stub.SyncContact(contact_request(email=f"ins{i}@example.com", first_name=f"I{i}"))
    await wait_for(lambda: _settled(svc), what="contacts created")
    await svc.app.dispatcher.stop(drain_seconds=1)
    sandbox.reset_requests()
    sandbox.import_delay_seconds = 0.1
    for i in range(12):
        event = pb.BehaviouralEvent(event_id=f"ev-{i}", identity=pb.ContactIdentity(email=f"ins{i}@example.com"),
                                    product_viewed=pb.ProductViewed(product_id=f"prod-{i}", sku=f"SKU-{i}"))
        event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
        await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event))
    kinds = {r["kind"] for r in outbox_rows(svc) if r["status"] == "pending"}
    assert kinds == {"insight.upsert"}

    dispatcher = await _start_dispatcher(svc, settings)
    try:
        await wait_for(lambda: _settled(svc), timeout=20, what="insight import")
    finally:
        await dispatcher.stop(drain_seconds=1)
    imports = [r for r in sandbox.requests if r.method == "PUT" and r.path == "/insightData/v3/import"]
    assert len(imports) == 1 and len(imports[0].json["records"]) == 12
    assert not [r for r in sandbox.requests if r.method == "PUT" and "/insightData/v3/contacts/" in r.path]
    assert all(r["status"] == "delivered" for r in outbox_rows(svc))
    for i in (0, 11):
        records = sandbox.insight_records(imports[0].json["collectionName"], contact_email=f"ins{i}@example.com")
        assert f"prod-{i}" in records
