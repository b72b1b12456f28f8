"""Redrive: retry what failed, or drop it with a reason (the failures and their references are listed by
:mod:`ctdd.delivery.failure_view`: ``outbox:<id>`` a dead or parked outbox message, ``inbox:<id>`` a failed or
rejected queued event, ``rejected:<id>`` a record refused at the API boundary, read-only: the sender must send a
corrected one).

Transitions (each one conditional on the row's current status, so a retry or skip is idempotent and never
overwrites what a worker did meanwhile):

* retry ``outbox``: ``dead``/``parked`` -> ``pending`` with ``attempts`` reset and due now. While no later
  message of its partition was or will be sent (none delivered, in flight, pending, parked or merged), it keeps
  its ``sequence``: the dispatcher claims a message only when no earlier message of its partition is still
  unsettled, so it never jumps ahead of an earlier pending or parked one. Otherwise it goes to the tail of its
  partition (a new sequence from ``contact.next_sequence``, as enqueue takes one) and a contact upsert leaves
  out the fields a later message carries (its request, or ``field_state.message_id``): a retry never sends older
  values over newer ones, nor is claimed beside a later message in flight. If nothing is left to send (or a
  later message deletes the contact, sends a newer version of the same insight record or deletes that record,
  or, for an ``insight.delete``, sends the record again) it is settled as ``skipped``, the note saying why; a ``contact.delete`` with later messages is refused. A message that died
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
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ctdd.db.engine import utcnow
from ctdd.db.models import InboxStatus, OutboxStatus
from ctdd.delivery import outbox
from ctdd.delivery.failure_view import (
    DA, INBOX, INBOX_SOURCE, MAX_BULK, OM, OUTBOX, REJECTED, RR, SKIPPED, _INBOX_FAILED, _OUTBOX_FAILED, Filters,
    InvalidFailureQuery, Ref, list_failures,
)

if TYPE_CHECKING:
    from ctdd.config import Settings

log = logging.getLogger(__name__)

#: the PostgreSQL channel the inbox processors LISTEN on (``ctdd.ingest.inbox.NOTIFY_CHANNEL``, a layer above)
INBOX_NOTIFY_CHANNEL = "ctdd_inbox"
#: delivery_attempt.outcome of an operator's retry (a skip's is SKIPPED)
REDRIVEN = "redriven"
MAX_REASON = 500
MAX_OPERATOR = 100


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
    elif row.kind in (outbox.INSIGHT_UPSERT, outbox.INSIGHT_DELETE) and isinstance(row.payload, dict):
        # a record sent or deleted by a later message: this one, after it, would undo what the later one did
        later_same = [r for r in later if r.kind in (outbox.INSIGHT_UPSERT, outbox.INSIGHT_DELETE)
                      and r.kind != row.kind and isinstance(r.payload, dict)
                      and r.payload.get("collection") == row.payload.get("collection")
                      and str(row.payload.get("record_id")) in _record_ids(r.payload)]
        if row.kind == outbox.INSIGHT_DELETE and later_same:
            return _RetryPlan(**base, superseded=f"superseded: a later message sends the record again "
                                                 f"({_later_refs(later_same)})")
        if row.kind == outbox.INSIGHT_UPSERT and not row.payload.get("records") and later_same:
            return _RetryPlan(**base, superseded=f"superseded: a later message deletes the record "
                                                 f"({_later_refs(later_same)})")
    if row.kind == outbox.INSIGHT_UPSERT and isinstance(row.payload, dict):
        # a merged view message carries several records (``records``): superseded when later messages send every
        # one of them; else it goes without those they send (an older version sent after them would win)
        mine = _record_ids(row.payload)
        same = [r for r in later if r.kind == outbox.INSIGHT_UPSERT and isinstance(r.payload, dict)
                and r.payload.get("collection") == row.payload.get("collection")
                and mine & _record_ids(r.payload)]
        newer = set().union(*(_record_ids(r.payload) for r in same)) & mine
        if mine and newer == mine:
            return _RetryPlan(**base, superseded=f"superseded: a later message sends a newer version of "
                                                 f"{'the record' if len(mine) == 1 else 'each of its records'} "
                                                 f"({_later_refs(same)})")
        if newer:
            base["payload"] = {**row.payload, "records": [r for r in row.payload["records"]
                                                          if str(r.get("record_id")) not in newer]}
            return _RetryPlan(**base, told=f"goes after the later messages of its contact ({_later_refs(later)}), "
                                           f"without the {len(newer)} record(s) they send")
    return _RetryPlan(**base, told=f"goes after the later messages of its contact ({_later_refs(later)})")


def _record_ids(payload: dict) -> set[str]:
    """The ids of the insight records a message sends: those of its ``records`` once views were merged into it,
    else its one ``record_id`` (``ctdd.delivery.view_merge``)."""
    if payload.get("records"):
        return {str(r.get("record_id")) for r in payload["records"]}
    return {str(payload["record_id"])} if payload.get("record_id") is not None else set()


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
