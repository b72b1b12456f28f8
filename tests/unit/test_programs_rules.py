"""The pure program-trigger rules (ctdd.domain.programs): quiet hours (DST included), windows, series timing,
channel status and every safeguard of the decision."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from ctdd.domain import programs as rules
from ctdd.domain.programs import Decision, TriggerFacts

UTC = timezone.utc
NIGHT = ((22, 0), (8, 0))  # spans midnight
LUNCH = ((12, 0), (14, 0))  # same day


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- quiet hours -------------------------------------------------------------------------------------------------

def test_outside_quiet_hours_is_now():
    assert rules.next_allowed_time(at(2026, 6, 1, 12, 0), "UTC", NIGHT) == at(2026, 6, 1, 12, 0)
    assert rules.next_allowed_time(at(2026, 6, 1, 12, 0), "UTC", None) == at(2026, 6, 1, 12, 0)
    assert rules.next_allowed_time(at(2026, 6, 1, 14, 0), "UTC", LUNCH) == at(2026, 6, 1, 14, 0)  # end excluded


def test_quiet_hours_spanning_midnight():
    # before midnight: tomorrow 08:00; after midnight: today 08:00
    assert rules.next_allowed_time(at(2026, 6, 1, 23, 30), "UTC", NIGHT) == at(2026, 6, 2, 8, 0)
    assert rules.next_allowed_time(at(2026, 6, 2, 3, 0), "UTC", NIGHT) == at(2026, 6, 2, 8, 0)
    assert rules.next_allowed_time(at(2026, 6, 1, 22, 0), "UTC", NIGHT) == at(2026, 6, 2, 8, 0)  # start included


def test_quiet_hours_same_day_and_equal_bounds():
    assert rules.next_allowed_time(at(2026, 6, 1, 12, 30), "UTC", LUNCH) == at(2026, 6, 1, 14, 0)
    assert rules.next_allowed_time(at(2026, 6, 1, 12, 30), "UTC", ((12, 0), (12, 0))) == at(2026, 6, 1, 12, 30)


def test_quiet_hours_are_local_time():
    # 21:30 UTC is 23:30 in Berlin (CEST, UTC+2): quiet until 08:00 local = 06:00 UTC
    assert rules.next_allowed_time(at(2026, 6, 1, 21, 30), "Europe/Berlin", NIGHT) == at(2026, 6, 2, 6, 0)
    # 20:30 UTC in New York (EDT, UTC-4) is 16:30: allowed
    assert rules.next_allowed_time(at(2026, 6, 1, 20, 30), "America/New_York", NIGHT) == at(2026, 6, 1, 20, 30)


def test_quiet_hours_over_the_spring_forward_night():
    # London, 29 March 2026: clocks go 01:00 GMT -> 02:00 BST. 23:00 GMT on the 28th is quiet; 08:00 BST = 07:00 UTC
    assert rules.next_allowed_time(at(2026, 3, 28, 23, 0), "Europe/London", NIGHT) == at(2026, 3, 29, 7, 0)


def test_quiet_hours_ending_in_the_skipped_hour_end_at_the_jump():
    # quiet 22:00-01:30 local; 01:30 does not exist on 29 March 2026 in London: it ends at the jump (01:00 UTC)
    end = rules.next_allowed_time(at(2026, 3, 29, 0, 30), "Europe/London", ((22, 0), (1, 30)))
    assert end == at(2026, 3, 29, 1, 0)
    assert end.astimezone(rules.ZoneInfo("Europe/London")).hour == 2


def test_quiet_hours_over_the_fall_back_night():
    # London, 25 October 2026: 02:00 BST -> 01:00 GMT. 23:00 BST (22:00 UTC) on the 24th: 08:00 GMT = 08:00 UTC
    assert rules.next_allowed_time(at(2026, 10, 24, 22, 0), "Europe/London", NIGHT) == at(2026, 10, 25, 8, 0)
    # quiet 22:00-01:30: the first 01:30 (BST, 00:30 UTC) ends them
    assert rules.next_allowed_time(at(2026, 10, 24, 23, 0), "Europe/London", ((22, 0), (1, 30))) == at(2026, 10, 25, 0, 30)
    # during the repeated hour (01:15 GMT = 01:15 UTC, after the first 01:30 passed) the wall clock is quiet
    # again: the second 01:30 ends it, never a time in the past
    assert rules.next_allowed_time(at(2026, 10, 25, 1, 15), "Europe/London", ((22, 0), (1, 30))) == at(2026, 10, 25, 1, 30)


def test_quiet_hours_result_is_never_before_the_input_over_a_year():
    moment = at(2026, 1, 1, 0, 0)
    for _ in range(24 * 365 // 5):
        allowed = rules.next_allowed_time(moment, "Europe/London", NIGHT)
        assert allowed >= moment
        local = allowed.astimezone(rules.ZoneInfo("Europe/London"))
        assert 8 <= local.hour < 22 or allowed == moment
        moment += timedelta(hours=5, minutes=7)


# -- windows and series ------------------------------------------------------------------------------------------

def test_retrigger_window():
    now = at(2026, 6, 1, 12, 0)
    assert rules.within_window(now - timedelta(hours=23), now, 24)
    assert not rules.within_window(now - timedelta(hours=24), now, 24)
    assert not rules.within_window(None, now, 24)
    assert not rules.within_window(now - timedelta(minutes=1), now, 0)  # 0: no window


def test_series_due_times():
    base = at(2026, 6, 1, 12, 0)
    steps = [60, 60 + 24 * 60, 60 + 24 * 60 + 48 * 60]
    assert rules.step_due_times(base, steps) == [base + timedelta(hours=1), base + timedelta(hours=25),
                                                 base + timedelta(hours=73)]
    sent = at(2026, 6, 1, 13, 5)
    assert rules.next_step_due(sent, 1, steps) == sent + timedelta(hours=24)
    assert rules.next_step_due(sent, 2, steps) == sent + timedelta(hours=48)
    assert rules.next_step_due(sent, 3, steps) is None
    assert rules.next_step_due(sent, 1, [60]) is None


# -- channel status ----------------------------------------------------------------------------------------------

T0, T1 = at(2026, 1, 1), at(2026, 2, 1)


@pytest.mark.parametrize("dd, dd_at, shop, shop_at, expected", [
    ("subscribed", T0, None, None, rules.SUBSCRIBED),
    ("Subscribed", T0, None, None, rules.SUBSCRIBED),
    (None, None, None, None, rules.UNKNOWN),
    ("noSubscription", T0, None, None, rules.UNKNOWN),
    (None, None, "subscribed", T0, rules.SUBSCRIBED),
    ("unsubscribed", T0, "subscribed", T1, rules.UNSUBSCRIBED),  # a newer shop opt-in does not lift it by itself
    ("hardBounced", T0, None, None, rules.SUPPRESSED),
    ("suppressed", T0, None, None, rules.SUPPRESSED),
    ("ispComplained", T0, None, None, rules.SUPPRESSED),
    ("pendingOptIn", T0, None, None, rules.PENDING_OPT_IN),
    ("PendingOptIn", T0, "subscribed", T1, rules.PENDING_OPT_IN),
    ("subscribed", T0, "unsubscribed", T1, rules.UNSUBSCRIBED),  # the shop's newer opt-out
    ("subscribed", T1, "unsubscribed", T0, rules.SUBSCRIBED),  # Dotdigital's newer subscription
    (None, None, "unsubscribed", T0, rules.UNSUBSCRIBED),
])
def test_channel_status(dd, dd_at, shop, shop_at, expected):
    assert rules.channel_status(dd, dd_at, shop, shop_at) == expected


# -- the decision ------------------------------------------------------------------------------------------------

NOW = at(2026, 6, 1, 12, 0)
CHANGED = NOW - timedelta(hours=1)


def cart_facts(**kw) -> TriggerFacts:
    base = dict(program_kind=rules.ABANDONED_CART, subject_type=rules.SUBJECT_CART, subject_version=5, step=1, now=NOW,
                cart_state="Active", cart_version=5, cart_line_item_count=2, since=CHANGED,
                channel_status=rules.SUBSCRIBED, has_email=True, retrigger_window_hours=24)
    base.update(kw)
    return TriggerFacts(**base)


def test_a_clean_cart_is_sent():
    assert rules.decide(cart_facts()) == Decision.send()


@pytest.mark.parametrize("changes, expected", [
    (dict(cart_state="Ordered", cart_ordered=True), Decision.cancel("cart_ordered")),
    (dict(cart_ordered=True), Decision.cancel("cart_ordered")),
    (dict(cart_state="Merged", cart_merged=True), Decision.cancel("cart_merged")),
    (dict(cart_line_item_count=0), Decision.cancel("cart_emptied")),
    (dict(cart_version=6), Decision.cancel("cart_changed")),
    (dict(cart_version=6, cart_line_item_count=0), Decision.cancel("cart_emptied")),
    (dict(cart_state="Frozen"), Decision.cancel("cart_frozen")),
    (dict(cart_state=None), Decision.skip("cart_unknown")),
    (dict(last_order_at=CHANGED + timedelta(minutes=5)), Decision.skip("ordered_since")),
    (dict(channel_status=rules.UNSUBSCRIBED), Decision.skip("unsubscribed")),
    (dict(channel_status=rules.SUPPRESSED), Decision.skip("suppressed")),
    (dict(channel_status=rules.PENDING_OPT_IN), Decision.skip("pending_opt_in")),
    (dict(last_entry_at=NOW - timedelta(hours=3)), Decision.skip("within_retrigger_window")),
    (dict(has_email=False, has_mobile=False), Decision.skip("no_address")),
    (dict(has_email=False, has_mobile=True), Decision.skip("no_email")),
    (dict(channel="sms", has_mobile=False), Decision.skip("no_mobile")),
    (dict(plugin_veto=rules.vetoed("staff account")), Decision.skip("vetoed: staff account")),
    (dict(enabled=False), Decision.skip("program_disabled")),
])
def test_each_safeguard(changes, expected):
    assert rules.decide(cart_facts(**changes)) == expected


def test_an_order_before_the_last_change_does_not_count():
    assert rules.decide(cart_facts(last_order_at=CHANGED - timedelta(minutes=5))).action == rules.SEND


def test_the_window_only_stops_the_first_step():
    assert rules.decide(cart_facts(step=2, last_entry_at=NOW - timedelta(hours=3))).action == rules.SEND


def test_contact_not_in_dotdigital_waits_then_gives_up():
    f = cart_facts(dotdigital_contact_known=False, contact_wait_seconds=30, contact_wait_until=NOW + timedelta(hours=1))
    assert rules.decide(f) == Decision.defer(NOW + timedelta(seconds=30), "contact_not_in_dotdigital")
    assert rules.decide(replace(f, contact_wait_until=NOW)) == Decision.skip("contact_not_in_dotdigital")
    # a list join travels in the contact's partition, after its upsert: no wait
    assert rules.decide(replace(f, strategy="list_join")).action == rules.SEND


def test_quiet_hours_defer_never_drop():
    f = cart_facts(now=at(2026, 6, 1, 23, 0), quiet_hours=NIGHT)
    assert rules.decide(f) == Decision.defer(at(2026, 6, 2, 8, 0), "quiet_hours")
    assert rules.decide(replace(f, now=at(2026, 6, 2, 8, 0))).action == rules.SEND


def test_plugin_defer():
    until = NOW + timedelta(hours=2)
    d = rules.decide(cart_facts(plugin_defer_until=until, plugin_defer_reason="stock check"))
    assert d == Decision.defer(until, "deferred_by_plugin: stock check")
    assert rules.decide(cart_facts(plugin_defer_until=NOW - timedelta(seconds=1))).action == rules.SEND


def test_a_veto_wins_over_quiet_hours_and_waiting():
    f = cart_facts(now=at(2026, 6, 1, 23, 0), quiet_hours=NIGHT, dotdigital_contact_known=False,
                   plugin_veto=rules.plugin_failed("brand", "RuntimeError"))
    assert rules.decide(f) == Decision.skip("plugin_failed: brand: RuntimeError")


def test_order_subjects():
    f = TriggerFacts(program_kind=rules.POST_PURCHASE_FIRST, subject_type=rules.SUBJECT_ORDER, subject_version=0,
                     step=1, now=NOW, channel_status=rules.SUBSCRIBED, last_order_at=NOW)
    assert rules.decide(f).action == rules.SEND  # the order itself is no "ordered since"
    assert rules.decide(replace(f, order_cancelled=True)) == Decision.cancel("order_cancelled")
    assert rules.decide(replace(f, order_refunded=True)) == Decision.cancel("order_refunded")


def test_browse_subjects():
    f = TriggerFacts(program_kind=rules.BROWSE_ABANDONMENT, subject_type=rules.SUBJECT_BROWSE, subject_version=1,
                     step=1, now=NOW, browse_products=2, since=CHANGED, channel_status=rules.UNKNOWN)
    assert rules.decide(f).action == rules.SEND
    assert rules.decide(replace(f, browse_products=0)) == Decision.skip("products_in_cart")
    assert rules.decide(replace(f, last_order_at=NOW - timedelta(minutes=1))) == Decision.skip("ordered_since")


def test_presend_checks_the_subject_consent_and_quiet_hours():
    assert rules.presend_decision(cart_facts(cart_ordered=True)) == Decision.cancel("cart_ordered")
    assert rules.presend_decision(cart_facts(last_order_at=NOW)) == Decision.skip("ordered_since")
    assert rules.presend_decision(cart_facts(channel_status=rules.SUPPRESSED)) == Decision.skip("suppressed")
    assert rules.presend_decision(cart_facts(last_entry_at=NOW)) is None  # the window was passed when decided
    assert rules.presend_decision(cart_facts(quiet_hours=((21, 0), (8, 0)))) is None  # 12:00: allowed


def test_presend_defers_a_trigger_that_waited_into_quiet_hours():
    # decided "send" at 20:58, its batch goes at 21:03: quiet hours 21:00-08:00 send it back to pending until 08:00
    f = cart_facts(now=at(2026, 6, 1, 21, 3), quiet_hours=((21, 0), (8, 0)))
    assert rules.presend_decision(f) == Decision.defer(at(2026, 6, 2, 8, 0), "quiet_hours")
    # a cancelled subject still wins over the quiet hours
    assert rules.presend_decision(replace(f, cart_ordered=True)) == Decision.cancel("cart_ordered")


def test_reasons_are_stable_strings():
    assert len(set(rules.REASONS)) == len(rules.REASONS)
    assert all(r == r.lower() and " " not in r for r in rules.REASONS)


def test_a_trigger_past_its_max_age_is_skipped_as_too_old():
    late = cart_facts(first_due_at=NOW - timedelta(hours=25), max_age_hours=24)
    assert rules.decide(late) == Decision.skip("too_old")
    assert rules.presend_decision(late) == Decision.skip("too_old")
    # just inside the limit: sent; no limit (0) or no first due time recorded: never too old
    assert rules.decide(replace(late, first_due_at=NOW - timedelta(hours=23))) == Decision.send()
    assert rules.decide(replace(late, max_age_hours=0)) == Decision.send()
    assert rules.decide(replace(late, first_due_at=None)) == Decision.send()
    # the subject still decides first: an ordered cart is cancelled, not "too old"
    assert rules.decide(replace(late, cart_ordered=True)) == Decision.cancel("cart_ordered")


def test_a_deferral_that_would_end_past_the_max_age_skips_at_once():
    # due 21:30, decided at 22:30 inside quiet hours 22:00-08:00 with a 6-hour limit: 08:00 is too late
    f = cart_facts(now=at(2026, 6, 1, 22, 30), first_due_at=at(2026, 6, 1, 21, 30), max_age_hours=6,
                   quiet_hours=NIGHT)
    assert rules.decide(f) == Decision.skip("too_old")
    assert rules.presend_decision(f) == Decision.skip("too_old")
    # with a 12-hour limit it waits for the morning
    assert rules.decide(replace(f, max_age_hours=12)) == Decision.defer(at(2026, 6, 2, 8, 0), "quiet_hours")
    assert rules.presend_decision(replace(f, max_age_hours=12)) == Decision.defer(at(2026, 6, 2, 8, 0),
                                                                                  "quiet_hours")
