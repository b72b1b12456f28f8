"""What the dispatcher does when a whole Dotdigital account stops working: pause it, say so once, resume alone.

Authentication (HTTP 401/403: a rotated API user password, a wrong region)
    The first 401/403 of an account opens an *auth pause* (``ctdd.delivery.pauses``, one row that every
    worker sharing the database reads): no worker claims the account's messages any more, the message that
    met the 401/403 goes back to ``pending`` without its attempt counting toward ``max_attempts``, and one
    ERROR line names the account, the status and what to fix (never a secret). A probe, ``GET
    /v2/account-info`` (cheap, authenticated), runs after ``auth_probe_initial_seconds``, then doubling up to
    ``auth_probe_max_seconds``; once it answers 2xx the pause ends and delivery resumes. Nothing is
    dead-lettered for 401/403. A message that meets 401/403 *again* after a probe proved the credentials work
    (its ``last_response_code`` is 401/403 and no pause is open) fails on its own (e.g. a call the API user may
    not make): the dispatcher parks it with its code and does not pause the account again for it.

Outages (5xx, transport failures, 408/425/429 for longer than ``max_attempts`` of backoff)
    A message whose retries ran out is *parked*: it keeps its place (and holds back its partition), with its
    last response code and error. The first park of an account opens a *park episode* and logs one ERROR
    line. As soon as the account delivers anything again, every parked message of the account goes back to
    ``pending`` (in order: each keeps its sequence) and the episode ends. If nothing delivers (everything is
    parked), every ``park_retry_minutes`` the oldest parked message is tried once more as a probe. Only what
    an episode covers resumes by itself: a message parked some other way waits for ``ctdd failures retry``.
    Every resumption by a delivery is recorded (``delivery_attempt`` outcome ``resumed``): a message parked
    ``max_parks`` times while its account delivers other messages fails on its own and goes to ``dead``
    (releasing its contact's partition) instead of being parked again.

State is in the database, so every worker pauses and resumes together; each worker refreshes its view every
``poll_interval_seconds``. ``on_change`` is told the set of auth-paused accounts whenever it changes (the gRPC
health service of ``ctdd serve`` turns them NOT_SERVING); the gauge ``ctdd.delivery.account_paused`` follows it.
A process that serves gRPC but runs no dispatcher (``ctdd serve --no-dispatcher``) reads the same rows with a
:class:`PauseWatcher` every ``poll_interval_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any, Awaitable, Callable

from sqlalchemy.engine import Engine

from ctdd.config import DispatcherConfig
from ctdd.db.engine import utcnow
from ctdd.delivery import pauses
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.telemetry import account_paused, parked_counter

log = logging.getLogger(__name__)

#: HTTP statuses that pause an account instead of failing the message
AUTH_STATUSES = frozenset({401, 403})

_WHAT_TO_FIX = {
    401: "Dotdigital does not accept the API user's credentials: check api_user and the password "
         "(password_env) of [accounts.{account}] (was the API user's password changed, or the user disabled?)",
    403: "Dotdigital refuses the API user access: check the region (region / base_url of [accounts.{account}]: "
         "an account answers only on its own region's endpoint) and that the API user is enabled and allowed "
         "this call",
}


def is_auth_failure(exc: BaseException) -> bool:
    return isinstance(exc, DotdigitalError) and exc.status_code in AUTH_STATUSES


def what_to_fix(status: int | None, account: str) -> str:
    """What an operator checks when ``account`` answered ``status`` (401 or 403)."""
    return _WHAT_TO_FIX.get(status or 401, _WHAT_TO_FIX[401]).format(account=account)


class AccountGuard:
    """Auth pauses and park episodes of one dispatcher (see the module docstring)."""

    def __init__(self, engine: Engine, cfg: DispatcherConfig, clients: DotdigitalClients, *, worker_id: str,
                 wake: Callable[[], None] | None = None,
                 on_change: Callable[[frozenset[str]], Awaitable[None] | None] | None = None):
        self.engine = engine
        self.cfg = cfg
        self.clients = clients
        self.worker_id = worker_id
        self.wake = wake or (lambda: None)
        self.on_change = on_change
        #: account -> cursor of its open auth pause / park episode, as last read (or written) by this worker
        self.auth: dict[str, dict[str, Any]] = {}
        self.parked: dict[str, dict[str, Any]] = {}
        self._reported: frozenset[str] = frozenset()
        self._refreshed = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._busy: set[tuple[str, str]] = set()
        #: bumped whenever this worker ends an episode, so that a refresh read before it is not applied
        self._generation = 0
        #: account -> (when, probe backoff) of its last auth pause that ended: a pause that comes straight back
        #: (a probe that works while deliveries do not, e.g. a 403 for want of a permission) backs off further
        self._ended: dict[str, tuple[float, float]] = {}
        self.stats: dict[str, int] = {"auth_episodes": 0, "park_episodes": 0, "probes": 0, "resumed": 0}

    # -- what the dispatcher asks -------------------------------------------------------------------
    def paused_accounts(self) -> tuple[str, ...]:
        return tuple(sorted(self.auth))

    def is_paused(self, account: str) -> bool:
        return account in self.auth

    async def tick(self) -> None:
        """Refresh the view of the episodes and run the probes that are due (cheap when nothing is due)."""
        if time.monotonic() - self._refreshed < self.cfg.poll_interval_seconds:
            return
        self._refreshed = time.monotonic()
        generation = self._generation
        episodes = await asyncio.to_thread(pauses.open_episodes, self.engine)
        if generation == self._generation:  # else a probe ended an episode meanwhile: the read may predate it
            self.auth, self.parked = episodes[pauses.AUTH], episodes[pauses.PARKED]
        await self._report()
        if self.auth:
            for account, cursor in await asyncio.to_thread(
                    pauses.take_due, self.engine, pauses.AUTH, owner=self.worker_id, now=utcnow(),
                    hold_seconds=self.cfg.auth_probe_max_seconds):
                self._spawn(("auth", account), self._probe_auth(account, cursor))
        if self.parked:
            for account, _ in await asyncio.to_thread(
                    pauses.take_due, self.engine, pauses.PARKED, owner=self.worker_id, now=utcnow(),
                    hold_seconds=self.cfg.park_retry_minutes * 60):
                self._spawn(("park", account), self._probe_parked(account))

    async def auth_failed(self, account: str, status_code: int | None) -> None:
        """A call of ``account`` met 401/403: pause the account (once per episode: the ERROR line)."""
        status = status_code or 401
        first = account not in self.auth
        self.auth.setdefault(account, {"status": status})
        now = utcnow()
        backoff = self.cfg.auth_probe_initial_seconds
        ended = self._ended.get(account)
        if ended is not None and time.monotonic() - ended[0] < 2 * self.cfg.auth_probe_max_seconds:
            backoff = min(self.cfg.auth_probe_max_seconds, max(backoff, ended[1] * 2))
        try:
            opened = await asyncio.to_thread(
                pauses.open_episode, self.engine, pauses.AUTH, account, owner=self.worker_id,
                cursor={"status": status, "backoff": backoff}, due=now + timedelta(seconds=backoff), now=now)
        except Exception:
            log.exception("could not record the pause of Dotdigital account %s; pausing it in this process", account)
            opened = first
        if opened:
            self.stats["auth_episodes"] += 1
            log.error(
                "Dotdigital account %s answered HTTP %s: delivery to it is PAUSED (nothing is dead-lettered; "
                "messages wait in the outbox, their attempts not counted). %s. Delivery resumes by itself once "
                "the credentials work again (probe GET /v2/account-info after %gs, then at most every %gs).",
                account, status, what_to_fix(status, account), backoff,
                self.cfg.auth_probe_max_seconds)
        await self._report()

    def delivered(self, account: str) -> None:
        """A message of ``account`` was delivered: if the account has parked messages, resume them."""
        if account in self.parked:
            self._spawn(("resume", account), self._resume_parked(account))

    async def message_parked(self, account: str, message_id: int, status_code: int | None, error: str) -> None:
        """A message of ``account`` was parked: open the park episode (one ERROR line per episode)."""
        parked_counter.add(1, {"account": account})
        now = utcnow()
        try:
            opened = await asyncio.to_thread(
                pauses.open_episode, self.engine, pauses.PARKED, account, owner=self.worker_id,
                cursor={"status": status_code}, due=now + timedelta(minutes=self.cfg.park_retry_minutes), now=now)
        except Exception:
            log.exception("could not record the park episode of Dotdigital account %s", account)
            opened = False
        self.parked.setdefault(account, {"status": status_code})
        if opened:
            self.stats["park_episodes"] += 1
            log.error(
                "Dotdigital account %s keeps failing (last: %s): message %s and any other message of the account "
                "whose %d attempts run out are PARKED, not dead-lettered, and hold back their contacts' later "
                "updates. They resume by themselves as soon as the account delivers again (a probe every %g "
                "minutes); `ctdd failures list --status parked` shows them.",
                account, error[:300], message_id, self.cfg.max_attempts, self.cfg.park_retry_minutes)
        else:
            log.info("message %s of Dotdigital account %s parked after %d attempts (HTTP %s)", message_id, account,
                     self.cfg.max_attempts, status_code)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- probes and resumption --------------------------------------------------------------------
    def _spawn(self, key: tuple[str, str], coro) -> None:
        if key in self._busy:
            coro.close()
            return
        self._busy.add(key)
        task = asyncio.create_task(coro, name=f"account-{key[0]}-{key[1]}")
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self._busy.discard(key)
        task.add_done_callback(done)

    async def _probe_auth(self, account: str, cursor: dict[str, Any]) -> None:
        self.stats["probes"] += 1
        try:
            await self.clients.get(account).account_info()
        except DotdigitalError as exc:
            backoff = float(cursor.get("backoff") or self.cfg.auth_probe_initial_seconds)
            if exc.status_code in AUTH_STATUSES:
                backoff = min(self.cfg.auth_probe_max_seconds, backoff * 2)
            now = utcnow()
            await asyncio.to_thread(pauses.reschedule, self.engine, pauses.AUTH, account,
                                    due=now + timedelta(seconds=backoff), now=now,
                                    cursor={"backoff": backoff, "status": exc.status_code or cursor.get("status")})
            log.info("Dotdigital account %s still paused: probe answered %s; next probe in %gs", account,
                     exc.status_code or "no response", backoff)
            return
        except Exception:
            log.exception("probing Dotdigital account %s failed; trying again later", account)
            return
        self._ended[account] = (time.monotonic(), float(cursor.get("backoff") or self.cfg.auth_probe_initial_seconds))
        if await asyncio.to_thread(pauses.close_episode, self.engine, pauses.AUTH, account):
            log.warning("Dotdigital account %s accepts the credentials again: delivery resumed", account)
        self._generation += 1
        self.auth.pop(account, None)
        await self._report()
        self.wake()

    async def _resume_parked(self, account: str) -> None:
        now = utcnow()
        closed = await asyncio.to_thread(pauses.close_episode, self.engine, pauses.PARKED, account)
        self._generation += 1
        self.parked.pop(account, None)
        resumed = await asyncio.to_thread(pauses.resume_parked, self.engine, account, now=now)
        if closed or resumed:
            self.stats["resumed"] += resumed
            log.warning("Dotdigital account %s delivers again: %d parked message(s) resumed", account, resumed)
            self.wake()

    async def _probe_parked(self, account: str) -> None:
        probe = await asyncio.to_thread(pauses.probe_parked, self.engine, account,
                                        attempts=max(0, self.cfg.max_attempts - 1), now=utcnow())
        if probe is None:  # resumed or redriven meanwhile: the episode is over
            await asyncio.to_thread(pauses.close_episode, self.engine, pauses.PARKED, account)
            self._generation += 1
            self.parked.pop(account, None)
            return
        log.info("Dotdigital account %s: trying parked message %s again (probe)", account, probe)
        self.wake()

    async def _report(self) -> None:
        paused = frozenset(self.auth)
        if paused == self._reported:
            return
        for account in paused | self._reported:
            account_paused.set(1 if account in paused else 0, {"account": account})
        self._reported = paused
        if self.on_change is not None:
            try:
                result = self.on_change(paused)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("reporting paused accounts failed")


class PauseWatcher:
    """Delivery health of a process that runs no dispatcher (``ctdd serve --no-dispatcher`` next to separate
    ``ctdd worker`` processes): reads the open auth pauses from the database every ``interval`` seconds and
    tells ``on_change`` the set of paused accounts whenever it changes (and once at start)."""

    def __init__(self, engine: Engine, on_change: Callable[[frozenset[str]], Awaitable[None] | None], *,
                 interval: float):
        self.engine = engine
        self.on_change = on_change
        self.interval = max(0.01, interval)
        self._task: asyncio.Task | None = None
        self._reported: frozenset[str] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="account-pause-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> frozenset[str]:
        episodes = await asyncio.to_thread(pauses.open_episodes, self.engine)
        paused = frozenset(episodes[pauses.AUTH])
        if paused != self._reported:
            result = self.on_change(paused)
            if asyncio.iscoroutine(result):
                await result
            self._reported = paused
        return paused

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the paused Dotdigital accounts failed; trying again")
            await asyncio.sleep(self.interval)
