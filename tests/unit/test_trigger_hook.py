"""The ``ctdd_should_trigger`` facade: every implementation is asked, a veto wins, the latest deferral wins
otherwise, and a plugin that raises (or answers nonsense) vetoes that trigger with its name."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ctdd import hookimpl
from ctdd.config import settings_from_mapping
from ctdd.hooks.manager import create_plugin_manager
from ctdd.hooks.types import HookContext, TriggerDecision, TriggerInfo

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
SETTINGS = settings_from_mapping({"accounts": {"main": {"api_user": "u", "password_env": "PW"}},
                                  "stores": {"uk": {"account": "main"}}}, env={"PW": "x"})
CTX = HookContext(store=SETTINGS.stores["uk"], settings=SETTINGS)
TRIGGER = TriggerInfo(trigger_id=1, program_kind="abandoned_cart", program=7, strategy="enrolment", channel="email",
                      contact_id=3, email="a@example.com", mobile_number=None, subject_type="cart", subject_id="c-1",
                      subject_version=2, step=1, due_at=NOW, now=NOW)


def answer(*plugins):
    return create_plugin_manager(plugins, load_entrypoints=False, env={}).should_trigger(CTX, TRIGGER)


class Allow:
    @hookimpl
    def ctdd_should_trigger(self, trigger):
        return None


class Veto:
    def __init__(self, reason):
        self.reason = reason

    @hookimpl
    def ctdd_should_trigger(self, ctx, trigger):
        return TriggerDecision.veto(self.reason)


class Defer:
    def __init__(self, hours):
        self.hours = hours

    @hookimpl
    def ctdd_should_trigger(self, trigger):
        return TriggerDecision.defer(trigger.now + timedelta(hours=self.hours), f"{self.hours}h")


class Raises:
    @hookimpl
    def ctdd_should_trigger(self, trigger):
        raise KeyError("boom")


class Nonsense:
    @hookimpl
    def ctdd_should_trigger(self, trigger):
        return "no"


def test_no_plugin_or_none_allows():
    assert answer() is None
    assert answer(Allow()) is None


def test_a_veto_wins_over_deferrals():
    assert answer(Defer(2), Veto("staff"), Allow()) == TriggerDecision.veto("staff")


def test_the_latest_deferral_wins():
    assert answer(Defer(1), Defer(5), Defer(3)).until == NOW + timedelta(hours=5)


def test_a_failing_plugin_vetoes_with_its_name():
    decision = answer(Allow(), Raises())
    assert decision.action == "failed" and decision.reason == "Raises: KeyError"
    decision = answer(Nonsense())
    assert decision.action == "failed" and decision.reason.startswith("Nonsense: invalid answer")


def test_defer_needs_an_aware_time():
    try:
        TriggerDecision.defer(datetime(2026, 1, 1), "x")
    except ValueError:
        return
    raise AssertionError("a naive time was accepted")
