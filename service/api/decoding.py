"""Requests that cannot be decoded are refused INVALID_ARGUMENT, not UNKNOWN; a refused request is not kept.

grpc decodes a request with the handler's deserializer before the servicer sees it; bytes that are not a
valid protobuf message of the method's type (corrupt wire format, or messages nested deeper than protobuf's
limit of 100, e.g. a 200-deep google.protobuf.Struct) made the server answer UNKNOWN, which callers treat as
retryable. :class:`DecodeGuard` wraps the deserializer of every unary-request method: a request that fails to
decode reaches no servicer and is answered INVALID_ARGUMENT with a field violation (and logged).

A call refused by ``ctdd.api.auth`` (no or unknown token) is never decoded: its handler's deserializer ignores
the bytes, so it is answered UNAUTHENTICATED whatever it carries. A response-streaming behaviour may be an async
generator or a coroutine (that aborts, or returns an async iterable): both are served.

It is the outermost interceptor, so its frame is the last one an error raised by a handler passes through:
there it drops the error's traceback (see :func:`_release`), so that no rejected request stays in memory.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2

from ctdd.api.convert import Violation
from ctdd.api.errors import abort, bad_request

log = logging.getLogger(__name__)


class _Undecodable:
    """What the guarded deserializer returns for bytes it could not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _guarded(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            text = str(exc)
            reason = ("messages are nested too deeply (protobuf allows 100 levels)" if "Depth" in text
                      or isinstance(exc, RecursionError) else "not a valid protobuf message of the method's type")
            return _Undecodable(reason)

    return decode


def _refusing(method: str, behaviour: Callable, streaming: bool) -> Callable:
    async def refuse(request: _Undecodable, context: grpc.aio.ServicerContext) -> None:
        log.warning("refused an undecodable %s request: %s", method, request.reason)
        await abort(context, code_pb2.INVALID_ARGUMENT, f"undecodable request: {request.reason}",
                    [bad_request([Violation("", request.reason)])])

    if streaming:
        async def stream(request, context):
            if isinstance(request, _Undecodable):
                await refuse(request, context)
                return
            replies = None
            try:
                replies = behaviour(request, context)
                if inspect.isawaitable(replies):  # a coroutine behaviour (e.g. one that only aborts)
                    replies = await replies
                if replies is not None:
                    async for item in replies:
                        yield item
            except BaseException as exc:
                _release(exc)
                del request, replies  # the replies' generator frame holds the request too
                raise
        return stream

    async def unary(request, context):
        if isinstance(request, _Undecodable):
            return await refuse(request, context)
        try:
            return await behaviour(request, context)
        except BaseException as exc:
            _release(exc)
            del request  # this frame is in the traceback grpc keeps: it must not hold the request
            raise

    return unary


def _release(exc: BaseException) -> None:
    """Drop what an error raised by a handler holds of the request.

    ``context.abort`` raises an AbortError that grpc keeps in the call's state, which the error's own
    traceback references (through the frames holding ``context``): a reference cycle, freed only by the
    cyclic garbage collector, which ``ctdd serve`` runs rarely (``ctdd.runtime.process_tuning``). The frames
    of that traceback, and of the validation error it was raised from (``__context__``), hold the request:
    without this, every rejected 7 MB request stayed in memory until a full collection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the whole chain of errors it was raised from
        seen.add(id(current))
        following = current.__cause__ or current.__context__
        current.__traceback__ = current.__context__ = current.__cause__ = None
        current = following


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT to a unary request that cannot be decoded (see the module docstring)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (handler is None or handler.request_streaming or handler.request_deserializer is None
                or not method.startswith("/ctdd.")):  # this service's own (async) methods only
            return handler
        deserializer = _guarded(handler.request_deserializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _refusing(method, handler.unary_stream, True), request_deserializer=deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            _refusing(method, handler.unary_unary, False), request_deserializer=deserializer,
            response_serializer=handler.response_serializer)
