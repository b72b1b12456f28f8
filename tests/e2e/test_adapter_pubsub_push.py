"""``ctdd adapter pubsub-push`` over real HTTP on loopback, forwarding to a real gRPC peer.

Pub/Sub push semantics: 2xx acknowledges, anything else is redelivered. So: 204 only after the service
accepted the delivery, 503 for retryable failures, and poison is logged, dead-lettered to a file and
acknowledged (204, ``X-Ctdd-Outcome: poison``) because redelivering it can never help.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys

import httpx
import pytest

from support import stop_with_sigterm
from support.scripted_sync_service import wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from support.scripted_sync_service import ScriptedSyncService
from ctdd.adapters.pubsub_push import PubSubPushAdapter, PubSubPushConfig, push_body

TOKEN = "s3cret-token-value"


def delivery(marker: str, n: int) -> bytes:
    return json.dumps({"notificationType": "Message", "id": f"m-{n}", "ctdd_test": marker,
                       "resource": {"typeId": "customer", "id": f"c-{n}"}, "email": f"person{n}@example.com"}).encode()


@pytest.fixture
async def peer():
    service = await ScriptedSyncService().start()
    yield service
    await service.stop()


@pytest.fixture
async def adapter_factory():
    started = []

    async def start(target: str, **kw) -> tuple[PubSubPushAdapter, str]:
        # tests about forwarding run without authentication; those about it pass a token or OIDC settings
        kw.setdefault("insecure", not (kw.get("token") or kw.get("oidc")))
        config = PubSubPushConfig(listen="127.0.0.1:0", target=target, store_key="uk", rpc_timeout=3.0, **kw)
        adapter = PubSubPushAdapter(config)
        port = await adapter.start()
        started.append(adapter)
        return adapter, f"http://127.0.0.1:{port}"

    yield start
    for adapter in started:
        await adapter.stop(grace=1.0)


async def test_ack_only_after_ok_and_body_forwarded_verbatim(peer, adapter_factory):
    _, url = await adapter_factory(peer.target, token=TOKEN)
    payload = push_body(delivery("good", 1), message_id="111")
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{url}/?token={TOKEN}", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 204
    assert r.headers["x-ctdd-outcome"] == "accepted"
    [event] = [e for call in peer.calls for e in call]
    assert event.commercetools_delivery == payload  # the push body, byte for byte
    assert event.store_key == "uk" and event.priority == pb.PRIORITY_LIVE


async def test_retryable_is_503_and_the_redelivery_is_acked(peer, adapter_factory):
    _, url = await adapter_factory(peer.target)
    payload = push_body(delivery("flaky", 2), message_id="222")
    async with httpx.AsyncClient() as http:
        first = await http.post(url + "/", content=payload)
        second = await http.post(url + "/", content=payload)
    assert first.status_code == 503
    assert second.status_code == 204
    assert peer.accepted_bodies() == [payload]


async def test_target_down_is_503(adapter_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url = await adapter_factory(f"127.0.0.1:{port}")
    async with httpx.AsyncClient() as http:
        r = await http.post(url + "/", content=push_body(delivery("good", 3)))
    assert r.status_code == 503


async def test_whole_call_failure_is_503(peer, adapter_factory):
    _, url = await adapter_factory(peer.target)
    peer.fail_calls = 1
    async with httpx.AsyncClient() as http:
        r = await http.post(url + "/", content=push_body(delivery("good", 4)))
    assert r.status_code == 503 and peer.accepted_bodies() == []


async def test_poison_is_dead_lettered_and_acknowledged(peer, adapter_factory, tmp_path, caplog):
    dead = tmp_path / "dead"
    _, url = await adapter_factory(peer.target, dead_letter_dir=str(dead))
    payload = push_body(delivery("poison", 5), message_id="555")
    with caplog.at_level("INFO"):
        async with httpx.AsyncClient() as http:
            r = await http.post(url + "/", content=payload)
    assert r.status_code == 204
    assert r.headers["x-ctdd-outcome"] == "poison"
    [body_file] = list(dead.glob("*-555.body"))
    assert body_file.read_bytes() == payload
    assert stat.S_IMODE(body_file.stat().st_mode) == 0o600
    meta = json.loads(body_file.with_name(body_file.name.replace(".body", ".json")).read_text())
    assert meta["code"] == 3 and meta["message_id"] == "555"
    assert "555" in caplog.text and "person5" not in caplog.text  # ids and codes, never bodies


async def test_poison_with_unwritable_dead_letter_dir_is_not_acknowledged(peer, adapter_factory, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _, url = await adapter_factory(peer.target, dead_letter_dir=str(blocker / "dead"))
    async with httpx.AsyncClient() as http:
        r = await http.post(url + "/", content=push_body(delivery("poison", 6)))
    assert r.status_code == 503  # Pub/Sub keeps it instead of it being lost


async def test_token_check(peer, adapter_factory):
    _, url = await adapter_factory(peer.target, token=TOKEN)
    payload = push_body(delivery("good", 7))
    async with httpx.AsyncClient() as http:
        missing = await http.post(url + "/", content=payload)
        wrong = await http.post(url + "/?token=nope", content=payload)
        right = await http.post(f"{url}/?token={TOKEN}", content=payload)
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 403, 204)
    assert len(peer.accepted_bodies()) == 1


async def test_oversize_body_is_413_and_not_forwarded(peer, adapter_factory):
    _, url = await adapter_factory(peer.target, max_body_bytes=1024)
    async with httpx.AsyncClient() as http:
        big = await http.post(url + "/", content=push_body(b"x" * 4096))
        small = await http.post(url + "/", content=push_body(delivery("good", 8)))
    assert big.status_code == 413
    assert small.status_code == 204
    assert len([e for c in peer.calls for e in c]) == 1


async def _raw(url: str, request: bytes, *, close: bool = False) -> bytes:
    """Send ``request`` as is and return the answer's head (and what came with it); fails after 5 s without
    one. ``close``: hang up right after sending."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    if close:
        writer.close()
        return b""
    data = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    writer.close()
    return data


async def test_http_edge_cases_and_healthz(peer, adapter_factory):
    _, url = await adapter_factory(peer.target)
    async with httpx.AsyncClient() as http:
        assert (await http.get(url + "/healthz")).json() == {"status": "ok"}
        assert (await http.get(url + "/")).status_code == 405
        assert (await http.post(url + "/elsewhere", content=b"{}")).status_code == 404
    no_length = await _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert no_length.startswith(b"HTTP/1.1 411 ")
    empty_chunked = await _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert empty_chunked.startswith(b"HTTP/1.1 400 ")
    garbage = await _raw(url, b"NONSENSE\r\n\r\n")
    assert garbage.split(b" ")[1] == b"400"
    no_host = await _raw(url, b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert no_host.split(b" ")[1] == b"400"
    huge_head = await _raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert huge_head.split(b" ")[1] == b"400"
    await _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}", close=True)  # short body
    assert (await _raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    assert peer.calls == []


async def test_duplicate_content_length_is_400_at_once(peer, adapter_factory, caplog):
    """The hand-written parser waited 30 s for a body and answered 408; a conflicting or repeated
    Content-Length (request smuggling material) is refused as soon as the head is read."""
    _, url = await adapter_factory(peer.target, token=TOKEN)
    body = push_body(delivery("good", 20))
    for lengths in ((len(body), len(body)), (len(body), len(body) + 5)):
        head = f"POST /?token={TOKEN} HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"Content-Length: {n}\r\n" for n in lengths) + "\r\n"
        with caplog.at_level("INFO"):
            answer = await _raw(url, head.encode() + body)
        assert answer.split(b" ")[1] == b"400", answer[:200]
    assert peer.calls == []
    assert "malformed HTTP request" in caplog.text and TOKEN not in caplog.text


async def test_oversize_bodies_are_413_before_forwarding(peer, adapter_factory):
    _, url = await adapter_factory(peer.target, max_body_bytes=1024)
    declared = await _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    assert declared.startswith(b"HTTP/1.1 413 ")
    chunk = b"x" * 4096
    chunked = await _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert peer.calls == []


async def test_a_body_that_does_not_arrive_in_time_is_408(peer, adapter_factory):
    _, url = await adapter_factory(peer.target, body_timeout=0.5)
    answer = await _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"message\"")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert peer.calls == []


async def test_concurrent_pushes_share_batches(peer, adapter_factory):
    _, url = await adapter_factory(peer.target)
    payloads = [push_body(delivery("good", n), message_id=str(n)) for n in range(40)]
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=40)) as http:
        responses = await asyncio.gather(*(http.post(url + "/", content=p) for p in payloads))
    assert {r.status_code for r in responses} == {204}
    assert sorted(peer.accepted_bodies()) == sorted(payloads)
    assert len(peer.calls) < len(payloads)  # coalesced into TrackEventBatch calls


async def test_cli_adapter_with_env_token_until_sigterm(peer, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "adapter.log"
    env = {**os.environ, "CTDD_PUBSUB_PUSH_TOKEN": TOKEN, "CTDD_LOG_LEVEL": "INFO"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctdd", "adapter", "pubsub-push", "--listen", f"127.0.0.1:{port}",
             "--target", peer.target, "--store", "uk", "--dead-letter-dir", str(tmp_path / "dead")],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async def healthy():
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(url + "/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        for _ in range(100):
            assert proc.poll() is None, log_path.read_text()
            if await healthy():
                break
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as http:
            ok = await http.post(f"{url}/?token={TOKEN}", content=push_body(delivery("good", 9), message_id="909"))
            poison = await http.post(f"{url}/?token={TOKEN}", content=push_body(delivery("poison", 10), message_id="1010"))
            denied = await http.post(f"{url}/", content=push_body(delivery("good", 11)))
        assert (ok.status_code, poison.status_code, denied.status_code) == (204, 204, 401)
    finally:
        returncode = await stop_with_sigterm(proc)
    output = log_path.read_text()
    assert returncode == 0, output[-3000:]
    assert list((tmp_path / "dead").glob("*-1010.body"))
    assert TOKEN not in output and "person" not in output


async def test_shutdown_finishes_requests_in_progress(peer, adapter_factory):
    adapter, url = await adapter_factory(peer.target)
    peer.delay = 1.0
    async with httpx.AsyncClient() as http:
        request = asyncio.create_task(http.post(url + "/", content=push_body(delivery("good", 12))))
        await wait_for(lambda: peer.calls, what="the request to reach the service")
        await adapter.stop(grace=5.0)
        response = await request
        assert response.status_code == 204
        with pytest.raises(httpx.ConnectError):
            await http.post(url + "/", content=push_body(delivery("good", 13)))
    assert len(peer.accepted_bodies()) == 1


# -- against the real service -----------------------------------------------------------------------

async def test_end_to_end_with_the_real_service(adapter_factory, service_factory, sqlite_url, sandbox, tmp_path):
    """Pub/Sub push -> adapter -> ctdd-sync -> Dotdigital sandbox."""
    from support import ct_payloads as ct
    from support import all_settled, make_settings, wait_for as wait_settled
    from ctdd.testing.commercetools_fake import FakeCommercetools

    with FakeCommercetools(project_key=ct.PROJECT) as fake_ct:
        svc = await service_factory(make_settings(sqlite_url, sandbox, commercetools=fake_ct))
        _, url = await adapter_factory(f"127.0.0.1:{svc.app.port}", token=TOKEN,
                                       dead_letter_dir=str(tmp_path / "dead"))
        created = ct.message("customer", "cust-ps-1", "CustomerCreated", version=1,
                             customer=ct.customer("cust-ps-1", "cleo@example.com", first="Cleo"))
        async with httpx.AsyncClient() as http:
            first = await http.post(f"{url}/?token={TOKEN}", content=ct.pubsub_push(created))
            again = await http.post(f"{url}/?token={TOKEN}", content=ct.pubsub_push(created))
            poison = await http.post(f"{url}/?token={TOKEN}",
                                     content=json.dumps({"message": {"data": "!!!", "messageId": "77"}}).encode())
        assert (first.status_code, again.status_code) == (204, 204)
        assert first.headers["x-ctdd-outcome"] == "accepted"
        assert poison.status_code == 204 and poison.headers["x-ctdd-outcome"] == "poison"
        assert list((tmp_path / "dead").glob("*-77.body"))
        await wait_settled(lambda: all_settled(svc), what="deliveries")
        assert sandbox.get_contact(email="cleo@example.com")["dataFields"]["FIRSTNAME"] == "Cleo"
        assert len([r for r in sandbox.requests if r.method == "PATCH" and r.status < 300]) == 1


async def test_cli_refuses_to_start_with_a_store_the_service_does_not_know(service_factory, sqlite_url, sandbox):
    """A wrong --store would turn every delivery into poison; the adapter's start-up probe catches it."""
    from support import make_settings

    svc = await service_factory(make_settings(sqlite_url, sandbox))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ctdd", "adapter", "pubsub-push", "--listen", "127.0.0.1:0",
        "--target", f"127.0.0.1:{svc.app.port}", "--store", "no-such-store", "--insecure",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "refused store key 'no-such-store'" in err.decode()


# -- who may push ------------------------------------------------------------------------------------

def test_the_adapter_refuses_to_be_built_without_authentication():
    from ctdd.adapters.push_auth import InsecureConfigError, OidcSettings

    with pytest.raises(InsecureConfigError, match="--insecure"):
        PubSubPushAdapter(PubSubPushConfig(listen="127.0.0.1:0", target="127.0.0.1:1", store_key="uk"))
    with pytest.raises(InsecureConfigError, match="service account"):  # the audience alone admits anyone
        OidcSettings(audience="https://push.example.com/", service_accounts=())


async def test_cli_refuses_to_start_without_authentication_unless_insecure(peer, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTDD_PUBSUB_PUSH_")}
    base = [sys.executable, "-m", "ctdd", "adapter", "pubsub-push", "--target", peer.target, "--store", "uk"]
    for extra in ([], ["--oidc-audience", "https://push.example.com/"]):
        proc = await asyncio.create_subprocess_exec(*base, "--listen", "127.0.0.1:0", *extra, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err.decode()
        assert "pubsub-push:" in err.decode()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "adapter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*base, "--listen", f"127.0.0.1:{port}", "--insecure"], stdout=log,
                                stderr=subprocess.STDOUT, env={**env, "CTDD_LOG_LEVEL": "INFO"})
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                assert proc.poll() is None, log_path.read_text()
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            r = await http.post(f"http://127.0.0.1:{port}/", content=push_body(delivery("good", 30)))
        assert r.status_code == 204
    finally:
        assert await stop_with_sigterm(proc) == 0
    assert "WITHOUT authentication" in log_path.read_text()


async def test_shared_token_in_query_or_bearer_header_and_one_log_line_per_refusal(peer, adapter_factory, caplog):
    _, url = await adapter_factory(peer.target, token=TOKEN)
    payload = push_body(delivery("good", 31))
    with caplog.at_level("INFO", logger="ctdd.adapters"):
        async with httpx.AsyncClient() as http:
            query = await http.post(f"{url}/?token={TOKEN}", content=payload)
            bearer = await http.post(url + "/", content=payload, headers={"Authorization": f"Bearer {TOKEN}"})
            wrong_bearer = await http.post(url + "/", content=payload, headers={"Authorization": "Bearer nope"})
            basic = await http.post(url + "/", content=payload, headers={"Authorization": "Basic Zm9vOmJhcg=="})
            wrong_query = await http.post(url + "/?token=" + TOKEN[:-1], content=payload,
                                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert (query.status_code, bearer.status_code) == (204, 204)
    assert (wrong_bearer.status_code, basic.status_code, wrong_query.status_code) == (403, 401, 403)
    assert len(peer.accepted_bodies()) == 2
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and all(r.levelname == "WARNING" for r in refusals)
    assert TOKEN not in caplog.text and TOKEN[:-1] not in caplog.text
