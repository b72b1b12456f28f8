"""The redrive RPCs of the operator's ``AdminService``: ListFailures, GetFailure, RetryFailures, SkipFailures.

The queries and state transitions are ``ctdd.delivery.redrive``'s (shared with ``ctdd failures``); this module
only checks requests, converts between the wire and the domain, and maps errors to INVALID_ARGUMENT with field
violations or NOT_FOUND. The database is used in a worker thread so the event loop keeps serving. An email
filter is personal data: it is matched, never logged nor put on spans.

A caller whose token is limited to some stores (``stores`` in the tokens file) sees and acts on the failures of
those stores only: a filter naming another store is PERMISSION_DENIED (``ctdd.api.auth``), a ListFailures or
an ``all_matching`` without a store filter is PERMISSION_DENIED (name one of its stores), and a reference to a
row of another store (or of none) is answered as if there were no such row: GetFailure NOT_FOUND,
RetryFailures/SkipFailures outcome REDRIVE_OUTCOME_NOT_FOUND (the refusal is logged).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import grpc
from google.rpc import code_pb2
from opentelemetry.trace import SpanKind
from sqlalchemy.engine import Engine

from ctdd.api.auth import current_caller, log_refusal, refuse_store, store_scope
from ctdd.api.convert import Violation, to_timestamp as _timestamp
from ctdd.api.errors import abort, bad_request
from ctdd.config import Settings
from ctdd.delivery import failure_view, redrive
from ctdd.sync.v1 import admin_service_pb2 as pb
from ctdd.telemetry import start_span

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdminService"].full_name

STATUS_TO_PB = {
    "dead": pb.FAILURE_STATUS_DEAD, "parked": pb.FAILURE_STATUS_PARKED, "failed": pb.FAILURE_STATUS_FAILED,
    "rejected": pb.FAILURE_STATUS_REJECTED, "skipped": pb.FAILURE_STATUS_SKIPPED,
}
PB_TO_STATUS = {value: name for name, value in STATUS_TO_PB.items()}
SOURCE_TO_PB = {failure_view.OUTBOX: pb.FAILURE_SOURCE_OUTBOX, failure_view.INBOX_SOURCE: pb.FAILURE_SOURCE_INBOX,
                failure_view.REJECTED: pb.FAILURE_SOURCE_REJECTED}
OUTCOME_TO_PB = {
    "retried": pb.REDRIVE_OUTCOME_RETRIED, "skipped": pb.REDRIVE_OUTCOME_SKIPPED,
    "unchanged": pb.REDRIVE_OUTCOME_UNCHANGED, "refused": pb.REDRIVE_OUTCOME_REFUSED,
    "not_found": pb.REDRIVE_OUTCOME_NOT_FOUND, "would_retry": pb.REDRIVE_OUTCOME_WOULD_RETRY,
    "would_skip": pb.REDRIVE_OUTCOME_WOULD_SKIP,
}
#: domain argument names -> FailureFilter field names
_FILTER_FIELDS = {"statuses": "statuses", "store_key": "store_key", "code": "code", "kind": "kind",
                  "contact_id": "contact_id", "email": "email", "since": "since", "until": "until"}




def failure_message(view: failure_view.FailureView) -> pb.Failure:
    return pb.Failure(
        ref=view.ref, source=SOURCE_TO_PB[view.source],
        status=STATUS_TO_PB.get(view.status, pb.FAILURE_STATUS_UNSPECIFIED), status_name=view.status,
        store_key=view.store_key or "", kind=view.kind, contact_id=str(view.contact_id or "") or "",
        account=view.account or "", response_code=view.response_code or 0, error_code=view.error_code or "",
        error=view.error or "", attempts=view.attempts,
        record=pb.RecordReference(record_type=view.record_type or "", record_id=view.record_id or "",
                                  record_version=view.record_version or 0),
        failed_at=_timestamp(view.failed_at), created_at=_timestamp(view.created_at),
        partition_key=view.partition_key or "", sequence=view.sequence or 0, merged_into=view.merged_into or "",
        dedupe_key=view.dedupe_key or "", note=view.note or "",
    )


def _filters(message: pb.FailureFilter, prefix: str, violations: list[Violation]) -> failure_view.Filters:
    """The domain filters of a FailureFilter; wire-level problems are appended to ``violations``."""
    contact_id = None
    if message.WhichOneof("contact") == "contact_id":
        text = message.contact_id.strip()
        if text.isdigit() and 0 < int(text) < 2 ** 63:
            contact_id = int(text)
        else:
            violations.append(Violation(f"{prefix}contact_id", "must be a contact id (a positive whole number)"))
    if any(s not in PB_TO_STATUS for s in message.statuses):
        violations.append(Violation(f"{prefix}statuses", "FAILURE_STATUS_UNSPECIFIED (or an unknown value) is no "
                                                         "status to filter by"))

    def moment(name: str) -> datetime | None:
        if not message.HasField(name):
            return None
        ts = getattr(message, name)
        try:
            return ts.ToDatetime(tzinfo=timezone.utc)
        except (ValueError, OverflowError):
            violations.append(Violation(f"{prefix}{name}", "not a valid timestamp"))
            return None

    return failure_view.Filters(
        store_key=message.store_key or None, code=message.code or None, kind=message.kind or None,
        contact_id=contact_id, email=message.email if message.WhichOneof("contact") == "email" else None,
        since=moment("since"), until=moment("until"),
        statuses=tuple(dict.fromkeys(PB_TO_STATUS[s] for s in message.statuses if s in PB_TO_STATUS)),
    )


def _violation(exc: failure_view.InvalidFailureQuery, prefix: str) -> Violation:
    if exc.field == "refs":
        return Violation(f"refs[{exc.index}]" if exc.index is not None else "refs", str(exc))
    if exc.field in ("operator", "reason"):
        return Violation(exc.field, str(exc))
    if exc.field == "limit":
        return Violation("page_size", str(exc))
    return Violation(f"{prefix}{_FILTER_FIELDS.get(exc.field, exc.field)}", str(exc))


def _report(report: redrive.ActionReport, response_type):
    return response_type(
        results=[pb.RedriveResult(ref=r.ref, outcome=OUTCOME_TO_PB.get(r.outcome, pb.REDRIVE_OUTCOME_UNSPECIFIED),
                                  status_name=r.status or "", message=r.message) for r in report.results],
        changed=report.changed, has_more=report.has_more,
    )


def _method(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


def _unscoped(scope: frozenset[str] | None, store_key: str) -> bool:
    """Whether a store-restricted caller's filter fails to name one of its stores."""
    return scope is not None and store_key not in scope


def _scope_message(scope: frozenset[str], field: str) -> str:
    return (f"this token may use only the stores {', '.join(sorted(scope)) or '(none)'}: set {field} to one "
            "of them")


def _operator(given: str) -> str:
    """Who acts, for the log and the audit trail: the authenticated caller's token name when there is one (with
    the name the request gives, if another), else the request's ``operator``, else ``grpc``."""
    caller = current_caller.get()
    given = given.strip()
    if caller is None:
        return given or "grpc"
    return caller.name if not given or given == caller.name else f"{caller.name} ({given})"


class FailuresServicer:
    """The redrive RPCs; mixed into ``ctdd.api.admin.AdminServicer`` (which sets ``settings`` and ``engine``)."""

    settings: Settings
    engine: Engine

    def _span(self, method: str):
        return start_span(method, kind=SpanKind.SERVER,
                          attributes={"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method})

    async def ListFailures(self, request: pb.ListFailuresRequest, context: grpc.aio.ServicerContext):
        with self._span("ListFailures"):
            violations: list[Violation] = []
            filters = _filters(request.filter, "filter.", violations)
            if request.page_size < 0:
                violations.append(Violation("page_size", "must not be negative"))
            if violations:
                await abort(context, code_pb2.INVALID_ARGUMENT, "invalid ListFailuresRequest",
                            [bad_request(violations)])
                return
            scope = store_scope()
            if _unscoped(scope, request.filter.store_key):
                await refuse_store(context, _method("ListFailures"), _scope_message(scope, "filter.store_key"))
                return
            limit = min(request.page_size or failure_view.DEFAULT_LIMIT, failure_view.MAX_LIMIT)
            try:
                views, has_more = await asyncio.to_thread(failure_view.list_failures, self.engine, filters, limit=limit,
                                                          settings=self.settings)
            except failure_view.InvalidFailureQuery as exc:
                await abort(context, code_pb2.INVALID_ARGUMENT, "invalid ListFailuresRequest",
                            [bad_request([_violation(exc, "filter.")])])
                return
            return pb.ListFailuresResponse(failures=[failure_message(v) for v in views], has_more=has_more)

    async def GetFailure(self, request: pb.GetFailureRequest, context: grpc.aio.ServicerContext):
        with self._span("GetFailure"):
            try:
                ref = failure_view.parse_ref(request.ref)
            except failure_view.InvalidFailureQuery as exc:
                await abort(context, code_pb2.INVALID_ARGUMENT, "invalid GetFailureRequest",
                            [bad_request([Violation("ref", str(exc))])])
                return
            detail = await asyncio.to_thread(failure_view.get_failure, self.engine, ref)
            scope = store_scope()
            if detail is not None and scope is not None and detail.failure.store_key not in scope:
                await refuse_store(context, _method("GetFailure"), f"no failure {ref}", grpc.StatusCode.NOT_FOUND,
                                   logged=f"{ref} is a failure of another store than this token's")
                return
            if detail is None:
                await abort(context, code_pb2.NOT_FOUND, f"no failure {ref}")
                return
            return pb.GetFailureResponse(
                failure=failure_message(detail.failure),
                attempts=[pb.DeliveryAttempt(attempt=a.attempt, outcome=a.outcome, response_code=a.response_code or 0,
                                             error=a.error or "", worker=a.worker or "",
                                             started_at=_timestamp(a.started_at), finished_at=_timestamp(a.finished_at))
                          for a in detail.attempts],
                violations=[pb.RejectedViolation(field=f, description=d) for f, d in detail.violations],
            )

    async def RetryFailures(self, request: pb.RetryFailuresRequest, context: grpc.aio.ServicerContext):
        with self._span("RetryFailures"):
            return await self._act(request, context, "retry", pb.RetryFailuresResponse)

    async def SkipFailures(self, request: pb.SkipFailuresRequest, context: grpc.aio.ServicerContext):
        with self._span("SkipFailures"):
            return await self._act(request, context, "skip", pb.SkipFailuresResponse)

    async def _act(self, request, context: grpc.aio.ServicerContext, action: str, response_type):
        name = type(request).__name__
        violations: list[Violation] = []
        by_filter = request.HasField("all_matching")
        if by_filter == bool(request.refs):
            violations.append(Violation("refs", "give either refs or all_matching"))
        if len(request.refs) > failure_view.MAX_BULK:  # as all_matching acts on this many at most per call
            violations.append(Violation("refs", f"at most {failure_view.MAX_BULK} refs per call"))
        refs: list[failure_view.Ref] = []
        for i, text in enumerate(request.refs):
            try:
                refs.append(failure_view.parse_ref(text, i))
            except failure_view.InvalidFailureQuery as exc:
                violations.append(_violation(exc, ""))
        filters = _filters(request.all_matching, "all_matching.", violations) if by_filter else None
        if violations:
            await abort(context, code_pb2.INVALID_ARGUMENT, f"invalid {name}", [bad_request(violations)])
            return
        scope = store_scope()
        if by_filter and _unscoped(scope, request.all_matching.store_key):
            await refuse_store(context, _method(name.removesuffix("Request")),
                               _scope_message(scope, "all_matching.store_key"))
            return
        refs = list(dict.fromkeys(refs))
        hidden: set[failure_view.Ref] = set()
        if scope is not None and refs:  # rows of other stores are answered as if there were none
            stores = await asyncio.to_thread(failure_view.stores_of, self.engine, refs)
            hidden = {ref for ref in refs if ref in stores and stores[ref] not in scope}
            if hidden:
                _log_hidden(context, _method(name.removesuffix("Request")), hidden)
        operator = _operator(request.operator)
        run = redrive.retry if action == "retry" else redrive.skip
        try:
            report = await asyncio.to_thread(
                run, self.engine, [ref for ref in refs if ref not in hidden], filters=filters, operator=operator,
                reason=request.reason, dry_run=request.dry_run, settings=self.settings)
        except failure_view.InvalidFailureQuery as exc:
            await abort(context, code_pb2.INVALID_ARGUMENT, f"invalid {name}",
                        [bad_request([_violation(exc, "all_matching.")])])
            return
        if hidden:
            acted = iter(report.results)
            report = redrive.ActionReport(
                [redrive.ActionResult(str(ref), "not_found", None, "no such failure") if ref in hidden
                 else next(acted) for ref in refs], report.has_more)
        return _report(report, response_type)


def _log_hidden(context, method: str, hidden: set[failure_view.Ref]) -> None:
    shown = ", ".join(sorted(str(ref) for ref in hidden)[:20])
    log_refusal(context, method, current_caller.get(),
                 f"references of another store than this token's answered not found: {shown}")
