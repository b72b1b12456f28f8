"""Consent end to end: channel validation, list roles, preferences and the suppression rules, through real
gRPC against the Dotdigital sandbox (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import pytest

from support import all_settled, contact_request, field_violations, make_settings, outbox_rows, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb

CONSENT_STORE = {"uk": {"email_list": "newsletter", "sms_list": "sms", "customers_list": "customers",
                        "preferences": {"offers": 7}, "resubscribe": "no_challenge"}}


@pytest.fixture
async def svc(service_factory, database_url, sandbox):
    return await service_factory(make_settings(database_url, sandbox, stores_extra=CONSENT_STORE))


def opt_in(req: pb.SyncContactRequest, *, channel="email", decided_at: datetime | None = None,
           status=pb.CONSENT_STATUS_SUBSCRIBED) -> pb.SyncContactRequest:
    consent = getattr(req.consent, channel)
    consent.status = status
    if decided_at is not None:
        consent.decided_at.FromDatetime(decided_at)
    return req


def lists_of(sandbox, email):
    return sorted(lst["id"] for lst in sandbox.get_contact(email=email)["lists"])


async def test_sms_opt_in_without_mobile_is_rejected_and_nothing_is_sent(svc, sandbox):
    req = opt_in(contact_request(customer_id="c-1", email="sms@example.com"), channel="sms")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.stub.SyncContact(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert outbox_rows(svc) == [] and svc.rows("SELECT id FROM contact") == []
    assert [r for r in sandbox.requests if r.method == "PATCH"] == []
    assert svc.rows("SELECT operation FROM rejected_record") == [{"operation": "SyncContact"}]


async def test_consent_record_checks(svc):
    req = opt_in(contact_request(email="rec@example.com"))
    rec = req.consent.email.records.add(text="ok", url="ftp://x", ip_address="999.1.1.1", user_agent="UA")
    rec.consented_at.FromDatetime(datetime.now(timezone.utc) + timedelta(days=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.stub.SyncContact(req)
    details = info.value.trailing_metadata()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details


@pytest.mark.parametrize("url, ip", [("https:shop", "203.0.113.5"), ("https://shop.example/a b", "203.0.113.5"),
                                     ("https://shop.example/", "fe80::1%eth0"), ("https://x/<b>", "::1")])
async def test_consent_record_url_and_address_must_be_what_dotdigital_takes(svc, sandbox, url, ip):
    # Dotdigital refuses the whole contact upsert (400 badJson) for a consent record whose url is not a URI or
    # whose ipAddress is not an address: such a record must be refused here, with its field named
    req = opt_in(contact_request(email="uri@example.com"))
    rec = req.consent.email.records.add(text="ok", url=url, ip_address=ip, user_agent="UA")
    rec.consented_at.FromDatetime(datetime.now(timezone.utc) - timedelta(minutes=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.stub.SyncContact(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = "url" if ip in ("203.0.113.5", "::1") else "ip_address"
    assert list(field_violations(info.value)) == [f"consent.email.records[0].{bad}"]


async def test_consent_record_is_sent_trimmed(svc, sandbox):
    req = opt_in(contact_request(email="trim@example.com"))
    rec = req.consent.email.records.add(text=" I agree ", url=" https://shop.example/signup ",
                                        ip_address=" 203.0.113.5 ", user_agent=" UA ")
    rec.consented_at.FromDatetime(datetime.now(timezone.utc) - timedelta(minutes=1))
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="delivery")
    patches = [r for r in sandbox.requests if r.method == "PATCH"]
    assert len(patches) == 1 and patches[0].status in (200, 201)
    (record,) = patches[0].json["consentRecords"]
    assert (record["text"], record["url"], record["ipAddress"], record["userAgent"]) == (
        "I agree", "https://shop.example/signup", "203.0.113.5", "UA")


async def test_channel_lists_follow_decisions_and_preferences(svc, sandbox):
    mobile = "+447700900123"
    req = opt_in(opt_in(contact_request(customer_id="c-2", email="lee@example.com", mobile=mobile)), channel="sms")
    req.preferences.add(preference_key="offers", opted_in=True)
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="opt-in")
    contact = sandbox.get_contact(email="lee@example.com")
    assert lists_of(sandbox, "lee@example.com") == [1, 2, 3]  # customers, newsletter, sms
    assert contact["channelProperties"]["email"]["status"].lower() == "subscribed"
    assert contact["channelProperties"]["sms"]["status"].lower() == "subscribed"

    out = opt_in(contact_request(customer_id="c-2"), status=pb.CONSENT_STATUS_UNSUBSCRIBED)
    resp = await svc.stub.SyncContact(out)
    assert resp.changed and len(resp.outbox_message_ids) == 2  # upsert (status) + list removal
    await wait_for(lambda: all_settled(svc), what="opt-out")
    assert lists_of(sandbox, "lee@example.com") == [1, 3]
    removals = [r for r in sandbox.requests if r.method == "DELETE" and "/address-books/2/contacts/" in r.path]
    assert len(removals) == 1 and removals[0].status == 204
    assert sandbox.get_contact(email="lee@example.com")["channelProperties"]["email"]["status"].lower() == "unsubscribed"


async def test_suppressed_contact_stays_suppressed_and_only_a_newer_opt_in_resubscribes_once(svc, sandbox):
    email = "sup@example.com"
    await svc.stub.SyncContact(opt_in(contact_request(customer_id="c-3", email=email, first_name="A")))
    await wait_for(lambda: all_settled(svc), what="creation")
    sandbox.suppress(email=email, reason="unsubscribed")  # the person unsubscribes in a Dotdigital email

    # an ordinary profile update learns the Dotdigital status from the upsert response
    await svc.stub.SyncContact(contact_request(customer_id="c-3", first_name="B"))
    await wait_for(lambda: all_settled(svc), what="profile update")
    row = svc.rows("SELECT dd_email_status, dd_email_status_at FROM contact")[0]
    assert row["dd_email_status"] == "unsubscribed" and row["dd_email_status_at"] is not None

    # stale shop data (no decision time, or an older one) must not resubscribe
    no_time = await svc.stub.SyncContact(opt_in(contact_request(customer_id="c-3", first_name="C")))
    older = await svc.stub.SyncContact(opt_in(contact_request(customer_id="c-3", first_name="D"),
                                              decided_at=datetime.now(timezone.utc) - timedelta(hours=1)))
    for resp in (no_time, older):
        assert any(w.startswith("channelProperties.email.status:") for w in resp.withheld_fields)
        assert any(w.startswith("lists.2:") for w in resp.withheld_fields)
    await wait_for(lambda: all_settled(svc), what="withheld updates")
    contact = sandbox.get_contact(email=email)
    assert contact["channelProperties"]["email"]["status"].lower() == "unsubscribed"
    assert contact["dataFields"]["FIRSTNAME"] == "D"  # the rest of the update went through
    assert not any("resubscribeOptions" in str(r.json) for r in sandbox.requests if r.method == "PATCH")

    # a newer opt-in resubscribes, once
    newer = opt_in(contact_request(customer_id="c-3"), decided_at=datetime.now(timezone.utc) + timedelta(seconds=1))
    first = await svc.stub.SyncContact(newer)
    again = await svc.stub.SyncContact(newer)
    assert first.changed and not first.withheld_fields
    assert not again.changed
    await wait_for(lambda: all_settled(svc), what="resubscribe")
    resubscribes = [r for r in sandbox.requests if r.method == "PATCH" and "resubscribeOptions" in str(r.json)]
    assert len(resubscribes) == 1
    assert resubscribes[0].json["channelProperties"]["email"]["resubscribeOptions"] == {"resubscribeWithNoChallenge": True}
    assert sandbox.get_contact(email=email)["channelProperties"]["email"]["status"].lower() == "subscribed"
    assert 2 in lists_of(sandbox, email)


async def test_hard_bounce_cannot_be_lifted_and_pending_double_opt_in_is_not_resent(svc, sandbox):
    await svc.stub.SyncContact(contact_request(customer_id="c-4", email="hb@example.com"))
    await wait_for(lambda: all_settled(svc), what="creation")
    sandbox.suppress(email="hb@example.com", reason="hardBounced")
    await svc.stub.SyncContact(contact_request(customer_id="c-4", first_name="X"))
    await wait_for(lambda: all_settled(svc), what="learn status")
    resp = await svc.stub.SyncContact(opt_in(contact_request(customer_id="c-4"),
                                             decided_at=datetime.now(timezone.utc) + timedelta(seconds=1)))
    assert any("cannot be lifted" in w for w in resp.withheld_fields)

    req = opt_in(contact_request(customer_id="c-5", email="doi@example.com"))
    req.consent.email.opt_in_type = pb.OPT_IN_TYPE_VERIFIED_DOUBLE
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="double opt-in")
    assert svc.rows("SELECT dd_email_status FROM contact WHERE email = 'doi@example.com'")[0]["dd_email_status"] == "pendingOptIn"
    again = opt_in(contact_request(customer_id="c-5", first_name="Y"),
                   decided_at=datetime.now(timezone.utc) + timedelta(seconds=1))
    resp = await svc.stub.SyncContact(again)
    assert any("pending" in w for w in resp.withheld_fields)
