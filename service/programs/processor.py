"""The trigger processor: decides due program triggers and starts the programs.

Run by ``ctdd serve`` and ``ctdd worker`` next to the dispatcher (``ctdd.runtime.app``). Each pass
(:meth:`TriggerProcessor.run_once`, also what tests and ``ctdd simulate`` call on a virtual clock):

1. hands back the claims of processors that stopped (expired leases);
2. claims due pending triggers (``ctdd.programs.triggers``: a lease, ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL), reads every safeguard's facts from the database at this moment (``ctdd.programs.facts``) and
   decides each with the pure rules (``ctdd.domain.programs.decide``), asking the plugins
   (``ctdd_should_trigger``) about those that passed every built-in safeguard;
3. records the decisions (``ctdd.programs.decisions``): sent (list join queued in the outbox), enrolling
   (waiting for its enrolment batch), skipped or cancelled with the reason, or deferred (still pending);
4. runs the enrolment batcher (``ctdd.programs.enrolment``) for the accounts with enrolments to send or to
   follow up.

``clock`` (default ``ctdd.db.engine.utcnow``) is the only source of "now": a virtual clock makes a day of
timers run in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.config import Settings
from ctdd.db.engine import utcnow
from ctdd.db.models import EnrolmentCall, ProductView
from ctdd.domain import programs as rules
from ctdd.hooks.manager import Hooks
from ctdd.hooks.types import HookContext, TriggerInfo
from ctdd.programs import decisions, facts, triggers
from ctdd.programs.directory import RETRY_SECONDS, ProgramDirectory
from ctdd.programs.enrolment import EnrolmentBatcher
from ctdd.telemetry import program_decisions

log = logging.getLogger(__name__)

#: how often decided triggers, old product views and finished enrolment calls are purged
PURGE_INTERVAL_SECONDS = 3600.0


class TriggerProcessor:
    def __init__(self, engine: Engine, settings: Settings, clients, hooks: Hooks, *, worker_id: str,
                 clock: Callable[[], datetime] = utcnow, on_enqueued: Callable[[], None] | None = None):
        self.engine = engine
        self.settings = settings
        self.cfg = settings.programs
        self.hooks = hooks
        self.worker_id = worker_id
        self.clock = clock
        self.on_enqueued = on_enqueued or (lambda: None)
        self.directory = ProgramDirectory(settings, clients)
        self.batcher = EnrolmentBatcher(engine, settings, clients, worker_id=worker_id, clock=clock)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._next_purge = 0.0
        self._used = False  # started, or run_once called: there may be claims and leases to hand back
        self.stats = {"decided": 0, "sent": 0, "enrolling": 0, "skipped": 0, "cancelled": 0, "deferred": 0}

    @property
    def enabled(self) -> bool:
        """Whether any store has a program configured (else the loop has nothing to do)."""
        return any(store.programs for store in self.settings.stores.values())

    def start(self) -> None:
        self._used = True
        if self.engine.dialect.name == "sqlite":
            # One processor per SQLite file (it runs next to the dispatcher, which holds the file's lock):
            # claims left by a previous run are handed back at once.
            released = triggers.release_claims(self.engine)
            if released:
                log.warning("released %d program trigger(s) claimed by a previous run", released)
        self._task = asyncio.create_task(self.run(), name="program-triggers")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Finish the pass in hand, then hand back claims and the enrolment leases."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if not self._used:
            return
        await self.batcher.stop()
        await asyncio.to_thread(triggers.release_claims, self.engine, worker=self.worker_id)

    async def run(self) -> None:
        await self.directory.resolve(force=True)
        while not self._stopping:
            decided = 0
            try:
                decided = (await self.run_once())["decided"]
                if time.monotonic() >= self._next_purge:
                    self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
                    await asyncio.to_thread(self.purge)
            except Exception:
                log.exception("program trigger processing failed; retrying shortly")
            if decided >= self.cfg.batch_size:
                await asyncio.sleep(0)
                continue
            if self._stopping:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.poll_interval_seconds)
            except asyncio.TimeoutError:
                pass

    async def run_once(self, *, max_batches: int | None = None) -> dict[str, int]:
        """Decide every due trigger (in claims of ``batch_size``) and run the enrolment batcher once."""
        self._used = True
        await self.directory.resolve()
        now = self.clock()
        await asyncio.to_thread(triggers.rescue_expired, self.engine, now)
        decided = batches = 0
        while max_batches is None or batches < max_batches:
            claimed = await asyncio.to_thread(triggers.claim_due, self.engine, worker=self.worker_id,
                                              limit=self.cfg.batch_size, lease_seconds=self.cfg.lease_seconds, now=now)
            if not claimed:
                break
            batches += 1
            decided += await self._decide(claimed, now)
            if len(claimed) < self.cfg.batch_size or self._stopping:
                break
            now = self.clock()
        calls = await self.batcher.run_once()
        return {"decided": decided, "enrolment_calls": calls}

    # -- deciding ------------------------------------------------------------------------------------------
    async def _decide(self, claimed: list[triggers.ClaimedTrigger], now: datetime) -> int:
        refs = [_ref(t) for t in claimed]
        batch = await asyncio.to_thread(self._load, refs)
        verdicts = [self._verdict(t, ref, batch, now) for t, ref in zip(claimed, refs)]
        recorded = await asyncio.to_thread(decisions.record, self.engine, self.settings, verdicts,
                                           worker=self.worker_id, now=now)
        joined = False
        for v in recorded:
            outcome = _outcome(v)
            self.stats[outcome] += 1
            program_decisions.add(1, {"kind": v.trigger.program_kind, "outcome": outcome,
                                      "reason": (v.decision.reason or "").split(":", 1)[0],
                                      "account": v.trigger.account, "store": v.trigger.store_key})
            t, d = v.trigger, v.decision
            level = logging.DEBUG if d.action == rules.DEFER else logging.INFO
            log.log(level, "trigger %s (%s, store %s, contact %s, %s %s v%s step %s): %s%s%s", t.id, t.program_kind,
                    t.store_key, t.contact_id, t.subject_type, t.subject_id, t.subject_version, t.step, outcome,
                    f" ({d.reason})" if d.reason else "",
                    f" until {d.until.isoformat()}" if d.until is not None else "")
            joined |= d.action == rules.SEND and v.strategy == "list_join"
        self.stats["decided"] += len(recorded)
        if joined:
            self.on_enqueued()
        return len(claimed)

    def _load(self, refs: list[facts.TriggerRef]) -> facts.BatchFacts:
        with self.engine.begin() as conn:
            return facts.load(conn, self.settings, refs)

    def _verdict(self, t: triggers.ClaimedTrigger, ref: facts.TriggerRef, batch: facts.BatchFacts,
                 now: datetime) -> decisions.Verdict:
        f = facts.facts_for(ref, batch, self.settings, now)
        decision = rules.decide(f)
        if not decision.final:
            f = self._ask_plugins(t, f, batch, now)
            decision = rules.decide(f)
        if decision.action != rules.SEND:
            return decisions.Verdict(t, decision)
        store = self.settings.stores[t.store_key]
        program = store.programs[t.program_kind]
        if program.strategy == "list_join":
            list_id = self.directory.trigger_list_id(t.store_key, t.program_kind)
            if list_id is None:
                return decisions.Verdict(t, rules.Decision.defer(now + timedelta(seconds=RETRY_SECONDS),
                                                                 rules.PROGRAM_UNRESOLVED))
            return decisions.Verdict(t, decision, program_id=self.directory.program_id(t.store_key, t.program_kind),
                                     strategy="list_join", list_id=list_id)
        program_id = self.directory.program_id(t.store_key, t.program_kind)
        if program_id is None:
            return decisions.Verdict(t, rules.Decision.defer(now + timedelta(seconds=RETRY_SECONDS),
                                                             rules.PROGRAM_UNRESOLVED))
        return decisions.Verdict(t, decision, program_id=program_id)

    def _ask_plugins(self, t: triggers.ClaimedTrigger, f: rules.TriggerFacts, batch: facts.BatchFacts,
                     now: datetime) -> rules.TriggerFacts:
        store = self.settings.stores[t.store_key]
        program = store.programs[t.program_kind]
        contact = batch.contacts.get(t.contact_id)
        info = TriggerInfo(
            trigger_id=t.id, program_kind=t.program_kind, program=program.program, strategy=program.strategy,
            channel=program.channel, contact_id=t.contact_id, email=getattr(contact, "email", None),
            mobile_number=getattr(contact, "mobile_number", None), subject_type=t.subject_type,
            subject_id=t.subject_id, subject_version=t.subject_version, step=t.step, due_at=t.due_at, now=now)
        answer = self.hooks.should_trigger(HookContext(store=store, settings=self.settings), info)
        if answer is None:
            return f
        if answer.action == "failed":
            plugin, _, error = answer.reason.partition(": ")
            return replace(f, plugin_veto=rules.plugin_failed(plugin, error))
        if answer.action == "veto":
            return replace(f, plugin_veto=rules.vetoed(answer.reason))
        return replace(f, plugin_defer_until=answer.until, plugin_defer_reason=answer.reason)

    # -- housekeeping --------------------------------------------------------------------------------------
    def purge(self) -> None:
        """Delete decided triggers, product views and finished enrolment calls older than ``retention_days``."""
        older_than = self.clock() - timedelta(days=self.cfg.retention_days)
        purged = triggers.purge_decided(self.engine, older_than)
        pv, ec = ProductView.__table__, EnrolmentCall.__table__
        with self.engine.begin() as conn:
            conn.execute(sa.delete(pv).where(pv.c.viewed_at < older_than))
            conn.execute(sa.delete(ec).where(ec.c.called_at < older_than,
                                             sa.or_(ec.c.finished_at.is_not(None), ec.c.enrolment_id.is_(None)),
                                             ec.c.status != "calling"))
        if purged:
            log.info("purged %d decided program trigger(s) older than %s days", purged, self.cfg.retention_days)


def _ref(t: triggers.ClaimedTrigger) -> facts.TriggerRef:
    return facts.TriggerRef(t.id, t.store_key, t.program_kind, t.contact_id, t.subject_type, t.subject_id,
                            t.subject_version, t.step, t.created_at, t.first_due_at)


def _outcome(v: decisions.Verdict) -> str:
    action = v.decision.action
    if action == rules.SEND:
        return "enrolling" if v.strategy == "enrolment" else "sent"
    return {rules.SKIP: "skipped", rules.CANCEL: "cancelled", rules.DEFER: "deferred"}[action]
