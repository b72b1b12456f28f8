"""Read-side queries over program triggers: what is pending and what was decided for a contact, and a summary
per store or account. Pure reads (SQLAlchemy Core, nothing is written).

Used by the support tool (``ctdd triggers list|summary``, ``ctdd.cli.triggers_cmd``) and by the operator's gRPC
``AdminService`` (``ctdd.api.admin``). The rows are written by the trigger engine (``ctdd.programs.scheduling``
and the processor); this module only reads ``program_trigger``, ``enrolment_call``, ``contact`` and
``contact_identifier``.

A contact is found as ``SyncContact`` resolves it (``ctdd.domain.identity``): identifiers are stored
normalised and in clear within their Dotdigital account (an email trimmed and lower-cased, a mobile number in
E.164, a customer id as ``<commercetools project>/<customer id>``), so a lookup normalises the given value the
same way and matches it exactly. Nothing here logs an identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.db.engine import utcnow
from ctdd.db.models import Contact, ContactIdentifier, EnrolmentCall, ProgramTrigger, TriggerStatus
from ctdd.domain.identity import InvalidIdentifier, customer_key, is_junk, normalise_email, normalise_mobile

if TYPE_CHECKING:
    from ctdd.config import Settings

_PT = ProgramTrigger.__table__
_EC = EnrolmentCall.__table__
_C = Contact.__table__
_CI = ContactIdentifier.__table__

#: statuses of triggers still to be decided (listed first, soonest due first)
OPEN_STATUSES = (TriggerStatus.PENDING, TriggerStatus.CLAIMED, TriggerStatus.ENROLLING)
#: every status the trigger engine writes (the ``status`` filter accepts these)
KNOWN_STATUSES = tuple(
    value for name, value in vars(TriggerStatus).items() if name.isupper() and isinstance(value, str)
)
#: Dotdigital's enrolment allowance per account and hour, when no settings say otherwise
DEFAULT_ENROLMENT_CALLS_PER_HOUR = 20
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class InvalidQuery(ValueError):
    """A selector or filter that cannot be used. ``field`` names the argument at fault (``email``,
    ``customer_id``, ``store_key``, ``mobile``, ``contact_id``, ``statuses``, ``limit``), or is None when no
    selector (or more than one) was given. The message is safe to show: it holds no identifier value."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


class AmbiguousContact(InvalidQuery):
    """An email address or mobile number belongs to contacts of several Dotdigital accounts: give the store."""

    def __init__(self, contact_ids: list[int], accounts: list[str]):
        super().__init__(
            "store_key",
            f"matches {len(contact_ids)} contacts in accounts {', '.join(accounts)}: give the store to choose one",
        )
        self.contact_ids = contact_ids
        self.accounts = accounts


@dataclass(frozen=True)
class TriggerView:
    """One ``program_trigger`` row as the support tool and the API show it (times are aware UTC)."""

    id: int
    contact_id: int
    store_key: str
    account: str
    program_kind: str
    program_id: int | None
    subject_type: str
    subject_id: str
    subject_version: int
    step: int
    status: str
    due_at: datetime
    decided_at: datetime | None
    reason: str | None
    enrolment_id: str | None
    attempts: int
    created_at: datetime

    @property
    def open(self) -> bool:
        """Still to be decided (pending, claimed or enrolling)."""
        return self.status in OPEN_STATUSES

    @property
    def shown_at(self) -> datetime:
        """The time that matters: when an open trigger falls due, when a decided one was decided."""
        return self.due_at if self.open or self.decided_at is None else self.decided_at


@dataclass(frozen=True)
class EnrolmentBudget:
    account: str
    calls_last_hour: int
    calls_per_hour: int


@dataclass(frozen=True)
class TriggerSummary:
    """Counts of triggers (of a store, a contact, or everything) and the enrolment budget of the accounts."""

    #: status -> number of triggers (statuses without triggers are left out), in lifecycle order
    by_status: dict[str, int]
    #: skipped triggers per reason code (the reason up to its first ":"), most frequent first
    skipped_by_reason: dict[str, int]
    #: pending triggers whose due time has passed
    pending_due: int
    enrolment_budgets: list[EnrolmentBudget] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def reason_code(reason: str | None) -> str:
    """The code of a trigger's reason: its text up to the first ``:`` (``"ordered_since: order 7"`` ->
    ``"ordered_since"``); ``"-"`` when there is none."""
    code = (reason or "").split(":", 1)[0].strip()
    return code or "-"


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (stored as UTC): make every time aware UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _store(settings: "Settings | None", store_key: str):
    store = settings.store(store_key) if settings is not None else None
    if store is None:
        known = sorted(settings.stores) if settings is not None else []
        raise InvalidQuery("store_key", f"unknown store {store_key!r} (known: {', '.join(known) or 'none'})")
    return store


# -- finding the contact ------------------------------------------------------------------------------------


def find_contact(
    engine: Engine, *, email: str | None = None, customer_id: str | None = None, store_key: str | None = None,
    mobile: str | None = None, contact_id: int | str | None = None, settings: "Settings | None" = None,
) -> int | None:
    """The id of the contact with exactly one of ``email``, ``customer_id`` (needs ``store_key``), ``mobile``
    or ``contact_id``; None when no contact has it.

    ``store_key`` (looked up in ``settings``) limits the search to the store's Dotdigital account; without it
    an email or mobile number is looked up in every account, and :class:`AmbiguousContact` is raised when
    contacts of several accounts have it. Raises :class:`InvalidQuery` for a malformed or missing selector.
    """
    given = {name: value for name, value in (("email", email), ("customer_id", customer_id), ("mobile", mobile),
                                             ("contact_id", contact_id)) if value is not None}
    if not given:
        raise InvalidQuery(None, "give the contact: an email, a customer id (with its store), a mobile number "
                                 "or a contact id")
    if len(given) > 1:
        raise InvalidQuery(None, f"give one contact selector only (got {', '.join(sorted(given))})")
    store = _store(settings, store_key) if store_key else None
    account = store.account if store is not None else None

    if contact_id is not None:
        # ASCII digits only (int() also takes "1_0" and other scripts' digits), within the column's 64 bits
        text = str(contact_id).strip()
        if not re.fullmatch(r"[0-9]{1,19}", text) or not 0 < int(text) < 2 ** 63:
            raise InvalidQuery("contact_id", "must be a contact id (a positive whole number)")
        wanted = int(text)
        stmt = sa.select(_C.c.id).where(_C.c.id == wanted)
        if account is not None:
            stmt = stmt.where(_C.c.account == account)
        with engine.connect() as conn:
            return conn.execute(stmt).scalar()

    if customer_id is not None:
        if store is None:
            raise InvalidQuery("store_key", "required with a customer id: customer ids are scoped to the "
                                            "store's commercetools project")
        if not customer_id.strip() or is_junk(customer_id):
            raise InvalidQuery("customer_id", "not a commercetools customer id")
        kind, value = "customer_id", customer_key(store.commercetools_project, customer_id.strip())
    elif email is not None:
        try:
            kind, value = "email", normalise_email(email)
        except InvalidIdentifier as exc:
            raise InvalidQuery("email", str(exc)) from None
    else:
        try:
            kind, value = "mobile_number", normalise_mobile(mobile or "")
        except InvalidIdentifier as exc:
            raise InvalidQuery("mobile", str(exc)) from None

    stmt = sa.select(_CI.c.contact_id, _CI.c.account).where(_CI.c.kind == kind, _CI.c.value == value)
    if account is not None:
        stmt = stmt.where(_CI.c.account == account)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(_CI.c.contact_id)).all()
    if not rows:
        return None
    if len(rows) > 1:
        raise AmbiguousContact([r.contact_id for r in rows], sorted({r.account for r in rows}))
    return rows[0].contact_id


def contact_account(engine: Engine, contact_id: int) -> str | None:
    """The Dotdigital account of a contact (None: no such contact)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(_C.c.account).where(_C.c.id == contact_id)).scalar()


# -- a contact's triggers -----------------------------------------------------------------------------------

_COLUMNS = (
    _PT.c.id, _PT.c.contact_id, _PT.c.store_key, _PT.c.account, _PT.c.program_kind, _PT.c.program_id,
    _PT.c.subject_type, _PT.c.subject_id, _PT.c.subject_version, _PT.c.step, _PT.c.status, _PT.c.due_at,
    _PT.c.decided_at, _PT.c.reason, _PT.c.enrolment_id, _PT.c.attempts, _PT.c.created_at,
)


def _check_statuses(statuses: Iterable[str] | None) -> tuple[str, ...] | None:
    if statuses is None:
        return None
    wanted = tuple(dict.fromkeys(statuses))
    unknown = [s for s in wanted if s not in KNOWN_STATUSES]
    if unknown:
        raise InvalidQuery("statuses", f"unknown status {unknown[0]!r} (one of {', '.join(KNOWN_STATUSES)})")
    return wanted or None


def _view(row) -> TriggerView:
    return TriggerView(
        id=row.id, contact_id=row.contact_id, store_key=row.store_key, account=row.account,
        program_kind=row.program_kind, program_id=row.program_id, subject_type=row.subject_type,
        subject_id=row.subject_id, subject_version=row.subject_version, step=row.step, status=row.status,
        due_at=_utc(row.due_at), decided_at=_utc(row.decided_at), reason=row.reason,
        enrolment_id=row.enrolment_id, attempts=row.attempts, created_at=_utc(row.created_at),
    )


def list_triggers(engine: Engine, contact_id: int, *, statuses: Iterable[str] | None = None,
                  limit: int = DEFAULT_LIMIT, store_key: str | None = None) -> list[TriggerView]:
    """The contact's triggers: those still to be decided first (soonest due first), then the decided ones
    (most recently decided first), at most ``limit`` (1..1000), optionally only with one of ``statuses``
    and only of ``store_key``."""
    wanted = _check_statuses(statuses)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
    base = sa.select(*_COLUMNS).where(_PT.c.contact_id == contact_id)
    if store_key is not None:
        base = base.where(_PT.c.store_key == store_key)
    if wanted is not None:
        base = base.where(_PT.c.status.in_(wanted))
    open_rows = (base.where(_PT.c.status.in_(OPEN_STATUSES))
                 .order_by(_PT.c.due_at, _PT.c.id).limit(limit))
    decided_rows = (base.where(_PT.c.status.not_in(OPEN_STATUSES))
                    .order_by(sa.func.coalesce(_PT.c.decided_at, _PT.c.created_at).desc(), _PT.c.id.desc()))
    with engine.connect() as conn:
        views = [_view(r) for r in conn.execute(open_rows)]
        if len(views) < limit:
            views += [_view(r) for r in conn.execute(decided_rows.limit(limit - len(views)))]
    return views


# -- summary ------------------------------------------------------------------------------------------------


def _status_order(status: str) -> tuple[int, str]:
    return (KNOWN_STATUSES.index(status), status) if status in KNOWN_STATUSES else (len(KNOWN_STATUSES), status)


def trigger_summary(engine: Engine, store_key: str | None = None, *, contact_id: int | None = None,
                    settings: "Settings | None" = None, now: datetime | None = None) -> TriggerSummary:
    """Counts of triggers by status and of skipped ones by reason code, the pending triggers already due, and
    the enrolment calls each account used in the last hour (of ``[programs] enrolment_calls_per_hour``, 20).

    Scope: the triggers of ``store_key`` (its account's budget), of ``contact_id`` (its account's budget), or
    all triggers (the budget of every configured account and of every account with recent calls).
    """
    now = now or utcnow()
    where = []
    if store_key is not None:
        where.append(_PT.c.store_key == store_key)
    if contact_id is not None:
        where.append(_PT.c.contact_id == contact_id)
    per_hour = (settings.programs.enrolment_calls_per_hour if settings is not None
                else DEFAULT_ENROLMENT_CALLS_PER_HOUR)
    with engine.connect() as conn:
        by_status = dict(conn.execute(
            sa.select(_PT.c.status, sa.func.count()).where(*where).group_by(_PT.c.status)
        ).all())
        reasons: dict[str, int] = {}
        for reason, count in conn.execute(
            sa.select(_PT.c.reason, sa.func.count())
            .where(*where, _PT.c.status == TriggerStatus.SKIPPED).group_by(_PT.c.reason)
        ):
            code = reason_code(reason)
            reasons[code] = reasons.get(code, 0) + count
        pending_due = conn.execute(
            sa.select(sa.func.count()).select_from(_PT)
            .where(*where, _PT.c.status == TriggerStatus.PENDING, _PT.c.due_at <= now)
        ).scalar_one()

        if contact_id is not None:
            accounts = set(filter(None, [conn.execute(sa.select(_C.c.account).where(_C.c.id == contact_id)).scalar()]))
        elif store_key is not None:
            store = settings.store(store_key) if settings is not None else None
            accounts = {store.account} if store is not None else set(conn.execute(
                sa.select(_PT.c.account).where(_PT.c.store_key == store_key).distinct()
            ).scalars())
        else:
            accounts = set(settings.accounts) if settings is not None else set()
            accounts |= set(conn.execute(
                sa.select(_EC.c.account).where(_EC.c.called_at > now - timedelta(hours=1)).distinct()
            ).scalars())
        used = dict(conn.execute(
            sa.select(_EC.c.account, sa.func.count())
            .where(_EC.c.account.in_(sorted(accounts)), _EC.c.called_at > now - timedelta(hours=1))
            .group_by(_EC.c.account)
        ).all()) if accounts else {}
    return TriggerSummary(
        by_status={s: by_status[s] for s in sorted(by_status, key=_status_order)},
        skipped_by_reason=dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
        pending_due=pending_due,
        enrolment_budgets=[EnrolmentBudget(a, used.get(a, 0), per_hour) for a in sorted(accounts)],
    )
