"""``scripts/serve`` with extra arguments still runs against the bundled sandbox (it keeps ``--sandbox``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_serve_with_listen_keeps_the_sandbox_and_stops_cleanly_on_sigterm(tmp_path):
    target = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTDD_")}  # no config from the environment
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(ROOT / "scripts" / "serve"), "--listen", target, "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not _serving(target):
            assert proc.poll() is None, f"scripts/serve exited with {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no SERVING health answer within 20 s:\n{log_path.read_text()}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
