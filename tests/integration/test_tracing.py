"""Traces that join up: a call carrying a W3C ``traceparent`` continues the caller's trace, through to the
Dotdigital call (the delivery span links to the call's span; its HTTP client span is the delivery span's child)."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from ctdd.adapters.forwarder import EventForwarder
from ctdd.adapters.pubsub_push import push_body, push_message_facts
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.telemetry import carrier_from_attributes, trace_metadata
from support import all_settled, contact_request, make_settings, wait_for
from support.otel import EXPORTER, install

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


def traceparent(trace_id: int = TRACE_ID, span_id: int = CALLER_SPAN) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@pytest.fixture(scope="module", autouse=True)
def providers():
    install()
    yield


def server_span(method: str, trace_id: int = TRACE_ID):
    spans = [s for s in EXPORTER.get_finished_spans()
             if s.kind == SpanKind.SERVER and s.attributes.get("rpc.method") == method
             and s.context.trace_id == trace_id]
    assert len(spans) == 1, [(s.name, s.context.trace_id) for s in EXPORTER.get_finished_spans()]
    return spans[0]


async def delivery_spans_linked_to(span, kind: str):
    """The delivery spans of ``kind`` linked to ``span``, once one of them has ended with an HTTP client child."""
    def found():
        deliveries = [s for s in EXPORTER.get_finished_spans() if s.name == f"deliver {kind}"
                      and any(link.context.span_id == span.context.span_id for link in s.links)]
        return deliveries if deliveries and http_children(deliveries[0]) else None
    return await wait_for(found, what=f"a delivery span of {kind} linked to {span.name}")


def http_children(parent):
    return [s for s in EXPORTER.get_finished_spans()
            if s.kind == SpanKind.CLIENT and s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_sync_contact_continues_the_callers_trace_through_to_dotdigital(service_factory, database_url, sandbox):
    EXPORTER.clear()
    svc = await service_factory(make_settings(database_url, sandbox))
    # a call of another trace first: the group commit's committer must not lend its trace to later calls
    await svc.stub.SyncContact(contact_request(email="first@example.com", first_name="F"),
                               metadata=(("traceparent", traceparent(trace_id=TRACE_ID + 1)),))
    await svc.stub.SyncContact(contact_request(email="trace@example.com", first_name="T"),
                               metadata=(("traceparent", traceparent()), ("tracestate", "vendor=value")))
    await wait_for(lambda: all_settled(svc), what="delivery")

    rpc = server_span("SyncContact")
    # the caller's span is the parent of the service's server span: one trace, no second server span
    assert rpc.parent is not None and rpc.parent.span_id == CALLER_SPAN and rpc.parent.is_remote
    assert rpc.attributes["ctdd.store_key"] == "uk" and rpc.attributes["ctdd.created"] is True
    assert rpc.context.trace_state.get("vendor") == "value"
    assert len([s for s in EXPORTER.get_finished_spans() if s.context.trace_id == TRACE_ID
                and s.kind == SpanKind.SERVER]) == 1

    deliveries = await delivery_spans_linked_to(rpc, "contact.upsert")
    [delivery] = deliveries
    assert all(link.context.trace_id == TRACE_ID for link in delivery.links)
    [http] = http_children(delivery)
    assert http.context.trace_id == delivery.context.trace_id
    assert http.attributes.get("http.status_code", http.attributes.get("http.response.status_code")) == 201
    # the Dotdigital path carries the email address: it is not on any span
    assert "trace@example.com" not in repr([dict(s.attributes) for s in EXPORTER.get_finished_spans()])
    # the other call's delivery links to its own trace only
    first = server_span("SyncContact", trace_id=TRACE_ID + 1)
    [other] = await delivery_spans_linked_to(first, "contact.upsert")
    assert [link.context.trace_id for link in other.links] == [TRACE_ID + 1]


async def test_track_event_continues_the_callers_trace_through_to_dotdigital(service_factory, database_url, sandbox):
    EXPORTER.clear()
    svc = await service_factory(make_settings(database_url, sandbox))
    event = pb.BehaviouralEvent(event_id="ev-trace-1", identity=pb.ContactIdentity(email="event@example.com"),
                                custom_event=pb.CustomEvent(name="wishlist_added"))
    event.occurred_at.GetCurrentTime()
    response = await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event),
                                         metadata=(("traceparent", traceparent()),))
    assert response.outbox_message_ids
    await wait_for(lambda: all_settled(svc), what="delivery")

    rpc = server_span("TrackEvent")
    assert rpc.parent.span_id == CALLER_SPAN and rpc.attributes["ctdd.store_key"] == "uk"
    kinds = {s.name.removeprefix("deliver ") for s in EXPORTER.get_finished_spans() if s.name.startswith("deliver ")}
    assert kinds, "no delivery span"
    for kind in kinds:
        [delivery] = await delivery_spans_linked_to(rpc, kind)
        assert http_children(delivery)


async def test_the_adapters_forward_the_trace_of_their_messages(service_factory, database_url, sandbox):
    """Pub/Sub and SQS message attributes -> gRPC metadata of the forwarding call -> the service's trace."""
    EXPORTER.clear()
    svc = await service_factory(make_settings(database_url, sandbox))
    sqs_attributes = {"traceparent": {"DataType": "String", "StringValue": traceparent()}}
    pubsub_attributes = {"googclient_traceparent": traceparent()}
    assert carrier_from_attributes(sqs_attributes) == carrier_from_attributes(pubsub_attributes) == {
        "traceparent": traceparent()}
    # a Pub/Sub push body: its message's attributes
    assert push_message_facts(push_body(b"{}", message_id="m-1", attributes=pubsub_attributes)) == (
        "m-1", {"traceparent": traceparent()})
    assert push_message_facts(push_body(b"{}", message_id="m-2")) == ("m-2", {})
    # one call has one parent: messages of different traces are forwarded without
    assert trace_metadata([{"traceparent": traceparent()}, {"traceparent": traceparent(TRACE_ID + 2)}]) == ()

    event = pb.BehaviouralEvent(event_id="ev-trace-2", identity=pb.ContactIdentity(email="adapter@example.com"),
                                custom_event=pb.CustomEvent(name="wishlist_added"))
    event.occurred_at.GetCurrentTime()
    async with EventForwarder(f"127.0.0.1:{svc.app.port}") as forwarder:
        [outcome] = await forwarder.forward([pb.TrackEventRequest(store_key="uk", behavioural_event=event)],
                                            [carrier_from_attributes(sqs_attributes)])
    assert outcome.ok
    rpc = server_span("TrackEventBatch")
    assert rpc.parent.span_id == CALLER_SPAN


def test_without_a_tracer_provider_nothing_is_instrumented():
    """The no-op path stays free: no server interceptor, no HTTP client instrumentation, no trace kept with a
    message, no instrumentation module even imported (a fresh process: this one has a provider installed)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        import httpx
        import ctdd.runtime.app
        from ctdd.delivery.outbox import with_trace
        from ctdd.telemetry import grpc_server_interceptors, instrument_httpx_client, traced_transport

        inner = httpx.AsyncHTTPTransport()
        client = httpx.AsyncClient()
        instrument_httpx_client(client)
        payload = {"body": {}}
        assert grpc_server_interceptors() == []
        assert traced_transport(inner) is inner
        assert not getattr(client, "_is_instrumented_by_opentelemetry", False)
        assert with_trace(payload) is payload
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.instrumentation")))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_group_commit_units_run_in_their_callers_trace(sqlite_url):
    """The group commit's committer applies the units of many calls: each in its own caller's context (what it
    enqueues keeps that caller's trace), never in the context of the call that started the committer."""
    import asyncio

    from opentelemetry import trace

    from ctdd.db.engine import create_db_engine, upgrade_database
    from ctdd.db.group_commit import GroupCommitRunner

    engine = create_db_engine(sqlite_url)
    upgrade_database(engine)
    runner = GroupCommitRunner(engine)
    tracer = trace.get_tracer("test")
    seen: dict[str, int] = {}

    def unit(name: str):
        def apply(session):
            seen[name] = trace.get_current_span().get_span_context().trace_id
            return name
        return apply

    async def call(name: str) -> int:
        with tracer.start_as_current_span(name) as span:
            assert await runner.run(unit(name)) == name
            return span.get_span_context().trace_id

    try:
        first = await call("first")
        later = await asyncio.gather(*(call(f"call-{i}") for i in range(5)))
    finally:
        await runner.close()
        engine.dispose()
    assert seen["first"] == first
    assert [seen[f"call-{i}"] for i in range(5)] == later
    assert len(set(later)) == 5 and first not in later


async def test_queued_track_events_keep_the_callers_trace_through_the_inbox(service_factory, database_url, sandbox):
    """PROCESSING_QUEUED: the inbox row keeps the call's W3C context, and the event is applied in it, so the
    delivery spans of what it enqueued link to the caller's trace (a contact event, applied set-based, and a
    cart, applied on its own)."""
    import json

    from opentelemetry.trace import format_trace_id

    EXPORTER.clear()
    svc = await service_factory(make_settings(database_url, sandbox))
    custom = pb.BehaviouralEvent(event_id="ev-trace-q1", identity=pb.ContactIdentity(email="queued@example.com"),
                                 custom_event=pb.CustomEvent(name="wishlist_added"))
    custom.occurred_at.GetCurrentTime()
    cart = pb.BehaviouralEvent(event_id="ev-trace-q2", identity=pb.ContactIdentity(email="queued-cart@example.com"),
                               currency="GBP", cart_updated=pb.CartUpdated(cart_id="cart-trace", cart_version=1))
    cart.cart_updated.cart.update({"lineItems": [], "totalPrice": {"currencyCode": "GBP", "centAmount": 1000},
                                   "cartState": "Active"})
    cart.occurred_at.GetCurrentTime()
    traces = {"ev-trace-q1": TRACE_ID + 3, "ev-trace-q2": TRACE_ID + 4}
    for event in (custom, cart):
        response = await svc.stub.TrackEvent(
            pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=pb.PROCESSING_QUEUED),
            metadata=(("traceparent", traceparent(trace_id=traces[event.event_id])),))
        assert response.queued

    def processed():
        rows = svc.rows("SELECT dedupe_key, status, trace FROM event_inbox ORDER BY id")
        return rows if len(rows) == 2 and all(r["status"] == "done" for r in rows) else None

    rows = await wait_for(processed, what="queued events applied")
    for row in rows:  # the stored context: the call's server span, in the caller's trace
        event_id = row["dedupe_key"].rpartition(":")[2]
        assert format_trace_id(traces[event_id]) in json.loads(row["trace"])["traceparent"]
    await wait_for(lambda: all_settled(svc), what="delivery")

    for event_id, trace_id in traces.items():
        rpc = server_span("TrackEvent", trace_id=trace_id)
        kinds = {s.name.removeprefix("deliver ") for s in EXPORTER.get_finished_spans()
                 if s.name.startswith("deliver ") and any(link.context.trace_id == trace_id for link in s.links)}
        assert kinds, f"no delivery span linked to the trace of {event_id}"
        for kind in kinds:
            [delivery] = await delivery_spans_linked_to(rpc, kind)
            assert [link.context.trace_id for link in delivery.links] == [trace_id]
            assert http_children(delivery)
