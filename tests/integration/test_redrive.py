"""Redrive (issue 14, item 2): ``ctdd failures list|show|retry|skip`` on the real command line and the operator's
gRPC ``AdminService`` (ListFailures, GetFailure, RetryFailures, SkipFailures) over real gRPC, on SQLite and
PostgreSQL.

Dead messages come from the real pipeline (the Dotdigital sandbox answers 400), rejected records from invalid
SyncContact calls, failed queued events from a commercetools outage. Parked messages are written as the dispatcher
parks them (status ``parked`` with the 401 it got): which responses park a message is the dispatcher's business,
what an operator does with a parked one is this tool's.
"""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import sqlalchemy as sa

from ctdd.config import InboxConfig, replace
from ctdd.db.models import EventInbox
from ctdd.delivery import failure_view, redrive
from ctdd.sync.v1 import admin_service_pb2 as apb
from ctdd.sync.v1 import admin_service_pb2_grpc as apb_grpc
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools
from support import ct_payloads as ct
from support.cli import ops_config, run_ctdd
from support import contact_request, field_violations, make_settings, wait_for

UNAUTHORIZED = "Dotdigital API error: PATCH /contacts/v3/email/<email> -> HTTP 401 - Unauthorized"
INVALID = {"errorCode": "contacts:invalidData", "description": "The contact data is invalid"}


_config = ops_config


def ctdd(*args: str) -> subprocess.CompletedProcess:
    return run_ctdd(*args, user="ops-anna")


def ctdd_json(*args: str):
    done = ctdd(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def messages(svc, email: str) -> list[dict]:
    """The outbox messages of the contact with ``email``, in sequence order."""
    return svc.rows("SELECT m.* FROM outbox_message m JOIN contact_identifier i ON i.contact_id = m.contact_id "
                    "WHERE i.kind = 'email' AND i.value = :e ORDER BY m.sequence", e=email)


def status_of(svc, message_id: int) -> str:
    return svc.rows("SELECT status FROM outbox_message WHERE id = :i", i=message_id)[0]["status"]


def set_status(svc, message_id: int, status: str, code: int | None, error: str | None, attempts: int = 1) -> None:
    with svc.engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = :s, last_response_code = :c, last_error = :e, "
                             "attempts = :a WHERE id = :i"), dict(s=status, c=code, e=error, a=attempts, i=message_id))


async def delivered(svc, sandbox, email: str, first_name: str) -> None:
    """Wait until the sandbox has the contact with this first name."""
    def check():
        contact = sandbox.get_contact(email=email)
        return contact is not None and contact["dataFields"].get("FIRSTNAME") == first_name
    await wait_for(check, timeout=20, what=f"{email} delivered with {first_name}")


# -- references -----------------------------------------------------------------------------------------------


def test_references_are_typed():
    assert failure_view.parse_refs(["outbox:12", " inbox:3 ", "rejected:7", "outbox:12"]) == [
        failure_view.Ref("outbox", 12), failure_view.Ref("inbox", 3), failure_view.Ref("rejected", 7)]
    for bad in ["12", "outbox:", "outbox:0", "outbox:-1", "dead:1", "outbox:1x", "x" * 5000]:
        with pytest.raises(failure_view.InvalidFailureQuery) as invalid:
            failure_view.parse_ref(bad)
        assert invalid.value.field == "refs" and len(str(invalid.value)) < 200
    assert failure_view.error_code("Dotdigital API error: PATCH /x -> HTTP 400 ERROR_CONTACT_INVALID - bad") == \
        "ERROR_CONTACT_INVALID"
    assert failure_view.error_code("Dotdigital API error: no response") is None
    from ctdd.ingest.inbox import NOTIFY_CHANNEL

    assert redrive.INBOX_NOTIFY_CHANNEL == NOTIFY_CHANNEL


# -- the command line over a dead message and a rejected record ---------------------------------------------------


async def test_cli_lists_shows_and_retries_a_dead_message(service_factory, database_url, sandbox, tmp_path):
    svc = await service_factory(make_settings(database_url, sandbox))
    config = _config(tmp_path, database_url)
    sandbox.inject_fault(status=400, times=1, path_contains="dee@example.com", body=INVALID)
    await svc.stub.SyncContact(contact_request(customer_id="c-dee", email="dee@example.com", first_name="Dee",
                                               version=1))
    dead = (await wait_for(lambda: [m for m in messages(svc, "dee@example.com") if m["status"] == "dead"],
                           what="dead message"))[0]
    with pytest.raises(grpc.aio.AioRpcError):
        await svc.stub.SyncContact(contact_request(customer_id="c-bad", email="not-an-email", version=2))
    rejected_id = svc.rows("SELECT id FROM rejected_record")[0]["id"]

    listed = ctdd_json("failures", "list", "--config", config)
    assert [f["ref"] for f in listed["failures"]] == [f"rejected:{rejected_id}", f"outbox:{dead['id']}"]
    outbox_row = listed["failures"][1]
    assert (outbox_row["status"], outbox_row["response_code"], outbox_row["error_code"], outbox_row["kind"]) == (
        "dead", 400, "contacts:invalidData", "contact.upsert")
    assert (outbox_row["store_key"], outbox_row["record_type"], outbox_row["record_id"], outbox_row["record_version"]) \
        == ("uk", "customer", "c-dee", 1)
    assert "dee@example.com" not in json.dumps(listed)  # the stored error masks the address in the path
    rejected_row = listed["failures"][0]
    assert rejected_row["kind"] == "SyncContact" and rejected_row["status"] == "rejected"

    for flags, refs in [(["--code", "400"], [f"outbox:{dead['id']}"]),
                        (["--code", "contacts:invalidData"], [f"outbox:{dead['id']}"]),
                        (["--email", "Dee@Example.com"], [f"outbox:{dead['id']}"]),
                        (["--contact-id", str(dead["contact_id"])], [f"outbox:{dead['id']}"]),
                        (["--status", "rejected"], [f"rejected:{rejected_id}"]),
                        (["--kind", "SyncContact"], [f"rejected:{rejected_id}"]),
                        (["--store", "de"], []), (["--code", "401"], []),
                        (["--since", "1h", "--status", "dead"], [f"outbox:{dead['id']}"]),
                        (["--until", "2020-01-01T00:00:00"], [])]:
        assert [f["ref"] for f in ctdd_json("failures", "list", "--config", config, *flags)["failures"]] == refs, flags

    table = ctdd("failures", "list", "--config", config, "--status", "dead")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "1 failure(s)" and lines[1].split()[:3] == ["REF", "STATUS", "FAILED"]
    row = lines[2].split()
    assert (row[0], row[1], row[3], row[4], row[5], row[6]) == (
        f"outbox:{dead['id']}", "dead", "uk", "contact.upsert", "400", "contacts:invalidData")

    shown = ctdd("failures", "show", f"outbox:{dead['id']}", "--config", config)
    assert shown.returncode == 0, shown.stderr
    assert "response code  400" in shown.stdout and "error code     contacts:invalidData" in shown.stdout
    assert "record         customer c-dee v1" in shown.stdout
    detail = ctdd_json("failures", "show", f"outbox:{dead['id']}", "--config", config)
    assert [(a["attempt"], a["outcome"], a["response_code"]) for a in detail["attempt_log"]] == [(1, "dead", 400)]
    assert "payload" not in detail
    assert ctdd("failures", "show", "outbox:999999", "--config", config).returncode == 1
    bad = ctdd("failures", "show", "message-7", "--config", config)
    assert bad.returncode == 2 and "REF:" in bad.stderr

    refused = ctdd("failures", "retry", f"rejected:{rejected_id}", "--config", config)
    assert refused.returncode == 1 and "refused" in refused.stdout and "request itself was invalid" in refused.stdout

    dry = ctdd("failures", "retry", f"outbox:{dead['id']}", "--dry-run", "--config", config)
    assert dry.returncode == 0 and "would_retry" in dry.stdout and "1 would be retried" in dry.stdout
    assert status_of(svc, dead["id"]) == "dead"

    retried = ctdd("failures", "retry", f"outbox:{dead['id']}", "--reason", "account fixed", "--config", config)
    assert retried.returncode == 0, retried.stderr
    assert "1 retried" in retried.stdout
    log_lines = [line for line in retried.stderr.splitlines() if "redrive:" in line]
    assert len(log_lines) == 1 and "ops-anna" in log_lines[0] and f"outbox:{dead['id']}" in log_lines[0]
    assert "account fixed" in log_lines[0] and "dee@example.com" not in retried.stderr
    await delivered(svc, sandbox, "dee@example.com", "Dee")
    await wait_for(lambda: status_of(svc, dead["id"]) == "delivered", what="retried message delivered")

    again = ctdd("failures", "retry", f"outbox:{dead['id']}", "--config", config)
    assert again.returncode == 0 and "unchanged" in again.stdout and "0 retried" in again.stdout
    assert "redrive:" not in again.stderr
    history = ctdd_json("failures", "show", f"outbox:{dead['id']}", "--config", config)
    assert history["status"] == "delivered"
    assert [a["outcome"] for a in history["attempt_log"]] == ["dead", "redriven", "delivered"]
    assert history["attempt_log"][1]["worker"] == "operator:ops-anna"
    assert history["attempt_log"][1]["error"] == "retried by ops-anna: account fixed"
    assert ctdd_json("failures", "list", "--config", config, "--status", "dead")["failures"] == []


def test_cli_refuses_bad_arguments(engine, database_url, tmp_path):
    config = _config(tmp_path, database_url)
    for args, words in [(["list", "--store", "fr"], "--store: unknown store"),
                        (["list", "--email", "not-an-email"], "--email:"),
                        (["list", "--code", "4 01"], "--code:"),
                        (["list", "--since", "yesterday"], "neither an ISO 8601 time"),
                        (["list", "--since", "2h", "--until", "3h"], "--until: must be later"),
                        (["retry"], "give REFs, or --all-matching"),
                        (["retry", "outbox:1", "--all-matching"], "give REFs, or --all-matching"),
                        (["retry", "outbox:1", "--store", "uk"], "only with --all-matching"),
                        (["retry", "outbox:one"], "REF:"),
                        (["skip", "outbox:1"], "--reason")]:
        done = ctdd("failures", *args, "--config", config)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert words in done.stderr, (args, done.stderr)


# -- order within a partition, parked messages, skip ------------------------------------------------------------


async def test_retry_keeps_partition_order_and_skip_unblocks_a_parked_partition(service_factory, database_url,
                                                                                 sandbox, tmp_path):
    settings = make_settings(database_url, sandbox)
    config = _config(tmp_path, database_url)
    # Queue work without delivering it yet (a service with its dispatcher stopped) ...
    intake = await service_factory(settings, run_dispatcher=False)
    for version, name in enumerate(["One", "Two", "Three"], start=1):
        await intake.stub.SyncContact(contact_request(customer_id="c-pat", email="pat@example.com", first_name=name,
                                                      version=version))
    for version, name in enumerate(["Q1", "Q2"], start=1):
        await intake.stub.SyncContact(contact_request(customer_id="c-quinn", email="quinn@example.com",
                                                      first_name=name, version=version))
    m1, m2, m3 = (m["id"] for m in messages(intake, "pat@example.com"))
    q1, q2 = (m["id"] for m in messages(intake, "quinn@example.com"))
    # ... where the dispatcher parked Pat's first message (401) and dead-lettered the second; Quinn's first is
    # parked too.
    set_status(intake, m1, "parked", 401, UNAUTHORIZED, attempts=3)
    set_status(intake, m2, "dead", 400, "Dotdigital API error: PATCH /contacts/v3/email/<email> -> HTTP 400 "
                                        "contacts:invalidData - The contact data is invalid")
    set_status(intake, q1, "parked", 401, UNAUTHORIZED, attempts=3)

    svc = await service_factory(settings)
    await svc.stub.SyncContact(contact_request(customer_id="c-ctl", email="control1@example.com", first_name="C1",
                                               version=1))
    await delivered(svc, sandbox, "control1@example.com", "C1")

    # Retrying Pat's second message: the third (queued) carries its only field, the first name, with a newer
    # value, so nothing is left to send; it is settled as skipped, saying why, and never sent.
    done = ctdd("failures", "retry", f"outbox:{m2}", "--config", config)
    assert done.returncode == 0 and "skipped" in done.stdout and f"later message (outbox:{m3})" in done.stdout, \
        done.stdout + done.stderr
    await svc.stub.SyncContact(contact_request(customer_id="c-ctl2", email="control2@example.com", first_name="C2",
                                               version=1))
    await delivered(svc, sandbox, "control2@example.com", "C2")
    assert [status_of(svc, m) for m in (m1, m2, m3)] == ["parked", "skipped", "pending"]
    assert sandbox.get_contact(email="pat@example.com") is None

    # Retrying the parked head (over gRPC): a later message is queued, so it goes after it, without the first
    # name that message replaces; the partition is delivered in sequence order and the last value wins.
    admin = apb_grpc.AdminServiceStub(svc.channel)
    reply = await admin.RetryFailures(apb.RetryFailuresRequest(refs=[f"outbox:{m1}"], operator="ops-ben",
                                                               reason="credentials rotated back"))
    assert [(r.ref, r.outcome) for r in reply.results] == [(f"outbox:{m1}", apb.REDRIVE_OUTCOME_RETRIED)]
    await wait_for(lambda: all(status_of(svc, m) == "delivered" for m in (m1, m3)), timeout=20,
                   what="Pat's partition delivered")
    await delivered(svc, sandbox, "pat@example.com", "Three")
    pat = messages(svc, "pat@example.com")
    assert [m["id"] for m in pat] == [m2, m3, m1]
    delivered_at = [m["delivered_at"] for m in pat if m["status"] == "delivered"]
    assert delivered_at == sorted(delivered_at)

    # Quinn's partition waits behind the parked message until it is skipped, with a reason.
    assert status_of(svc, q2) == "pending"
    skipped = ctdd("failures", "skip", f"outbox:{q1}", "--reason", "superseded by the next update", "--config", config)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr
    assert len([line for line in skipped.stderr.splitlines() if "redrive:" in line]) == 1
    await delivered(svc, sandbox, "quinn@example.com", "Q2")
    assert status_of(svc, q1) == "skipped"
    again = ctdd("failures", "skip", f"outbox:{q1}", "--reason", "twice", "--config", config)
    assert again.returncode == 0 and "already skipped" in again.stdout
    listed = ctdd_json("failures", "list", "--config", config, "--status", "skipped")["failures"]
    assert [(f["ref"], f["note"]) for f in listed] == [
        (f"outbox:{q1}", "skipped by ops-anna: superseded by the next update"),
        (f"outbox:{m2}", f"retried by ops-anna; nothing left to send: superseded: every field it carried is carried "
                         f"by a later message (outbox:{m3})")]
    assert ctdd_json("failures", "list", "--config", config)["failures"] == []
    assert svc.rows("SELECT count(*) AS n FROM outbox_message")[0]["n"] >= 7  # nothing deleted


# -- gRPC ---------------------------------------------------------------------------------------------------------


async def test_grpc_failures(service_factory, database_url, sandbox):
    svc = await service_factory(make_settings(database_url, sandbox), run_dispatcher=False)
    admin = apb_grpc.AdminServiceStub(svc.channel)
    for i in range(3):
        await svc.stub.SyncContact(contact_request(customer_id=f"c-{i}", email=f"g{i}@example.com",
                                                   first_name=f"G{i}", version=1))
    ids = [m["id"] for m in svc.rows("SELECT id FROM outbox_message ORDER BY id")]
    set_status(svc, ids[0], "dead", 400, "Dotdigital API error: PATCH /contacts/v3/email/<email> -> HTTP 400 "
                                         "ERROR_CONTACT_INVALID - bad")
    set_status(svc, ids[1], "parked", 401, UNAUTHORIZED, attempts=4)
    with pytest.raises(grpc.aio.AioRpcError):
        await svc.stub.SyncContact(contact_request(customer_id="c-x", email="nope", version=1))
    rejected_id = svc.rows("SELECT id FROM rejected_record")[0]["id"]
    now = datetime.now(timezone.utc)
    with svc.engine.begin() as conn:  # a queued event the inbox found it can never apply
        inbox_id = conn.execute(sa.insert(EventInbox.__table__).values(
            dedupe_key="msg-9", store_key="uk", request=b"", status="rejected", attempts=1, next_attempt_at=now,
            last_error="invalid commercetools delivery", received_at=now, processed_at=now,
        ).returning(EventInbox.__table__.c.id)).scalar_one()

    everything = await admin.ListFailures(apb.ListFailuresRequest())
    assert {f.ref for f in everything.failures} == {f"outbox:{ids[0]}", f"outbox:{ids[1]}",
                                                   f"rejected:{rejected_id}", f"inbox:{inbox_id}"}
    assert not everything.has_more
    parked = await admin.ListFailures(apb.ListFailuresRequest(filter=apb.FailureFilter(
        code="401", store_key="uk", statuses=[apb.FAILURE_STATUS_PARKED, apb.FAILURE_STATUS_DEAD])))
    assert [(f.ref, f.status, f.response_code, f.attempts, f.source) for f in parked.failures] == [
        (f"outbox:{ids[1]}", apb.FAILURE_STATUS_PARKED, 401, 4, apb.FAILURE_SOURCE_OUTBOX)]
    assert parked.failures[0].record.record_id == "c-1" and parked.failures[0].partition_key.startswith("main:")
    by_code = await admin.ListFailures(apb.ListFailuresRequest(filter=apb.FailureFilter(code="ERROR_CONTACT_INVALID")))
    assert [f.ref for f in by_code.failures] == [f"outbox:{ids[0]}"]
    by_email = await admin.ListFailures(apb.ListFailuresRequest(filter=apb.FailureFilter(email="G0@example.com")))
    assert [f.ref for f in by_email.failures] == [f"outbox:{ids[0]}"]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    since_later = apb.FailureFilter()
    since_later.since.FromDatetime(later)
    assert list((await admin.ListFailures(apb.ListFailuresRequest(filter=since_later))).failures) == []
    until_later = apb.FailureFilter()
    until_later.until.FromDatetime(later)
    assert len((await admin.ListFailures(apb.ListFailuresRequest(filter=until_later))).failures) == 4
    page = await admin.ListFailures(apb.ListFailuresRequest(page_size=1))
    assert len(page.failures) == 1 and page.has_more

    got = await admin.GetFailure(apb.GetFailureRequest(ref=f"rejected:{rejected_id}"))
    assert got.failure.kind == "SyncContact" and [v.field for v in got.violations] == ["identity.email"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.GetFailure(apb.GetFailureRequest(ref="outbox:999999"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    for call, request, field, words in [
        (admin.GetFailure, apb.GetFailureRequest(ref="outbox"), "ref", "no failure reference"),
        (admin.ListFailures, apb.ListFailuresRequest(filter=apb.FailureFilter(store_key="fr")), "filter.store_key",
         "unknown store"),
        (admin.ListFailures, apb.ListFailuresRequest(filter=apb.FailureFilter(email="nope")), "filter.email", "email"),
        (admin.ListFailures, apb.ListFailuresRequest(filter=apb.FailureFilter(contact_id="x")), "filter.contact_id",
         "contact id"),
        (admin.ListFailures, apb.ListFailuresRequest(filter=apb.FailureFilter(
            statuses=[apb.FAILURE_STATUS_UNSPECIFIED])), "filter.statuses", "UNSPECIFIED"),
        (admin.ListFailures, apb.ListFailuresRequest(page_size=-1), "page_size", "negative"),
        (admin.RetryFailures, apb.RetryFailuresRequest(), "refs", "either refs or all_matching"),
        (admin.RetryFailures, apb.RetryFailuresRequest(refs=["outbox:1", "bogus"]), "refs[1]", "no failure reference"),
        (admin.RetryFailures, apb.RetryFailuresRequest(refs=[f"outbox:{i}" for i in range(1, 10_002)]), "refs",
         "at most 10000"),
        (admin.RetryFailures, apb.RetryFailuresRequest(all_matching=apb.FailureFilter(code="a b")),
         "all_matching.code", "code"),
        (admin.SkipFailures, apb.SkipFailuresRequest(refs=[f"outbox:{ids[0]}"]), "reason", "say why"),
        (admin.SkipFailures, apb.SkipFailuresRequest(refs=[f"outbox:{ids[0]}"], reason="x" * 600), "reason",
         "at most"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await call(request)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        violations = field_violations(invalid.value)
        assert list(violations) == [field], (request, violations)
        assert words in violations[field], (request, violations)

    dry = await admin.RetryFailures(apb.RetryFailuresRequest(all_matching=apb.FailureFilter(), dry_run=True))
    # everything matching, but never what a retry would refuse (rejected records, rejected queued events)
    assert sorted(r.ref for r in dry.results) == sorted([f"outbox:{ids[0]}", f"outbox:{ids[1]}"])
    assert dry.changed == 2 and {r.outcome for r in dry.results} == {apb.REDRIVE_OUTCOME_WOULD_RETRY}
    assert {r["status"] for r in svc.rows("SELECT status FROM outbox_message WHERE id IN (:a, :b)",
                                          a=ids[0], b=ids[1])} == {"dead", "parked"}

    refused = await admin.RetryFailures(apb.RetryFailuresRequest(
        refs=[f"rejected:{rejected_id}", f"inbox:{inbox_id}", "outbox:999999"]))
    assert [r.outcome for r in refused.results] == [apb.REDRIVE_OUTCOME_REFUSED, apb.REDRIVE_OUTCOME_REFUSED,
                                                    apb.REDRIVE_OUTCOME_NOT_FOUND]
    assert "invalid" in refused.results[0].message and refused.changed == 0

    retried = await admin.RetryFailures(apb.RetryFailuresRequest(
        all_matching=apb.FailureFilter(code="401"), operator="ops-cy"))
    assert [(r.ref, r.outcome, r.status_name) for r in retried.results] == [
        (f"outbox:{ids[1]}", apb.REDRIVE_OUTCOME_RETRIED, "pending")]
    row = svc.rows("SELECT status, attempts FROM outbox_message WHERE id = :i", i=ids[1])[0]
    assert (row["status"], row["attempts"]) == ("pending", 0)

    skipped = await admin.SkipFailures(apb.SkipFailuresRequest(
        refs=[f"outbox:{ids[0]}", f"inbox:{inbox_id}", f"rejected:{rejected_id}"], reason="bad data, resent",
        operator="ops-cy"))
    assert [r.outcome for r in skipped.results] == [apb.REDRIVE_OUTCOME_SKIPPED, apb.REDRIVE_OUTCOME_SKIPPED,
                                                    apb.REDRIVE_OUTCOME_REFUSED]
    again = await admin.SkipFailures(apb.SkipFailuresRequest(refs=[f"outbox:{ids[0]}"], reason="again"))
    assert again.results[0].outcome == apb.REDRIVE_OUTCOME_UNCHANGED and again.changed == 0
    shown = await admin.GetFailure(apb.GetFailureRequest(ref=f"outbox:{ids[0]}"))
    assert shown.failure.status == apb.FAILURE_STATUS_SKIPPED
    assert shown.failure.note == "skipped by ops-cy: bad data, resent"
    assert [(a.outcome, a.worker) for a in shown.attempts] == [("skipped", "operator:ops-cy")]
    inbox_row = await admin.GetFailure(apb.GetFailureRequest(ref=f"inbox:{inbox_id}"))
    assert inbox_row.failure.status_name == "skipped" and inbox_row.failure.dedupe_key == "msg-9"
    remaining = await admin.ListFailures(apb.ListFailuresRequest())
    assert [f.ref for f in remaining.failures] == [f"rejected:{rejected_id}"]


# -- a queued event that failed ------------------------------------------------------------------------------------


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


async def test_a_failed_queued_event_is_retried(service_factory, database_url, sandbox, fake_ct, tmp_path, caplog):
    settings = make_settings(database_url, sandbox, commercetools=fake_ct)
    settings = replace(settings, inbox=InboxConfig(batch_size=16, poll_interval_seconds=0.05, max_attempts=2,
                                                   backoff_base_seconds=0.05, backoff_cap_seconds=0.2,
                                                   lease_seconds=5.0))
    svc = await service_factory(settings)
    fake_ct.add("customers", ct.customer("cust-gone", "gone@example.com", version=2, first="Gwen"))
    fake_ct.inject_fault(status=503, times=100, path_contains="/customers/cust-gone")
    await svc.stub.TrackEvent(pb.TrackEventRequest(
        store_key="uk", processing=pb.PROCESSING_QUEUED,
        commercetools_delivery=ct.raw(ct.message("customer", "cust-gone", "CustomerFirstNameSet", version=2,
                                                 firstName="Gwen"))))
    row = (await wait_for(lambda: svc.rows("SELECT id, status FROM event_inbox WHERE status = 'failed'"),
                          timeout=20, what="event given up"))[0]
    config = _config(tmp_path, database_url)
    listed = ctdd_json("failures", "list", "--config", config, "--status", "failed", "--code", "503")["failures"]
    assert [(f["ref"], f["kind"], f["attempts"]) for f in listed] == [(f"inbox:{row['id']}", "queued_event", 2)]
    # its rejected-record log entry is not listed twice while the inbox row stands for it
    assert [f["ref"] for f in ctdd_json("failures", "list", "--config", config)["failures"]] == [f"inbox:{row['id']}"]

    fake_ct.clear_faults()
    with caplog.at_level(logging.WARNING, logger="ctdd.delivery.redrive"):
        report = redrive.retry(svc.engine, [failure_view.Ref("inbox", row["id"])], operator="ops-dan",
                               reason="commercetools is back")
    assert [(r.outcome, r.status) for r in report.results] == [("retried", "pending")]
    assert [r.getMessage() for r in caplog.records if r.name == "ctdd.delivery.redrive"] == [
        f"redrive: ops-dan retried 1 failure(s) (inbox:{row['id']}): commercetools is back"]
    await wait_for(lambda: svc.rows("SELECT status FROM event_inbox")[0]["status"] == "done", timeout=20,
                   what="event applied")
    await delivered(svc, sandbox, "gone@example.com", "Gwen")


# -- a message that died merged into another ----------------------------------------------------------------------


async def test_a_message_merged_into_a_dead_head_is_retried_through_it(service_factory, database_url, sandbox):
    svc = await service_factory(make_settings(database_url, sandbox), run_dispatcher=False)
    for version, name in enumerate(["M1", "M2"], start=1):
        await svc.stub.SyncContact(contact_request(customer_id="c-mo", email="mo@example.com", first_name=name,
                                                   version=version))
    head, follower = messages(svc, "mo@example.com")
    # as the dispatcher leaves them when a head with a coalesced follower dies
    with svc.engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = 'dead', merged_into = :h, last_response_code = 400 "
                             "WHERE id = :f"), dict(h=head["id"], f=follower["id"]))
    set_status(svc, head["id"], "dead", 400, "Dotdigital API error: PATCH /x -> HTTP 400 contacts:invalidData")

    views, _ = failure_view.list_failures(svc.engine, failure_view.Filters(email="mo@example.com"))
    assert {v.ref: v.merged_into for v in views} == {f"outbox:{head['id']}": None,
                                                     f"outbox:{follower['id']}": f"outbox:{head['id']}"}
    report = redrive.retry(svc.engine, [failure_view.Ref("outbox", follower["id"])], operator="ops-eve")
    assert [(r.outcome, r.status, r.message) for r in report.results] == [
        ("retried", "merged", f"through outbox:{head['id']}, which carries it")]
    assert [status_of(svc, m["id"]) for m in (head, follower)] == ["pending", "merged"]
    # a rejected record that logs a queued event points at the event
    with svc.engine.begin() as conn:
        rid = conn.execute(sa.insert(failure_view.RR).values(
            operation="TrackEvent", store_key="uk", record_type="event_inbox", record_id="77", reason="failed",
            created_at=datetime.now(timezone.utc)).returning(failure_view.RR.c.id)).scalar_one()
    refused = redrive.retry(svc.engine, [failure_view.Ref("rejected", rid)], operator="ops-eve").results[0]
    assert refused.outcome == "refused" and "inbox:77" in refused.message


# -- with bearer tokens: operators only, and the caller is who acts ---------------------------------------------


async def test_redrive_needs_an_operator_token_and_records_the_caller(service_factory, database_url, sandbox,
                                                                       tmp_path):
    from ctdd.api.auth import hash_token

    operator_token, shop_token = "ops-token-5e6f7a8b9c0d1e2f", "shop-token-1a2b3c4d5e6f7a8b"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f"""
[[tokens]]
name = "ops"
sha256 = "{hash_token(operator_token)}"
operator = true

[[tokens]]
name = "shop"
token = "{shop_token}"
""")
    settings = make_settings(database_url, sandbox).replace(tokens_file=str(tokens))
    svc = await service_factory(settings, run_dispatcher=False)
    await svc.stub.SyncContact(contact_request(customer_id="c-t", email="tok@example.com", first_name="T", version=1),
                               metadata=(("authorization", f"Bearer {shop_token}"),))
    message_id = messages(svc, "tok@example.com")[0]["id"]
    set_status(svc, message_id, "dead", 400, "Dotdigital API error: PATCH /x -> HTTP 400 contacts:invalidData")
    admin = apb_grpc.AdminServiceStub(svc.channel)
    request = apb.RetryFailuresRequest(refs=[f"outbox:{message_id}"], operator="anna")
    for metadata, code in [((), grpc.StatusCode.UNAUTHENTICATED),
                           ((("authorization", f"Bearer {shop_token}"),), grpc.StatusCode.PERMISSION_DENIED)]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.RetryFailures(request, metadata=metadata)
        assert refused.value.code() == code
    assert status_of(svc, message_id) == "dead"
    reply = await admin.RetryFailures(request, metadata=(("authorization", f"Bearer {operator_token}"),))
    assert reply.changed == 1
    audit = svc.rows("SELECT worker, error FROM delivery_attempt WHERE message_id = :m", m=message_id)
    assert audit == [{"worker": "operator:ops (anna)", "error": "retried by ops (anna)"}]


# -- a retry after later messages of the contact were sent: to the tail, without what they carry -------------------


def _outbox_contact(engine) -> int:
    from sqlalchemy.orm import Session

    from ctdd.db.engine import utcnow
    from ctdd.db.models import Contact

    with Session(engine) as s, s.begin():
        c = Contact(account="acc", created_at=utcnow(), updated_at=utcnow())
        s.add(c)
        s.flush()
        return c.id


def _queue(engine, contact_id: int, body: dict) -> int:
    from sqlalchemy.orm import Session

    from ctdd.delivery import outbox

    with Session(engine) as s, s.begin():
        return outbox.enqueue(s, contact_id=contact_id, account="acc", kind="contact.upsert", payload={"body": body},
                              ref=outbox.RecordRef("uk"))


def _settle(engine, msg, outcome: str, code: int) -> None:
    from ctdd.delivery import outbox

    outbox.settle(engine, [outbox.Outcome(msg, outcome, response_code=code, error=None if code < 300 else "bad")],
                  worker="w")


def _row(engine, message_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM outbox_message WHERE id = :i"), {"i": message_id})
                    .one()._mapping)


def test_a_retried_dead_message_waits_behind_a_later_one_in_flight_and_others_are_still_claimed(engine):
    from ctdd.delivery import outbox

    a, b = _outbox_contact(engine), _outbox_contact(engine)
    old = _queue(engine, a, {"dataFields": {"FIRSTNAME": "Old", "LASTNAME": "Lee"}})
    new = _queue(engine, a, {"dataFields": {"FIRSTNAME": "New"}})
    b1 = _queue(engine, b, {"dataFields": {"FIRSTNAME": "B1"}})
    head_a, head_b = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    _settle(engine, head_a, "dead", 400)  # a dead head releases its partition ...
    _settle(engine, head_b, "delivered", 200)
    [later] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    assert later.id == new  # ... so the later message is in flight when the operator retries the dead one
    b2 = _queue(engine, b, {"dataFields": {"FIRSTNAME": "B2"}})

    report = redrive.retry(engine, [failure_view.Ref("outbox", old)], operator="ops", reason="fixed")
    [result] = report.results
    assert (result.outcome, result.status) == ("retried", "pending")
    assert f"outbox:{new}" in result.message and "without the 1 field(s)" in result.message
    row = _row(engine, old)
    assert row["sequence"] > later.sequence  # the tail of its partition
    # Before: the claim took the retried message beside the one in flight and failed on the unique in-flight
    # index (IntegrityError), so nothing was claimed for any partition until the later message settled.
    claimed = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    assert [m.id for m in claimed] == [b2]
    _settle(engine, later, "delivered", 200)
    [retried] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    # it no longer carries the older first name the later message replaced
    assert retried.id == old and retried.payload["body"] == {"dataFields": {"LASTNAME": "Lee"}}
    assert b1 != b2


def test_a_claim_is_not_failed_by_a_partition_with_a_message_in_flight(engine):
    from ctdd.delivery import outbox

    a, b = _outbox_contact(engine), _outbox_contact(engine)
    first = _queue(engine, a, {"dataFields": {"FIRSTNAME": "A1"}})
    second = _queue(engine, a, {"dataFields": {"FIRSTNAME": "A2"}})
    [head] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    _settle(engine, head, "dead", 400)
    [in_flight] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
    assert in_flight.id == second
    # an earlier message of the partition pending again beside the one in flight (as the old retry left it)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = 'pending' WHERE id = :i"), {"i": first})
    other = _queue(engine, b, {"dataFields": {"FIRSTNAME": "B1"}})
    assert [m.id for m in outbox.claim(engine, worker="w", limit=10, lease_seconds=30)] == [other]
    _settle(engine, in_flight, "delivered", 200)
    assert [m.id for m in outbox.claim(engine, worker="w", limit=10, lease_seconds=30)] == [first]


def test_a_retry_that_later_messages_supersede_is_skipped_with_a_note(engine):
    from ctdd.delivery import outbox

    a = _outbox_contact(engine)
    old = _queue(engine, a, {"dataFields": {"FIRSTNAME": "Old"}, "lists": [7]})
    _queue(engine, a, {"dataFields": {"FIRSTNAME": "New"}, "lists": [7]})
    head = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)[0]
    _settle(engine, head, "dead", 400)
    later = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)[0]
    _settle(engine, later, "delivered", 200)

    dry = redrive.retry(engine, [failure_view.Ref("outbox", old)], operator="ops", dry_run=True).results[0]
    assert dry.outcome == "would_skip" and _row(engine, old)["status"] == "dead"
    [result] = redrive.retry(engine, [failure_view.Ref("outbox", old)], operator="ops", reason="fixed").results
    assert (result.outcome, result.status) == ("skipped", "skipped")
    views, _ = failure_view.list_failures(engine, failure_view.Filters(statuses=("skipped",)))
    assert [v.note for v in views] == [
        f"retried by ops: fixed; nothing left to send: superseded: every field it carried is carried by a later "
        f"message (outbox:{later.id})"]
    assert outbox.claim(engine, worker="w", limit=10, lease_seconds=30) == []
    # a later deletion supersedes any earlier update; a deletion is never sent after later messages
    gone = _queue(engine, a, {"dataFields": {"LASTNAME": "Lee"}})
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = 'dead' WHERE id = :i"), {"i": gone})
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        deletion = outbox.enqueue(s, contact_id=a, account="acc", kind=outbox.CONTACT_DELETE, payload={},
                                  ref=outbox.RecordRef("uk"))
    assert redrive.retry(engine, [failure_view.Ref("outbox", gone)], operator="ops").results[0].outcome == "skipped"
    _queue(engine, a, {"dataFields": {"LASTNAME": "Again"}})
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = 'dead' WHERE id = :i"), {"i": deletion})
    refused = redrive.retry(engine, [failure_view.Ref("outbox", deletion)], operator="ops").results[0]
    assert refused.outcome == "refused" and "erase" in refused.message and _row(engine, deletion)["status"] == "dead"


async def test_a_retried_message_does_not_overwrite_a_newer_value(service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox)
    intake = await service_factory(settings, run_dispatcher=False)
    await intake.stub.SyncContact(contact_request(customer_id="c-ann", email="ann@example.com", first_name="Ann",
                                                  last_name="Lee", version=1))
    await intake.stub.SyncContact(contact_request(customer_id="c-ann", email="ann@example.com", first_name="Anne",
                                                  version=2))
    first, second = (m["id"] for m in messages(intake, "ann@example.com"))
    set_status(intake, first, "dead", 400, "Dotdigital API error: PATCH /contacts/v3/email/<email> -> HTTP 400 "
                                           "contacts:invalidData - The contact data is invalid")
    svc = await service_factory(settings)  # the dead head released the partition: the newer update goes out
    await delivered(svc, sandbox, "ann@example.com", "Anne")
    await wait_for(lambda: status_of(svc, second) == "delivered", what="the newer update delivered")

    [result] = redrive.retry(svc.engine, [failure_view.Ref("outbox", first)], operator="ops", reason="field created").results
    assert result.outcome == "retried"
    await wait_for(lambda: status_of(svc, first) == "delivered", timeout=20, what="the retried update delivered")
    contact = sandbox.get_contact(email="ann@example.com")
    # before: the retried message went out after the newer one with its older first name
    assert contact["dataFields"]["FIRSTNAME"] == "Anne" and contact["dataFields"]["LASTNAME"] == "Lee"
    rows = messages(svc, "ann@example.com")
    assert [m["id"] for m in rows] == [second, first]  # in sequence order: the retried one is now last


def test_a_retried_merged_view_message_goes_without_the_records_later_views_send(engine):
    """A merged view message carries several records: a retry is superseded only when later messages send every
    one of them, else it goes without those (an older view sent after a newer one would win)."""
    from sqlalchemy.orm import Session

    from ctdd.delivery import outbox

    a = _outbox_contact(engine)

    def view(product: str, seen: str) -> int:
        with Session(engine) as s, s.begin():
            return outbox.enqueue(s, contact_id=a, account="acc", kind=outbox.INSIGHT_UPSERT,
                                  payload={"collection": "ProductViews", "record_id": product,
                                           "record": {"productId": product, "seen": seen}},
                                  ref=outbox.RecordRef("uk"))

    first, _, _ = view("p1", "old"), view("p2", "old"), view("p3", "old")
    [head] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, merge_views=True)
    assert head.id == first and len(head.payload["records"]) == 3
    _settle(engine, head, "dead", 400)
    newer = view("p1", "new")  # the shopper viewed p1 again
    [later] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, merge_views=True)
    assert later.id == newer
    _settle(engine, later, "delivered", 200)

    [result] = redrive.retry(engine, [failure_view.Ref("outbox", first)], operator="ops", reason="fixed").results
    assert (result.outcome, result.status) == ("retried", "pending")
    assert "without the 1 record(s)" in result.message
    [retried] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30, merge_views=True)
    # p1's old view is not sent after its new one; p2 and p3 still are
    assert retried.id == first and [r["record_id"] for r in retried.payload["records"]] == ["p2", "p3"]
    _settle(engine, retried, "dead", 400)
    view("p2", "new"), view("p3", "new")
    for msg in outbox.claim(engine, worker="w", limit=10, lease_seconds=30, merge_views=True):
        _settle(engine, msg, "delivered", 200)
    # now every record it carried was sent again later: nothing left to send
    [result] = redrive.retry(engine, [failure_view.Ref("outbox", first)], operator="ops", reason="again").results
    assert (result.outcome, result.status) == ("skipped", "skipped")
    assert "each of its records" in result.message


def test_a_retried_record_deletion_or_upsert_that_a_later_message_undoes_is_skipped(engine):
    """An Orders record moved away (``insight.delete``) and sent there again later, or sent and deleted later: a
    retried message sent after the later one would undo it, so it is superseded."""
    from sqlalchemy.orm import Session

    from ctdd.delivery import outbox

    a = _outbox_contact(engine)

    def record(kind: str, key: str) -> int:
        payload = {"collection": "Orders", "record_id": key, "scope": "contact"}
        if kind == outbox.INSIGHT_UPSERT:
            payload["record"] = {"id": key}
        with Session(engine) as s, s.begin():
            return outbox.enqueue(s, contact_id=a, account="acc", kind=kind, payload=payload,
                                  ref=outbox.RecordRef("uk"))

    def fail_head_then_deliver_the_rest() -> None:
        [head] = outbox.claim(engine, worker="w", limit=10, lease_seconds=30)
        _settle(engine, head, "dead", 400)
        while claimed := outbox.claim(engine, worker="w", limit=10, lease_seconds=30):
            for msg in claimed:
                _settle(engine, msg, "delivered", 204)

    deletion = record(outbox.INSIGHT_DELETE, "N-1")
    resent = record(outbox.INSIGHT_UPSERT, "N-1")
    fail_head_then_deliver_the_rest()
    [result] = redrive.retry(engine, [failure_view.Ref("outbox", deletion)], operator="ops", reason="x").results
    assert (result.outcome, result.status) == ("skipped", "skipped")
    assert f"a later message sends the record again (outbox:{resent})" in result.message

    upsert = record(outbox.INSIGHT_UPSERT, "N-2")
    record(outbox.INSIGHT_UPSERT, "N-3")  # another record: no bearing on N-2
    removed = record(outbox.INSIGHT_DELETE, "N-2")
    fail_head_then_deliver_the_rest()
    [result] = redrive.retry(engine, [failure_view.Ref("outbox", upsert)], operator="ops", reason="x").results
    assert (result.outcome, result.status) == ("skipped", "skipped")
    assert f"a later message deletes the record (outbox:{removed})" in result.message
