"""Per-account Dotdigital API budget: pace calls before the rate limit is hit, pause after a throttle.

Dotdigital limits calls per account: the tiered scheme answers 429 with
``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` once the per-minute budget is spent, and the legacy flat
scheme answers 400 ``ERROR_APIUSAGE_EXCEEDED``. Successful responses carry the same ``X-RateLimit-*``
headers, so the budget is visible *before* the wall:

- while more than ``burst_fraction`` of the limit remains, calls go out as fast as the dispatcher sends
  them;
- below that, calls are spaced evenly over the time left until the reset,
  ``interval = seconds_to_reset / (remaining - reserve)``, so the budget lasts until it refills;
- with ``reserve`` calls or fewer left, calls wait for the reset and then go at the sustainable rate
  (limit per window, the window being the longest ``X-RateLimit-Reset`` seen) until an answer shows the
  refill;
- a 429 (or ``ERROR_APIUSAGE_EXCEEDED``, reported by the dispatcher) pauses the whole account until the
  reset / ``Retry-After``.

The counters are Dotdigital's (server side), so several worker processes that share an account all see
the remaining budget shrink and all slow down; no coordination between them is needed.

:class:`BudgetTransport` wraps the httpx transport of a ``DotdigitalClient`` (the client accepts a
``transport``), so every call of the account - upserts, imports, status polls, discovery - is paced and
observed without changing the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import httpx

from ctdd.dotdigital.errors import EPOCH_THRESHOLD, _header
from ctdd.dotdigital.transport import AiohttpTransport
from ctdd.telemetry import traced_transport

log = logging.getLogger(__name__)


@dataclass
class _AccountState:
    limit: int | None = None
    remaining: int | None = None
    reset_at: float = 0.0  # monotonic time the window refills
    next_slot: float = 0.0
    paused_until: float = 0.0
    in_flight: int = 0
    window: float = 0.0  # longest X-RateLimit-Reset seen: the length of the limit's window
    waits: int = 0  # calls that were paced (for metrics and tests)
    waited_seconds: float = 0.0


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


class RateBudget:
    """Pacing state per Dotdigital account (one instance per process)."""

    def __init__(self, *, burst_fraction: float = 0.5, reserve: int = 2, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        if not 0.0 <= burst_fraction <= 1.0:
            raise ValueError("burst_fraction must be between 0 and 1")
        self.burst_fraction = burst_fraction
        self.reserve = max(0, reserve)
        self.enabled = enabled
        self._clock = clock
        self._wall = wall_clock
        self._accounts: dict[str, _AccountState] = {}

    def state(self, account: str) -> _AccountState:
        st = self._accounts.get(account)
        if st is None:
            st = self._accounts[account] = _AccountState()
        return st

    # -- throttling -------------------------------------------------------------------------------
    def pause(self, account: str, seconds: float) -> None:
        """Stop calling ``account`` for ``seconds`` (after a 429 / ``ERROR_APIUSAGE_EXCEEDED``)."""
        st = self.state(account)
        until = self._clock() + max(0.0, seconds)
        if until > st.paused_until:
            st.paused_until = until
            log.warning("Dotdigital account %s throttled; pausing its calls for %.1fs", account, seconds)

    def paused_for(self, account: str) -> float:
        """Seconds the account is still paused for (0 when it is not)."""
        st = self._accounts.get(account)
        return max(0.0, st.paused_until - self._clock()) if st else 0.0

    def remaining_calls(self) -> dict[str, int]:
        """The calls each account has left in its rate-limit window, as Dotdigital last reported them
        (``X-RateLimit-Remaining`` less the calls in flight; the whole limit once the window has reset), for
        the accounts that reported a limit (the metric ``ctdd.dotdigital.rate_budget.remaining``)."""
        now = self._clock()
        return {account: (st.limit if st.limit and st.reset_at <= now else st.remaining)
                for account, st in self._accounts.items() if st.remaining is not None}

    def paused_accounts(self) -> tuple[str, ...]:
        now = self._clock()
        return tuple(a for a, st in self._accounts.items() if st.paused_until > now)

    # -- pacing -----------------------------------------------------------------------------------
    def delay_for_next_call(self, account: str) -> float:
        """Reserve the next call slot of ``account``; returns how long the caller must wait for it."""
        st = self.state(account)
        now = self._clock()
        wait = max(0.0, st.paused_until - now)
        if self.enabled and st.limit and st.remaining is not None and st.reset_at > now:
            remaining = st.remaining
            if remaining <= st.limit * self.burst_fraction:
                to_reset = st.reset_at - now
                if remaining <= self.reserve:
                    # wait for the refill, then go at the sustainable rate (limit per window) until the
                    # next answer tells how much the refill gave
                    interval = (st.window or 60.0) / st.limit
                    slot = max(now + wait, st.next_slot, st.reset_at)
                else:
                    interval = to_reset / (remaining - self.reserve)
                    slot = max(now + wait, st.next_slot)
                st.next_slot = slot + interval
                wait = slot - now
        st.remaining = None if st.remaining is None else st.remaining - 1
        st.in_flight += 1
        if wait > 0:
            st.waits += 1
            st.waited_seconds += wait
        return wait

    async def acquire(self, account: str) -> None:
        wait = self.delay_for_next_call(account)
        if wait > 0:
            await asyncio.sleep(wait)

    def release(self, account: str) -> None:
        """A call ended without a response (transport error)."""
        st = self.state(account)
        st.in_flight = max(0, st.in_flight - 1)

    def observe(self, account: str, status_code: int, headers: Mapping[str, str]) -> None:
        """Learn the account's budget from a response's ``X-RateLimit-*`` headers."""
        st = self.state(account)
        st.in_flight = max(0, st.in_flight - 1)
        limit = _number(_header(headers, "X-RateLimit-Limit"))
        remaining = _number(_header(headers, "X-RateLimit-Remaining"))
        reset = _number(_header(headers, "X-RateLimit-Reset"))
        now = self._clock()
        reset_in: float | None = None
        if reset is not None:
            # seconds until the reset, or a Unix epoch (Dotdigital documents both)
            reset_in = max(0.0, reset - self._wall()) if reset > EPOCH_THRESHOLD else max(0.0, reset)
        if limit is not None and remaining is not None:
            st.limit = int(limit)
            # calls sent after this one was counted have not been observed yet
            st.remaining = max(0, int(remaining) - st.in_flight)
            if reset_in is not None:
                st.reset_at = now + reset_in
                st.window = max(st.window, reset_in)
            if st.remaining > st.limit * self.burst_fraction:
                st.next_slot = 0.0  # plenty left (e.g. the window refilled): no pacing
        if status_code == 429:
            retry_after = _number(_header(headers, "Retry-After"))
            delay = retry_after if retry_after is not None else (reset_in if reset_in is not None else 60.0)
            self.pause(account, delay)
            st.remaining = 0


class BudgetTransport(httpx.AsyncBaseTransport):
    """An httpx transport that paces each call through a :class:`RateBudget` and observes the answer.

    The HTTP/1.1 exchange itself goes through aiohttp (:class:`~ctdd.dotdigital.transport.AiohttpTransport`:
    a fraction of httpcore's CPU per call, which was most of a worker's time per delivered message);
    ``inner`` replaces it (tests, proxies).
    """

    def __init__(self, budget: RateBudget, account: str, inner: httpx.AsyncBaseTransport | None = None, *,
                 max_connections: int = 64):
        self.budget = budget
        self.account = account
        # while tracing is on, each exchange is an HTTP client span (the pacing wait is not part of it)
        self._inner = traced_transport(inner or AiohttpTransport(max_connections=max_connections))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self.budget.acquire(self.account)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self.budget.release(self.account)
            raise
        status = response.status_code
        if status == 429 and request.method == "PUT" and request.url.path.rstrip("/").endswith("/import"):
            # "too many active imports": a limit on concurrent imports, not on the call
            # rate; the dispatcher retries that batch later, the account's other calls go on.
            status = 200
        self.budget.observe(self.account, status, response.headers)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
