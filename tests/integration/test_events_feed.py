"""The events feed (``ctdd.backsync.events_feed``) against the sandbox's export subscriptions, with a stand-in apply
function: order, the checkpoint stored only after apply (a crash re-reads), one reader per account across
processes, the cost of an idle account, and the fallback to the polling feeds. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from support import make_settings
from ctdd.backsync.events_feed import ACTIVE, INACTIVE, MISSING, LEASE_PREFIX, EventsFeed, read_checkpoint
from ctdd.backsync.feeds import BackSync
from ctdd.config import BacksyncConfig, replace
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.event_subscriptions import ensure_event_subscription
from ctdd.testing.commercetools_fake import FakeCommercetools

EMAIL = "jane@example.com"


class Recorder:
    """A stand-in for ``ctdd.backsync.writeback.apply_changes``: records the event ids it applied, and can crash
    after applying ``fail_after`` changes in all."""

    def __init__(self, engine, fail_after: int | None = None):
        self.engine = engine
        self.fail_after = fail_after
        self.applied: list[str] = []
        #: the checkpoint stored when each call began
        self.stored_at_call: list[str | None] = []

    async def __call__(self, changes) -> None:
        self.stored_at_call.append(read_checkpoint(self.engine, "main").get("checkpoint"))
        for change in changes:
            if self.fail_after is not None and len(self.applied) >= self.fail_after:
                raise RuntimeError("crash while applying")
            self.applied.append(change.event_id)


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key="shop-eu") as fake:
        yield fake


@pytest.fixture
def settings(database_url, sandbox, fake_ct):
    base = make_settings(database_url, sandbox, commercetools=fake_ct)
    return replace(base, backsync=BacksyncConfig(enabled=False, events_page_size=3, events_interval_seconds=15))


@pytest.fixture
async def clients(settings):
    c = DotdigitalClients(settings.accounts)
    yield c
    await c.aclose()


@pytest.fixture
def raw(sandbox):
    with httpx.Client(base_url=sandbox.base_url, auth=(sandbox.api_user, sandbox.password)) as c:
        resp = c.patch("/contacts/v3/email/jane%40example.com", json={"dataFields": {"FIRSTNAME": "Jane"}})
        assert resp.status_code == 201
        yield c


async def subscription(clients) -> int:
    plan = await ensure_event_subscription(clients.get("main"), "main")
    return plan.subscription.id


def changes(sandbox, count: int) -> list[str]:
    """``count`` preference changes made by the contact; the ids of their events."""
    start = len(sandbox.emitted_events)
    for index in range(count):  # a new preference each time, so each is a change
        sandbox.preference_centre(email=EMAIL, preferences={start + index + 1: True})
    return [e["id"] for e in sandbox.emitted_events[start:]]


async def test_events_are_applied_in_order_and_the_checkpoint_stored_after_apply(engine, settings, clients, sandbox,
                                                                                 raw):
    sub_id = await subscription(clients)
    expected = changes(sandbox, 7)
    apply = Recorder(engine)
    feed = EventsFeed(engine, settings, clients, apply)

    result = await feed.read_account("main")
    assert (result.reads, result.events, result.changes, result.stored, result.caught_up) == (3, 7, 7, 3, True)
    assert apply.applied == expected
    stored = read_checkpoint(engine, "main")
    assert stored["subscription_id"] == sub_id
    # each page was applied while the previous page's checkpoint was the stored one: stored after apply only
    assert apply.stored_at_call[0] is None and len(set(apply.stored_at_call)) == 3
    assert stored["checkpoint"] not in apply.stored_at_call
    assert sandbox.queued_events(sub_id) == 1  # the last page is acknowledged by the next read
    assert feed.covers("main")

    again = await feed.read_account("main")
    assert (again.reads, again.events, again.stored) == (1, 0, 0)
    assert sandbox.queued_events(sub_id) == 0


async def test_a_crash_before_the_checkpoint_is_stored_reads_the_same_events_again(engine, settings, clients, sandbox,
                                                                                   raw):
    sub_id = await subscription(clients)
    expected = changes(sandbox, 7)
    crashing = Recorder(engine, fail_after=4)  # applies the first page, then one event of the second
    first = EventsFeed(engine, settings, clients, crashing, owner="process-1")
    result = await first.read_account("main")
    assert result.error == "apply failed: RuntimeError" and result.stored == 1
    checkpoint_after_crash = read_checkpoint(engine, "main")["checkpoint"]
    # reading the second page acknowledged the first; the second page stays queued in Dotdigital
    assert sandbox.queued_events(sub_id) == 4

    # the process is restarted (same lease holder) with a working apply: it reads from the stored checkpoint
    restarted = Recorder(engine)
    second = EventsFeed(engine, settings, clients, restarted, owner="process-1")
    result = await second.read_account("main")
    assert result.error is None and result.caught_up
    assert restarted.stored_at_call[0] == checkpoint_after_crash
    assert restarted.applied == expected[3:]  # the whole second page again, then the rest
    applied = crashing.applied + restarted.applied
    assert applied == expected[:4] + expected[3:]  # event 4 twice (apply is idempotent), none lost
    assert set(applied) == set(expected)


async def test_one_reader_per_account_across_processes(engine, database_url, settings, clients, sandbox, raw):
    from ctdd.db.engine import create_db_engine

    await subscription(clients)
    changes(sandbox, 2)
    other_engine = create_db_engine(database_url)  # the second process has its own connections
    try:
        a_applied, b_applied = Recorder(engine), Recorder(other_engine)
        a = EventsFeed(engine, settings, clients, a_applied, owner="process-a")
        b = EventsFeed(other_engine, settings, clients, b_applied, owner="process-b")
        before = len(sandbox.requests)
        assert (await a.read_account("main")).read
        refused = await b.read_account("main")
        assert not refused.read and refused.reads == 0
        assert len(sandbox.requests) - before == 2  # the lookup by name and a's read; none from b
        await a.stop()  # gives the lease back
        changes(sandbox, 1)
        taken = await b.read_account("main")
        assert taken.read and taken.events == 1
        assert len(a_applied.applied) == 2 and len(b_applied.applied) == 1

        # a reader that lost its lease (it lapsed and another took it) cannot store its checkpoint
        b.lease_seconds = 0.2
        await b.read_account("main")
        await asyncio.sleep(0.3)
        assert (await a.read_account("main")).read
        assert not (await b.read_account("main")).read
    finally:
        other_engine.dispose()


async def test_an_idle_account_costs_one_read_per_interval(engine, settings, clients, sandbox, raw):
    sub_id = await subscription(clients)
    feed = EventsFeed(engine, settings, clients, Recorder(engine))
    await feed.read_account("main")  # finds the subscription
    before = len(sandbox.requests)
    for _ in range(10):
        result = await feed.read_account("main")
        assert (result.reads, result.events) == (1, 0)
    calls = sandbox.requests[before:]
    assert [r.path for r in calls] == [f"/events/v3/export/{sub_id}"] * 10
    per_hour = 3600 / settings.backsync.events_interval_seconds * (len(calls) / 10)
    assert per_hour == 240  # the target for an idle account at 15 s


async def test_an_account_without_subscription_is_left_to_the_polling_feeds(engine, settings, clients, sandbox,
                                                                            raw, fake_ct):
    feed = EventsFeed(engine, settings, clients, Recorder(engine))
    result = await feed.read_account("main")
    assert (result.state, result.reads) == (MISSING, 0)
    before = len(sandbox.requests)
    await feed.read_account("main")  # not looked up again at once
    assert len(sandbox.requests) == before
    assert not feed.covers("main")
    now = datetime.now(timezone.utc)
    assert feed.due_for_poll("main", now, now)  # polled as usual

    backsync = BackSync(engine, settings, clients)
    backsync.events_feed = feed
    try:
        polled = await backsync.run_once()
        assert [r.account for r in polled] == ["main"] and polled[0].complete

        # with the subscription read by the feed: one reconciliation at once, then every reconcile_interval_seconds
        await subscription(clients)
        feed._accounts["main"].looked_up_at = None
        assert (await feed.read_account("main")).state == ACTIVE and feed.covers("main")
        assert feed.due_for_poll("main", now, now)  # the last poll is older than the feed: reconcile
        assert [r.account for r in await backsync.run_once()] == ["main"]
        assert await backsync.run_once() == []  # polled a moment ago: nothing due
        polled = datetime.now(timezone.utc)
        assert not feed.due_for_poll("main", polled, polled + timedelta(hours=5))
        assert feed.due_for_poll("main", polled, polled + timedelta(seconds=settings.backsync.reconcile_interval_seconds))
    finally:
        await backsync.stop()


async def test_an_inactive_subscription_is_made_active_again_and_reconciled(engine, settings, clients, sandbox, raw):
    clock = {"now": datetime(2026, 3, 1, tzinfo=timezone.utc)}
    sandbox.clock = lambda: clock["now"]
    sub_id = await subscription(clients)
    apply = Recorder(engine)
    feed = EventsFeed(engine, settings, clients, apply)
    changes(sandbox, 1)
    assert (await feed.read_account("main")).events == 1

    clock["now"] += timedelta(days=31)  # the feed did not run for a month: Dotdigital suspended the subscription
    lost = changes(sandbox, 1)
    result = await feed.read_account("main")
    assert (result.error, result.state) == ("inactive subscription", INACTIVE)
    assert not feed.covers("main") and feed.due_for_poll("main", clock["now"], clock["now"])
    assert [s["status"] for s in sandbox.event_subscriptions] == ["active"]  # made active again
    assert read_checkpoint(engine, "main") == {"subscription_id": sub_id, "checkpoint": None}

    later = changes(sandbox, 1)
    result = await feed.read_account("main")
    assert (result.state, result.events, result.error) == (ACTIVE, 1, None)
    assert apply.applied[-1:] == later and lost[0] not in apply.applied  # the polling feeds reconcile that one


async def test_a_refused_checkpoint_is_dropped(engine, settings, clients, sandbox, raw):
    from ctdd.backsync.events_feed import _store_cursor

    sub_id = await subscription(clients)
    feed = EventsFeed(engine, settings, clients, Recorder(engine))
    await feed.read_account("main")
    assert _store_cursor(engine, LEASE_PREFIX + "main", feed.owner, {"subscription_id": sub_id, "checkpoint": "bogus"})
    result = await feed.read_account("main")
    assert result.error == "events:invalidCheckpoint"
    assert read_checkpoint(engine, "main") == {"subscription_id": sub_id, "checkpoint": None}
    changes(sandbox, 1)
    assert (await feed.read_account("main")).events == 1


async def test_the_time_of_the_last_applied_read_is_stored_for_the_lag_gauge(engine, settings, clients, sandbox, raw):
    """``read_at`` (the ``ctdd.backsync.lag`` gauge's measure): when the last read whose events were all applied
    began; not moved by a read whose apply failed; moved by an idle read that stores no new checkpoint."""
    from ctdd.backsync.events_feed import read_times

    sub_id = await subscription(clients)
    changes(sandbox, 2)
    clock = {"now": datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)}
    feed = EventsFeed(engine, settings, clients, Recorder(engine, fail_after=0), clock=lambda: clock["now"])
    assert (await feed.read_account("main")).error == "apply failed: RuntimeError"
    assert "read_at" not in read_checkpoint(engine, "main")

    clock["now"] += timedelta(minutes=1)
    feed.apply = Recorder(engine)
    result = await feed.read_account("main")
    assert (result.events, result.error, result.caught_up) == (2, None, True)
    stored = read_checkpoint(engine, "main")
    assert stored["subscription_id"] == sub_id and stored["read_at"] == clock["now"].isoformat()

    clock["now"] += timedelta(minutes=1)
    idle = await feed.read_account("main")
    assert (idle.events, idle.stored, idle.error) == (0, 0, None)
    after = read_checkpoint(engine, "main")
    assert after["checkpoint"] == stored["checkpoint"] and after["read_at"] == clock["now"].isoformat()
    with engine.connect() as conn:
        assert read_times(conn) == {"main": clock["now"]}
