"""Poison is refused, not retried (issue 14, items 8-11 and the request limits of 14): malformed input gets
INVALID_ARGUMENT with a field violation over real gRPC (or ``rejected`` in the inbox), never INTERNAL or
UNKNOWN, on SQLite and PostgreSQL; errors echo input only in bounded form; a refused request is not kept in
memory. The delivery side dead-letters at once a request that can never succeed (a URL over the limit)."""

from __future__ import annotations

import copy
import gc

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from support import ct_payloads as ct
from support import field_violations, make_settings, wait_for
from ctdd.dotdigital.client import MAX_URL_LENGTH, DotdigitalClient
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools

EMAIL = pb.ContactIdentity(email="poison@example.com")


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


@pytest.fixture
async def svc(service_factory, database_url, sandbox, fake_ct):
    return await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))


def _customer_message(change) -> bytes:
    customer = ct.customer("c-1", "jane@example.com")
    change(customer)
    return ct.raw(ct.message("customer", "c-1", "CustomerCreated", version=1, customer=customer))


def _order_message(change) -> bytes:
    order = ct.order("o-1", number="N-1", email="jane@example.com")
    change(order)
    return ct.raw(ct.message("order", "o-1", "OrderCreated", version=1, order=order))


POISON = {
    "email as an object": (_customer_message(lambda c: c.__setitem__("email", {"a": 1})), "customer.email"),
    "customer without id": (_customer_message(lambda c: c.pop("id")), "customer.id"),
    "customer id a number": (_customer_message(lambda c: c.__setitem__("id", 5)), "customer.id"),
    "customer version 2^63": (_customer_message(lambda c: c.__setitem__("version", 2**63)), "customer.version"),
    "offset overflows": (_customer_message(lambda c: c.__setitem__("lastModifiedAt", "0001-01-01T00:00:00+23:59")),
                         "customer.lastModifiedAt"),
    "addresses [1]": (_customer_message(lambda c: c.__setitem__("addresses", [1])), "customer.addresses[0]"),
    "totalPrice a string": (_order_message(lambda o: o.__setitem__("totalPrice", "10")), "order.totalPrice"),
    "lineItems [1]": (_order_message(lambda o: o.__setitem__("lineItems", [1])), "order.lineItems[0]"),
    "order without id": (_order_message(lambda o: o.pop("id")), "order.id"),
    "currencyCode EURO": (_order_message(lambda o: o["totalPrice"].__setitem__("currencyCode", "EURO")),
                          "order.totalPrice.currencyCode"),
    "resourceVersion 2^63": (ct.raw(ct.message("customer", "c-2", "CustomerEmailVerified", version=2**63)),
                             "resourceVersion"),
    "createdAt overflows": (ct.raw(dict(ct.message("customer", "c-3", "CustomerEmailVerified", version=1),
                                        createdAt="9999-12-31T23:59:59-23:59")), "createdAt"),
    "400-character message id": (ct.raw(dict(ct.message("customer", "c-4", "CustomerEmailVerified", version=1),
                                             id="m" * 400)), "message id"),
    "NUL in a resource id": (ct.raw(ct.message("customer", "c\x005", "CustomerEmailVerified", version=1)), "NUL"),
    "NaN": (ct.raw(ct.message("customer", "c-6", "CustomerEmailVerified", version=1)).replace(
        b'"resourceVersion": 1', b'"resourceVersion": NaN'), "not JSON"),
}


def _delivery(body: bytes, processing=pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=body, processing=processing)


@pytest.mark.parametrize("processing", [pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED], ids=["applied", "queued"])
@pytest.mark.parametrize("name", sorted(POISON))
async def test_malformed_commercetools_input_is_invalid_argument_and_recorded(svc, name, processing):
    body, mentioned = POISON[name]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await svc.stub.TrackEvent(_delivery(body, processing))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    assert any(mentioned in description for description in violations.values()), violations
    rejected = svc.rows("SELECT operation, reason FROM rejected_record")
    assert [r["operation"] for r in rejected] == ["TrackEvent"] and mentioned in rejected[0]["reason"]
    assert svc.rows("SELECT id FROM event_inbox") == []  # nothing queued to be retried


async def test_a_fetched_resource_of_the_wrong_shape_is_rejected_not_retried(svc, fake_ct):
    fake_ct.add("customers", dict(ct.customer("c-7", "x@example.com", version=2), email={"not": "a string"}))
    change = ct.raw(ct.change("ResourceUpdated", "customer", "c-7", version=2))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await svc.stub.TrackEvent(_delivery(change))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "customer" in refused.value.details() and "email" in refused.value.details()
    # queued: the inbox rejects it at the first try (no retry), with the reason
    queued = await svc.stub.TrackEvent(_delivery(change, pb.PROCESSING_QUEUED))
    assert queued.queued
    rows = await wait_for(lambda: [r for r in svc.rows("SELECT status, attempts, last_error FROM event_inbox")
                                   if r["status"] != "pending"], what="the inbox outcome")
    assert rows[0]["status"] == "rejected" and rows[0]["attempts"] <= 1 and "email" in rows[0]["last_error"]


async def test_values_over_a_column_length_are_refused_and_a_batch_answers_per_event(svc, sandbox):
    def viewed(event_id: str, product_id: str = "p-1", currency: str = "") -> pb.TrackEventRequest:
        return pb.TrackEventRequest(store_key="uk", behavioural_event=pb.BehaviouralEvent(
            event_id=event_id, identity=EMAIL, currency=currency, product_viewed=pb.ProductViewed(product_id=product_id)))

    batch = pb.TrackEventBatchRequest(events=[
        viewed("good-1"),
        viewed("bad-nul\x00"),
        viewed("bad-long-product", product_id="p" * 70_000),
        viewed("bad-currency", currency="EURO"),
        viewed("good-2", product_id="p-2"),
    ])
    batch.events[4].processing = pb.PROCESSING_QUEUED
    reply = await svc.stub.TrackEventBatch(batch)
    codes = [grpc.StatusCode.OK.value[0] if r.code == 0 else r.code for r in reply.results]
    assert codes == [0, 3, 3, 3, 0], [(r.code, r.message) for r in reply.results]
    assert all(len(r.message) <= 500 for r in reply.results)
    # SyncContact: a source.resource_type of 200 characters (the column has 50)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await svc.stub.SyncContact(pb.SyncContactRequest(
            store_key="uk", identity=EMAIL, source=pb.SourceInfo(resource_type="t" * 200, resource_id="r", version=1)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source.resource_type" in field_violations(refused.value)
    # the good events were applied and reach Dotdigital
    await wait_for(lambda: sandbox.get_contact(email="poison@example.com"), what="the contact of the good events")


async def test_nul_and_nan_in_requests_are_invalid_argument(svc):
    nan = struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=float("nan"))})
    requests = [
        svc.stub.SyncContact(pb.SyncContactRequest(store_key="uk", identity=EMAIL,
                                                   profile=pb.ContactProfile(first_name="Ja\x00ne"))),
        svc.stub.SyncContact(pb.SyncContactRequest(store_key="uk", identity=EMAIL,
                                                   profile=pb.ContactProfile(custom_fields=nan))),
        svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=pb.BehaviouralEvent(
            event_id="e-inf", identity=EMAIL, product_viewed=pb.ProductViewed(product_id="p", properties=nan)))),
    ]
    for call in requests:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(refused.value)


@pytest.mark.parametrize("processing", [pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED], ids=["applied", "queued"])
async def test_enum_values_this_version_does_not_know_are_invalid_argument(svc, processing):
    """A newer client's processing or priority value is refused, not read as the default (applied, live)."""
    event = pb.BehaviouralEvent(event_id="e-enum", identity=EMAIL, product_viewed=pb.ProductViewed(product_id="p"))
    for change, field in ((dict(processing=99), "processing"), (dict(processing=processing, priority=77), "priority")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event, **change))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown value" in field_violations(refused.value)[field]
    batch = await svc.stub.TrackEventBatch(pb.TrackEventBatchRequest(events=[
        pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=processing, priority=77),
        pb.TrackEventRequest(store_key="uk", behavioural_event=pb.BehaviouralEvent(
            event_id="e-ok", identity=EMAIL, product_viewed=pb.ProductViewed(product_id="p")), processing=processing)]))
    assert [r.code for r in batch.results] == [code_pb2.INVALID_ARGUMENT, code_pb2.OK]
    for table in ("processed_event", "event_inbox"):  # neither applied nor queued
        assert svc.rows(f"SELECT dedupe_key FROM {table} WHERE dedupe_key LIKE '%e-enum%'") == []


async def test_a_huge_store_key_is_invalid_argument_echoed_and_recorded_in_bounded_form(svc):
    key = "s" * 20_000
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await svc.stub.SyncContact(pb.SyncContactRequest(store_key=key, identity=EMAIL))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED
    assert len(field_violations(refused.value)["store_key"]) < 200
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await svc.stub.TrackEvent(pb.TrackEventRequest(store_key=key + "\nCRITICAL forged", commercetools_delivery=b"{}"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rows = svc.rows("SELECT store_key, reason FROM rejected_record ORDER BY id")
    assert len(rows) == 2 and all(len(r["store_key"]) <= 100 and len(r["reason"]) <= 2000 for r in rows)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def _deep_sync_contact(depth: int) -> bytes:
    """A SyncContactRequest whose profile.custom_fields nests ``depth`` lists (protobuf decodes 100 levels)."""
    data = struct_pb2.Value(string_value="x").SerializeToString()
    for _ in range(depth):
        listed = b"\x0a" + _varint(len(data)) + data  # ListValue.values
        data = b"\x32" + _varint(len(listed)) + listed  # Value.list_value
    entry = b"\x0a\x01k" + b"\x12" + _varint(len(data)) + data
    struct = b"\x0a" + _varint(len(entry)) + entry
    custom = pb.ContactProfile.DESCRIPTOR.fields_by_name["custom_fields"].number
    profile = bytes([(custom << 3) | 2]) + _varint(len(struct)) + struct
    field = pb.SyncContactRequest.DESCRIPTOR.fields_by_name["profile"].number
    return b"\x0a\x02uk" + bytes([(field << 3) | 2]) + _varint(len(profile)) + profile


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff", b"\x0a\x05ab", _deep_sync_contact(200)],
                         ids=["garbage", "truncated", "200 deep"])
async def test_undecodable_requests_are_invalid_argument(svc, raw):
    call = svc.channel.unary_unary("/ctdd.sync.v1.SyncService/SyncContact")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(raw)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value)
    # the server still answers
    with pytest.raises(grpc.aio.AioRpcError) as later:
        await svc.stub.SyncContact(pb.SyncContactRequest(store_key="nope", identity=EMAIL))
    assert later.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_refused_requests_are_not_kept_in_memory(svc):
    big = b"{" * (3 * 1024 * 1024)
    requests = [
        ("TrackEvent", pb.TrackEventRequest(store_key="uk", commercetools_delivery=b"x" * (5 * 1024 * 1024))),
        ("TrackEvent", pb.TrackEventRequest(store_key="nope", commercetools_delivery=big)),
        ("TrackEvent", pb.TrackEventRequest(store_key="uk", commercetools_delivery=big)),
        ("TrackEvent", pb.TrackEventRequest(store_key="uk", commercetools_delivery=big,
                                            processing=pb.PROCESSING_QUEUED)),
        ("SyncContact", pb.SyncContactRequest(store_key="uk", profile=pb.ContactProfile(first_name="x" * 7_000_000))),
    ]
    gc.collect()
    gc.disable()  # as `ctdd serve` runs (rare collections): only reference cycles would keep a request alive
    try:
        for method, request in requests:
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await getattr(svc.stub, method)(request)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        types = (pb.TrackEventRequest, pb.SyncContactRequest)
        kept = [o for o in gc.get_objects() if isinstance(o, types) and not any(o is r for _, r in requests)]
    finally:
        gc.enable()
    assert kept == []


async def test_a_request_whose_url_is_too_long_fails_at_once_and_is_not_retryable(sandbox):
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password,
                                base_url=sandbox.base_url) as client:
        for record_id in ("p" * 70_000, "p" * (MAX_URL_LENGTH + 1)):
            with pytest.raises(DotdigitalError) as failed:
                await client.get_account_record("ProductViews", record_id)
            assert failed.value.retryable is False and failed.value.code == "url_too_long"
        assert not [r for r in sandbox.requests if "ProductViews" in r.path]  # never sent


async def test_an_outbox_message_with_a_url_over_the_limit_is_dead_lettered_at_once(service_factory, database_url,
                                                                                     sandbox):
    from sqlalchemy.orm import Session

    from ctdd.delivery import outbox

    svc = await service_factory(make_settings(database_url, sandbox))
    await svc.stub.SyncContact(pb.SyncContactRequest(store_key="uk", identity=EMAIL))
    await wait_for(lambda: sandbox.get_contact(email="poison@example.com"), what="the contact")
    contact_id = svc.rows("SELECT id FROM contact")[0]["id"]
    with Session(svc.engine) as session, session.begin():  # what an older version could have accepted
        template = svc.rows("SELECT account FROM outbox_message ORDER BY id LIMIT 1")[0]
        mid = outbox.enqueue(session, contact_id=contact_id, account=template["account"], kind=outbox.INSIGHT_UPSERT,
                             payload={"collection": "ProductViews", "record_id": "p" * 70_000,
                                      "record": {"productId": "p"}, "scope": "contact",
                                      "collection_type": "contact"},
                             ref=outbox.RecordRef("uk", "product", "p", None))
    svc.app._wake_dispatcher()
    row = await wait_for(lambda: [r for r in svc.rows("SELECT status, attempts FROM outbox_message WHERE id = :i", i=mid)
                                  if r["status"] in ("dead", "delivered")], timeout=20, what="the message settled")
    assert row[0]["status"] == "dead" and row[0]["attempts"] == 1
