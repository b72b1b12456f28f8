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
from service.api_convert import InvalidRequest, Violation, parse_sync_contact
from service.config import Settings
from service.contact_sync import ContactSync, NewContactNeedsAddress, log_rejected
from service.plugins import PluginConflict
from service.telemetry import tracer
from service.transactions import TransactionRunner

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SyncService"].full_name
#: hard transport limit; the per-request business limit (settings.max_request_bytes) is checked in
#: api_convert so that oversized requests get INVALID_ARGUMENT with a field violation
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


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
                 on_enqueued=None):
        self.settings = settings
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
        )

    async def TrackEvent(self, request, context):
        await _abort(context, code_pb2.UNIMPLEMENTED, "TrackEvent is not implemented yet")

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
