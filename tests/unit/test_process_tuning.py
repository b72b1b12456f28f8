"""Process-level settings of the long-running commands, each checked in a fresh interpreter (they are
process-wide, and the test process has its own collector and a tracer provider of its own)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_freeze_startup_heap_exempts_startup_objects_and_still_collects_new_cycles():
    out = run_python("""
        import gc, weakref
        import ctdd.runtime.app  # the start-up heap: SQLAlchemy, protobuf, gRPC, OpenTelemetry
        from ctdd.runtime.process_tuning import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap
        assert gc.get_freeze_count() == 0
        freeze_startup_heap()
        assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD

        class Node:
            pass
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after start-up
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        print("collected" if gone() is None else "leaked")
    """)
    assert out == "collected"


def test_the_collector_is_paused_while_a_batch_is_applied_and_on_again_after_the_last():
    out = run_python("""
        import gc, threading, weakref
        from ctdd import collector
        from ctdd.runtime.process_tuning import freeze_startup_heap
        with collector.paused():  # off by default (a test process, an embedding application)
            assert gc.isenabled()
        freeze_startup_heap()
        inside, release = threading.Event(), threading.Event()

        def other_batch():
            with collector.paused():
                inside.set()
                release.wait(10)

        t = threading.Thread(target=other_batch)
        with collector.paused():
            assert not gc.isenabled()
            t.start()
            inside.wait(10)
        assert not gc.isenabled()  # the other thread's batch is still being applied
        release.set()
        t.join(10)
        assert gc.isenabled()
        # batches that overlap without a gap: a young collection still runs every MAX_PAUSE_SECONDS
        collector.MAX_PAUSE_SECONDS = 0.0
        with collector.paused():
            with collector.paused():
                class Node:
                    pass
                a = Node(); a.me = a
                gone = weakref.ref(a)
                del a
            assert not gc.isenabled() and gone() is None
        gc.disable()  # switched off by someone else: a pause leaves it off
        with collector.paused():
            pass
        print("enabled" if gc.isenabled() else "left off")
    """)
    assert out == "left off"


def test_spans_are_noops_until_a_tracer_provider_is_installed():
    out = run_python("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from ctdd.telemetry import current_trace_carrier, start_span, tracing_enabled

        assert not tracing_enabled()
        with start_span("TrackEvent", kind=trace.SpanKind.SERVER, attributes={"a": 1}) as span:
            assert not span.is_recording()
            assert current_trace_carrier() == {}

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # installed after the first span: used from the next one on
        assert tracing_enabled()
        with start_span("TrackEvent", kind=trace.SpanKind.SERVER, attributes={"a": 1}) as span:
            assert span.is_recording()
            assert "traceparent" in current_trace_carrier()
        print([(s.name, dict(s.attributes)) for s in exporter.get_finished_spans()])
    """)
    assert out == "[('TrackEvent', {'a': 1})]"
