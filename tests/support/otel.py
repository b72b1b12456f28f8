"""In-memory OpenTelemetry providers shared by the tests of one process.

OpenTelemetry accepts one global tracer provider and one global meter provider per process (a second
``set_*_provider`` is ignored with a warning), so every test module that reads spans or metrics installs these
same ones with :func:`install` and clears what it reads."""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()
_installed = False


def install() -> None:
    """Install the in-memory providers (once per process)."""
    global _installed
    if _installed:
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    _installed = True


def metric_points() -> dict[str, list]:
    """Every data point the reader collects now, by metric name: ``(attributes dict, point)``."""
    found: dict[str, list] = {}
    data = READER.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found.setdefault(m.name, []).extend((dict(p.attributes), p) for p in m.data.data_points)
    return found
