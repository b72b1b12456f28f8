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
from ctdd.domain.echo import clip

#: what one error reply may carry: gRPC sends the status (message and details) as trailing metadata, which
#: the client refuses above 16 KiB (RESOURCE_EXHAUSTED instead of the real error); these caps keep a reply
#: below 8 KiB whatever the input
MAX_MESSAGE = 500
MAX_VIOLATIONS = 16
MAX_FIELD = 160
MAX_DESCRIPTION = 240


async def abort(context: grpc.aio.ServicerContext, code: int, message: str, details: Iterable[object] = ()) -> None:
    """End the call with ``code`` (a google.rpc code), ``message`` and the rich ``details`` (protobuf messages)."""
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = rpc_status.to_status(status_pb2.Status(code=code, message=clip(message, MAX_MESSAGE), details=packed))
    await context.abort(status.code, status.details, status.trailing_metadata)


def bad_request(violations: Iterable[Violation]) -> error_details_pb2.BadRequest:
    """A google.rpc.BadRequest detail with one field violation per problem (at most :data:`MAX_VIOLATIONS`,
    the last one then saying how many more there were; fields and descriptions capped)."""
    violations = list(violations)
    shown = violations[:MAX_VIOLATIONS]
    if len(violations) > MAX_VIOLATIONS:
        shown = violations[:MAX_VIOLATIONS - 1] + [
            Violation("", f"and {len(violations) - MAX_VIOLATIONS + 1} more violations")]
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=clip(v.field, MAX_FIELD),
                                                        description=clip(v.description, MAX_DESCRIPTION))
            for v in shown
        ]
    )


def field_violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of the BadRequest detail of an error reply (none when it has none): what a
    client of the API (``ctdd simulate``) shows of an INVALID_ARGUMENT."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # trailing metadata inconsistent with the call's code/message
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out
