"""The one backoff formula (ctdd.retry) and the callers' numbers built on it."""

import random

import pytest

from ctdd.adapters.sqs import backoff_seconds as sqs_visibility
from ctdd.retry import JITTER_20_PERCENT, backoff_delay


def test_doubles_from_base_and_stops_at_cap():
    assert [backoff_delay(a, base=0.5, cap=10.0) for a in range(1, 9)] == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_first_attempt_and_below_give_base():
    assert backoff_delay(1, base=3.0, cap=100) == 3.0
    assert backoff_delay(0, base=3.0, cap=100) == 3.0
    assert backoff_delay(-5, base=3.0, cap=100) == 3.0


def test_max_exponent_stops_the_doubling():
    assert backoff_delay(10, base=1.0, cap=1e9, max_exponent=3) == 8.0
    assert backoff_delay(10, base=1.0, cap=1e9) == 512.0


def test_huge_attempt_gives_cap_without_overflow():
    assert backoff_delay(5000, base=1.0, cap=600.0) == 600.0
    assert backoff_delay(5000, base=0.0, cap=600.0) == 0.0


def test_never_negative():
    assert backoff_delay(1, base=-1.0, cap=10.0) == 0.0


def test_outbox_jitter_is_plus_minus_20_percent_of_the_capped_delay():
    rng = random.Random(1)
    delays = [backoff_delay(a, base=1, cap=30, jitter=JITTER_20_PERCENT, rng=rng) for a in range(1, 10)]
    assert 0.8 <= delays[0] <= 1.2 and 3.2 <= delays[2] <= 4.8
    assert all(d <= 36 for d in delays) and delays[-1] >= 24
    assert len({round(backoff_delay(3, base=1, cap=30, jitter=JITTER_20_PERCENT), 6) for _ in range(20)}) > 1


def test_jitter_multiplies_by_a_factor_drawn_from_the_range():
    class Fixed:
        def __init__(self):
            self.calls = []

        def uniform(self, low, high):
            self.calls.append((low, high))
            return high

    rng = Fixed()
    assert backoff_delay(3, base=0.05, cap=1.0, jitter=(0.5, 1.0), rng=rng) == pytest.approx(0.2)
    assert backoff_delay(10, base=0.05, cap=1.0, jitter=(0.5, 1.0), rng=rng) == pytest.approx(1.0)
    assert rng.calls == [(0.5, 1.0), (0.5, 1.0)]


def test_same_results_as_the_formulas_it_replaced():
    rng_a, rng_b = random.Random(7), random.Random(7)
    for attempt in range(1, 40):
        # outbox / inbox: min(cap, base * 2 ** max(0, attempt - 1)) * uniform(0.8, 1.2)
        old = max(0.0, min(600.0, 1.0 * (2 ** max(0, attempt - 1))) * rng_a.uniform(0.8, 1.2))
        assert backoff_delay(attempt, base=1.0, cap=600.0, jitter=JITTER_20_PERCENT, rng=rng_b) == old
        # commercetools 409 loop: min(1.0, 0.05 * 2 ** (attempt - 1)) * uniform(0.5, 1.0)
        old = min(1.0, 0.05 * 2 ** (attempt - 1)) * rng_a.uniform(0.5, 1.0)
        assert backoff_delay(attempt, base=0.05, cap=1.0, jitter=(0.5, 1.0), rng=rng_b) == old
        # SQS adapter after failed polls: min(30.0, 0.5 * 2 ** min(failures, 6))
        assert backoff_delay(attempt + 1, base=0.5, cap=30.0, max_exponent=6) == min(30.0, 0.5 * 2 ** min(attempt, 6))
    # LISTEN reconnect: 0.5 doubled after each failure, at most 10 s
    expected, delay = [], 0.5
    for _ in range(8):
        expected.append(delay)
        delay = min(delay * 2, 10.0)
    assert [backoff_delay(n, base=0.5, cap=10.0) for n in range(1, 9)] == expected


def test_sqs_visibility_is_whole_seconds_capped_and_at_least_one():
    assert [sqs_visibility(n, 2.0, 60) for n in (1, 2, 3, 4, 5, 6, 7)] == [2, 4, 8, 16, 32, 60, 60]
    assert sqs_visibility(0, 0.1, 60) == 1
    assert sqs_visibility(100, 2.0, 10**9) == 43200  # SQS maximum visibility


# -- in-process retries (tenacity) ------------------------------------------------------------------------------


class _Conflict(Exception):
    pass


async def test_in_process_retries_repeat_until_success_with_backoff_between_tries():
    import time

    from ctdd.retry import in_process_retries

    calls, retried = [], []
    started = time.monotonic()
    async for attempt in in_process_retries(attempts=5, retry_on=_Conflict, base=0.01, cap=0.02,
                                            on_retry=lambda exc, n: retried.append((type(exc), n))):
        with attempt:
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise _Conflict()
    assert len(calls) == 3 and retried == [(_Conflict, 1), (_Conflict, 2)]
    # backoff_delay(1) = 0.01 s, backoff_delay(2) = 0.02 s between the tries
    assert calls[1] - calls[0] >= 0.009 and calls[2] - calls[1] >= 0.019
    assert time.monotonic() - started < 2


async def test_in_process_retries_raise_the_last_error_and_never_retry_others():
    from ctdd.retry import in_process_retries

    tries = 0
    with pytest.raises(_Conflict, match="try 3"):
        async for attempt in in_process_retries(attempts=3, retry_on=_Conflict, base=0.0, cap=0.0):
            with attempt:
                tries += 1
                raise _Conflict(f"try {tries}")
    assert tries == 3
    tries = 0
    with pytest.raises(KeyError):
        async for attempt in in_process_retries(attempts=3, retry_on=_Conflict, base=0.0, cap=0.0):
            with attempt:
                tries += 1
                raise KeyError("not retried")
    assert tries == 1
    with pytest.raises(ValueError):
        in_process_retries(attempts=0, retry_on=_Conflict, base=0.0, cap=0.0)
