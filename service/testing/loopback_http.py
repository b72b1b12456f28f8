"""HTTP plumbing shared by the in-process test servers (stdlib only).

``dotdigital_sandbox.DotdigitalSandbox`` and ``commercetools_fake.FakeCommercetools`` are *real* HTTP servers
(``http.server.ThreadingHTTPServer``) bound to loopback and run in a daemon thread, so code under test talks
to them over real sockets. Everything that is not about the API they imitate lives here, once:

* ``LoopbackServer`` - the base class of both: ``start()`` / ``stop()`` / context manager / ``base_url``,
  the thread-safe log of every request received (``requests``, ``requests_matching``, ``reset_requests``;
  the ``Authorization`` header redacted), fault injection (``inject_fault`` / ``clear_faults``: status,
  body, headers, delay, dropped connections, limited to ``times`` requests matching ``method`` and
  ``path_contains``) and a per-request latency (``set_latency``).
* ``LoopbackRequestHandler`` - reads the request (``Content-Length`` or chunked body), has the server answer
  it (``LoopbackServer._handle``: the latency, then an injected fault or the server's
  ``_process(method, raw_path, query, headers, body)`` hook), records the request *before* answering (a
  client that has its response always finds its request in the log) and writes the response (keep-alive,
  JSON bodies, HEAD without body).
* ``LoopbackHTTPServer`` - the ``ThreadingHTTPServer`` that tracks open connections so ``stop()`` can close
  them (clients blocked in a simulated delay get a dropped connection instead of hanging).
* ``redact_headers`` and ``basic_auth_matches`` (HTTP Basic check, constant-time compare).

A subclass of ``LoopbackServer`` supplies ``_process`` and, where its API differs, the hooks
``_fault_error_body`` (the body of a fault injected without one), ``_internal_error_response`` (the answer
when ``_process`` raises) and ``_record_extras`` (extra fields of its ``RecordedRequest`` subclass), plus
the class attributes naming it (``_label``, ``_short_label``, ``_thread_name``, ``_logger``) and choosing
its handler, record and response types.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Mapping, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "REDACTED",
    "Fault",
    "LoopbackHTTPServer",
    "LoopbackRequestHandler",
    "LoopbackServer",
    "RecordedRequest",
    "Response",
    "basic_auth_matches",
    "redact_headers",
]

logger = logging.getLogger(__name__)

#: What a recorded ``authorization`` header value is replaced by.
REDACTED = "<redacted>"

_ServerT = TypeVar("_ServerT", bound="LoopbackServer[Any]")


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` (names already lower-cased) with the ``authorization`` value redacted."""
    return {k: (REDACTED if k == "authorization" else v) for k, v in headers.items()}


def basic_auth_matches(authorization: str | None, user: str, password: str) -> bool:
    """Whether an ``Authorization`` header is HTTP Basic with exactly ``user`` and ``password``.

    Malformed values (another scheme, bad base64, not UTF-8, no ``:``) do not match. The user and the
    password are compared in constant time.
    """
    if not authorization or authorization[:6].lower() != "basic ":
        return False
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = decoded.partition(":")
    if not sep:
        return False
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    return ok_user and ok_password


# ---------------------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedRequest:
    """One request a loopback server received (each server module subclasses it with its own docs).

    ``path`` is the raw request path (percent-encoded, without the query); ``query`` the decoded query;
    ``headers`` has lower-cased names with the ``authorization`` value replaced by ``"<redacted>"``;
    ``json`` is the parsed body (``None`` if not JSON; the bytes are in ``raw_body``). ``status`` is the
    status sent back, ``0`` when the connection was dropped without a response.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json: Any | None
    raw_body: bytes
    status: int
    at: float


@dataclass
class Response:
    """A response to send: ``body`` is a JSON-serialisable value, raw bytes, or ``None`` for an empty body."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False


@dataclass
class Fault:
    """An injected fault (see ``LoopbackServer.inject_fault``)."""

    status: int
    remaining: int
    method: str | None
    path_contains: str | None
    body: dict | list | str | None
    headers: dict[str, str]
    delay: float
    drop_connection: bool


_RecordT = TypeVar("_RecordT", bound=RecordedRequest)


# ---------------------------------------------------------------------------------------------------
# The server object tests hold
# ---------------------------------------------------------------------------------------------------
class LoopbackServer(Generic[_RecordT]):
    """Base of the test servers: lifecycle, request log, fault injection and latency.

    All of this state is guarded by ``self._lock`` (a re-entrant lock subclasses use for their own state
    too), so tests may inspect or change it while the server serves requests from other threads.
    """

    #: Thread name of the serving thread.
    _thread_name: ClassVar[str] = "loopback-http"
    #: Name used in log messages ("<label> listening on ...", "<label> failed to handle ...").
    _label: ClassVar[str] = "loopback server"
    #: Name used in the ``base_url`` error ("<short label> is not running; ...").
    _short_label: ClassVar[str] = "server"
    #: Logger of the server's own module (access log, request log, failures).
    _logger: ClassVar[logging.Logger] = logger
    _handler_class: ClassVar[type[LoopbackRequestHandler]]
    _record_type: ClassVar[type[RecordedRequest]] = RecordedRequest
    _response_type: ClassVar[type[Response]] = Response
    #: A ``str`` fault body without a ``Content-Type`` header gets ``application/json`` if it parses as JSON,
    #: else ``text/plain`` (``True``), or is sent with the default ``application/json`` (``False``).
    _sniff_fault_content_type: ClassVar[bool] = False

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[tuple[int, _RecordT]] = []
        self._seq = 0
        self._faults: list[Fault] = []
        self._latency = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self: _ServerT) -> _ServerT:
        """Bind the loopback port and serve in a daemon thread. Returns ``self`` for chaining."""
        if self._server is not None:
            return self
        server = LoopbackHTTPServer((self._host, self._port), self._handler_class, owner=self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self._thread_name, daemon=True
        )
        self._thread.start()
        self._logger.debug("%s listening on %s", self._label, self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and any open client connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self: _ServerT) -> _ServerT:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server (no trailing slash)."""
        if self._server is None:
            raise RuntimeError(f"{self._short_label} is not running; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- recorded requests ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[_RecordT]:
        """Snapshot of every request answered so far, in arrival order."""
        with self._lock:
            return [rec for _, rec in self._requests]

    def requests_matching(self, method: str | None = None, path_contains: str | None = None) -> list[_RecordT]:
        """Recorded requests filtered by method (case-insensitive) and a substring of the raw or decoded path."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path or path_contains in unquote(r.path))
        ]

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- fault injection / environment ----------------------------------------------------------------
    def inject_fault(
        self,
        *,
        status: int = 503,
        times: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
        body: dict | list | str | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        drop_connection: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with this response instead of processing them.

        A request matches when its method is ``method`` (case-insensitive; ``None`` = any) and its raw or
        decoded path contains ``path_contains`` (``None`` = any). Faults are checked before anything the
        server does with a request (authentication, rate limiting, routing). ``body=None`` sends the
        server's generic error envelope for ``status`` (no body for 1xx, 204 and 304); a ``str`` body is sent
        verbatim. ``delay`` sleeps before answering; ``drop_connection`` closes the socket without any
        response (recorded status 0). Faults are consumed in the order they were injected.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(
                Fault(
                    status=status,
                    remaining=times,
                    method=method.upper() if method else None,
                    path_contains=path_contains,
                    body=body,
                    headers=dict(headers or {}),
                    delay=max(0.0, delay),
                    drop_connection=drop_connection,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before handling every request (simulates a slow network/API)."""
        with self._lock:
            self._latency = max(0.0, float(seconds))

    # ==================================================================================================
    # Request pipeline (called from handler threads)
    # ==================================================================================================
    def _process(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Response:
        """Answer one request (faults and latency are handled by the caller). Subclasses implement it."""
        raise NotImplementedError

    def _fault_error_body(self, status: int, phrase: str, raw_path: str) -> Any:
        """The body of a fault injected with ``body=None`` (``phrase``: the status' reason phrase)."""
        return {"message": phrase}

    def _internal_error_response(self, raw_path: str) -> Response:
        """The answer when ``_process`` raised (a server bug must not hang the client)."""
        return self._response_type(500, {"message": "Internal error"})

    def _record_extras(self, response: Any) -> dict[str, Any]:
        """Extra fields of the ``_record_type`` taken from the response sent."""
        return {}

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _record(self, seq: int, record: _RecordT) -> None:
        with self._lock:
            bisect.insort(self._requests, (seq, record), key=lambda item: item[0])

    def _take_fault(self, method: str, raw_path: str) -> Fault | None:
        decoded = unquote(raw_path)
        with self._lock:
            for fault in self._faults:
                if fault.method is not None and fault.method != method:
                    continue
                if fault.path_contains is not None and not (
                    fault.path_contains in raw_path or fault.path_contains in decoded
                ):
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: Fault, raw_path: str) -> Response:
        make = self._response_type
        if fault.drop_connection:
            return make(status=0, drop_connection=True)
        headers = dict(fault.headers)
        body: Any
        if fault.body is None:
            if fault.status in (204, 304) or fault.status < 200:
                body = None
            else:
                try:
                    phrase = HTTPStatus(fault.status).phrase
                except ValueError:
                    phrase = "Error"
                body = self._fault_error_body(fault.status, phrase, raw_path)
        elif isinstance(fault.body, str):
            body = fault.body.encode("utf-8")
            if self._sniff_fault_content_type and not any(k.lower() == "content-type" for k in headers):
                try:
                    json.loads(fault.body)
                    headers["Content-Type"] = "application/json; charset=utf-8"
                except ValueError:
                    headers["Content-Type"] = "text/plain; charset=utf-8"
        else:
            body = fault.body
        return make(status=fault.status, body=body, headers=headers)

    def _handle(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> Response:
        """Latency, then an injected fault or ``_process``."""
        with self._lock:
            latency = self._latency
        if latency:
            time.sleep(latency)
        fault = self._take_fault(method, raw_path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            return self._fault_response(fault, raw_path)
        try:
            return self._process(method, raw_path, query, headers, body)
        except Exception:  # pragma: no cover - a server bug must not hang the client
            self._logger.exception("%s failed to handle %s %s", self._label, method, raw_path)
            return self._internal_error_response(raw_path)


# ---------------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------------
class LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for handlers still sleeping in a simulated delay
    allow_reuse_address = True
    #: listen backlog: socketserver's default of 5 drops connections when tests open 20 at once
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, owner: LoopbackServer[Any]
    ) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, active: bool) -> None:
        with self._connections_lock:
            (self._connections.add if active else self._connections.discard)(conn)

    def close_all_connections(self) -> None:
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackRequestHandler(BaseHTTPRequestHandler):
    """Serves GET, POST, PUT, PATCH, DELETE and HEAD; subclasses set ``server_version`` and may add methods
    (``do_OPTIONS = LoopbackRequestHandler.do_GET``)."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs
    server_version = "LoopbackHTTP/1.0"
    sys_version = ""
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid delayed-ACK stalls
    server: LoopbackHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Route http.server's access log to logging; it only contains the request line (no headers,
        # so never credentials).
        self.server.owner._logger.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        owner = self.server.owner
        arrived = time.time()
        seq = owner._next_seq()
        method = self.command.upper()
        split = urlsplit(self.path)
        raw_path = split.path or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            parsed: Any = json.loads(body.decode("utf-8")) if body.strip() else None
        except (ValueError, UnicodeDecodeError):
            parsed = None

        response = owner._handle(method, raw_path, query, headers, body)

        # Recorded *before* answering, so a client that has its response always finds the request recorded.
        owner._record(seq, owner._record_type(
            method=method, path=raw_path, query=query, headers=redact_headers(headers), json=parsed, raw_body=body,
            status=response.status, at=arrived, **owner._record_extras(response),
        ))
        if response.drop_connection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            self._send(response, head_only=method == "HEAD")
        owner._logger.debug("%s %s %s -> %s", owner._label, method, raw_path, response.status or "dropped")

    def _send(self, response: Response, *, head_only: bool = False) -> None:
        if isinstance(response.body, bytes):
            payload = response.body
        elif response.body is None:
            payload = b""
        else:
            payload = json.dumps(response.body).encode("utf-8")
        try:
            self.send_response(response.status)
            header_names = {k.lower() for k in response.headers}
            if payload and "content-type" not in header_names:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for name, value in response.headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload and not head_only:
                self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out during a simulated delay)
            self.close_connection = True
