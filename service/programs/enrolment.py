"""The enrolment batcher: triggers decided "send" (``enrolling``) go to Dotdigital in calls of up to 25 contacts,
at most ``[programs] enrolment_calls_per_hour`` (20) calls per rolling hour per account, across all programs.

Only the holder of the account's lease ``enrol:<account>`` (``lease`` table) sends its enrolments, so workers
sharing a PostgreSQL database never call for the same account at once. The lease is renewed (only while this
worker still owns it) in the transaction of each reservation, which on PostgreSQL also serialises the count of the
hour's calls with the insert of the new one; a worker that lost it stops its pass. For each account it holds:

1. **Stale calls**: a call left ``calling`` by a process that died (older than the lease) is looked up in
   Dotdigital (an enrolment of that program for exactly those contacts, or, listed without its contacts, the only
   one of the program made around the call's time): found, it is adopted; not found, its
   triggers wait for a new call. The interrupted call still counts against the budget.
2. **Outcomes** (``ctdd.programs.outcomes``): enrolments still ``Processing`` are read again; once
   ``Finished`` their ``report-faults`` are read and each fault is logged against its trigger (the trigger
   stays ``sent``, its reason becomes ``enrolment_fault: <Reason>``, e.g. ``AlreadyInProgram``).
3. **New calls**, per program: a full batch goes as soon as it exists, a partial batch only when its oldest
   trigger waited ``batch_wait_seconds``; while the account has calls left this hour (the ``enrolment_call``
   rows of the last hour, :mod:`ctdd.programs.budget`). Right before a call the subject and consent
   safeguards are checked once more (an order may have arrived since the trigger was decided), and the quiet
   hours: a trigger that waited into them goes back to ``pending``, due at their end (reason ``quiet_hours``); the call
   row is written (status ``calling``) in the same transaction that assigns the triggers to it, before the
   HTTP call: a crash cannot overspend, and an order arriving later can no longer cancel these triggers.

Failures: ``ERROR_ENROLMENT_ALLOWANCE_EXCEEDED`` holds the triggers and pauses the account until the oldest
call of the window is an hour old; ``ERROR_PROGRAM_NOT_ACTIVE`` / ``ERROR_PROGRAM_NOT_FOUND`` hold that
program's triggers (they stay ``enrolling`` with the reason ``held: <code>``; the error is logged once with its
code, saying "not found" or "not active"; the program is looked at again every :data:`PROGRAM_RETRY`, with
``GET /v2/programs/{id}``, which costs no enrolment); other retryable errors hold the triggers and pause the
account for :data:`RETRY_PAUSE`; a 401 or 403 (the API user's credentials or permissions) holds them and pauses the
account's enrolments for :data:`AUTH_PAUSE`, logging what to check (a call that got no answer at all, or a 2xx whose body
cannot be read (``INVALID_RESPONSE``: the enrolment was probably made), is first looked up in Dotdigital, as a stale
one is, and held when not found); ``ERROR_CONTACT_NOT_FOUND`` (nobody enrolled) looks up each contact of the call
(``GET /contacts/v3/contactId/{id}``, no enrolment spent), skips only the triggers of the contacts Dotdigital no
longer knows (``contact_not_in_dotdigital``) and sends the others in a new call; any other permanent error skips the
batch's triggers with the reason ``enrolment_failed: <code>``. Nothing is lost.

When more triggers wait than the calls left this hour can carry, the account's backlog is set on the gauge
``ctdd.programs.backlog`` and a warning is logged once an hour, naming the list-join strategy (no cap).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.config import Settings
from ctdd.db.models import EnrolmentCall, ProgramTrigger, TriggerStatus
from ctdd.delivery.account_guard import is_auth_failure, what_to_fix
from ctdd.domain import programs as rules
from ctdd.dotdigital.errors import DotdigitalError, DotdigitalTransportError
from ctdd.programs import budget, facts, leases, outcomes
from ctdd.programs.scheduling import schedule_next_step
from ctdd.telemetry import enrolment_calls, program_backlog

log = logging.getLogger(__name__)

PT = ProgramTrigger.__table__
EC = EnrolmentCall.__table__

ALLOWANCE_EXCEEDED = "ERROR_ENROLMENT_ALLOWANCE_EXCEEDED"
PROGRAM_CODES = ("ERROR_PROGRAM_NOT_ACTIVE", "ERROR_PROGRAM_NOT_FOUND")
CONTACT_NOT_FOUND = "ERROR_CONTACT_NOT_FOUND"
#: a 2xx whose body cannot be read: the enrolment was probably made, so it is looked up like a transport error
INVALID_RESPONSE = "INVALID_RESPONSE"
#: a program that is not Active is looked at again this often
PROGRAM_RETRY = timedelta(minutes=15)
#: a retryable failure of an enrolment call pauses the account's enrolments this long
RETRY_PAUSE = timedelta(seconds=60)
#: a 401 or 403 to an enrolment call (credentials, permissions) pauses the account's enrolments this long
AUTH_PAUSE = timedelta(minutes=15)
#: an enrolment answered without its contacts is taken for a call whose answer was lost when it was created this
#: close to the call (before: clocks differ; after: the call's own time in flight)
FIND_WINDOW = (timedelta(minutes=1), timedelta(minutes=5))
#: the backlog warning of an account is logged at most this often
WARN_EVERY = timedelta(hours=1)

CALLING, FAILED, INTERRUPTED = "calling", "failed", "interrupted"


def _retryable(exc: DotdigitalError) -> DotdigitalError:
    """``exc`` as a retryable error (the batch is held and goes in a new call, instead of being skipped)."""
    if exc.retryable:
        return exc
    return DotdigitalError(exc.description, code=exc.code, status_code=exc.status_code, retryable=True)


@dataclass(frozen=True)
class Reserved:
    call_id: int
    program_id: int
    trigger_ids: tuple[int, ...]
    contact_ids: tuple[int, ...]


#: :meth:`EnrolmentBatcher._next_batch` when this worker no longer holds the account's lease
LOST = Reserved(-1, 0, (), ())


class EnrolmentBatcher:
    def __init__(self, engine: Engine, settings: Settings, clients, *, worker_id: str,
                 clock: Callable[[], datetime]):
        self.engine = engine
        self.settings = settings
        self.cfg = settings.programs
        self.clients = clients
        self.worker_id = worker_id
        self.clock = clock
        self._warned: dict[str, datetime] = {}
        self._held: set[str] = set()
        self.stats = {"calls": 0, "enrolled": 0, "faults": 0, "failed_calls": 0}

    def lease_seconds(self, account: str) -> float:
        """Longer than one enrolment call can take, so a live holder never loses its lease in the middle of one."""
        cfg = self.settings.accounts.get(account)
        return max(self.cfg.lease_seconds, (cfg.timeout_seconds if cfg is not None else 120.0) + 10.0)

    # -- the loop ------------------------------------------------------------------------------------------
    async def run_once(self) -> int:
        """One pass over every account with enrolment work; returns the enrolment calls made."""
        made = 0
        for account in await asyncio.to_thread(self._accounts_with_work):
            now = self.clock()
            if not await asyncio.to_thread(leases.acquire, self.engine, budget.lease_name(account), self.worker_id,
                                           self.lease_seconds(account), now):
                continue
            self._held.add(account)
            try:
                made += await self._run_account(account)
            except Exception:
                log.exception("enrolments of account %s failed; retrying shortly", account)
        return made

    async def stop(self) -> None:
        for account in sorted(self._held):
            await asyncio.to_thread(leases.release, self.engine, budget.lease_name(account), self.worker_id,
                                    self.clock())
        self._held.clear()

    def _accounts_with_work(self) -> list[str]:
        with self.engine.begin() as conn:
            waiting = sa.select(PT.c.account).where(PT.c.status == TriggerStatus.ENROLLING,
                                                    PT.c.enrolment_call_id.is_(None))
            open_calls = sa.select(EC.c.account).where(
                sa.or_(EC.c.status == CALLING, sa.and_(EC.c.enrolment_id.is_not(None), EC.c.finished_at.is_(None))))
            return sorted(set(conn.execute(waiting.union(open_calls)).scalars()))

    async def _run_account(self, account: str) -> int:
        client = self.clients.get(account)
        await self._recover_stale(account, client)
        await self._follow_up(account, client)
        made = 0
        for _ in range(self.cfg.enrolment_calls_per_hour + 1):
            await self._check_held_programs(account, client)
            reserved = await asyncio.to_thread(self._next_batch, account)
            if reserved is LOST:
                self._held.discard(account)
                log.warning("account %s: worker %s no longer holds the enrolment lease; it stops this pass and "
                            "leaves the rest to the new holder", account, self.worker_id)
                break
            if reserved is None:
                break
            if reserved.contact_ids:
                await self._call(account, client, reserved)
                made += 1
        return made

    # -- picking and reserving a batch ---------------------------------------------------------------------
    def _next_batch(self, account: str) -> Reserved | None:
        """Reserve the next batch (write its ``calling`` row and assign its triggers), or None when nothing may
        go now. A batch whose triggers all failed the last check is returned empty (look again)."""
        now = self.clock()
        size, wait = self.cfg.enrolment_batch_size, timedelta(seconds=self.cfg.batch_wait_seconds)
        with Session(self.engine) as session, session.begin():
            conn = session.connection()
            # Renew the lease, only while still its owner, in the transaction that counts and writes the call:
            # on PostgreSQL the lease row stays locked until commit, so two reservations never interleave.
            renewed = conn.execute(
                sa.update(leases.LT).where(leases.LT.c.name == budget.lease_name(account),
                                           leases.LT.c.owner == self.worker_id)
                .values(expires_at=now + timedelta(seconds=self.lease_seconds(account)), updated_at=now)).rowcount
            if not renewed:
                return LOST
            cursor = leases.cursor(conn, budget.lease_name(account))
            paused = budget.paused_until(cursor)
            used, _ = budget.calls_in_window(conn, account, now)
            remaining = self.cfg.enrolment_calls_per_hour - used
            groups = conn.execute(
                sa.select(PT.c.program_id, sa.func.count(), sa.func.min(PT.c.decided_at))
                .where(PT.c.account == account, PT.c.status == TriggerStatus.ENROLLING,
                       PT.c.enrolment_call_id.is_(None))
                .group_by(PT.c.program_id)).all()
            self._report_backlog(account, sum(n for _, n, _ in groups), max(remaining, 0), now)
            if remaining <= 0 or (paused is not None and paused > now):
                return None
            ready = []
            for program_id, count, oldest in groups:
                oldest = facts.aware(oldest) if oldest is not None else now
                if program_id is None or budget.program_retry_at(cursor, program_id) is not None:
                    continue  # held (not Active), or no program id (cannot happen for enrolling rows)
                if count >= size or now - oldest >= wait:
                    ready.append((count < size, oldest, program_id))
            if not ready:
                return None
            _, _, program_id = min(ready)  # full batches first, then the longest waiting
            return self._reserve(session, account, program_id, now)

    def _reserve(self, session: Session, account: str, program_id: int, now: datetime) -> Reserved:
        conn = session.connection()
        size = self.cfg.enrolment_batch_size
        query = (sa.select(PT.c.id, PT.c.store_key, PT.c.program_kind, PT.c.contact_id, PT.c.subject_type,
                           PT.c.subject_id, PT.c.subject_version, PT.c.step, PT.c.created_at,
                           PT.c.first_due_at)
                 .where(PT.c.account == account, PT.c.status == TriggerStatus.ENROLLING,
                        PT.c.enrolment_call_id.is_(None), PT.c.program_id == program_id)
                 .order_by(PT.c.decided_at, PT.c.id).limit(size))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # an order's cancellation waits for this, or this for it
        refs = [facts.TriggerRef(**row._mapping) for row in conn.execute(query)]
        batch = facts.load(conn, self.settings, refs, entries=False)
        keep: list[int] = []
        contacts: dict[int, None] = {}
        for ref in refs:
            decision = rules.presend_decision(facts.facts_for(ref, batch, self.settings, now))
            contact = batch.contacts.get(ref.contact_id)
            if decision is None and (contact is None or contact.dotdigital_contact_id is None):
                decision = rules.Decision.skip(rules.CONTACT_NOT_IN_DOTDIGITAL)
            if decision is not None and decision.action == rules.DEFER:
                # it waited into the quiet hours: back to pending, due when they end (decided again then)
                conn.execute(sa.update(PT).where(PT.c.id == ref.id).values(
                    status=TriggerStatus.PENDING, due_at=decision.until, reason=decision.reason,
                    lease_owner=None, lease_expires_at=None))
                log.info("trigger %s (%s, store %s): deferred to %s (%s) before its enrolment call", ref.id,
                         ref.program_kind, ref.store_key, decision.until.isoformat(), decision.reason)
                continue
            if decision is not None:
                status = TriggerStatus.CANCELLED if decision.action == rules.CANCEL else TriggerStatus.SKIPPED
                conn.execute(sa.update(PT).where(PT.c.id == ref.id).values(status=status, reason=decision.reason,
                                                                          decided_at=now))
                log.info("trigger %s (%s, store %s): %s %s before its enrolment call", ref.id, ref.program_kind,
                         ref.store_key, decision.action, decision.reason)
                continue
            keep.append(ref.id)
            contacts[int(contact.dotdigital_contact_id)] = None
        if not keep:
            return Reserved(0, program_id, (), ())
        call_id = conn.execute(sa.insert(EC).values(
            account=account, program_id=program_id, called_at=now, contact_count=len(contacts), status=CALLING,
        ).returning(EC.c.id)).scalar_one()
        conn.execute(sa.update(PT).where(PT.c.id.in_(keep)).values(enrolment_call_id=call_id))
        return Reserved(call_id, program_id, tuple(keep), tuple(contacts))

    def _report_backlog(self, account: str, waiting: int, calls_left: int, now: datetime) -> None:
        capacity = calls_left * self.cfg.enrolment_batch_size
        over = max(waiting - capacity, 0)
        program_backlog.set(over, {"account": account})
        if not over:
            return
        last = self._warned.get(account)
        if last is not None and now - last < WARN_EVERY:
            return
        self._warned[account] = now
        log.warning(
            "account %s: %d trigger(s) wait for an enrolment call, more than the %d call(s) left this hour can carry "
            "(Dotdigital allows %d enrolment calls an hour per account, %d contacts each); %d wait for the "
            "allowance to free up. The list_join strategy (a program that starts when the contact joins a list) has "
            "no such cap.", account, waiting, calls_left, self.cfg.enrolment_calls_per_hour,
            self.cfg.enrolment_batch_size, over)

    # -- the call ------------------------------------------------------------------------------------------
    async def _call(self, account: str, client, reserved: Reserved) -> None:
        try:
            enrolment = await client.enrol_contacts(reserved.program_id, list(reserved.contact_ids))
        except DotdigitalError as exc:
            if not (isinstance(exc, DotdigitalTransportError) or exc.code == INVALID_RESPONSE):
                if exc.code == CONTACT_NOT_FOUND:
                    await self._contact_not_found(account, client, reserved, exc)
                else:
                    await asyncio.to_thread(self._failed, account, reserved, exc)
                return
            # No (readable) answer: the enrolment may have been made. Look for it before sending these contacts
            # again; not found, the triggers are held and go in a new call.
            found = await self._find_enrolment(account, client, reserved.call_id, reserved.program_id,
                                                set(reserved.contact_ids))
            if found is not None:
                log.warning("account %s: enrolment call %s got no answer (%s), but Dotdigital has its enrolment %s",
                            account, reserved.call_id, exc, found.id)
                await asyncio.to_thread(self._succeeded, account, reserved.call_id, found.id, found.status)
            else:
                await asyncio.to_thread(self._failed, account, reserved, _retryable(exc))
            return
        except Exception as exc:  # a bug or a local failure: the triggers wait for another call
            log.exception("enrolment call %s (account %s, program %s) failed", reserved.call_id, account,
                          reserved.program_id)
            await asyncio.to_thread(self._failed, account, reserved,
                                    DotdigitalError(f"{type(exc).__name__}: {exc}", retryable=True))
            return
        await asyncio.to_thread(self._succeeded, account, reserved.call_id, enrolment.id, enrolment.status)

    async def _contact_not_found(self, account: str, client, reserved: Reserved, exc: DotdigitalError) -> None:
        """``ERROR_CONTACT_NOT_FOUND`` enrols nobody: find which contacts Dotdigital does not know (one
        ``GET /contacts/v3/contactId/{id}`` each, no enrolment spent), skip only their triggers
        (``contact_not_in_dotdigital``) and let the others go in a new call."""
        missing: set[int] = set()
        for contact_id in reserved.contact_ids:
            try:
                if await client.get_contact("contactId", str(contact_id)) is None:
                    missing.add(int(contact_id))
            except DotdigitalError as lookup:
                log.warning("account %s: could not look up contact %s after %s (%s); the batch is held", account,
                            contact_id, CONTACT_NOT_FOUND, lookup)
                await asyncio.to_thread(self._failed, account, reserved, _retryable(exc))
                return
        if not missing:  # Dotdigital knows them all: nothing to single out, keep the old rule
            await asyncio.to_thread(self._failed, account, reserved, exc)
            return
        await asyncio.to_thread(self._split_unknown_contacts, account, reserved, missing)

    def _split_unknown_contacts(self, account: str, reserved: Reserved, missing: set[int]) -> None:
        now = self.clock()
        self.stats["failed_calls"] += 1
        enrolment_calls.add(1, {"account": account, "outcome": CONTACT_NOT_FOUND})
        with self.engine.begin() as conn:
            conn.execute(sa.update(EC).where(EC.c.id == reserved.call_id)
                         .values(status=FAILED, error_code=CONTACT_NOT_FOUND))
            rows = conn.execute(
                sa.select(PT.c.id, facts.CT.c.dotdigital_contact_id).join(facts.CT, facts.CT.c.id == PT.c.contact_id)
                .where(PT.c.enrolment_call_id == reserved.call_id, PT.c.status == TriggerStatus.ENROLLING)).all()
            unknown = [r.id for r in rows if r.dotdigital_contact_id is not None
                       and int(r.dotdigital_contact_id) in missing]
            if unknown:
                conn.execute(sa.update(PT).where(PT.c.id.in_(unknown)).values(
                    status=TriggerStatus.SKIPPED, reason=rules.CONTACT_NOT_IN_DOTDIGITAL, decided_at=now))
            conn.execute(sa.update(PT).where(PT.c.enrolment_call_id == reserved.call_id,
                                             PT.c.status == TriggerStatus.ENROLLING).values(enrolment_call_id=None))
        log.warning("account %s: enrolment call %s refused with %s: contact(s) %s no longer exist in Dotdigital; "
                    "%d trigger(s) skipped (%s), %d go in a new call", account, reserved.call_id, CONTACT_NOT_FOUND,
                    sorted(missing), len(unknown), rules.CONTACT_NOT_IN_DOTDIGITAL, len(rows) - len(unknown))

    def _succeeded(self, account: str, call_id: int, enrolment_id: str, status: str) -> None:
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            conn = session.connection()
            conn.execute(sa.update(EC).where(EC.c.id == call_id).values(enrolment_id=enrolment_id, status=status))
            rows = conn.execute(sa.update(PT).where(PT.c.enrolment_call_id == call_id,
                                                    PT.c.status == TriggerStatus.ENROLLING)
                                .values(status=TriggerStatus.SENT, enrolment_id=enrolment_id, decided_at=now,
                                        reason=None)
                                .returning(PT.c.store_key, PT.c.program_kind, PT.c.contact_id, PT.c.subject_type,
                                           PT.c.subject_id, PT.c.subject_version, PT.c.step)).all()
            for row in rows:
                store = self.settings.stores.get(row.store_key)
                if store is not None:
                    schedule_next_step(session, store, kind=row.program_kind, contact_id=row.contact_id,
                                       subject_type=row.subject_type, subject_id=row.subject_id,
                                       version=row.subject_version, step=row.step, sent_at=now, now=now)
        self.stats["calls"] += 1
        self.stats["enrolled"] += len(rows)
        enrolment_calls.add(1, {"account": account, "outcome": "accepted"})
        log.info("enrolment call %s (account %s): %d trigger(s) enrolled, enrolment %s %s", call_id, account,
                 len(rows), enrolment_id, status)

    def _failed(self, account: str, reserved: Reserved, exc: DotdigitalError) -> None:
        now = self.clock()
        code = exc.code or (f"HTTP {exc.status_code}" if exc.status_code else type(exc).__name__)
        self.stats["failed_calls"] += 1
        enrolment_calls.add(1, {"account": account, "outcome": code})
        name = budget.lease_name(account)
        with self.engine.begin() as conn:
            conn.execute(sa.update(EC).where(EC.c.id == reserved.call_id).values(status=FAILED, error_code=code[:100]))
            triggers = sa.update(PT).where(PT.c.enrolment_call_id == reserved.call_id,
                                           PT.c.status == TriggerStatus.ENROLLING)
            cursor = leases.cursor(conn, name)
            if code == ALLOWANCE_EXCEEDED:
                until = budget.allowance_frees_at(conn, account, now)
                conn.execute(triggers.values(enrolment_call_id=None))
                leases.set_cursor(conn, name, budget.pause(cursor, until), now)
                log.warning("account %s: Dotdigital refused enrolment call %s with %s; %d trigger(s) held, enrolments "
                            "paused until %s", account, reserved.call_id, code, len(reserved.trigger_ids),
                            until.isoformat())
            elif code in PROGRAM_CODES:
                # held, not lost: the rows stay enrolling (retried once the program is Active) with the reason
                conn.execute(sa.update(PT).where(PT.c.program_id == reserved.program_id, PT.c.account == account,
                                                 PT.c.status == TriggerStatus.ENROLLING,
                                                 sa.or_(PT.c.enrolment_call_id.is_(None),
                                                        PT.c.enrolment_call_id == reserved.call_id))
                             .values(enrolment_call_id=None, reason=f"held: {code}"))
                cursor, news = budget.hold_program(cursor, reserved.program_id, code, now + PROGRAM_RETRY)
                leases.set_cursor(conn, name, cursor, now)
                if code == "ERROR_PROGRAM_NOT_FOUND":
                    what, fix = "was not found", "check the program id in the configuration"
                else:
                    what, fix = "is not active", "activate it in Dotdigital"
                (log.error if news else log.info)(
                    "account %s: program %s %s (%s): its triggers are held (not lost) and the program is looked "
                    "at again every %d minutes; %s", account, reserved.program_id, what, code,
                    PROGRAM_RETRY.total_seconds() // 60, fix)
            elif is_auth_failure(exc):
                # the account's credentials or permissions, which an operator fixes: held, not skipped
                conn.execute(triggers.values(enrolment_call_id=None))
                leases.set_cursor(conn, name, budget.pause(cursor, now + AUTH_PAUSE), now)
                log.error("account %s: Dotdigital refused enrolment call %s with HTTP %s; %d trigger(s) held, "
                          "enrolments paused for %ds. %s", account, reserved.call_id, exc.status_code,
                          len(reserved.trigger_ids), AUTH_PAUSE.total_seconds(),
                          what_to_fix(exc.status_code, account))
            elif exc.retryable:
                # a 5xx or no answer passes soon; a retryable 4xx (ERROR_UNKNOWN) is tried less often, since every
                # call spends one of the hour's enrolment calls (held triggers still age out: max_age_hours)
                pause = RETRY_PAUSE if exc.status_code is None or exc.status_code >= 500 else PROGRAM_RETRY
                conn.execute(triggers.values(enrolment_call_id=None))
                leases.set_cursor(conn, name, budget.pause(cursor, now + pause), now)
                log.warning("account %s: enrolment call %s failed (%s: %s); %d trigger(s) held, retrying in %ds",
                            account, reserved.call_id, code, exc, len(reserved.trigger_ids),
                            pause.total_seconds())
            else:
                conn.execute(triggers.values(status=TriggerStatus.SKIPPED, reason=f"enrolment_failed: {code}"[:500],
                                             decided_at=now))
                log.error("account %s: enrolment call %s for program %s failed permanently (%s: %s); %d trigger(s) "
                          "skipped", account, reserved.call_id, reserved.program_id, code, exc,
                          len(reserved.trigger_ids))

    async def _check_held_programs(self, account: str, client) -> None:
        """Look again at the held programs whose retry time came: Active again -> their triggers go."""
        now = self.clock()
        with self.engine.begin() as conn:
            cursor = leases.cursor(conn, budget.lease_name(account))
        due = [int(pid) for pid, state in (cursor.get("programs") or {}).items()
               if (budget.program_retry_at(cursor, int(pid)) or now) <= now]
        for program_id in due:
            try:
                program = await client.get_program(program_id)
            except DotdigitalError as exc:
                log.warning("account %s: could not read program %s (%s)", account, program_id, exc)
                program = None
                active = False
            else:
                active = program is not None and program.active
            await asyncio.to_thread(self._program_checked, account, program_id, active)

    def _program_checked(self, account: str, program_id: int, active: bool) -> None:
        now = self.clock()
        name = budget.lease_name(account)
        with self.engine.begin() as conn:
            cursor = leases.cursor(conn, name)
            state = budget.program_state(cursor, program_id) or {}
            if active:
                cursor, _ = budget.release_program(cursor, program_id)
                log.info("account %s: program %s is Active again; its held triggers go out", account, program_id)
            else:
                cursor, _ = budget.hold_program(cursor, program_id, state.get("code") or PROGRAM_CODES[0],
                                                now + PROGRAM_RETRY)
            leases.set_cursor(conn, name, cursor, now)

    # -- stale calls and outcomes --------------------------------------------------------------------------
    async def _recover_stale(self, account: str, client) -> None:
        now = self.clock()
        stale_before = now - timedelta(seconds=self.lease_seconds(account))
        with self.engine.begin() as conn:
            calls = conn.execute(sa.select(EC.c.id, EC.c.program_id).where(
                EC.c.account == account, EC.c.status == CALLING, EC.c.called_at < stale_before)).all()
            members = {call.id: conn.execute(
                sa.select(PT.c.id, facts.CT.c.dotdigital_contact_id).join(facts.CT, facts.CT.c.id == PT.c.contact_id)
                .where(PT.c.enrolment_call_id == call.id, PT.c.status == TriggerStatus.ENROLLING)).all()
                for call in calls}
        for call in calls:
            contact_ids = {r.dotdigital_contact_id for r in members[call.id] if r.dotdigital_contact_id}
            found = await self._find_enrolment(account, client, call.id, call.program_id, contact_ids)
            if found is not None:
                log.warning("account %s: enrolment call %s was interrupted; Dotdigital has its enrolment %s", account,
                            call.id, found.id)
                await asyncio.to_thread(self._succeeded, account, call.id, found.id, found.status)
                continue
            with self.engine.begin() as conn:
                conn.execute(sa.update(EC).where(EC.c.id == call.id).values(status=INTERRUPTED))
                conn.execute(sa.update(PT).where(PT.c.enrolment_call_id == call.id,
                                                 PT.c.status == TriggerStatus.ENROLLING)
                             .values(enrolment_call_id=None))
            log.warning("account %s: enrolment call %s was interrupted and Dotdigital has no such enrolment; its %d "
                        "trigger(s) go in a new call", account, call.id, len(members[call.id]))

    async def _find_enrolment(self, account: str, client, call_id: int, program_id: int, contact_ids: set[int]):
        """Dotdigital's enrolment made by call ``call_id`` whose answer was lost, or None: one of ``program_id`` for
        exactly ``contact_ids`` that no call has adopted yet. Dotdigital may list enrolments without their
        contacts (null in the Programs spec's own example): when no enrolment of the listing has any, the one
        enrolment of the program created within :data:`FIND_WINDOW` of the call, if it is the only such one (two
        or more: not adopted, the contacts go again; Dotdigital reports the contacts already in the program as
        ``AlreadyInProgram`` faults)."""
        if not contact_ids:
            return None
        with self.engine.begin() as conn:
            known = set(conn.execute(sa.select(EC.c.enrolment_id).where(EC.c.account == account,
                                                                        EC.c.enrolment_id.is_not(None))).scalars())
            called_at = conn.execute(sa.select(EC.c.called_at).where(EC.c.id == call_id)).scalar()
        unechoed = []
        echoes = False  # whether Dotdigital lists the contacts of any enrolment (then an empty list means none)
        for status in ("Processing", "Finished"):
            try:
                enrolments = await client.list_enrolments(status)
            except DotdigitalError as exc:
                log.warning("account %s: could not list enrolments (%s)", account, exc)
                return None
            for enrolment in enrolments:
                echoes = echoes or bool(enrolment.contacts or enrolment.address_books)
                if enrolment.program_id != program_id or enrolment.id in known:
                    continue
                if set(enrolment.contacts) == contact_ids:
                    return enrolment
                if _created_near(enrolment.date_created, called_at):
                    unechoed.append(enrolment)
        if echoes:  # this account's listings carry their contacts: only an exact match is this call's
            return None
        if len(unechoed) > 1:
            log.warning("account %s: %d enrolments of program %s without their contacts were made around call %s; "
                        "none is adopted, its contacts go again", account, len(unechoed), program_id, call_id)
        return unechoed[0] if len(unechoed) == 1 else None

    async def _follow_up(self, account: str, client) -> None:
        self.stats["faults"] += await outcomes.follow_up(self.engine, self.clock, account, client)


def _created_near(date_created: str | None, called_at: datetime | None) -> bool:
    """Whether an enrolment's ``dateCreated`` ("2020-01-01 09:40:18.527000+00:00", UTC when it has no offset)
    lies within :data:`FIND_WINDOW` of ``called_at``."""
    if not date_created or called_at is None:
        return False
    try:
        created = datetime.fromisoformat(date_created.strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    called = called_at if called_at.tzinfo else called_at.replace(tzinfo=timezone.utc)
    return called - FIND_WINDOW[0] <= created <= called + FIND_WINDOW[1]
