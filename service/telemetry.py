"""OpenTelemetry: traces and metrics for RPCs, deliveries and the health of every account and store.

The service uses only the OpenTelemetry API; nothing is exported unless a provider is configured.
``configure_telemetry()`` (called by ``ctdd serve`` and ``ctdd worker`` once the settings are loaded) installs the
SDK providers when ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` ask for it, or when ``[service]
metrics_listen`` asks for a Prometheus scrape endpoint:

- ``console``: print spans / metrics to stdout (local debugging);
- ``otlp``: export over OTLP, if ``opentelemetry-exporter-otlp`` is installed (``OTEL_EXPORTER_OTLP_ENDPOINT``);
- ``metrics_listen = "HOST:PORT"``: serve every metric at ``http://HOST:PORT/metrics`` in the Prometheus text
  format (``opentelemetry-exporter-prometheus``), next to the OTLP export if both are set.

Traces that join up (W3C Trace Context, https://www.w3.org/TR/trace-context/):

- an RPC's server span is the one of ``opentelemetry-instrumentation-grpc``'s aio server interceptor
  (:func:`grpc_server_interceptors`, installed only while tracing is on), named after the full method
  (``/ctdd.sync.v1.SyncService/SyncContact``) with the RPC semantic conventions' ``rpc.*`` attributes; it continues the caller's trace from the ``traceparent`` /
  ``tracestate`` metadata. The service's own code does not open a second server span for the same call:
  :func:`start_span` with ``SpanKind.SERVER`` adds its attributes (``ctdd.store_key`` ...) to that span, and
  opens its own server span only when no server span is current (the servicer called without the gRPC
  server, or tracing turned on after the server started);
- the adapters (Pub/Sub push, SQS) pass the ``traceparent`` / ``tracestate`` message attributes of what they
  forward on as gRPC metadata (:func:`carrier_from_attributes`, :func:`trace_metadata`);
- every outbox message keeps the W3C context of the span that enqueued it (``trace`` in its payload); the
  delivery spans ``deliver <kind>`` / ``deliver bulk <kind>`` (consumer, one per attempt) link to it: a
  delivery runs later, in another process perhaps, so it is linked rather than a child; a queued TrackEvent keeps
  its call's context in its inbox row and is applied in it (:func:`context_from_carrier`, ``ctdd.ingest.inbox``);
- each HTTP call to Dotdigital and commercetools is a client span (``opentelemetry-instrumentation-httpx``,
  :func:`traced_transport`, :func:`instrument_httpx_client`), a child of the span that made it; its URL
  attributes are redacted (an email address in a Dotdigital path is never put on a span).

Spans are no-ops while no tracer provider is installed, and cost nothing then: no interceptor, no client
instrumentation, no span objects (:func:`start_span`).

Metrics: the list, with each one's type, unit, attributes and meaning, is docs/metrics.md (checked against what
is exported by tests/integration/test_metrics.py). The instruments recorded in the code are here; the gauges
that read the database (outbox and inbox depth and age, bulk imports, triggers, enrolment allowance, back-sync
lag) and the process's rate budget are observed by ``ctdd.runtime.metrics``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from typing import ContextManager, Sequence

from opentelemetry import context as otel_context
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


#: a provider named by the environment is loaded by the API on first use: then ask the API every time
_PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_UNKNOWN = object()


def tracing_enabled() -> bool:
    """True once a tracer provider is installed (``configure_telemetry``, or an embedding application).

    Asked on every RPC and every enqueue, so the answer while none is installed is one attribute read: the API's
    ``get_tracer_provider()`` looks the environment up each time (about 2 µs on the benchmark machine). Falls
    back to that when the API's global is not where this expects it."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _PROVIDER_FROM_ENVIRONMENT:
        return False
    if provider is _UNKNOWN or provider is None:
        provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider)


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
    if kind is trace.SpanKind.SERVER:
        # The gRPC interceptor's span is the RPC's server span (it continued the caller's trace): ours would
        # be a second server span for the same call, so its attributes go on that one.
        current = trace.get_current_span()
        if getattr(current, "kind", None) is trace.SpanKind.SERVER and current.is_recording():
            if attributes:
                current.set_attributes(attributes)
            return contextlib.nullcontext(current)
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes, links=links)


# -- traces that join up ------------------------------------------------------------------------------------

#: the W3C Trace Context keys (``traceparent`` / ``tracestate``), as gRPC metadata and message attributes carry them
TRACE_KEYS = ("traceparent", "tracestate")


def grpc_server_interceptors() -> list:
    """``opentelemetry-instrumentation-grpc``'s aio server interceptor while tracing is on, else nothing (the
    no-op path has no interceptor at all). Health checks and reflection get no spans (probes would flood the
    traces)."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_name

    return [aio_server_interceptor(filter_=negate(any_of(
        service_name("grpc.health.v1.Health"),
        service_name("grpc.reflection.v1alpha.ServerReflection"),
        service_name("grpc.reflection.v1.ServerReflection"),
    )))]


async def _redact_request_url(span: trace.Span, request) -> None:
    """Request hook of the HTTP client spans: the URL attributes without personal data (a Dotdigital path may
    carry an email address, a commercetools query an email or phone number) nor credentials."""
    from ctdd.redaction import redact_text

    url = redact_text(str(request.url))
    for key in ("url.full", "http.url"):
        if key in getattr(span, "attributes", {}):
            span.set_attribute(key, url)


def traced_transport(inner):
    """``inner`` (an httpx async transport) wrapped by ``opentelemetry-instrumentation-httpx``'s transport while
    tracing is on: each exchange is an HTTP client span (semantic conventions for HTTP clients), child of the
    current span, with the W3C context injected into the request. ``inner`` itself while tracing is off."""
    if not tracing_enabled():
        return inner
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

    return AsyncOpenTelemetryTransport(inner, request_hook=_redact_request_url)


def instrument_httpx_client(client) -> None:
    """The same for an ``httpx.AsyncClient`` built with httpx's own transport (commercetools)."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, request_hook=_redact_request_url)


def carrier_from_attributes(attributes) -> dict[str, str]:
    """The W3C trace context of a message's attributes: Pub/Sub's ``attributes`` (name -> string) or SQS's
    ``MessageAttributes`` (name -> {"DataType", "StringValue"}); empty when it has none. ``traceparent`` /
    ``tracestate``, or the ``googclient_``-prefixed names Google's Pub/Sub client libraries use when their
    OpenTelemetry tracing is on."""
    carrier: dict[str, str] = {}
    if not isinstance(attributes, dict):
        return carrier
    for key in TRACE_KEYS:
        value = attributes.get(key) or attributes.get("googclient_" + key)
        if isinstance(value, dict):
            value = value.get("StringValue")
        if isinstance(value, str) and value and len(value) <= 512:
            carrier[key] = value
    return carrier


def trace_metadata(carriers) -> tuple[tuple[str, str], ...]:
    """gRPC metadata continuing the trace of the messages forwarded in one call: their shared W3C context, or
    nothing when they carry none or different ones (one call has one parent; the events are still forwarded)."""
    found = {tuple(sorted(c.items())) for c in carriers if c}
    if len(found) != 1:
        return ()
    return tuple(found.pop())


def current_trace_carrier() -> dict[str, str]:
    """The W3C trace context of the current span, to store with an outbox message."""
    carrier: dict[str, str] = {}
    if tracing_enabled():
        inject(carrier)
    return carrier


def context_from_carrier(carrier: dict[str, str] | None) -> contextvars.Context | None:
    """A copy of the current context in which the span of ``carrier`` (a stored W3C trace context) is current:
    work run in it (``context.run``) continues that trace, and what it enqueues links to it. None while tracing
    is off or when ``carrier`` holds no valid span context."""
    if not carrier or not tracing_enabled():
        return None
    parent = extract(carrier)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    context = contextvars.copy_context()
    context.run(otel_context.attach, parent)  # never detached: the copy is dropped with what runs in it
    return context


def links_from_carrier(carrier: dict[str, str] | None) -> list[trace.Link]:
    if not carrier:
        return []
    ctx = trace.get_current_span(extract(carrier)).get_span_context()
    return [trace.Link(ctx)] if ctx.is_valid else []


def configure_telemetry(service_name: str = "ctdd-sync", *, metrics_listen: str | None = None) -> None:
    """Install the SDK providers the environment asks for (see the module's docstring); ``metrics_listen``
    (``[service] metrics_listen``, HOST:PORT): also serve the metrics for Prometheus to scrape."""
    traces = os.environ.get("OTEL_TRACES_EXPORTER", "none").lower()
    metric_exporter = os.environ.get("OTEL_METRICS_EXPORTER", "none").lower()
    if traces == "none" and metric_exporter == "none" and not metrics_listen:
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
    readers = []
    if metric_exporter != "none":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

        if metric_exporter == "console":
            mexp = ConsoleMetricExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # optional extra

            mexp = OTLPMetricExporter()
        readers.append(PeriodicExportingMetricReader(mexp))
    if metrics_listen:
        readers.append(_prometheus_reader(metrics_listen))
    if readers:
        from opentelemetry.sdk.metrics import MeterProvider

        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    log.info("OpenTelemetry enabled (traces=%s, metrics=%s%s)", traces, metric_exporter,
             f", Prometheus endpoint http://{metrics_listen}/metrics" if metrics_listen else "")


def _prometheus_reader(listen: str):
    """A Prometheus metric reader, its registry served at ``http://<listen>/metrics`` (prometheus_client's
    HTTP server, in a daemon thread)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    from ctdd.config.errors import ConfigError

    host, _, port = listen.rpartition(":")
    try:
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    except OSError as exc:
        raise ConfigError(f"[service] metrics_listen = {listen!r}: cannot listen there "
                          f"({exc.strerror or type(exc).__name__})", key="service.metrics_listen") from None
    return PrometheusMetricReader()


def shutdown_telemetry() -> None:
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
