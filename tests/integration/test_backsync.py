"""Back-sync end to end: opt-outs made in the Dotdigital sandbox reach the fake commercetools API over HTTP
(customer custom fields, guest CustomObjects), commercetools' notification of that write comes back through
TrackEvent over real gRPC and sends nothing to Dotdigital. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from support import ct_payloads as ct
from support import all_settled, commercetools_section, contact_request, make_settings, outbox_rows, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.backsync.feeds import (
    SHOP_NEWER, UNCHANGED, WRITTEN, ChannelState, _claim, _release, consent_updates, iso, read_cursors,
)
from ctdd.config import BacksyncConfig, replace
from ctdd.db.models import Contact
from ctdd.testing.commercetools_fake import FakeCommercetools

TYPE_ID = "type-dd-consent"
CONSENT_STORE = {"uk": {"email_list": "newsletter", "sms_list": "sms", "customers_list": "customers"}}
MOBILE = "+447700900123"


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        fake.add("types", {"id": TYPE_ID, "key": "dd-consent", "resourceTypeIds": ["customer"], "fieldDefinitions": [
            {"name": "dd-emailOptIn", "type": {"name": "Boolean"}},
            {"name": "dd-smsOptIn", "type": {"name": "Boolean"}},
            {"name": "dd-consentUpdatedAt", "type": {"name": "DateTime"}},
        ]})
        yield fake


def settings_for(database_url, sandbox, fake_ct, **backsync):
    settings = make_settings(database_url, sandbox, commercetools=fake_ct, stores_extra=CONSENT_STORE)
    return replace(settings, backsync=BacksyncConfig(**{"enabled": False, **backsync}))


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    return await service_factory(settings_for(database_url, sandbox, fake_ct))


def customer(cid: str, email: str, *, opt_in=True, at: datetime, sms=None, version=1, mobile=None) -> dict:
    fields = {"dd-emailOptIn": opt_in, "dd-consentUpdatedAt": iso(at)}
    if sms is not None:
        fields["dd-smsOptIn"] = sms
    extra = {"custom": {"type": {"typeId": "type", "id": TYPE_ID}, "fields": fields}}
    if mobile:
        extra["addresses"] = [{"id": "addr-1", "country": "GB", "mobile": mobile}]
    return ct.customer(cid, email, version=version, **extra)


def track(payload: dict) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw(payload))


async def sign_up(svc, fake_ct, cid: str, email: str, **kwargs) -> dict:
    """The customer exists in commercetools and reached Dotdigital through TrackEvent."""
    body = fake_ct.add("customers", customer(cid, email, **kwargs))
    resp = await svc.stub.TrackEvent(track(ct.message("customer", cid, "CustomerCreated", version=body["version"],
                                                      customer=body)))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED
    await wait_for(lambda: all_settled(svc), what="sign-up delivered")
    return body


def dd_writes(sandbox, after: int = 0):
    """Contact writes the sandbox received (PATCH upserts, list removals, deletes) after request ``after``."""
    return [r for r in sandbox.requests[after:] if r.method in ("PATCH", "DELETE", "PUT") and "/contacts" in r.path]


def ct_updates(fake_ct, resource_id: str):
    return [r for r in fake_ct.requests if r.method == "POST" and r.path.endswith(f"/customers/{resource_id}")]


def custom_fields(fake_ct, cid: str) -> dict:
    return fake_ct.get("customers", cid)["custom"]["fields"]


async def test_opt_out_in_dotdigital_reaches_the_customer_within_one_poll_and_is_not_echoed(
        service_factory, database_url, sandbox, fake_ct):
    # the scheduled poller, as the service runs it
    svc = await service_factory(settings_for(database_url, sandbox, fake_ct, enabled=True, interval_seconds=0.3))
    decided = datetime.now(timezone.utc) - timedelta(days=3)
    await sign_up(svc, fake_ct, "cust-1", "jane@example.com", at=decided)
    contact = sandbox.get_contact(email="jane@example.com")
    assert contact["channelProperties"]["email"]["status"] == "subscribed" and {l["id"] for l in contact["lists"]} == {1, 2}

    mark = len(sandbox.requests)
    sandbox.suppress(email="jane@example.com", reason="unsubscribed")  # the unsubscribe link in a campaign
    removed = sandbox.get_contact(email="jane@example.com")["updated"]
    await wait_for(lambda: custom_fields(fake_ct, "cust-1")["dd-emailOptIn"] is False, timeout=5,
                   what="opt-out written to commercetools")
    fields = custom_fields(fake_ct, "cust-1")
    assert fields["dd-consentUpdatedAt"] == removed  # the Dotdigital removal time, not the poll time
    assert "dd-smsOptIn" not in fields
    row = svc.rows("SELECT dd_email_status, shop_email_consent FROM contact")[0]
    assert row == {"dd_email_status": "unsubscribed", "shop_email_consent": "subscribed"}

    # commercetools notifies the change the back-sync made: TrackEvent applies it and sends nothing
    version = fake_ct.get("customers", "cust-1")["version"]
    echo = ct.message("customer", "cust-1", "CustomerCustomFieldChanged", version=version,
                      name="dd-emailOptIn", value=False, previousValue=True)
    resp = await svc.stub.TrackEvent(track(echo))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED and not resp.outbox_message_ids
    await wait_for(lambda: all_settled(svc), what="nothing pending")
    assert svc.rows("SELECT shop_email_consent FROM contact")[0]["shop_email_consent"] == "unsubscribed"
    assert dd_writes(sandbox, mark) == []
    # later polls see the same removal (overlap) and write nothing more
    writes = len(ct_updates(fake_ct, "cust-1"))
    await wait_for(lambda: len([r for r in sandbox.requests[mark:] if "suppressed-since" in r.path]) >= 3,
                   timeout=5, what="more polls")
    assert len(ct_updates(fake_ct, "cust-1")) == writes == 1
    assert dd_writes(sandbox, mark) == []
    assert {l["id"] for l in sandbox.get_contact(email="jane@example.com")["lists"]} == {1, 2}


async def test_guest_opt_out_lands_in_a_custom_object(svc, sandbox, fake_ct):
    req = contact_request(email="Guest@Example.com", first_name="Gus")  # newsletter-only sign-up
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    req.consent.email.decided_at.FromDatetime(datetime.now(timezone.utc) - timedelta(days=1))
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="sign-up")
    sandbox.suppress(email="guest@example.com", reason="hardBounced")

    [result] = await svc.app.backsync.run_once()
    assert (result.opt_outs, result.guests_written, result.customers_written, result.complete) == (1, 1, 0, True)
    key = hashlib.sha256(b"guest@example.com").hexdigest()
    [obj] = [o for o in fake_ct.all("custom-objects") if o["container"] == "dd-consent"]
    assert obj["key"] == key and "@" not in obj["key"]
    value = obj["value"]
    assert value == {"email": "guest@example.com", "emailOptIn": False, "source": "dotdigital",
                     "updatedAt": sandbox.get_contact(email="guest@example.com")["updated"]}
    assert svc.rows("SELECT dd_email_status FROM contact")[0]["dd_email_status"] == "hardBounced"

    [again] = await svc.app.backsync.run_once()  # the same removal, seen again in the overlap
    assert (again.guests_written, again.unchanged) == (0, 1)
    assert fake_ct.all("custom-objects")[0]["version"] == obj["version"]


async def test_a_deleted_customer_is_not_written_back_as_a_guest(svc, sandbox, fake_ct):
    await sign_up(svc, fake_ct, "cust-2", "gone@example.com", at=datetime.now(timezone.utc) - timedelta(days=1))
    fake_ct.remove("customers", "cust-2")
    await svc.stub.TrackEvent(track(ct.message("customer", "cust-2", "CustomerDeleted", version=2)))
    await wait_for(lambda: all_settled(svc), what="deletion")
    sandbox.suppress(email="gone@example.com")
    [result] = await svc.app.backsync.run_once()
    assert (result.opt_outs, result.no_target, result.guests_written, result.customers_written) == (1, 1, 0, 0)
    assert fake_ct.all("custom-objects") == []


async def test_a_newer_shop_opt_in_is_skipped_and_later_resubscribes_once(svc, sandbox, fake_ct):
    now = datetime.now(timezone.utc)
    await sign_up(svc, fake_ct, "cust-3", "sam@example.com", at=now - timedelta(hours=3))
    sandbox.suppress(email="sam@example.com", at=now - timedelta(hours=2))
    # the person signs up for the newsletter again at the checkout, after the Dotdigital removal; the
    # storefront middleware calls SyncContact (commercetools itself still says opted in 3 hours ago)
    opt_in = contact_request(customer_id="cust-3", first_name="Sam")
    opt_in.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    opt_in.consent.email.decided_at.FromDatetime(now - timedelta(hours=1))
    await svc.stub.SyncContact(opt_in)
    await wait_for(lambda: all_settled(svc), what="shop opt-in")

    [result] = await svc.app.backsync.run_once()
    assert (result.opt_outs, result.skipped_shop_newer, result.customers_written) == (1, 1, 0)
    assert ct_updates(fake_ct, "cust-3") == []
    assert custom_fields(fake_ct, "cust-3")["dd-emailOptIn"] is True
    with Session(svc.engine) as session:
        contact = session.execute(sa.select(Contact)).scalar_one()
    assert contact.dd_email_status == "unsubscribed"
    removed = (now - timedelta(hours=2)).replace(microsecond=(now.microsecond // 1000) * 1000)
    assert contact.dd_email_status_at.replace(tzinfo=timezone.utc) == removed  # the removal, not the poll

    # the newer opt-in wins at the contact's next update: resubscribed (store mode: challenge), once
    again = contact_request(customer_id="cust-3", first_name="Samuel")
    again.consent.email.CopyFrom(opt_in.consent.email)
    for _ in range(2):
        await svc.stub.SyncContact(again)
    await wait_for(lambda: all_settled(svc), what="resubscribe")
    resubscribes = [r for r in sandbox.requests if r.method == "PATCH" and "resubscribeOptions" in str(r.json)]
    assert len(resubscribes) == 1
    assert sandbox.get_contact(email="sam@example.com")["channelProperties"]["email"]["status"] == "pendingOptIn"


async def test_cursor_persists_across_a_restart(service_factory, database_url, sandbox, fake_ct):
    settings = settings_for(database_url, sandbox, fake_ct)
    first = await service_factory(settings)
    await sign_up(first, fake_ct, "cust-4", "ann@example.com", at=datetime.now(timezone.utc) - timedelta(days=1))
    sandbox.suppress(email="ann@example.com")
    [result] = await first.app.backsync.run_once()
    assert result.customers_written == 1 and result.complete
    cursor = read_cursors(first.engine, "main")["suppressed"]
    assert cursor is not None and result.since["suppressed"] < cursor
    await first.app.stop(grace=1.0)

    second = await service_factory(settings)  # a new process: nothing of the first poll in memory
    _claim(second.engine, "main", "other-host:1:poller", 60)  # another process is polling the account
    [busy] = await second.app.backsync.run_once()
    assert not busy.polled and read_cursors(second.engine, "main")["suppressed"] == cursor
    _release(second.engine, "main", "other-host:1:poller", None)
    mark = len(sandbox.requests)
    [again] = await second.app.backsync.run_once()
    asked = [r.path.rsplit("/", 1)[1] for r in sandbox.requests[mark:] if "/suppressed-since/" in r.path]
    assert asked == [iso(cursor - timedelta(seconds=settings.backsync.overlap_seconds))]
    modified = [r.query["~modified"][0] for r in sandbox.requests[mark:] if r.path == "/contacts/v3"]
    assert modified == ["gte::" + asked[0]]
    assert (again.customers_written, again.guests_written, again.unchanged) == (0, 0, 1)
    assert len(ct_updates(fake_ct, "cust-4")) == 1  # written once, by the first process
    assert read_cursors(second.engine, "main")["suppressed"] > cursor


async def test_version_conflict_on_the_customer_is_retried(svc, sandbox, fake_ct):
    await sign_up(svc, fake_ct, "cust-5", "lee@example.com", at=datetime.now(timezone.utc) - timedelta(days=1))
    sandbox.suppress(email="lee@example.com", reason="hardBounced")
    fake_ct.inject_fault(status=409, method="POST", path_contains="/customers/cust-5", body={
        "statusCode": 409, "message": "Object has a different version than expected.",
        "errors": [{"code": "ConcurrentModification", "message": "different version", "currentVersion": 2}]})
    [result] = await svc.app.backsync.run_once()
    assert result.customers_written == 1 and result.complete
    assert [r.status for r in ct_updates(fake_ct, "cust-5")] == [409, 200]
    assert len([r for r in fake_ct.requests if r.method == "GET" and r.path.endswith("/customers/cust-5")]) == 2
    assert custom_fields(fake_ct, "cust-5")["dd-emailOptIn"] is False
    mark = len(sandbox.requests)
    version = fake_ct.get("customers", "cust-5")["version"]
    resp = await svc.stub.TrackEvent(track(ct.message("customer", "cust-5", "CustomerCustomFieldChanged",
                                                      version=version, name="dd-emailOptIn", value=False)))
    assert resp.notifications[0].outcome == pb.EVENT_OUTCOME_APPLIED and not resp.outbox_message_ids
    assert dd_writes(sandbox, mark) == []


async def test_our_own_unsubscribe_coming_back_through_the_feed_writes_nothing(svc, sandbox, fake_ct):
    at = datetime.now(timezone.utc) - timedelta(days=1)
    await sign_up(svc, fake_ct, "cust-6", "kim@example.com", at=at)
    # the customer opts out in the shop; ctdd-sync sends it to Dotdigital, which lists it as unsubscribed
    fake_ct.bump_version("customers", "cust-6", custom={"type": {"typeId": "type", "id": TYPE_ID}, "fields": {
        "dd-emailOptIn": False, "dd-consentUpdatedAt": iso(at + timedelta(hours=1))}})
    resp = await svc.stub.TrackEvent(track(ct.message("customer", "cust-6", "CustomerCustomFieldChanged", version=2,
                                                      name="dd-emailOptIn", value=False)))
    assert resp.outbox_message_ids
    await wait_for(lambda: all_settled(svc), what="opt-out delivered")
    assert sandbox.get_contact(email="kim@example.com")["channelProperties"]["email"]["status"] == "unsubscribed"

    [result] = await svc.app.backsync.run_once()
    assert (result.opt_outs, result.unchanged, result.customers_written) == (1, 1, 0)
    assert ct_updates(fake_ct, "cust-6") == []


async def test_sms_opt_out_from_the_modified_feed(svc, sandbox, fake_ct):
    at = datetime.now(timezone.utc) - timedelta(days=1)
    await sign_up(svc, fake_ct, "cust-7", "max@example.com", at=at, sms=True, mobile=MOBILE)
    assert sandbox.get_contact(email="max@example.com")["channelProperties"]["sms"]["status"] == "subscribed"
    sandbox.suppress(mobile=MOBILE, reason="suppressed")  # e.g. a STOP reply, suppressed account-wide
    [result] = await svc.app.backsync.run_once()
    assert result.customers_written == 1
    fields = custom_fields(fake_ct, "cust-7")
    assert fields["dd-smsOptIn"] is False and fields["dd-emailOptIn"] is True
    assert svc.rows("SELECT dd_sms_status FROM contact")[0]["dd_sms_status"] == "suppressed"

    # the customer opts in to texts again in the shop; Dotdigital keeps the contact suppressed, but the
    # contact counts as modified: the next poll must not take that for a new opt-out and undo the shop
    fake_ct.bump_version("customers", "cust-7", custom={"type": {"typeId": "type", "id": TYPE_ID}, "fields": {
        "dd-emailOptIn": True, "dd-smsOptIn": True, "dd-consentUpdatedAt": iso(datetime.now(timezone.utc))}})
    await svc.stub.TrackEvent(track(ct.message("customer", "cust-7", "CustomerCustomFieldChanged", version=3,
                                               name="dd-smsOptIn", value=True)))
    await wait_for(lambda: all_settled(svc), what="shop SMS opt-in")
    assert sandbox.get_contact(email="max@example.com")["channelProperties"]["sms"]["status"] == "suppressed"
    [again] = await svc.app.backsync.run_once()
    assert (again.opt_outs, again.skipped_shop_newer, again.customers_written) == (1, 1, 0)
    assert custom_fields(fake_ct, "cust-7")["dd-smsOptIn"] is True and len(ct_updates(fake_ct, "cust-7")) == 1


async def test_unknown_contacts_and_feed_failures(svc, sandbox, fake_ct):
    sandbox.suppress(email="stranger@example.com")  # never synced by ctdd-sync
    sandbox.inject_fault(status=503, path_contains="/unsubscribed-since/")
    [failed] = await svc.app.backsync.run_once()
    assert not failed.complete and read_cursors(svc.engine, "main")["suppressed"] is None
    [result] = await svc.app.backsync.run_once()
    assert result.complete and result.unknown_contact == 1 and result.customers_written == 0
    assert fake_ct.all("custom-objects") == [] and outbox_rows(svc) == []


def test_moving_the_shared_decision_time_does_not_revive_a_revoked_sms_opt_in():
    names = {"email": "e", "sms": "s", "updated_at": "t"}
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    revoked = {"sms": ChannelState("unsubscribed", t0 + timedelta(hours=1))}
    values = {"e": True, "s": True, "t": iso(t0)}
    outcome, changes = consent_updates(values, channel="email", removed_at=t0 + timedelta(hours=2), names=names,
                                       dotdigital=revoked)
    assert outcome == WRITTEN and changes == {"e": False, "s": False, "t": iso(t0 + timedelta(hours=2))}
    # an SMS opt-in newer than its revocation stays
    outcome, changes = consent_updates({**values, "t": iso(t0 + timedelta(hours=1, minutes=30))}, channel="email",
                                       removed_at=t0 + timedelta(hours=2), names=names, dotdigital=revoked)
    assert changes == {"e": False, "t": iso(t0 + timedelta(hours=2))}
    assert consent_updates({"e": "optedOut", "t": iso(t0)}, channel="email", removed_at=t0 + timedelta(hours=1),
                           names=names, dotdigital={})[0] == UNCHANGED
    assert consent_updates({"e": "optedIn", "t": iso(t0 + timedelta(hours=2))}, channel="email",
                           removed_at=t0 + timedelta(hours=1), names=names, dotdigital={})[0] == SHOP_NEWER
    assert consent_updates({"e": "optedIn", "t": iso(t0)}, channel="email", removed_at=t0 + timedelta(hours=1),
                           names=names, dotdigital={})[1]["e"] == "optedOut"


def test_run_once_command(tmp_path, sandbox, monkeypatch, capsys):
    from ctdd.cli import main
    from ctdd.db.engine import create_db_engine

    monkeypatch.setenv("DD_PASSWORD", sandbox.password)
    monkeypatch.setenv("CT_SECRET", "ct-secret")
    db = tmp_path / "ctdd.db"
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        config = tmp_path / "ctdd.toml"
        config.write_text(f"""
[service]
database_url = "sqlite:///{db}"
[accounts.main]
api_user = "{sandbox.api_user}"
password_env = "DD_PASSWORD"
base_url = "{sandbox.base_url}"
{commercetools_section(fake, "ct")}[stores.uk]
account = "main"
""")
        assert main(["backsync", "run-once", "--config", str(config), "--store", "uk"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("account main: 0 opt-out(s)") and "cursor advanced" in out
        assert main(["backsync", "run-once", "--config", str(config), "--account", "other"]) == 2
    engine = create_db_engine(f"sqlite:///{db}")
    assert read_cursors(engine, "main")["modified"] is not None
    engine.dispose()
    assert [r.path.split("/")[3] for r in sandbox.requests if r.path.startswith("/v2/contacts/")] == [
        "suppressed-since", "unsubscribed-since"]


async def test_sandbox_feeds_are_paged_and_strict(sandbox):
    from ctdd.dotdigital.client import DotdigitalClient
    from ctdd.dotdigital.errors import DotdigitalError

    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url) as dd:
        for n in range(3):
            sandbox.clock = lambda n=n: t0 + timedelta(minutes=n)
            await dd.upsert_contact("email", f"p{n}@example.com", {"identifiers": {"email": f"p{n}@example.com"}})
        sandbox.clock = lambda: t0 + timedelta(minutes=10)
        await dd.upsert_contact("email", "p1@example.com", {"channelProperties": {"email": {"status": "unsubscribed"}}})
        sandbox.suppress(email="p2@example.com", reason="ispComplained", at=t0 + timedelta(minutes=5))
        sandbox.clock = None

        page = await dd.suppressed_since(t0)
        assert [(e["suppressedContact"]["email"], e["reason"], e["dateRemoved"]) for e in page] == [
            ("p2@example.com", "IspComplained", "2026-03-01T00:05:00.000Z"),
            ("p1@example.com", "Unsubscribed", "2026-03-01T00:10:00.000Z")]
        assert [e["suppressedContact"]["id"] for e in await dd.suppressed_since(t0, select=1, skip=1)] == [2]
        assert [e["reason"] for e in await dd.unsubscribed_since(t0)] == ["Unsubscribed"]
        assert await dd.suppressed_since(t0 + timedelta(minutes=11)) == []

        seen, marker = [], None
        while True:
            page = await dd.contacts_modified_since(t0, limit=1, marker=marker)
            seen += [(c["identifiers"]["email"], c["channelProperties"]["email"]["status"]) for c in page.items]
            if page.next_marker is None:
                break
            marker = page.next_marker
        assert seen == [("p0@example.com", "subscribed"), ("p2@example.com", "ispComplained"),
                        ("p1@example.com", "unsubscribed")]  # ascending by modification time
        resubscribe = {"channelProperties": {"email": {"status": "subscribed", "resubscribeOptions": {}}}}
        await dd.upsert_contact("email", "p1@example.com", resubscribe)
        assert [e["suppressedContact"]["id"] for e in await dd.suppressed_since(t0)] == [3]  # p1 left the feed

        endpoint = await dd.api_endpoint()
        for path, params, code in (
            ("/v2/contacts/suppressed-since/2026-03-01", {"select": 1001}, "ERROR_PARAMETER_INVALID"),
            ("/v2/contacts/unsubscribed-since/2026-03-01", {"skip": -1}, "ERROR_PARAMETER_INVALID"),
            ("/v2/contacts/suppressed-since/yesterday", {}, "ERROR_PARAMETER_INVALID"),
            ("/contacts/v3", {"~modified": "gte::2026-03-01"}, "contacts:invalidFilter"),
            ("/contacts/v3", {"~modified": "gte::2026-03-01T00:00:00Z", "~created": "gte::2026-03-01T00:00:00Z"},
             "contacts:invalidFilter"),
            ("/contacts/v3", {"limit": 5001}, "contacts:invalidParameter"),
            ("/contacts/v3", {"include": "channelProperties|nope"}, "contacts:invalidParameter"),
            ("/contacts/v3", {"marker": "not-a-marker"}, "contacts:invalidParameter"),
        ):
            with pytest.raises(DotdigitalError) as info:
                await dd._request("GET", endpoint, path, params=params)
            assert info.value.status_code == 400 and info.value.code == code, path
        with pytest.raises(ValueError):
            await dd.suppressed_since(t0, select=0)
        with pytest.raises(ValueError):
            await dd.contacts_modified_since(datetime(2026, 3, 1))  # naive times are refused
