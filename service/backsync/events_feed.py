"""Back-sync in seconds: the Events API export subscription of each Dotdigital account, read with its checkpoint
(Dotdigital's Events OpenAPI document ``events.json``; developer hub: "Export events", "Retrieve events").

Per account with a store that has a commercetools client, every ``[backsync] events_interval_seconds``:

1. **One reader per account.** The reader holds the named lease ``backsync-events:<account>`` (the ``lease``
   table, ``ctdd.programs.leases``), renewed on every read; another process sharing the database reads the
   account only once that lease lapsed (it is kept for ``max(30 s, 6 x events_interval_seconds)``). The lease's
   ``cursor`` keeps ``{subscription_id, checkpoint, read_at}``: ``read_at`` (ISO 8601) is when the last read
   whose events were all applied began, the ``ctdd.backsync.lag`` gauge's measure (:func:`read_times`).
2. **The subscription** ``ctdd-sync-<account>`` (``ctdd dotdigital setup`` creates it) is found by name once and
   its id remembered. Without one the account is left to the polling feeds (``ctdd.backsync.feeds``), and the
   name is looked up again every ``_LOOKUP_SECONDS``.
3. **Pages until caught up.** ``GET /events/v3/export/{id}?checkPoint=<stored>&limit=<events_page_size>``; the
   events become :class:`ContactChange`\\ s (``ctdd.domain.dotdigital_events``; other event types are skipped and
   counted) and go to the apply function (``ctdd.backsync.writeback.apply_changes`` at run time). **The
   checkpoint is stored only after apply returned**: Dotdigital drops a page's events once its checkpoint is
   passed back, so a crash (or an apply that raised) before the store reads the same events again, and apply
   is idempotent. A page shorter than the limit means caught up, so an idle account costs one call per
   interval (720 an hour at 5 s; ``events_interval_seconds = 15`` makes it 240).
4. **Inactive** (409 ``events:inactiveSubscription``: Dotdigital suspends a subscription not read for 30 days,
   and captures nothing while it is inactive) is logged as an error; the subscription is made active again
   (``ctdd.dotdigital.event_subscriptions``), the checkpoint dropped (it is out of range after a suspension),
   and the account is polled at once to reconcile what was missed. An invalid or out-of-range checkpoint, or a
   deleted subscription, is handled the same way, without the reactivation.

With a working events feed the polling feeds only reconcile: :meth:`EventsFeed.due_for_poll` tells ``BackSync``
to poll such an account every ``reconcile_interval_seconds`` (default 6 h) instead of every
``interval_seconds``. Logs carry counts and ids, never email addresses or phone numbers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.background import finish_or_cancel
from ctdd.config import Settings
from ctdd.db.engine import utcnow
from ctdd.db.models import Lease
from ctdd.domain.dotdigital_changes import ContactChange
from ctdd.domain.dotdigital_events import parse_events, subscription_name
from ctdd.dotdigital.errors import (
    DotdigitalError,
    DotdigitalInactiveSubscription,
    DotdigitalInvalidCheckpoint,
    DotdigitalSubscriptionNotFound,
)
from ctdd.dotdigital.event_subscriptions import ensure_event_subscription, find_event_subscription
from ctdd.programs import leases

log = logging.getLogger(__name__)

#: the apply function: writes the changes (in order) to commercetools; returns when they are applied
ApplyChanges = Callable[[list[ContactChange]], Awaitable[Any]]
LEASE_PREFIX = "backsync-events:"
#: how often an account without a subscription is looked up again
_LOOKUP_SECONDS = 300.0
#: pages read in one run at most (a backlog is read on over the next runs)
_MAX_PAGES = 50
# account states
ACTIVE, MISSING, INACTIVE, FAILING = "active", "missing", "inactive", "failing"


@dataclass
class ReadResult:
    """What one run of one account did (counts only)."""

    account: str
    #: False when another process holds the account's lease (nothing was read)
    read: bool = True
    subscription_id: int | None = None
    #: calls to GET /events/v3/export/{id}
    reads: int = 0
    events: int = 0
    changes: int = 0
    #: event type -> events skipped (not the back-sync's, or nothing usable in them)
    skipped: dict[str, int] = field(default_factory=dict)
    #: checkpoints stored (one per applied page)
    stored: int = 0
    caught_up: bool = False
    state: str = ACTIVE
    error: str | None = None

    def summary(self) -> str:
        if not self.read:
            return f"account {self.account}: another process reads it"
        skipped = sum(self.skipped.values())
        text = (f"account {self.account}: {self.reads} read(s), {self.events} event(s), {self.changes} change(s), "
                f"{skipped} skipped, {self.stored} checkpoint(s) stored, state {self.state}")
        return text + (f" ({self.error})" if self.error else "")


@dataclass
class _AccountState:
    state: str = MISSING
    looked_up_at: float | None = None
    #: events may have been missed since then: the polling feeds run until a poll completes after it
    reconcile_since: datetime | None = field(default_factory=utcnow)
    reported_missing: bool = False


class EventsFeed:
    """Reads the export subscription of every account and hands the changes to ``apply``.

    ``clients`` has ``get(account) -> DotdigitalClient`` (``ctdd.dotdigital.accounts.DotdigitalClients``);
    ``apply(changes)`` is awaited per page and must be idempotent (the runtime passes
    ``ctdd.backsync.writeback.apply_changes`` bound to its engine, settings and commercetools clients).
    """

    def __init__(self, engine: Engine, settings: Settings, clients, apply: ApplyChanges, *,
                 clock: Callable[[], datetime] = utcnow, owner: str | None = None):
        self.engine = engine
        self.settings = settings
        self.cfg = settings.backsync
        self.clients = clients
        self.apply = apply
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = max(30.0, 6 * self.cfg.events_interval_seconds)
        self._accounts: dict[str, _AccountState] = {}
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    # -- schedule --------------------------------------------------------------------------------
    def accounts(self) -> list[str]:
        """Accounts with at least one store that has a commercetools client."""
        return [a for a in self.settings.accounts
                if any(s.account == a and s.commercetools for s in self.settings.stores.values())]

    def start(self) -> None:
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="ctdd-backsync-events")
            log.info("back-sync events feed every %ss for account(s) %s", self.cfg.events_interval_seconds,
                     ", ".join(self.accounts()) or "-")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop reading (the run in progress may finish within ``grace`` seconds) and give the leases back."""
        task, self._task = self._task, None
        self._stop.set()
        await finish_or_cancel(task, grace)
        for account in self.accounts():
            await asyncio.to_thread(leases.release, self.engine, LEASE_PREFIX + account, self.owner, utcnow())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("back-sync events feed failed")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.cfg.events_interval_seconds)
            except asyncio.TimeoutError:
                pass

    # -- what the polling feeds ask ------------------------------------------------------------------
    def covers(self, account: str) -> bool:
        """Whether the events feed is reading ``account`` (its last run found an active subscription)."""
        state = self._accounts.get(account)
        return state is not None and state.state == ACTIVE

    def due_for_poll(self, account: str, last_poll_at: datetime | None, now: datetime) -> bool:
        """Whether the polling feeds should poll ``account`` now (``BackSync`` asks before each poll).

        Without a working events feed: yes (the usual ``interval_seconds`` applies). With one: when events
        may have been missed (a suspension, a lost checkpoint, the first run), until a poll completed after
        that, else once
        ``reconcile_interval_seconds`` passed since the last complete poll."""
        state = self._accounts.get(account)
        if state is None or state.state != ACTIVE:
            return True
        if state.reconcile_since is not None:
            if last_poll_at is None or last_poll_at < state.reconcile_since:
                return True
            state.reconcile_since = None
        return last_poll_at is None or now - last_poll_at >= timedelta(seconds=self.cfg.reconcile_interval_seconds)

    # -- one run ---------------------------------------------------------------------------------
    async def run_once(self, accounts: Iterable[str] | None = None) -> list[ReadResult]:
        results = []
        for account in (list(accounts) if accounts is not None else self.accounts()):
            result = await self.read_account(account)
            if result.events or result.error:
                log.info("back-sync events %s", result.summary())
            elif not result.read:
                log.debug("back-sync events %s", result.summary())
            results.append(result)
        return results

    async def read_account(self, account: str) -> ReadResult:
        """Read ``account``'s events until caught up (at most ``_MAX_PAGES`` pages), applying each page."""
        result = ReadResult(account)
        name = LEASE_PREFIX + account
        state = self._accounts.setdefault(account, _AccountState())
        if not await asyncio.to_thread(leases.acquire, self.engine, name, self.owner, self.lease_seconds, utcnow()):
            result.read = False
            result.state = state.state
            return result
        cursor = await asyncio.to_thread(_read_cursor, self.engine, name)
        client = self.clients.get(account)
        try:
            sub_id = cursor.get("subscription_id")
            if not isinstance(sub_id, int):
                sub_id = await self._look_up(client, account, state)
                if sub_id is None:
                    result.state = state.state
                    return result
                cursor = {"subscription_id": sub_id, "checkpoint": None}
                await self._store(name, cursor)
            result.subscription_id = sub_id
            checkpoint = cursor.get("checkpoint") if isinstance(cursor.get("checkpoint"), str) else None
            unstored_read_at: str | None = None  # a read applied whose time is not stored yet (same checkpoint)
            for _ in range(_MAX_PAGES):
                read_at = self.clock().isoformat()
                page = await client.read_events(sub_id, checkpoint=checkpoint, limit=self.cfg.events_page_size)
                result.reads += 1
                if state.state != ACTIVE:
                    log.info("back-sync events feed: reading subscription %s of account %s", sub_id, account)
                    state.state = ACTIVE
                parsed = parse_events(account, page.events)
                result.events += len(page.events)
                result.changes += len(parsed.changes)
                for kind, count in parsed.skipped.items():
                    result.skipped[kind] = result.skipped.get(kind, 0) + count
                if parsed.changes:
                    await self.apply(parsed.changes)  # raises: the checkpoint stays, the page is read again
                if page.checkpoint != checkpoint:
                    if not await self._store(name, {"subscription_id": sub_id, "checkpoint": page.checkpoint,
                                                    "read_at": read_at}):
                        result.error = "lease lost"
                        break
                    checkpoint = page.checkpoint
                    result.stored += 1
                    unstored_read_at = None
                else:
                    unstored_read_at = read_at
                if len(page.events) < self.cfg.events_page_size:
                    result.caught_up = True
                    break
                await asyncio.to_thread(leases.acquire, self.engine, name, self.owner, self.lease_seconds, utcnow())
            if unstored_read_at is not None and result.error is None:  # caught up, nothing new: the time only
                await self._store(name, {"subscription_id": sub_id, "checkpoint": checkpoint,
                                         "read_at": unstored_read_at})
        except DotdigitalInactiveSubscription as exc:
            log.error("back-sync events feed: Dotdigital says subscription %s of account %s is INACTIVE (%s): events "
                      "made while it was inactive are lost; making it active again and polling the feeds to "
                      "reconcile", cursor.get("subscription_id"), account, exc.code)
            result.error = "inactive subscription"
            await self._reactivate(client, account, name, state)
        except DotdigitalInvalidCheckpoint as exc:
            log.error("back-sync events feed: the checkpoint of account %s was refused (%s); reading from the "
                      "earliest queued events and polling the feeds to reconcile", account, exc.code)
            result.error = exc.code or "invalid checkpoint"
            await self._store(name, {"subscription_id": cursor.get("subscription_id"), "checkpoint": None})
            state.reconcile_since = utcnow()
        except DotdigitalSubscriptionNotFound:
            log.error("back-sync events feed: subscription %s of account %s no longer exists; the account is polled "
                      "until `ctdd dotdigital setup` creates it again", cursor.get("subscription_id"), account)
            result.error = "subscription not found"
            await self._store(name, {})
            state.state, state.looked_up_at, state.reconcile_since = MISSING, time.monotonic(), utcnow()
        except DotdigitalError as exc:
            log.warning("back-sync events feed: reading account %s failed, retried next time: %s", account, exc)
            result.error = exc.code or str(exc.status_code or type(exc).__name__)
            if not exc.retryable:
                state.state, state.reconcile_since = FAILING, utcnow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # apply failed: nothing stored, the same events come again
            log.warning("back-sync events feed: applying the events of account %s failed, read again next time: "
                        "%s", account, type(exc).__name__)
            result.error = f"apply failed: {type(exc).__name__}"
        result.state = state.state
        return result

    async def _look_up(self, client, account: str, state: _AccountState) -> int | None:
        """The subscription id found by name, or ``None`` (the account stays with the polling feeds)."""
        now = time.monotonic()
        if state.looked_up_at is not None and now - state.looked_up_at < _LOOKUP_SECONDS:
            return None
        state.looked_up_at = now
        try:
            found = await find_event_subscription(client, account)
        except DotdigitalError as exc:
            log.warning("back-sync events feed: listing the subscriptions of account %s failed: %s", account, exc)
            state.state = FAILING
            return None
        if found is None:
            if state.state != MISSING or not state.reported_missing:
                state.reported_missing = True
                log.info("back-sync events feed: account %s has no subscription %r (run `ctdd dotdigital setup`); "
                         "it is polled every %ss", account, subscription_name(account), self.cfg.interval_seconds)
            state.state = MISSING
            return None
        if not found.active:
            log.error("back-sync events feed: subscription %s of account %s is INACTIVE; making it active again",
                      found.id, account)
            await self._reactivate(client, account, LEASE_PREFIX + account, state)
            return None
        state.reconcile_since = utcnow()  # events from before the feed started are the polling feeds' to find
        return found.id

    async def _reactivate(self, client, account: str, name: str, state: _AccountState) -> None:
        state.state, state.reconcile_since = INACTIVE, utcnow()
        try:
            plan = await ensure_event_subscription(client, account)
        except DotdigitalError as exc:
            log.error("back-sync events feed: could not make the subscription of account %s active again: %s",
                      account, exc)
            return
        sub = plan.subscription
        await self._store(name, {"subscription_id": sub.id, "checkpoint": None} if sub is not None else {})

    async def _store(self, name: str, cursor: dict[str, Any]) -> bool:
        return await asyncio.to_thread(_store_cursor, self.engine, name, self.owner, cursor)


def _read_cursor(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return leases.cursor(conn, name)


def _store_cursor(engine: Engine, name: str, owner: str, cursor: dict[str, Any]) -> bool:
    """Store the cursor if ``owner`` still holds the lease (False: another process took it over)."""
    table = Lease.__table__
    with engine.begin() as conn:
        return bool(conn.execute(sa.update(table).where(table.c.name == name, table.c.owner == owner)
                                 .values(cursor=cursor, updated_at=utcnow())).rowcount)


def read_checkpoint(engine: Engine, account: str) -> dict[str, Any]:
    """The stored ``{subscription_id, checkpoint, read_at}`` of ``account`` (empty before its first read)."""
    return _read_cursor(engine, LEASE_PREFIX + account)


def read_times(conn) -> dict[str, datetime]:
    """Per account, when the events feed's last read whose events were all applied began (``read_at`` of the
    lease cursors); accounts without one are left out."""
    table = Lease.__table__
    times: dict[str, datetime] = {}
    for name, cursor in conn.execute(sa.select(table.c.name, table.c.cursor)
                                     .where(table.c.name.startswith(LEASE_PREFIX, autoescape=True))).all():
        value = cursor.get("read_at") if isinstance(cursor, dict) else None
        if not isinstance(value, str):
            continue
        try:
            read_at = datetime.fromisoformat(value)
        except ValueError:
            continue
        times[name.removeprefix(LEASE_PREFIX)] = read_at
    return times


def writeback_apply(engine: Engine, settings: Settings, commercetools_clients) -> ApplyChanges:
    """The runtime's apply function: ``ctdd.backsync.writeback.apply_changes`` bound to these."""
    from ctdd.backsync.writeback import apply_changes

    async def apply(changes: list[ContactChange]) -> Any:
        return await apply_changes(engine, settings, commercetools_clients, changes)

    return apply
