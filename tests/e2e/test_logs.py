"""Logs of a running service: a forged line stays on its record's line, JSON lines carry trace ids, and a full run
with failures leaves no email, phone number or secret in the logs or in the stored failure texts.

The first two run ``ctdd serve`` as a subprocess and read its stderr; the scan runs the service in-process (for
its plugins) with the same logging set-up ``ctdd serve`` installs (``ctdd.logging_setup``), on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from ctdd import hookimpl
from ctdd.logging_setup import apply_settings, configure_logging
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from support import all_settled, contact_request, make_settings, stop_with_sigterm, wait_for, write_service_config

FORGED = "\n2026-01-01 00:00:00,000 CRITICAL ctdd: database corrupted, delete ctdd.db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(tmp_path: Path, sandbox, env_extra: dict[str, str]) -> tuple[subprocess.Popen, str, Path, Path]:
    """``ctdd serve`` on SQLite with stdout and stderr in their own files, once it answers health checks."""
    listen = f"127.0.0.1:{_free_port()}"
    config = write_service_config(tmp_path / "ctdd.toml", f"sqlite:///{tmp_path / 'ctdd.db'}", sandbox, listen=listen)
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    env = {**os.environ, "SANDBOX_PASSWORD": sandbox.password, "CTDD_LOG_LEVEL": "INFO", **env_extra}
    env.pop("CTDD_DOTDIGITAL_BASE_URL", None)
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ctdd", "serve", "--config", config], stdout=stdout,
                                stderr=stderr, env=env)
    await wait_for(lambda: proc.poll() is not None or "serving on" in out.read_text(), timeout=60, what="start-up")
    assert proc.poll() is None, err.read_text()
    return proc, listen, out, err


async def _rejected_with_forged_store_key(listen: str) -> None:
    async with grpc.aio.insecure_channel(listen) as channel:
        stub = pb_grpc.SyncServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SyncContact(contact_request("uk" + FORGED, email="forger@example.com"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_store_key_with_a_newline_cannot_forge_a_log_line(tmp_path, sandbox):
    proc, listen, _, err = await _serve(tmp_path, sandbox, {"CTDD_LOG_FORMAT": "text"})
    try:
        await _rejected_with_forged_store_key(listen)
        await wait_for(lambda: "rejected SyncContact" in err.read_text(), what="the rejection logged")
    finally:
        assert await stop_with_sigterm(proc) == 0
    lines = err.read_text().splitlines()
    records = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line)]
    assert records and len(records) == len(lines)  # every line is a record of its own (no traceback here)
    assert "CRITICAL" not in [line.split(" ")[2] for line in records]
    assert not [line for line in lines if line.startswith("2026-01-01")]
    [rejected] = [line for line in lines if "rejected SyncContact" in line]
    assert " WARNING " in rejected
    assert "uk\\n2026-01-01 00:00:00,000 CRITICAL ctdd: database corrupted" in rejected
    assert "forger@example.com" not in err.read_text()


async def test_json_logs_are_one_object_per_line_with_trace_ids(tmp_path, sandbox):
    proc, listen, _, err = await _serve(tmp_path, sandbox, {"CTDD_LOG_FORMAT": "json",
                                                             "OTEL_TRACES_EXPORTER": "console"})
    try:
        await _rejected_with_forged_store_key(listen)
        await wait_for(lambda: "rejected SyncContact" in err.read_text(), what="the rejection logged")
    finally:
        assert await stop_with_sigterm(proc) == 0
    lines = err.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert len(records) >= 3  # start-up, the rejection, the shutdown
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    [rejected] = [r for r in records if r["message"].startswith("rejected SyncContact")]
    assert rejected["level"] == "WARNING" and "uk\\n2026-01-01" in rejected["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", rejected["trace_id"]) and rejected["trace_id"] != "0" * 32
    assert re.fullmatch(r"[0-9a-f]{16}", rejected["span_id"])
    assert any(r["message"] == "shutting down" and "trace_id" not in r for r in records)  # no span current


# --- a full run with failures, then a scan of everything logged and stored ------------------------------------

EMAILS = ["jane.doe@example.com", "bounce.me@example.org", "retry.me@example.net", "plugin.boom@example.com",
          "queued.jane@example.com", "store.key@example.com", "bad-field@example.com", "dbfail@example.com"]
PHONES = ["+447700900123", "+447700900456", "+447700900789"]
BEARER = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"


def _variants(phone: str) -> list[str]:
    """A phone number as sent, without "+", national, spaced, and URL-encoded (in a request path)."""
    digits = phone.lstrip("+")
    return [phone, digits, "0" + digits[2:], f"+44 {digits[2:6]} {digits[6:]}", "%2B" + digits]


class FailingPlugin:
    """An enrichment plugin that fails for one contact, and a delivery observer that fails for another: their
    exception messages carry an email, a phone number, the account password and a bearer token."""

    def __init__(self, password: str):
        self.password = password

    @hookimpl
    def ctdd_enrich_contact(self, ctx, contact, mapped):
        if contact.identity.email == "plugin.boom@example.com":
            raise RuntimeError(f"loyalty lookup failed for {contact.identity.email} / {PHONES[2]}\n"
                               f"2026-01-01 CRITICAL forged (password {self.password}, Authorization: Bearer {BEARER})")
        return None

    @hookimpl
    def ctdd_delivery_result(self, ctx, outcome):
        if outcome.outcome == "dead":
            raise ValueError(f"observer failed for {EMAILS[1]} {PHONES[1]} using {self.password}")


@pytest.fixture
def captured_logs():
    """The service's logging set-up (as ``ctdd serve`` installs it) writing to a buffer, at DEBUG for ``ctdd``."""
    buf = io.StringIO()
    handler = configure_logging("INFO", "text", stream=buf)
    ctdd_logger = logging.getLogger("ctdd")
    level = ctdd_logger.level
    ctdd_logger.setLevel(logging.DEBUG)
    yield buf
    ctdd_logger.setLevel(level)
    logging.getLogger().removeHandler(handler)


async def test_a_run_with_failures_leaves_no_personal_data_or_secret_in_logs_or_tables(
        service_factory, database_url, sandbox, captured_logs):
    settings = make_settings(database_url, sandbox, max_attempts=3)
    apply_settings(settings)  # what ctdd serve does once the settings are loaded: format, secrets
    svc = await service_factory(settings, extra_plugins=[FailingPlugin(sandbox.password)])
    stub = svc.stub

    # delivered; then a 400 naming the contact (dead letter) and 500s (retried, then delivered)
    await stub.SyncContact(contact_request(customer_id="c-1", email=EMAILS[0], mobile=PHONES[0], first_name="Jane"))
    sandbox.inject_fault(status=400, method="PATCH", path_contains=EMAILS[1],
                         body={"message": f"Contact {EMAILS[1]} / {PHONES[1]} is invalid"})
    await stub.SyncContact(contact_request(customer_id="c-2", email=EMAILS[1], mobile=PHONES[1]))
    sandbox.inject_fault(status=500, times=2, method="PATCH", path_contains=EMAILS[2],
                         body={"message": f"internal error for {EMAILS[2]}"})
    await stub.SyncContact(contact_request(customer_id="c-3", email=EMAILS[2]))
    await stub.TrackEvent(pb.TrackEventRequest(
        store_key="uk", processing=pb.PROCESSING_QUEUED, behavioural_event=pb.BehaviouralEvent(
            event_id="ev-1", identity=pb.ContactIdentity(email=EMAILS[4], mobile_number=PHONES[0]),
            product_viewed=pb.ProductViewed(product_id="p-1", sku="SKU-1"))))

    # an exception in a plugin (the RPC fails FAILED_PRECONDITION naming the plugin; the traceback is logged)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SyncContact(contact_request(customer_id="c-4", email=EMAILS[3], mobile=PHONES[2]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # invalid requests: a mobile number not in E.164, an email as store key, emails in bad fields
    invalid = [
        contact_request(customer_id="c-5", email=EMAILS[0], mobile=_variants(PHONES[1])[3]),
        contact_request(EMAILS[5], email=EMAILS[0]),
        contact_request(customer_id="c-6", email=f"not an email {EMAILS[6]}", version=1, resource_id=EMAILS[6]),
    ]
    for request in invalid:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SyncContact(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for store_key, identity in ((EMAILS[5], pb.ContactIdentity(email=EMAILS[0])),
                                ("uk", pb.ContactIdentity(email=f"x {EMAILS[6]}", mobile_number=PHONES[2][:-4]))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.TrackEvent(pb.TrackEventRequest(store_key=store_key, behavioural_event=pb.BehaviouralEvent(
                event_id="ev-bad", identity=identity, custom_event=pb.CustomEvent(name="x"))))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # a database error, logged with its traceback (on PostgreSQL its DETAIL echoes the failing row)
    try:
        with svc.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO rejected_record (operation, record_id, reason, created_at) "
                                 "VALUES ('Test', :rid, NULL, CURRENT_TIMESTAMP)"), {"rid": EMAILS[7]})
    except sa.exc.IntegrityError as exc:
        logging.getLogger("ctdd.test").exception("could not write for %s: %s", EMAILS[7], exc)
    else:
        raise AssertionError("the NOT NULL violation did not happen")

    await wait_for(lambda: all_settled(svc) and svc.rows("SELECT 1 FROM event_inbox WHERE status = 'done'"),
                   timeout=30, what="deliveries and the queued event")
    dead = svc.rows("SELECT last_error FROM outbox_message WHERE status = 'dead'")
    assert dead and all(row["last_error"] for row in dead)
    assert len(svc.rows("SELECT id FROM rejected_record")) >= 5
    assert svc.rows("SELECT error FROM delivery_attempt WHERE outcome = 'retry'")

    logs = captured_logs.getvalue()
    stored = json.dumps([
        svc.rows("SELECT operation, store_key, record_type, record_id, reason, violations FROM rejected_record"),
        svc.rows("SELECT last_error FROM outbox_message"),
        svc.rows("SELECT error FROM delivery_attempt"),
        svc.rows("SELECT last_error FROM event_inbox"),
    ], default=str)
    # the failures were logged (the scan is not of an empty log) and masked where they named someone
    for expected in ("dead-lettered", "RuntimeError: loyalty lookup failed for <email>", "IntegrityError",
                     "observer failed", "rejected SyncContact", "rejected TrackEvent"):
        assert expected in logs, expected
    assert "<phone>" in logs and "<redacted>" in logs and "<email>" in stored
    forbidden = [*EMAILS, *(e.replace("@", "%40") for e in EMAILS), *(v for p in PHONES for v in _variants(p)),
                 sandbox.password, BEARER]
    for where, text in (("logs", logs), ("tables", stored)):
        leaked = [value for value in forbidden if value.lower() in text.lower()]
        assert not leaked, f"{where} leak {leaked}"
    assert not [line for line in logs.splitlines() if line.startswith("2026-01-01")]
