"""An httpx transport whose HTTP/1.1 exchanges go through aiohttp.

httpx stays the client (authentication, timeouts, request building, the ``httpx.Response`` every caller
reads); only the exchange on the socket is aiohttp's. The dispatcher makes hundreds of calls per second,
and httpcore (with h11 and anyio) costs several times aiohttp's CPU per call: on the slower benchmark
machine a PATCH cost 3.5-4 ms of CPU through httpx alone and 1.9 ms through httpx with this transport,
which was most of a worker's time per delivered message.

What it keeps from httpx's own transport:

- the request goes out as httpx built it: method, headers and body, and the URL exactly as encoded (aiohttp
  would otherwise re-quote it, e.g. send ``%40`` as ``@``);
- the response body is handed over as received (``auto_decompress`` off), so httpx decodes it as usual;
- no cookies: aiohttp's session keeps none (a load balancer's ``Set-Cookie`` is never sent back);
- httpx's timeouts (``connect``, ``read``, ``pool``) apply per request;
- failures are httpx's exceptions: ``ConnectTimeout`` / ``ReadTimeout``, ``ConnectError`` for a refused or
  unreachable host, ``ReadError`` for a connection the server dropped, ``RemoteProtocolError`` for an answer
  that is not HTTP; callers that catch ``httpx.TimeoutException`` / ``httpx.TransportError`` see no
  difference.

The aiohttp session is created on first use, inside the running event loop, and closed by ``aclose``.

Why not the ``httpx-aiohttp`` package (0.2.0, measured 2026-12): it costs the same CPU per call (0.33 ms against
0.31 ms per PATCH to the sandbox, client process only, medians of three rounds of 3,000 calls) but re-quotes the
URL (``%40`` goes out as ``@``), reports a connection dropped after the request was sent as ``ConnectTimeout``
(a timeout, and one that says nothing was sent) instead of ``ReadError``, and keeps cookies unless given a
session of its own.
"""

from __future__ import annotations

import asyncio
import io

import aiohttp
import httpx
from yarl import URL


#: bodies above this go to aiohttp as a stream (a catalog import of 5,000 products is a few MB): aiohttp warns
#: that writing a large bytes body at once may hold the event loop
_STREAM_ABOVE = 1 << 20


def _body(content: bytes) -> bytes | io.BytesIO | None:
    if not content:
        return None
    return io.BytesIO(content) if len(content) > _STREAM_ABOVE else content


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 64, keepalive_seconds: float = 5.0):
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=self.keepalive_seconds)
            # no cookie jar: httpx's is off too (ctdd.dotdigital.client), every call stands alone
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout") or {}
        try:
            async with self._open().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=_body(request.content),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=timeout.get("pool"),
                                              sock_connect=timeout.get("connect"), sock_read=timeout.get("read")),
            ) as answer:
                body = await answer.read()
        except Exception as exc:
            mapped = _as_httpx_error(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        extensions = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode()
        return httpx.Response(answer.status, headers=answer.raw_headers, content=body, request=request,
                              extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _as_httpx_error(exc: Exception, request: httpx.Request) -> Exception:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's SocketTimeoutError and ServerTimeoutError are ones
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed answer
        return httpx.RemoteProtocolError(message, request=request)
    return exc
