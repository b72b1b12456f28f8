"""The dispatcher's HTTP transport (httpx client, aiohttp exchange) against a real loopback HTTP server:
what goes on the wire, what comes back, and which httpx error each failure becomes."""

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.errors import DotdigitalTransportError
from ctdd.dotdigital.transport import AiohttpTransport


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def do_PATCH(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Recorder.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path.startswith("/drop"):
            self.connection.shutdown(socket.SHUT_RDWR)  # no answer at all
            return
        payload = gzip.compress(json.dumps({"echo": json.loads(body or b"null"), "contactId": 5}).encode())
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-RateLimit-Remaining", "41")
        self.send_header("Set-Cookie", "AWSALB=sticky; Path=/")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def test_the_request_goes_out_as_httpx_built_it_and_the_answer_comes_back_decoded(server):
    async with httpx.AsyncClient(transport=AiohttpTransport(), auth=("user", "secret")) as client:
        response = await client.patch(f"{server}/contacts/v3/email/jane%2Bpromo%40example.com?merge-option=overwrite",
                                      json={"dataFields": {"FIRSTNAME": "Jane"}}, headers={"X-Ctdd-Message-Id": "7"})
    assert response.status_code == 201 and response.reason_phrase == "Created"
    assert response.json() == {"echo": {"dataFields": {"FIRSTNAME": "Jane"}}, "contactId": 5}  # gunzipped by httpx
    assert response.headers["x-ratelimit-remaining"] == "41"
    ((method, path, headers, body),) = _Recorder.seen
    assert method == "PATCH"
    assert path == "/contacts/v3/email/jane%2Bpromo%40example.com?merge-option=overwrite"  # not re-quoted
    assert headers["authorization"] == "Basic dXNlcjpzZWNyZXQ="  # user:secret
    assert headers["x-ctdd-message-id"] == "7" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"dataFields": {"FIRSTNAME": "Jane"}}


async def test_a_refused_connection_is_a_connect_error_not_a_timeout():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/v2/account-info")
    async with DotdigitalClient(api_user="u@example.com", password="p", base_url=f"http://127.0.0.1:{port}",
                                discover_endpoint=False, transport=AiohttpTransport()) as dd:
        with pytest.raises(DotdigitalTransportError) as info:
            await dd.list_data_fields()
    assert info.value.code == "TRANSPORT_ERROR" and info.value.retryable


async def test_a_dropped_connection_is_a_read_error_and_the_transport_goes_on(server):
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ReadError):
            await client.patch(f"{server}/drop", content=b"{}")
        assert (await client.patch(f"{server}/fine", content=b"{}")).status_code == 201


async def test_the_dotdigital_client_keeps_no_cookies(server):
    """A load balancer's Set-Cookie is not sent back: every call stands alone (and httpx's cookie jar
    cost CPU on every call)."""
    async with DotdigitalClient(api_user="u@example.com", password="p", base_url=server, discover_endpoint=False,
                                transport=AiohttpTransport()) as dd:
        for _ in range(2):
            await dd.upsert_contact("email", "jane@example.com", {"dataFields": {"FIRSTNAME": "Jane"}})
    assert [headers.get("cookie") for _, _, headers, _ in _Recorder.seen] == [None, None]
    async with httpx.AsyncClient(transport=AiohttpTransport()) as plain:  # (a client with a jar would send it)
        for _ in range(2):
            await plain.patch(f"{server}/x", content=b"{}")
    assert _Recorder.seen[-1][2].get("cookie") == "AWSALB=sticky"


async def test_the_transport_itself_keeps_no_cookies_for_a_host_name(server):
    """aiohttp's own cookie jar (which, unlike httpx's, ignores IP addresses) must not send a Set-Cookie back
    either: against a host name, with httpx's jar off, the second call carries no cookie."""
    from ctdd.dotdigital.client import _NoCookies

    by_name = server.replace("127.0.0.1", "localhost")
    async with httpx.AsyncClient(transport=AiohttpTransport(), cookies=_NoCookies()) as client:
        for _ in range(2):
            assert (await client.patch(f"{by_name}/x", content=b"{}")).status_code == 201
    assert [headers.get("cookie") for _, _, headers, _ in _Recorder.seen] == [None, None]
