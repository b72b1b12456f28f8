"""``ctdd contact show`` and the operator's gRPC ``AdminService.GetContact`` (issue 19, item 3), on SQLite and
PostgreSQL, on a contact made through the real pipeline: an identity conflict (its customer id asks for another
contact's email), a stale field (an older update whose first name was not sent: field_state keeps the newer one)
and a dead message (the Dotdigital sandbox refuses a call for good). Its program triggers are seeded as the
trigger engine writes them (which program rules start one is the trigger engine's business).
"""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import sqlalchemy as sa

from ctdd.db.models import ProgramTrigger
from ctdd.sync.v1 import admin_service_pb2 as apb
from ctdd.sync.v1 import admin_service_pb2_grpc as apb_grpc
from support import all_settled, contact_request, field_violations, make_settings, wait_for
from support.cli import ops_config, run_ctdd

INVALID = {"errorCode": "contacts:invalidData", "description": "The contact data is invalid"}


def ctdd(*args: str) -> subprocess.CompletedProcess:
    return run_ctdd(*args)


async def _story(svc, sandbox) -> dict:
    """Ann (customer c-ann) and Bob; Ann's customer record asks for Bob's email (conflict), an older version
    of it arrives after a newer one (stale first name), and her last update is refused for good (dead)."""
    ann = await svc.stub.SyncContact(contact_request(customer_id="c-ann", email="ann@example.com", first_name="Ann",
                                                     version=1))
    bob = await svc.stub.SyncContact(contact_request(customer_id="c-bob", email="bob@example.com", first_name="Bob",
                                                     version=1))
    clash = await svc.stub.SyncContact(contact_request(customer_id="c-ann", email="bob@example.com", version=2))
    assert [(c.kind, c.owner_contact_id) for c in clash.conflicts] == [("email", bob.contact_id)]
    newer = await svc.stub.SyncContact(contact_request(customer_id="c-ann", email="ann@example.com",
                                                       first_name="Annie", version=4))
    older = await svc.stub.SyncContact(contact_request(customer_id="c-ann", email="ann@example.com",
                                                       first_name="Anna", version=3))
    assert "dataFields.FIRSTNAME" in older.stale_fields and not older.changed
    await wait_for(lambda: all_settled(svc), timeout=20, what="first deliveries")
    dd_id = svc.rows("SELECT dotdigital_contact_id FROM contact WHERE id = :c", c=int(ann.contact_id))[0][
        "dotdigital_contact_id"]
    assert dd_id  # known since the first delivery: later updates address the contact by it
    sandbox.inject_fault(status=400, times=1, path_contains=f"/contactId/{dd_id}", body=INVALID)
    await svc.stub.SyncContact(contact_request(customer_id="c-ann", email="ann@example.com", first_name="Annie",
                                               last_name="Lee", version=5))
    dead = (await wait_for(lambda: svc.rows("SELECT id, contact_id FROM outbox_message WHERE status = 'dead'"),
                           timeout=20, what="a dead message"))[0]
    assert dead["contact_id"] == int(ann.contact_id)
    firstname_message = svc.rows("SELECT message_id FROM field_state WHERE contact_id = :c AND field = "
                                 "'dataFields.FIRSTNAME'", c=int(ann.contact_id))[0]["message_id"]
    assert firstname_message in newer.outbox_message_ids
    now = datetime.now(timezone.utc).replace(microsecond=0)
    base = dict(store_key="uk", account="main", contact_id=int(ann.contact_id), subject_type="cart",
                subject_id="cart-9", subject_version=3, attempts=0, created_at=now)
    with svc.engine.begin() as conn:
        conn.execute(sa.insert(ProgramTrigger.__table__), [
            {**base, "program_kind": "abandoned_cart", "step": 2, "due_at": now + timedelta(hours=20),
             "status": "pending", "reason": None, "decided_at": None},
            {**base, "program_kind": "abandoned_cart", "step": 1, "due_at": now - timedelta(hours=1),
             "status": "skipped", "reason": "ordered_since: order o-1", "decided_at": now - timedelta(minutes=59)},
        ])
    return {"ann": int(ann.contact_id), "bob": int(bob.contact_id), "dead": dead["id"],
            "firstname_message": firstname_message}


def _field(fields: list[dict], name: str) -> dict | None:
    return next((f for f in fields if f["field"] == name), None)


async def test_contact_show_cli_and_grpc(service_factory, database_url, sandbox, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    svc = await service_factory(make_settings(database_url, sandbox))
    ids = await _story(svc, sandbox)
    config = ops_config(tmp_path, database_url)

    done = ctdd("contact", "show", "--email", " Ann@Example.com", "--config", config, "--json")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    assert (card["contact_id"], card["account"], card["email"]) == (ids["ann"], "main", "ann@example.com")
    assert {(i["kind"], i["value"]) for i in card["identifiers"]} >= {("email", "ann@example.com"),
                                                                      ("customer_id", "shop-eu/c-ann")}
    assert [(c["kind"], c["role"], c["other_contact_id"]) for c in card["conflicts"]] == [
        ("email", "requested", ids["bob"])]
    # the stale first name: the newer version's value, its source record and the delivered message that carried it
    first = _field(card["fields"], "dataFields.FIRSTNAME")
    assert (first["value"], first["source_ref"], first["source_version"]) == ("Annie", "customer/c-ann", 4)
    assert first["message"]["id"] == ids["firstname_message"] and first["message"]["status"] == "delivered"
    assert first["message"]["response_code"] in (200, 201, 202)
    # the dead message: its status, response code and the attempt that killed it
    dead = next(m for m in card["recent_messages"] if m["id"] == ids["dead"])
    assert (dead["status"], dead["response_code"], dead["kind"], dead["record_version"]) == (
        "dead", 400, "contact.upsert", 5)
    assert [(a["outcome"], a["response_code"]) for a in dead["attempt_log"]][-1] == ("dead", 400)
    assert "contacts:invalidData" in dead["error"]
    # a value carried only by the dead message is forgotten, so it is sent again with the next update
    assert _field(card["fields"], "dataFields.LASTNAME") is None
    assert card["pending_messages"] == []
    assert [m["id"] for m in card["recent_messages"]] == sorted((m["id"] for m in card["recent_messages"]),
                                                                reverse=True)
    assert {c["channel"] for c in card["channels"]} == {"email", "sms"}
    assert [(t["program_kind"], t["step"], t["status"]) for t in card["triggers"]] == [
        ("abandoned_cart", 2, "pending"), ("abandoned_cart", 1, "skipped")]
    assert card["triggers"][1]["reason"] == "ordered_since: order o-1"

    # the other selectors find the same contact; the text output names what a support person looks for
    for flags in (["--customer-id", "c-ann", "--store", "uk"], ["--contact-id", str(ids["ann"])]):
        same = ctdd("contact", "show", *flags, "--config", config, "--json")
        assert same.returncode == 0 and json.loads(same.stdout)["contact_id"] == ids["ann"], same.stderr
    text = ctdd("contact", "show", "--contact-id", str(ids["ann"]), "--config", config)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"contact {ids['ann']} (account main")
    row = next(line.split() for line in lines if line.startswith("dataFields.FIRSTNAME "))
    assert row[1:4] == ["Annie", "customer/c-ann", "4"]
    assert row[-3:-1] == [f"outbox:{ids['firstname_message']}", "delivered"]
    assert any(line.split()[:4] == ["email", "asked", "for", "it,"] for line in lines)
    dead_row = next(line.split() for line in lines if line.startswith(f"outbox:{ids['dead']} "))
    assert dead_row[2:4] == ["contact.upsert", "dead"] and "400" in dead_row
    assert any(line.split()[3:7] == ["abandoned_cart", "cart", "cart-9", "v3"] and "pending" in line
               for line in lines)

    # errors: unknown contact, a customer id without its store, a bad limit
    missing = ctdd("contact", "show", "--email", "nobody@example.com", "--config", config)
    assert missing.returncode == 1 and "no contact found for --email nobody@example.com" in missing.stderr
    no_store = ctdd("contact", "show", "--customer-id", "c-ann", "--config", config)
    assert no_store.returncode == 2 and "--store" in no_store.stderr
    bad = ctdd("contact", "show", "--contact-id", "1", "--messages", "0", "--config", config)
    assert bad.returncode == 2 and "--messages" in bad.stderr

    # the same through gRPC
    admin = apb_grpc.AdminServiceStub(svc.channel)
    reply = await admin.GetContact(apb.GetContactRequest(email="ann@example.com"))
    assert (reply.contact_id, reply.account, reply.email) == (str(ids["ann"]), "main", "ann@example.com")
    assert [(c.kind, c.role, c.other_contact_id) for c in reply.conflicts] == [("email", "requested", str(ids["bob"]))]
    first = next(f for f in reply.fields if f.field == "dataFields.FIRSTNAME")
    assert (json.loads(first.value_json), first.source_ref, first.source_version) == ("Annie", "customer/c-ann", 4)
    assert (first.message.ref, first.message.status) == (f"outbox:{ids['firstname_message']}", "delivered")
    dead_pb = next(m for m in reply.recent_messages if m.ref == f"outbox:{ids['dead']}")
    assert (dead_pb.status, dead_pb.response_code, dead_pb.record.record_version) == ("dead", 400, 5)
    assert dead_pb.attempt_log[-1].outcome == "dead" and dead_pb.attempt_log[-1].response_code == 400
    assert [(t.status_name, t.step) for t in reply.triggers] == [("pending", 2), ("skipped", 1)]
    assert not reply.more_triggers
    limited = await admin.GetContact(apb.GetContactRequest(contact_id=str(ids["ann"]), message_limit=1,
                                                           trigger_limit=1))
    assert len(limited.recent_messages) == 1 and limited.more_messages
    assert [t.status_name for t in limited.triggers] == ["pending"] and limited.more_triggers
    assert limited.recent_messages[0].ref == f"outbox:{ids['dead']}"

    with pytest.raises(grpc.aio.AioRpcError) as not_found:
        await admin.GetContact(apb.GetContactRequest(email="nobody@example.com"))
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
    for request, field in [(apb.GetContactRequest(), "contact"),
                           (apb.GetContactRequest(customer_id="c-ann"), "store_key"),
                           (apb.GetContactRequest(email="ann@example.com", trigger_limit=-1), "trigger_limit")]:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await admin.GetContact(request)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(invalid.value), request

    # personal data is shown to the operator, never logged by the service
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.startswith("ctdd.") and not r.name.startswith("ctdd.testing"))
    for secret in ("ann@example.com", "Annie", "bob@example.com"):
        assert secret not in logged


async def test_get_contact_needs_an_operator_token_and_a_store_limited_one_sees_its_store(
        service_factory, database_url, sandbox, tmp_path):
    from ctdd.api.auth import hash_token

    operator, limited, shop = "ops-token-5e6f7a8b9c0d1e2f", "ops-uk-token-9c0d1e2f3a4b", "shop-token-1a2b3c4d5e6f7a8b"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f"""
[[tokens]]
name = "ops"
sha256 = "{hash_token(operator)}"
operator = true

[[tokens]]
name = "ops-uk"
sha256 = "{hash_token(limited)}"
operator = true
stores = ["uk"]

[[tokens]]
name = "shop"
token = "{shop}"
""")
    svc = await service_factory(make_settings(database_url, sandbox).replace(tokens_file=str(tokens)),
                                run_dispatcher=False)
    auth = lambda token: (("authorization", f"Bearer {token}"),)  # noqa: E731
    await svc.stub.SyncContact(contact_request(customer_id="c-1", email="cy@example.com", version=1),
                               metadata=auth(shop))
    await svc.stub.SyncContact(contact_request("de", email="cy@example.com", first_name="Cy"), metadata=auth(shop))
    admin = apb_grpc.AdminServiceStub(svc.channel)
    request = apb.GetContactRequest(email="cy@example.com")
    for metadata, code in [((), grpc.StatusCode.UNAUTHENTICATED), (auth(shop), grpc.StatusCode.PERMISSION_DENIED),
                           (auth(limited), grpc.StatusCode.PERMISSION_DENIED)]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.GetContact(request, metadata=metadata)
        assert refused.value.code() == code
    everything = await admin.GetContact(request, metadata=auth(operator))
    assert sorted(m.store_key for m in everything.pending_messages) == ["de", "uk"]
    uk_only = await admin.GetContact(apb.GetContactRequest(email="cy@example.com", store_key="uk"),
                                     metadata=auth(limited))
    assert [m.store_key for m in uk_only.pending_messages] == ["uk"]
