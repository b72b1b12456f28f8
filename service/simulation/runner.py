"""The simulation loop: a recorded stream replayed on a virtual clock through the real service.

The service runs in-process as ``ctdd serve`` would run it (``ctdd.runtime.app.App``: the gRPC server on
loopback, the outbox dispatcher and the inbox processor) on a fresh SQLite database, against a Dotdigital
sandbox per account and a commercetools fake per project (``ctdd.simulation.environment``). The whole process
reads the virtual clock (``ctdd.clock``), and so do the sandboxes.

The loop moves the clock event by event. Between two events it does not sleep: it jumps from one due time to
the next and takes a step there. Due times are those of the engine's own schedules: the trigger processor
runs on the ticks of ``[programs] poll_interval_seconds`` (counted from the first event) when a trigger falls
due, a partial enrolment batch has waited ``batch_wait_seconds``, the hourly enrolment allowance or a pause
ends, or an enrolment's outcome is to be read; each store's cart watcher polls every ``interval_seconds``
while commercetools has changed since its last poll (a poll that cannot find anything is skipped); the
dispatcher and the inbox processor retry at their ``next_attempt_at``. At a step, the watchers and the
processor run once, then the loop waits (in real time) until the dispatcher has delivered everything due, so
the clock never moves while work of the current instant is in flight. What happened is read back after each
step: the requests each sandbox received (stamped with the virtual time of the step) and the
``program_trigger`` rows that changed.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import json_format

from ctdd.api.errors import field_violations
from ctdd.clock import VirtualClock, use_clock
from ctdd.config import Settings
from ctdd.db.models import EnrolmentCall, EventInbox, InboxStatus, OutboxMessage, OutboxStatus, ProgramTrigger
from ctdd.simulation.environment import Environment, build_environment
from ctdd.simulation.stream import StreamEvent, parse_duration, parse_time
from ctdd.simulation.timeline import (
    EnrolmentCallFact,
    ProgramEntryFact,
    Timeline,
    endpoint_of,
    iso,
    render_json,
    render_text,
    short_id,
    summarise,
)
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from ctdd.testing.openapi import OpenApiDocuments

PT = ProgramTrigger.__table__
EC = EnrolmentCall.__table__
OM = OutboxMessage.__table__
IB = EventInbox.__table__

#: after the last event the simulation runs until nothing is left to do, but at most this long
MAX_TAIL = timedelta(days=30)
#: steps of one simulation at most (a loop that never settles is a bug, not a long simulation)
MAX_STEPS = 200_000
#: how long (real seconds) the dispatcher may take to deliver what is due at one instant
SETTLE_TIMEOUT = 120.0
_FINAL_TRIGGER_STATUSES = ("sent", "skipped", "cancelled")
_OPEN_TRIGGER_STATUSES = ("pending", "claimed", "enrolling")
_BODY_METHODS = ("POST", "PUT", "PATCH")


class SimulationError(ValueError):
    """The simulation cannot start: an empty stream, a bad ``--until``, no OpenAPI document in the folder."""


@dataclass
class SimulationResult:
    timeline: Timeline
    summary: dict[str, Any]
    violations: list[dict[str, Any]] | None  # None: no --openapi
    unchecked_endpoints: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # parts of the engine this build does not have

    def as_json(self) -> dict[str, Any]:
        document = render_json(self.timeline, self.summary, self.violations)
        if self.violations is not None:
            document["openapi_unchecked_endpoints"] = self.unchecked_endpoints
        document["missing_components"] = self.missing
        return document

    def as_text(self) -> str:
        text = render_text(self.timeline, self.summary, self.violations)
        if self.violations is not None and self.unchecked_endpoints:
            text += "  not in the OpenAPI documents (not checked): " + ", ".join(self.unchecked_endpoints) + "\n"
        for part in self.missing:
            text += f"  not simulated: {part}\n"
        return text


def resolve_until(until: str | None, last_event: datetime) -> datetime | None:
    """``--until``: an ISO time, or ``+DURATION`` after the last event; None: until nothing is left to do."""
    if not until:
        return None
    try:
        if until.strip().startswith("+"):
            return last_event + parse_duration(until.strip()[1:])
        return parse_time(until)
    except ValueError as exc:
        raise SimulationError(f"--until: {exc}") from None


def simulate(events: list[StreamEvent], *, config: str | Path | None = None, openapi: str | Path | None = None,
             until: str | None = None, plugins: tuple[object, ...] = ()) -> SimulationResult:
    """Replay ``events`` (``ctdd.simulation.stream``) and return the timeline and its summary.

    ``config``: the TOML configuration (None: :data:`ctdd.simulation.environment.DEFAULT_CONFIG`);
    ``openapi``: a folder of OpenAPI documents to check every body against; ``until``: an ISO time or
    ``+DURATION`` after the last event (None: until nothing is left to do); ``plugins``: plugin objects
    registered next to the installed ones (a brand's mapping under test)."""
    if not events:
        raise SimulationError("the stream has no events")
    try:
        documents = OpenApiDocuments.from_directory(openapi) if openapi else None
    except ValueError as exc:
        raise SimulationError(f"--openapi: {exc}") from None
    end = resolve_until(until, events[-1].at)
    clock = VirtualClock(events[0].at)
    with use_clock(clock):
        environment = build_environment(config, clock)
        try:
            check_stores(events, environment.settings, environment.config_source)
            runner = Runner(environment, clock, documents, plugins)
            return asyncio.run(runner.run(events, end))
        finally:
            environment.close()


def check_stores(events: list[StreamEvent], settings: Settings, source: str) -> None:
    """Every line names a store of the configuration, and lines changing commercetools (cart, commercetools)
    a store with a commercetools client: else the stream does not fit the configuration (SimulationError)."""
    known = sorted(settings.stores)
    for event in events:
        payload = event.payload if isinstance(event.payload, dict) else {}
        key = (payload.get("storeKey") or payload.get("store_key") or event.store
               if event.kind in ("track_event", "sync_contact") else event.store)
        store = settings.store(key)
        if store is None:
            raise SimulationError(f"line {event.line}: unknown store {key!r}; the stores of {source}: "
                                  f"{', '.join(known) or '(none)'}")
        if event.kind in ("cart", "commercetools") and store.commercetools is None:
            raise SimulationError(f"line {event.line}: store {event.store!r} has no commercetools client in "
                                  f"{source}, which a {event.kind} line needs")


class Runner:
    def __init__(self, environment: Environment, clock: VirtualClock, documents: OpenApiDocuments | None,
                 plugins: tuple[object, ...] = ()):
        self.env = environment
        self.plugins = plugins
        self.settings: Settings = environment.settings
        self.clock = clock
        self.documents = documents
        self.timeline = Timeline()
        self.violations: list[dict[str, Any]] | None = [] if documents is not None else None
        self.unchecked: set[str] = set()
        self.missing: list[str] = []
        self._seen_requests = {account: 0 for account in environment.sandboxes}
        self._triggers: dict[int, tuple] = {}  # trigger id -> (status, reason, due_at, enrolment_id) last seen
        self._finished_enrolments: set[str] = set()
        self._last_look = clock()
        self.app = None
        self.processor = None
        self.watchers: list[Any] = []
        self._watcher_last: dict[int, datetime] = {}  # index in watchers -> its last poll
        self._commercetools_changed: dict[str, datetime] = {}  # store key -> last change of its carts/orders
        self.steps = 0
        self._quiet_steps = 0  # steps in a row in which nothing happened (the poll fallback backs off)
        #: the trigger processor runs at the ticks of its poll interval, counted from the start
        self._origin = clock()
        self._tick = timedelta(seconds=self.settings.programs.poll_interval_seconds)
        self._due_cache: tuple[datetime | None] | None = None  # (the next due time,) until the next step
        self.notes: Counter[str] = Counter()

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, events: list[StreamEvent], until: datetime | None) -> SimulationResult:
        from ctdd.runtime.app import App

        self.app = App(self.settings, run_backsync=False, extra_plugins=self.plugins)
        await self._setup_account()
        await self.app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.app.port}")
        stub = pb_grpc.SyncServiceStub(channel)
        started = self.clock()
        try:
            await self._take_over_engine()
            self._observe()  # what set-up sent is not part of the timeline
            self.timeline = Timeline()
            self._triggers.clear()
            await self.step()  # the cart watchers' first polls
            for event in events:
                await self.advance_to(event.at)
                await self._apply(stub, event)
                if event.kind not in ("cart", "commercetools"):  # those change commercetools only
                    await self.step(run_engine=False)
            if until is not None:
                await self.advance_to(until)
            else:
                await self._run_until_idle(events[-1].at + MAX_TAIL)
        finally:
            await channel.close()
            if self.processor is not None:
                await self.processor.stop()
            await self.app.stop(grace=2.0)
        return self._result(started)

    async def _setup_account(self) -> None:
        """``ctdd dotdigital setup`` against the sandboxes: data fields, lists by name, insight collections."""
        from ctdd.dotdigital.accounts import DotdigitalClients
        from ctdd.dotdigital.provisioning import run_setup

        clients = DotdigitalClients(self.settings.accounts)
        try:
            result = await run_setup(self.settings, clients, out=io.StringIO())
        finally:
            await clients.aclose()
        if result.errors:
            raise RuntimeError("Dotdigital set-up of the sandbox failed: "
                               + "; ".join(f"{i.kind} {i.name}: {i.note}" for i in result.errors))

    async def _take_over_engine(self) -> None:
        """The trigger processor and the cart watcher are run by this loop, at the virtual times their
        schedules say, rather than on their own (real-time) schedules: the App's are stopped and driven."""
        self.processor = await _trigger_processor(self.app, self.settings, self.clock)
        if self.processor is None:
            self.missing.append("the trigger processor (ctdd.programs.processor): no trigger is decided or sent")
        watcher = getattr(self.app, "cart_watcher", None)
        if watcher is not None:
            await watcher.stop()
            self.watchers = [(store, watcher) for store in watcher.stores()]
        else:
            self.missing.append("the cart watcher (ctdd.ingest.cart_watcher): carts put in commercetools are not polled")

    # -- the clock ---------------------------------------------------------------------------------------
    async def advance_to(self, target: datetime) -> None:
        """Move the clock to ``target`` through every due time on the way (up to and including ``target``), a
        step at each."""
        while True:
            if self._due_cache is None:  # what is due changes only in a step
                self._due_cache = (await asyncio.to_thread(self._next_due, False),)
            due = self._due_cache[0]
            if due is None or due > target:
                break
            self._move(due)
            await self.step()
        if target > self.clock():
            self._move(target)  # nothing is due at the target itself: no step

    async def _run_until_idle(self, limit: datetime) -> None:
        """After the last event: on through the due times until nothing is due any more (no open trigger,
        enrolment, delivery or queued event, and no cart watcher with changes to read)."""
        while True:
            due = await asyncio.to_thread(self._next_due, True)
            if due is None or due > limit:
                return
            self._move(due)
            await self.step()

    def _move(self, to: datetime) -> None:
        if to > self.clock():
            self.clock.advance(to)
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise RuntimeError(f"more than {MAX_STEPS} steps at {iso(self.clock())}: the simulation does not settle")

    async def step(self, *, run_engine: bool = True) -> None:
        """One instant: the cart watchers whose poll is due and, on a tick of its poll interval, the trigger
        processor run once (as their loops would at this moment); the deliveries they cause settle, and what
        happened is recorded."""
        self._due_cache = None
        progressed = False
        if run_engine:
            progressed |= await self._run_watchers()
            if self.clock() == self._tick_at_or_after(self.clock()):
                progressed |= await self._run_processor()
        await self._settle()
        progressed |= self._observe()
        self._quiet_steps = 0 if progressed else self._quiet_steps + 1

    def _tick_at_or_after(self, moment: datetime) -> datetime:
        """The first tick of the trigger processor's poll interval at or after ``moment``: like ``ctdd serve``,
        whose processor polls every ``poll_interval_seconds``, a trigger is decided at the first poll after it
        falls due (ticks counted from the start of the simulation, so round times stay round)."""
        return self._origin - ((self._origin - moment) // self._tick) * self._tick

    def _next_due(self, stop_when_idle: bool) -> datetime | None:
        """The earliest moment at which something is due (None: nothing is). With ``stop_when_idle``, None also
        when only the engine's idle polls would be left: no trigger, enrolment, delivery or queued event is
        due later, and no cart watcher has a change of commercetools to read."""
        now = self.clock()
        with self.app.engine.connect() as conn:
            engine_work, deliveries = _due_times(conn, self.settings, now)
            stuck = conn.execute(sa.select(sa.func.count()).select_from(PT).where(
                PT.c.status == "pending", PT.c.due_at <= now)).scalar()
        work = [self._tick_at_or_after(t) for t in engine_work if t > now] + [t for t in deliveries if t > now]
        if stuck and self.processor is not None:
            # due triggers nobody decided (the processor failed): poll as the processor does, backing off
            work.append(self._tick_at_or_after(now + self._tick * min(2 ** min(self._quiet_steps, 10), 720)))
        polls = [p for p in (self._poll_due(i) for i in range(len(self.watchers))) if p is not None]
        if stop_when_idle and not work and not polls:
            return None
        upcoming = work + polls
        return min(upcoming) if upcoming else None

    def _poll_due(self, index: int) -> datetime | None:
        """When the cart watcher polls store ``index`` next, if that poll can find anything: its first poll at
        the start, then every ``interval_seconds``; a poll is skipped when commercetools did not change for
        the store since the last one (only the stream changes the commercetools fake, and such a poll would
        apply nothing)."""
        store = self.watchers[index][0]
        last = self._watcher_last.get(index)
        if last is None:
            return self.clock()
        changed = self._commercetools_changed.get(store.key)
        if changed is None or changed < last:
            return None
        interval = timedelta(seconds=store.cart_watcher.interval_seconds)
        return last + ((changed - last) // interval + 1) * interval

    # -- the engine ---------------------------------------------------------------------------------------
    async def _run_processor(self) -> bool:
        if self.processor is None:
            return False
        try:
            result = await self.processor.run_once()
        except Exception as exc:  # the service logs and tries again at its next poll; the timeline says so
            self._note(f"trigger processor failed: {type(exc).__name__}: {exc}")
            return False
        return any(result.values())  # {"decided": n, "enrolment_calls": m}

    async def _run_watchers(self) -> bool:
        """Each cart watcher whose poll is due (every ``interval_seconds``, the first at the start) polls."""
        progressed = False
        now = self.clock()
        for index, (store, watcher) in enumerate(self.watchers):
            due = self._poll_due(index)
            if due is None or due > now:
                continue
            self._watcher_last[index] = now
            try:
                result = await watcher.poll_store(store, now)
            except Exception as exc:  # the service logs and polls again later; the timeline says so
                self._note(f"cart watcher poll of store {store.key} failed: {exc}", store=store.key)
                self._commercetools_changed[store.key] = now  # try again at the next poll
                continue
            progressed |= bool(result.carts_applied)
        return progressed

    def _note(self, text: str, **data: Any) -> None:
        """A note in the timeline (a failure of a part of the engine): the first time only; the summary counts
        them all."""
        self.notes[text] += 1
        if self.notes[text] == 1:
            self.timeline.add(self.clock(), "note", text, **data)

    async def _settle(self) -> None:
        """Wait (real time) until the dispatcher and the inbox processor have finished what is due now."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self.app.dispatcher.wake()
            if self.app.inbox_processor is not None:
                self.app.inbox_processor.wake()
            # in flight = claimed, until its outcome is recorded; what a delivery enqueues is pending and due
            if not await asyncio.to_thread(self._busy):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"deliveries due at {iso(self.clock())} did not settle in {SETTLE_TIMEOUT:.0f} s")
            await asyncio.sleep(0.002)

    def _busy(self) -> bool:
        now = self.clock()
        outbox_busy = sa.select(OM.c.id).where(sa.or_(
            OM.c.status == OutboxStatus.IN_FLIGHT,
            sa.and_(OM.c.status == OutboxStatus.PENDING, OM.c.next_attempt_at <= now))).limit(1)
        inbox_busy = sa.select(IB.c.id).where(IB.c.status == InboxStatus.PENDING, IB.c.next_attempt_at <= now).limit(1)
        with self.app.engine.connect() as conn:
            return conn.execute(sa.select(sa.or_(sa.exists(outbox_busy), sa.exists(inbox_busy)))).scalar()

    # -- inputs -------------------------------------------------------------------------------------------
    async def _apply(self, stub: pb_grpc.SyncServiceStub, event: StreamEvent) -> None:
        outcome: dict[str, Any] = {}
        try:
            if event.kind == "track_event":
                request = json_format.ParseDict(event.payload, pb.TrackEventRequest())
                request.store_key = request.store_key or event.store
                outcome = _track_outcome(await stub.TrackEvent(request))
            elif event.kind == "commercetools_delivery":
                raw = event.payload if isinstance(event.payload, str) else json.dumps(event.payload)
                request = pb.TrackEventRequest(store_key=event.store, commercetools_delivery=raw.encode())
                outcome = _track_outcome(await stub.TrackEvent(request))
            elif event.kind == "sync_contact":
                request = json_format.ParseDict(event.payload, pb.SyncContactRequest())
                request.store_key = request.store_key or event.store
                reply = await stub.SyncContact(request)
                outcome = {"outcome": "applied", "contact_id": int(reply.contact_id), "changed": reply.changed}
            else:
                outcome = self._change_commercetools(event)
        except grpc.aio.AioRpcError as exc:
            violations = "; ".join(f"{field or 'request'}: {text}" for field, text in field_violations(exc))
            outcome = {"outcome": "error", "code": exc.code().name,
                       "reason": f"{exc.details()} ({violations})" if violations else exc.details()}
        except (json_format.ParseError, ValueError, KeyError) as exc:
            outcome = {"outcome": "error", "code": "INVALID_INPUT", "reason": str(exc)}
        text = event.describe()
        if outcome.get("contact_id"):
            text += f" (contact #{outcome['contact_id']})"
        if outcome.get("outcome") not in (None, "applied"):
            text += f" -> {outcome['outcome']}" + (f": {outcome['reason']}" if outcome.get("reason") else "")
        self.timeline.add(self.clock(), "event", text, line=event.line, store=event.store, input=event.kind,
                          **outcome)

    def _change_commercetools(self, event: StreamEvent) -> dict[str, Any]:
        fake = self.env.fake_for_store(event.store)
        if fake is None:
            raise ValueError(f"store {event.store!r} has no commercetools client in the configuration")
        self._commercetools_changed[event.store] = event.at
        self._due_cache = None  # the cart watcher has something to find
        at = iso(event.at)
        if event.kind == "cart":
            cart = dict(event.payload)
            cart.setdefault("version", 1)
            cart.setdefault("cartState", "Active")
            cart.setdefault("lastModifiedAt", at)
            cart.setdefault("createdAt", cart["lastModifiedAt"])
            cart.setdefault("store", {"typeId": "store", "key": event.store})
            cart.setdefault("lineItems", [])
            fake.remove("carts", cart["id"])
            fake.add("carts", cart)
            return {"outcome": "applied", "resource": "carts", "id": cart["id"]}
        action, resource = event.payload["action"], event.payload["resource"]
        if action == "remove":
            return {"outcome": "applied" if fake.remove(resource, event.payload["id"]) else "not_found",
                    "resource": resource, "id": event.payload["id"]}
        obj = dict(event.payload["object"])
        obj.setdefault("createdAt", at)
        obj.setdefault("lastModifiedAt", at)
        if obj.get("id"):
            fake.remove(resource, obj["id"])
        added = fake.add(resource, obj)
        return {"outcome": "applied", "resource": resource, "id": added["id"]}

    # -- observing ----------------------------------------------------------------------------------------
    def _observe(self) -> bool:
        """Record what happened since the last look; True when anything did."""
        now = self.clock()
        changed = False
        for account, sandbox in self.env.sandboxes.items():
            requests = sandbox.requests
            for request in requests[self._seen_requests[account]:]:
                changed = True
                self._record_request(now, account, request)
            self._seen_requests[account] = len(requests)
        changed |= self._record_triggers(now)
        return changed

    def _record_request(self, now: datetime, account: str, request) -> None:
        endpoint = endpoint_of(request.method, request.path)
        text = f"{request.method} {request.path} {request.status or 'dropped'}"
        data: dict[str, Any] = {"account": account, "method": request.method, "path": request.path,
                                "endpoint": endpoint, "status": request.status}
        body = request.json
        if endpoint == "POST /v2/programs/enrolments" and isinstance(body, dict):
            contacts = body.get("contacts") or body.get("Contacts") or []
            data.update(program_id=body.get("programId") or body.get("ProgramId"), contacts=len(contacts))
            text += f" (program {data['program_id']}, {len(contacts)} contact{'s' if len(contacts) != 1 else ''})"
        elif endpoint in ("PUT /contacts/v3/import", "PUT /insightData/v3/import"):
            records = body.get("records") if isinstance(body, dict) else body
            if isinstance(records, list):
                data["records"] = len(records)
                name = body.get("collectionName") if isinstance(body, dict) else None
                text += f" ({name + ', ' if name else ''}{len(records)} records)"
        self.timeline.add(now, "dotdigital", text, **data)
        if self.documents is not None and request.method in _BODY_METHODS and body is not None:
            violations, known = self.documents.check(request.method, request.path, body)
            if not known:
                self.unchecked.add(endpoint)
            for violation in violations:
                self.violations.append({"at": iso(now), "account": account, "endpoint": endpoint,
                                        **violation.as_json()})

    def _record_triggers(self, now: datetime) -> bool:
        """Record the ``program_trigger`` rows that changed since the last look: new ones, those still open,
        those decided since (virtual time only moves forward), and the sent ones of an enrolment whose fault
        report was just read (it may add a reason). A light query finds them; only those are read in full."""
        with self.app.engine.connect() as conn:
            finished = set(conn.execute(sa.select(EC.c.enrolment_id).where(
                EC.c.finished_at.is_not(None), EC.c.enrolment_id.is_not(None))).scalars())
            newly_finished = finished - self._finished_enrolments
            self._finished_enrolments |= newly_finished
            states = conn.execute(sa.select(
                PT.c.id, PT.c.status, PT.c.reason, sa.cast(PT.c.due_at, sa.String), PT.c.enrolment_id,
            ).where(sa.or_(PT.c.id > max(self._triggers, default=0), PT.c.status.in_(_OPEN_TRIGGER_STATUSES),
                           PT.c.decided_at >= self._last_look, PT.c.enrolment_id.in_(newly_finished)))).all()
            changed_ids = [state[0] for state in states if self._triggers.get(state[0]) != tuple(state[1:])]
            rows = conn.execute(sa.select(
                PT.c.id, PT.c.store_key, PT.c.account, PT.c.program_kind, PT.c.contact_id, PT.c.subject_type,
                PT.c.subject_id, PT.c.subject_version, PT.c.step, PT.c.due_at, PT.c.status, PT.c.reason,
                PT.c.program_id, PT.c.enrolment_id, PT.c.decided_at,
            ).where(PT.c.id.in_(changed_ids)).order_by(PT.c.id)).all() if changed_ids else []
        self._last_look = now
        new_states = {state[0]: tuple(state[1:]) for state in states}
        changed = False
        for row in rows:
            before = self._triggers.get(row.id)
            self._triggers[row.id] = new_states[row.id]
            changed = True
            if before is not None and before[0] == "pending" and (
                    row.status == "claimed" or (row.status == "pending" and row.reason == before[1])):
                continue  # transient (the processor is deciding it), or waiting again for the same reason
            self._record_trigger(now, row, before)
        return changed

    def _record_trigger(self, now: datetime, row, before: dict[str, Any] | None) -> None:
        subject = f"{row.subject_type} {row.subject_id}" + (f" v{row.subject_version}" if row.subject_version else "")
        head = f"{row.program_kind} step {row.step} {subject} (contact #{row.contact_id})"
        due = _utc(row.due_at)
        if row.status == "sent":
            how = f"enrolment {short_id(row.enrolment_id)}" if row.enrolment_id else "list join"
            outcome = f"sent ({how})"
        elif row.status in ("skipped", "cancelled"):
            outcome = f"{row.status}: {row.reason or '?'}"
        elif row.status == "pending" and before is None:
            outcome = f"scheduled, due {iso(due)}"
        elif row.status == "pending":
            outcome = f"waits until {iso(due)}" + (f": {row.reason}" if row.reason else "")
        else:
            outcome = row.status + (f": {row.reason}" if row.reason else "")
        at = _utc(row.decided_at) if row.decided_at is not None and row.status in _FINAL_TRIGGER_STATUSES else now
        self.timeline.add(at, "trigger", f"{head} -> {outcome}", trigger_id=row.id, store=row.store_key,
                          account=row.account, program_kind=row.program_kind, step=row.step,
                          subject_type=row.subject_type, subject_id=row.subject_id,
                          subject_version=row.subject_version, contact_id=row.contact_id, status=row.status,
                          reason=row.reason, due_at=iso(due), program_id=row.program_id,
                          enrolment_id=row.enrolment_id)

    # -- the result ---------------------------------------------------------------------------------------
    def _enrolment_calls(self) -> list[EnrolmentCallFact]:
        facts: list[EnrolmentCallFact] = []
        for account, sandbox in self.env.sandboxes.items():
            for call in sandbox.enrolment_calls:
                facts.append(EnrolmentCallFact(account, _utc(call.at), call.status, call.program_id,
                                               tuple(call.contacts), call.error))
        return facts

    def _program_entries(self) -> list[ProgramEntryFact]:
        facts: list[ProgramEntryFact] = []
        for account, sandbox in self.env.sandboxes.items():
            for entry in sandbox.program_entries():
                store, kind = self.env.programs.get((account, entry.program_id), ("?", "?"))
                facts.append(ProgramEntryFact(account, entry.program_id, f"{store} {kind}", entry.contact_id,
                                              entry.via))
        return facts

    def _result(self, started: datetime) -> SimulationResult:
        violations = self.violations
        summary = summarise(self.timeline, self._enrolment_calls(), self._program_entries(),
                            calls_per_hour=self.settings.programs.enrolment_calls_per_hour,
                            violations=violations, started=started, ended=self.clock())
        summary["notes"] = dict(sorted(self.notes.items()))
        return SimulationResult(self.timeline, summary, violations, sorted(self.unchecked), self.missing)


# -- helpers ---------------------------------------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back naive: they are UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _add(candidates: list[datetime], moment: datetime | None) -> None:
    if moment is not None:
        candidates.append(_utc(moment))


def _track_outcome(reply: pb.TrackEventResponse) -> dict[str, Any]:
    if reply.queued:
        return {"outcome": "queued"}
    outcomes = [pb.EventOutcome.Name(n.outcome).removeprefix("EVENT_OUTCOME_").lower() for n in reply.notifications]
    reasons = [n.reason for n in reply.notifications if n.reason]
    contacts = [int(n.contact_id) for n in reply.notifications if n.contact_id]
    outcome: dict[str, Any] = {"outcome": ",".join(dict.fromkeys(outcomes)) or "applied"}
    if reasons:
        outcome["reason"] = "; ".join(reasons)
    if contacts:
        outcome["contact_id"] = contacts[0]
    return outcome


async def _trigger_processor(app, settings: Settings, clock: VirtualClock):
    """A trigger processor made as the App makes it, driven by the loop (an App that runs its own is stopped
    first: its schedule is real time); None when this build has none."""
    try:
        from ctdd.programs.processor import TriggerProcessor
    except ImportError:
        return None
    for value in vars(app).values():
        if isinstance(value, TriggerProcessor):
            await value.stop()
    return TriggerProcessor(app.engine, settings, app.clients, app.hooks, worker_id=app.dispatcher.worker_id,
                            clock=clock, on_enqueued=app.dispatcher.wake)


def _due_times(conn, settings: Settings, now: datetime) -> tuple[list[datetime], list[datetime]]:
    """When there is something to do: for the trigger processor (a pending trigger falling due, a partial
    enrolment batch that has waited ``batch_wait_seconds``, the hourly enrolment budget or a pause ending, an
    enrolment outcome to read) and for the dispatcher and the inbox processor (a retry)."""
    from ctdd.programs import budget, leases

    times: list[datetime] = []
    deliveries: list[datetime] = []
    wait = timedelta(seconds=settings.programs.batch_wait_seconds)
    poll = timedelta(seconds=settings.programs.poll_interval_seconds)
    _add(times, conn.execute(sa.select(sa.func.min(PT.c.due_at)).where(
        PT.c.status == "pending", PT.c.due_at > now)).scalar())
    for query in (
        sa.select(sa.func.min(OM.c.next_attempt_at)).where(OM.c.status == OutboxStatus.PENDING,
                                                           OM.c.next_attempt_at > now),
        sa.select(sa.func.min(IB.c.next_attempt_at)).where(IB.c.status == InboxStatus.PENDING,
                                                           IB.c.next_attempt_at > now),
    ):
        _add(deliveries, conn.execute(query).scalar())
    for account in settings.accounts:
        waiting = conn.execute(sa.select(PT.c.program_id, sa.func.min(PT.c.decided_at)).where(
            PT.c.account == account, PT.c.status == "enrolling", PT.c.enrolment_call_id.is_(None),
        ).group_by(PT.c.program_id)).all()
        if waiting:
            cursor = leases.cursor(conn, budget.lease_name(account))
            used, _ = budget.calls_in_window(conn, account, now)
            if used >= settings.programs.enrolment_calls_per_hour:
                times.append(budget.allowance_frees_at(conn, account, now))
            _add(times, budget.paused_until(cursor))
            for program_id, oldest in waiting:
                _add(times, budget.program_retry_at(cursor, program_id))
                if oldest is not None:
                    times.append(_utc(oldest) + wait)
        unfinished = conn.execute(sa.select(EC.c.called_at).where(
            EC.c.account == account, EC.c.enrolment_id.is_not(None), EC.c.finished_at.is_(None))).scalars().all()
        for called_at in unfinished:
            first = _utc(called_at) + poll  # read at a later poll of the processor
            times.append(first if first > now else now + poll)
    return times, deliveries
