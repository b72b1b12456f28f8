"""``ctdd adapter pubsub-push`` with OIDC: Google-signed push tokens, verified with google-auth.

Nothing here reaches Google: the test makes its own RSA key pair and X.509 certificate, signs JWTs with it
(``google.auth.jwt.encode`` with an ``RSASigner``) and serves the certificate the way Google publishes its
signing certificates (``{"<key id>": "<PEM certificate>"}``) from a loopback HTTP server, whose URL the
adapter gets as ``certs_url``. Every refused push must leave the gRPC peer untouched.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from support import stop_with_sigterm
from support.scripted_sync_service import ScriptedSyncService
from ctdd.adapters.pubsub_push import PubSubPushAdapter, PubSubPushConfig, push_body
from ctdd.adapters.push_auth import OidcSettings

AUDIENCE = "https://push.example.com/ctdd"
ACCOUNT = "pubsub-push@my-project.iam.gserviceaccount.com"
KEY_ID = "test-key-1"


class SigningKey:
    """An RSA key pair, its self-signed certificate, and JWTs signed with it."""

    def __init__(self, key_id: str = KEY_ID):
        self.key_id = key_id
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctdd test signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.private.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(self.private, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self.signer = crypt.RSASigner.from_string(pem, key_id=key_id)

    def token(self, **overrides) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "azp": "1234567890", "sub": "1234567890",
                  "email": ACCOUNT, "email_verified": True, "iat": now, "exp": now + 3600}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(self.signer, claims).decode()


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey()


@pytest.fixture
async def certs(key):
    """Google's certificate endpoint, on loopback: counts its fetches; ``down`` makes it answer 500."""
    state = {"fetches": 0, "down": False, "certs": {key.key_id: key.cert_pem}}

    async def serve(request):
        state["fetches"] += 1
        if state["down"]:
            return web.Response(status=500)
        return web.json_response(state["certs"], headers={"Cache-Control": "public, max-age=3600"})

    app = web.Application()
    app.router.add_get("/oauth2/v1/certs", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth2/v1/certs"
    yield state
    await runner.cleanup()


@pytest.fixture
async def peer():
    service = await ScriptedSyncService().start()
    yield service
    await service.stop()


@pytest.fixture
async def adapter_url(peer, certs):
    config = PubSubPushConfig(listen="127.0.0.1:0", target=peer.target, store_key="uk", rpc_timeout=3.0,
                              oidc=OidcSettings(audience=AUDIENCE, service_accounts=(ACCOUNT,),
                                                certs_url=certs["url"]))
    adapter = PubSubPushAdapter(config)
    port = await adapter.start()
    yield f"http://127.0.0.1:{port}"
    await adapter.stop(grace=1.0)


def delivery(n: int) -> bytes:
    return push_body(json.dumps({"notificationType": "Message", "id": f"m-{n}", "ctdd_test": "good",
                                 "resource": {"typeId": "customer", "id": f"c-{n}"}}).encode(), message_id=str(n))


async def push(url: str, token: str | None, n: int) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient() as http:
        return await http.post(url + "/", content=delivery(n), headers=headers)


async def test_a_google_signed_token_of_the_push_account_is_forwarded(adapter_url, peer, key, certs):
    first = await push(adapter_url, key.token(), 1)
    second = await push(adapter_url, key.token(), 2)
    assert (first.status_code, second.status_code) == (204, 204)
    assert first.headers["x-ctdd-outcome"] == "accepted"
    assert sorted(peer.accepted_bodies()) == sorted([delivery(1), delivery(2)])
    assert certs["fetches"] == 1  # the certificates are cached for their max-age


@pytest.mark.parametrize("case, status", [
    ("wrong audience", 401), ("expired", 401), ("not yet valid", 401), ("wrong issuer", 401),
    ("unsigned", 401), ("signed by another key", 401), ("malformed", 401), ("no token", 401),
    ("wrong email", 403), ("email not verified", 403), ("no email", 403),
])
async def test_bad_tokens_are_refused_and_nothing_reaches_the_service(adapter_url, peer, key, case, status, caplog):
    now = int(time.time())
    tokens = {
        "wrong audience": lambda: key.token(aud="https://elsewhere.example.com/"),
        "expired": lambda: key.token(iat=now - 7200, exp=now - 3600),
        "not yet valid": lambda: key.token(iat=now + 3600, exp=now + 7200),
        "wrong issuer": lambda: key.token(iss="https://evil.example.com"),
        "unsigned": lambda: f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': KEY_ID})}.{key.token().split('.')[1]}.",
        "signed by another key": lambda: SigningKey(key_id=KEY_ID).token(),
        "malformed": lambda: "not-a-jwt",
        "no token": lambda: None,
        "wrong email": lambda: key.token(email="someone-else@other-project.iam.gserviceaccount.com"),
        "email not verified": lambda: key.token(email_verified=False),
        "no email": lambda: key.token(email=None, email_verified=None),
    }
    token = tokens[case]()
    with caplog.at_level("INFO", logger="ctdd.adapters"):
        response = await push(adapter_url, token, 3)
    assert response.status_code == status, response.text
    assert peer.calls == []
    [line] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert line.levelname == "WARNING"
    if token:
        assert all(part not in caplog.text for part in token.split(".") if part)


async def test_certificates_unavailable_is_503_so_pubsub_redelivers(adapter_url, peer, key, certs):
    certs["down"] = True
    response = await push(adapter_url, key.token(), 4)
    assert response.status_code == 503
    assert peer.calls == []
    certs["down"] = False
    assert (await push(adapter_url, key.token(), 4)).status_code == 204


async def test_a_rotated_key_is_picked_up_before_the_cache_expires(adapter_url, peer, key, certs, monkeypatch):
    assert (await push(adapter_url, key.token(), 5)).status_code == 204
    rotated = SigningKey(key_id="test-key-2")
    certs["certs"] = {key.key_id: key.cert_pem, rotated.key_id: rotated.cert_pem}
    # the cached certificates are older than the refetch threshold: make it so without sleeping
    from ctdd.adapters import push_auth

    real = push_auth.time.monotonic
    monkeypatch.setattr(push_auth.time, "monotonic", lambda: real() + 60)
    assert (await push(adapter_url, rotated.token(), 6)).status_code == 204
    assert certs["fetches"] == 2
    assert len(peer.accepted_bodies()) == 2


async def test_cli_with_oidc_settings_from_the_environment(peer, key, certs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CTDD_PUBSUB_PUSH_")},
           "CTDD_PUBSUB_PUSH_OIDC_AUDIENCE": AUDIENCE, "CTDD_PUBSUB_PUSH_OIDC_SERVICE_ACCOUNTS": ACCOUNT,
           "CTDD_LOG_LEVEL": "INFO"}
    log_path = tmp_path / "adapter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctdd", "adapter", "pubsub-push", "--listen", f"127.0.0.1:{port}",
             "--target", peer.target, "--store", "uk", "--oidc-certs-url", certs["url"]],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    token = key.token()
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                assert proc.poll() is None, log_path.read_text()
                try:
                    if (await http.get(url + "/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        ok = await push(url, token, 7)
        wrong = await push(url, key.token(email="intruder@example.com"), 8)
        assert (ok.status_code, wrong.status_code) == (204, 403)
    finally:
        assert await stop_with_sigterm(proc) == 0
    output = log_path.read_text()
    assert "OIDC" in output and token not in output and "intruder" not in output
    assert peer.accepted_bodies() == [delivery(7)]
