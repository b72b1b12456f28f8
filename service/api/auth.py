"""Who may call: the callers' bearer tokens and the server interceptor that checks them.

A caller sends ``authorization: Bearer <token>`` in the call's metadata. The tokens come from
``[service] tokens_file`` and/or the environment variable named by ``tokens_env``, a TOML document::

    [[tokens]]
    name = "checkout"            # who calls: named in the log of a refused call
    sha256 = "9f86d081…"         # hex SHA-256 of the token (or token = "…", the token itself)
    stores = ["uk-fashion"]      # optional: the only store keys its requests may name
    operator = false             # true: may also call AdminService (and any other operator service)

Only the SHA-256 digests are kept in memory; a presented token is hashed and compared with every known
digest with :func:`hmac.compare_digest` (tokens are random secrets, so a fast hash is enough; no salt or
key stretching is needed as it would be for passwords).

Answers: no token or an unknown one -> UNAUTHENTICATED; a known token calling an operator service without
being an operator, or naming a store outside its ``stores`` -> PERMISSION_DENIED. Health and reflection
are open when configured so. Every refused call is logged once with the peer and the method, never the
token. A refused call's request is never decoded (its handler's deserializer ignores the bytes). The store
check needs the parsed request, so the interceptor wraps the method's behaviour and checks every store the
request names (its ``store_key``, each event's for TrackEventBatch, ``filter.store_key`` or
``all_matching.store_key`` for the redrive RPCs) before the servicer runs; the servicer can read the caller
from :data:`current_caller`. A store-restricted token is limited to its stores in AdminService too: what
names no store (a ListFailures without ``filter.store_key``, a ListTriggers without ``store_key``) is refused
PERMISSION_DENIED, and a failure reference of another store's row is NOT_FOUND (``ctdd.api.admin``,
``ctdd.api.failures``; :func:`store_scope`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctdd.config import ConfigError

log = logging.getLogger(__name__)

#: plain tokens shorter than this are refused (use e.g. ``openssl rand -hex 32``)
MIN_TOKEN_LENGTH = 16
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

#: the caller of the RPC being served (None: no tokens configured, or an open service)
current_caller: contextvars.ContextVar["Caller | None"] = contextvars.ContextVar("ctdd_caller", default=None)


@dataclass(frozen=True)
class Caller:
    """One configured token: its name, the SHA-256 digest of the token, what it may do."""

    name: str
    digest: bytes
    operator: bool = False
    #: None: every store
    stores: frozenset[str] | None = None

    def may_use_store(self, store_key: str) -> bool:
        return self.stores is None or store_key in self.stores


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    token: str | None = Field(None, repr=False)
    sha256: str | None = None
    stores: list[str] | None = None
    operator: bool = False

    @model_validator(mode="after")
    def _one_secret(self) -> "_TokenEntry":
        if (self.token is None) == (self.sha256 is None):
            raise ValueError("give exactly one of token and sha256")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"token too short: at least {MIN_TOKEN_LENGTH} characters (e.g. openssl rand -hex 32)")
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            raise ValueError("sha256 must be 64 hexadecimal digits (sha256sum of the token)")
        return self

    def caller(self) -> Caller:
        digest = (hashlib.sha256(self.token.encode()).digest() if self.token is not None
                  else bytes.fromhex(self.sha256))  # type: ignore[arg-type]
        return Caller(self.name, digest, self.operator, None if self.stores is None else frozenset(self.stores))


class _TokenDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[_TokenEntry] = Field(default_factory=list)


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token``: what ``sha256`` of a tokens-file entry holds."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, origin: str) -> list[Caller]:
    """The callers of a tokens document; a ConfigError naming ``origin`` (never the token) when it is bad."""
    try:
        document = _TokenDocument.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not a valid TOML document ({exc})") from None
    except ValidationError as exc:
        error = exc.errors(include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{origin}: {where}: {error['msg']}") from None
    return [entry.caller() for entry in document.tokens]


def load_callers(tokens_file: str | None, tokens_env: str | None,
                 env: Mapping[str, str] | None = None) -> list[Caller]:
    """The callers of ``[service] tokens_file`` and ``tokens_env`` (empty: no tokens configured)."""
    env = os.environ if env is None else env
    callers: list[Caller] = []
    if tokens_file:
        try:
            with open(tokens_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"service.tokens_file: cannot read {tokens_file}: {exc.strerror}") from None
        callers += parse_tokens(text, f"service.tokens_file ({tokens_file})")
    if tokens_env:
        text = env.get(tokens_env)
        if not text:
            raise ConfigError(f"service.tokens_env: environment variable {tokens_env} is not set")
        callers += parse_tokens(text, f"service.tokens_env (variable {tokens_env})")
    names = [c.name for c in callers]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"service.tokens_file/tokens_env: token name(s) given twice: {', '.join(duplicates)}")
    if (tokens_file or tokens_env) and not callers:
        raise ConfigError("service.tokens_file/tokens_env: no [[tokens]] entry; every call would be refused")
    return callers


class TokenRegistry:
    """The known tokens, by digest only."""

    def __init__(self, callers: Iterable[Caller]):
        self._callers = tuple(callers)

    def __len__(self) -> int:
        return len(self._callers)

    def find(self, token: str) -> Caller | None:
        """The caller whose token this is; every digest is compared, in constant time each."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for caller in self._callers:
            if hmac.compare_digest(digest, caller.digest):
                found = caller
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry (None: no such entry)."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


#: per message type: its fields that name stores, directly (``store_key``) or through nested messages
_STORE_FIELDS: dict[str, tuple[tuple[str, bool, bool], ...]] = {}


def _store_fields(descriptor, visiting: frozenset[str] = frozenset()) -> tuple[tuple[str, bool, bool], ...]:
    """``(name, is_message, repeated)`` of the fields of ``descriptor`` that name stores: ``store_key`` itself and
    every message field whose type (transitively) has one, e.g. TrackEventBatchRequest.events and
    ListFailuresRequest.filter, RetryFailuresRequest.all_matching. Well-known types (google.*) are never entered."""
    cached = _STORE_FIELDS.get(descriptor.full_name)
    if cached is not None:
        return cached
    found: list[tuple[str, bool, bool]] = []
    visiting = visiting | {descriptor.full_name}
    for field in descriptor.fields:
        repeated = field.is_repeated
        if field.name == "store_key" and field.type == field.TYPE_STRING and not repeated:
            found.append((field.name, False, False))
        elif (field.message_type is not None and not field.message_type.full_name.startswith("google.")
              and field.message_type.full_name not in visiting
              and not field.message_type.GetOptions().map_entry
              and _store_fields(field.message_type, visiting)):
            found.append((field.name, True, repeated))
    result = tuple(found)
    _STORE_FIELDS[descriptor.full_name] = result
    return result


def stores_named(request: Any) -> Iterator[str]:
    """The store keys a request names: its ``store_key`` and those of its messages that name stores (each event
    of TrackEventBatch, the ``filter`` of ListFailures, the ``all_matching`` of RetryFailures/SkipFailures)."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return
    for name, is_message, repeated in _store_fields(descriptor):
        if not is_message:
            if getattr(request, name):
                yield getattr(request, name)
        elif repeated:
            for item in getattr(request, name):
                yield from stores_named(item)
        elif request.HasField(name):
            yield from stores_named(getattr(request, name))


def store_scope() -> frozenset[str] | None:
    """The stores the caller of the RPC being served may use (None: every store, or no tokens configured)."""
    caller = current_caller.get()
    return None if caller is None else caller.stores


async def refuse_store(context, method: str, reason: str,
                       code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED, *, logged: str | None = None) -> None:
    """Refuse (log once and abort with ``reason``) a call of a store-restricted caller that its stores do not
    cover; ``logged``: what the log says instead of ``reason`` (when the caller is told NOT_FOUND)."""
    _log_refusal(context, method, current_caller.get(), logged or reason)
    await context.abort(code, reason)


def _service_of(method: str) -> str:
    """``/ctdd.sync.v1.SyncService/SyncContact`` -> ``ctdd.sync.v1.SyncService``."""
    return method.lstrip("/").partition("/")[0]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every call except those to the ``open_services``.

    ``caller_services`` may be called with any known token; every other service needs an operator token.
    """

    def __init__(self, registry: TokenRegistry, *, caller_services: Iterable[str], open_services: Iterable[str] = ()):
        self.registry = registry
        self.caller_services = frozenset(caller_services)
        self.open_services = frozenset(open_services)

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        service = _service_of(method)
        if handler is None or service in self.open_services:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, method, None,
                            "missing bearer token (metadata authorization: Bearer <token>)")
        caller = self.registry.find(token)
        if caller is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, method, None, "unknown bearer token")
        if service not in self.caller_services and not caller.operator:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, method, caller,
                            f"{service} needs an operator token")
        return _as_caller(handler, caller, method)


def _log_refusal(context, method: str, caller: Caller | None, reason: str) -> None:
    log.warning("refused call %s from %s (caller %s): %s", method, context.peer(),
                caller.name if caller else "-", reason)


#: for servicers that refuse part of a call (``ctdd.api.failures``): the same log line
log_refusal = _log_refusal


def _ignore_body(_data: bytes) -> None:
    """The deserializer of a refused call: the request is never decoded (a refused caller cannot make the
    server parse its bytes, and undecodable bytes without a token are UNAUTHENTICATED, not INVALID_ARGUMENT)."""
    return None


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, method: str, caller: Caller | None,
             reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that logs the refusal and aborts with ``code``, without decoding
    the request. A response-streaming method gets an async generator (grpc iterates its behaviour, and so does
    ``ctdd.api.decoding``), a unary-response method a coroutine."""

    async def refuse(_request_or_iterator, context):
        _log_refusal(context, method, caller, reason)
        await context.abort(code, reason)

    async def refuse_stream(_request_or_iterator, context):
        _log_refusal(context, method, caller, reason)
        await context.abort(code, reason)
        yield  # pragma: no cover (abort raises): makes this an async generator

    kwargs = dict(request_deserializer=_ignore_body, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


async def _check_stores(request, context, caller: Caller, method: str) -> None:
    refused = next((key for key in stores_named(request) if not caller.may_use_store(key)), None)
    if refused is not None:
        reason = "this token may not use the store named in the request"
        _log_refusal(context, method, caller, reason)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)


def _as_caller(handler: grpc.RpcMethodHandler, caller: Caller, method: str) -> grpc.RpcMethodHandler:
    """``handler`` run as ``caller`` (:data:`current_caller`), after the store check of a unary request."""
    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.request_streaming:  # reflection: no store in it; the caller is all there is to set
        inner = handler.stream_stream or handler.stream_unary

        if inspect.isasyncgenfunction(inner):
            async def stream_generator(request_iterator, context):
                current_caller.set(caller)
                async for reply in inner(request_iterator, context):
                    yield reply
            behaviour: Any = stream_generator
        else:
            async def stream_call(request_iterator, context):
                current_caller.set(caller)
                return await inner(request_iterator, context)
            behaviour = stream_call
        factory = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                   else grpc.stream_unary_rpc_method_handler)
        return factory(behaviour, **kwargs)
    if handler.response_streaming:
        inner = handler.unary_stream
        if inspect.isasyncgenfunction(inner):
            async def unary_generator(request, context):
                await _check_stores(request, context, caller, method)
                current_caller.set(caller)
                async for reply in inner(request, context):
                    yield reply
            return grpc.unary_stream_rpc_method_handler(unary_generator, **kwargs)

        async def unary_stream_call(request, context):
            await _check_stores(request, context, caller, method)
            current_caller.set(caller)
            return await inner(request, context)
        return grpc.unary_stream_rpc_method_handler(unary_stream_call, **kwargs)
    inner = handler.unary_unary

    async def unary_call(request, context):
        await _check_stores(request, context, caller, method)
        current_caller.set(caller)
        return await inner(request, context)
    return grpc.unary_unary_rpc_method_handler(unary_call, **kwargs)
