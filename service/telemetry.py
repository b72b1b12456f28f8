"""OpenTelemetry: traces and metrics for RPCs and deliveries.

The service uses only the OpenTelemetry API; nothing is exported unless a provider is configured.
``configure_telemetry()`` (called by ``ctdd serve``) installs the SDK providers when
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` ask for it:

- ``console``: print spans / metrics to stdout (local debugging);
- ``otlp``: export over OTLP, if ``opentelemetry-exporter-otlp`` is installed (``OTEL_EXPORTER_OTLP_ENDPOINT``).

Spans (:func:`start_span`; no-ops while no provider is installed): ``SyncContact`` and ``TrackEvent``
(server), ``deliver <kind>`` / ``deliver bulk <kind>`` (consumer, one per attempt, linked to the span that
enqueued the message through the W3C trace context kept in the outbox payload).
Metrics: ``ctdd.outbox.enqueued``, ``ctdd.delivery.attempts`` (by outcome), ``ctdd.delivery.duration`` (s);
programs: ``ctdd.programs.decisions`` (by kind, outcome, reason), ``ctdd.programs.enrolment_calls`` (by account,
outcome) and the gauge ``ctdd.programs.backlog`` (per account: triggers the hourly enrolment allowance cannot
send this hour).
Delivery pauses (``ctdd.delivery.account_guard``): the gauge ``ctdd.delivery.account_paused`` (1 while an account
is paused for HTTP 401/403, by account) and the counter ``ctdd.delivery.parked`` (messages parked, by account).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import ContextManager, Sequence

from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject

log = logging.getLogger(__name__)

tracer = trace.get_tracer("ctdd-sync")
meter = metrics.get_meter("ctdd-sync")

enqueued_counter = meter.create_counter("ctdd.outbox.enqueued", unit="{message}", description="Outbox messages enqueued")
attempts_counter = meter.create_counter("ctdd.delivery.attempts", unit="{attempt}",
                                        description="Delivery attempts to Dotdigital, by outcome")
delivery_duration = meter.create_histogram("ctdd.delivery.duration", unit="s",
                                           description="Duration of one delivery attempt")
program_decisions = meter.create_counter("ctdd.programs.decisions", unit="{trigger}",
                                         description="Program trigger decisions, by kind, outcome and reason")
enrolment_calls = meter.create_counter("ctdd.programs.enrolment_calls", unit="{call}",
                                       description="POST /v2/programs/enrolments calls, by account and outcome")
account_paused = meter.create_gauge("ctdd.delivery.account_paused", unit="{account}",
                                    description="1 while delivery to a Dotdigital account is paused because it "
                                                "refused the credentials (HTTP 401/403), else 0; by account")
parked_counter = meter.create_counter("ctdd.delivery.parked", unit="{message}",
                                      description="Outbox messages parked after max_attempts retryable failures, "
                                                  "by account")
program_backlog = meter.create_gauge("ctdd.programs.backlog", unit="{trigger}",
                                     description="Triggers waiting for an enrolment call beyond what the account's "
                                                 "hourly enrolment allowance can send this hour")


#: what :func:`start_span` returns while no tracer provider is installed (reusable, stateless)
_NO_SPAN: ContextManager[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def tracing_enabled() -> bool:
    """True once a tracer provider is installed (``configure_telemetry``, or an embedding application)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def start_span(name: str, *, kind: trace.SpanKind, attributes: dict | None = None,
               links: Sequence[trace.Link] = ()) -> ContextManager[trace.Span]:
    """``tracer.start_as_current_span(...)``, or a no-op context (yielding a non-recording span) while
    tracing is off.

    The API's own no-op path still builds a span and attaches and detaches a context: about 15 µs per
    RPC on the 2-core benchmark machine, 7 % of queued TrackEvent ingest (bench/run.py (a)). A provider
    installed later (even after start-up) is used from the next span on.
    """
    if not tracing_enabled():
        return _NO_SPAN
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes, links=links)


def current_trace_carrier() -> dict[str, str]:
    """The W3C trace context of the current span, to store with an outbox message."""
    carrier: dict[str, str] = {}
    if tracing_enabled():
        inject(carrier)
    return carrier


def links_from_carrier(carrier: dict[str, str] | None) -> list[trace.Link]:
    if not carrier:
        return []
    ctx = trace.get_current_span(extract(carrier)).get_span_context()
    return [trace.Link(ctx)] if ctx.is_valid else []


def configure_telemetry(service_name: str = "ctdd-sync") -> None:
    traces = os.environ.get("OTEL_TRACES_EXPORTER", "none").lower()
    metric_exporter = os.environ.get("OTEL_METRICS_EXPORTER", "none").lower()
    if traces == "none" and metric_exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    if traces != "none":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        provider = TracerProvider(resource=resource)
        if traces == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # optional extra

            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    if metric_exporter != "none":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

        if metric_exporter == "console":
            mexp = ConsoleMetricExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # optional extra

            mexp = OTLPMetricExporter()
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(mexp)]))
    log.info("OpenTelemetry enabled (traces=%s, metrics=%s)", traces, metric_exporter)


def shutdown_telemetry() -> None:
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
