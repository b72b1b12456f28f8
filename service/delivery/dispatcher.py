"""The dispatcher: claims partition heads from the outbox and delivers them to Dotdigital.

- Concurrency: up to ``dispatcher.concurrency`` single deliveries at once, each of a different partition,
  plus up to ``bulk_max_active_imports`` bulk imports.
- Adaptive batching: while the backlog of due messages is below ``bulk_backlog_threshold`` every message
  is sent on its own (``PATCH``/``PUT``: lowest latency). Above it, the dispatcher claims up to
  ``bulk_max_batch`` partition heads of the kinds that have a bulk handler (``ctdd.delivery.bulk``) and sends
  them as one bulk import per account and kind (at most one head per partition, so order holds), polls
  the import, and settles each message from the per-record report. Pending contact upserts queued behind
  a head are coalesced into it when claimed in bulk mode (``coalesce``). Product views of one contact are
  merged into one message in both modes (``view_coalesce_seconds``); one carrying several products goes out
  as an insight import, with those of the other contacts claimed at the same time (``ctdd.delivery.view_merge``).
- Retries: retryable failures (5xx, 408/425/429, throttling, transport errors) go back to ``pending`` with
  capped exponential backoff and jitter, at least as long as Retry-After / X-RateLimit-Reset asks; after
  ``max_attempts`` the message is *parked* (kept, resumed once the account delivers again); a message parked
  ``max_parks`` times while its account delivers others goes to ``dead``; other 4xx are dead-lettered at once
  with the response code and reason kept.
- Authentication: a 401/403 pauses the whole account (all workers), the message goes back to ``pending``
  without its attempt counting, and probes resume the account once the credentials work
  (:mod:`ctdd.delivery.account_guard`). The same message refused again after a probe proved the credentials
  work is parked instead (its own failure): the account is not paused again for it.
- Rate limits: every call of an account goes through the account's :class:`~ctdd.dotdigital.rate_budget.RateBudget`,
  which paces calls when the remaining budget runs low and pauses the whole account after a throttle.
  Paused accounts are not claimed for.
- Several processes: on PostgreSQL any number of dispatchers (``ctdd worker``, ``ctdd serve``) share the
  outbox: claims use ``FOR UPDATE SKIP LOCKED``, every dispatcher extends the leases of what it holds
  (heartbeat) and rescues the expired leases of dead ones, and it LISTENs for the NOTIFY of every enqueue
  so an idle dispatcher wakes at once. On SQLite one dispatcher runs per database file.
- Crash safety: a message is leased while in flight; a dead worker's leases expire and are rescued.
  The effect of re-delivering an upsert is the same as delivering it once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import replace

from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.delivery import outbox
from ctdd.delivery.bulk import BULK_HANDLERS, BulkContext, ImportTimings, ItemResult, import_done
from ctdd.config import DispatcherConfig, Settings
from ctdd.delivery.handlers import HANDLERS, DeliveryContext
from ctdd.delivery.known_state import known_contact_loader
from ctdd.delivery.transform import PluginFailed, transformed
from ctdd.delivery.view_merge import is_multi_record
from ctdd.db.engine import is_sqlite, utcnow
from ctdd.db.models import Contact
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.delivery import pauses
from ctdd.delivery.account_guard import AUTH_STATUSES, AccountGuard, is_auth_failure
from ctdd.db.listen import NotifyListener
from ctdd.hooks.manager import DeliveryOutcome, HookContext, Hooks
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.rate_budget import RateBudget
from ctdd.retry import JITTER_20_PERCENT, backoff_delay
from ctdd.telemetry import attempts_counter, delivery_duration, links_from_carrier, start_span

log = logging.getLogger(__name__)


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_UNSET = object()


class _NotStarted(Exception):
    """A message claimed ahead whose call had not begun when the dispatcher began to stop."""


class _Settler:
    """Records the outcomes of single deliveries in shared transactions (one commit, one fsync, for all
    the outcomes that are waiting), and answers each after the commit whether its lease was still held."""

    def __init__(self, engine: Engine, worker_id: str, interval: float = 0.0):
        self.engine = engine
        self.worker_id = worker_id
        self.interval = interval
        self._queue: list[tuple[outbox.Outcome, asyncio.Future]] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0

    async def submit(self, outcome: outbox.Outcome) -> bool:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="outbox-settler")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, future))
        self._kick.set()
        return await future

    async def _loop(self) -> None:
        last = 0.0
        while True:
            if not self._queue:
                self._kick.clear()
                await self._kick.wait()
                continue
            # Under load, settle at most every `interval`: one transaction then carries the outcomes of that
            # time (each settle costs the same handful of statements whatever its size).
            wait = last + self.interval - time.monotonic()
            if wait > 0 and len(self._queue) < 500:
                await asyncio.sleep(wait)
            last = time.monotonic()
            batch, self._queue = self._queue[:500], self._queue[500:]
            try:
                owned = await asyncio.to_thread(outbox.settle, self.engine, [o for o, _ in batch],
                                                worker=self.worker_id)
                self.batches += 1
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for outcome, future in batch:
                if not future.done():
                    future.set_result(outcome.msg.id in owned)

    async def close(self) -> None:
        while self._queue and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Dispatcher:
    def __init__(self, engine: Engine, settings: Settings, clients: DotdigitalClients, hooks: Hooks,
                 *, worker_id: str | None = None):
        self.engine = engine
        self.settings = settings
        self.cfg: DispatcherConfig = settings.dispatcher
        self.clients = clients
        self.budget: RateBudget = clients.budget
        self.budget.enabled = self.cfg.rate_pacing
        self.budget.burst_fraction = self.cfg.rate_burst_fraction
        self.budget.reserve = self.cfg.rate_reserve
        self.hooks = hooks
        self.worker_id = worker_id or make_worker_id()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()  # single deliveries (including those waiting for a slot)
        self._bulk_tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._runner: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self._listener: NotifyListener | None = None
        self.import_timings = ImportTimings(self.cfg.bulk_poll_min_seconds, self.cfg.bulk_poll_max_seconds)
        self._settler = _Settler(engine, self.worker_id, interval=self.cfg.settle_interval_seconds)
        #: auth pauses and park episodes of the accounts (``on_change``: set by the runtime for gRPC health)
        self.guard = AccountGuard(engine, self.cfg, clients, worker_id=self.worker_id, wake=self.wake)
        #: counters for observability and tests
        self.stats: dict[str, int] = defaultdict(int)
        #: the HTTP status of each single delivery attempt in progress (for its metric), by message id
        self._response_codes: dict[int, int] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._runner = asyncio.create_task(self.run(), name="outbox-dispatcher")
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="outbox-heartbeat")
        if self.cfg.listen_notify and self.engine.dialect.name == "postgresql":
            self._listener = NotifyListener(self.engine, self.wake, channel=outbox.NOTIFY_CHANNEL)
            self._listener.start()

    def wake(self) -> None:
        """Tell the dispatcher new messages are waiting (an RPC committed, or a NOTIFY arrived)."""
        self._wake.set()

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop claiming, let in-flight deliveries finish (up to ``drain_seconds``), release the rest."""
        self._stopping = True
        self._wake.set()
        if self._listener is not None:
            await self._listener.stop()
        if self._runner is not None:
            await self._runner
        work = self._tasks | self._bulk_tasks
        if work:
            done, pending = await asyncio.wait(work, timeout=drain_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        await self._settler.close()
        await self.guard.close()
        released = await asyncio.to_thread(outbox.release_leases, self.engine, worker=self.worker_id)
        if released:
            log.info("released %d lease(s) on shutdown", released)

    # -- leases ---------------------------------------------------------------------------------
    @property
    def heartbeat_interval(self) -> float:
        return self.cfg.heartbeat_seconds or max(0.2, self.cfg.lease_seconds / 3)

    async def _heartbeat_loop(self) -> None:
        """Keep the leases of everything this worker holds alive (a slow call or a long import must not
        look like a dead worker to the others' rescuers)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if not (self._tasks or self._bulk_tasks):
                continue
            try:
                held = await asyncio.to_thread(outbox.heartbeat, self.engine, worker=self.worker_id,
                                               lease_seconds=self.cfg.lease_seconds)
                self.stats["heartbeats"] += 1
                log.debug("heartbeat: %d lease(s) extended", held)
            except Exception:
                log.exception("lease heartbeat failed; retrying")

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        last_rescue = 0.0
        coalesce_bulk = self.cfg.coalesce in ("bulk", "always")
        coalesce_single = self.cfg.coalesce == "always"
        # Product views already queued behind a claimed view head are merged into it, also without a hold
        # (view_coalesce_seconds = 0): it costs no wait, and under load it turns a contact's backlog of views
        # into one call instead of one call per view, each waiting for the one before.
        merge_views = self.cfg.view_coalesce_seconds > 0 or self.cfg.merge_queued_views
        while not self._stopping:
            progressed = False
            try:
                if time.monotonic() - last_rescue > max(1.0, self.cfg.lease_seconds / 4):
                    # Every worker rescues: a dead worker's messages come back whoever notices first.
                    await asyncio.to_thread(outbox.rescue_expired, self.engine)
                    last_rescue = time.monotonic()
                await self.guard.tick()
                paused = tuple(sorted({*self.budget.paused_accounts(), *self.guard.paused_accounts()}))
                # One "now" for the backlog check and both claims: a message falling due in between
                # waits for the next round's check rather than slipping into the single-call path.
                now = utcnow()
                bulk_mode = False
                if self.cfg.batching and BULK_HANDLERS:
                    backlog = await asyncio.to_thread(outbox.due_backlog, self.engine,
                                                      cap=self.cfg.bulk_backlog_threshold, now=now)
                    bulk_mode = backlog >= self.cfg.bulk_backlog_threshold
                    if bulk_mode and len(self._bulk_tasks) < self.cfg.bulk_max_active_imports:
                        claimed = await asyncio.to_thread(
                            outbox.claim, self.engine, worker=self.worker_id, limit=self.cfg.bulk_max_batch,
                            lease_seconds=self.cfg.lease_seconds, kinds=tuple(BULK_HANDLERS), now=now,
                            accounts_excluded=paused, coalesce=coalesce_bulk, merge_views=merge_views,
                        )
                        progressed |= self._dispatch_bulk(self._without_orphans(claimed))
                # Up to `concurrency` calls run at once; as many claimed messages again wait for a slot (or
                # have called and wait for their outcome to be recorded), so a slot that frees up is
                # refilled at once rather than after the next claim's round trip.
                free = 2 * self.cfg.concurrency - len(self._tasks)
                # Under load, refill in batches of at least half the concurrency: claiming each time one call
                # ends would cost a claim (and a contact load) per message. With nothing in flight, claim at
                # once whatever is due (latency).
                refill = free >= max(1, self.cfg.concurrency // 2) or not self._tasks
                # Under backlog, kinds that have a bulk import wait for the next import instead of going one
                # by one next to it (each single call would cost as much as a whole import).
                single_kinds = tuple(k for k in HANDLERS if k not in BULK_HANDLERS) if bulk_mode else None
                if free > 0 and refill and single_kinds != ():
                    claimed = await asyncio.to_thread(
                        outbox.claim, self.engine, worker=self.worker_id, limit=min(free, self.cfg.batch_size),
                        lease_seconds=self.cfg.lease_seconds, accounts_excluded=paused, coalesce=coalesce_single,
                        merge_views=merge_views, now=now, kinds=single_kinds,
                    )
                    ready = self._imports_of_views(self._without_orphans(claimed))
                    contacts = await asyncio.to_thread(self._load_contacts,
                                                       {m.contact_id for m in ready if m.contact_id is not None})
                    for msg in ready:
                        self._spawn_single(msg, contacts.get(msg.contact_id) if msg.contact_id is not None else None)
                    progressed |= len(claimed) == min(free, self.cfg.batch_size)
            except Exception:
                log.exception("outbox claim failed; retrying shortly")
                progressed = False
            if progressed:
                await asyncio.sleep(0)  # more may be waiting: claim again straight away
                continue
            if self._stopping:
                break  # stop() may have set the wake-up while we were claiming
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.poll_interval_seconds)
            except asyncio.TimeoutError:
                pass

    def _without_orphans(self, claimed: list[outbox.ClaimedMessage]) -> list[outbox.ClaimedMessage]:
        """Messages a dead worker left in a running bulk import wait for that import to end first."""
        orphans = [m for m in claimed if m.bulk_import_id]
        if orphans:
            task = asyncio.create_task(self._after_orphaned_imports(orphans), name="orphaned-imports")
            self._bulk_tasks.add(task)
            task.add_done_callback(self._task_done)
        return [m for m in claimed if not m.bulk_import_id]

    async def _after_orphaned_imports(self, msgs: list[outbox.ClaimedMessage]) -> None:
        groups: dict[tuple[str, str, str], list[outbox.ClaimedMessage]] = defaultdict(list)
        for msg in msgs:
            groups[(msg.account, msg.kind, msg.bulk_import_id or "")].append(msg)
        for (account, kind, import_id), group in groups.items():
            bulk = BULK_HANDLERS.get(kind)
            if bulk is None:
                continue
            log.warning("%d message(s) were in %s import %s of a worker that died; waiting for that import to end "
                        "before sending them again", len(group), kind, import_id)
            deadline = time.monotonic() + self.cfg.bulk_import_timeout_seconds
            while time.monotonic() < deadline and not self._stopping:
                try:
                    if import_done(await bulk.status(self.clients.get(account), import_id)):
                        break
                except DotdigitalError as exc:
                    if is_auth_failure(exc):  # the account is paused; the import goes on in Dotdigital
                        await self.guard.auth_failed(account, exc.status_code)
                    elif not exc.retryable:  # e.g. 404: Dotdigital no longer knows it
                        break
                except Exception:
                    log.exception("polling orphaned import %s failed", import_id)
                await asyncio.sleep(max(self.cfg.bulk_poll_min_seconds, 0.05))
        if self._stopping:
            return  # released on shutdown, import id kept
        await asyncio.to_thread(outbox.record_import, self.engine, [m.id for m in msgs], None, worker=self.worker_id)
        ready = [replace(m, bulk_import_id=None) for m in msgs]
        if self.cfg.batching and len(ready) >= self.cfg.bulk_min_batch:
            self._dispatch_bulk(ready)
        else:
            for msg in self._imports_of_views(ready):
                self._spawn_single(msg)

    def _spawn_single(self, msg: outbox.ClaimedMessage, contact=_UNSET) -> None:
        task = asyncio.create_task(self._deliver_guarded(msg, contact), name=f"deliver-{msg.id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._bulk_tasks.discard(task)
        self._wake.set()  # a finished head may unblock the next message of its partition

    def _dispatch_bulk(self, claimed: list[outbox.ClaimedMessage]) -> bool:
        """Group claimed heads into bulk imports; groups too small for an import go one by one."""
        if not claimed:
            return False
        groups: dict[tuple, list[outbox.ClaimedMessage]] = defaultdict(list)
        for msg in claimed:
            bulk = BULK_HANDLERS[msg.kind]
            groups[(msg.account, msg.kind, bulk.group_key(msg))].append(msg)
        for (account, kind, _), msgs in groups.items():
            if len(msgs) < self.cfg.bulk_min_batch:
                for msg in self._imports_of_views(msgs):
                    self._spawn_single(msg)
                continue
            task = asyncio.create_task(self._deliver_bulk_guarded(account, kind, msgs), name=f"bulk-{kind}-{msgs[0].id}")
            self._bulk_tasks.add(task)
            task.add_done_callback(self._task_done)
        return len(claimed) >= self.cfg.bulk_min_batch

    def _imports_of_views(self, msgs: list[outbox.ClaimedMessage]) -> list[outbox.ClaimedMessage]:
        """Start one insight import per account for the merged product-view messages carrying several records
        (``ctdd.delivery.view_merge``): one call for all their records instead of one per record. Returns the
        other messages, to be sent one by one."""
        views: dict[str, list[outbox.ClaimedMessage]] = defaultdict(list)
        rest = []
        # imports in flight stay within bulk_max_active_imports (Dotdigital runs at most 5 insight imports per
        # account at once): beyond it, a merged message goes the single way (one PUT per record)
        room = self.cfg.bulk_max_active_imports - len(self._bulk_tasks)
        for msg in msgs:
            if (is_multi_record(msg.kind, msg.payload) and outbox.INSIGHT_UPSERT in BULK_HANDLERS
                    and (msg.account in views or len(views) < room)):
                views[msg.account].append(msg)
            else:
                rest.append(msg)
        for account, group in views.items():
            task = asyncio.create_task(self._deliver_bulk_guarded(account, outbox.INSIGHT_UPSERT, group),
                                       name=f"views-{group[0].id}")
            self._bulk_tasks.add(task)
            task.add_done_callback(self._task_done)
        return rest

    async def _deliver_guarded(self, msg: outbox.ClaimedMessage, contact=_UNSET) -> None:
        try:
            await self.deliver(msg, contact)
        except _NotStarted:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error delivering message %s", msg.id)

    # -- single delivery ------------------------------------------------------------------------
    async def deliver(self, msg: outbox.ClaimedMessage, contact=_UNSET) -> None:
        """Deliver one message with its kind's single-record call. ``contact``: the message's contact if
        the caller loaded it already (``None`` for none), else it is loaded here."""
        started = utcnow()
        if self.guard.is_paused(msg.account):  # claimed before the pause: back, not counted, not called
            await self._settler.submit(outbox.Outcome(
                msg, "retry", None, "account paused: Dotdigital refused its credentials (HTTP 401/403)",
                count_attempt=False, started_at=started))
            return
        paused = self.budget.paused_for(msg.account)
        if paused > 0:
            await self._settler.submit(outbox.Outcome(
                msg, "retry", None, "account throttled; waiting for rate-limit reset", delay_seconds=paused,
                count_attempt=False, started_at=started))
            return
        attempt = msg.attempts + 1
        with start_span(
            f"deliver {msg.kind}", kind=SpanKind.CONSUMER, links=_links(msg),
            attributes={
                "messaging.system": "ctdd-outbox", "messaging.operation.type": "process",
                "messaging.message.id": str(msg.id), "messaging.destination.name": msg.account,
                "ctdd.attempt": attempt, "ctdd.store_key": msg.store_key or "",
            },
        ) as span:
            t0 = time.perf_counter()
            try:
                outcome = await self._attempt(msg, started, attempt, span, contact)
            finally:
                code = self._response_codes.pop(msg.id, None)
            attributes = _attempt_attributes(msg, outcome)
            delivery_duration.record(time.perf_counter() - t0, attributes)
            if code is not None:
                attributes["http.response.status_code"] = code
            attempts_counter.add(1, attributes)
            self.stats[f"single_{outcome}"] += 1

    async def _attempt(self, msg: outbox.ClaimedMessage, started, attempt: int, span, contact=_UNSET) -> str:
        try:
            handle = HANDLERS.get(msg.kind)
            if handle is None:
                raise ValueError(f"no delivery handler for outbox message kind {msg.kind!r}")
            if contact is _UNSET:
                contact = await asyncio.to_thread(self._load_contact, msg.contact_id)
            elif contact is None and msg.contact_id is not None:
                raise LookupError(f"contact {msg.contact_id} not found")
            ctx = DeliveryContext(msg=transformed(self.hooks, self.settings, msg), contact=contact,
                                  client=self.clients.get(msg.account), settings=self.settings,
                                  known_contact=(known_contact_loader(self.engine, self.hooks, self.settings, msg,
                                                                      contact.id) if contact is not None else None))
            async with self._slots:  # only the call itself holds one of the `concurrency` slots
                if self._stopping:
                    raise _NotStarted()  # claimed ahead but not begun: released on shutdown
                result = await handle(ctx)
        except _NotStarted:
            raise
        except PluginFailed as exc:  # ctdd_transform_payload failed: this message is poison, never retried
            span.set_status(Status(StatusCode.ERROR, "plugin_failed"))
            return await self._failed(msg, started, attempt, reason=str(exc), status_code=None, retryable=False,
                                      retry_after=None, throttled=False)
        except DotdigitalError as exc:
            span.set_status(Status(StatusCode.ERROR, exc.code or "dotdigital_error"))
            span.set_attribute("error.type", exc.code or type(exc).__name__)
            if exc.status_code is not None:
                self._response_codes[msg.id] = exc.status_code
                span.set_attribute("http.response.status_code", exc.status_code)
            if is_auth_failure(exc):
                return await self._auth_failed(msg, started, attempt, exc)
            return await self._failed(msg, started, attempt, reason=str(exc), status_code=exc.status_code,
                                      retryable=exc.retryable, retry_after=exc.retry_after,
                                      throttled=getattr(exc, "throttled", False))
        except Exception as exc:  # a bug or an unexpected local failure: retry, never lose the message
            log.exception("message %s: unexpected delivery error", msg.id)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            return await self._failed(msg, started, attempt, reason=f"{type(exc).__name__}: {exc}", status_code=None,
                                      retryable=not isinstance(exc, (ValueError, LookupError)), retry_after=None,
                                      throttled=False)
        span.set_attribute("http.response.status_code", result.status_code)
        self._response_codes[msg.id] = result.status_code
        delivered = await self._settler.submit(outbox.Outcome(
            msg, "delivered", result.status_code,
            # only a contact id that is new to us is written (every contact upsert answers with one)
            dotdigital_contact_id=(result.dotdigital_contact_id
                                   if getattr(contact, "dotdigital_contact_id", None) != result.dotdigital_contact_id
                                   else None),
            started_at=started, channel_statuses=dict(result.channel_statuses or {}) or None,
            record_failures=result.record_failures or None))
        if not delivered:
            log.warning("message %s: lease lost before delivery was recorded", msg.id)
        if delivered:
            log.info("delivered message %s (%s, partition %s seq %s, attempt %d) -> HTTP %s", msg.id, msg.kind,
                     msg.partition_key, msg.sequence, attempt, result.status_code)
            self.guard.delivered(msg.account)
            self._notify(msg, "delivered", attempt, result.status_code, None)
        return "delivered"

    def _load_contact(self, contact_id: int | None) -> Contact | None:
        if contact_id is None:
            return None
        contact = self._load_contacts({contact_id}).get(contact_id)
        if contact is None:
            raise LookupError(f"contact {contact_id} not found")
        return contact

    def _load_contacts(self, ids: set[int]) -> dict[int, Contact]:
        if not ids:
            return {}
        # Ended by COMMIT rather than the ROLLBACK of a closing session: psycopg forgets its prepared statements
        # at every ROLLBACK, and PostgreSQL would parse and plan the worker's statements anew each time.
        with Session(self.engine) as session, session.begin():
            rows = session.query(Contact).filter(Contact.id.in_(ids)).all()
            for row in rows:
                session.expunge(row)
            return {row.id: row for row in rows}

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        delay = backoff_delay(attempt, base=self.cfg.backoff_base_seconds, cap=self.cfg.backoff_cap_seconds,
                              jitter=JITTER_20_PERCENT)
        return max(delay, retry_after) if retry_after is not None else delay

    async def _failed(self, msg: outbox.ClaimedMessage, started, attempt: int, *, reason: str,
                      status_code: int | None, retryable: bool, retry_after: float | None, throttled: bool) -> str:
        if retryable and attempt < self.cfg.max_attempts:
            delay = self._retry_delay(attempt, retry_after)
            if throttled:
                self.budget.pause(msg.account, delay)
            await self._settler.submit(outbox.Outcome(msg, "retry", status_code, reason, delay_seconds=delay,
                                                      started_at=started))
            log.warning("message %s attempt %d failed (%s); retrying in %.2fs", msg.id, attempt, reason, delay)
            self._notify(msg, "retry", attempt, status_code, reason)
            return "retry"
        if retryable:
            # An outage longer than the retry horizon: park (kept, resumed when the account delivers again).
            return await self._park(msg, started, attempt, f"parked after {attempt} attempts: {reason}",
                                    status_code)
        await self._settler.submit(outbox.Outcome(msg, "dead", status_code, reason, started_at=started))
        log.error("message %s dead-lettered (record %s/%s, HTTP %s): %s", msg.id, msg.record_type, msg.record_id,
                  status_code, reason)
        self._notify(msg, "dead", attempt, status_code, reason)
        return "dead"

    async def _park(self, msg: outbox.ClaimedMessage, started, attempt: int, reason: str,
                    status_code: int | None) -> str:
        """Park ``msg``; or, when its account already delivered other messages ``max_parks`` − 1 times while
        it was parked (each resumed it), it is this message's own failure: dead, releasing its partition."""
        parks = (await asyncio.to_thread(pauses.park_counts, self.engine, [msg.id])).get(msg.id, 0) + 1
        if parks >= self.cfg.max_parks:
            reason = (f"dead after being parked {parks} times while account {msg.account} delivered other "
                      f"messages ([dispatcher] max_parks = {self.cfg.max_parks}): {reason}")
            if await self._settler.submit(outbox.Outcome(msg, "dead", status_code, reason, started_at=started)):
                log.error("message %s dead-lettered (record %s/%s, HTTP %s): %s", msg.id, msg.record_type,
                          msg.record_id, status_code, reason)
                self._notify(msg, "dead", attempt, status_code, reason)
            return "dead"
        if await self._settler.submit(outbox.Outcome(msg, "parked", status_code, reason, started_at=started)):
            await self.guard.message_parked(msg.account, msg.id, status_code, reason)
            self._notify(msg, "parked", attempt, status_code, reason)
        return "parked"

    async def _auth_failed(self, msg: outbox.ClaimedMessage, started, attempt: int, exc: DotdigitalError) -> str:
        """401/403: pause the account; the message goes back to ``pending``, its attempt not counted.

        Unless the message met 401/403 before and no auth pause is open now: a probe proved the account's
        credentials work since (only a successful probe ends an auth pause), so the refusal is this message's
        own (e.g. a call the API user may not make). It is parked with its code, and the account is not paused
        again for it."""
        paused, codes = await asyncio.to_thread(pauses.auth_history, self.engine, msg.account, [msg.id])
        if not paused and codes.get(msg.id) in AUTH_STATUSES:
            log.warning("message %s of account %s refused again with HTTP %s although a probe showed the "
                        "account's credentials work: parking the message, not pausing the account", msg.id,
                        msg.account, exc.status_code)
            return await self._park(msg, started, attempt,
                                    f"parked: HTTP {exc.status_code} again for this message after a probe "
                                    f"(GET /v2/account-info) showed the account's credentials work: {exc}",
                                    exc.status_code)
        await self.guard.auth_failed(msg.account, exc.status_code)
        await self._settler.submit(outbox.Outcome(msg, "retry", exc.status_code, str(exc), count_attempt=False,
                                                  started_at=started))
        log.info("message %s back to pending: account %s paused (HTTP %s)", msg.id, msg.account, exc.status_code)
        self._notify(msg, "retry", attempt, exc.status_code, str(exc))
        return "paused"

    # -- bulk delivery --------------------------------------------------------------------------
    async def _deliver_bulk_guarded(self, account: str, kind: str, msgs: list[outbox.ClaimedMessage]) -> None:
        try:
            await self.deliver_bulk(account, kind, msgs)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error delivering a bulk import of %d message(s)", len(msgs))

    async def deliver_bulk(self, account: str, kind: str, msgs: list[outbox.ClaimedMessage]) -> None:
        """Send ``msgs`` (heads of distinct partitions, one account, one kind) as bulk import(s)."""
        bulk = BULK_HANDLERS[kind]
        started = utcnow()
        contacts = await asyncio.to_thread(self._load_contacts, {m.contact_id for m in msgs if m.contact_id})
        links = [link for m in msgs[:64] for link in _links(m)]
        with start_span(
            f"deliver bulk {kind}", kind=SpanKind.CONSUMER, links=links,
            attributes={"messaging.system": "ctdd-outbox", "messaging.operation.type": "process",
                        "messaging.destination.name": account, "messaging.batch.message_count": len(msgs)},
        ) as span:
            t0 = time.perf_counter()
            sent, refused = self._transformed_all(msgs)
            ctx = BulkContext(msgs=sent, contacts=contacts, client=self.clients.get(account), settings=self.settings,
                              timings=self.import_timings, timeout_seconds=self.cfg.bulk_import_timeout_seconds,
                              max_bytes=self.cfg.bulk_max_bytes, on_started=self._import_started)
            auth_failure: DotdigitalError | None = None
            try:
                results = await bulk.deliver(ctx) if sent else {}
            except DotdigitalError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.code or "dotdigital_error"))
                if is_auth_failure(exc) and await self._auth_refused_before(account, msgs):
                    # a probe showed the credentials work since these messages met 401/403: let each message
                    # find its own fate one by one (a repeat refusal parks it, see _auth_failed)
                    log.warning("bulk import of %d %s message(s) refused again with HTTP %s although a probe "
                                "showed account %s's credentials work; sending them one by one", len(msgs), kind,
                                exc.status_code, account)
                    results = {m.id: ItemResult.fallback(str(exc)) for m in msgs}
                elif is_auth_failure(exc):
                    # the account is paused; every message goes back to pending, its attempt not counted
                    await self.guard.auth_failed(account, exc.status_code)
                    auth_failure = exc
                    results = {m.id: ItemResult.retry(str(exc), exc.status_code) for m in msgs}
                elif exc.retryable:
                    too_many_imports = (getattr(exc, "too_many_imports", False)
                                        or "toomanyactiveimports" in (exc.code or "").casefold())
                    if getattr(exc, "throttled", False) and not too_many_imports:
                        self.budget.pause(account, self._retry_delay(1, exc.retry_after))
                    results = {m.id: ItemResult.retry(str(exc), exc.status_code, exc.retry_after) for m in msgs}
                else:
                    # The whole request was refused: let each message find its own fate one by one.
                    log.warning("bulk import of %d %s message(s) refused (%s); sending them one by one",
                                len(msgs), kind, exc)
                    results = {m.id: ItemResult.fallback(str(exc)) for m in msgs}
            except Exception as exc:
                log.exception("bulk import of %d %s message(s) failed", len(msgs), kind)
                span.record_exception(exc)
                results = {m.id: ItemResult.retry(f"{type(exc).__name__}: {exc}", None, None) for m in msgs}
            results = {**results, **refused}
            outcomes: list[outbox.Outcome] = []
            fallback: list[outbox.ClaimedMessage] = []
            delays: dict[tuple, float] = {}  # one delay per (attempt, retry-after): a retried batch stays a batch
            for msg in msgs:
                res = results.get(msg.id) or ItemResult.fallback("not in the import report")
                attempt = msg.attempts + 1
                if auth_failure is not None:
                    outcomes.append(outbox.Outcome(msg, "retry", res.status_code, res.error, count_attempt=False))
                elif res.outcome == "fallback":
                    fallback.append(msg)
                elif res.outcome == "delivered":
                    outcomes.append(outbox.Outcome(msg, "delivered", res.status_code,
                                                   dotdigital_contact_id=res.dotdigital_contact_id,
                                                   record_failures=res.record_failures))
                elif res.outcome == "retry" and attempt < self.cfg.max_attempts:
                    delay = delays.setdefault((attempt, res.retry_after), self._retry_delay(attempt, res.retry_after))
                    outcomes.append(outbox.Outcome(msg, "retry", res.status_code, res.error, delay_seconds=delay))
                elif res.outcome == "retry":  # retries ran out: park (kept, resumed when the account delivers)
                    outcomes.append(outbox.Outcome(msg, "parked", res.status_code,
                                                   f"parked after {attempt} attempts: {res.error}"))
                else:
                    outcomes.append(outbox.Outcome(msg, "dead", res.status_code, res.error,
                                                   dotdigital_contact_id=res.dotdigital_contact_id))
            await self._kill_parked_too_often(outcomes)
            owned = await asyncio.to_thread(outbox.settle, self.engine, outcomes, worker=self.worker_id,
                                            started_at=started)
            elapsed = time.perf_counter() - t0
            for o in outcomes:
                if o.msg.id in owned:
                    attributes = _attempt_attributes(o.msg, o.outcome)
                    delivery_duration.record(elapsed, attributes)
                    if o.response_code is not None:
                        attributes["http.response.status_code"] = o.response_code
                    attempts_counter.add(1, attributes)
                    self.stats[f"bulk_{o.outcome}"] += 1
                    self._notify(o.msg, o.outcome, o.msg.attempts + 1, o.response_code, o.error)
                    if o.outcome == "dead":
                        log.error("message %s dead-lettered from bulk import (record %s/%s): %s", o.msg.id,
                                  o.msg.record_type, o.msg.record_id, o.error)
                    elif o.outcome == "parked":
                        await self.guard.message_parked(account, o.msg.id, o.response_code, o.error or "")
            if any(o.outcome == "delivered" and o.msg.id in owned for o in outcomes):
                self.guard.delivered(account)
            span.set_attribute("ctdd.bulk.delivered", sum(o.outcome == "delivered" for o in outcomes))
            span.set_attribute("ctdd.bulk.fallback", len(fallback))
            log.info("bulk %s: %d message(s) of account %s -> %d delivered, %d retry, %d dead, %d one by one "
                     "(%.2fs)", kind, len(msgs), account, sum(o.outcome == "delivered" for o in outcomes),
                     sum(o.outcome == "retry" for o in outcomes), sum(o.outcome == "dead" for o in outcomes),
                     len(fallback), elapsed)
        self.stats["bulk_imports"] += 1
        if fallback:
            self.stats["bulk_fallback"] += len(fallback)
            await asyncio.gather(*(self._deliver_guarded(m) for m in fallback))

    def _transformed_all(self, msgs: list[outbox.ClaimedMessage]
                         ) -> tuple[list[outbox.ClaimedMessage], dict[int, ItemResult]]:
        """Bulk: the messages as ``ctdd_transform_payload`` leaves them, and those a plugin failed on (dead)."""
        sent, refused = [], {}
        for msg in msgs:
            try:
                sent.append(transformed(self.hooks, self.settings, msg))
            except PluginFailed as exc:
                refused[msg.id] = ItemResult.dead(str(exc))
        return sent, refused

    async def _kill_parked_too_often(self, outcomes: list[outbox.Outcome]) -> None:
        """Bulk: a message to park for the ``max_parks``-th time goes to ``dead`` instead (see _park)."""
        parked = [i for i, o in enumerate(outcomes) if o.outcome == "parked"]
        if not parked:
            return
        counts = await asyncio.to_thread(pauses.park_counts, self.engine, [outcomes[i].msg.id for i in parked])
        for i in parked:
            o = outcomes[i]
            parks = counts.get(o.msg.id, 0) + 1
            if parks >= self.cfg.max_parks:
                outcomes[i] = replace(o, outcome="dead", error=(
                    f"dead after being parked {parks} times while account {o.msg.account} delivered other messages "
                    f"([dispatcher] max_parks = {self.cfg.max_parks}): {o.error}"))

    async def _auth_refused_before(self, account: str, msgs: list[outbox.ClaimedMessage]) -> bool:
        """No auth pause of ``account`` is open and some of ``msgs`` met 401/403 before (see _auth_failed)."""
        try:
            paused, codes = await asyncio.to_thread(pauses.auth_history, self.engine, account, [m.id for m in msgs])
        except Exception:
            log.exception("reading the last response codes of a bulk import failed; pausing the account")
            return False
        return not paused and any(code in AUTH_STATUSES for code in codes.values())

    async def _import_started(self, import_id: str, msgs: list[outbox.ClaimedMessage]) -> None:
        self.stats["imports_started"] += 1
        await asyncio.to_thread(outbox.record_import, self.engine, [m.id for m in msgs], import_id,
                                worker=self.worker_id)

    def _notify(self, msg: outbox.ClaimedMessage, outcome: str, attempt: int, code: int | None, error: str | None) -> None:
        store = self.settings.stores.get(msg.store_key or "")
        if store is None:
            return
        self.hooks.delivery_result(
            HookContext(store=store, settings=self.settings),
            DeliveryOutcome(message_id=msg.id, kind=msg.kind, outcome=outcome, attempt=attempt, response_code=code,
                            error=error, record_type=msg.record_type, record_id=msg.record_id),
        )


def _attempt_attributes(msg: outbox.ClaimedMessage, outcome: str) -> dict:
    """The attributes of a delivery attempt's metrics (docs/metrics.md)."""
    return {"kind": msg.kind, "outcome": outcome, "account": msg.account, "store": msg.store_key or ""}


def _links(msg: outbox.ClaimedMessage) -> list:
    """Span links to the RPCs that enqueued the message and the messages merged into it."""
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    links = list(links_from_carrier(payload.get("trace")))
    for merged in payload.get("merged") or ():
        links.extend(links_from_carrier(merged.get("trace")))
    return links


__all__ = ["Dispatcher", "DotdigitalClients", "make_worker_id", "is_sqlite"]
