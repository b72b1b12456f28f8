"""The dispatcher: claims partition heads from the outbox and delivers them to Dotdigital.

- Concurrency: up to ``dispatcher.concurrency`` deliveries at once, each of a different partition.
- Retries: retryable failures (5xx, 408/425/429, throttling, transport errors) go back to ``pending`` with
  capped exponential backoff and jitter, at least as long as Retry-After / X-RateLimit-Reset asks; other
  4xx are dead-lettered at once with the response code and reason kept.
- Throttling pauses the whole Dotdigital account until the reset time, not just one message.
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
from typing import Mapping

from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service import outbox
from service.config import AccountConfig, DispatcherConfig, Settings
from service.delivery import HANDLERS, DeliveryContext
from service.db.engine import utcnow
from service.db.models import Contact
from service.dotdigital.client import DotdigitalClient
from service.dotdigital.errors import DotdigitalError
from service.telemetry import attempts_counter, delivery_duration, links_from_carrier, tracer
from service.plugins import DeliveryOutcome, HookContext, Hooks

log = logging.getLogger(__name__)


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DotdigitalClients:
    """One client per configured Dotdigital account, created lazily."""

    def __init__(self, accounts: Mapping[str, AccountConfig], **client_kwargs):
        self._accounts = accounts
        self._clients: dict[str, DotdigitalClient] = {}
        self._kwargs = client_kwargs

    def get(self, account: str) -> DotdigitalClient:
        client = self._clients.get(account)
        if client is None:
            cfg = self._accounts[account]
            client = DotdigitalClient(
                api_user=cfg.api_user, password=cfg.password, base_url=cfg.base_url, region=cfg.region,
                discover_endpoint=cfg.discover_endpoint, timeout=cfg.timeout_seconds, **self._kwargs,
            )
            self._clients[account] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class Dispatcher:
    def __init__(self, engine: Engine, settings: Settings, clients: DotdigitalClients, hooks: Hooks,
                 *, worker_id: str | None = None):
        self.engine = engine
        self.settings = settings
        self.cfg: DispatcherConfig = settings.dispatcher
        self.clients = clients
        self.hooks = hooks
        self.worker_id = worker_id or make_worker_id()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._paused_until: dict[str, float] = {}
        self._runner: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._runner = asyncio.create_task(self.run(), name="outbox-dispatcher")

    def wake(self) -> None:
        """Tell the dispatcher new messages are waiting (called after an RPC commits)."""
        self._wake.set()

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop claiming, let in-flight deliveries finish (up to ``drain_seconds``), release the rest."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=drain_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        released = await asyncio.to_thread(outbox.release_leases, self.engine, worker=self.worker_id)
        if released:
            log.info("released %d lease(s) on shutdown", released)

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        last_rescue = 0.0
        while not self._stopping:
            try:
                if time.monotonic() - last_rescue > max(1.0, self.cfg.lease_seconds / 4):
                    await asyncio.to_thread(outbox.rescue_expired, self.engine)
                    last_rescue = time.monotonic()
                free = self.cfg.concurrency - len(self._tasks)
                claimed = await asyncio.to_thread(
                    outbox.claim, self.engine, worker=self.worker_id,
                    limit=min(free, self.cfg.batch_size), lease_seconds=self.cfg.lease_seconds,
                ) if free > 0 else []
            except Exception:
                log.exception("outbox claim failed; retrying shortly")
                claimed = []
            for msg in claimed:
                await self._slots.acquire()
                task = asyncio.create_task(self._deliver_guarded(msg), name=f"deliver-{msg.id}")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            if claimed and len(claimed) == min(free, self.cfg.batch_size):
                await asyncio.sleep(0)  # more may be waiting: claim again straight away
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.poll_interval_seconds)
            except asyncio.TimeoutError:
                pass

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()
        self._wake.set()  # a finished head may unblock the next message of its partition

    async def _deliver_guarded(self, msg: outbox.ClaimedMessage) -> None:
        try:
            await self.deliver(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error delivering message %s", msg.id)

    # -- delivery -----------------------------------------------------------------------------
    async def deliver(self, msg: outbox.ClaimedMessage) -> None:
        started = utcnow()
        paused = self._paused_until.get(msg.account, 0.0) - time.monotonic()
        if paused > 0:
            await asyncio.to_thread(
                outbox.mark_retry, self.engine, msg, worker=self.worker_id, started_at=started,
                delay_seconds=paused, response_code=None, error="account throttled; waiting for rate-limit reset",
                count_attempt=False,
            )
            return
        attempt = msg.attempts + 1
        links = links_from_carrier(msg.payload.get("trace") if isinstance(msg.payload, dict) else None)
        with tracer.start_as_current_span(
            f"deliver {msg.kind}", kind=SpanKind.CONSUMER, links=links,
            attributes={
                "messaging.system": "ctdd-outbox", "messaging.operation.type": "process",
                "messaging.message.id": str(msg.id), "messaging.destination.name": msg.account,
                "ctdd.attempt": attempt, "ctdd.store_key": msg.store_key or "",
            },
        ) as span:
            t0 = time.perf_counter()
            outcome = await self._attempt(msg, started, attempt, span)
            attempts_counter.add(1, {"outcome": outcome, "kind": msg.kind})
            delivery_duration.record(time.perf_counter() - t0, {"outcome": outcome, "kind": msg.kind})

    async def _attempt(self, msg: outbox.ClaimedMessage, started, attempt: int, span) -> str:
        try:
            handle = HANDLERS.get(msg.kind)
            if handle is None:
                raise ValueError(f"no delivery handler for outbox message kind {msg.kind!r}")
            contact = await asyncio.to_thread(self._load_contact, msg.contact_id)
            ctx = DeliveryContext(msg=msg, contact=contact, client=self.clients.get(msg.account), settings=self.settings)
            result = await handle(ctx)
        except DotdigitalError as exc:
            span.set_status(Status(StatusCode.ERROR, exc.code or "dotdigital_error"))
            span.set_attribute("error.type", exc.code or type(exc).__name__)
            if exc.status_code is not None:
                span.set_attribute("http.response.status_code", exc.status_code)
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
        delivered = await asyncio.to_thread(
            outbox.mark_delivered, self.engine, msg, worker=self.worker_id, started_at=started,
            response_code=result.status_code, dotdigital_contact_id=result.dotdigital_contact_id,
        )
        if delivered:
            log.info("delivered message %s (%s, partition %s seq %s, attempt %d) -> HTTP %s", msg.id, msg.kind,
                     msg.partition_key, msg.sequence, attempt, result.status_code)
            self._notify(msg, "delivered", attempt, result.status_code, None)
        return "delivered"

    def _load_contact(self, contact_id: int | None) -> Contact | None:
        if contact_id is None:
            return None
        with Session(self.engine) as session:
            contact = session.get(Contact, contact_id)
            if contact is None:
                raise LookupError(f"contact {contact_id} not found")
            session.expunge(contact)
            return contact

    async def _failed(self, msg: outbox.ClaimedMessage, started, attempt: int, *, reason: str,
                      status_code: int | None, retryable: bool, retry_after: float | None, throttled: bool) -> str:
        if retryable and attempt < self.cfg.max_attempts:
            delay = outbox.backoff_seconds(attempt, base=self.cfg.backoff_base_seconds, cap=self.cfg.backoff_cap_seconds)
            if retry_after is not None:
                delay = max(delay, retry_after)
            if throttled:
                self._paused_until[msg.account] = time.monotonic() + delay
            await asyncio.to_thread(
                outbox.mark_retry, self.engine, msg, worker=self.worker_id, started_at=started,
                delay_seconds=delay, response_code=status_code, error=reason,
            )
            log.warning("message %s attempt %d failed (%s); retrying in %.2fs", msg.id, attempt, reason, delay)
            self._notify(msg, "retry", attempt, status_code, reason)
            return "retry"
        if retryable:
            reason = f"gave up after {attempt} attempts: {reason}"
        await asyncio.to_thread(
            outbox.mark_dead, self.engine, msg, worker=self.worker_id, started_at=started,
            response_code=status_code, error=reason,
        )
        log.error("message %s dead-lettered (record %s/%s, HTTP %s): %s", msg.id, msg.record_type, msg.record_id,
                  status_code, reason)
        self._notify(msg, "dead", attempt, status_code, reason)
        return "dead"

    def _notify(self, msg: outbox.ClaimedMessage, outcome: str, attempt: int, code: int | None, error: str | None) -> None:
        store = self.settings.stores.get(msg.store_key or "")
        if store is None:
            return
        self.hooks.delivery_result(
            HookContext(store=store, settings=self.settings),
            DeliveryOutcome(message_id=msg.id, kind=msg.kind, outcome=outcome, attempt=attempt, response_code=code,
                            error=error, record_type=msg.record_type, record_id=msg.record_id),
        )
