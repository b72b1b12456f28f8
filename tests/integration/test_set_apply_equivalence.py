"""Set-based apply gives the same results as applying events one by one (issue 16).

The same seeded random stream of queued TrackEvents goes to two services on fresh databases, one with
``[service] set_based_apply = true``, one with ``false`` (each event in its own savepoint). Each applies
everything in batches of many events of the same shoppers and delivers to its own Dotdigital sandbox. Then
the databases (contacts, identifiers, field state, outbox per contact, dedupe records, inbox outcomes,
rejected records, program triggers, carts, orders ...) and what each sandbox received must be equal, once ids
that legitimately differ are replaced by what they stand for. Both runs start from the same clock time (a
clock that then runs at real speed: leases and retries must still expire), so times computed from events
(due times, source timestamps) compare exactly; times of writes are compared as set or not. Runs on SQLite
and PostgreSQL, over real gRPC.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from ctdd.clock import use_clock
from ctdd.runtime.app import App
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from ctdd.testing.commercetools_fake import FakeCommercetools
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox
from support import ct_payloads as ct
from support import make_settings, reset_postgres, wait_for
from support.apply_snapshot import database_snapshot, sandbox_snapshot
from support.event_stream import CLOCK, PROGRAMS, EventStream, build_stream

SEED = 16
BATCH = 120  # [inbox] batch_size: each batch holds many events of the same two dozen shoppers


class RunningClock:
    """A clock that starts at ``start`` when made and then runs at real speed."""

    def __init__(self, start: datetime):
        self.start, self.t0 = start, time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self.t0)


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


def stream_settings(database_url: str, sandbox, fake_ct, *, set_based: bool):
    settings = make_settings(database_url, sandbox, commercetools=fake_ct, batching=False, coalesce="never",
                             stores_extra={"uk": {"programs": PROGRAMS, "cart_watcher": {"enabled": False}}})
    return settings.replace(
        service=settings.service.replace(set_based_apply=set_based),
        # one lane: both runs apply the stream in arrival order, so that they can be compared row for row (lanes
        # order a contact's events as two workers do: tests/integration/test_inbox_lanes.py)
        inbox=settings.inbox.replace(batch_size=BATCH, poll_interval_seconds=0.05, lease_seconds=60.0, lanes=1))


def _answers(resp: pb.TrackEventBatchResponse) -> list[tuple]:
    return [(r.index, r.code, r.response.queued, r.response.duplicate) for r in resp.results]


def _settled(engine) -> bool:
    with engine.connect() as conn:
        pending = conn.execute(sa.text("SELECT count(*) FROM event_inbox WHERE status = 'pending'")).scalar_one()
        unsettled = conn.execute(sa.text(
            "SELECT count(*) FROM outbox_message WHERE status NOT IN ('delivered', 'merged', 'dead')")).scalar_one()
        total = conn.execute(sa.text("SELECT count(*) FROM event_inbox")).scalar_one()
    return total > 0 and pending == 0 and unsettled == 0


async def run_stream(database_url: str, stream: EventStream, fake_ct, *, set_based: bool) -> dict:
    """Queue the whole stream through an ingest-only service, then let a full service on the same database
    apply and deliver it; the snapshot of what came out."""
    clock = RunningClock(CLOCK)
    with use_clock(clock), DotdigitalSandbox() as sandbox:
        sandbox.clock = clock
        settings = stream_settings(database_url, sandbox, fake_ct, set_based=set_based)
        assert settings.set_based_apply is set_based
        apps: list[App] = []
        channels: list[grpc.aio.Channel] = []
        try:
            ingest = App(settings, run_dispatcher=False)  # `ctdd serve --no-dispatcher`: nothing applied yet
            await ingest.start()
            apps.append(ingest)
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{ingest.port}"))
            stub = pb_grpc.SyncServiceStub(channels[0])
            answers = []
            for batch in stream.batches(50):
                answers += _answers(await stub.TrackEventBatch(pb.TrackEventBatchRequest(events=batch)))
            worker = App(settings, serve_grpc=False)  # applies the inbox in batches, delivers to the sandbox
            await worker.start()
            apps.append(worker)
            await wait_for(lambda: _settled(worker.engine), timeout=120, interval=0.1,
                           what="stream applied and delivered")
            stats = dict(worker.inbox_processor.stats)
            snapshot = {"answers": answers, **database_snapshot(worker.engine), "sandbox": sandbox_snapshot(sandbox)}
        finally:
            for channel in channels:
                await channel.close()
            for app in reversed(apps):
                await app.stop(grace=1.0)
    snapshot["stats"] = {k: v for k, v in stats.items() if k != "batches"}
    snapshot["batches"] = stats["batches"]
    return snapshot


def _fresh(database_url: str, tmp_path, name: str) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'{name}.db'}"
    reset_postgres(database_url)
    return database_url


def assert_same(one_by_one: dict, set_based: dict) -> None:
    """Equal, section by section and contact by contact, so that a failure names what differs."""
    assert one_by_one.keys() == set_based.keys()
    for section in one_by_one:
        if section == "batches":
            continue
        a, b = one_by_one[section], set_based[section]
        if isinstance(a, dict):
            assert sorted(map(str, a)) == sorted(map(str, b)), f"{section}: different keys"
            for k in a:
                assert a[k] == b[k], f"{section}[{k}] differs"
        else:
            assert a == b, f"{section} differs"


@pytest.mark.timeout(300)
async def test_set_based_apply_gives_what_one_by_one_apply_gives(database_url, tmp_path, fake_ct):
    stream = build_stream(SEED)
    # the mix is really there
    assert 400 <= len(stream.requests) <= 600
    for sort in ("product_viewed", "custom_event", "cart_updated", "customer_created", "customer_stale",
                 "email_changed", "order_created", "array_with_duplicates", "invalid_at_ingest",
                 "rejected_when_applied", "duplicate_event_id"):
        assert stream.sorts.get(sort, 0) >= 2, (sort, stream.sorts)
    for customer in stream.ct_customers:
        fake_ct.add("customers", customer)

    one_by_one = await run_stream(_fresh(database_url, tmp_path, "one"), stream, fake_ct, set_based=False)
    set_based = await run_stream(_fresh(database_url, tmp_path, "set"), stream, fake_ct, set_based=True)

    # The runs did the work the comparison is about: batches of many events, every sort of outcome.
    assert one_by_one["batches"] <= len(one_by_one["inbox"]) / 20
    outcomes = {o for _, _, _, _, _, outcome, _, _ in one_by_one["inbox"] for o in (outcome or "").split(",")}
    assert {"applied", "duplicate", "stale", "ignored"} <= outcomes, outcomes
    statuses = {status for _, _, _, status, *_ in one_by_one["inbox"]}
    assert statuses == {"done", "rejected"}, statuses
    assert any(op == "TrackEvent" for op, *_ in one_by_one["rejected"])
    assert len(one_by_one["program_triggers"]) >= 10 and len(one_by_one["sandbox"]) >= 20
    assert any(c.startswith("customer_id=") or "|customer_id=" in c for c in one_by_one["contacts"])

    assert_same(one_by_one, set_based)
