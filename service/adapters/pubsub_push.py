"""``ctdd adapter pubsub-push``: an HTTP endpoint for Google Pub/Sub push subscriptions.

A commercetools Subscription with a ``GoogleCloudPubSub`` destination publishes to a topic; a push
subscription on that topic POSTs every message to this endpoint as
``{"message": {"data": <base64>, "messageId": ..., ...}, "subscription": ...}``. The request body is
forwarded verbatim as ``commercetools_delivery`` (the service unwraps the envelope) with TrackEventBatch;
requests arriving at the same time share one call.

HTTP is served by aiohttp.web (``client_max_size`` bounds a body, its parser bounds the head and answers
malformed HTTP, duplicate ``Content-Length`` included, with 400 at once). Who may push is checked before the
body is read (``ctdd.adapters.push_auth``: a shared token or a Google-signed OIDC token); the adapter refuses
to start with neither unless ``insecure`` is set.

Pub/Sub treats any 2xx answer as an acknowledgement and anything else (or a timeout) as a reason to
redeliver with backoff. So:

- **204** after the service answered OK (durably in the outbox);
- **503** when the service answered a retryable error or could not be reached (Pub/Sub redelivers);
- **poison** (INVALID_ARGUMENT, redelivering cannot help): logged, written to ``--dead-letter-dir`` when
  given (``<time>-<messageId>.body`` = the request body verbatim, ``.json`` = code and reason; files are
  mode 0600), then acknowledged with **204** (header ``X-Ctdd-Outcome: poison``). If the dead-letter file
  cannot be written the answer is 503, so nothing is lost silently;
- **401** / **403** for missing / wrong credentials (one log line each, without the credential; Pub/Sub
  redelivers, so a misconfiguration loses nothing); **413** for a body over ``--max-body-bytes`` (Pub/Sub
  will redeliver it, so give the push subscription a dead-letter topic to catch those); **411** without a
  body, **400** for malformed HTTP or an empty body, **404** / **405** for other paths and methods, **408**
  for a body not received within ``body_timeout``.
- ``GET /healthz`` answers 200 while serving and 503 while shutting down.

Bodies are never logged; logs carry the Pub/Sub message id and result codes. The access log is off: the
query string carries the shared token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.adapters.forwarder import OK, POISON, CoalescingForwarder, EventForwarder, Outcome, delivery_request
from ctdd.adapters.push_auth import OidcSettings, PushAuthenticator
from ctdd.telemetry import carrier_from_attributes

log = logging.getLogger(__name__)

#: aiohttp's limits for one line of the request head and for one header field
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 64
DEFAULT_MAX_BODY = 4 * 1024 * 1024

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class PubSubPushConfig:
    listen: str
    target: str
    store_key: str
    #: shared secret expected as ``?token=`` or ``Authorization: Bearer``
    token: str | None = field(default=None, repr=False)
    #: verify Google-signed OIDC tokens of an authenticated push subscription
    oidc: OidcSettings | None = None
    #: serve without any authentication (refused otherwise when neither token nor oidc is set)
    insecure: bool = False
    path: str = "/"
    dead_letter_dir: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    rpc_timeout: float = 30.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    priority: int = pb.PRIORITY_LIVE
    #: PROCESSING_QUEUED: acknowledged once in ctdd-sync's event inbox (fetch failures retried there)
    processing: int = pb.PROCESSING_APPLIED


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def pubsub_message_id(body: bytes) -> str:
    """The Pub/Sub messageId of a push body, for logs; '-' when there is none."""
    return push_message_facts(body)[0]


def push_message_facts(body: bytes) -> tuple[str, dict[str, str]]:
    """The Pub/Sub messageId of a push body ('-' when there is none) and the W3C trace context of its
    message attributes (``ctdd.telemetry.carrier_from_attributes``; empty when there is none)."""
    try:
        message = json.loads(body).get("message", {})
        value = message.get("messageId") or message.get("message_id")
        return (str(value) if value else "-"), carrier_from_attributes(message.get("attributes"))
    except (ValueError, AttributeError):
        return "-", {}


class _MalformedRequestLine(logging.Filter):
    """aiohttp logs each malformed request at ERROR with a traceback that quotes the request (whose query may
    carry the token): keep one WARNING line with the peer and the kind of error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.msg, record.args = "malformed HTTP request from %s refused: %s (%s)", (
                peer, type(exc).__name__, exc.code)
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


http_log = logging.getLogger(__name__ + ".http")
http_log.addFilter(_MalformedRequestLine())


def _answer(status: int, body: dict | None = None, headers: dict | None = None) -> web.Response:
    if body is None or status == 204:
        return web.Response(status=status, headers=headers)
    return web.json_response(body, status=status, headers=headers)


class PubSubPushAdapter:
    def __init__(self, config: PubSubPushConfig, *, forwarder: EventForwarder | None = None,
                 authenticator: PushAuthenticator | None = None):
        """Raises :class:`InsecureConfigError` when neither a token nor OIDC is configured and
        ``config.insecure`` is not set."""
        self.config = config
        self.authenticator = authenticator or PushAuthenticator(token=config.token, oidc=config.oidc,
                                                                insecure=config.insecure)
        self.forwarder = forwarder or EventForwarder(config.target, timeout=config.rpc_timeout)
        self.batcher = CoalescingForwarder(self.forwarder)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._handlers: set[asyncio.Task] = set()
        self._draining = False

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post(self.config.path, self._push)
        return app

    async def start(self) -> int:
        host, port = split_hostport(self.config.listen)
        self.batcher.start()
        # access_log=None: the query string carries the token; auto_decompress=False: the body is forwarded
        # as received and client_max_size bounds what arrives, not what a compressed body expands to
        self.runner = web.AppRunner(self._app(), access_log=None, logger=http_log, handle_signals=False,
                                    max_line_size=MAX_HEADER_BYTES, max_field_size=MAX_HEADER_BYTES,
                                    max_headers=MAX_HEADERS, keepalive_timeout=self.config.keepalive_timeout,
                                    auto_decompress=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("Pub/Sub push adapter on %s:%s -> %s (store %s), accepting %s", host, self.port,
                 self.config.target, self.config.store_key, self.authenticator.describe())
        if self.authenticator.open:
            log.warning("Pub/Sub push adapter runs WITHOUT authentication (--insecure): anyone who reaches "
                        "it can push events")
        return self.port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting connections, let requests in progress finish (up to ``grace`` s), close."""
        self._draining = True
        if self.runner is not None:
            for site in list(self.runner.sites):
                await site.stop()
        if self._handlers:
            done, pending = await asyncio.wait(set(self._handlers), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        await self.batcher.close()
        await self.forwarder.close()
        log.info("Pub/Sub push adapter stopped")

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._draining:
            return _answer(503, {"status": "shutting down"})
        return _answer(200, {"status": "ok"})

    async def _push(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            return await self._respond(request)
        finally:
            self._handlers.discard(task)

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        if self._draining:
            return _answer(503, {"error": "shutting down"}, {"Connection": "close"})
        refusal = await self.authenticator.check(request.query.get("token"), request.headers.get("Authorization"))
        if refusal is not None:
            log.warning("push from %s refused: %s (%d)", request.remote, refusal.reason, refusal.status)
            headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
            return _answer(refusal.status, {"error": refusal.reason}, headers)
        if not request.body_exists:
            return _answer(411 if request.content_length is None else 400, {"error": "a request body is required"})
        if (request.content_length or 0) > self.config.max_body_bytes:
            return _answer(413, {"error": f"body over {self.config.max_body_bytes} bytes"}, {"Connection": "close"})
        try:
            async with asyncio.timeout(self.config.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, {"error": f"body over {self.config.max_body_bytes} bytes"}, {"Connection": "close"})
        except TimeoutError:
            return _answer(408, {"error": "body not received in time"}, {"Connection": "close"})
        if not body:
            return _answer(400, {"error": "empty body"})
        message_id, carrier = push_message_facts(body)
        outcome = await self.batcher.submit(delivery_request(self.config.store_key, body, self.config.priority,
                                                                self.config.processing), carrier)
        if outcome.kind == OK:
            log.info("pubsub message %s: accepted", message_id)
            return _answer(204, None, {"X-Ctdd-Outcome": "accepted"})
        if outcome.kind == POISON:
            log.warning("pubsub message %s: refused by the service (code %d); acknowledged as poison",
                        message_id, outcome.code)
            log.debug("pubsub message %s: reason: %s", message_id, outcome.message)
            if self.config.dead_letter_dir:
                try:
                    path = await asyncio.to_thread(self._write_dead_letter, body, message_id, outcome)
                except OSError as exc:
                    log.error("pubsub message %s: dead-letter write failed (%s); answering 503 so Pub/Sub "
                              "redelivers it", message_id, exc.strerror or type(exc).__name__)
                    return _answer(503, {"error": "dead-letter write failed"})
                log.warning("pubsub message %s: dead-lettered to %s", message_id, path.name)
            return _answer(204, None, {"X-Ctdd-Outcome": "poison"})
        log.info("pubsub message %s: not accepted, retry later (code %d)", message_id, outcome.code)
        return _answer(503, {"error": "not accepted, retry later", "code": outcome.code})

    def _write_dead_letter(self, body: bytes, message_id: str, outcome: Outcome) -> Path:
        directory = Path(self.config.dead_letter_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ident = message_id if _SAFE_ID.match(message_id) else hashlib.sha256(body).hexdigest()[:16]
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1000000:06d}Z"
        name = f"{stamp}-{ident}"
        meta = {"received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "message_id": message_id,
                "store_key": self.config.store_key, "code": outcome.code, "reason": outcome.message,
                "body_file": name + ".body", "body_sha256": hashlib.sha256(body).hexdigest()}
        _write_private(directory / (name + ".body"), body)
        _write_private(directory / (name + ".json"), json.dumps(meta, indent=2).encode())
        return directory / (name + ".body")


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def push_body(data: bytes, message_id: str = "1", subscription: str = "projects/p/subscriptions/s",
              attributes: dict | None = None) -> bytes:
    """A Pub/Sub push request body wrapping ``data`` (for tests and tooling)."""
    return json.dumps({
        "message": {"data": base64.b64encode(data).decode(), "attributes": attributes or {},
                    "messageId": message_id, "message_id": message_id,
                    "publishTime": "2026-01-01T00:00:00.000Z", "publish_time": "2026-01-01T00:00:00.000Z"},
        "subscription": subscription,
    }).encode()
