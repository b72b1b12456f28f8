"""Redrive: the operator's view of everything that failed, and the way to retry it or drop it with a reason.

Three kinds of failure, each named by a typed reference:

* ``outbox:<id>``: an outbox message that is ``dead`` (a permanent Dotdigital error, or it gave up) or
  ``parked`` (held back, with the rest of its partition, until someone acts or its account works again);
* ``inbox:<id>``: a queued TrackEvent (``event_inbox``) that ended ``failed`` (retryable errors until
  ``[inbox] max_attempts``) or ``rejected`` (it can never be applied);
* ``rejected:<id>``: a record refused at the API boundary (``rejected_record``). Read-only: the request itself
  was invalid, so there is nothing to retry; the sender must send a corrected one.

Transitions (each one conditional on the row's current status, so a retry or skip is idempotent and never
overwrites what a worker did meanwhile):

* retry ``outbox``: ``dead``/``parked`` -> ``pending`` with ``attempts`` reset and due now. While no later
  message of its partition was or will be sent (none delivered, in flight, pending, parked or merged), it keeps
  its ``sequence``: the dispatcher claims a message only when no earlier message of its partition is still
  unsettled, so it never jumps ahead of an earlier pending or parked one. Otherwise it goes to the tail of its
  partition (a new sequence from ``contact.next_sequence``, as enqueue takes one) and a contact upsert leaves
  out the fields a later message carries (its request, or ``field_state.message_id``): a retry never sends older
  values over newer ones, nor is claimed beside a later message in flight. If nothing is left to send (or a
  later message deletes the contact, or sends a newer version of the same insight record) it is settled as
  ``skipped``, the note saying why; a ``contact.delete`` with later messages is refused. A message that died
  merged into another (its ``merged_into``) is retried through that head, whose request carries it; the head's
  merged messages settle with it again.
* retry ``inbox``: ``failed`` -> ``pending``, attempts reset, due now. A ``rejected`` event is refused.
* skip ``outbox``: ``dead``/``parked`` -> ``skipped`` (final; a skipped parked message no longer holds back its
  partition); the field values it carried are forgotten, as for a dead message, so the next update of those
  fields is sent again.
* skip ``inbox``: ``failed``/``rejected`` -> ``skipped``.

Nothing is deleted. Every retry and skip of an outbox message is written to ``delivery_attempt`` (outcome
``redriven`` or ``skipped``, the operator and the reason in ``error``), a skipped queued event keeps the reason in
``outcome``, and each call logs one line: who, what (the references), why. Operators' reasons are stored and
logged as given; error texts shown here are the ones stored, which the dispatcher and the inbox redacted.

Used by ``ctdd failures`` (``ctdd.cli.failures_cmd``) and the operator's gRPC ``AdminService``
(``ctdd.api.admin``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ctdd.db.engine import utcnow
from ctdd.db.models import (
    ContactIdentifier, DeliveryAttempt, EventInbox, InboxStatus, OutboxMessage, OutboxStatus, RejectedRecord,
)
from ctdd.delivery import outbox
from ctdd.domain.identity import InvalidIdentifier, normalise_email

if TYPE_CHECKING:
    from ctdd.config import Settings

log = logging.getLogger(__name__)

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
#: the PostgreSQL channel the inbox processors LISTEN on (``ctdd.ingest.inbox.NOTIFY_CHANNEL``, a layer above)
INBOX_NOTIFY_CHANNEL = "ctdd_inbox"
#: delivery_attempt.outcome of an operator's action
REDRIVEN = "redriven"
SKIPPED = "skipped"

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: the most rows one "retry/skip everything matching" call acts on (run it again for the rest)
MAX_BULK = 10_000
MAX_REASON = 500
MAX_OPERATOR = 100

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


@dataclass(frozen=True)
class ActionResult:
    """What a retry or skip did with one reference: ``outcome`` is ``retried``, ``skipped`` (``would_retry`` /
    ``would_skip`` in a dry run), ``unchanged`` (nothing to do: already done, or not failed), ``refused`` or
    ``not_found``; ``status`` is the row's status afterwards."""

    ref: str
    outcome: str
    status: str | None
    message: str = ""


@dataclass(frozen=True)
class ActionReport:
    results: list[ActionResult]
    #: more rows matched the filters than one call acts on (:data:`MAX_BULK`)
    has_more: bool = False

    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.outcome in ("retried", "skipped", "would_retry", "would_skip"))


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


# -- acting ------------------------------------------------------------------------------------------------------


def _check_note(operator: str, reason: str | None, *, required: bool) -> tuple[str, str]:
    operator = (operator or "").strip()
    reason = (reason or "").strip()
    if not operator or len(operator) > MAX_OPERATOR or any(ord(c) < 32 for c in operator):
        raise InvalidFailureQuery("operator", f"name who acts, in at most {MAX_OPERATOR} printable characters")
    if required and not reason:
        raise InvalidFailureQuery("reason", "say why (it is recorded with the row and logged)")
    if len(reason) > MAX_REASON or any(ord(c) < 32 for c in reason):
        raise InvalidFailureQuery("reason", f"at most {MAX_REASON} printable characters on one line")
    return operator, reason


def _matching_refs(engine: Engine, filters: Filters, settings: "Settings | None", action: str
                   ) -> tuple[list[Ref], bool]:
    """The failures ``filters`` select that ``action`` can act on: a selection never includes rejected records
    (read-only), nor, for a retry, rejected queued events."""
    views, more = list_failures(engine, filters, limit=MAX_BULK, settings=settings)
    actionable = [v for v in views if v.source != REJECTED
                  and not (action == "retry" and v.source == INBOX_SOURCE and v.status == InboxStatus.REJECTED)]
    return [Ref(v.source, v.id) for v in actionable], more


def retry(engine: Engine, refs: Sequence[Ref] = (), *, filters: Filters | None = None, operator: str,
          reason: str | None = None, dry_run: bool = False, settings: "Settings | None" = None) -> ActionReport:
    """Retry the failures ``refs`` (or every one matching ``filters``): see the module docstring."""
    operator, reason = _check_note(operator, reason, required=False)
    has_more = False
    if filters is not None:
        refs, has_more = _matching_refs(engine, filters, settings, "retry")
    results = _act(engine, list(refs), "retry", operator, reason, dry_run)
    return ActionReport(results, has_more)


def skip(engine: Engine, refs: Sequence[Ref] = (), *, filters: Filters | None = None, operator: str,
         reason: str, dry_run: bool = False, settings: "Settings | None" = None) -> ActionReport:
    """Skip the failures ``refs`` (or every one matching ``filters``) with ``reason``: see the module docstring."""
    operator, reason = _check_note(operator, reason, required=True)
    has_more = False
    if filters is not None:
        refs, has_more = _matching_refs(engine, filters, settings, "skip")
    results = _act(engine, list(refs), "skip", operator, reason, dry_run)
    return ActionReport(results, has_more)


def _act(engine: Engine, refs: list[Ref], action: str, operator: str, reason: str, dry_run: bool) -> list[ActionResult]:
    if not refs:
        return []
    now = utcnow()
    note = f"{'retried' if action == 'retry' else 'skipped'} by {operator}" + (f": {reason}" if reason else "")
    results: dict[Ref, ActionResult] = {}
    with engine.begin() as conn:
        outbox_ids = sorted(r.id for r in refs if r.source == OUTBOX)
        inbox_ids = sorted(r.id for r in refs if r.source == INBOX_SOURCE)
        for ref in refs:
            if ref.source == REJECTED:
                results[ref] = _refuse_rejected(conn, ref)
        if outbox_ids:
            results.update(_act_outbox(conn, outbox_ids, action, operator, note, dry_run, now))
        if inbox_ids:
            results.update(_act_inbox(conn, inbox_ids, action, note, dry_run, now))
        changed = [r for r in results.values() if r.outcome in ("retried", "skipped")]
        if changed and conn.dialect.name == "postgresql" and action == "retry":
            if any(r.ref.startswith(OUTBOX) for r in changed):
                conn.execute(sa.text(f"NOTIFY {outbox.NOTIFY_CHANNEL}"))
            if any(r.ref.startswith(INBOX_SOURCE) for r in changed):
                conn.execute(sa.text(f"NOTIFY {INBOX_NOTIFY_CHANNEL}"))
    ordered = [results[ref] for ref in refs]
    acted = [r.ref for r in ordered if r.outcome in ("retried", "skipped")]
    if acted and not dry_run:
        shown = ", ".join(acted[:20]) + (f" and {len(acted) - 20} more" if len(acted) > 20 else "")
        log.warning("redrive: %s %s %d failure(s) (%s)%s", operator, "retried" if action == "retry" else "skipped",
                    len(acted), shown, f": {reason}" if reason else "")
    return ordered


def _refuse_rejected(conn: Connection, ref: Ref) -> ActionResult:
    row = conn.execute(sa.select(RR.c.record_type, RR.c.record_id).where(RR.c.id == ref.id)).first()
    if row is None:
        return ActionResult(str(ref), "not_found", None, "no such rejected record")
    if row.record_type == "event_inbox":  # the log entry of a queued event: the event itself may be retryable
        return ActionResult(str(ref), "refused", "rejected", f"a rejected record is read-only: it logs queued "
                                                             f"event {INBOX_SOURCE}:{row.record_id}; act on that")
    return ActionResult(str(ref), "refused", "rejected", "a rejected record is read-only: the request itself was "
                                                         "invalid, so sending it again would be refused again; the "
                                                         "sender must correct it")


def _act_outbox(conn: Connection, ids: list[int], action: str, operator: str, note: str, dry_run: bool,
                now: datetime) -> dict[Ref, ActionResult]:
    rows = {r.id: r for r in conn.execute(
        sa.select(OM.c.id, OM.c.status, OM.c.merged_into, OM.c.attempts).where(OM.c.id.in_(ids)))}
    results: dict[Ref, ActionResult] = {}
    targets: dict[int, int] = {}  # message id -> the id acted on (a merged message's head)
    for mid in ids:
        ref = Ref(OUTBOX, mid)
        row = rows.get(mid)
        if row is None:
            results[ref] = ActionResult(str(ref), "not_found", None, "no such outbox message")
        elif row.status not in _OUTBOX_FAILED:
            done = SKIPPED if action == "skip" else None
            message = ("already skipped" if row.status == done else
                       f"not failed: the message is {row.status}")
            results[ref] = ActionResult(str(ref), "unchanged", row.status, message)
        elif row.merged_into and action == "retry":
            targets[mid] = row.merged_into
        else:
            targets[mid] = mid
    heads = sorted(set(targets.values()) - set(rows))
    if heads:  # heads of merged messages that were not named themselves
        rows.update({r.id: r for r in conn.execute(
            sa.select(OM.c.id, OM.c.status, OM.c.merged_into, OM.c.attempts).where(OM.c.id.in_(heads)))})
    acted: set[int] = set()
    plans: dict[int, _RetryPlan] = {}
    for mid, head in targets.items():
        ref = Ref(OUTBOX, mid)
        head_row = rows.get(head)
        if head_row is None or head_row.status not in _OUTBOX_FAILED:
            results[ref] = ActionResult(str(ref), "unchanged", rows[mid].status,
                                        f"merged into outbox:{head}, which is "
                                        f"{head_row.status if head_row is not None else 'gone'}")
            continue
        via = f" (through outbox:{head}, which carries it)" if head != mid else ""
        if action == "retry" and head not in plans:
            plans[head] = _retry_plan(conn, head)
        plan = plans.get(head)
        if plan is not None and plan.refused:
            results[ref] = ActionResult(str(ref), "refused", rows[mid].status, plan.refused)
            continue
        outcome = "skipped" if action == "skip" or (plan is not None and plan.superseded) else "retried"
        said = (f"nothing left to send: {plan.superseded}" if plan.superseded else plan.told) if plan else ""
        told = "; ".join(t for t in (via.strip(" ()"), said) if t)
        if dry_run:
            results[ref] = ActionResult(str(ref), "would_skip" if outcome == "skipped" else "would_retry",
                                        rows[mid].status, told)
            continue
        if head not in acted:
            if not _transition_outbox(conn, head_row, action, operator, note, now, plan):
                results[ref] = ActionResult(str(ref), "unchanged", None, "changed by a worker meanwhile")
                continue
            acted.add(head)
        status = OutboxStatus.PENDING if outcome == "retried" else SKIPPED
        results[ref] = ActionResult(str(ref), outcome,
                                    status if head == mid or outcome == "skipped" else OutboxStatus.MERGED, told)
    return results


def _transition_outbox(conn: Connection, row: Any, action: str, operator: str, note: str, now: datetime,
                       plan: "_RetryPlan | None" = None) -> bool:
    superseded = action == "retry" and plan is not None and plan.superseded
    if action == "retry" and not superseded:
        values: dict[str, Any] = dict(status=OutboxStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now,
                                      lease_owner=None, lease_expires_at=None)
        if plan is not None and plan.move:
            values["payload"] = plan.payload
    else:
        values = dict(status=SKIPPED, updated_at=now, lease_owner=None, lease_expires_at=None)
    updated = conn.execute(sa.update(OM).where(OM.c.id == row.id, OM.c.status.in_(_OUTBOX_FAILED))
                           .values(**values)).rowcount
    if not updated:
        return False
    if values["status"] == OutboxStatus.PENDING and plan is not None and plan.move:
        # to the tail of its partition, numbered the way enqueue numbers (the contact row was locked by the plan)
        conn.execute(sa.update(OM).where(OM.c.id == row.id).values(sequence=_next_sequence(conn, plan, now)))
    merged = sa.and_(OM.c.merged_into == row.id, OM.c.status.in_((*_OUTBOX_FAILED, OutboxStatus.MERGED)))
    if values["status"] == OutboxStatus.PENDING:
        # the head's request still carries its merged messages: they settle with it again
        conn.execute(sa.update(OM).where(merged).values(status=OutboxStatus.MERGED, updated_at=now))
    else:
        conn.execute(sa.update(OM).where(merged).values(status=SKIPPED, updated_at=now))
        outbox._forget_fields(conn, [row.id])
    audit = [dict(message_id=row.id, attempt=row.attempts, outcome=REDRIVEN if action == "retry" else SKIPPED,
                  response_code=None, error=note[:2000], worker=f"operator:{operator}"[:200], started_at=now,
                  finished_at=now)]
    if superseded:  # retried, but nothing was left to send: settled as skipped, saying why
        audit.append({**audit[0], "outcome": SKIPPED, "error": f"{note}; nothing left to send: {plan.superseded}"[:2000]})
    conn.execute(sa.insert(DA), audit)
    return True


# -- a retry after later messages: to the tail, without what they carry ---------------------------------------------

#: statuses of later messages whose request reached, or will reach, Dotdigital (dead and skipped ones did not)
_LATER_EFFECTIVE = (OutboxStatus.PENDING, OutboxStatus.IN_FLIGHT, OutboxStatus.DELIVERED, OutboxStatus.PARKED,
                    OutboxStatus.MERGED)


@dataclass(frozen=True)
class _RetryPlan:
    """How a failed message is retried. ``move``: later messages of its partition were (or will be) sent, so it
    goes to the tail (a new ``sequence``) with ``payload`` (what they carry left out); ``superseded``: nothing is
    left to send (settle as skipped, with this note); ``refused``: it cannot be retried safely (why)."""

    move: bool = False
    payload: Any = None
    superseded: str | None = None
    refused: str | None = None
    told: str = ""
    contact_id: int | None = None
    partition_key: str = ""


def _later_refs(rows: list) -> str:
    shown = ", ".join(f"{OUTBOX}:{r.id}" for r in rows[:5])
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _body_fields(body: Any, prefix: str = "") -> set[str]:
    """The field paths (``dataFields.FIRSTNAME``, ``lists.12``, ``preferences.3``, ...) a contact body sets, as
    ``field_state`` names them; consent records are a log, not a field, and are never left out."""
    paths: set[str] = set()
    if not isinstance(body, dict):
        return paths
    for key, value in body.items():
        if not prefix and key == "lists":
            paths.update(f"lists.{i}" for i in value or ())
        elif not prefix and key == "preferences":
            paths.update(f"preferences.{p['id']}" for p in value or () if isinstance(p, dict) and "id" in p)
        elif not prefix and key == "consentRecords":
            continue
        elif isinstance(value, dict):
            paths |= _body_fields(value, f"{prefix}{key}.")
        else:
            paths.add(f"{prefix}{key}")
    return paths


def _without(body: dict, carried: set[str], prefix: str = "") -> dict:
    """``body`` without the fields in ``carried`` (empty objects dropped; a channel's resubscribeOptions go with
    its status, which they qualify)."""
    out: dict = {}
    for key, value in body.items():
        path = f"{prefix}{key}"
        if not prefix and key == "lists":
            kept = [i for i in value or () if f"lists.{i}" not in carried]
            if kept:
                out[key] = kept
        elif not prefix and key == "preferences":
            kept = [p for p in value or () if not (isinstance(p, dict) and f"preferences.{p.get('id')}" in carried)]
            if kept:
                out[key] = kept
        elif not prefix and key == "consentRecords":
            if value:
                out[key] = value
        elif isinstance(value, dict):
            inner = _without(value, carried, f"{path}.")
            if inner:
                out[key] = inner
        elif path not in carried:
            out[key] = value
    if prefix.startswith("channelProperties.") and prefix.count(".") == 2 and "status" not in out:
        out.pop("resubscribeOptions", None)
    return out


def _retry_plan(conn: Connection, mid: int) -> _RetryPlan:
    """Where and with what a retried message goes (see :class:`_RetryPlan`). A message is retried in its place
    while nothing after it in its partition was or will be sent (the dispatcher then keeps it ahead of them);
    otherwise sending it in its place would overwrite newer values with older ones (and claim it beside a later
    message in flight), so it goes to the tail without the fields a later message carries."""
    row = conn.execute(sa.select(OM).where(OM.c.id == mid)).first()
    if row is None:
        return _RetryPlan()
    if row.contact_id is not None:
        # Serialises with enqueue (which bumps contact.next_sequence under this lock): no message can be queued
        # for the contact between reading the later messages and taking the new sequence.
        conn.execute(sa.select(outbox.CT.c.id).where(outbox.CT.c.id == row.contact_id).with_for_update())
    later = conn.execute(
        sa.select(OM.c.id, OM.c.kind, OM.c.payload, OM.c.status)
        .where(OM.c.partition_key == row.partition_key, OM.c.sequence > row.sequence,
               OM.c.status.in_(_LATER_EFFECTIVE), sa.or_(OM.c.merged_into.is_(None), OM.c.merged_into != row.id))
        .order_by(OM.c.sequence)
    ).all()
    if not later:
        return _RetryPlan()
    base = dict(move=True, payload=row.payload, contact_id=row.contact_id, partition_key=row.partition_key)
    deletions = [r for r in later if r.kind == outbox.CONTACT_DELETE]
    if row.kind == outbox.CONTACT_DELETE:
        return _RetryPlan(refused=f"later messages of this contact were sent or are queued ({_later_refs(later)}): "
                                  f"a deletion sent after them would erase what they sent; skip it (the contact "
                                  f"is deleted again when commercetools deletes it again)")
    if deletions:
        return _RetryPlan(**base, superseded=f"superseded: the contact is deleted by a later message "
                                             f"({_later_refs(deletions)})")
    if row.kind == outbox.CONTACT_UPSERT and isinstance(row.payload, dict):
        carried = _later_fields(conn, row, later)
        body = row.payload.get("body") or {}
        kept = _without(body, carried)
        if not kept:
            return _RetryPlan(**base, superseded=f"superseded: every field it carried is carried by a later "
                                                 f"message ({_later_refs(later)})")
        left_out = len(_body_fields(body)) - len(_body_fields(kept))
        base["payload"] = {**row.payload, "body": kept}
        return _RetryPlan(**base, told=f"goes after the later messages of its contact ({_later_refs(later)})"
                                       + (f", without the {left_out} field(s) they carry" if left_out else ""))
    if row.kind == outbox.CONTACT_REMOVE_FROM_LISTS and isinstance(row.payload, dict):
        carried = _later_fields(conn, row, later)
        kept_ids = [i for i in row.payload.get("list_ids") or () if f"lists.{i}" not in carried]
        if not kept_ids:
            return _RetryPlan(**base, superseded=f"superseded: a later message sets every list it left "
                                                 f"({_later_refs(later)})")
        base["payload"] = {**row.payload, "list_ids": kept_ids}
    elif row.kind == outbox.INSIGHT_UPSERT and isinstance(row.payload, dict):
        same = [r for r in later if r.kind == outbox.INSIGHT_UPSERT and isinstance(r.payload, dict)
                and (r.payload.get("collection"), r.payload.get("record_id"))
                == (row.payload.get("collection"), row.payload.get("record_id"))]
        if same:
            return _RetryPlan(**base, superseded=f"superseded: a later message sends a newer version of the record "
                                                 f"({_later_refs(same)})")
    return _RetryPlan(**base, told=f"goes after the later messages of its contact ({_later_refs(later)})")


def _later_fields(conn: Connection, row: Any, later: list) -> set[str]:
    """The fields the ``later`` messages carry: what their requests set, and what ``field_state`` records as
    carried by them (``message_id``)."""
    carried: set[str] = set()
    for r in later:
        payload = r.payload if isinstance(r.payload, dict) else {}
        if r.kind == outbox.CONTACT_UPSERT:
            carried |= _body_fields(payload.get("body") or {})
        elif r.kind == outbox.CONTACT_REMOVE_FROM_LISTS:
            carried.update(f"lists.{i}" for i in payload.get("list_ids") or ())
    if row.contact_id is not None:
        fs = outbox.FS
        carried.update(conn.execute(sa.select(fs.c.field).where(
            fs.c.contact_id == row.contact_id, fs.c.message_id.in_([r.id for r in later]))).scalars())
    return carried


def _next_sequence(conn: Connection, plan: _RetryPlan, now: datetime) -> int:
    """A new sequence at the tail of the partition, taken as :func:`outbox.enqueue` takes it."""
    if plan.contact_id is not None:
        return conn.execute(outbox._BUMP_SEQUENCE, {"contact_id": plan.contact_id, "now": now}).scalar_one()
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(OM.c.sequence), 0) + 1)
                        .where(OM.c.partition_key == plan.partition_key)).scalar_one()


def _act_inbox(conn: Connection, ids: list[int], action: str, note: str, dry_run: bool,
               now: datetime) -> dict[Ref, ActionResult]:
    rows = {r.id: r for r in conn.execute(sa.select(INBOX.c.id, INBOX.c.status).where(INBOX.c.id.in_(ids)))}
    results: dict[Ref, ActionResult] = {}
    for eid in ids:
        ref = Ref(INBOX_SOURCE, eid)
        row = rows.get(eid)
        if row is None:
            results[ref] = ActionResult(str(ref), "not_found", None, "no such queued event (or purged after "
                                                                     "[inbox] retention_days)")
            continue
        if action == "retry" and row.status == InboxStatus.REJECTED:
            results[ref] = ActionResult(str(ref), "refused", row.status,
                                        "a rejected event is never retried: the request itself was invalid and "
                                        "would be rejected again; skip it, and have the sender correct it")
            continue
        allowed = (InboxStatus.FAILED,) if action == "retry" else _INBOX_FAILED
        if row.status not in allowed:
            message = "already skipped" if row.status == InboxStatus.SKIPPED and action == "skip" else \
                f"not failed: the event is {row.status}"
            results[ref] = ActionResult(str(ref), "unchanged", row.status, message)
            continue
        if dry_run:
            results[ref] = ActionResult(str(ref), f"would_{action}", row.status)
            continue
        if action == "retry":
            values: dict[str, Any] = dict(status=InboxStatus.PENDING, attempts=0, next_attempt_at=now,
                                          lease_owner=None, lease_expires_at=None, processed_at=None)
        else:
            values = dict(status=InboxStatus.SKIPPED, outcome=note[:200], processed_at=now)
        updated = conn.execute(sa.update(INBOX).where(INBOX.c.id == eid, INBOX.c.status.in_(allowed))
                               .values(**values)).rowcount
        if not updated:
            results[ref] = ActionResult(str(ref), "unchanged", None, "changed by a processor meanwhile")
            continue
        results[ref] = ActionResult(str(ref), "retried" if action == "retry" else "skipped", values["status"])
    return results
