"""The operator's view of everything that failed: typed references, filters, the list and one failure's detail.

Three kinds of failure, each named by a typed reference (:class:`Ref`):

* ``outbox:<id>``: an outbox message that is ``dead`` (a permanent Dotdigital error, or it gave up) or
  ``parked`` (held back, with the rest of its partition, until someone acts or its account works again);
* ``inbox:<id>``: a queued TrackEvent (``event_inbox``) that ended ``failed`` (retryable errors until
  ``[inbox] max_attempts``) or ``rejected`` (it can never be applied);
* ``rejected:<id>``: a record refused at the API boundary (``rejected_record``), read-only.

Reading only; retrying and skipping them is :mod:`ctdd.delivery.redrive`. Error texts shown are the ones
stored, which the dispatcher and the inbox redacted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ctdd.db.models import (
    ContactIdentifier, DeliveryAttempt, EventInbox, InboxStatus, OutboxMessage, OutboxStatus, RejectedRecord,
)
from ctdd.domain.identity import InvalidIdentifier, normalise_email

if TYPE_CHECKING:
    from ctdd.config import Settings

OM = OutboxMessage.__table__
DA = DeliveryAttempt.__table__
INBOX = EventInbox.__table__
RR = RejectedRecord.__table__
CI = ContactIdentifier.__table__

OUTBOX, INBOX_SOURCE, REJECTED = "outbox", "inbox", "rejected"
SOURCES = (OUTBOX, INBOX_SOURCE, REJECTED)
#: the status filter's values; the default (no statuses) is every one but ``skipped``
KNOWN_STATUSES = ("dead", "parked", "failed", "rejected", "skipped")
DEFAULT_STATUSES = ("dead", "parked", "failed", "rejected")
#: failure statuses per source
_OUTBOX_FAILED = (OutboxStatus.DEAD, OutboxStatus.PARKED)
_INBOX_FAILED = (InboxStatus.FAILED, InboxStatus.REJECTED)
#: the kind shown for a queued event (event_inbox rows have no message kind)
QUEUED_EVENT_KIND = "queued_event"

#: delivery_attempt.outcome of an operator's skip, and the status of a skipped message or event
SKIPPED = "skipped"

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: the most rows one "retry/skip everything matching" call acts on (run it again for the rest)
MAX_BULK = 10_000

_REF_RE = re.compile(r"^\s*(outbox|inbox|rejected):([1-9][0-9]{0,17})\s*$")
#: the error code in a stored error: "... -> HTTP 400 ERROR_CONTACT_INVALID - ..." / "... HTTP 404 contacts:notFound"
_CODE_RE = re.compile(r"HTTP \d{3} ([A-Za-z_][\w:.-]*)")


class InvalidFailureQuery(ValueError):
    """A filter or reference that cannot be used. ``field`` names the argument at fault (``refs``, ``store_key``,
    ``code``, ``kind``, ``contact_id``, ``email``, ``since``, ``until``, ``statuses``, ``limit``, ``reason``,
    ``operator``); ``index`` is the position of a bad reference. The message holds no personal data."""

    def __init__(self, field: str, message: str, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index


@dataclass(frozen=True)
class Ref:
    source: str
    id: int

    def __str__(self) -> str:
        return f"{self.source}:{self.id}"


def parse_ref(text: str, index: int | None = None) -> Ref:
    """``"outbox:123"`` -> ``Ref("outbox", 123)``; raises :class:`InvalidFailureQuery` (field ``refs``)."""
    match = _REF_RE.match(text or "")
    if match is None:
        shown = (text or "")[:40]
        raise InvalidFailureQuery("refs", f"{shown!r} is no failure reference: use outbox:<id>, inbox:<id> or "
                                          f"rejected:<id>", index)
    return Ref(match.group(1), int(match.group(2)))


def parse_refs(texts: Iterable[str]) -> list[Ref]:
    """Every reference, in the order given, without repeats."""
    refs = [parse_ref(text, i) for i, text in enumerate(texts)]
    return list(dict.fromkeys(refs))


@dataclass(frozen=True)
class Filters:
    """What ``list`` (and ``retry``/``skip`` of everything matching) selects; every filter narrows.

    ``code``: digits match an outbox message's HTTP status (``401``), anything else a code in the stored error
    (``ERROR_CONTACT_INVALID``, ``contacts:invalidId``). ``kind``: an outbox message kind (``contact.upsert``,
    ``insight.upsert``, ...), ``queued_event`` or a rejected record's operation (``SyncContact``, ``TrackEvent``).
    A contact (``contact_id`` or ``email``) selects outbox messages only: queued events and rejected records
    name no contact. ``since``/``until``: when the row failed (or was refused), ``until`` exclusive.
    """

    store_key: str | None = None
    code: str | None = None
    kind: str | None = None
    contact_id: int | None = None
    email: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    statuses: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptView:
    attempt: int
    outcome: str
    response_code: int | None
    error: str | None
    worker: str | None
    started_at: datetime
    finished_at: datetime


@dataclass(frozen=True)
class FailureView:
    """One failed row as ``ctdd failures`` and ``AdminService`` show it (times are aware UTC)."""

    ref: str
    source: str
    id: int
    status: str
    store_key: str | None
    kind: str
    failed_at: datetime | None
    created_at: datetime | None
    attempts: int
    response_code: int | None = None
    error_code: str | None = None
    error: str | None = None
    contact_id: int | None = None
    account: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    record_version: int | None = None
    partition_key: str | None = None
    sequence: int | None = None
    merged_into: str | None = None
    #: the message id / event id of a queued event (its dedupe key)
    dedupe_key: str | None = None
    #: a skipped row: the operator's note ("skipped by <who>: <why>")
    note: str | None = None


@dataclass(frozen=True)
class FailureDetail:
    failure: FailureView
    #: outbox: every delivery attempt and operator action, oldest first
    attempts: list[AttemptView] = field(default_factory=list)
    #: rejected: the field violations (field, description)
    violations: list[tuple[str, str]] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------------------------------


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def error_code(error: str | None) -> str | None:
    """The Dotdigital/commercetools error code in a stored error text, if it names one."""
    match = _CODE_RE.search(error or "")
    return match.group(1) if match and match.group(1) != "-" else None


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def validate(filters: Filters, settings: "Settings | None" = None) -> Filters:
    """Check the filters (raises :class:`InvalidFailureQuery`); returns them with the email normalised."""
    for status in filters.statuses:
        if status not in KNOWN_STATUSES:
            raise InvalidFailureQuery("statuses",
                                      f"unknown status {status[:40]!r} (known: {', '.join(KNOWN_STATUSES)})")
    if filters.store_key is not None and settings is not None and settings.store(filters.store_key) is None:
        known = ", ".join(sorted(settings.stores)) or "none"
        raise InvalidFailureQuery("store_key", f"unknown store {filters.store_key[:100]!r} (known: {known})")
    if filters.code is not None and not re.fullmatch(r"[A-Za-z0-9_:.-]{1,100}", filters.code):
        raise InvalidFailureQuery("code", "a code is an HTTP status (401) or an error code (ERROR_CONTACT_INVALID)")
    if filters.kind is not None and not re.fullmatch(r"[A-Za-z0-9_.]{1,50}", filters.kind):
        raise InvalidFailureQuery("kind", "a kind is a message kind such as contact.upsert, queued_event or an "
                                          "operation such as SyncContact")
    if filters.contact_id is not None and filters.email is not None:
        raise InvalidFailureQuery("email", "give one contact filter: a contact id or an email, not both")
    if filters.contact_id is not None and not 0 < filters.contact_id < 2 ** 63:
        raise InvalidFailureQuery("contact_id", "must be a contact id (a positive whole number)")
    email = filters.email
    if email is not None:
        try:
            email = normalise_email(email)
        except InvalidIdentifier as exc:
            raise InvalidFailureQuery("email", str(exc)) from None
    if filters.since is not None and filters.until is not None and filters.since >= filters.until:
        raise InvalidFailureQuery("until", "must be later than since")
    return replace(filters, email=email)


def _contact_ids(conn: Connection, filters: Filters, settings: "Settings | None") -> list[int] | None:
    """The contacts the contact filter names (None: no contact filter)."""
    if filters.contact_id is not None:
        return [filters.contact_id]
    if filters.email is None:
        return None
    stmt = sa.select(CI.c.contact_id).where(CI.c.kind == "email", CI.c.value == filters.email)
    store = settings.store(filters.store_key) if settings is not None and filters.store_key else None
    if store is not None:
        stmt = stmt.where(CI.c.account == store.account)
    return list(conn.execute(stmt).scalars())


def _statuses(filters: Filters) -> tuple[str, ...]:
    return filters.statuses or DEFAULT_STATUSES


def _outbox_query(conn: Connection, filters: Filters, settings: "Settings | None"):
    wanted = [s for s in _statuses(filters) if s in (*_OUTBOX_FAILED, "skipped")]
    if not wanted:
        return None
    cond = [OM.c.status.in_(wanted)]
    if filters.store_key is not None:
        cond.append(OM.c.store_key == filters.store_key)
    if filters.kind is not None:
        cond.append(OM.c.kind == filters.kind)
    if filters.code is not None:
        if filters.code.isdigit():
            cond.append(OM.c.last_response_code == int(filters.code))
        else:
            cond.append(OM.c.last_error.like(_like(filters.code), escape="\\"))
    contacts = _contact_ids(conn, filters, settings)
    if contacts is not None:
        cond.append(OM.c.contact_id.in_(contacts or [-1]))
    if filters.since is not None:
        cond.append(OM.c.updated_at >= filters.since)
    if filters.until is not None:
        cond.append(OM.c.updated_at < filters.until)
    return sa.select(OM).where(*cond)


def _inbox_query(filters: Filters):
    wanted = [s for s in _statuses(filters) if s in (*_INBOX_FAILED, "skipped")]
    if not wanted or filters.contact_id is not None or filters.email is not None:
        return None
    if filters.kind is not None and filters.kind != QUEUED_EVENT_KIND:
        return None
    cond = [INBOX.c.status.in_(wanted)]
    if filters.store_key is not None:
        cond.append(INBOX.c.store_key == filters.store_key)
    if filters.code is not None:
        code = f"HTTP {filters.code}" if filters.code.isdigit() else filters.code
        cond.append(INBOX.c.last_error.like(_like(code), escape="\\"))
    if filters.since is not None:
        cond.append(INBOX.c.processed_at >= filters.since)
    if filters.until is not None:
        cond.append(INBOX.c.processed_at < filters.until)
    cols = [c for c in INBOX.c if c.name != "request"]  # the request holds personal data: never read here
    return sa.select(*cols).where(*cond)


def _rejected_query(filters: Filters):
    if "rejected" not in _statuses(filters) or filters.contact_id is not None or filters.email is not None:
        return None
    # a queued event's failure is logged here too: while its inbox row exists, that row stands for it
    shadowed = sa.and_(RR.c.record_type == "event_inbox",
                       RR.c.record_id.in_(sa.select(sa.cast(INBOX.c.id, sa.String))))
    cond = [~shadowed]
    if filters.store_key is not None:
        cond.append(RR.c.store_key == filters.store_key)
    if filters.kind is not None:
        cond.append(RR.c.operation == filters.kind)
    if filters.code is not None:
        code = f"HTTP {filters.code}" if filters.code.isdigit() else filters.code
        cond.append(RR.c.reason.like(_like(code), escape="\\"))
    if filters.since is not None:
        cond.append(RR.c.created_at >= filters.since)
    if filters.until is not None:
        cond.append(RR.c.created_at < filters.until)
    return sa.select(RR).where(*cond)


def _outbox_view(row: Any, note: str | None = None) -> FailureView:
    return FailureView(
        ref=f"{OUTBOX}:{row.id}", source=OUTBOX, id=row.id, status=row.status, store_key=row.store_key, kind=row.kind,
        failed_at=_utc(row.updated_at), created_at=_utc(row.created_at), attempts=row.attempts,
        response_code=row.last_response_code, error_code=error_code(row.last_error), error=row.last_error,
        contact_id=row.contact_id, account=row.account, record_type=row.record_type, record_id=row.record_id,
        record_version=row.record_version, partition_key=row.partition_key, sequence=row.sequence,
        merged_into=f"{OUTBOX}:{row.merged_into}" if row.merged_into else None, note=note,
    )


def _inbox_view(row: Any) -> FailureView:
    note = row.outcome if row.status == InboxStatus.SKIPPED else None
    return FailureView(
        ref=f"{INBOX_SOURCE}:{row.id}", source=INBOX_SOURCE, id=row.id, status=row.status, store_key=row.store_key,
        kind=QUEUED_EVENT_KIND, failed_at=_utc(row.processed_at), created_at=_utc(row.received_at),
        attempts=row.attempts, error_code=error_code(row.last_error), error=row.last_error,
        record_type="event_inbox", record_id=str(row.id), dedupe_key=row.dedupe_key, note=note,
    )


def _rejected_view(row: Any) -> FailureView:
    return FailureView(
        ref=f"{REJECTED}:{row.id}", source=REJECTED, id=row.id, status="rejected", store_key=row.store_key,
        kind=row.operation, failed_at=_utc(row.created_at), created_at=_utc(row.created_at), attempts=0,
        error_code=error_code(row.reason), error=row.reason, record_type=row.record_type, record_id=row.record_id,
        record_version=row.record_version,
    )


def _latest_notes(conn: Connection, ids: list[int]) -> dict[int, str]:
    """The operator's note of skipped outbox messages (their last ``skipped`` audit row)."""
    if not ids:
        return {}
    rows = conn.execute(sa.select(DA.c.message_id, DA.c.error).where(DA.c.message_id.in_(ids),
                                                                      DA.c.outcome == SKIPPED).order_by(DA.c.id))
    return {row.message_id: row.error for row in rows}


def _time_key(view: FailureView) -> tuple:
    moment = view.failed_at or view.created_at or datetime.min.replace(tzinfo=timezone.utc)
    return (moment, SOURCES.index(view.source), view.id)


def list_failures(engine: Engine, filters: Filters = Filters(), *, limit: int = DEFAULT_LIMIT,
                  settings: "Settings | None" = None) -> tuple[list[FailureView], bool]:
    """Up to ``limit`` failures matching ``filters``, most recent first, and whether more matched."""
    filters = validate(filters, settings)
    if limit <= 0:
        raise InvalidFailureQuery("limit", "must be a positive number")
    limit = min(limit, MAX_BULK)
    views: list[FailureView] = []
    with engine.connect() as conn:
        query = _outbox_query(conn, filters, settings)
        if query is not None:
            rows = conn.execute(query.order_by(OM.c.updated_at.desc(), OM.c.id.desc()).limit(limit + 1)).all()
            notes = _latest_notes(conn, [r.id for r in rows if r.status == SKIPPED])
            views += [_outbox_view(r, notes.get(r.id)) for r in rows]
        query = _inbox_query(filters)
        if query is not None:
            rows = conn.execute(query.order_by(INBOX.c.processed_at.desc(), INBOX.c.id.desc()).limit(limit + 1)).all()
            views += [_inbox_view(r) for r in rows]
        query = _rejected_query(filters)
        if query is not None:
            rows = conn.execute(query.order_by(RR.c.created_at.desc(), RR.c.id.desc()).limit(limit + 1)).all()
            views += [_rejected_view(r) for r in rows]
    views.sort(key=_time_key, reverse=True)
    return views[:limit], len(views) > limit


def get_failure(engine: Engine, ref: Ref) -> FailureDetail | None:
    """Everything stored about one reference (any status: a retried message shows where it is now); None when
    there is no such row."""
    with engine.connect() as conn:
        if ref.source == OUTBOX:
            row = conn.execute(sa.select(OM).where(OM.c.id == ref.id)).first()
            if row is None:
                return None
            attempts = [AttemptView(a.attempt, a.outcome, a.response_code, a.error, a.worker, _utc(a.started_at),
                                    _utc(a.finished_at))
                        for a in conn.execute(sa.select(DA).where(DA.c.message_id == ref.id).order_by(DA.c.id))]
            note = next((a.error for a in reversed(attempts) if a.outcome == SKIPPED), None)
            return FailureDetail(_outbox_view(row, note if row.status == SKIPPED else None), attempts)
        if ref.source == INBOX_SOURCE:
            cols = [c for c in INBOX.c if c.name != "request"]
            row = conn.execute(sa.select(*cols).where(INBOX.c.id == ref.id)).first()
            return None if row is None else FailureDetail(_inbox_view(row))
        row = conn.execute(sa.select(RR).where(RR.c.id == ref.id)).first()
        if row is None:
            return None
        violations = [(str(v.get("field", "")), str(v.get("description", "")))
                      for v in (row.violations or []) if isinstance(v, dict)]
        return FailureDetail(_rejected_view(row), violations=violations)


def stores_of(engine: Engine, refs: Iterable[Ref]) -> dict[Ref, str | None]:
    """The store key of each row of ``refs`` that exists (None: a row of no store, e.g. a rejected record of
    an unknown store); a reference with no row is left out. For callers limited to some stores."""
    refs = list(refs)
    found: dict[Ref, str | None] = {}
    with engine.connect() as conn:
        for source, table in ((OUTBOX, OM), (INBOX_SOURCE, INBOX), (REJECTED, RR)):
            ids = sorted({r.id for r in refs if r.source == source})
            for start in range(0, len(ids), 500):
                for row in conn.execute(sa.select(table.c.id, table.c.store_key)
                                        .where(table.c.id.in_(ids[start:start + 500]))):
                    found[Ref(source, row.id)] = row.store_key
    return found
