"""Rich gRPC errors shared by the servicers (SyncService in ``ctdd.api.server``, AdminService in
``ctdd.api.admin``).

Errors carry google.rpc rich details in trailing metadata (grpcio-status). They are sent with
``context.abort(code, details, trailing_metadata)`` rather than ``abort_with_status`` so OpenTelemetry's
aio interceptor records the real status code.
"""

from __future__ import annotations

from typing import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ctdd.api.convert import Violation


async def abort(context: grpc.aio.ServicerContext, code: int, message: str, details: Iterable[object] = ()) -> None:
    """End the call with ``code`` (a google.rpc code), ``message`` and the rich ``details`` (protobuf messages)."""
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))
    await context.abort(status.code, status.details, status.trailing_metadata)


def bad_request(violations: Iterable[Violation]) -> error_details_pb2.BadRequest:
    """A google.rpc.BadRequest detail with one field violation per problem."""
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description) for v in violations
        ]
    )
