"""Recording the decisions on claimed triggers, in one transaction per batch.

- ``send`` with the enrolment strategy: the trigger becomes ``enrolling`` (its program id set) and waits for
  the account's enrolment batcher (``ctdd.programs.enrolment``);
- ``send`` with the list-join strategy: the trigger is ``sent`` and the list join is queued in the contact's
  outbox partition (``ctdd.programs.list_join``), in the same transaction; the next step of a series is
  written;
- ``skip`` / ``cancel``: the status and reason; ``defer``: still ``pending``, with the new due time and reason.

Every write is conditional on the claim (``status = 'claimed' AND lease_owner = <me>``): a trigger cancelled
by its subject meanwhile, or taken over after the lease expired, is left as it is. Verdicts that write the same
values (every send to one program, every skip with one reason ...) go in one ``UPDATE ... WHERE id IN (...)
RETURNING id``: one statement per kind of decision rather than one per trigger (a batch of 500 sends had
spent three quarters of its time building and running 500 UPDATEs).

The re-trigger window is checked once more here, under a lock of the contact rows (PostgreSQL ``FOR
UPDATE``; SQLite serialises writers anyway), so two triggers of one contact decided at once, in one batch or
by two processors, never both enter the program within its window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.config import Settings
from ctdd.db.models import Contact, ProgramTrigger, TriggerStatus
from ctdd.domain import programs as rules
from ctdd.domain.programs import Decision
from ctdd.programs import facts as facts_mod
from ctdd.programs.list_join import enqueue_list_join
from ctdd.programs.scheduling import schedule_next_step
from ctdd.programs.triggers import ClaimedTrigger

log = logging.getLogger(__name__)

PT = ProgramTrigger.__table__
CT = Contact.__table__


@dataclass(frozen=True)
class Verdict:
    trigger: ClaimedTrigger
    decision: Decision
    #: send: the Dotdigital program (enrolment) or the list to join (list join)
    program_id: int | None = None
    strategy: str = "enrolment"
    list_id: int | None = None


#: trigger ids per UPDATE when a decision is written for many triggers at once
_IDS_PER_UPDATE = 500


def _update(v: Verdict, now: datetime) -> tuple[tuple, dict]:
    """The values a verdict writes on its trigger row, and a key equal for verdicts that write the same values."""
    d = v.decision
    values: dict = {"lease_owner": None, "lease_expires_at": None}
    if d.action == rules.SEND:
        key: tuple = (d.action, v.strategy, v.program_id, v.list_id)
        values.update(status=TriggerStatus.ENROLLING if v.strategy == "enrolment" else TriggerStatus.SENT,
                      reason=None if v.strategy == "enrolment" else f"list_join: {v.list_id}",
                      decided_at=now, program_id=v.program_id)
    elif d.action == rules.DEFER:
        key = (d.action, d.until, d.reason)
        values.update(status=TriggerStatus.PENDING, due_at=d.until, reason=d.reason, attempts=PT.c.attempts + 1)
    else:
        key = (d.action, d.reason)
        values.update(status=TriggerStatus.SKIPPED if d.action == rules.SKIP else TriggerStatus.CANCELLED,
                      reason=d.reason, decided_at=now)
    return key, values


def _write(conn, verdicts: list[Verdict], *, worker: str, now: datetime) -> set[int]:
    """Write the verdicts, one ``UPDATE ... WHERE id IN (...)`` per distinct set of values (every send to one
    program, every skip with one reason ...), each conditional on the claim; the ids of the rows written."""
    groups: dict[tuple, tuple[dict, list[int]]] = {}
    for v in verdicts:
        key, values = _update(v, now)
        groups.setdefault(key, (values, []))[1].append(v.trigger.id)
    written: set[int] = set()
    for values, ids in groups.values():
        for i in range(0, len(ids), _IDS_PER_UPDATE):
            chunk = ids[i:i + _IDS_PER_UPDATE]
            written.update(conn.execute(
                sa.update(PT).where(PT.c.id.in_(chunk), PT.c.status == TriggerStatus.CLAIMED,
                                    PT.c.lease_owner == worker).values(**values).returning(PT.c.id)).scalars())
    return written


def record(engine: Engine, settings: Settings, verdicts: list[Verdict], *, worker: str, now: datetime) -> list[Verdict]:
    """Write every verdict; returns those recorded (the others lost their claim), with the window re-check
    applied (a send may have become ``skip: within_retrigger_window``)."""
    recorded: list[Verdict] = []
    with Session(engine) as session, session.begin():
        conn = session.connection()
        verdicts = _recheck_window(conn, settings, verdicts, now)
        written = _write(conn, verdicts, worker=worker, now=now)
        for v in verdicts:
            t, d = v.trigger, v.decision
            if t.id not in written:
                log.info("trigger %s was cancelled or taken over before its decision (%s) was recorded", t.id,
                         d.action)
                continue
            recorded.append(v)
            if d.action == rules.SEND and v.strategy == "list_join":
                store = settings.stores[t.store_key]
                enqueue_list_join(session, store, t, v.list_id, now=now)
                schedule_next_step(session, store, kind=t.program_kind, contact_id=t.contact_id,
                                   subject_type=t.subject_type, subject_id=t.subject_id, version=t.subject_version,
                                   step=t.step, sent_at=now, now=now)
    return recorded


def _recheck_window(conn, settings: Settings, verdicts: list[Verdict], now: datetime) -> list[Verdict]:
    sends = [v for v in verdicts if v.decision.action == rules.SEND and v.trigger.step == 1
             and _window_hours(settings, v.trigger) > 0]
    if not sends:
        return verdicts
    contact_ids = sorted({v.trigger.contact_id for v in sends})
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(CT.c.id).where(CT.c.id.in_(contact_ids)).order_by(CT.c.id).with_for_update())
    refs = [facts_mod.TriggerRef(t.id, t.store_key, t.program_kind, t.contact_id, t.subject_type, t.subject_id,
                                 t.subject_version, t.step, t.created_at) for t in (v.trigger for v in sends)]
    entries = facts_mod.last_entries(conn, refs)
    send_ids = {v.trigger.id for v in sends}
    out = []
    for v in verdicts:
        t = v.trigger
        if t.id in send_ids:
            key = (t.store_key, t.program_kind, t.contact_id)
            if rules.within_window(entries.get(key), now, _window_hours(settings, t)):
                v = Verdict(t, Decision.skip(rules.WITHIN_RETRIGGER_WINDOW))
            else:
                entries[key] = now
        out.append(v)
    return out


def _window_hours(settings: Settings, t: ClaimedTrigger) -> float:
    store = settings.stores.get(t.store_key)
    program = store.programs.get(t.program_kind) if store is not None else None
    return program.retrigger_window_hours if program is not None else 0.0
