"""``ctdd serve`` refuses to listen beyond loopback without TLS or tokens unless ``--insecure`` is given, and
serves TLS with tokens from a configuration file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ctdd.api.auth import hash_token
from support.certs import Authority

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CTDD_")}


def _serve(args: list[str], tmp_path: Path) -> subprocess.Popen:
    log_path = tmp_path / "serve.log"
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "ctdd", "serve", "--sandbox",
                                 "--database-url", f"sqlite:///{tmp_path / 'x.db'}", *args],
                                cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _wait_serving(proc: subprocess.Popen, channel: grpc.Channel, log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"ctdd serve exited with {proc.returncode}:\n{log_path.read_text()}"
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, f"no SERVING health answer within 20 s:\n{log_path.read_text()}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, log_path: Path) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_non_loopback_address_without_tls_or_tokens(tmp_path):
    proc = _serve(["--listen", "0.0.0.0:0"], tmp_path)
    assert proc.wait(timeout=30) == 2
    output = (tmp_path / "serve.log").read_text()
    assert "refusing to listen on 0.0.0.0:0" in output
    assert "--insecure" in output and "tls_cert_file" in output and "tokens_file" in output


def test_serve_insecure_listens_on_every_address(tmp_path):
    port = _free_port()
    proc = _serve(["--listen", f"0.0.0.0:{port}", "--insecure"], tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        _wait_serving(proc, channel, tmp_path / "serve.log")
    _stop(proc, tmp_path / "serve.log")
    assert "INSECURE: listening on 0.0.0.0" in (tmp_path / "serve.log").read_text()


def test_serve_with_tls_and_tokens_from_the_configuration_file(tmp_path):
    authority = Authority("server", tmp_path / "pki")
    cert, key = authority.issue("ctdd", server=True)
    token = "deploy-token-5e6f7a8b9c0d1e2f3a4b"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "adapter"\nsha256 = "{hash_token(token)}"\n')
    port = _free_port()
    config = tmp_path / "ctdd.toml"
    config.write_text(f"""
[service]
listen = "0.0.0.0:{port}"
tls_cert_file = "{cert}"
tls_key_file = "{key}"
tokens_file = "{tokens}"
""")
    proc = _serve(["--config", str(config)], tmp_path)
    credentials = grpc.ssl_channel_credentials(root_certificates=authority.ca_pem)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        _wait_serving(proc, channel, tmp_path / "serve.log")
        from ctdd.sync.v1 import admin_service_pb2 as admin_pb, admin_service_pb2_grpc as admin_grpc

        admin = admin_grpc.AdminServiceStub(channel)
        try:
            admin.ListTriggers(admin_pb.ListTriggersRequest(store_key="default", email="a@example.com"),
                               timeout=5, metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        else:
            raise AssertionError("a non-operator token called AdminService")
    _stop(proc, tmp_path / "serve.log")
    output = (tmp_path / "serve.log").read_text()
    assert "TLS, 1 token(s)" in output
    assert token not in output
