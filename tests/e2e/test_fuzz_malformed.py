"""Property-based: thousands of malformed SyncContact / TrackEvent requests and commercetools resources sent
through a real gRPC server on SQLite and PostgreSQL (issue 14, "Verified by").

For every request: never INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED (poison is refused INVALID_ARGUMENT, or
accepted when it is merely unusual). Every refusal is logged: a ``rejected_record`` row, or for a request
that could not even be decoded a log line. Valid contacts sent in between all reach the Dotdigital sandbox,
and nothing is retried as if it were a passing fault (no inbox event failed, no outbox retry).

Hypothesis runs in a worker thread with a synchronous gRPC channel while the server runs on the test's
event loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import ct_payloads as ct
from support import make_settings, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from ctdd.testing.commercetools_fake import FakeCommercetools

#: examples per database; each sends several requests (a few thousand in all)
EXAMPLES = 600
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}

# -- strategies ----------------------------------------------------------------------------------------
_specials = st.sampled_from(["", "\x00", "a\x00b", "null", "0", "\n", "é", "uk", "x" * 201, "s" * 20_000,
                             "p" * 70_000, "1e309", "NaN", "jane@example.com", "+447700900123"])
_texts = st.one_of(st.text(max_size=12), _specials,
                   st.builds(lambda ch, n: ch * n, st.sampled_from("xs\x00é\n"), st.integers(0, 3000)))
_numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), _numbers, _texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def _struct(value: dict) -> struct_pb2.Struct:
    def plain(v):  # Struct numbers are doubles
        if isinstance(v, bool) or v is None or isinstance(v, (str, float)):
            return v
        if isinstance(v, int):
            return float(v) if abs(v) < 2**1000 else float("inf")
        if isinstance(v, list):
            return [plain(x) for x in v]
        return {str(k): plain(x) for k, x in v.items()}

    struct = struct_pb2.Struct()
    struct.update(plain(value))
    return struct


_structs = st.dictionaries(st.text(max_size=8), _json, max_size=4).map(_struct)
_timestamps = st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n),
                        st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1))
_int64 = st.integers(-(2**63), 2**63 - 1)
_store = st.one_of(st.just("uk"), st.just("uk"), _texts)


@st.composite
def sync_contacts(draw) -> pb.SyncContactRequest:
    req = pb.SyncContactRequest(store_key=draw(_store))
    ident = req.identity
    ident.email, ident.customer_id = draw(_texts), draw(_texts)
    ident.mobile_number, ident.anonymous_id = draw(_texts), draw(_texts)
    if draw(st.booleans()):
        req.profile.first_name, req.profile.locale = draw(_texts), draw(_texts)
        req.profile.date_of_birth = draw(_texts)
        req.profile.billing_address.country = draw(_texts)
    if draw(st.booleans()):
        req.profile.custom_fields.CopyFrom(draw(_structs))
    if draw(st.booleans()):
        req.source.resource_type, req.source.resource_id = draw(_texts), draw(_texts)
        req.source.version = draw(_int64)
        if draw(st.booleans()):
            req.source.modified_at.CopyFrom(draw(_timestamps))
    for key in draw(st.lists(_texts, max_size=2)):
        req.lists.add(list_key=key, member=True)
    if draw(st.booleans()):
        req.consent.email.status = draw(st.integers(-1, 5))
        record = req.consent.email.records.add(text=draw(_texts), url=draw(_texts), ip_address=draw(_texts),
                                               user_agent=draw(_texts))
        record.consented_at.CopyFrom(draw(_timestamps))
    return req


@st.composite
def behavioural_events(draw) -> pb.TrackEventRequest:
    event = pb.BehaviouralEvent(event_id=draw(_texts), currency=draw(_texts), locale=draw(_texts))
    event.identity.email, event.identity.customer_id = draw(_texts), draw(_texts)
    if draw(st.booleans()):
        event.occurred_at.CopyFrom(draw(_timestamps))
    kind = draw(st.sampled_from(["product_viewed", "cart_updated", "custom_event", "none"]))
    if kind == "product_viewed":
        event.product_viewed.product_id, event.product_viewed.sku = draw(_texts), draw(_texts)
        event.product_viewed.properties.CopyFrom(draw(_structs))
    elif kind == "cart_updated":
        event.cart_updated.cart_id = draw(_texts)
        event.cart_updated.cart_version = draw(_int64)
        cart = {"id": "cart-1", "version": 1, "lineItems": [], "totalPrice": ct.money(100)}
        event.cart_updated.cart.CopyFrom(_struct(_mutate(draw, cart)))
    elif kind == "custom_event":
        event.custom_event.name = draw(_texts)
        event.custom_event.properties.CopyFrom(draw(_structs))
    return pb.TrackEventRequest(store_key=draw(_store), behavioural_event=event,
                                processing=draw(st.sampled_from([pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED])))


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def _mutate(draw, document):
    """``document`` with one to three values replaced by arbitrary JSON (or removed)."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
            parent.pop(path[-1])
        else:
            parent[path[-1]] = draw(_json)
    return document


def _resources(n: int) -> list[dict]:
    customer = ct.customer(f"cf-{n}", f"fuzz-{n}@example.com",
                           addresses=[{"id": "a1", "country": "GB", "mobile": "+447700900123"}],
                           custom={"fields": {"newsletter": True}})
    order = ct.order(f"of-{n}", number=f"N-{n}", email=f"fuzz-{n}@example.com")
    order["paymentInfo"] = {"payments": [{"typeId": "payment", "id": "pay-1"}]}
    return [
        ct.message("customer", f"cf-{n}", "CustomerCreated", version=1, customer=customer),
        ct.message("order", f"of-{n}", "OrderCreated", version=1, order=order),
        ct.change("ResourceUpdated", "customer", f"cf-{n}", version=2),
    ]


@st.composite
def deliveries(draw) -> pb.TrackEventRequest:
    n = draw(st.integers(0, 10**6))
    message = _mutate(draw, draw(st.sampled_from(_resources(n))))
    wrap = draw(st.sampled_from([ct.raw, ct.pubsub_push, ct.sns_notification, ct.eventbridge, ct.cloudevent]))
    try:
        body = wrap(message)
    except (TypeError, ValueError, KeyError, AttributeError):  # the wrapper itself reads the message
        body = json.dumps(message).encode()
    return pb.TrackEventRequest(store_key=draw(_store), commercetools_delivery=body,
                                processing=draw(st.sampled_from([pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED])))


_raw_bytes = st.binary(max_size=64)


class _Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


async def test_malformed_requests_are_refused_cleanly_and_valid_ones_still_arrive(
        service_factory, database_url, sandbox, fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    undecodable = _Counter()
    logging.getLogger("ctdd.api.decoding").addHandler(undecodable)
    tally = {"sent": 0, "refused": 0, "recorded_elsewhere": 0}
    valid: list[str] = []

    def run() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{svc.app.port}") as channel:
            stub = pb_grpc.SyncServiceStub(channel)
            calls = {"sync": channel.unary_unary("/ctdd.sync.v1.SyncService/SyncContact"),
                     "track": channel.unary_unary("/ctdd.sync.v1.SyncService/TrackEvent")}

            def send(call, request) -> None:
                tally["sent"] += 1
                try:
                    call(request, timeout=30)
                except grpc.RpcError as err:
                    assert err.code() not in FORBIDDEN, (err.code(), err.details(), request)
                    if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                        tally["refused"] += 1

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(sync=sync_contacts(), behavioural=behavioural_events(), delivery=deliveries(),
                   raw=_raw_bytes, which=st.sampled_from(["sync", "track"]))
            def example(sync, behavioural, delivery, raw, which):
                send(stub.SyncContact, sync)
                send(stub.TrackEvent, behavioural)
                send(stub.TrackEvent, delivery)
                send(calls[which], raw)
                # a valid contact in between: it must arrive whatever came before
                email = f"valid-{len(valid)}@example.com"
                stub.SyncContact(pb.SyncContactRequest(store_key="uk", identity=pb.ContactIdentity(email=email),
                                                       profile=pb.ContactProfile(first_name="Valid")), timeout=30)
                valid.append(email)

            example()

    try:
        await asyncio.to_thread(run)
    finally:
        logging.getLogger("ctdd.api.decoding").removeHandler(undecodable)
    assert tally["sent"] >= 4 * EXAMPLES and tally["refused"] > EXAMPLES
    # every refusal is logged: a rejected record, or (undecodable) a log line
    recorded = svc.rows("SELECT COUNT(*) AS n FROM rejected_record")[0]["n"]
    assert recorded + undecodable.count >= tally["refused"]
    # every valid message arrives; nothing is retried as if poison were a passing fault
    await wait_for(lambda: all(sandbox.get_contact(email=e) for e in valid), timeout=60,
                   what="every valid contact in the sandbox")
    await wait_for(lambda: not svc.rows("SELECT id FROM event_inbox WHERE status = 'pending'"), timeout=60,
                   what="the inbox drained")
    assert svc.rows("SELECT id, last_error FROM event_inbox WHERE status = 'failed'") == []
    assert svc.rows("SELECT id, error FROM delivery_attempt WHERE outcome = 'retry'") == []
