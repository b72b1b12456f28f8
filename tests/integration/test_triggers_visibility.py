"""Seeing program triggers (issue 13, item 10): ``ctdd triggers list|summary`` on the real command line and the
operator's gRPC ``AdminService.ListTriggers`` over real gRPC, on SQLite and PostgreSQL.

The rows are seeded directly (``contact``, ``contact_identifier``, ``program_trigger``, ``enrolment_call``):
this reads what the trigger engine writes, whatever wrote it. The story of Ann, the docs' worked example
(docs/programs.md, "Seeing triggers"): her abandoned cart's step 1 was sent, she then ordered, so step 2 was
skipped ("ordered_since"), and her order's post-purchase trigger is pending.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ctdd.db.models import Contact, ContactIdentifier, EnrolmentCall, ProgramTrigger
from ctdd.programs.queries import AmbiguousContact, InvalidQuery, find_contact, list_triggers, trigger_summary
from ctdd.sync.v1 import admin_service_pb2 as apb
from ctdd.sync.v1 import admin_service_pb2_grpc as apb_grpc
from support import field_violations, make_settings
from support.cli import ops_config, run_ctdd

NOW = datetime.now(timezone.utc).replace(microsecond=0)
#: Ann's cart was last changed 30 hours ago
T0 = NOW - timedelta(hours=30)
ANN, BOB, SHARED_MAIN, SHARED_OTHER = 1, 2, 3, 4
#: Ann's triggers in the order the list shows them: pending first, then decided (newest first)
ANN_ORDER = [103, 102, 101]


def _contact(cid: int, account: str, email: str | None, mobile: str | None = None) -> dict:
    return dict(id=cid, account=account, email=email, mobile_number=mobile, next_sequence=1, created_at=T0,
                updated_at=T0)


def _identifier(cid: int, account: str, kind: str, value: str) -> dict:
    return dict(account=account, kind=kind, value=value, contact_id=cid, created_at=T0)


def _trigger(tid: int, contact_id: int, store: str, kind: str, subject_type: str, subject_id: str, version: int,
             step: int, due_at: datetime, status: str, *, decided_at=None, reason=None, program_id=None,
             enrolment_id=None, attempts=0) -> dict:
    return dict(id=tid, store_key=store, account="main", program_kind=kind, contact_id=contact_id,
                subject_type=subject_type, subject_id=subject_id, subject_version=version, step=step, due_at=due_at,
                status=status, reason=reason, lease_owner=None, lease_expires_at=None, program_id=program_id,
                enrolment_id=enrolment_id, attempts=attempts, created_at=T0, decided_at=decided_at)


def seed(engine) -> None:
    contacts = [_contact(ANN, "main", "ann@example.com", "+447700900123"), _contact(BOB, "main", "bob@example.com"),
                _contact(SHARED_MAIN, "main", "shared@example.com"), _contact(SHARED_OTHER, "other", "shared@example.com")]
    identifiers = [
        _identifier(ANN, "main", "email", "ann@example.com"),
        _identifier(ANN, "main", "customer_id", "shop-eu/cust-ann"),
        _identifier(ANN, "main", "mobile_number", "+447700900123"),
        _identifier(BOB, "main", "email", "bob@example.com"),
        _identifier(SHARED_MAIN, "main", "email", "shared@example.com"),
        _identifier(SHARED_OTHER, "other", "email", "shared@example.com"),
    ]
    triggers = [
        # Ann: abandoned cart c-ann v7, step 1 sent an hour after the last change ...
        _trigger(101, ANN, "uk", "abandoned_cart", "cart", "c-ann", 7, 1, T0 + timedelta(hours=1), "sent",
                 decided_at=T0 + timedelta(hours=1, seconds=4), program_id=5001, enrolment_id="e-7f3a", attempts=1),
        # ... she ordered 5 hours after, so step 2 (a day after the change) was skipped ...
        _trigger(102, ANN, "uk", "abandoned_cart", "cart", "c-ann", 7, 2, T0 + timedelta(hours=24), "skipped",
                 decided_at=T0 + timedelta(hours=24, seconds=2), reason="ordered_since", program_id=5001, attempts=1),
        # ... and her order's post-purchase program falls due 3 days after the order.
        _trigger(103, ANN, "uk", "post_purchase_first", "order", "o-ann-1", 0, 1, T0 + timedelta(hours=77),
                 "pending"),
        # Bob (store de): one trigger overdue, one cancelled by a newer cart version, one skipped
        _trigger(201, BOB, "de", "abandoned_cart", "cart", "c-bob", 4, 1, NOW - timedelta(minutes=10), "pending"),
        _trigger(202, BOB, "de", "abandoned_cart", "cart", "c-bob", 3, 1, NOW - timedelta(hours=3), "cancelled",
                 decided_at=NOW - timedelta(hours=4), reason="cart_changed: version 4"),
        _trigger(203, BOB, "de", "browse_abandonment", "browse", "b-bob-1", 0, 1, NOW - timedelta(hours=2), "skipped",
                 decided_at=NOW - timedelta(hours=2), reason="unsubscribed: email channel"),
    ]
    # The CLI and gRPC count the last hour's calls on the real clock, which may be long after NOW (set when the
    # module was imported): the calls are placed relative to the moment of seeding.
    seeded = max(NOW, datetime.now(timezone.utc).replace(microsecond=0))
    calls = [dict(account="main", program_id=5001, called_at=at, contact_count=25, enrolment_id=f"e-{i}",
                  status="Finished", error_code=None, faults=None, finished_at=at)
             for i, at in enumerate([seeded - timedelta(minutes=10), seeded - timedelta(minutes=50),
                                     seeded - timedelta(hours=2)])]
    with engine.begin() as conn:
        conn.execute(sa.insert(Contact.__table__), contacts)
        conn.execute(sa.insert(ContactIdentifier.__table__), identifiers)
        conn.execute(sa.insert(ProgramTrigger.__table__), triggers)
        conn.execute(sa.insert(EnrolmentCall.__table__), calls)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the read-side queries ------------------------------------------------------------------------------------


def test_queries_find_the_contact_and_order_its_triggers(engine, database_url, sandbox):
    settings = make_settings(database_url, sandbox)
    seed(engine)
    assert find_contact(engine, email="  Ann@Example.COM ") == ANN
    assert find_contact(engine, customer_id="cust-ann", store_key="uk", settings=settings) == ANN
    assert find_contact(engine, mobile="+447700900123") == ANN
    assert find_contact(engine, contact_id="1") == ANN
    assert find_contact(engine, email="nobody@example.com") is None
    with pytest.raises(AmbiguousContact) as ambiguous:
        find_contact(engine, email="shared@example.com")
    assert ambiguous.value.field == "store_key" and ambiguous.value.accounts == ["main", "other"]
    assert find_contact(engine, email="shared@example.com", store_key="uk", settings=settings) == SHARED_MAIN
    for kwargs, field in [({}, None), ({"email": "a@example.com", "contact_id": 1}, None),
                          ({"customer_id": "cust-ann"}, "store_key"), ({"email": "not-an-email"}, "email"),
                          ({"mobile": "07700 900123"}, "mobile"), ({"contact_id": "x"}, "contact_id"),
                          ({"email": "ann@example.com", "store_key": "nope"}, "store_key")]:
        with pytest.raises(InvalidQuery) as invalid:
            find_contact(engine, settings=settings, **kwargs)
        assert invalid.value.field == field, kwargs

    views = list_triggers(engine, ANN)
    assert [v.id for v in views] == ANN_ORDER
    assert [v.status for v in views] == ["pending", "skipped", "sent"]
    assert views[1].reason == "ordered_since" and views[1].decided_at == T0 + timedelta(hours=24, seconds=2)
    assert views[0].due_at == T0 + timedelta(hours=77) and views[0].decided_at is None
    assert [v.id for v in list_triggers(engine, ANN, limit=2)] == [103, 102]
    assert [v.id for v in list_triggers(engine, ANN, statuses=["sent", "skipped"])] == [102, 101]
    with pytest.raises(InvalidQuery):
        list_triggers(engine, ANN, statuses=["done"])

    everything = trigger_summary(engine, settings=settings, now=datetime.now(timezone.utc))
    assert everything.by_status == {"pending": 2, "sent": 1, "skipped": 2, "cancelled": 1}
    assert everything.skipped_by_reason == {"ordered_since": 1, "unsubscribed": 1}
    assert everything.pending_due == 1
    assert [(b.account, b.calls_last_hour, b.calls_per_hour) for b in everything.enrolment_budgets] == [("main", 2, 20)]
    de = trigger_summary(engine, "de", settings=settings, now=datetime.now(timezone.utc))
    assert de.by_status == {"pending": 1, "skipped": 1, "cancelled": 1} and de.pending_due == 1


# -- the command line -----------------------------------------------------------------------------------------


_config = ops_config
ctdd = run_ctdd


def test_cli_lists_pending_then_decided_triggers_with_reasons(engine, database_url, tmp_path):
    seed(engine)
    config = _config(tmp_path, database_url)

    done = ctdd("triggers", "list", "--config", config, "--email", "Ann@Example.com")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "contact 1 (--email Ann@Example.com, account main): 1 to decide, 2 decided"
    assert lines[1].split() == ["TIME", "(UTC)", "STORE", "KIND", "SUBJECT", "STEP", "STATUS", "REASON"]
    rows = [line.split() for line in lines[2:]]
    assert rows == [
        [iso(T0 + timedelta(hours=77)), "uk", "post_purchase_first", "order", "o-ann-1", "1", "pending", "-"],
        [iso(T0 + timedelta(hours=24, seconds=2)), "uk", "abandoned_cart", "cart", "c-ann", "v7", "2", "skipped",
         "ordered_since"],
        [iso(T0 + timedelta(hours=1, seconds=4)), "uk", "abandoned_cart", "cart", "c-ann", "v7", "1", "sent",
         "enrolment", "e-7f3a"],
    ]
    # the table is aligned: every column starts at the same offset on every line
    assert len({line.index("uk") for line in lines[2:]}) == 1 and lines[1].index("STORE") == lines[2].index("uk")
    assert "bob" not in done.stdout and "c-bob" not in done.stdout

    by_customer = ctdd("triggers", "list", "--config", config, "--customer-id", "cust-ann", "--store", "uk", "--json")
    assert by_customer.returncode == 0, by_customer.stderr
    listed = json.loads(by_customer.stdout)
    assert listed["contact_id"] == ANN and listed["account"] == "main" and listed["has_more"] is False
    assert [t["id"] for t in listed["triggers"]] == ANN_ORDER
    assert listed["triggers"][1]["reason"] == "ordered_since" and listed["triggers"][1]["status"] == "skipped"
    assert listed["triggers"][0]["decided_at"] is None and listed["triggers"][0]["due_at"] == iso(T0 + timedelta(hours=77))

    only_decided = ctdd("triggers", "list", "--database-url", database_url, "--mobile", "+447700900123",
                        "--status", "skipped", "--status", "sent", "--limit", "1")
    assert only_decided.returncode == 0, only_decided.stderr
    assert "showing 1 of 2" in only_decided.stdout.splitlines()[0]
    assert [line.split()[-1] for line in only_decided.stdout.splitlines()[2:]] == ["ordered_since"]


def test_cli_unknown_contact_and_bad_selectors(engine, database_url, tmp_path):
    seed(engine)
    config = _config(tmp_path, database_url)
    unknown = ctdd("triggers", "list", "--config", config, "--email", "nobody@example.com")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "ctdd triggers: no contact found for --email nobody@example.com"
    assert unknown.stdout == ""

    no_store = ctdd("triggers", "list", "--config", config, "--customer-id", "cust-ann")
    assert no_store.returncode == 2 and "--store: required with a customer id" in no_store.stderr
    ambiguous = ctdd("triggers", "list", "--database-url", database_url, "--email", "shared@example.com")
    assert ambiguous.returncode == 2 and "--store:" in ambiguous.stderr and "main, other" in ambiguous.stderr
    missing = ctdd("triggers", "list", "--config", config)
    assert missing.returncode == 2 and "one of the arguments --email --customer-id --mobile --contact-id" in missing.stderr


def test_cli_summary(engine, database_url, tmp_path):
    seed(engine)
    config = _config(tmp_path, database_url)
    done = ctdd("triggers", "summary", "--config", config)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.splitlines()[0] == "program triggers of every store: 6"
    for line in (["pending", "2"], ["sent", "1"], ["skipped", "2"], ["cancelled", "1"], ["ordered_since", "1"],
                 ["unsubscribed", "1"], ["main", "2", "of", "20"]):
        assert line in [row.split() for row in text.splitlines()], line
    assert "pending and already due: 1" in text

    de = json.loads(ctdd("triggers", "summary", "--config", config, "--store", "de", "--json").stdout)
    assert de["by_status"] == {"pending": 1, "skipped": 1, "cancelled": 1}
    assert de["skipped_by_reason"] == {"unsubscribed": 1}
    assert de["enrolment_budgets"] == [{"account": "main", "calls_last_hour": 2, "calls_per_hour": 20}]


# -- gRPC: AdminService.ListTriggers ----------------------------------------------------------------------------


async def test_grpc_list_triggers(engine, database_url, sandbox, service_factory):
    seed(engine)
    svc = await service_factory(make_settings(database_url, sandbox), run_dispatcher=False)
    admin = apb_grpc.AdminServiceStub(svc.channel)

    health = await health_pb2_grpc.HealthStub(svc.channel).Check(
        health_pb2.HealthCheckRequest(service="ctdd.sync.v1.AdminService"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    reply = await admin.ListTriggers(apb.ListTriggersRequest(email="Ann@Example.com"))
    assert reply.contact_id == "1" and reply.account == "main" and not reply.has_more
    assert [t.id for t in reply.triggers] == ANN_ORDER
    pending, skipped, sent = reply.triggers
    assert (pending.status, pending.program_kind, pending.subject_type, pending.subject_id) == (
        apb.TRIGGER_STATUS_PENDING, "post_purchase_first", "order", "o-ann-1")
    assert pending.due_at.ToDatetime(tzinfo=timezone.utc) == T0 + timedelta(hours=77)
    assert not pending.HasField("decided_at")
    assert (skipped.status, skipped.reason, skipped.step, skipped.subject_version, skipped.program_id) == (
        apb.TRIGGER_STATUS_SKIPPED, "ordered_since", 2, 7, 5001)
    assert skipped.decided_at.ToDatetime(tzinfo=timezone.utc) == T0 + timedelta(hours=24, seconds=2)
    assert (sent.status, sent.status_name, sent.enrolment_id, sent.attempts, sent.contact_id, sent.store_key) == (
        apb.TRIGGER_STATUS_SENT, "sent", "e-7f3a", 1, "1", "uk")
    counts = {c.status: c.count for c in reply.summary.statuses}
    assert counts == {apb.TRIGGER_STATUS_PENDING: 1, apb.TRIGGER_STATUS_SENT: 1, apb.TRIGGER_STATUS_SKIPPED: 1}
    assert [(r.reason, r.count) for r in reply.summary.skipped_reasons] == [("ordered_since", 1)]
    assert reply.summary.pending_due == 0
    assert [(b.account, b.calls_last_hour, b.calls_per_hour) for b in reply.summary.enrolment_budgets] == [
        ("main", 2, 20)]

    # the same contact by its other identifiers; a page and a status filter
    for request in (apb.ListTriggersRequest(customer_id="cust-ann", store_key="uk"),
                    apb.ListTriggersRequest(mobile_number="+447700900123"), apb.ListTriggersRequest(contact_id="1")):
        assert [t.id for t in (await admin.ListTriggers(request)).triggers] == ANN_ORDER
    page = await admin.ListTriggers(apb.ListTriggersRequest(contact_id="1", page_size=1))
    assert [t.id for t in page.triggers] == [103] and page.has_more
    decided = await admin.ListTriggers(apb.ListTriggersRequest(
        email="ann@example.com", statuses=[apb.TRIGGER_STATUS_SKIPPED, apb.TRIGGER_STATUS_SENT]))
    assert [t.id for t in decided.triggers] == [102, 101] and not decided.has_more


async def test_grpc_list_triggers_errors(engine, database_url, sandbox, service_factory):
    seed(engine)
    svc = await service_factory(make_settings(database_url, sandbox), run_dispatcher=False)
    admin = apb_grpc.AdminServiceStub(svc.channel)

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await admin.ListTriggers(apb.ListTriggersRequest(email="nobody@example.com"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nobody" not in unknown.value.details()

    for request, field, words in [
        (apb.ListTriggersRequest(), "contact", "set one of email"),
        (apb.ListTriggersRequest(customer_id="cust-ann"), "store_key", "required with a customer id"),
        (apb.ListTriggersRequest(customer_id="cust-ann", store_key="fr"), "store_key", "unknown store"),
        (apb.ListTriggersRequest(email="not-an-email"), "email", "not a valid email"),
        (apb.ListTriggersRequest(mobile_number="07700 900123"), "mobile_number", "E.164"),
        (apb.ListTriggersRequest(contact_id="one"), "contact_id", "contact id"),
        # beyond the column's 64 bits, or not ASCII digits (int() takes "1_0" and other scripts' digits)
        (apb.ListTriggersRequest(contact_id="9223372036854775808"), "contact_id", "contact id"),
        (apb.ListTriggersRequest(contact_id="9" * 30), "contact_id", "contact id"),
        (apb.ListTriggersRequest(contact_id="1_0"), "contact_id", "contact id"),
        (apb.ListTriggersRequest(contact_id="\uff11"), "contact_id", "contact id"),
        (apb.ListTriggersRequest(email="shared@example.com"), "store_key", "main, other"),
        (apb.ListTriggersRequest(contact_id="1", statuses=[apb.TRIGGER_STATUS_UNSPECIFIED]), "statuses", "UNSPECIFIED"),
        (apb.ListTriggersRequest(contact_id="1", page_size=-1), "page_size", "negative"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await admin.ListTriggers(request)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        violations = field_violations(invalid.value)
        assert list(violations) == [field], (request, violations)
        assert words in violations[field], (request, violations)
    # with the store, the shared address is one contact
    shared = await admin.ListTriggers(apb.ListTriggersRequest(email="shared@example.com", store_key="uk"))
    assert shared.contact_id == str(SHARED_MAIN) and list(shared.triggers) == []
