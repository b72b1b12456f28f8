"""Retry delays: the one capped exponential backoff every retry loop of the service uses, and the one helper for
in-process retries (:func:`in_process_retries`, tenacity's) next to the outbox's and the inbox's durable schedule.

Durable retries (a failed outbox message or queued event goes back to pending, due again after
:func:`backoff_delay`) survive a restart and are the database's; an in-process retry repeats a call a few times
within one unit of work (the commercetools client's optimistic-locking loop) and is :func:`in_process_retries`'.

The outbox dispatcher and the event inbox (a failed delivery or event goes back to pending), the
commercetools client's optimistic-locking loop (409 -> re-read, retry), the LISTEN reconnect loop and the
SQS adapter (visibility timeout of a retryable message, pauses after failed polls) all wait
``base * 2 ** (attempt - 1)`` seconds, at most ``cap``; some spread it with a random factor so that many
workers failing together do not retry together. Only the numbers differ, and they stay with each caller.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import tenacity

__all__ = ["JITTER_20_PERCENT", "backoff_delay", "in_process_retries"]

#: ±20 %: the jitter of the outbox and inbox retries.
JITTER_20_PERCENT = (0.8, 1.2)


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: tuple[float, float] | None = None,
    rng: random.Random | None = None,
    max_exponent: int | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    The delay is ``min(cap, base * 2 ** (attempt - 1))``: ``base`` for attempt 1 (and for 0 or a negative
    attempt), doubling with each attempt until it reaches ``cap``.

    Args:
        attempt: how many times it has failed so far (1-based).
        base: the first delay, in seconds.
        cap: the longest delay, in seconds (applied before the jitter).
        jitter: ``(low, high)``: the capped delay is multiplied by a random factor drawn uniformly from
            that range (``JITTER_20_PERCENT`` is ±20 %, so the result may exceed ``cap`` by up to 20 %);
            ``None`` (the default) for no jitter.
        rng: where the jitter factor comes from (a seeded ``random.Random`` in tests); by default the
            ``random`` module.
        max_exponent: the doubling stops after this many doublings (e.g. 30 for the SQS adapter); ``None``
            for no limit besides ``cap``.

    Returns:
        The delay in seconds, never negative. A huge ``attempt`` gives ``cap`` (no overflow).
    """
    exponent = max(0, attempt - 1)
    if max_exponent is not None:
        exponent = min(exponent, max_exponent)
    try:
        delay = min(cap, base * (2 ** exponent))
    except OverflowError:  # 2 ** exponent is too large to be a float: the cap applies
        delay = min(cap, base * math.inf if base else 0.0)
    if jitter is not None:
        low, high = jitter
        delay *= (rng or random).uniform(low, high)
    return max(0.0, delay)


def in_process_retries(
    *,
    attempts: int,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    base: float,
    cap: float,
    jitter: tuple[float, float] | None = None,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> tenacity.AsyncRetrying:
    """Up to ``attempts`` tries of a block, again after an exception of ``retry_on`` with
    :func:`backoff_delay` ``(attempt, base=base, cap=cap, jitter=jitter)`` seconds of ``asyncio.sleep`` between
    them; the last exception is raised as it is (any other exception at once). ``on_retry(exc, attempt)`` is
    called before each pause (to log it). Use::

        async for attempt in in_process_retries(attempts=5, retry_on=Conflict, base=0.05, cap=1.0):
            with attempt:
                return await write()
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.outcome.exception(), state.attempt_number)

    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=lambda state: backoff_delay(state.attempt_number, base=base, cap=cap, jitter=jitter),
        retry=tenacity.retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )
