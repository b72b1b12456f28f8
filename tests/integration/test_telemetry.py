"""OpenTelemetry: the RPC span, one span per delivery attempt linked to it, and delivery metrics."""

import pytest
from opentelemetry.trace import SpanKind

from support import all_settled, contact_request, make_settings, wait_for
from support.otel import EXPORTER, install, metric_points


@pytest.fixture(scope="module", autouse=True)
def providers():
    install()
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
    # the RPC's server span is the gRPC instrumentation's; the service's attributes are on it
    [rpc] = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("rpc.method") == "SyncContact"]
    assert rpc.name == "/ctdd.sync.v1.SyncService/SyncContact"
    deliveries = [s for s in spans if s.name == "deliver contact.upsert"]
    assert len(deliveries) == 2
    assert [d.attributes["http.response.status_code"] for d in deliveries] == [503, 201]
    assert [d.attributes["ctdd.attempt"] for d in deliveries] == [1, 2]
    for d in deliveries:
        assert [link.context.span_id for link in d.links] == [rpc.context.span_id]
    assert rpc.attributes["ctdd.store_key"] == "uk" and rpc.attributes["ctdd.changed"] is True
    # no personal data in span attributes
    assert "otel@example.com" not in repr([dict(s.attributes) for s in spans])

    attempts = [(attrs, p.value) for attrs, p in metric_points()["ctdd.delivery.attempts"]]
    assert any(a == {"kind": "contact.upsert", "outcome": "retry", "account": "main", "store": "uk",
                     "http.response.status_code": 503} and v >= 1 for a, v in attempts), attempts
    assert any(a["outcome"] == "delivered" and a["http.response.status_code"] == 201 and v >= 1
               for a, v in attempts), attempts
