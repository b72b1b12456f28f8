"""The gRPC layer: SyncService servicer, error mapping and the grpc.aio server.

Errors carry google.rpc rich details in trailing metadata (grpcio-status). They are sent with
``context.abort(code, details, trailing_metadata)`` rather than ``abort_with_status`` so OpenTelemetry's
aio interceptor records the real status code (engineering notes §2.2).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry.trace import SpanKind

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from service import outbox
from service.api_convert import InvalidRequest, Violation, parse_behavioural_event, parse_sync_contact
from service.config import Settings
from service.contact_sync import ContactSync, NewContactNeedsAddress, log_rejected
from service.events import EventProcessor, InvalidEvent, RetryableEventError
from service.plugins import PluginConflict
from service.telemetry import tracer
from service.transactions import TransactionRunner

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SyncService"].full_name
#: hard transport limit; the per-request business limit (settings.max_request_bytes) is checked in
#: api_convert so that oversized requests get INVALID_ARGUMENT with a field violation
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: one commercetools delivery (SQS allows 256 KB; Pub/Sub and EventBridge more)
MAX_DELIVERY_BYTES = 4 * 1024 * 1024
MAX_BATCH_EVENTS = 500
_OUTCOMES = {
    "applied": pb.EVENT_OUTCOME_APPLIED,
    "duplicate": pb.EVENT_OUTCOME_DUPLICATE,
    "stale": pb.EVENT_OUTCOME_STALE,
    "ignored": pb.EVENT_OUTCOME_IGNORED,
}


async def _abort(context: grpc.aio.ServicerContext, code: int, message: str, details: Iterable[object] = ()) -> None:
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))
    await context.abort(status.code, status.details, status.trailing_metadata)


def bad_request(violations: Iterable[Violation]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description) for v in violations
        ]
    )


class SyncServicer(pb_grpc.SyncServiceServicer):
    def __init__(self, settings: Settings, contact_sync: ContactSync, transactions: TransactionRunner,
                 on_enqueued=None, events: EventProcessor | None = None):
        self.settings = settings
        self.events = events
        self.contact_sync = contact_sync
        self.transactions = transactions
        self.on_enqueued = on_enqueued or (lambda: None)

    async def SyncContact(self, request: pb.SyncContactRequest, context: grpc.aio.ServicerContext):
        with tracer.start_as_current_span(
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
    async def _track(self, request: pb.TrackEventRequest) -> pb.TrackEventResponse:
        """Process one event; raises InvalidRequest / InvalidEvent (poison) or RetryableEventError."""
        if self.events is None:
            raise RetryableEventError("event processing is not configured")
        priority = outbox.PRIORITY_BACKFILL if request.priority == pb.PRIORITY_BACKFILL else outbox.PRIORITY_LIVE
        which = request.WhichOneof("payload")
        if which == "commercetools_delivery":
            if len(request.commercetools_delivery) > MAX_DELIVERY_BYTES:
                raise InvalidRequest([Violation("commercetools_delivery", f"larger than {MAX_DELIVERY_BYTES} bytes")])
            outcomes = await self.events.process_delivery(request.store_key, request.commercetools_delivery,
                                                          priority=priority)
        elif which == "behavioural_event":
            if self.settings.store(request.store_key) is None:
                raise InvalidRequest([Violation("store_key", f"unknown store {request.store_key!r}")])
            event = parse_behavioural_event(request.behavioural_event, self.settings, request.store_key)
            outcomes = [await self.events.process_behavioural(request.store_key, event, priority=priority)]
        else:
            raise InvalidRequest([Violation("payload", "one of commercetools_delivery or behavioural_event is required")])
        ids = [mid for o in outcomes for mid in o.outbox_message_ids]
        if ids:
            self.on_enqueued()
        return pb.TrackEventResponse(
            outbox_message_ids=ids,
            duplicate=bool(outcomes) and all(o.outcome == "duplicate" for o in outcomes),
            stale=bool(outcomes) and all(o.outcome == "stale" for o in outcomes),
            notifications=[
                pb.NotificationResult(
                    dedupe_key=o.dedupe_key, resource_type=o.resource_type, resource_id=o.resource_id,
                    message_type=o.message_type, outcome=_OUTCOMES[o.outcome], reason=o.reason,
                    contact_id=str(o.contact_id) if o.contact_id is not None else "",
                    outbox_message_ids=o.outbox_message_ids,
                )
                for o in outcomes
            ],
        )

    async def _log_rejected_event(self, request: pb.TrackEventRequest, reason: str, violations=None) -> None:
        await asyncio.to_thread(
            log_rejected, self.contact_sync.engine, operation="TrackEvent", reason=reason,
            store_key=request.store_key or None, record_type=request.WhichOneof("payload"),
            violations=violations,
        )

    async def TrackEvent(self, request: pb.TrackEventRequest, context: grpc.aio.ServicerContext):
        with tracer.start_as_current_span(
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
            except RetryableEventError as exc:
                log.warning("TrackEvent for store %s not processed now: %s", request.store_key, exc)
                await _abort(context, code_pb2.UNAVAILABLE, f"not processed, retry later: {exc}")
            except Exception as exc:  # a bug: nothing was committed; the caller may retry
                log.exception("TrackEvent for store %s failed", request.store_key)
                await _abort(context, code_pb2.INTERNAL, f"internal error ({type(exc).__name__}); nothing was written")

    async def TrackEventBatch(self, request: pb.TrackEventBatchRequest, context: grpc.aio.ServicerContext):
        if len(request.events) > MAX_BATCH_EVENTS:
            await _abort(context, code_pb2.INVALID_ARGUMENT, "too many events",
                         [bad_request([Violation("events", f"at most {MAX_BATCH_EVENTS} events per batch")])])
            return
        results = []
        for index, event in enumerate(request.events):
            try:
                response = await self._track(event)
                results.append(pb.TrackEventResult(index=index, code=code_pb2.OK, response=response))
            except InvalidRequest as exc:
                await self._log_rejected_event(event, str(exc), [{"field": v.field, "description": v.description}
                                                                for v in exc.violations])
                results.append(pb.TrackEventResult(index=index, code=code_pb2.INVALID_ARGUMENT, message=str(exc)))
            except InvalidEvent as exc:
                await self._log_rejected_event(event, str(exc))
                results.append(pb.TrackEventResult(index=index, code=code_pb2.INVALID_ARGUMENT, message=str(exc)))
            except RetryableEventError as exc:
                results.append(pb.TrackEventResult(index=index, code=code_pb2.UNAVAILABLE, message=str(exc),
                                                   retryable=True))
            except Exception as exc:  # a bug: report it for this event only, the adapter retries it later
                log.exception("TrackEventBatch: event %d failed", index)
                results.append(pb.TrackEventResult(index=index, code=code_pb2.INTERNAL,
                                                   message=type(exc).__name__, retryable=True))
        return pb.TrackEventBatchResponse(results=results)

    async def ExportCatalog(self, request, context):
        await _abort(context, code_pb2.UNIMPLEMENTED, "ExportCatalog is not implemented yet")


class GrpcServer:
    """grpc.aio server with SyncService, health checking and reflection."""

    def __init__(self, servicer: SyncServicer, listen: str):
        self.listen = listen
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_SyncServiceServicer_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port: int | None = None

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def begin_shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
