"""Reading what became of enrolments: Dotdigital enrols asynchronously, so a call's enrolment is read again
until it is ``Finished``, then its ``report-faults`` (the contacts it did not enrol, with Dotdigital's reason),
and each fault is logged against its trigger. The trigger stays ``sent`` (the program was started for the
others); its reason becomes ``enrolment_fault: <Reason>``, e.g. ``AlreadyInProgram`` or ``Unsubcribed`` (sic).
The faults are kept on the ``enrolment_call`` row without personal data (contact id, reason, trigger id).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.db.models import Contact, EnrolmentCall, ProgramTrigger
from ctdd.dotdigital.errors import DotdigitalError

log = logging.getLogger(__name__)

PT = ProgramTrigger.__table__
EC = EnrolmentCall.__table__
CT = Contact.__table__

FINISHED = "Finished"
#: the Programs spec's third enrolment status, which never becomes Finished
NOT_AVAILABLE = "NotAvailableInThisVersion"
#: an enrolment's outcome is first read this long after the call
FOLLOW_UP_AFTER = timedelta(seconds=2)
#: enrolments read per account and pass
FOLLOW_UP_LIMIT = 50


async def follow_up(engine: Engine, clock: Callable[[], datetime], account: str, client) -> int:
    """Read the open enrolments of ``account``; returns the faults recorded."""
    now = clock()
    with engine.begin() as conn:
        calls = conn.execute(sa.select(EC.c.id, EC.c.enrolment_id).where(
            EC.c.account == account, EC.c.enrolment_id.is_not(None), EC.c.finished_at.is_(None),
            EC.c.called_at <= now - FOLLOW_UP_AFTER).order_by(EC.c.id).limit(FOLLOW_UP_LIMIT)).all()
    recorded = 0
    for call in calls:
        try:
            enrolment = await client.get_enrolment(call.enrolment_id)
            if enrolment.status == NOT_AVAILABLE:  # no outcome to wait for: not read again on every pass
                log.warning("account %s: enrolment %s of call %s is %s; its outcome stays unknown", account,
                            call.enrolment_id, call.id, NOT_AVAILABLE)
                await asyncio.to_thread(finish, engine, clock, account, call.id, [], NOT_AVAILABLE)
                continue
            if not enrolment.finished:
                await asyncio.to_thread(_set_status, engine, call.id, enrolment.status)
                continue
            faults = await client.enrolment_faults(call.enrolment_id)
        except DotdigitalError as exc:
            if not exc.retryable:
                log.warning("account %s: enrolment %s of call %s cannot be read (%s); its outcome stays unknown",
                            account, call.enrolment_id, call.id, exc)
                await asyncio.to_thread(finish, engine, clock, account, call.id, [], f"unreadable: {exc.code}")
            continue
        recorded += await asyncio.to_thread(finish, engine, clock, account, call.id, faults, FINISHED)
    return recorded


def _set_status(engine: Engine, call_id: int, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(EC).where(EC.c.id == call_id).values(status=status[:40]))


def finish(engine: Engine, clock: Callable[[], datetime], account: str, call_id: int, faults: list,
           status: str) -> int:
    """Record a finished enrolment and its faults (``ctdd.dotdigital.client.EnrolmentFault``); returns how many."""
    now = clock()
    with engine.begin() as conn:
        members = conn.execute(
            sa.select(PT.c.id, PT.c.store_key, PT.c.program_kind, PT.c.contact_id, CT.c.dotdigital_contact_id,
                      CT.c.email)
            .join(CT, CT.c.id == PT.c.contact_id).where(PT.c.enrolment_call_id == call_id)).all()
        by_dd = {m.dotdigital_contact_id: m for m in members if m.dotdigital_contact_id is not None}
        by_email = {(m.email or "").casefold(): m for m in members if m.email}
        stored = []
        for fault in faults:
            member = by_dd.get(fault.contact_id) or by_email.get((fault.email or "").casefold())
            stored.append({"contact_id": fault.contact_id, "reason": fault.reason,
                           "trigger_id": member.id if member is not None else None})
            if member is None:
                log.warning("account %s: enrolment call %s: fault %s for a contact not in the call", account,
                            call_id, fault.reason)
                continue
            conn.execute(sa.update(PT).where(PT.c.enrolment_call_id == call_id, PT.c.contact_id == member.contact_id)
                         .values(reason=f"enrolment_fault: {fault.reason}"[:500]))
            log.warning("trigger %s (%s, store %s, contact %s): Dotdigital did not enrol the contact: %s", member.id,
                        member.program_kind, member.store_key, member.contact_id, fault.reason)
        conn.execute(sa.update(EC).where(EC.c.id == call_id).values(status=status[:40], finished_at=now,
                                                                    faults=stored or None))
    return len(faults)
