"""The metrics that answer "is it healthy": every metric documented in docs/metrics.md is exported, with sensible
values, after a run with deliveries, a 429, a parked message and a dead letter (and a program run for the program
metrics); every ``ctdd.*`` metric exported is documented; the Prometheus endpoint serves them when enabled."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ctdd.clock import VirtualClock
from ctdd.db.engine import utcnow
from ctdd.db.models import BacksyncCursor
from ctdd.runtime import metrics as health_metrics
from ctdd.sync.v1 import sync_service_pb2 as pb
from support import all_settled, contact_request, make_settings, start_cli, statuses, stop_with_sigterm, \
    wait_for, write_service_config
from support.otel import install, metric_points
from support.programs import START, close_clients, processor, program_settings, put_cart, run_until, seed_contacts

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
INVALID = {"errorCode": "contacts:invalidData", "description": "The contact data is invalid"}
#: the metrics the program run below records (the others come from the delivery run)
PROGRAM_METRICS = {"ctdd.programs.decisions", "ctdd.programs.enrolment_calls", "ctdd.programs.backlog"}


def documented() -> dict[str, dict[str, str]]:
    """name -> {type, unit, attributes, when} of the table in docs/metrics.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`ctdd."):
            name, kind, unit, attributes, when, _ = cells
            rows[name.strip("`")] = {"type": kind, "unit": unit.strip("`"), "when": when,
                                     "attributes": {a.strip(" `") for a in attributes.split(",")}}
    return rows


@pytest.fixture(scope="module", autouse=True)
def providers():
    install()
    yield


@pytest.fixture(autouse=True)
def fresh_snapshots(monkeypatch):
    monkeypatch.setattr(health_metrics, "CACHE_SECONDS", 0.0)  # each read sees the database as it is now


def values(points, name: str, **attributes) -> list:
    """The values of ``name``'s points whose attributes include ``attributes``."""
    found = []
    for attrs, point in points.get(name, []):
        if all(attrs.get(k) == v for k, v in attributes.items()):
            found.append(getattr(point, "value", getattr(point, "count", None)))
    return found


def attempt_counts(points) -> Counter:
    """``ctdd.delivery.attempts`` of account main, store uk: (outcome, response code) -> count."""
    counts: Counter = Counter()
    for attrs, point in points.get("ctdd.delivery.attempts", []):
        if attrs["account"] == "main" and attrs["store"] == "uk":
            counts[(attrs["outcome"], attrs.get("http.response.status_code"))] += point.value
    return counts


async def test_every_documented_metric_is_exported_after_a_delivery_run(service_factory, database_url, sandbox):
    docs = documented()
    assert len(docs) >= 19
    sandbox.set_rate_limit(1000)  # X-RateLimit-* on every answer
    svc = await service_factory(make_settings(database_url, sandbox, max_attempts=2))
    # before anything happened, the "always" gauges are there for the configured store and account, at 0
    points = await asyncio.to_thread(metric_points)
    assert values(points, "ctdd.outbox.messages", account="main", store="uk", status="pending") == [0]
    assert values(points, "ctdd.outbox.oldest_due_age", account="main", store="uk") == [0.0]
    assert values(points, "ctdd.delivery.account_paused", account="main") == [0]
    before = attempt_counts(points)
    parked_before = sum(values(points, "ctdd.delivery.parked", account="main"))

    # a 429 (retried), a message parked after two 503s (resumed when the account delivers again), a dead letter
    sandbox.inject_fault(status=429, times=1, path_contains="throttled@example.com", headers={
        "Retry-After": "1", "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"})
    sandbox.inject_fault(status=503, times=2, path_contains="parked@example.com")
    sandbox.inject_fault(status=400, times=1, path_contains="dead@example.com", body=INVALID)
    for email in ("ok@example.com", "throttled@example.com", "dead@example.com"):
        await svc.stub.SyncContact(contact_request(email=email, first_name="M"))
    # the message to park goes once the others settled: a delivery after it parked would resume it at once
    await wait_for(lambda: sorted(statuses(svc).values()) == ["dead", "delivered", "delivered"],
                   timeout=20, what="the throttled message delivered, the dead letter dead")
    await svc.stub.SyncContact(contact_request(email="parked@example.com", first_name="M"))
    # the back-sync's cursor: its last complete poll began two minutes ago
    with svc.engine.begin() as conn:
        conn.execute(sa.insert(BacksyncCursor.__table__).values(
            account="main", last_poll_at=utcnow() - timedelta(minutes=2), updated_at=utcnow()))

    # the parked message and the dead letter as the gauges see them (nothing else is sent meanwhile: any
    # delivery of the account would resume the parked message at once)
    await wait_for(lambda: sorted(statuses(svc).values()) == ["dead", "delivered", "delivered", "parked"],
                   timeout=20, what="one message parked, one dead, the others delivered")
    points = await asyncio.to_thread(metric_points)
    assert values(points, "ctdd.outbox.messages", account="main", store="uk", status="parked") == [1]
    assert values(points, "ctdd.outbox.messages", account="main", store="uk", status="dead") == [1]
    # a queued event (applied soon by the inbox processor), and another contact: the parked message resumes
    # once the account delivers again
    event = pb.BehaviouralEvent(event_id="ev-metrics", identity=pb.ContactIdentity(email="ok@example.com"),
                                custom_event=pb.CustomEvent(name="metrics_test"))
    event.occurred_at.GetCurrentTime()
    await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event,
                                                   processing=pb.PROCESSING_QUEUED))
    await svc.stub.SyncContact(contact_request(email="resume@example.com", first_name="R"))
    await wait_for(lambda: all_settled(svc), timeout=20, what="the run settled")
    points = await asyncio.to_thread(metric_points)

    # every documented metric is exported, with its documented attributes
    for name, doc in docs.items():
        if name in PROGRAM_METRICS:
            continue
        assert points.get(name), f"{name} (documented) is not exported"
        keys = set().union(*(attrs.keys() for attrs, _ in points[name]))
        assert keys <= doc["attributes"], (name, keys)
    # ... and every ctdd.* metric exported is documented
    assert {n for n in points if n.startswith("ctdd.")} <= set(docs)

    # sensible values
    # (the counters are cumulative over the tests of this process: compared with what they were before)
    attempts = attempt_counts(points)
    assert attempts[("retry", 429)] - before[("retry", 429)] == 1
    assert attempts[("dead", 400)] - before[("dead", 400)] == 1
    assert attempts[("parked", 503)] - before[("parked", 503)] == 1
    assert attempts[("retry", 503)] - before[("retry", 503)] == 1
    assert attempts[("delivered", 201)] - before[("delivered", 201)] >= 5
    assert sum(values(points, "ctdd.delivery.parked", account="main")) - parked_before == 1
    assert sum(values(points, "ctdd.delivery.duration", outcome="delivered")) >= 3  # histogram counts
    assert values(points, "ctdd.outbox.messages", account="main", store="uk", status="pending") == [0]
    assert values(points, "ctdd.outbox.messages", account="main", store="uk", status="parked") == [0]
    assert values(points, "ctdd.outbox.oldest_due_age", account="main", store="uk") == [0.0]
    assert values(points, "ctdd.inbox.pending", store="uk") == [0]
    assert values(points, "ctdd.delivery.bulk_imports_active", account="main") == [0]
    assert values(points, "ctdd.programs.triggers", account="main", store="uk", status="pending") == [0]
    assert values(points, "ctdd.programs.enrolment_calls_used", account="main") == [0]
    assert values(points, "ctdd.programs.enrolment_calls_allowed", account="main") == [20]
    [lag] = values(points, "ctdd.backsync.lag", account="main")
    assert 115 <= lag < 300
    [remaining] = values(points, "ctdd.dotdigital.rate_budget.remaining", account="main")
    assert 0 < remaining < 1000
    [throttled] = values(points, "ctdd.delivery.account_throttled", account="main")
    assert 0 <= throttled <= 1
    assert values(points, "ctdd.delivery.account_paused", account="main") == [0]
    assert sum(values(points, "ctdd.outbox.enqueued", store="uk")) >= 5

    # a message waiting: depth and age of what is due (the account is paused for a while, nothing is claimed)
    svc.app.clients.budget.pause("main", 30)
    await svc.stub.SyncContact(contact_request(email="waiting@example.com", first_name="W"))
    await asyncio.sleep(0.3)
    points = await asyncio.to_thread(metric_points)
    assert values(points, "ctdd.outbox.messages", account="main", store="uk", status="pending") == [1]
    [age] = values(points, "ctdd.outbox.oldest_due_age", account="main", store="uk")
    assert 0.2 <= age < 30
    [throttled] = values(points, "ctdd.delivery.account_throttled", account="main")
    assert 25 < throttled <= 30
    svc.app.clients.budget.state("main").paused_until = 0.0  # so that the service stops promptly


async def test_the_program_metrics(database_url, engine, sandbox):
    clock = VirtualClock(START)
    sandbox.clock = clock
    try:
        program = sandbox.add_program("Abandoned cart")
        settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {
            "delay_minutes": 60, "retrigger_window_hours": 24, "program": program}}}, batch_wait_seconds=0)
        [contact] = await seed_contacts(engine, sandbox, 1)
        put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
        proc = processor(engine, settings, clock)
        await run_until(proc, clock, START + timedelta(minutes=65), step=timedelta(minutes=5))
        assert sandbox.program_entries(program)
        points = await asyncio.to_thread(metric_points)
        docs = documented()
        for name in PROGRAM_METRICS:
            assert points.get(name), f"{name} (documented) is not exported"
            keys = set().union(*(attrs.keys() for attrs, _ in points[name]))
            assert keys <= docs[name]["attributes"], (name, keys)
        assert values(points, "ctdd.programs.decisions", kind="abandoned_cart", account="main", store="uk")
        assert sum(values(points, "ctdd.programs.enrolment_calls", account="main", outcome="accepted")) >= 1
        assert values(points, "ctdd.programs.backlog", account="main") == [0]
    finally:
        await close_clients()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return None


async def test_the_prometheus_endpoint_serves_the_metrics(tmp_path, sqlite_url, sandbox):
    metrics_port = _free_port()
    config = tmp_path / "ctdd.toml"
    write_service_config(config, sqlite_url, sandbox, listen=f"127.0.0.1:{_free_port()}")
    text = config.read_text().replace("[service]\n", f'[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', 1)
    config.write_text(text)
    proc = start_cli(["serve", "--config", str(config)], sandbox, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        body = await wait_for(lambda: (b := _scrape(url)) and "ctdd_outbox_messages" in b and b,
                              timeout=30, what="the Prometheus endpoint")
    finally:
        await stop_with_sigterm(proc)
    always = [name for name, doc in documented().items() if doc["when"] == "always"]
    assert always
    for name in always:
        prometheus = name.replace(".", "_")
        assert re.search(rf"^{re.escape(prometheus)}(_[a-z]+)?\{{[^}}]*account=\"main\"", body, re.M) or \
            re.search(rf"^{re.escape(prometheus)}(_[a-z]+)?\{{[^}}]*store=\"uk\"", body, re.M), (name, body[:2000])
    assert re.search(r'^ctdd_programs_enrolment_calls_allowed(_[a-z]+)?\{[^}]*account="main"[^}]*\} 20(\.0)?$',
                     body, re.M)


def test_a_metrics_port_in_use_is_a_configuration_error():
    from ctdd.config import ConfigError
    from ctdd.telemetry import _prometheus_reader

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=r"metrics_listen = '127\.0\.0\.1:\d+': cannot listen there"):
            _prometheus_reader(listen)


@pytest.mark.parametrize("value", ["9464", ":9464", "127.0.0.1:0", "127.0.0.1:http"])
def test_metrics_listen_must_be_host_and_port(value):
    from ctdd.config import ConfigError, settings_from_mapping

    with pytest.raises(ConfigError, match=r"service\.metrics_listen.*HOST:PORT"):
        settings_from_mapping({"service": {"metrics_listen": value}}, env={})


async def test_the_backsync_lag_counts_the_newer_of_the_poll_and_the_events_feed_read(database_url, engine, sandbox):
    """``ctdd.backsync.lag``: with the events feed on, the polls only reconcile (hours apart); the feed's last
    applied read (``read_at`` in its lease cursor) is then the newer, and the lag is measured from it."""
    from ctdd.backsync.events_feed import LEASE_PREFIX, _store_cursor
    from ctdd.programs import leases

    settings = make_settings(database_url, sandbox)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.insert(BacksyncCursor.__table__).values(
            account="main", last_poll_at=now - timedelta(hours=3), updated_at=now))
    assert health_metrics.HealthMetrics(engine, settings).snapshot().backsync_lag["main"] >= 3 * 3600

    # the events feed read (and applied) 20 s ago: that is the lag now
    assert leases.acquire(engine, LEASE_PREFIX + "main", "reader", 60, now)
    assert _store_cursor(engine, LEASE_PREFIX + "main", "reader", {
        "subscription_id": 7, "checkpoint": "c-1", "read_at": (now - timedelta(seconds=20)).isoformat()})
    assert 20 <= health_metrics.HealthMetrics(engine, settings).snapshot().backsync_lag["main"] < 120

    # a poll newer than the feed's read wins again; a cursor without read_at (before its first read) is ignored
    with engine.begin() as conn:
        conn.execute(sa.update(BacksyncCursor.__table__).values(last_poll_at=now - timedelta(seconds=5)))
    assert 5 <= health_metrics.HealthMetrics(engine, settings).snapshot().backsync_lag["main"] < 20
    assert _store_cursor(engine, LEASE_PREFIX + "main", "reader", {"subscription_id": 7, "checkpoint": None})
    with engine.begin() as conn:
        conn.execute(sa.update(BacksyncCursor.__table__).values(last_poll_at=now - timedelta(hours=3)))
    assert health_metrics.HealthMetrics(engine, settings).snapshot().backsync_lag["main"] >= 3 * 3600
