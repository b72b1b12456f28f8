"""The per-account rate budget: pace before the limit is hit, pause after a throttle."""

from __future__ import annotations

import pytest

from support import contact_request, make_settings, outbox_rows, wait_for
from ctdd.dotdigital.rate_budget import RateBudget
from ctdd.testing import dotdigital_sandbox
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _budget(**kw) -> tuple[RateBudget, Clock]:
    clock = Clock()
    return RateBudget(clock=clock, wall_clock=lambda: 1_800_000_000.0, **kw), clock


def _observe(budget, remaining, *, limit=100, reset="30", status=200, **extra):
    budget.delay_for_next_call("acc")
    budget.observe("acc", status, {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining),
                                   "X-RateLimit-Reset": reset, **extra})


def test_no_pacing_while_the_budget_is_plentiful():
    budget, _ = _budget()
    assert budget.delay_for_next_call("acc") == 0  # nothing known yet
    _observe(budget, 80)
    assert [budget.delay_for_next_call("acc") for _ in range(5)] == [0] * 5


def test_below_the_burst_fraction_calls_are_spread_until_the_reset():
    budget, clock = _budget()
    _observe(budget, 32)  # 32 left for the next 30 s, 2 kept in reserve: one call per second
    waits = [budget.delay_for_next_call("acc") for _ in range(4)]
    assert waits[0] == 0
    assert waits[1] == pytest.approx(1.0, rel=0.05) and waits[2] > waits[1] and waits[3] > waits[2]
    assert budget.state("acc").waits == 3


def test_at_the_reserve_calls_wait_for_the_reset_and_a_refill_ends_the_pacing():
    budget, clock = _budget()
    _observe(budget, 2, reset="12")
    assert budget.delay_for_next_call("acc") == pytest.approx(12)
    clock.t += 12
    budget.observe("acc", 200, {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99", "X-RateLimit-Reset": "60"})
    assert budget.delay_for_next_call("acc") == 0


def test_a_429_pauses_the_account_and_an_epoch_reset_is_understood():
    budget, clock = _budget()
    _observe(budget, 0, status=429, reset=str(1_800_000_000 + 7))  # an epoch: 7 s from the wall clock's now
    assert budget.paused_for("acc") == pytest.approx(7)
    assert budget.paused_accounts() == ("acc",)
    assert budget.delay_for_next_call("acc") == pytest.approx(7)
    clock.t += 7.5
    assert budget.paused_for("acc") == 0 and budget.paused_accounts() == ()
    _observe(budget, 0, status=429, reset="5", **{"Retry-After": "9"})
    assert budget.paused_for("acc") == pytest.approx(9)  # Retry-After wins


async def _deliver(database_url, sandbox, service_factory, *, pacing: bool, n: int) -> list[int]:
    settings = make_settings(database_url, sandbox, rate_pacing=pacing, concurrency=8, max_attempts=50)
    svc = await service_factory(settings, run_dispatcher=False)
    for i in range(n):
        await svc.stub.SyncContact(contact_request(email=f"p{i}@example.com", first_name="P"))
    from ctdd.delivery.dispatcher import Dispatcher

    dispatcher = Dispatcher(svc.engine, settings, svc.app.clients, svc.app.hooks)
    dispatcher.start()
    try:
        await wait_for(lambda: all(r["status"] == "delivered" for r in outbox_rows(svc)), timeout=30,
                       what="all deliveries")
    finally:
        await dispatcher.stop(drain_seconds=1)
    return [r.status for r in sandbox.requests]


async def test_pacing_from_the_rate_headers_avoids_the_wall(monkeypatch, tmp_path, service_factory):
    """The sandbox allows 16 calls per second. Sending 24 messages flat out hits 429s; paced by the
    X-RateLimit-* headers of the successful calls, the same work gets none."""
    monkeypatch.setattr(dotdigital_sandbox, "_RATE_WINDOW_SECONDS", 1.0)
    with DotdigitalSandbox(rate_limit_per_minute=16) as sandbox:
        paced = await _deliver(f"sqlite:///{tmp_path / 'paced.db'}", sandbox, service_factory, pacing=True, n=24)
    with DotdigitalSandbox(rate_limit_per_minute=16) as sandbox:
        flat_out = await _deliver(f"sqlite:///{tmp_path / 'flat.db'}", sandbox, service_factory, pacing=False, n=24)
    assert 429 not in paced and paced.count(201) == 24
    assert 429 in flat_out  # the control: without pacing the same load hits the wall
