"""Program triggers on a virtual clock, on SQLite and PostgreSQL, against the Dotdigital sandbox over HTTP: every
safeguard checked again at the moment of sending, each decision recorded with its reason."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from ctdd import hookimpl
from ctdd.clock import VirtualClock
from ctdd.hooks.types import TriggerDecision
from ctdd.programs import scheduling
from ctdd.programs.processor import TriggerProcessor
from support.programs import (
    START, add_contact, close_clients, dd_contacts, one_trigger, processor, program_settings, put_cart, put_order, run_until,
    seed_contacts, triggers,
)
from sqlalchemy.orm import Session

AC = {"program": 0, "delay_minutes": 60, "retrigger_window_hours": 24}


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


@pytest.fixture
def program(sandbox):
    return sandbox.add_program("Abandoned cart")


def settings_for(database_url, sandbox, program_id, *, kind="abandoned_cart", store="uk", **overrides):
    cfg = {**AC, "program": program_id, **overrides}
    return program_settings(database_url, sandbox, {store: {kind: cfg}}, batch_wait_seconds=0)


async def settle(proc: TriggerProcessor, clock: VirtualClock, minutes: float = 61) -> None:
    """Run the processor over ``minutes`` of virtual time, a pass a minute, and read the enrolments' outcome."""
    await run_until(proc, clock, clock() + timedelta(minutes=minutes), step=timedelta(minutes=1))
    clock.advance(timedelta(seconds=5))
    await proc.run_once()


async def test_an_abandoned_cart_enrols_the_contact_once(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=3, contact_id=contact, modified=START)
    put_cart(engine, settings, "uk", "cart-1", version=3, contact_id=contact, modified=START)  # redelivered
    proc = processor(engine, settings, clock)
    await settle(proc, clock, minutes=59)
    assert one_trigger(engine)["status"] == "pending"  # not due yet
    await settle(proc, clock, minutes=5)
    row = one_trigger(engine)
    assert (row["status"], row["reason"], row["program_id"]) == ("sent", None, program)
    assert row["enrolment_id"]
    entries = sandbox.program_entries(program)
    assert [e.contact_id for e in entries] == [sandbox.get_contact(email="shopper0@example.com")["contactId"]]
    assert len(sandbox.enrolment_calls) == 1
    await settle(proc, clock, minutes=120)
    assert len(sandbox.enrolment_calls) == 1 and len(sandbox.program_entries(program)) == 1


@pytest.mark.parametrize("change, reason, status", [
    (dict(state="Ordered", order_id="o-1"), "cart_ordered", "cancelled"),
    (dict(state="Merged", merged_into="cart-2"), "cart_merged", "cancelled"),
    (dict(lines=0), "cart_emptied", "cancelled"),
])
async def test_a_closed_or_emptied_cart_is_never_triggered(engine, database_url, sandbox, clock, program, change,
                                                           reason, status):
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=3, contact_id=contact, modified=START)
    put_cart(engine, settings, "uk", "cart-1", version=4, contact_id=contact, modified=START + timedelta(minutes=10),
             **change)
    await settle(processor(engine, settings, clock), clock, minutes=180)
    assert [(r["subject_version"], r["status"], r["reason"]) for r in triggers(engine)] == [(3, status, reason)]
    assert sandbox.enrolment_calls == []


@pytest.mark.parametrize("change, reason", [
    (dict(state="Ordered", order_id="o-1"), "cart_ordered"),
    (dict(state="Merged", merged_into="cart-2"), "cart_merged"),
    (dict(lines=0), "cart_emptied"),
])
async def test_the_cart_row_is_checked_at_the_moment_of_sending(engine, database_url, sandbox, clock, program,
                                                                change, reason):
    """The cart changed without the scheduling being told (a missed call): the processor still sees it."""
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=3, contact_id=contact, modified=START)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE cart SET state = %s, line_item_count = %s, order_id = %s, merged_into = %s" % (
                f"'{change.get('state', 'Active')}'", change.get("lines", 2),
                f"'{change['order_id']}'" if "order_id" in change else "NULL",
                f"'{change['merged_into']}'" if "merged_into" in change else "NULL"))
    await settle(processor(engine, settings, clock), clock, minutes=70)
    row = one_trigger(engine)
    assert (row["status"], row["reason"]) == ("cancelled", reason)
    assert row["decided_at"] is not None
    assert sandbox.enrolment_calls == []


async def test_a_cart_changed_again_restarts_the_timer_one_trigger_per_version(engine, database_url, sandbox, clock,
                                                                            program):
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    proc = processor(engine, settings, clock)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    clock.advance(timedelta(minutes=50))
    put_cart(engine, settings, "uk", "cart-1", version=2, contact_id=contact, modified=clock())
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)  # late, stale
    await settle(proc, clock, minutes=30)  # 80 minutes after the first change: the first timer would have fired
    rows = triggers(engine)
    assert [(r["subject_version"], r["status"], r["reason"]) for r in rows] == [
        (1, "cancelled", "cart_changed"), (2, "pending", None)]
    await settle(proc, clock, minutes=40)
    rows = triggers(engine)
    assert [(r["subject_version"], r["status"]) for r in rows] == [(1, "cancelled"), (2, "sent")]
    assert rows[1]["due_at"] == START + timedelta(minutes=110)
    assert len(sandbox.program_entries(program)) == 1


async def test_an_order_since_the_last_change_skips_the_cart(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    # an order of another cart (e.g. on another device), placed after this cart's last change
    put_order(engine, settings, "uk", "order-9", contact_id=contact, placed=START + timedelta(minutes=20))
    await settle(processor(engine, settings, clock), clock, minutes=70)
    assert (one_trigger(engine)["status"], one_trigger(engine)["reason"]) == ("skipped", "ordered_since")
    assert sandbox.enrolment_calls == []


@pytest.mark.parametrize("channel, status, reason", [
    ("email", dict(dd_email_status="unsubscribed"), "unsubscribed"),
    ("email", dict(dd_email_status="hardBounced"), "suppressed"),
    ("email", dict(dd_email_status="pendingOptIn"), "pending_opt_in"),
    ("email", dict(dd_email_status="subscribed", dd_email_status_at=START - timedelta(days=1),
                   shop_email_consent="unsubscribed", shop_email_consent_at=START), "unsubscribed"),
    ("sms", dict(dd_sms_status="unsubscribed"), "unsubscribed"),
    ("sms", dict(dd_sms_status="suppressed"), "suppressed"),
    ("sms", dict(dd_sms_status="pendingOptIn"), "pending_opt_in"),
])
async def test_consent_per_channel(engine, database_url, sandbox, clock, program, channel, status, reason):
    settings = settings_for(database_url, sandbox, program, channel=channel)
    [dd_id] = await dd_contacts(sandbox, ["jane@example.com"])
    contact = add_contact(engine, email="jane@example.com", mobile="+447700900123", dd_id=dd_id, **status)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    await settle(processor(engine, settings, clock), clock, minutes=70)
    assert (one_trigger(engine)["status"], one_trigger(engine)["reason"]) == ("skipped", reason)
    assert sandbox.enrolment_calls == []


async def test_the_other_channel_does_not_matter(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program, channel="email")
    [dd_id] = await dd_contacts(sandbox, ["jane@example.com"])
    contact = add_contact(engine, email="jane@example.com", dd_id=dd_id, dd_email_status="subscribed",
                          dd_sms_status="unsubscribed")
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    await settle(processor(engine, settings, clock), clock, minutes=70)
    assert one_trigger(engine)["status"] == "sent"


async def test_once_per_window(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program, retrigger_window_hours=24)
    [contact] = await seed_contacts(engine, sandbox, 1)
    proc = processor(engine, settings, clock)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    put_cart(engine, settings, "uk", "cart-2", version=1, contact_id=contact, modified=START)  # same moment
    await settle(proc, clock, minutes=70)
    clock.advance(timedelta(hours=2))
    put_cart(engine, settings, "uk", "cart-3", version=1, contact_id=contact, modified=clock())
    await settle(proc, clock, minutes=70)
    clock.advance(timedelta(hours=24))
    put_cart(engine, settings, "uk", "cart-4", version=1, contact_id=contact, modified=clock())
    await settle(proc, clock, minutes=70)
    got = [(r["subject_id"], r["status"], r["reason"]) for r in triggers(engine)]
    assert got == [("cart-1", "sent", None), ("cart-2", "skipped", "within_retrigger_window"),
                   ("cart-3", "skipped", "within_retrigger_window"), ("cart-4", "sent", "enrolment_fault: AlreadyInProgram")]


async def test_no_email_and_no_mobile(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program)
    contact = add_contact(engine, dd_id=77)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    await settle(processor(engine, settings, clock), clock, minutes=70)
    assert (one_trigger(engine)["status"], one_trigger(engine)["reason"]) == ("skipped", "no_address")


async def test_a_contact_not_in_dotdigital_yet_waits_for_its_upsert(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program)
    contact = add_contact(engine, email="new@example.com")
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock)
    await settle(proc, clock, minutes=65)
    row = one_trigger(engine)
    assert (row["status"], row["reason"]) == ("pending", "contact_not_in_dotdigital")
    assert row["attempts"] >= 2
    # the contact's upsert is delivered: Dotdigital knows it now
    [dd_id] = await dd_contacts(sandbox, ["new@example.com"])
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE contact SET dotdigital_contact_id = {dd_id} WHERE id = {contact}")
    await settle(proc, clock, minutes=2)
    assert one_trigger(engine)["status"] == "sent"
    assert [e.contact_id for e in sandbox.program_entries(program)] == [dd_id]


class StaffVeto:
    @hookimpl
    def ctdd_should_trigger(self, ctx, trigger):
        if trigger.email and trigger.email.endswith("@staff.example.com"):
            return TriggerDecision.veto("staff account")
        return None


class Broken:
    @hookimpl
    def ctdd_should_trigger(self, trigger):
        if trigger.email == "boom@example.com":
            raise RuntimeError("lookup failed")
        return None


async def test_plugin_veto_and_a_failing_plugin(engine, database_url, sandbox, clock, program, caplog):
    settings = settings_for(database_url, sandbox, program)
    emails = ["ann@staff.example.com", "boom@example.com", "bob@example.com"]
    dd_ids = await dd_contacts(sandbox, emails)
    for i, (email, dd_id) in enumerate(zip(emails, dd_ids)):
        contact = add_contact(engine, email=email, dd_id=dd_id, dd_email_status="subscribed")
        put_cart(engine, settings, "uk", f"cart-{i}", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock, plugins=[StaffVeto(), Broken()])
    with caplog.at_level(logging.ERROR, logger="ctdd.hooks.manager"):
        await settle(proc, clock, minutes=70)
    got = {r["subject_id"]: (r["status"], r["reason"]) for r in triggers(engine)}
    assert got == {"cart-0": ("skipped", "vetoed: staff account"),
                   "cart-1": ("skipped", "plugin_failed: Broken: RuntimeError"),
                   "cart-2": ("sent", None)}
    assert "Broken" in caplog.text and "RuntimeError" in caplog.text
    assert [e.contact_id for e in sandbox.program_entries(program)] == [dd_ids[2]]


class Later:
    @hookimpl
    def ctdd_should_trigger(self, trigger):
        if trigger.now < START + timedelta(hours=5):
            return TriggerDecision.defer(START + timedelta(hours=5), "stock check")
        return None


async def test_plugin_defer(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    proc = processor(engine, settings, clock, plugins=[Later()])
    await settle(proc, clock, minutes=70)
    row = one_trigger(engine)
    assert (row["status"], row["reason"], row["due_at"]) == ("pending", "deferred_by_plugin: stock check",
                                                             START + timedelta(hours=5))
    await settle(proc, clock, minutes=240)
    assert one_trigger(engine)["status"] == "sent"


async def test_quiet_hours_defer_and_do_not_drop(engine, database_url, sandbox, clock, program):
    # store in Berlin (UTC+2 in June), quiet 22:00-08:00 local; the cart changes at 21:30 local (19:30 UTC)
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {
        **AC, "program": program, "quiet_hours_start": "22:00", "quiet_hours_end": "08:00"}}},
        stores_extra={"uk": {"time_zone": "Europe/Berlin"}}, batch_wait_seconds=0)
    [contact] = await seed_contacts(engine, sandbox, 1)
    clock.advance(START.replace(hour=19, minute=30))
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=clock())
    proc = processor(engine, settings, clock)
    await settle(proc, clock, minutes=75)  # due 20:30 UTC = 22:30 local: quiet
    row = one_trigger(engine)
    assert (row["status"], row["reason"], row["due_at"]) == ("pending", "quiet_hours", START.replace(
        day=2, hour=6, minute=0))
    assert sandbox.enrolment_calls == []
    await run_until(proc, clock, START.replace(day=2, hour=6), step=timedelta(minutes=30))
    clock.advance(timedelta(seconds=5))
    await proc.run_once()
    assert one_trigger(engine)["status"] == "sent"
    assert sandbox.enrolment_calls[0].at == START.replace(day=2, hour=6, minute=0)


@pytest.mark.parametrize("state, refund, reason", [("Cancelled", 0.0, "order_cancelled"),
                                                    ("Open", 50.0, "order_refunded")])
async def test_post_purchase_is_cancelled_by_a_cancellation_or_refund(engine, database_url, sandbox, clock, program,
                                                                      state, refund, reason):
    settings = settings_for(database_url, sandbox, program, kind="post_purchase_first", delay_minutes=24 * 60)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_order(engine, settings, "uk", "order-1", contact_id=contact, placed=START, first_order=True)
    put_order(engine, settings, "uk", "order-2", contact_id=contact, placed=START, first_order=False)  # no repeat program
    assert [r["program_kind"] for r in triggers(engine)] == ["post_purchase_first"]
    clock.advance(timedelta(hours=2))
    # the order changes; the ingest side tells the scheduling
    put_order(engine, settings, "uk", "order-1", contact_id=contact, placed=START, state=state, refund=refund,
              schedule=False)
    with Session(engine) as session, session.begin():
        scheduling.on_order_cancelled(session, settings.stores["uk"], "order-1", reason, clock())
    row = one_trigger(engine)
    assert (row["status"], row["reason"]) == ("cancelled", reason)


async def test_post_purchase_checks_the_order_at_the_moment_of_sending(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program, kind="post_purchase_first", delay_minutes=60)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_order(engine, settings, "uk", "order-1", contact_id=contact, placed=START)
    put_order(engine, settings, "uk", "order-1", contact_id=contact, placed=START, state="Cancelled", schedule=False)
    await settle(processor(engine, settings, clock), clock, minutes=70)
    assert (one_trigger(engine)["status"], one_trigger(engine)["reason"]) == ("cancelled", "order_cancelled")


async def test_review_request_after_delivery(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program, kind="review_request", delay_minutes=3 * 24 * 60)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_order(engine, settings, "uk", "order-1", contact_id=contact, placed=START)
    assert triggers(engine) == []
    with Session(engine) as session, session.begin():
        scheduling.on_shipment_delivered(session, settings.stores["uk"], contact, "order-1",
                                         START + timedelta(days=1), START + timedelta(days=1))
    row = one_trigger(engine)
    assert (row["program_kind"], row["subject_type"], row["due_at"]) == ("review_request", "order",
                                                                          START + timedelta(days=4))


async def test_a_disabled_program_schedules_nothing(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program, enabled=False)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=contact, modified=START)
    put_cart(engine, settings, "de", "cart-2", version=1, contact_id=contact, modified=START)  # no programs at all
    assert triggers(engine) == []


async def test_an_anonymous_cart_schedules_once_attributed(engine, database_url, sandbox, clock, program):
    settings = settings_for(database_url, sandbox, program)
    [contact] = await seed_contacts(engine, sandbox, 1)
    put_cart(engine, settings, "uk", "cart-1", version=1, contact_id=None, modified=START)
    assert triggers(engine) == []
    put_cart(engine, settings, "uk", "cart-1", version=2, contact_id=contact, modified=START + timedelta(minutes=3))
    assert [(r["subject_version"], r["contact_id"]) for r in triggers(engine)] == [(2, contact)]
