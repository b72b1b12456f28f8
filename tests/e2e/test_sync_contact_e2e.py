"""SyncContact end to end: real gRPC -> real database -> dispatcher -> real HTTP to the Dotdigital sandbox.

Every test runs on SQLite and on the real PostgreSQL server (see the ``database_url`` fixture).
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2

from support import all_settled, contact_request, field_violations, make_settings, outbox_rows, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb


def upserts(sandbox, email_part: str | None = None):
    reqs = [r for r in sandbox.requests if r.method == "PATCH" and r.path.startswith("/contacts/v3/")]
    if email_part is not None:
        reqs = [r for r in reqs if email_part in r.path or email_part in json.dumps(r.json or {})]
    return reqs


async def test_new_contact_is_created_with_mapped_fields(service, sandbox):
    req = contact_request(customer_id="c-1", email="  Jane.Doe@Example.COM ", first_name="Jane", last_name="Doe",
                          version=3)
    req.profile.billing_address.city = "London"
    req.profile.billing_address.country = "GB"
    req.lists.add(list_key="newsletter", member=True)
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    req.consent.email.opt_in_type = pb.OPT_IN_TYPE_SINGLE
    rec = req.consent.email.records.add(text="Yes, email me", url="https://shop.example/signup",
                                        ip_address="203.0.113.5", user_agent="Mozilla/5.0")
    rec.consented_at.FromJsonString("2026-11-01T10:00:00Z")

    resp = await service.stub.SyncContact(req)
    assert resp.created and resp.changed
    assert len(resp.outbox_message_ids) == 1

    await wait_for(lambda: all_settled(service), what="delivery")
    [row] = outbox_rows(service)
    assert row["status"] == "delivered" and row["last_response_code"] == 201
    assert (row["record_type"], row["record_id"], row["record_version"]) == ("customer", "c-1", 3)

    contact = sandbox.get_contact(email="jane.doe@example.com")
    assert contact is not None
    fields = contact["dataFields"]
    assert fields["FIRSTNAME"] == "Jane" and fields["LASTNAME"] == "Doe"
    assert fields["CUSTOMER_ID"] == "c-1"
    assert fields["BILLING_CITY"] == "London" and fields["BILLING_COUNTRY"] == "GB"
    assert (fields["STORE"], fields["LOCALE"], fields["CURRENCY"]) == ("uk", "en-GB", "GBP")
    assert 2 in [lst["id"] for lst in contact["lists"]]
    assert contact["consentRecords"][0]["text"] == "Yes, email me"

    [sent] = upserts(sandbox)
    assert sent.path == "/contacts/v3/email/jane.doe@example.com" or "jane.doe%40example.com" in sent.path
    assert sent.headers["authorization"] == "<redacted>"
    db_contact = service.rows("SELECT dotdigital_contact_id FROM contact WHERE id = :id", id=int(resp.contact_id))[0]
    assert db_contact["dotdigital_contact_id"] == contact["contactId"]


async def test_only_changed_fields_are_sent_and_stale_updates_send_nothing(service, sandbox):
    first = await service.stub.SyncContact(
        contact_request(customer_id="c-2", email="sam@example.com", first_name="Sam", last_name="Jones", version=1)
    )
    await wait_for(lambda: all_settled(service), what="first delivery")
    dd_id = sandbox.get_contact(email="sam@example.com")["contactId"]

    second = await service.stub.SyncContact(
        contact_request(customer_id="c-2", email="sam@example.com", first_name="Sam", last_name="Smith", version=2)
    )
    assert second.contact_id == first.contact_id and second.changed and not second.created
    await wait_for(lambda: all_settled(service), what="second delivery")
    last = upserts(sandbox)[-1]
    assert last.path == f"/contacts/v3/contactId/{dd_id}"
    assert last.json == {"dataFields": {"LASTNAME": "Smith"}}
    assert sandbox.get_contact(email="sam@example.com")["dataFields"]["LASTNAME"] == "Smith"

    sent_before = len(upserts(sandbox))
    stale = await service.stub.SyncContact(
        contact_request(customer_id="c-2", email="sam@example.com", first_name="Sam", last_name="Jones", version=1)
    )
    assert not stale.changed and not stale.outbox_message_ids
    assert list(stale.stale_fields) == ["dataFields.LASTNAME"]

    contact_row = "SELECT email, updated_at FROM contact WHERE id = :id"
    [before] = service.rows(contact_row, id=first.contact_id)
    same = await service.stub.SyncContact(
        contact_request(customer_id="c-2", email="sam@example.com", first_name="Sam", last_name="Smith", version=2)
    )
    assert not same.changed and not same.outbox_message_ids and not same.stale_fields
    assert service.rows(contact_row, id=first.contact_id) == [before]  # nothing changed: the row is not rewritten

    await service.app.dispatcher.stop(drain_seconds=1)  # nothing more may be sent
    assert len(upserts(sandbox)) == sent_before
    assert sandbox.get_contact(email="sam@example.com")["dataFields"]["LASTNAME"] == "Smith"
    assert len(outbox_rows(service)) == 2


async def test_same_person_by_email_then_customer_id_is_one_contact(service, sandbox):
    by_email = await service.stub.SyncContact(contact_request(email="alex@example.com", first_name="Alex"))
    both = await service.stub.SyncContact(contact_request(customer_id="c-3", email="ALEX@example.com"))
    by_id = await service.stub.SyncContact(contact_request(customer_id="c-3", last_name="Kim"))
    assert by_email.contact_id == both.contact_id == by_id.contact_id
    assert by_email.created and not both.created and not by_id.created

    await wait_for(lambda: all_settled(service), what="deliveries")
    emails = [c["identifiers"].get("email") for c in sandbox.contacts]
    assert emails == ["alex@example.com"]
    fields = sandbox.get_contact(email="alex@example.com")["dataFields"]
    assert (fields["FIRSTNAME"], fields["LASTNAME"], fields["CUSTOMER_ID"]) == ("Alex", "Kim", "c-3")
    assert len(service.rows("SELECT id FROM contact")) == 1


async def test_email_change_keeps_the_contact_and_conflicts_never_merge(service, sandbox):
    a = await service.stub.SyncContact(contact_request(customer_id="c-a", email="old@example.com", version=1))
    b = await service.stub.SyncContact(contact_request(customer_id="c-b", email="other@example.com", version=1))
    await wait_for(lambda: all_settled(service), what="creation")
    moved = await service.stub.SyncContact(contact_request(customer_id="c-a", email="new@example.com", version=2))
    assert moved.contact_id == a.contact_id
    # c-a now claims c-b's email: customer id outranks email, the email stays with its owner.
    clash = await service.stub.SyncContact(
        contact_request(customer_id="c-a", email="other@example.com", first_name="Ann", version=3)
    )
    assert clash.contact_id == a.contact_id
    assert [(c.kind, c.owner_contact_id) for c in clash.conflicts] == [("email", b.contact_id)]
    await wait_for(lambda: all_settled(service), what="updates")
    assert sorted(c["identifiers"]["email"] for c in sandbox.contacts) == ["new@example.com", "other@example.com"]
    assert sandbox.get_contact(email="new@example.com")["dataFields"]["FIRSTNAME"] == "Ann"
    old = await service.stub.SyncContact(contact_request(email="old@example.com"))
    assert old.created  # the old address no longer resolves to the moved contact
    assert len(service.rows("SELECT id FROM identity_conflict")) == 1


async def test_five_503s_then_success_delivers_once_in_order_without_holding_up_others(service, sandbox):
    sandbox.inject_fault(status=503, times=5, path_contains="slow")
    first = await service.stub.SyncContact(contact_request(email="slow@example.com", first_name="One"))
    second = await service.stub.SyncContact(contact_request(email="slow@example.com", first_name="Two"))
    others = [await service.stub.SyncContact(contact_request(email=f"fast{i}@example.com", first_name=f"F{i}"))
              for i in range(5)]

    await wait_for(lambda: all_settled(service), timeout=20, what="all deliveries")
    rows = {r["id"]: r for r in outbox_rows(service)}
    slow_ids = [first.outbox_message_ids[0], second.outbox_message_ids[0]]
    assert all(rows[i]["status"] == "delivered" for i in rows)
    assert rows[slow_ids[0]]["attempts"] == 6 and rows[slow_ids[1]]["attempts"] == 1

    slow_requests = [r for r in sandbox.requests if r.headers.get("x-ctdd-message-id") in {str(i) for i in slow_ids}]
    assert [(r.headers["x-ctdd-message-id"], r.status) for r in slow_requests] == (
        [(str(slow_ids[0]), 503)] * 5 + [(str(slow_ids[0]), 201), (str(slow_ids[1]), 200)]
    )
    # The other contacts were delivered while the slow contact was still failing.
    first_success = next(i for i, r in enumerate(sandbox.requests) if r.headers.get("x-ctdd-message-id") == str(slow_ids[0]) and r.status < 300)
    fast_ids = {str(o.outbox_message_ids[0]) for o in others}
    fast_positions = [i for i, r in enumerate(sandbox.requests) if r.headers.get("x-ctdd-message-id") in fast_ids]
    assert len(fast_positions) == 5 and max(fast_positions) < first_success
    assert sandbox.get_contact(email="slow@example.com")["dataFields"]["FIRSTNAME"] == "Two"
    attempts = service.rows("SELECT outcome, response_code FROM delivery_attempt WHERE message_id = :m ORDER BY id",
                            m=slow_ids[0])
    assert [(a["outcome"], a["response_code"]) for a in attempts] == [("retry", 503)] * 5 + [("delivered", 201)]


async def test_400_dead_letters_with_code_and_record_reference(service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox)
    svc = await service_factory(settings)
    req = contact_request(customer_id="c-9", email="tier@example.com", version=7)
    req.profile.custom_fields.update({"loyaltyTier": "gold"})  # mapped to LOYALTY_TIER, unknown to the account
    bad = await svc.stub.SyncContact(req)
    later = await svc.stub.SyncContact(contact_request(customer_id="c-9", first_name="Tia", version=8))
    await wait_for(lambda: all_settled(svc), what="dead letter")
    rows = {r["id"]: r for r in outbox_rows(svc)}
    dead = rows[bad.outbox_message_ids[0]]
    assert dead["status"] == "dead" and dead["last_response_code"] == 400 and dead["attempts"] == 1
    assert (dead["store_key"], dead["record_type"], dead["record_id"], dead["record_version"]) == ("uk", "customer", "c-9", 7)
    assert "LOYALTY_TIER" in dead["last_error"]
    assert "tier@example.com" not in dead["last_error"]
    # The partition moved on (skip policy) ...
    assert rows[later.outbox_message_ids[0]]["status"] == "delivered"
    # ... and the dead message's fields are forgotten, so the identical update is sent again.
    sandbox.add_data_field("LOYALTY_TIER")
    retry = await svc.stub.SyncContact(req)
    assert retry.changed
    await wait_for(lambda: all_settled(svc), what="resend")
    assert sandbox.get_contact(email="tier@example.com")["dataFields"]["LOYALTY_TIER"] == "gold"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.identity.Clear(), "identity"),
        (lambda r: (r.identity.Clear(), setattr(r.identity, "email", "  ")), "identity"),
        (lambda r: setattr(r.identity, "email", "not-an-email"), "identity.email"),
        (lambda r: setattr(r.identity, "mobile_number", "07700 900123"), "identity.mobile_number"),
        (lambda r: setattr(r.consent.sms, "status", pb.CONSENT_STATUS_SUBSCRIBED), "consent.sms.status"),
        (lambda r: setattr(r, "store_key", "nope"), "store_key"),
        (lambda r: r.profile.custom_fields.update({"blob": "x" * 300_000}), ""),
        (lambda r: r.lists.add(list_key="unknown-list", member=True), "lists[0].list_key"),
        (lambda r: setattr(r.profile, "date_of_birth", "31/12/1990"), "profile.date_of_birth"),
        (lambda r: setattr(r.source.modified_at, "seconds", 10**12), "source.modified_at"),
        (lambda r: setattr(r.profile, "locale", "xx_!!"), "profile.locale"),
        (lambda r: setattr(r.profile, "currency", "euro"), "profile.currency"),
        (lambda r: (r.lists.add(list_key="newsletter", member=True), r.lists.add(list_key="newsletter", member=False)),
         "lists[1].member"),
        (lambda r: setattr(r.source, "resource_type", "customer"), "source.resource_id"),
        (lambda r: setattr(r.source, "version", 3), "source.version"),
    ],
    ids=["no-identifier", "blank-email", "bad-email", "mobile-not-e164", "sms-without-mobile", "unknown-store", "oversized",
         "unknown-list", "bad-dob", "timestamp-out-of-range", "bad-locale", "bad-currency", "contradictory-lists",
         "half-a-source", "version-without-source"],
)
async def test_invalid_input_is_rejected_with_field_violations(service, sandbox, mutate, field):
    req = contact_request(customer_id="c-x", email="ok@example.com")
    mutate(req)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.SyncContact(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(info.value)
    assert outbox_rows(service) == []
    rejected = service.rows("SELECT operation, reason, violations FROM rejected_record")
    assert len(rejected) == 1 and rejected[0]["operation"] == "SyncContact"
    assert "ok@example.com" not in json.dumps(rejected[0], default=str)
    assert service.rows("SELECT id FROM contact") == []


async def test_unknown_customer_without_address_is_a_failed_precondition(service):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.SyncContact(contact_request(customer_id="c-nobody", first_name="X"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert service.rows("SELECT id FROM contact") == [] and outbox_rows(service) == []


async def test_store_context_travels_with_the_record(service, sandbox):
    await service.stub.SyncContact(contact_request("de", email="lena@example.de", first_name="Lena"))
    await wait_for(lambda: all_settled(service), what="delivery")
    fields = sandbox.get_contact(email="lena@example.de")["dataFields"]
    assert (fields["STORE"], fields["LOCALE"], fields["CURRENCY"]) == ("de", "de-DE", "EUR")
    [row] = outbox_rows(service)
    assert row["store_key"] == "de"


async def test_custom_fields_struct_values(service, sandbox):
    req = contact_request(email="num@example.com")
    req.profile.custom_fields.update({"ignored": 1})
    assert isinstance(req.profile.custom_fields, struct_pb2.Struct)
    resp = await service.stub.SyncContact(req)
    assert resp.changed  # unmapped custom fields are ignored, identity and store fields still sent


async def test_health_reflection_and_unimplemented_export(service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "ctdd.sync.v1.SyncService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    names = [s.name async for resp in call for s in resp.list_services_response.service]
    assert "ctdd.sync.v1.SyncService" in names and "grpc.health.v1.Health" in names

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="uk")):
            pass
    # the store's catalog is not enabled (issue 15: ExportCatalog works for enabled stores)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_graceful_shutdown_goes_not_serving_and_releases_leases(service_factory, sqlite_url, sandbox):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    sandbox.set_latency(0.5)
    svc = await service_factory(make_settings(sqlite_url, sandbox))
    for i in range(6):
        await svc.stub.SyncContact(contact_request(email=f"g{i}@example.com"))
    await wait_for(lambda: any(r["status"] == "in_flight" for r in outbox_rows(svc)), what="in-flight work")
    await svc.app.grpc.begin_shutdown()
    check = await health_pb2_grpc.HealthStub(svc.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await svc.app.dispatcher.stop(drain_seconds=0.1)
    rows = outbox_rows(svc)
    assert not [r for r in rows if r["status"] == "in_flight" or r["lease_owner"]]
    assert len(rows) == 6  # nothing lost: undelivered messages are pending again


async def test_contact_deleted_in_dotdigital_is_recreated_with_everything_sent_before(service, sandbox):
    req = contact_request(customer_id="c-del", email="del@example.com", first_name="A", last_name="Before",
                          version=1)
    req.profile.billing_address.city = "Leeds"
    req.lists.add(list_key="customers", member=True)
    req.lists.add(list_key="newsletter", member=True)
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    rec = req.consent.email.records.add(text="Yes, email me", url="https://shop.example/signup",
                                        ip_address="203.0.113.5", user_agent="Mozilla/5.0")
    rec.consented_at.FromJsonString("2026-11-01T10:00:00Z")
    await service.stub.SyncContact(req)
    await wait_for(lambda: all_settled(service), what="creation")
    before = sandbox.get_contact(email="del@example.com")
    assert sandbox.delete_contact(email="del@example.com")  # by a user in Dotdigital
    sandbox.reset_requests()

    # one changed field: its message alone would recreate the contact with LASTNAME only
    await service.stub.SyncContact(contact_request(customer_id="c-del", last_name="B", version=2))
    await wait_for(lambda: all_settled(service), what="re-creation")
    assert all(r["status"] == "delivered" for r in outbox_rows(service))
    assert [(r.path, r.status) for r in upserts(sandbox)] == [
        (f"/contacts/v3/contactId/{before['contactId']}", 404), ("/contacts/v3/email/del%40example.com", 201)]
    recreated = sandbox.get_contact(email="del@example.com")
    assert recreated["contactId"] != before["contactId"]
    assert recreated["dataFields"] == {**before["dataFields"], "LASTNAME": "B"}
    assert recreated["dataFields"]["FIRSTNAME"] == "A" and recreated["dataFields"]["BILLING_CITY"] == "Leeds"
    assert (recreated["dataFields"]["CUSTOMER_ID"], recreated["dataFields"]["STORE"]) == ("c-del", "uk")
    assert sorted(lst["id"] for lst in recreated["lists"]) == [1, 2]
    assert [r["text"] for r in recreated["consentRecords"]] == ["Yes, email me"]
    assert recreated["channelProperties"]["email"]["status"] == "subscribed"
    stored = service.rows("SELECT dotdigital_contact_id FROM contact")[0]["dotdigital_contact_id"]
    assert stored == recreated["contactId"]

    # and delta sync goes on from there: only the next change is sent, by the new contactId
    sandbox.reset_requests()
    await service.stub.SyncContact(contact_request(customer_id="c-del", first_name="C", version=3))
    await wait_for(lambda: all_settled(service), what="update")
    [sent] = upserts(sandbox)
    assert sent.path == f"/contacts/v3/contactId/{recreated['contactId']}" and sent.json == {"dataFields": {"FIRSTNAME": "C"}}


@pytest.mark.parametrize(
    "fault",
    [
        dict(status=429, headers={"Retry-After": "1"}),
        dict(status=429, headers={"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}),
        dict(status=400, body={"message": "Error: ERROR_APIUSAGE_EXCEEDED"}, headers={"X-RateLimit-Reset": "1"}),
    ],
    ids=["429-retry-after", "429-x-ratelimit-reset", "legacy-apiusage-exceeded"],
)
async def test_throttling_waits_for_the_reset_and_pauses_the_account(service, sandbox, fault):
    sandbox.inject_fault(times=1, path_contains="/contacts/v3/", **fault)
    await service.stub.SyncContact(contact_request(email="t1@example.com"))
    await wait_for(lambda: all_settled(service), timeout=15, what="delivery after throttling")
    [row] = outbox_rows(service)
    assert row["status"] == "delivered" and row["attempts"] == 2
    throttled, ok = upserts(sandbox)
    assert throttled.status == fault["status"] and ok.status == 201
    # backoff alone would retry after ~0.05 s; the server asked for 1 s
    assert ok.at - throttled.at >= 0.95
