"""The durable enrolment budget of a Dotdigital account: 20 enrolment calls per rolling hour, across programs.

Every call is an ``enrolment_call`` row written *before* the HTTP call (status ``calling``), so the count of
rows of the last hour is what the account spent, whichever process made the calls, and a crash in the
middle of a call cannot make the budget forget it. Failed calls count too: Dotdigital may have counted them.

The account's pauses live in the cursor of its batcher lease (``enrol:<account>``): ``paused_until`` (after
``ERROR_ENROLMENT_ALLOWANCE_EXCEEDED`` or a retryable failure) and ``programs`` (a program that is not
Active: when to look again, and whether its error was logged).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ctdd.db.models import EnrolmentCall

EC = EnrolmentCall.__table__
WINDOW = timedelta(hours=1)


def lease_name(account: str) -> str:
    return f"enrol:{account}"


def calls_in_window(conn: Connection, account: str, now: datetime) -> tuple[int, datetime | None]:
    """How many enrolment calls the account made in the hour before ``now``, and the oldest of them."""
    count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(EC.c.called_at)).where(
        EC.c.account == account, EC.c.called_at > now - WINDOW)).one()
    if isinstance(oldest, str):
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=timezone.utc)
    return int(count or 0), oldest


def allowance_frees_at(conn: Connection, account: str, now: datetime) -> datetime:
    """When the next call is allowed after the allowance ran out: an hour after the oldest call of the window."""
    _, oldest = calls_in_window(conn, account, now)
    return (oldest or now) + WINDOW


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def paused_until(cursor: dict) -> datetime | None:
    return _time(cursor.get("paused_until"))


def pause(cursor: dict, until: datetime) -> dict:
    current = paused_until(cursor)
    if current is None or until > current:
        cursor = {**cursor, "paused_until": until.isoformat()}
    return cursor


def program_state(cursor: dict, program_id: int) -> dict | None:
    return (cursor.get("programs") or {}).get(str(program_id))


def program_retry_at(cursor: dict, program_id: int) -> datetime | None:
    state = program_state(cursor, program_id)
    return _time(state.get("retry_at")) if state else None


def hold_program(cursor: dict, program_id: int, code: str, retry_at: datetime) -> tuple[dict, bool]:
    """Hold a program's triggers until ``retry_at``; returns the cursor and whether this is news (log it)."""
    programs = dict(cursor.get("programs") or {})
    before = programs.get(str(program_id))
    news = before is None or before.get("code") != code
    programs[str(program_id)] = {"code": code, "retry_at": retry_at.isoformat(),
                                 "since": (before or {}).get("since") or retry_at.isoformat()}
    return {**cursor, "programs": programs}, news


def release_program(cursor: dict, program_id: int) -> tuple[dict, bool]:
    programs = dict(cursor.get("programs") or {})
    was = programs.pop(str(program_id), None)
    return {**cursor, "programs": programs}, was is not None
