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
    # the account is paused (health) as soon as the 401 comes back; the refused message is put back to pending
    # with its code by the settler's next commit, which a busy machine can hold back beyond the probes above
    await wait_for(lambda: any(r["last_response_code"] == 401 for r in outbox_rows(svc)), timeout=15,
                   what="the refused message back to pending with its 401")
    rows = outbox_rows(svc)
    assert {r["status"] for r in rows} <= {"pending", "merged", "in_flight"}
    assert all(r["attempts"] == 0 for r in rows)
    assert not svc.rows("SELECT 1 FROM delivery_attempt WHERE response_code = 401")

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
        assert await _health(svc, "ctdd.delivery") == SERVING
        password = sandbox.password
        sandbox.password = "rotated"
        await _burst(svc, 10, 2)
        await wait_for(lambda: sum(r.status == 401 for r in sandbox.requests) >= 3, what="401s")
        # `ctdd serve --no-dispatcher` reads the workers' pause from the database: its health follows it
        for name in ("ctdd.account/main", "ctdd.delivery"):
            await _wait_health(svc, name, NOT_SERVING)
        assert await _health(svc, "") == SERVING
        await asyncio.sleep(0.5)  # time for retries, had they counted
        rows = outbox_rows(svc)
        assert "dead" not in {r["status"] for r in rows} and all(r["attempts"] == 0 for r in rows)
        assert svc.rows("SELECT name FROM lease WHERE name = 'dotdigital.auth_pause:main'")
        sandbox.password = password
        await wait_for(lambda: _all_arrived(sandbox, 10, 2), timeout=30, what="every update in Dotdigital")
        await wait_for(lambda: not svc.rows("SELECT 1 FROM lease WHERE name LIKE 'dotdigital.auth_pause:%'"),
                       what="the pause ended")
        for name in ("ctdd.account/main", "ctdd.delivery"):
            await _wait_health(svc, name, SERVING)
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


def _pause_lines(caplog) -> list[str]:
    return [r.getMessage() for r in _errors(caplog) if "PAUSED" in r.getMessage()]


async def test_a_403_of_one_message_parks_it_and_does_not_pause_the_account_again(service_factory, database_url,
                                                                                 sandbox, caplog):
    """One contact's call answers 403 for ever (e.g. a call the API user may not make), the account's credentials
    work. The first 403 pauses the account once; the probe succeeds; the same message refused again is its own
    failure: parked with its 403 (visible in ``ctdd failures``), and the account is not paused again for it,
    while every other contact is delivered."""
    from ctdd.delivery import failure_view

    caplog.set_level(logging.INFO, logger="ctdd")
    settings = make_settings(database_url, sandbox, max_attempts=3, auth_probe_initial_seconds=0.2,
                             auth_probe_max_seconds=0.4, max_parks=100, park_retry_minutes=60.0)
    svc = await service_factory(settings)
    sandbox.inject_fault(status=403, times=100_000, path_contains="forbidden@example.com")
    await svc.stub.SyncContact(contact_request(customer_id="c-forbidden", email="forbidden@example.com",
                                               first_name="F", version=1))

    def forbidden() -> dict:
        return next((r for r in outbox_rows(svc) if r["record_id"] == "c-forbidden"), {})

    await wait_for(lambda: forbidden().get("status") == "parked", timeout=15, what="the 403 message parked")
    row = forbidden()
    assert row["last_response_code"] == 403 and "403" in row["last_error"]
    assert not svc.rows("SELECT 1 FROM lease WHERE name = 'dotdigital.auth_pause:main'")
    assert len(_pause_lines(caplog)) == 1, _pause_lines(caplog)
    views, _ = failure_view.list_failures(svc.engine, failure_view.Filters(statuses=("parked",)))
    assert [(v.ref, v.response_code) for v in views] == [(f"outbox:{row['id']}", 403)]

    # The account keeps delivering: every other contact arrives, the parked message is resumed by those
    # deliveries and parked again, and the account is never paused again.
    people, updates = 10, 2
    await _burst(svc, people, updates)
    await wait_for(lambda: _all_arrived(sandbox, people, updates), timeout=20, what="every other contact")
    await wait_for(lambda: svc.rows("SELECT 1 FROM delivery_attempt WHERE outcome = 'resumed'"), timeout=10,
                   what="the parked message resumed by another delivery")
    await wait_for(lambda: forbidden().get("status") == "parked", timeout=10, what="parked again")
    assert len(_pause_lines(caplog)) == 1, _pause_lines(caplog)
    assert await _health(svc, "ctdd.delivery") == SERVING
    assert await _health(svc, "ctdd.account/main") == SERVING
    assert "dead" not in _statuses(svc)


async def test_a_401_twice_for_the_same_message_without_a_working_probe_keeps_pausing(service_factory,
                                                                                      database_url, sandbox):
    """A 401 is the credentials: the message goes back to pending (never parked) until a probe succeeds."""
    settings = make_settings(database_url, sandbox, auth_probe_initial_seconds=0.2, auth_probe_max_seconds=0.4)
    svc = await service_factory(settings)
    password = sandbox.password
    sandbox.password = "rotated"
    await svc.stub.SyncContact(contact_request(customer_id="c-1", email="person0@example.com", first_name="P0",
                                               last_name="v1", version=1))
    await wait_for(lambda: sum(r.status == 401 and "account-info" in r.path for r in sandbox.requests) >= 2,
                   what="failed probes")
    assert set(_statuses(svc)) <= {"pending", "in_flight"}
    assert not svc.rows("SELECT 1 FROM delivery_attempt")
    sandbox.password = password
    await wait_for(lambda: _all_arrived(sandbox, 1, 1), timeout=15, what="the update in Dotdigital")


async def test_a_message_that_always_gets_5xx_goes_dead_after_max_parks(service_factory, database_url, sandbox,
                                                                        caplog):
    """A message-specific 500 while the account delivers everything else: parked, resumed by the other
    deliveries, parked again ... the ``max_parks``-th time it goes to ``dead`` with a clear error, and its
    contact's partition is free again."""
    caplog.set_level(logging.INFO, logger="ctdd")
    settings = make_settings(database_url, sandbox, max_attempts=2, backoff_base_seconds=0.02,
                             backoff_cap_seconds=0.05, max_parks=3, park_retry_minutes=60.0)
    svc = await service_factory(settings)
    sandbox.inject_fault(status=500, times=100_000, path_contains="broken@example.com")
    await svc.stub.SyncContact(contact_request(customer_id="c-broken", email="broken@example.com",
                                               first_name="B", version=1))

    def head() -> dict:
        return next((r for r in outbox_rows(svc) if r["record_id"] == "c-broken"), {})

    others = 0
    deadline = asyncio.get_running_loop().time() + 30
    while head().get("status") != "dead":  # the account keeps delivering other contacts
        assert asyncio.get_running_loop().time() < deadline, f"the broken message stayed {head().get('status')}"
        await svc.stub.SyncContact(contact_request(customer_id=f"c-other-{others}",
                                                   email=f"other{others}@example.com", first_name="O"))
        others += 1
        await asyncio.sleep(0.1)
    row = head()
    assert row["last_response_code"] == 500
    assert "parked 3 times" in row["last_error"] and "max_parks" in row["last_error"] and "500" in row["last_error"]
    resumed = svc.rows("SELECT 1 FROM delivery_attempt WHERE message_id = :m AND outcome = 'resumed'", m=row["id"])
    assert len(resumed) == 2
    await wait_for(lambda: any(f"message {row['id']} dead-lettered" in r.getMessage() for r in caplog.records
                               if r.name == "ctdd.delivery.dispatcher"), what="the dead letter's ERROR line")
    # the contact's partition is no longer held: its next update is delivered
    sandbox.clear_faults()
    await svc.stub.SyncContact(contact_request(customer_id="c-broken", email="broken@example.com",
                                               first_name="B", last_name="v2", version=2))
    await wait_for(lambda: (sandbox.get_contact(email="broken@example.com") or {}).get("dataFields", {})
                   .get("LASTNAME") == "v2", timeout=15, what="the contact's next update")



async def test_a_bulk_import_refused_again_after_a_working_probe_goes_one_by_one(service_factory, database_url,
                                                                                sandbox, caplog):
    """Bulk imports answer 403 for ever (an API user without the import permission) while single calls work:
    the first 403 pauses the account once; after the probe succeeds, the same messages refused again go one by
    one instead of pausing the account again, and every update arrives."""
    caplog.set_level(logging.INFO, logger="ctdd")
    settings = make_settings(database_url, sandbox, auth_probe_initial_seconds=0.2, auth_probe_max_seconds=0.4,
                             bulk_backlog_threshold=20, bulk_min_batch=5, bulk_poll_min_seconds=0.05)
    intake = await service_factory(settings, run_dispatcher=False)  # a backlog first: the dispatcher imports it
    sandbox.inject_fault(status=403, times=100_000, path_contains="/contacts/v3/import")
    people = 30
    await _burst(intake, people, 1)
    svc = await service_factory(settings)
    await wait_for(lambda: _all_arrived(sandbox, people, 1), timeout=30, what="every update in Dotdigital")
    assert any(r.status == 403 and "/contacts/v3/import" in r.path for r in sandbox.requests)
    assert len(_pause_lines(caplog)) == 1, _pause_lines(caplog)
    await wait_for(lambda: set(_statuses(svc)) <= {"delivered", "merged"}, timeout=10, what="all delivered")
