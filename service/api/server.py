"""The gRPC layer: SyncService servicer, error mapping and the grpc.aio server (which also serves the
operator's AdminService, ``ctdd.api.admin``).

Errors carry google.rpc rich details in trailing metadata (grpcio-status), built by ``ctdd.api.errors``.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import SpanKind

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from ctdd.sync.v1 import admin_service_pb2_grpc as admin_pb_grpc
from ctdd.api.admin import ADMIN_SERVICE_NAME, AdminServicer
from ctdd.api.auth import store_scope
from ctdd.api.convert import InvalidRequest, Violation, parse_sync_contact
from ctdd.api.limits import connection_options
from ctdd.api.decoding import DecodeGuard
from ctdd.api.security import ServerSecurity
from ctdd.api.errors import abort as _abort, bad_request  # noqa: F401 (bad_request: also imported from here)
from ctdd.api.errors import MAX_MESSAGE
from ctdd.domain.echo import clip
from ctdd.domain.notifications import MAX_NOTIFICATIONS, InvalidDelivery, parse_delivery
from ctdd.config import Settings
from ctdd.ingest.contact_sync import ContactSync, NewContactNeedsAddress, log_rejected
from ctdd.ingest.events import EventProcessor, InvalidEvent, NotConfigured, NotificationOutcome, RetryableEventError
from ctdd.api.track_event import prepare_request, queued_event
from ctdd.api.catalog_export import export_catalog
from ctdd.ingest.inbox import InboxWriter, QueuedEvent
from ctdd.hooks.manager import PluginConflict, PluginFailed
from ctdd.telemetry import grpc_server_interceptors, start_span
from ctdd.db.transactions import TransactionRunner

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SyncService"].full_name
#: health service names of delivery: "ctdd.account/<account>" is NOT_SERVING while that Dotdigital account is
#: paused because it refused the credentials (401/403); "ctdd.delivery" is NOT_SERVING while any account is
#: (the readiness of delivery). "" and the SyncService stay SERVING: updates are still accepted and kept.
ACCOUNT_HEALTH_PREFIX = "ctdd.account/"
DELIVERY_HEALTH_NAME = "ctdd.delivery"
#: hard transport limit; the per-request business limit (settings.max_request_bytes) is checked in
#: api_convert so that oversized requests get INVALID_ARGUMENT with a field violation
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_BATCH_EVENTS = 500
#: the notifications all deliveries of one TrackEventBatch carry together (each delivery: at most
#: ctdd.domain.notifications.MAX_NOTIFICATIONS); above it the whole call is INVALID_ARGUMENT, nothing written
MAX_BATCH_NOTIFICATIONS = 5_000
_OUTCOMES = {
    "applied": pb.EVENT_OUTCOME_APPLIED,
    "duplicate": pb.EVENT_OUTCOME_DUPLICATE,
    "stale": pb.EVENT_OUTCOME_STALE,
    "ignored": pb.EVENT_OUTCOME_IGNORED,
}
#: the answers to a queued event (shared: a response is only read, by the serializer or a copy)
_QUEUED = pb.TrackEventResponse(queued=True)
_DUPLICATE = pb.TrackEventResponse(duplicate=True)


class SyncServicer(pb_grpc.SyncServiceServicer):
    def __init__(self, settings: Settings, contact_sync: ContactSync, transactions: TransactionRunner,
                 on_enqueued=None, events: EventProcessor | None = None, inbox: InboxWriter | None = None,
                 on_queued=None):
        self.settings = settings
        self.events = events
        self.inbox = inbox
        self.on_queued = on_queued or (lambda: None)
        self.contact_sync = contact_sync
        self.transactions = transactions
        self.on_enqueued = on_enqueued or (lambda: None)

    async def SyncContact(self, request: pb.SyncContactRequest, context: grpc.aio.ServicerContext):
        with start_span(
            "SyncContact", kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": "SyncContact",
                        "ctdd.store_key": request.store_key},
        ) as span:
            response = await self._sync_contact(request, context)
            if response is not None:
                span.set_attribute("ctdd.changed", response.changed)
                span.set_attribute("ctdd.created", response.created)
            return response

    async def _sync_contact(self, request: pb.SyncContactRequest, context: grpc.aio.ServicerContext):
        source = request.source
        try:
            contact = parse_sync_contact(request, self.settings)
        except InvalidRequest as exc:
            await asyncio.to_thread(
                log_rejected, self.contact_sync.engine, operation="SyncContact", reason=str(exc),
                store_key=request.store_key or None, record_type=source.resource_type or None,
                record_id=source.resource_id or None, record_version=source.version or None,
                violations=[{"field": v.field, "description": v.description} for v in exc.violations],
            )
            await _abort(context, code_pb2.INVALID_ARGUMENT, "invalid SyncContactRequest", [bad_request(exc.violations)])
            return
        try:
            unit = self.contact_sync.prepare(contact)
            result = await self.transactions.run(unit)
        except NewContactNeedsAddress:
            reason = "new contact needs an email address or a mobile number (no identifier matched a known contact)"
            await asyncio.to_thread(
                log_rejected, self.contact_sync.engine, operation="SyncContact", reason=reason,
                store_key=request.store_key, record_type=source.resource_type or None,
                record_id=source.resource_id or None, record_version=source.version or None,
            )
            await _abort(
                context, code_pb2.FAILED_PRECONDITION, reason,
                [error_details_pb2.PreconditionFailure(violations=[
                    error_details_pb2.PreconditionFailure.Violation(type="IDENTITY", subject="identity", description=reason)
                ])],
            )
            return
        except PluginConflict as exc:
            log.error("plugin conflict for store %s: %s", request.store_key, exc)
            await _abort(context, code_pb2.FAILED_PRECONDITION, f"plugin configuration error: {exc}")
            return
        except PluginFailed as exc:  # the request is fine, the deployment's plugin is not: nothing was written
            reason = f"contact not synced: {exc}"
            await asyncio.to_thread(
                log_rejected, self.contact_sync.engine, operation="SyncContact", reason=reason,
                store_key=request.store_key, record_type=source.resource_type or None,
                record_id=source.resource_id or None, record_version=source.version or None,
            )
            await _abort(context, code_pb2.FAILED_PRECONDITION, reason, [_plugin_failure(exc)])
            return
        if result.outbox_message_ids:
            self.on_enqueued()
        return pb.SyncContactResponse(
            contact_id=str(result.contact_id),
            dotdigital_contact_id=result.dotdigital_contact_id or 0,
            changed=result.changed,
            outbox_message_ids=result.outbox_message_ids,
            stale_fields=result.stale_fields,
            created=result.created,
            conflicts=[
                pb.IdentityConflict(kind=c.kind, owner_contact_id=str(c.owner_contact_id), rule=c.rule)
                for c in result.conflicts
            ],
            suppression_reasons=result.suppression_reasons,
            withheld_fields=result.withheld_fields,
        )

    # -- TrackEvent -----------------------------------------------------------------------------
    async def _apply(self, request: pb.TrackEventRequest) -> pb.TrackEventResponse:
        """Apply one event now; raises InvalidRequest / InvalidEvent (poison), RetryableEventError, or
        PluginFailed (a plugin failed in a hook: FAILED_PRECONDITION)."""
        if self.events is None:
            raise RetryableEventError("event processing is not configured")
        steps = await prepare_request(self.events, self.settings, request, store_scope())
        outcomes = [await self.events.finish(step) for step in steps]
        return self._response(outcomes)

    def _response(self, outcomes: list[NotificationOutcome], *, queued: bool = False) -> pb.TrackEventResponse:
        ids = [mid for o in outcomes for mid in o.outbox_message_ids]
        if ids:
            self.on_enqueued()
        return pb.TrackEventResponse(
            outbox_message_ids=ids,
            duplicate=bool(outcomes) and all(o.outcome == "duplicate" for o in outcomes),
            stale=bool(outcomes) and all(o.outcome == "stale" for o in outcomes),
            queued=queued,
            notifications=[
                pb.NotificationResult(
                    dedupe_key=o.dedupe_key, resource_type=o.resource_type, resource_id=o.resource_id,
                    message_type=o.message_type, outcome=_OUTCOMES[o.outcome], reason=o.reason,
                    contact_id=str(o.contact_id) if o.contact_id is not None else "",
                    outbox_message_ids=o.outbox_message_ids, store_keys=o.store_keys,
                )
                for o in outcomes
            ],
        )

    async def _queue(self, requests: list[pb.TrackEventRequest]) -> list[pb.TrackEventResponse | Exception]:
        """Validate queued events and store the valid ones in the inbox with one write.

        Per request: its response, or the InvalidRequest / InvalidEvent it raised.
        """
        if self.events is None or self.inbox is None:
            return [RetryableEventError("event processing is not configured")] * len(requests)
        results: list[pb.TrackEventResponse | Exception | None] = []
        to_store: list[tuple[int, QueuedEvent]] = []
        for request in requests:
            try:
                checked = queued_event(self.events, self.settings, request, store_scope())
            except (InvalidRequest, InvalidEvent) as exc:
                # kept without its traceback: its frames (this one included) would hold the request in a cycle
                results.append(exc.with_traceback(None))
                continue
            if isinstance(checked, NotificationOutcome):
                results.append(self._response([checked]))
                continue
            to_store.append((len(results), checked))
            results.append(None)
        if to_store:
            stored = await self.inbox.add([q for _, q in to_store])
            for (index, _), fresh in zip(to_store, stored):
                results[index] = _QUEUED if fresh else _DUPLICATE
            if any(stored):
                self.on_queued()
        return results  # type: ignore[return-value]

    async def _track(self, request: pb.TrackEventRequest) -> pb.TrackEventResponse:
        if request.processing == pb.PROCESSING_QUEUED:
            result = (await self._queue([request]))[0]
            if isinstance(result, Exception):
                try:
                    raise result
                finally:
                    del result  # no cycle frame -> exception -> traceback -> frame keeping the request alive
            return result
        return await self._apply(request)

    async def _log_rejected_event(self, request: pb.TrackEventRequest, reason: str, violations=None) -> None:
        await asyncio.to_thread(
            log_rejected, self.contact_sync.engine, operation="TrackEvent", reason=reason,
            store_key=request.store_key or None, record_type=request.WhichOneof("payload"),
            violations=violations,
        )

    async def TrackEvent(self, request: pb.TrackEventRequest, context: grpc.aio.ServicerContext):
        with start_span(
            "TrackEvent", kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": "TrackEvent",
                        "ctdd.store_key": request.store_key},
        ):
            try:
                return await self._track(request)
            except InvalidRequest as exc:
                await self._log_rejected_event(request, str(exc), [{"field": v.field, "description": v.description}
                                                                  for v in exc.violations])
                await _abort(context, code_pb2.INVALID_ARGUMENT, "invalid TrackEventRequest",
                             [bad_request(exc.violations)])
            except InvalidEvent as exc:
                await self._log_rejected_event(request, str(exc))
                field, _, description = str(exc).partition(": ")
                await _abort(context, code_pb2.INVALID_ARGUMENT, str(exc),
                             [bad_request([Violation(field, description or str(exc))])])
            except PluginFailed as exc:  # the request is fine, the deployment's plugin is not
                reason = f"event not applied: {exc}"
                await self._log_rejected_event(request, reason)
                await _abort(context, code_pb2.FAILED_PRECONDITION, reason, [_plugin_failure(exc)])
            except NotConfigured as exc:  # the request is fine, the deployment's configuration lacks what it needs
                reason = f"event not applied: {exc}"
                await self._log_rejected_event(request, reason)
                await _abort(context, code_pb2.FAILED_PRECONDITION, reason, [_not_configured(exc)])
            except RetryableEventError as exc:
                log.warning("TrackEvent for store %s not processed now: %s", clip(request.store_key, 100), exc)
                await _abort(context, code_pb2.UNAVAILABLE, f"not processed, retry later: {exc}")
            except Exception as exc:  # a bug: nothing was committed; the caller may retry
                log.exception("TrackEvent for store %s failed", clip(request.store_key, 100))
                await _abort(context, code_pb2.INTERNAL, f"internal error ({type(exc).__name__}); nothing was written")

    async def TrackEventBatch(self, request: pb.TrackEventBatchRequest, context: grpc.aio.ServicerContext):
        if len(request.events) > MAX_BATCH_EVENTS:
            await _abort(context, code_pb2.INVALID_ARGUMENT, "too many events",
                         [bad_request([Violation("events", f"at most {MAX_BATCH_EVENTS} events per batch")])])
            return
        if _notifications_above(request.events, MAX_BATCH_NOTIFICATIONS):
            await _abort(context, code_pb2.INVALID_ARGUMENT, "too many notifications",
                         [bad_request([Violation("events", f"at most {MAX_BATCH_NOTIFICATIONS} notifications in all "
                                                           "the deliveries of one batch: split it")])])
            return
        results: list[pb.TrackEventResult | None] = [None] * len(request.events)
        queued = [(i, e) for i, e in enumerate(request.events) if e.processing == pb.PROCESSING_QUEUED]
        if queued:
            # The queued events of a batch are validated one by one and stored with one write.
            try:
                queued_outcomes = await self._queue([e for _, e in queued])
            except Exception as exc:  # the inbox write failed: nothing of them was stored
                queued_outcomes = [exc] * len(queued)
            for (index, event), outcome in zip(queued, queued_outcomes):
                results[index] = await self._batch_result(index, event, outcome)
        for index in [i for i, result in enumerate(results) if result is None]:
            event = request.events[index]
            try:
                outcome: pb.TrackEventResponse | Exception = await self._apply(event)
            except Exception as exc:  # mapped to the event's result below
                outcome = exc
            results[index] = await self._batch_result(index, event, outcome)
            del outcome  # an exception's traceback holds this frame: no cycle keeping the request alive
        return pb.TrackEventBatchResponse(results=results)

    async def _batch_result(self, index: int, event: pb.TrackEventRequest,
                            outcome: pb.TrackEventResponse | Exception) -> pb.TrackEventResult:
        if isinstance(outcome, pb.TrackEventResponse):
            return pb.TrackEventResult(index=index, code=code_pb2.OK, response=outcome)
        if isinstance(outcome, InvalidRequest):
            await self._log_rejected_event(event, str(outcome), [{"field": v.field, "description": v.description}
                                                                for v in outcome.violations])
            return pb.TrackEventResult(index=index, code=code_pb2.INVALID_ARGUMENT,
                                       message=clip(str(outcome), MAX_MESSAGE))
        if isinstance(outcome, InvalidEvent):
            await self._log_rejected_event(event, str(outcome))
            return pb.TrackEventResult(index=index, code=code_pb2.INVALID_ARGUMENT,
                                       message=clip(str(outcome), MAX_MESSAGE))
        if isinstance(outcome, (PluginFailed, NotConfigured)):
            # not retryable until the plugin or the configuration is fixed: the adapter dead-letters it
            reason = f"event not applied: {outcome}"
            await self._log_rejected_event(event, reason)
            return pb.TrackEventResult(index=index, code=code_pb2.FAILED_PRECONDITION,
                                       message=clip(reason, MAX_MESSAGE), retryable=False)
        if isinstance(outcome, RetryableEventError):
            return pb.TrackEventResult(index=index, code=code_pb2.UNAVAILABLE, message=str(outcome), retryable=True)
        # a bug: report it for this event only, the adapter retries it later
        log.error("TrackEventBatch: event %d failed", index, exc_info=outcome)
        return pb.TrackEventResult(index=index, code=code_pb2.INTERNAL, message=type(outcome).__name__,
                                   retryable=True)

    async def ExportCatalog(self, request, context):
        # ctdd.api.catalog_export; ``catalog`` (a CatalogExporter) is set by the runtime
        async for progress in export_catalog(getattr(self, "catalog", None), self.settings, request, context):
            yield progress


def _plugin_failure(exc: PluginFailed) -> error_details_pb2.PreconditionFailure:
    """The rich error detail of a call a plugin failed: the plugin (subject) and the hook (type PLUGIN_FAILED)."""
    return error_details_pb2.PreconditionFailure(violations=[error_details_pb2.PreconditionFailure.Violation(
        type="PLUGIN_FAILED", subject=f"plugin/{exc.plugin}", description=clip(str(exc), MAX_MESSAGE))])


def _not_configured(exc: NotConfigured) -> error_details_pb2.PreconditionFailure:
    """The rich error detail of an event that needs what the deployment has not configured (type NOT_CONFIGURED)."""
    return error_details_pb2.PreconditionFailure(violations=[error_details_pb2.PreconditionFailure.Violation(
        type="NOT_CONFIGURED", subject="commercetools", description=clip(str(exc), MAX_MESSAGE))])


def _notifications_above(events, budget: int) -> bool:
    """Whether the commercetools deliveries of a batch carry more than ``budget`` notifications together (a
    malformed delivery counts none: it is refused on its own). Stops counting as soon as it is above."""
    if sum(1 for e in events if e.WhichOneof("payload") == "commercetools_delivery") * MAX_NOTIFICATIONS <= budget:
        return False
    count = 0
    for event in events:
        if event.WhichOneof("payload") != "commercetools_delivery":
            continue
        try:
            count += len(parse_delivery(event.commercetools_delivery))
        except InvalidDelivery:
            continue
        if count > budget:
            return True
    return False


class GrpcServer:
    """grpc.aio server with SyncService, the operator's AdminService, health checking and reflection."""

    def __init__(self, servicer: SyncServicer, listen: str, admin: AdminServicer | None = None):
        self.listen = listen
        service = servicer.settings.service
        # TLS / mutual TLS, bearer tokens, and no open port beyond loopback (ctdd.api.security)
        self.security = ServerSecurity(service, listen=listen, caller_services=(SERVICE_NAME,))
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *connection_options(service),  # connection and stream limits (ctdd.api.limits)
            ],
            # DecodeGuard (outermost): an undecodable request is INVALID_ARGUMENT, not UNKNOWN, and a refused
            # request is not kept in memory (ctdd.api.decoding). While tracing is on, OpenTelemetry's server
            # interceptor next: the RPC's server span, continuing the caller's W3C trace (ctdd.telemetry);
            # outside the security interceptors, so a refused call has its span too.
            interceptors=[DecodeGuard(), *grpc_server_interceptors(), *self.security.interceptors],
            maximum_concurrent_rpcs=service.max_concurrent_rpcs,
        )
        pb_grpc.add_SyncServiceServicer_to_server(servicer, self.server)
        admin_pb_grpc.add_AdminServiceServicer_to_server(
            admin or AdminServicer(servicer.settings, servicer.contact_sync.engine), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.accounts = tuple(servicer.settings.accounts)  # delivery health per account (set_paused_accounts)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.server,
        )
        self.port: int | None = None

    async def start(self) -> int:
        self.port = self.security.add_port(self.server)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(ADMIN_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.set_paused_accounts(getattr(self, "_paused_accounts", frozenset()))
        return self.port

    async def set_paused_accounts(self, paused: frozenset[str]) -> None:
        """Delivery health: ``ctdd.account/<account>`` NOT_SERVING for each account in ``paused`` (refused
        credentials), SERVING for the other configured accounts; ``ctdd.delivery`` NOT_SERVING while any is."""
        self._paused_accounts = frozenset(paused)
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for account in sorted({*self.accounts, *paused}):
            await self.health.set(ACCOUNT_HEALTH_PREFIX + account, not_serving if account in paused else serving)
        await self.health.set(DELIVERY_HEALTH_NAME, not_serving if paused else serving)

    async def begin_shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
