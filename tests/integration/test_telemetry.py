"""OpenTelemetry: the RPC span, one span per delivery attempt linked to it, and delivery metrics."""

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support import all_settled, contact_request, make_settings, wait_for

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def providers():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    yield


async def test_spans_link_delivery_attempts_to_the_rpc(service_factory, sqlite_url, sandbox):
    EXPORTER.clear()
    svc = await service_factory(make_settings(sqlite_url, sandbox))
    sandbox.inject_fault(status=503, times=1, path_contains="/contacts/v3/")
    await svc.stub.SyncContact(contact_request(email="otel@example.com", first_name="O"))
    await wait_for(lambda: all_settled(svc), what="delivery")
    # the delivery span ends once the outcome is recorded, which may be just after the row says delivered
    await wait_for(lambda: len([s for s in EXPORTER.get_finished_spans() if s.name == "deliver contact.upsert"]) >= 2,
                   what="delivery spans")

    spans = EXPORTER.get_finished_spans()
    [rpc] = [s for s in spans if s.name == "SyncContact"]
    deliveries = [s for s in spans if s.name == "deliver contact.upsert"]
    assert len(deliveries) == 2
    assert [d.attributes["http.response.status_code"] for d in deliveries] == [503, 201]
    assert [d.attributes["ctdd.attempt"] for d in deliveries] == [1, 2]
    for d in deliveries:
        assert [link.context.span_id for link in d.links] == [rpc.context.span_id]
    assert rpc.attributes["ctdd.store_key"] == "uk" and rpc.attributes["ctdd.changed"] is True
    # no personal data in span attributes
    assert "otel@example.com" not in repr([dict(s.attributes) for s in spans])

    data = READER.get_metrics_data()
    points = {
        (m.name, tuple(sorted(p.attributes.items()))): getattr(p, "value", getattr(p, "count", None))
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics for p in m.data.data_points
    }
    assert points[("ctdd.delivery.attempts", (("kind", "contact.upsert"), ("outcome", "retry")))] >= 1
    assert points[("ctdd.delivery.attempts", (("kind", "contact.upsert"), ("outcome", "delivered")))] >= 1
