"""The operator's gRPC service (``ctdd.sync.v1.AdminService``): what ctdd-sync decided for a contact, and the
redrive of what failed (``ctdd.api.failures``).

``ListTriggers`` reads the program triggers of one contact (``ctdd.programs.queries``) and never writes. The
database is read in a worker thread so the event loop keeps serving. Identifiers in requests are personal
data: they are matched, never logged nor put on spans. A caller whose token is limited to some stores must name
one of them in ``store_key`` (PERMISSION_DENIED otherwise) and sees only that store's triggers and counts (a
Dotdigital account, and so a contact, may be shared by several stores). ``GetContact`` reads everything about one
contact (``ctdd.ingest.contact_view``, converted by ``ctdd.api.contact_convert``); its reply holds personal data,
which is returned to the operator and never logged.
"""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import code_pb2
from opentelemetry.trace import SpanKind
from sqlalchemy.engine import Engine

from ctdd.api.auth import refuse_store, store_scope
from ctdd.api.contact_convert import contact_response
from ctdd.api.convert import Violation, to_timestamp as _timestamp
from ctdd.api.errors import abort, bad_request
from ctdd.api.failures import FailuresServicer
from ctdd.config import Settings
from ctdd.ingest.contact_view import DEFAULT_MESSAGES, DEFAULT_TRIGGERS, MAX_ROWS, contact_card
from ctdd.programs.queries import (
    DEFAULT_LIMIT, MAX_LIMIT, InvalidQuery, TriggerSummary, TriggerView, contact_account, find_contact,
    list_triggers, trigger_summary,
)
from ctdd.sync.v1 import admin_service_pb2 as pb
from ctdd.sync.v1 import admin_service_pb2_grpc as pb_grpc
from ctdd.telemetry import start_span

ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdminService"].full_name

#: stored status <-> wire enum
STATUS_TO_PB = {
    "pending": pb.TRIGGER_STATUS_PENDING,
    "claimed": pb.TRIGGER_STATUS_CLAIMED,
    "enrolling": pb.TRIGGER_STATUS_ENROLLING,
    "sent": pb.TRIGGER_STATUS_SENT,
    "skipped": pb.TRIGGER_STATUS_SKIPPED,
    "cancelled": pb.TRIGGER_STATUS_CANCELLED,
}
PB_TO_STATUS = {value: name for name, value in STATUS_TO_PB.items()}
#: argument names of ctdd.programs.queries -> request field names (None: the ``contact`` oneof itself)
_FIELDS = {None: "contact", "mobile": "mobile_number", "limit": "page_size"}




def trigger_message(view: TriggerView) -> pb.Trigger:
    return pb.Trigger(
        id=view.id, contact_id=str(view.contact_id), store_key=view.store_key, account=view.account,
        program_kind=view.program_kind, program_id=view.program_id or 0, subject_type=view.subject_type,
        subject_id=view.subject_id, subject_version=view.subject_version, step=view.step,
        status=STATUS_TO_PB.get(view.status, pb.TRIGGER_STATUS_UNSPECIFIED), status_name=view.status,
        due_at=_timestamp(view.due_at), decided_at=_timestamp(view.decided_at), reason=view.reason or "",
        enrolment_id=view.enrolment_id or "", attempts=view.attempts, created_at=_timestamp(view.created_at),
    )


def summary_message(summary: TriggerSummary) -> pb.TriggerSummary:
    return pb.TriggerSummary(
        statuses=[pb.TriggerStatusCount(status=STATUS_TO_PB.get(status, pb.TRIGGER_STATUS_UNSPECIFIED),
                                        status_name=status, count=count)
                  for status, count in summary.by_status.items()],
        skipped_reasons=[pb.TriggerReasonCount(reason=reason, count=count)
                         for reason, count in summary.skipped_by_reason.items()],
        pending_due=summary.pending_due,
        enrolment_budgets=[pb.EnrolmentBudget(account=b.account, calls_last_hour=b.calls_last_hour,
                                              calls_per_hour=b.calls_per_hour)
                           for b in summary.enrolment_budgets],
    )


class AdminServicer(FailuresServicer, pb_grpc.AdminServiceServicer):
    """AdminService, served on the same grpc.aio server as SyncService: ListTriggers and GetContact read only;
    the redrive RPCs (ListFailures, GetFailure, RetryFailures, SkipFailures) are ``ctdd.api.failures``'."""

    def __init__(self, settings: Settings, engine: Engine):
        self.settings = settings
        self.engine = engine

    async def ListTriggers(self, request: pb.ListTriggersRequest, context: grpc.aio.ServicerContext):
        selector = request.WhichOneof("contact")
        with start_span(
            "ListTriggers", kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": ADMIN_SERVICE_NAME, "rpc.method": "ListTriggers",
                        "ctdd.selector": selector or ""},
        ):
            return await self._list_triggers(request, selector, context)

    async def _list_triggers(self, request: pb.ListTriggersRequest, selector: str | None,
                             context: grpc.aio.ServicerContext):
        violations: list[Violation] = []
        if selector is None:
            violations.append(Violation("contact", "set one of email, customer_id (with store_key), mobile_number "
                                                   "or contact_id"))
        if request.page_size < 0:
            violations.append(Violation("page_size", "must not be negative"))
        if any(s not in PB_TO_STATUS for s in request.statuses):
            violations.append(Violation("statuses", "TRIGGER_STATUS_UNSPECIFIED (or an unknown value) is no status "
                                                    "to filter by"))
        if violations:
            await abort(context, code_pb2.INVALID_ARGUMENT, "invalid ListTriggersRequest", [bad_request(violations)])
            return
        scope = store_scope()
        if scope is not None and request.store_key not in scope:  # a named store was checked by ctdd.api.auth
            await refuse_store(context, f"/{ADMIN_SERVICE_NAME}/ListTriggers",
                               f"this token may use only the stores {', '.join(sorted(scope)) or '(none)'}: set "
                               "store_key to one of them")
            return
        limit = min(request.page_size or DEFAULT_LIMIT, MAX_LIMIT)
        statuses = [PB_TO_STATUS[s] for s in request.statuses] or None
        selected = {"email": None, "customer_id": None, "mobile": None, "contact_id": None}
        selected["mobile" if selector == "mobile_number" else selector] = getattr(request, selector)
        try:
            found = await asyncio.to_thread(self._read, selected, request.store_key or None, statuses, limit,
                                            scope is not None)
        except InvalidQuery as exc:
            field = _FIELDS.get(exc.field, exc.field)
            await abort(context, code_pb2.INVALID_ARGUMENT, "invalid ListTriggersRequest",
                        [bad_request([Violation(field, str(exc))])])
            return
        if found is None:
            await abort(context, code_pb2.NOT_FOUND, f"no contact has this {selector.replace('_', ' ')}"
                        + (f" in store {request.store_key!r}" if request.store_key else ""))
            return
        contact_id, account, views, summary = found
        matched = sum(count for status, count in summary.by_status.items() if statuses is None or status in statuses)
        return pb.ListTriggersResponse(
            contact_id=str(contact_id), account=account or "", triggers=[trigger_message(v) for v in views],
            has_more=matched > len(views), summary=summary_message(summary),
        )

    async def GetContact(self, request: pb.GetContactRequest, context: grpc.aio.ServicerContext):
        selector = request.WhichOneof("contact")
        with start_span(
            "GetContact", kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": ADMIN_SERVICE_NAME, "rpc.method": "GetContact",
                        "ctdd.selector": selector or ""},
        ):
            return await self._get_contact(request, selector, context)

    async def _get_contact(self, request: pb.GetContactRequest, selector: str | None,
                           context: grpc.aio.ServicerContext):
        violations: list[Violation] = []
        if selector is None:
            violations.append(Violation("contact", "set one of email, customer_id (with store_key), mobile_number "
                                                   "or contact_id"))
        for name in ("message_limit", "trigger_limit"):
            if getattr(request, name) < 0:
                violations.append(Violation(name, "must not be negative"))
        if violations:
            await abort(context, code_pb2.INVALID_ARGUMENT, "invalid GetContactRequest", [bad_request(violations)])
            return
        scope = store_scope()
        if scope is not None and request.store_key not in scope:  # a named store was checked by ctdd.api.auth
            await refuse_store(context, f"/{ADMIN_SERVICE_NAME}/GetContact",
                               f"this token may use only the stores {', '.join(sorted(scope)) or '(none)'}: set "
                               "store_key to one of them")
            return
        selected = {"email": None, "customer_id": None, "mobile": None, "contact_id": None}
        selected["mobile" if selector == "mobile_number" else selector] = getattr(request, selector)
        store_key = request.store_key or None

        def read():
            contact_id = find_contact(self.engine, store_key=store_key, settings=self.settings, **selected)
            return None if contact_id is None else contact_card(
                self.engine, contact_id, settings=self.settings, store_key=store_key if scope is not None else None,
                message_limit=min(request.message_limit or DEFAULT_MESSAGES, MAX_ROWS),
                trigger_limit=min(request.trigger_limit or DEFAULT_TRIGGERS, MAX_ROWS))

        try:
            card = await asyncio.to_thread(read)
        except InvalidQuery as exc:
            field = _FIELDS.get(exc.field, exc.field)
            await abort(context, code_pb2.INVALID_ARGUMENT, "invalid GetContactRequest",
                        [bad_request([Violation(field, str(exc))])])
            return
        if card is None:
            await abort(context, code_pb2.NOT_FOUND, f"no contact has this {selector.replace('_', ' ')}"
                        + (f" in store {request.store_key!r}" if request.store_key else ""))
            return
        return contact_response(card, [trigger_message(t) for t in card.triggers])

    def _read(self, selected: dict, store_key: str | None, statuses: list[str] | None, limit: int,
              only_store: bool = False):
        """The contact, its account, up to ``limit`` triggers and the summary of all its triggers (``only_store``:
        of ``store_key`` only, for a store-restricted caller); None when no contact matches. Runs in a worker
        thread."""
        contact_id = find_contact(self.engine, store_key=store_key, settings=self.settings, **selected)
        if contact_id is None:
            return None
        scoped = store_key if only_store else None
        views = list_triggers(self.engine, contact_id, statuses=statuses, limit=limit, store_key=scoped)
        summary = trigger_summary(self.engine, scoped, contact_id=contact_id, settings=self.settings)
        return contact_id, contact_account(self.engine, contact_id), views, summary
