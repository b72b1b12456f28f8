"""The enrolment strategy within Dotdigital's limits, exactly once: restarts, the hourly allowance across programs
and stores, orders arriving after the timer fired, two processors on PostgreSQL, program and allowance errors,
the fault report. Virtual clock shared with the sandbox; real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.clock import VirtualClock
from ctdd.db.models import EnrolmentCall
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.programs import scheduling, triggers as trigger_claims
from support.programs import (
    START, close_clients, one_trigger, processor, program_settings, put_cart, put_order,
    run_until, seed_contacts, triggers,
)

AC = {"delay_minutes": 60, "retrigger_window_hours": 24}


@pytest.fixture(autouse=True)
async def _clients():
    yield
    await close_clients()


@pytest.fixture
def clock(sandbox):
    clock = VirtualClock(START)
    sandbox.clock = clock
    sandbox.enrolment_delay_seconds = 1.0
    return clock


def carts(engine, settings, store_key: str, contact_ids: list[int], *, at, prefix: str) -> None:
    """One abandoned cart per contact, written in one transaction as a cart watcher poll would."""
    store = settings.stores[store_key]
    with Session(engine) as session, session.begin():
        for i, contact in enumerate(contact_ids):
            scheduling.on_cart_changed(session, store, scheduling.CartFacts(f"{prefix}-{i}", 1, contact, "Active", 1, at),
                                       at)
        session.connection().execute(sa.insert(sa.table(
            "cart", *(sa.column(c) for c in ("store_key", "cart_id", "version", "contact_id", "state", "line_item_count",
                                             "last_modified_at", "updated_at")))),
            [dict(store_key=store_key, cart_id=f"{prefix}-{i}", version=1, contact_id=c, state="Active",
                  line_item_count=1, last_modified_at=at, updated_at=at) for i, c in enumerate(contact_ids)])


def calls_per_rolling_hour(calls) -> int:
    times = [c.at for c in calls]
    return max((sum(1 for t in times if at - timedelta(hours=1) < t <= at) for at in times), default=0)


async def test_a_restart_in_the_middle_of_a_delay_sends_exactly_once(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 3)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    first = processor(engine, settings, clock, worker_id="before-restart")
    await run_until(first, clock, START + timedelta(minutes=30), step=timedelta(minutes=5))
    # the first process dies at 10:00 holding a claim on the due triggers
    clock.advance(START + timedelta(minutes=60))
    claimed = trigger_claims.claim_due(engine, worker="before-restart", limit=10, lease_seconds=60, now=clock())
    assert len(claimed) == 3
    second = processor(engine, settings, clock, worker_id="after-restart")
    await second.run_once()
    assert {r["status"] for r in triggers(engine)} == {"claimed"}  # not before the lease expires
    await run_until(second, clock, clock() + timedelta(minutes=5), step=timedelta(seconds=30))
    assert {r["status"] for r in triggers(engine)} == {"sent"}
    assert sorted(e.contact_id for e in sandbox.program_entries(program)) == sorted(
        c["contactId"] for c in sandbox.contacts)
    assert len(sandbox.enrolment_calls) == 1


@pytest.mark.parametrize("echo", [True, False], ids=["contacts echoed", "contacts null"])
async def test_a_crash_between_the_call_row_and_the_answer(engine, database_url, sandbox, clock, echo):
    """The process died after writing its ``calling`` row: with or without the call having reached Dotdigital, the
    next holder of the account's lease ends with every contact enrolled exactly once; also when Dotdigital answers
    enrolments without their contacts (null, as in the Programs spec's example): then by the time it was made."""
    sandbox.echo_enrolment_contacts = echo
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 4)
    for i, contact in enumerate(contacts[:2]):
        put_cart(engine, settings, "uk", f"a-{i}", version=1, contact_id=contact, modified=START)
    first = processor(engine, settings, clock, worker_id="dies")
    clock.advance(START + timedelta(minutes=61))
    await first._decide(trigger_claims.claim_due(engine, worker="dies", limit=10, lease_seconds=60, now=clock()),
                        clock())
    from ctdd.programs import leases
    assert leases.acquire(engine, "enrol:main", "dies", 131, clock())
    reserved = first.batcher._next_batch("main")  # the call row is written ... and the process dies: not sent
    assert reserved.contact_ids and sandbox.enrolment_calls == []
    # a second batch: this one reached Dotdigital, but the answer was lost
    for i, contact in enumerate(contacts[2:]):
        put_cart(engine, settings, "uk", f"b-{i}", version=1, contact_id=contact, modified=clock())
    clock.advance(timedelta(minutes=61))
    await first._decide(trigger_claims.claim_due(engine, worker="dies", limit=10, lease_seconds=60, now=clock()),
                        clock())
    second_batch = first.batcher._next_batch("main")
    async with _Clients(settings) as clients:
        await clients.get("main").enrol_contacts(program, list(second_batch.contact_ids))
    # another process takes over once the lease expired
    clock.advance(timedelta(minutes=3))
    survivor = processor(engine, settings, clock, worker_id="survivor")
    await run_until(survivor, clock, clock() + timedelta(minutes=2), step=timedelta(seconds=30))
    assert {r["status"] for r in triggers(engine)} == {"sent"}
    entries = Counter(e.contact_id for e in sandbox.program_entries(program))
    assert sorted(entries.values()) == [1, 1, 1, 1]
    with engine.connect() as conn:
        statuses = sorted(conn.execute(sa.select(EnrolmentCall.__table__.c.status)).scalars())
    assert statuses == ["Finished", "Finished", "interrupted"]


class _Clients:
    def __init__(self, settings):
        self.clients = DotdigitalClients(settings.accounts)

    async def __aenter__(self):
        return self.clients

    async def __aexit__(self, *exc):
        await self.clients.aclose()


async def test_a_thousand_carts_two_programs_two_stores_within_the_hourly_allowance(engine, database_url, sandbox,
                                                                                     clock, caplog):
    uk_program = sandbox.add_program("Abandoned cart UK")
    de_program = sandbox.add_program("Warenkorb DE")
    settings = program_settings(database_url, sandbox, {
        "uk": {"abandoned_cart": {**AC, "program": uk_program}},
        "de": {"abandoned_cart": {**AC, "program": "Warenkorb DE"}},  # by name, resolved at start
    }, batch_wait_seconds=300)
    contacts = await seed_contacts(engine, sandbox, 1000)
    carts(engine, settings, "uk", contacts[:500], at=START, prefix="uk")
    carts(engine, settings, "de", contacts[500:], at=START, prefix="de")
    proc = processor(engine, settings, clock)
    with caplog.at_level(logging.WARNING, logger="ctdd.programs.enrolment"):
        await run_until(proc, clock, START + timedelta(hours=3, minutes=30), step=timedelta(minutes=2))
        clock.advance(timedelta(seconds=10))
        await proc.run_once()
    calls = sandbox.enrolment_calls
    assert all(c.status == 201 for c in calls), [c.error for c in calls if c.status != 201]
    assert len(calls) == 40 and all(len(c.contacts) == 25 for c in calls)  # full batches only
    assert calls_per_rolling_hour(calls) <= 20
    for program in (uk_program, de_program):
        entered = Counter(e.contact_id for e in sandbox.program_entries(program))
        assert len(entered) == 500 and set(entered.values()) == {1}
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 1000}
    # the backlog was reported once for the hour, naming the uncapped strategy
    warnings = [r.getMessage() for r in caplog.records if "wait for an enrolment call" in r.getMessage()]
    assert len(warnings) >= 1 and "list_join" in warnings[0]
    assert len(warnings) <= 3  # at most once an hour


async def test_a_cart_ordered_after_the_timer_fired_but_before_the_call(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=600)  # the batch waits for more triggers
    contacts = await seed_contacts(engine, sandbox, 3)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock)
    await run_until(proc, clock, START + timedelta(minutes=62), step=timedelta(minutes=1))
    assert {r["status"] for r in triggers(engine)} == {"enrolling"}  # decided, waiting for its batch
    # cart-0 is ordered (its order names the cart); contact 1 orders through another cart
    put_cart(engine, settings, "uk", "cart-0", version=2, contact_id=contacts[0], modified=clock(), state="Ordered",
             order_id="order-0")
    put_order(engine, settings, "uk", "order-1", contact_id=contacts[1], placed=clock(), cart_id="other-cart")
    await run_until(proc, clock, clock() + timedelta(minutes=15), step=timedelta(minutes=1))
    got = {r["subject_id"]: (r["status"], r["reason"]) for r in triggers(engine, program_kind="abandoned_cart")}
    assert got == {"cart-0": ("cancelled", "cart_ordered"), "cart-1": ("skipped", "ordered_since"),
                   "cart-2": ("sent", None)}
    assert [len(c.contacts) for c in sandbox.enrolment_calls] == [1]
    assert len(sandbox.program_entries(program)) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_processors_on_postgresql_never_send_the_same_trigger(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0, batch_size=20)
    contacts = await seed_contacts(engine, sandbox, 300)
    carts(engine, settings, "uk", contacts, at=START, prefix="c")
    from ctdd.db.engine import create_db_engine
    other_engine = create_db_engine(database_url)
    try:
        a = processor(engine, settings, clock, worker_id="a")
        b = processor(other_engine, settings, clock, worker_id="b")
        clock.advance(START + timedelta(minutes=61))
        for _ in range(30):
            await asyncio.gather(a.run_once(), b.run_once(), a.run_once(), b.run_once())
            clock.advance(timedelta(minutes=1))
    finally:
        other_engine.dispose()
    assert a.stats["decided"] > 0 and b.stats["decided"] > 0  # both worked
    assert a.stats["decided"] + b.stats["decided"] == 300
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 300}
    entered = Counter(e.contact_id for e in sandbox.program_entries(program))
    assert len(entered) == 300 and set(entered.values()) == {1}
    assert calls_per_rolling_hour(sandbox.enrolment_calls) <= 20 and len(sandbox.enrolment_calls) == 12


async def test_a_program_not_active_holds_its_triggers_and_logs_once(engine, database_url, sandbox, clock, caplog):
    program = sandbox.add_program("Abandoned cart", status="Deactivated")
    other = sandbox.add_program("Post purchase")
    settings = program_settings(database_url, sandbox, {"uk": {
        "abandoned_cart": {**AC, "program": program}, "post_purchase_first": {**AC, "program": other}}},
        batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 2)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contacts[0], modified=START)
    put_order(engine, settings, "uk", "order-1", contact_id=contacts[1], placed=START)
    proc = processor(engine, settings, clock)
    with caplog.at_level(logging.INFO, logger="ctdd.programs.enrolment"):
        await run_until(proc, clock, START + timedelta(hours=2), step=timedelta(minutes=1))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "ERROR_PROGRAM_NOT_ACTIVE" in errors[0].getMessage()
    assert "is not active" in errors[0].getMessage() and "not found" not in errors[0].getMessage()
    got = {r["program_kind"]: (r["status"], r["enrolment_call_id"], r["reason"]) for r in triggers(engine)}
    assert got["abandoned_cart"] == ("enrolling", None, "held: ERROR_PROGRAM_NOT_ACTIVE")  # held, not lost
    assert got["post_purchase_first"][0] == "sent"  # another program is not held back
    not_active = [c for c in sandbox.enrolment_calls if c.error == "ERROR_PROGRAM_NOT_ACTIVE"]
    assert len(not_active) == 1  # looked at again with GET /v2/programs/{id}, not by spending enrolments
    sandbox.set_program_status(program, "Active")
    await run_until(proc, clock, clock() + timedelta(minutes=20), step=timedelta(minutes=1))
    row = one_trigger(engine, program_kind="abandoned_cart")
    assert (row["status"], row["reason"]) == ("sent", None)
    assert len(sandbox.program_entries(program)) == 1


async def test_triggers_held_past_their_max_age_are_skipped_not_sent_late(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart", status="Deactivated")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {
        **AC, "program": program, "max_age_hours": 6}}}, batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 2)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contacts[0], modified=START)
    proc = processor(engine, settings, clock)
    await run_until(proc, clock, START + timedelta(hours=3), step=timedelta(minutes=5))
    assert one_trigger(engine)["reason"] == "held: ERROR_PROGRAM_NOT_ACTIVE"
    # a second cart falls due while the program is held; the program is activated 8 hours after the first
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contacts[1], modified=START + timedelta(hours=5),
             now=clock())
    await run_until(proc, clock, START + timedelta(hours=9), step=timedelta(minutes=5))
    sandbox.set_program_status(program, "Active")
    await run_until(proc, clock, START + timedelta(hours=10), step=timedelta(minutes=5))
    got = {r["subject_id"]: (r["status"], r["reason"]) for r in triggers(engine)}
    assert got == {"cart-0": ("skipped", "too_old"), "cart-1": ("sent", None)}
    assert len(sandbox.program_entries(program)) == 1  # only the one still in time


async def test_a_program_not_found_holds_its_triggers_with_the_reason(engine, database_url, sandbox, clock, caplog):
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": 987654}}},
                                batch_wait_seconds=0)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contact, modified=START)
    with caplog.at_level(logging.INFO, logger="ctdd.programs.enrolment"):
        await run_until(processor(engine, settings, clock), clock, START + timedelta(minutes=62),
                        step=timedelta(minutes=1))
    row = one_trigger(engine)
    assert (row["status"], row["reason"]) == ("enrolling", "held: ERROR_PROGRAM_NOT_FOUND")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not found" in errors[0] and "is not active" not in errors[0]


async def test_the_allowance_exceeded_pauses_the_account_until_an_hour_after_its_oldest_call(engine, database_url,
                                                                                              sandbox, clock, caplog):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0, enrolment_batch_size=1)
    sandbox.enrolment_allowance_per_hour = 2  # another integration spends the account's allowance too
    contacts = await seed_contacts(engine, sandbox, 4)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock)
    with caplog.at_level(logging.WARNING, logger="ctdd.programs.enrolment"):
        await run_until(proc, clock, START + timedelta(minutes=90), step=timedelta(minutes=1))
    assert "ERROR_ENROLMENT_ALLOWANCE_EXCEEDED" in caplog.text
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 2, "enrolling": 2}
    refused = [c for c in sandbox.enrolment_calls if c.status != 201]
    assert len(refused) == 1  # paused after the refusal, not hammering
    await run_until(proc, clock, START + timedelta(minutes=135), step=timedelta(minutes=1))
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 4}
    assert len({e.contact_id for e in sandbox.program_entries(program)}) == 4


async def test_an_enrolment_not_available_in_this_version_is_not_read_again(engine, database_url, sandbox, clock):
    """The Programs spec's third status never becomes Finished: the outcome stays unknown, the call is closed."""
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contact, modified=START)
    sandbox.inject_fault(status=200, times=100, method="GET", path_contains="/v2/programs/enrolments/",
                         body={"id": "b0ff06d6-af04-4af8-a299-51bcbad94c1c", "programId": program,
                               "status": "NotAvailableInThisVersion", "contacts": None, "addressBooks": None})
    await run_until(processor(engine, settings, clock), clock, START + timedelta(minutes=70), step=timedelta(minutes=1))
    assert one_trigger(engine)["status"] == "sent"
    with engine.connect() as conn:
        call = conn.execute(sa.select(EnrolmentCall.__table__)).one()
    assert call.status == "NotAvailableInThisVersion" and call.finished_at is not None
    reads = sandbox.requests_matching("GET", "/v2/programs/enrolments/")
    assert len(reads) == 1  # read once, then no more


async def test_faults_are_logged_against_their_trigger(engine, database_url, sandbox, clock, caplog):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 2)
    sandbox.suppress(email="shopper1@example.com", reason="unsubscribed")  # Dotdigital knows, we do not yet
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock)
    with caplog.at_level(logging.WARNING, logger="ctdd.programs.enrolment"):
        await run_until(proc, clock, START + timedelta(minutes=65), step=timedelta(minutes=1))
    got = {r["subject_id"]: (r["status"], r["reason"]) for r in triggers(engine)}
    assert got == {"cart-0": ("sent", None), "cart-1": ("sent", "enrolment_fault: Unsubcribed")}
    assert "enrolment fault" in caplog.text or "did not enrol" in caplog.text
    with engine.connect() as conn:
        call = conn.execute(sa.select(EnrolmentCall.__table__)).one()
    assert call.status == "Finished" and call.faults == [
        {"contact_id": sandbox.get_contact(email="shopper1@example.com")["contactId"], "reason": "Unsubcribed",
         "trigger_id": got and triggers(engine, subject_id="cart-1")[0]["id"]}]


async def test_a_series_of_three_steps(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart", allow_reentry=True)
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {
        **AC, "program": program, "reminder_minutes": [24 * 60, 48 * 60]}}}, batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 2)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contacts[0], modified=START)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contacts[1], modified=START)
    proc = processor(engine, settings, clock)
    await run_until(proc, clock, START + timedelta(hours=26), step=timedelta(minutes=30))
    # cart-1 is ordered after its second step
    put_cart(engine, settings, "uk", "cart-1", version=2, contact_id=contacts[1], modified=clock(), state="Ordered",
             order_id="o-1")
    await run_until(proc, clock, START + timedelta(hours=80), step=timedelta(minutes=30))
    got = [(r["subject_id"], r["step"], r["status"], r["reason"]) for r in triggers(engine)]
    assert sorted(got) == [("cart-0", 1, "sent", None), ("cart-0", 2, "sent", None), ("cart-0", 3, "sent", None),
                           ("cart-1", 1, "sent", None), ("cart-1", 2, "sent", None),
                           ("cart-1", 3, "cancelled", "cart_ordered")]
    steps = {(r["subject_id"], r["step"]): r for r in triggers(engine)}
    assert steps[("cart-0", 2)]["due_at"] == steps[("cart-0", 1)]["decided_at"] + timedelta(hours=24)
    assert len(sandbox.program_entries(program)) == 5


async def test_browse_abandonment(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Browse")
    settings = program_settings(database_url, sandbox, {"uk": {"browse_abandonment": {
        "program": program, "delay_minutes": 30, "retrigger_window_hours": 24}}}, batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 3)
    store = settings.stores["uk"]

    def view(contact, product, at):
        with Session(engine) as session, session.begin():
            scheduling.on_product_viewed(session, store, contact, product, at, at, data={"name": product})

    view(contacts[0], "p-1", START)
    view(contacts[0], "p-2", START + timedelta(minutes=20))  # restarts the quiet period
    view(contacts[1], "p-1", START)
    with Session(engine) as session, session.begin():  # contact 1 put it in a cart
        scheduling.on_product_added_to_cart(session, store, contacts[1], ["p-1"], START + timedelta(minutes=5))
    view(contacts[2], "p-3", START)
    put_order(engine, settings, "uk", "order-2", contact_id=contacts[2], placed=START + timedelta(minutes=10))
    proc = processor(engine, settings, clock)
    await run_until(proc, clock, START + timedelta(hours=2), step=timedelta(minutes=5))
    got = [(r["contact_id"], r["status"], r["reason"]) for r in triggers(engine)]
    assert got == [(contacts[0], "cancelled", "viewed_again"), (contacts[0], "sent", None),
                   (contacts[1], "skipped", "products_in_cart"), (contacts[2], "skipped", "ordered_since")]
    assert triggers(engine, status="sent")[0]["due_at"] == START + timedelta(minutes=50)
    # viewed again after being enrolled: once per window
    view(contacts[0], "p-4", clock())
    await run_until(proc, clock, clock() + timedelta(hours=1), step=timedelta(minutes=5))
    assert triggers(engine)[-1]["reason"] == "within_retrigger_window"
    assert len(sandbox.program_entries(program)) == 1


@pytest.mark.parametrize("fault", [dict(status=503), dict(drop_connection=True)])
async def test_a_retryable_failure_holds_the_triggers(engine, database_url, sandbox, clock, fault, caplog):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 2)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    sandbox.inject_fault(method="POST", path_contains="/v2/programs/enrolments", **fault)
    proc = processor(engine, settings, clock)
    with caplog.at_level(logging.WARNING, logger="ctdd.programs.enrolment"):
        await run_until(proc, clock, START + timedelta(minutes=60, seconds=30), step=timedelta(seconds=30))
    assert Counter(r["status"] for r in triggers(engine)) == {"enrolling": 2}  # held, paused for a minute
    assert "held" in caplog.text
    await run_until(proc, clock, clock() + timedelta(minutes=3), step=timedelta(seconds=30))
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 2}
    assert sorted(Counter(e.contact_id for e in sandbox.program_entries(program)).values()) == [1, 1]
    with engine.connect() as conn:
        calls = conn.execute(sa.select(EnrolmentCall.__table__.c.status, EnrolmentCall.__table__.c.error_code)
                             .order_by(EnrolmentCall.__table__.c.id)).all()
    assert [c.status for c in calls] == ["failed", "Finished"]  # the failed call counted against the budget


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_hold_the_triggers_until_the_account_answers(engine, database_url, sandbox, clock,
                                                                               status, caplog):
    """A 401 or 403 (rotated password, an API user without the Programs permission) is for an operator to fix:
    the triggers are held and sent once the account answers again, not skipped."""
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contact, modified=START)
    sandbox.inject_fault(status=status, times=2, method="POST", path_contains="/v2/programs/enrolments",
                         body={"message": "Authorization has been denied for this request."})
    proc = processor(engine, settings, clock)
    with caplog.at_level(logging.ERROR, logger="ctdd.programs.enrolment"):
        await run_until(proc, clock, START + timedelta(minutes=64), step=timedelta(minutes=1))
    assert (one_trigger(engine)["status"], len(sandbox.program_entries(program))) == ("enrolling", 0)
    assert f"HTTP {status}" in caplog.text and "held" in caplog.text and "[accounts." in caplog.text
    await run_until(proc, clock, clock() + timedelta(minutes=32), step=timedelta(minutes=1))  # a second 401, then OK
    assert one_trigger(engine)["status"] == "sent"
    assert [e.contact_id for e in sandbox.program_entries(program)] == [sandbox.contacts[0]["contactId"]]


async def test_a_permanent_failure_skips_the_batch_with_the_code(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contact, modified=START)
    sandbox.inject_fault(status=400, method="POST", path_contains="/v2/programs/enrolments",
                         body={"message": "Error: ERROR_ENROLMENT_INVALID"})
    await run_until(processor(engine, settings, clock), clock, START + timedelta(minutes=62), step=timedelta(minutes=1))
    row = one_trigger(engine)
    assert (row["status"], row["reason"]) == ("skipped", "enrolment_failed: ERROR_ENROLMENT_INVALID")


async def test_a_contact_deleted_in_dotdigital_skips_only_its_own_trigger(engine, database_url, sandbox, clock, caplog):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 4)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    gone = sandbox.contacts[1]["contactId"]
    assert sandbox.delete_contact(contact_id=gone)
    await run_until(processor(engine, settings, clock), clock, START + timedelta(minutes=65),
                    step=timedelta(seconds=30))
    rows = triggers(engine)
    assert Counter((r["status"], r["reason"]) for r in rows) == {
        ("sent", None): 3, ("skipped", "contact_not_in_dotdigital"): 1}
    entered = sorted(e.contact_id for e in sandbox.program_entries(program))
    assert gone not in entered and len(entered) == 3


async def test_an_unreadable_201_is_looked_up_not_skipped(engine, database_url, sandbox, clock):
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0)
    contacts = await seed_contacts(engine, sandbox, 2)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    sandbox.inject_fault(status=201, method="POST", path_contains="/v2/programs/enrolments", body="<html>ok</html>")
    await run_until(processor(engine, settings, clock), clock, START + timedelta(minutes=65),
                    step=timedelta(seconds=30))
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 2}
    assert len(sandbox.program_entries(program)) == 2


async def test_a_trigger_that_waited_into_quiet_hours_goes_back_to_pending(engine, database_url, sandbox, clock):
    from zoneinfo import ZoneInfo

    program = sandbox.add_program("Abandoned cart")
    tz = ZoneInfo(program_settings(database_url, sandbox, {}).stores["uk"].time_zone)
    due = START + timedelta(minutes=60)  # decided "send" then; its partial batch waits 5 minutes
    quiet_start, quiet_end = (due + timedelta(minutes=2)).astimezone(tz), (due + timedelta(hours=2)).astimezone(tz)
    ac = {**AC, "program": program, "quiet_hours_start": quiet_start.strftime("%H:%M"),
          "quiet_hours_end": quiet_end.strftime("%H:%M")}
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": ac}}, batch_wait_seconds=300)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-0", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock)
    await run_until(proc, clock, due + timedelta(minutes=1), step=timedelta(seconds=30))
    assert one_trigger(engine)["status"] == "enrolling"
    await run_until(proc, clock, due + timedelta(minutes=10), step=timedelta(seconds=30))
    row = one_trigger(engine)
    assert (row["status"], row["reason"]) == ("pending", "quiet_hours")
    assert row["due_at"].replace(tzinfo=None) == (due + timedelta(hours=2)).replace(tzinfo=None)
    assert sandbox.program_entries(program) == []
    await run_until(proc, clock, due + timedelta(hours=2, minutes=10), step=timedelta(minutes=1))
    assert one_trigger(engine)["status"] == "sent"
    assert len(sandbox.program_entries(program)) == 1


async def test_a_pass_stops_when_another_worker_took_the_enrolment_lease(engine, database_url, sandbox, clock):
    from ctdd.db.models import Lease

    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {**AC, "program": program}}},
                                batch_wait_seconds=0, enrolment_batch_size=2)
    contacts = await seed_contacts(engine, sandbox, 4)
    for i, contact in enumerate(contacts):
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock, worker_id="first")
    real_call = proc.batcher._call

    async def call_then_lose_the_lease(account, client, reserved):
        await real_call(account, client, reserved)
        with engine.begin() as conn:  # the lease expired during the call and another worker took it
            conn.execute(sa.update(Lease.__table__).values(owner="second", expires_at=clock() + timedelta(hours=1)))

    proc.batcher._call = call_then_lose_the_lease
    clock.advance(START + timedelta(minutes=61))
    await proc.run_once()
    assert len(sandbox.enrolment_calls) == 1  # the second batch is left to the lease's new holder
    assert Counter(r["status"] for r in triggers(engine)) == {"sent": 2, "enrolling": 2}
