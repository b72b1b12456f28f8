"""Write-back end to end: preference, list and profile changes a contact made in Dotdigital reach the fake
commercetools API over HTTP (customer fields, guest CustomObjects); commercetools' notification of the write
comes back through TrackEvent over real gRPC and sends nothing to the Dotdigital sandbox. Every test runs on
SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
import tomllib

from support import ct_payloads as ct
from support import all_settled, contact_request, make_settings, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.backsync.feeds import iso
from ctdd.backsync.writeback import WritebackRetryable, apply_changes
from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.config import BacksyncConfig, ConfigError, replace, settings_from_mapping
from ctdd.domain.dotdigital_changes import LISTS, PREFERENCES, PROFILE, UNSUBSCRIBE, ContactChange
from ctdd.domain.writeback_rules import (NEWER, UNCHANGED, WRITE, decide, flag_value, profile_value,
                                         shop_modified_at)
from ctdd.testing.commercetools_fake import FakeCommercetools

TYPE_ID = "type-dd-consent"
OFFERS, VIP = 7, 4
STORE = {"uk": {
    "lists": {"customers": 1, "newsletter": 2, "sms": 3, "vip": VIP},
    "email_list": "newsletter", "sms_list": "sms", "customers_list": "customers",
    "preferences": {"offers": OFFERS, "events": 8},
    "writeback": {"preferences": {"offers": "dd-prefOffers"}, "lists": {"vip": "dd-listVip"},
                  "profile": {"FIRSTNAME": "firstName", "LASTNAME": "lastName"}},
}}


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        fake.add("types", {"id": TYPE_ID, "key": "dd-consent", "resourceTypeIds": ["customer"], "fieldDefinitions": [
            {"name": "dd-emailOptIn", "type": {"name": "Boolean"}},
            {"name": "dd-smsOptIn", "type": {"name": "Boolean"}},
            {"name": "dd-consentUpdatedAt", "type": {"name": "DateTime"}},
            {"name": "dd-prefOffers", "type": {"name": "Boolean"}},
            {"name": "dd-listVip", "type": {"name": "Enum", "values": [{"key": "optedIn", "label": "in"},
                                                                         {"key": "optedOut", "label": "out"}]}},
        ]})
        yield fake


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    settings = make_settings(database_url, sandbox, commercetools=fake_ct, stores_extra=STORE)
    return await service_factory(replace(settings, backsync=BacksyncConfig(enabled=False)))


@pytest.fixture
async def ct_clients(svc):
    clients = CommercetoolsClients(svc.app.settings)
    yield clients
    await clients.aclose()


async def apply(svc, ct_clients, *changes):
    return await apply_changes(svc.engine, svc.app.settings, ct_clients, list(changes))


def change(kind: str, *, at: datetime | None = None, event: str = "ev", **fields) -> ContactChange:
    return ContactChange(event_id=event, account="main", kind=kind,
                         occurred_at=at or datetime.now(timezone.utc), **fields)


def track(payload: dict) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw(payload))


async def sign_up(svc, fake_ct, cid: str, email: str, **fields) -> int:
    """The customer exists in commercetools and reached Dotdigital through TrackEvent; its Dotdigital id."""
    custom = {"dd-emailOptIn": True, "dd-consentUpdatedAt": iso(datetime.now(timezone.utc) - timedelta(days=2)),
              **fields}
    body = fake_ct.add("customers", ct.customer(cid, email, custom={"type": {"typeId": "type", "id": TYPE_ID},
                                                                      "fields": custom}))
    resp = await svc.stub.TrackEvent(track(ct.message("customer", cid, "CustomerCreated", version=body["version"],
                                                      customer=body)))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED
    await wait_for(lambda: all_settled(svc), what="sign-up delivered")
    [row] = svc.rows("SELECT dotdigital_contact_id FROM contact WHERE email = :email", email=email)
    assert row["dotdigital_contact_id"] is not None
    return row["dotdigital_contact_id"]


async def guest(svc, email: str) -> None:
    req = contact_request(email=email, first_name="Gus")  # a newsletter-only sign-up
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    req.consent.email.decided_at.FromDatetime(datetime.now(timezone.utc) - timedelta(days=1))
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="guest sign-up")


async def echo(svc, sandbox, fake_ct, cid: str, message_type: str, **fields) -> None:
    """commercetools notifies the write: TrackEvent applies it, and nothing goes to Dotdigital."""
    mark = len(sandbox.requests)
    version = fake_ct.get("customers", cid)["version"]
    resp = await svc.stub.TrackEvent(track(ct.message("customer", cid, message_type, version=version, **fields)))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED
    assert not resp.outbox_message_ids
    await wait_for(lambda: all_settled(svc), what="nothing pending")
    assert dd_writes(sandbox, mark) == []


def dd_writes(sandbox, after: int = 0):
    return [r for r in sandbox.requests[after:] if r.method in ("PATCH", "DELETE", "PUT", "POST") and "/contacts" in r.path]


def ct_writes(fake_ct):
    return [r for r in fake_ct.requests if r.method == "POST" and ("/customers/" in r.path or "/custom-objects" in r.path)]


def fields_of(fake_ct, cid: str) -> dict:
    return fake_ct.get("customers", cid)["custom"]["fields"]


def guest_object(fake_ct, email: str) -> dict:
    key = hashlib.sha256(email.encode()).hexdigest()
    [obj] = [o for o in fake_ct.all("custom-objects") if o["container"] == "dd-consent" and o["key"] == key]
    return obj


async def test_a_preference_opt_out_reaches_the_customer_once_and_is_not_echoed(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-1", "jane@example.com", **{"dd-prefOffers": True})
    opt_out = change(PREFERENCES, dotdigital_contact_id=dd_id, preferences={OFFERS: False, 8: True, 99: True})
    report = await apply(svc, ct_clients, opt_out)
    assert (report.customers_written, report.fields_written, report.not_mapped) == (1, 1, 2)  # 8 and 99: not mapped
    assert fields_of(fake_ct, "cust-1")["dd-prefOffers"] is False
    assert fields_of(fake_ct, "cust-1")["dd-emailOptIn"] is True
    [state] = svc.rows("SELECT value FROM field_state WHERE field = :f", f=f"preferences.{OFFERS}")
    assert state["value"] in (False, "false")

    await echo(svc, sandbox, fake_ct, "cust-1", "CustomerCustomFieldChanged", name="dd-prefOffers", value=False,
               previousValue=True)
    writes = len(ct_writes(fake_ct))
    again = await apply(svc, ct_clients, opt_out)  # the reader re-reads after a crash
    assert (again.customers_written, again.fields_written, again.unchanged) == (0, 0, 1)
    assert len(ct_writes(fake_ct)) == writes == 1


async def test_a_guest_preference_and_list_change_land_in_the_guest_object(svc, ct_clients, sandbox, fake_ct):
    await guest(svc, "guest@example.com")
    report = await apply(svc, ct_clients, change(PREFERENCES, email="Guest@Example.com", preferences={OFFERS: True}),
                         change(LISTS, email="guest@example.com", lists={VIP: True}),
                         change(PROFILE, email="guest@example.com", data_fields={"FIRSTNAME": "Gustav"}))
    assert (report.guests_written, report.fields_written, report.no_target) == (2, 2, 1)  # no profile for a guest
    obj = guest_object(fake_ct, "guest@example.com")
    assert obj["value"] == {"email": "guest@example.com", "source": "dotdigital", "dd-prefOffers": True,
                            "dd-listVip": True}
    again = await apply(svc, ct_clients, change(LISTS, email="guest@example.com", lists={VIP: True}))
    assert (again.guests_written, again.unchanged) == (0, 1)
    assert guest_object(fake_ct, "guest@example.com")["version"] == obj["version"]
    left = await apply(svc, ct_clients, change(LISTS, email="guest@example.com", lists={VIP: False}))
    assert left.guests_written == 1 and guest_object(fake_ct, "guest@example.com")["value"]["dd-listVip"] is False


async def test_a_list_unsubscribe_and_a_join_reach_the_customer(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-2", "lee@example.com")
    t0 = datetime.now(timezone.utc) - timedelta(minutes=5)
    joined = await apply(svc, ct_clients, change(LISTS, at=t0, dotdigital_contact_id=dd_id, lists={VIP: True}))
    assert joined.fields_written == 1
    assert fields_of(fake_ct, "cust-2")["dd-listVip"] == "optedIn"  # an Enum field: text, from its Type
    left = await apply(svc, ct_clients, change(LISTS, at=t0 + timedelta(minutes=1), dotdigital_contact_id=dd_id,
                                               lists={VIP: False}))
    assert left.fields_written == 1 and fields_of(fake_ct, "cust-2")["dd-listVip"] == "optedOut"
    await echo(svc, sandbox, fake_ct, "cust-2", "CustomerCustomFieldChanged", name="dd-listVip", value="optedOut")
    # the join read again after the unsubscribe (a crash before the checkpoint): the later change stands
    replay = await apply(svc, ct_clients, change(LISTS, at=t0, dotdigital_contact_id=dd_id, lists={VIP: True}))
    assert (replay.fields_written, replay.skipped_newer) == (0, 1)
    assert fields_of(fake_ct, "cust-2")["dd-listVip"] == "optedOut"


async def test_a_name_edit_reaches_the_customer_and_does_not_come_back(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-3", "jo@example.com")
    assert sandbox.get_contact(email="jo@example.com")["dataFields"]["FIRSTNAME"] == "Jane"
    edit = change(PROFILE, dotdigital_contact_id=dd_id, data_fields={"FIRSTNAME": "Janet", "LASTNAME": "Doe"})
    report = await apply(svc, ct_clients, edit)
    assert (report.customers_written, report.fields_written, report.unchanged) == (1, 1, 1)
    customer = fake_ct.get("customers", "cust-3")
    assert (customer["firstName"], customer["lastName"]) == ("Janet", "Doe")
    [update] = [r for r in ct_writes(fake_ct)]
    assert update.json["actions"] == [{"action": "setFirstName", "firstName": "Janet"}]

    # commercetools notifies the write (CustomerFirstNameSet); TrackEvent re-reads the customer, maps FIRSTNAME
    # "Janet" - what Dotdigital already holds - and sends nothing
    await echo(svc, sandbox, fake_ct, "cust-3", "CustomerFirstNameSet", firstName="Janet")
    assert (await apply(svc, ct_clients, edit)).fields_written == 0
    # a later shop edit is news for Dotdigital again
    fake_ct.bump_version("customers", "cust-3", firstName="Jan")
    mark = len(sandbox.requests)
    resp = await svc.stub.TrackEvent(track(ct.message("customer", "cust-3", "CustomerFirstNameSet",
                                                      version=fake_ct.get("customers", "cust-3")["version"],
                                                      firstName="Jan")))
    assert resp.outbox_message_ids
    await wait_for(lambda: all_settled(svc), what="shop edit delivered")
    assert len(dd_writes(sandbox, mark)) == 1
    assert sandbox.get_contact(email="jo@example.com")["dataFields"]["FIRSTNAME"] == "Jan"


async def test_a_commercetools_change_made_meanwhile_is_not_overwritten(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-4", "ann@example.com")
    edited = datetime.now(timezone.utc) - timedelta(seconds=30)  # the preference centre, 30 s ago
    # meanwhile the shop renamed her; its notification has not reached ctdd-sync yet (newer lastModifiedAt)
    fake_ct.bump_version("customers", "cust-4", firstName="Anna")
    report = await apply(svc, ct_clients, change(PROFILE, at=edited, dotdigital_contact_id=dd_id,
                                                 data_fields={"FIRSTNAME": "Annie", "LASTNAME": "Smith"}))
    assert (report.skipped_newer, report.fields_written) == (1, 1)  # the last name was not touched in commercetools
    customer = fake_ct.get("customers", "cust-4")
    assert (customer["firstName"], customer["lastName"]) == ("Anna", "Smith")

    # a shop change ctdd-sync already received (TrackEvent: FIRSTNAME "Anna" at a later lastModifiedAt) wins too
    resp = await svc.stub.TrackEvent(track(ct.message("customer", "cust-4", "CustomerFirstNameSet",
                                                      version=customer["version"], firstName="Anna")))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED
    await wait_for(lambda: all_settled(svc), what="shop rename delivered")
    writes = len(ct_writes(fake_ct))
    late = await apply(svc, ct_clients, change(PROFILE, at=edited, dotdigital_contact_id=dd_id,
                                               data_fields={"FIRSTNAME": "Annie"}))
    assert (late.skipped_newer, late.fields_written) == (1, 0)
    assert len(ct_writes(fake_ct)) == writes and fake_ct.get("customers", "cust-4")["firstName"] == "Anna"
    assert sandbox.get_contact(email="ann@example.com")["dataFields"]["FIRSTNAME"] == "Anna"


async def test_one_submission_changing_a_name_and_a_preference_writes_both(svc, ct_clients, sandbox, fake_ct):
    """Writing the name moves the customer's lastModifiedAt past the submission's time: that is the back-sync's
    own write (commercetools answered it with that version), not a newer shop change."""
    dd_id = await sign_up(svc, fake_ct, "cust-9", "ida@example.com", **{"dd-prefOffers": True})
    at = datetime.now(timezone.utc) - timedelta(seconds=5)
    submission = [change(PROFILE, at=at, event="e1", dotdigital_contact_id=dd_id, data_fields={"FIRSTNAME": "Ida"}),
                  change(PREFERENCES, at=at, event="e2", dotdigital_contact_id=dd_id, preferences={OFFERS: False})]
    report = await apply(svc, ct_clients, *submission)
    assert (report.customers_written, report.fields_written, report.skipped_newer) == (2, 2, 0)
    customer = fake_ct.get("customers", "cust-9")
    assert (customer["firstName"], customer["custom"]["fields"]["dd-prefOffers"]) == ("Ida", False)
    [own] = svc.rows("SELECT version FROM writeback_write WHERE resource_id = 'cust-9'")
    assert own["version"] == customer["version"]
    # read again after a crash before the checkpoint (a new writer: what it knows of its writes is stored)
    again = await apply(svc, ct_clients, *submission)
    assert (again.fields_written, again.unchanged, again.skipped_newer) == (0, 2, 0)
    assert fake_ct.get("customers", "cust-9")["version"] == customer["version"]


async def test_one_submission_reaches_a_guest_object_the_shop_filled(svc, ct_clients, sandbox, fake_ct):
    await guest(svc, "gil@example.com")
    key = hashlib.sha256(b"gil@example.com").hexdigest()
    fake_ct.add("custom-objects", {"container": "dd-consent", "key": key, "lastModifiedAt": "2026-01-01T00:00:00.000Z",
                                   "value": {"email": "gil@example.com", "dd-listVip": True}})
    at = datetime.now(timezone.utc) - timedelta(seconds=5)
    report = await apply(svc, ct_clients, change(PREFERENCES, at=at, email="gil@example.com", preferences={OFFERS: True}),
                         change(LISTS, at=at, email="gil@example.com", lists={VIP: False}))
    assert (report.guests_written, report.fields_written, report.skipped_newer) == (2, 2, 0)
    assert guest_object(fake_ct, "gil@example.com")["value"]["dd-listVip"] is False


async def test_a_shop_change_between_two_changes_of_a_submission_still_wins(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-10", "bo@example.com")
    at = datetime.now(timezone.utc) - timedelta(seconds=5)
    named = await apply(svc, ct_clients, change(PROFILE, at=at, dotdigital_contact_id=dd_id,
                                                data_fields={"FIRSTNAME": "Bo"}))
    assert named.fields_written == 1
    # the customer unticks the offers in the shop after the submission; its notification is still on the way
    custom = fake_ct.get("customers", "cust-10")["custom"]
    fake_ct.bump_version("customers", "cust-10", custom={**custom, "fields": {**custom["fields"],
                                                                               "dd-prefOffers": False}})
    late = await apply(svc, ct_clients, change(PREFERENCES, at=at, dotdigital_contact_id=dd_id,
                                               preferences={OFFERS: True}))
    assert (late.skipped_newer, late.fields_written) == (1, 0)
    assert fields_of(fake_ct, "cust-10")["dd-prefOffers"] is False
    # a Dotdigital change made after the shop's is written
    newer = await apply(svc, ct_clients, change(PREFERENCES, dotdigital_contact_id=dd_id, preferences={OFFERS: True},
                                                at=datetime.now(timezone.utc) + timedelta(seconds=1)))
    assert newer.fields_written == 1 and fields_of(fake_ct, "cust-10")["dd-prefOffers"] is True


async def test_a_batch_applied_twice_writes_once(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-5", "max@example.com", **{"dd-prefOffers": True})
    at = datetime.now(timezone.utc)
    batch = [change(PREFERENCES, at=at, event="e1", dotdigital_contact_id=dd_id, preferences={OFFERS: False}),
             change(LISTS, at=at + timedelta(seconds=1), event="e2", dotdigital_contact_id=dd_id, lists={VIP: True}),
             change(PROFILE, at=at + timedelta(seconds=2), event="e3", dotdigital_contact_id=dd_id,
                    data_fields={"FIRSTNAME": "Maxine"})]
    first = await apply(svc, ct_clients, *batch)
    assert (first.customers_written, first.fields_written) == (3, 3)
    customer = fake_ct.get("customers", "cust-5")
    writes = len(ct_writes(fake_ct))
    second = await apply(svc, ct_clients, *batch)
    assert (second.customers_written, second.fields_written, second.unchanged) == (0, 0, 3)
    assert len(ct_writes(fake_ct)) == writes and fake_ct.get("customers", "cust-5")["version"] == customer["version"]


async def test_unknown_contacts_are_counted_and_skipped(svc, ct_clients, sandbox, fake_ct):
    report = await apply(svc, ct_clients,
                         change(PREFERENCES, email="stranger@example.com", preferences={OFFERS: True}),
                         change(PROFILE, dotdigital_contact_id=424242, data_fields={"FIRSTNAME": "X"}),
                         change(LISTS, mobile_number="447700900999", lists={VIP: False}))
    assert (report.changes, report.unknown_contact, report.fields_written) == (3, 3, 0)
    assert ct_writes(fake_ct) == [] and svc.rows("SELECT * FROM field_state") == []


async def test_an_unsubscribe_takes_the_opt_out_path(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-6", "kim@example.com")
    unsubscribe = change(UNSUBSCRIBE, dotdigital_contact_id=dd_id, channel="email")
    report = await apply(svc, ct_clients, unsubscribe)
    assert report.opt_outs is not None and report.opt_outs.customers_written == 1
    assert fields_of(fake_ct, "cust-6")["dd-emailOptIn"] is False
    assert svc.rows("SELECT dd_email_status FROM contact")[0]["dd_email_status"] == "unsubscribed"
    await echo(svc, sandbox, fake_ct, "cust-6", "CustomerCustomFieldChanged", name="dd-emailOptIn", value=False)
    again = await apply(svc, ct_clients, unsubscribe)
    assert (again.opt_outs.customers_written, again.opt_outs.unchanged) == (0, 1)


async def test_a_commercetools_outage_is_retried_by_applying_again(svc, ct_clients, sandbox, fake_ct):
    dd_id = await sign_up(svc, fake_ct, "cust-7", "sam@example.com")
    edit = change(PROFILE, dotdigital_contact_id=dd_id, data_fields={"FIRSTNAME": "Samantha"})
    fake_ct.inject_fault(status=503, method="POST", path_contains="/customers/cust-7")
    with pytest.raises(WritebackRetryable):
        await apply(svc, ct_clients, edit)
    assert fake_ct.get("customers", "cust-7")["firstName"] == "Jane"
    report = await apply(svc, ct_clients, edit)
    assert report.fields_written == 1 and fake_ct.get("customers", "cust-7")["firstName"] == "Samantha"


async def test_a_preference_centre_visit_reaches_commercetools_through_the_events_feed(svc, ct_clients, sandbox,
                                                                                       fake_ct):
    """The whole way: the contact changes preferences, a list and the name in Dotdigital; the events feed reads the
    export subscription and writes to commercetools; commercetools' notification sends nothing back."""
    from ctdd.backsync.events_feed import EventsFeed, writeback_apply
    from ctdd.dotdigital.event_subscriptions import ensure_event_subscription

    await ensure_event_subscription(svc.app.clients.get("main"), "main")
    sandbox.add_address_book("VIP", book_id=VIP)
    await sign_up(svc, fake_ct, "cust-8", "eve@example.com")
    feed = EventsFeed(svc.engine, svc.app.settings, svc.app.clients,
                      writeback_apply(svc.engine, svc.app.settings, ct_clients))
    await feed.run_once(["main"])  # the sign-up's own events: commercetools holds all of it already
    assert ct_writes(fake_ct) == []

    mark = len(sandbox.requests)
    sandbox.preference_centre(email="eve@example.com", preferences={OFFERS: True}, lists={VIP: True},
                              data_fields={"FIRSTNAME": "Evie"})
    [read] = await feed.run_once(["main"])
    assert read.changes >= 3 and read.error is None
    customer = fake_ct.get("customers", "cust-8")
    assert customer["firstName"] == "Evie"
    assert (customer["custom"]["fields"]["dd-prefOffers"], customer["custom"]["fields"]["dd-listVip"]) == (True, "optedIn")
    sandbox.preference_centre(email="eve@example.com", preferences={OFFERS: False})  # a second visit: opted out
    [read] = await feed.run_once(["main"])
    assert read.error is None and fields_of(fake_ct, "cust-8")["dd-prefOffers"] is False
    assert dd_writes(sandbox, mark) == []
    # the newest notification of the writes (TrackEvent re-reads the whole customer)
    await echo(svc, sandbox, fake_ct, "cust-8", "CustomerCustomFieldChanged", name="dd-prefOffers", value=False)
    writes = len(ct_writes(fake_ct))
    await feed.run_once(["main"])
    assert len(ct_writes(fake_ct)) == writes


def test_the_rules_of_one_field():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later, earlier = t + timedelta(minutes=1), t - timedelta(minutes=1)
    base = {"target": "Janet", "occurred_at": t}
    assert decide(current="Jane", modified_at=earlier, remembered=True, remembered_value="Jane", **base) == WRITE
    assert decide(current="Janet", modified_at=later, remembered=False, **base) == UNCHANGED
    # commercetools changed the field after the change, ctdd-sync has not seen it yet
    assert decide(current="Jo", modified_at=later, remembered=True, remembered_value="Jane", **base) == NEWER
    # modified after, but not this field: ctdd-sync's value is still commercetools' value
    assert decide(current="Jane", modified_at=later, remembered=True, remembered_value="Jane", **base) == WRITE
    # ctdd-sync holds a newer value (a TrackEvent, or a later Dotdigital change)
    assert decide(current="Jane", modified_at=earlier, remembered=True, remembered_value="Jo",
                  remembered_at=later, **base) == NEWER
    # a flag commercetools never held is no decision of the shop; a profile field the shop cleared is
    assert decide(current=None, target=True, occurred_at=t, modified_at=later, remembered=True,
                  remembered_value=False, absent_is_decision=False) == WRITE
    assert decide(current=None, modified_at=later, remembered=True, remembered_value="Jane", **base) == NEWER
    # the resource is still at the version of the back-sync's own write: the shop's time is the one before it
    assert shop_modified_at(later, 5, 5, earlier) == earlier
    assert shop_modified_at(later, 6, 5, earlier) == later and shop_modified_at(later, 5, None, None) == later
    assert flag_value(False, None, "Enum") == "optedOut" and flag_value(True, None, "Boolean") is True
    assert flag_value(True, "optedOut", None) == "optedIn" and flag_value(False, True, "Enum") is False
    assert profile_value("dateOfBirth", "1990-05-01T00:00:00") == "1990-05-01"
    assert profile_value("firstName", "") is None and profile_value("custom.points", 12) == 12


BASE = """
[accounts.main]
api_user = "u"
password_env = "DD_PASSWORD"
[stores.uk]
account = "main"
email_list = "newsletter"
[stores.uk.lists]
newsletter = 2
vip = 4
[stores.uk.preferences]
offers = 7
"""


@pytest.mark.parametrize("writeback, message", [
    ('preferences = { offer = "dd-prefOffers" }',
     r"^stores\.uk\.writeback\.preferences\.offer: 'offer' is not a key of stores\.uk\.preferences; did you mean 'offers'\?"),
    ('lists = { gold = "dd-listGold" }', r"^stores\.uk\.writeback\.lists\.gold: 'gold' is not a key of stores\.uk\.lists"),
    ('lists = { newsletter = "dd-news" }', r"newsletter.* is the store's email_list"),
    ('lists = { vip = "dd-emailOptIn" }', r"is a consent field of stores\.uk\.consent"),
    ('profile = { FIRSTNAME = "first_name" }', r"^stores\.uk\.writeback\.profile\.FIRSTNAME: 'first_name' is not a customer field"),
    ('profile = { FIRSTNAME = "custom.x" }', r"'x' is not a commercetools custom field name"),
    ('preferences = { offers = "has space" }', r"is not a commercetools custom field name"),
])
def test_writeback_keys_are_checked_at_load(writeback, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(tomllib.loads(BASE + "[stores.uk.writeback]\n" + writeback + "\n"),
                              env={"DD_PASSWORD": "pw"})
    ok = settings_from_mapping(tomllib.loads(BASE + '[stores.uk.writeback]\npreferences = { offers = "dd-prefOffers" }\n'
                                             'lists = { vip = "dd-listVip" }\nprofile = { LOYALTY = "custom.tier" }\n'),
                               env={"DD_PASSWORD": "pw"})
    assert ok.stores["uk"].writeback.profile == {"LOYALTY": "custom.tier"}
