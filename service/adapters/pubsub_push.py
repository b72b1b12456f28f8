"""``ctdd adapter pubsub-push``: an HTTP endpoint for Google Pub/Sub push subscriptions.

A commercetools Subscription with a ``GoogleCloudPubSub`` destination publishes to a topic; a push
subscription on that topic POSTs every message to this endpoint as
``{"message": {"data": <base64>, "messageId": ..., ...}, "subscription": ...}``. The request body is
forwarded verbatim as ``commercetools_delivery`` (the service unwraps the envelope) with TrackEventBatch;
requests arriving at the same time share one call.

Pub/Sub treats any 2xx answer as an acknowledgement and anything else (or a timeout) as a reason to
redeliver with backoff. So:

- **204** after the service answered OK (durably in the outbox);
- **503** when the service answered a retryable error or could not be reached (Pub/Sub redelivers);
- **poison** (INVALID_ARGUMENT, redelivering cannot help): logged, written to ``--dead-letter-dir`` when
  given (``<time>-<messageId>.body`` = the request body verbatim, ``.json`` = code and reason; files are
  mode 0600), then acknowledged with **204** (header ``X-Ctdd-Outcome: poison``). If the dead-letter file
  cannot be written the answer is 503, so nothing is lost silently;
- **401** / **403** when ``--token`` is set and the ``?token=`` query parameter is missing / wrong
  (compared in constant time); **413** for a body over ``--max-body-bytes`` (Pub/Sub will redeliver it,
  so give the push subscription a dead-letter topic to catch those); **411** without Content-Length,
  **400** for a malformed request, **404** / **405** for other paths and methods.
- ``GET /healthz`` answers 200 while serving and 503 while shutting down.

HTTP/1.1 with one request per connection (``Connection: close``); ``Expect: 100-continue`` is honoured.
Bodies are never logged; logs carry the Pub/Sub message id and result codes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.adapters.forwarder import OK, POISON, CoalescingForwarder, EventForwarder, Outcome, delivery_request

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY = 4 * 1024 * 1024

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class PubSubPushConfig:
    listen: str
    target: str
    store_key: str
    token: str | None = None
    path: str = "/"
    dead_letter_dir: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    rpc_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    priority: int = pb.PRIORITY_LIVE
    #: PROCESSING_QUEUED: acknowledged once in ctdd-sync's event inbox (fetch failures retried there)
    processing: int = pb.PROCESSING_APPLIED


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def pubsub_message_id(body: bytes) -> str:
    """The Pub/Sub messageId of a push body, for logs; '-' when there is none."""
    try:
        message = json.loads(body).get("message", {})
        value = message.get("messageId") or message.get("message_id")
        return str(value) if value else "-"
    except (ValueError, AttributeError):
        return "-"


class PubSubPushAdapter:
    def __init__(self, config: PubSubPushConfig, *, forwarder: EventForwarder | None = None):
        self.config = config
        self.forwarder = forwarder or EventForwarder(config.target, timeout=config.rpc_timeout)
        self.batcher = CoalescingForwarder(self.forwarder)
        self.server: asyncio.base_events.Server | None = None
        self.port: int | None = None
        self._handlers: set[asyncio.Task] = set()
        self._draining = False

    async def start(self) -> int:
        host, port = split_hostport(self.config.listen)
        self.batcher.start()
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEADER_BYTES)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("Pub/Sub push adapter on %s:%s -> %s (store %s)%s", host, self.port, self.config.target,
                 self.config.store_key, "" if self.config.token else " without a token check")
        return self.port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting connections, let requests in progress finish (up to ``grace`` s), close."""
        self._draining = True
        if self.server is not None:
            self.server.close()
        if self._handlers:
            done, pending = await asyncio.wait(set(self._handlers), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
        await self.batcher.close()
        await self.forwarder.close()
        log.info("Pub/Sub push adapter stopped")

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            try:
                status, body, headers = await self._respond(reader, writer)
            except HttpError as exc:
                status, body, headers = exc.status, {"error": exc.message}, {}
            except Exception:
                log.exception("request failed")
                status, body, headers = 500, {"error": "internal error"}, {}
            await self._write(writer, status, body, headers)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def _write(self, writer: asyncio.StreamWriter, status: int, body: dict | None, headers: dict) -> None:
        payload = b"" if body is None or status == 204 else json.dumps(body).encode()
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", "Connection: close",
                 f"Content-Length: {len(payload)}"]
        if payload:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.config.header_timeout)
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request head too large") from None
        except asyncio.IncompleteReadError:
            raise ConnectionError("client closed the connection") from None
        except asyncio.TimeoutError:
            raise HttpError(408, "request head not received in time") from None
        try:
            text = head.decode("latin-1")
            request_line, *header_lines = text[:-4].split("\r\n")
            method, target, version = request_line.split(" ")
        except ValueError:
            raise HttpError(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise HttpError(505, "only HTTP/1.x is supported")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header")
            headers[name.lower()] = value.strip()
        return method, target, headers

    async def _respond(self, reader, writer) -> tuple[int, dict | None, dict]:
        method, target, headers = await self._read_head(reader)
        url = urlsplit(target)
        if url.path == "/healthz":
            if method not in ("GET", "HEAD"):
                raise HttpError(405, "use GET")
            if self._draining:
                return 503, {"status": "shutting down"}, {}
            return 200, {"status": "ok"}, {}
        if url.path != self.config.path:
            raise HttpError(404, "not found")
        if method != "POST":
            raise HttpError(405, "use POST")
        self._check_token(url.query)
        body = await self._read_body(reader, writer, headers)
        message_id = pubsub_message_id(body)
        outcome = await self.batcher.submit(delivery_request(self.config.store_key, body, self.config.priority,
                                                                self.config.processing))
        if outcome.kind == OK:
            log.info("pubsub message %s: accepted", message_id)
            return 204, None, {"X-Ctdd-Outcome": "accepted"}
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
                    return 503, {"error": "dead-letter write failed"}, {}
                log.warning("pubsub message %s: dead-lettered to %s", message_id, path.name)
            return 204, None, {"X-Ctdd-Outcome": "poison"}
        log.info("pubsub message %s: not accepted, retry later (code %d)", message_id, outcome.code)
        return 503, {"error": "not accepted, retry later", "code": outcome.code}, {}

    def _check_token(self, query: str) -> None:
        expected = self.config.token
        if not expected:
            return
        given = parse_qs(query).get("token")
        if not given:
            raise HttpError(401, "token missing")
        if not hmac.compare_digest(given[0].encode(), expected.encode()):
            raise HttpError(403, "token wrong")

    async def _read_body(self, reader, writer, headers: dict[str, str]) -> bytes:
        if "transfer-encoding" in headers:
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        raw = headers.get("content-length")
        if raw is None:
            raise HttpError(411, "Content-Length required")
        if not raw.isdigit():
            raise HttpError(400, "bad Content-Length")
        length = int(raw)
        if length > self.config.max_body_bytes:
            raise HttpError(413, f"body over {self.config.max_body_bytes} bytes")
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            return await asyncio.wait_for(reader.readexactly(length), self.config.body_timeout)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "body shorter than Content-Length") from None
        except asyncio.TimeoutError:
            raise HttpError(408, "body not received in time") from None

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
