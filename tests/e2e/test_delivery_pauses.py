"""Accounts that stop working pause, they do not dead-letter (issue 14, item 1).

* Dotdigital answers 401 for a while (a rotated API user password): the account pauses, its health is
  NOT_SERVING, one ERROR line says what to fix, nothing is dead and no attempt counts; once the password
  works again every acknowledged update arrives, in order, and health is SERVING again. Through the single
  calls and through bulk imports.
* A 5xx outage longer than ``max_attempts`` of backoff parks the messages (with their last response code
  and error), logs one ERROR line for the account, and resumes them once the account delivers again, or by
  the ``park_retry_minutes`` probe when nothing else is sent.

Real gRPC calls, the sandbox over real HTTP, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.helpers import contact_request, make_settings, outbox_rows, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PAUSE_LOGGER = "ctdd.delivery.account_guard"


def _errors(caplog, logger: str = PAUSE_LOGGER) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.ERROR]


async def _health(svc, name: str) -> int:
    response = await health_pb2_grpc.HealthStub(svc.channel).Check(health_pb2.HealthCheckRequest(service=name))
    return response.status


async def _wait_health(svc, name: str, expected: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (status := await _health(svc, name)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"health of {name!r} stayed {status}"
        await asyncio.sleep(0.02)


def _statuses(svc) -> list[str]:
    return [r["status"] for r in outbox_rows(svc)]


async def _burst(svc, people: int, updates: int) -> None:
    """``updates`` acknowledged versions of ``people`` contacts, the last one naming ``v<updates>``."""
    for version in range(1, updates + 1):
        await asyncio.gather(*(
            svc.stub.SyncContact(contact_request(customer_id=f"c-{i}", email=f"person{i}@example.com",
                                                 first_name=f"P{i}", last_name=f"v{version}",
                                                 version=version))
            for i in range(people)))


def _all_arrived(sandbox, people: int, updates: int) -> bool:
    for i in range(people):
        contact = sandbox.get_contact(email=f"person{i}@example.com")
        if contact is None or contact["dataFields"].get("LASTNAME") != f"v{updates}":
            return False
    return True


@pytest.mark.parametrize("path", ["single", "bulk"])
async def test_a_401_window_pauses_the_account_and_every_acknowledged_update_arrives_afterwards(
        service_factory, database_url, sandbox, caplog, path):
    caplog.set_level(logging.INFO, logger="ctdd")
    bulk = dict(bulk_backlog_threshold=20, bulk_min_batch=5, bulk_poll_min_seconds=0.05) if path == "bulk" else {}
    settings = make_settings(database_url, sandbox, max_attempts=3, auth_probe_initial_seconds=0.2,
                             auth_probe_max_seconds=0.4, **bulk)
    svc = await service_factory(settings)
    assert await _health(svc, "ctdd.account/main") == SERVING
    assert await _health(svc, "ctdd.delivery") == SERVING

    password = sandbox.password
    sandbox.password = "rotated-by-someone-else"  # every call now answers 401
    people, updates = 30, 3
    await _burst(svc, people, updates)

    await wait_for(lambda: any(r.status == 401 for r in sandbox.requests), what="a 401")
    for name in ("ctdd.account/main", "ctdd.delivery"):
        await _wait_health(svc, name, NOT_SERVING)
    assert await _health(svc, "") == SERVING  # updates are still accepted
    # The probes go on failing for a while (401 after 401): nothing dies, no attempt is counted.
    await wait_for(lambda: sum(r.status == 401 and "account-info" in r.path for r in sandbox.requests) >= 3,
                   timeout=15, what="several failed probes")
    rows = outbox_rows(svc)
    assert {r["status"] for r in rows} <= {"pending", "merged", "in_flight"}
    assert all(r["attempts"] == 0 for r in rows)
    assert not svc.rows("SELECT 1 FROM delivery_attempt WHERE response_code = 401")
    assert any(r["last_response_code"] == 401 for r in rows)

    sandbox.password = password  # the credentials work again
    await wait_for(lambda: _all_arrived(sandbox, people, updates), timeout=30, what="every update in Dotdigital")
    await wait_for(lambda: set(_statuses(svc)) <= {"delivered", "merged"}, timeout=10, what="all delivered")
    assert "dead" not in _statuses(svc)
    assert await _health(svc, "ctdd.account/main") == SERVING
    assert await _health(svc, "ctdd.delivery") == SERVING

    errors = _errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "main" in message and "401" in message and "password" in message and "PAUSED" in message
    assert password not in caplog.text and "rotated-by-someone-else" not in caplog.text
    assert not [r for r in caplog.records if r.name == "ctdd.delivery.dispatcher" and "dead-lettered" in r.getMessage()]


async def test_workers_without_the_grpc_server_pause_together_and_log_once(service_factory, database_url, sandbox,
                                                                           caplog):
    """``ctdd worker`` (no gRPC server) pauses on 401 like ``ctdd serve``. The pause is kept in the database: on
    PostgreSQL two workers share it, and the episode is logged once, not once per worker."""
    from ctdd.runtime.app import App

    caplog.set_level(logging.INFO, logger="ctdd")
    settings = make_settings(database_url, sandbox, auth_probe_initial_seconds=0.2, auth_probe_max_seconds=0.4)
    svc = await service_factory(settings, run_dispatcher=False)  # the API only: it stores, it does not deliver
    workers = [App(settings, serve_grpc=False, run_dispatcher=True)
               for _ in range(2 if database_url.startswith("postgresql") else 1)]
    for worker in workers:
        await worker.start()
    try:
        password = sandbox.password
        sandbox.password = "rotated"
        await _burst(svc, 10, 2)
        await wait_for(lambda: sum(r.status == 401 for r in sandbox.requests) >= 3, what="401s")
        await asyncio.sleep(0.5)  # time for retries, had they counted
        rows = outbox_rows(svc)
        assert "dead" not in {r["status"] for r in rows} and all(r["attempts"] == 0 for r in rows)
        assert svc.rows("SELECT name FROM lease WHERE name = 'dotdigital.auth_pause:main'")
        sandbox.password = password
        await wait_for(lambda: _all_arrived(sandbox, 10, 2), timeout=30, what="every update in Dotdigital")
        await wait_for(lambda: not svc.rows("SELECT 1 FROM lease WHERE name LIKE 'dotdigital.auth_pause:%'"),
                       what="the pause ended")
    finally:
        for worker in workers:
            await worker.stop(grace=1.0)
    assert len(_errors(caplog)) == 1, [r.getMessage() for r in _errors(caplog)]


@pytest.mark.parametrize("resume_by", ["a later delivery", "the park probe"])
async def test_a_5xx_outage_longer_than_max_attempts_parks_and_resumes(service_factory, database_url, sandbox,
                                                                        caplog, resume_by):
    caplog.set_level(logging.INFO, logger="ctdd")
    settings = make_settings(database_url, sandbox, max_attempts=3, backoff_base_seconds=0.05,
                             backoff_cap_seconds=0.1,
                             park_retry_minutes=60.0 if resume_by == "a later delivery" else 0.02)
    svc = await service_factory(settings)
    sandbox.inject_fault(status=503, times=10_000, path_contains="/contacts/v3/")  # a long outage
    people, updates = 5, 2
    await _burst(svc, people, updates)

    def parked() -> list[dict]:
        return [r for r in outbox_rows(svc) if r["status"] == "parked"]

    await wait_for(lambda: len(parked()) == people, timeout=20, what="every contact's head parked")
    rows = outbox_rows(svc)
    assert "dead" not in {r["status"] for r in rows}
    for row in parked():
        assert row["last_response_code"] == 503 and row["attempts"] == 3
        assert "parked after 3 attempts" in row["last_error"] and "503" in row["last_error"]
    # the later update of each contact waits behind its parked head
    assert sum(r["status"] in ("pending", "merged") for r in rows) == people * (updates - 1)
    await asyncio.sleep(0.3)
    errors = _errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "main" in errors[0].getMessage() and "PARKED" in errors[0].getMessage()

    sandbox.clear_faults()  # the outage ends
    if resume_by == "a later delivery":
        await svc.stub.SyncContact(contact_request(customer_id="c-new", email="newcomer@example.com",
                                                   first_name="New"))
    await wait_for(lambda: _all_arrived(sandbox, people, updates), timeout=30, what="every update in Dotdigital")
    await wait_for(lambda: set(_statuses(svc)) <= {"delivered", "merged"}, timeout=10, what="all delivered")
    assert not svc.rows("SELECT 1 FROM lease WHERE name = 'dotdigital.parked:main'")
    assert len(_errors(caplog)) == 1


async def test_permanent_4xx_still_dead_letters_at_once(service_factory, database_url, sandbox):
    svc = await service_factory(make_settings(database_url, sandbox, max_attempts=3))
    sandbox.inject_fault(status=400, times=1, path_contains="/contacts/v3/",
                         body={"errorCode": "contacts:invalid", "description": "invalid"})
    await svc.stub.SyncContact(contact_request(customer_id="c-1", email="bad@example.com"))
    await wait_for(lambda: _statuses(svc) == ["dead"], what="the dead letter")
    assert outbox_rows(svc)[0]["attempts"] == 1 and outbox_rows(svc)[0]["last_response_code"] == 400
