"""A contact deleted in Dotdigital (by a user or a retention rule) since ctdd-sync stored its contactId is recreated
with everything sent before, not with the fields of the message being delivered alone (delta sync sent only those):
by a contact upsert, by an insight record (one PUT, or merged views whose import could not settle them), and with
the store's ``ctdd_transform_payload`` applied to the known state too. The values of messages still to be sent are
left to those messages. Real gRPC, real database, real HTTP to the sandbox; SQLite and PostgreSQL.
(The single PATCH path end to end: tests/e2e/test_sync_contact_e2e.py; the contacts import's fallback:
tests/integration/test_batching.py.)"""

from __future__ import annotations

from ctdd import hookimpl
from ctdd.delivery.dispatcher import Dispatcher
from ctdd.domain.collections import BROWSE_COLLECTION
from ctdd.sync.v1 import sync_service_pb2 as pb
from support import all_settled, contact_request, make_settings, outbox_rows, wait_for

EMAIL = "gone@example.com"
FAST_IMPORTS = dict(bulk_poll_min_seconds=0.02, bulk_poll_max_seconds=0.2)


def _contact_calls(sandbox) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in sandbox.requests if r.path.startswith("/contacts/v3/")]


def _stored_contact_id(svc) -> int:
    return svc.rows("SELECT dotdigital_contact_id FROM contact")[0]["dotdigital_contact_id"]


async def _known_then_deleted(svc, sandbox, **profile) -> dict:
    """A contact synced with several fields and two lists, then deleted in Dotdigital; the request log starts
    afresh. Returns its read model from before the deletion."""
    req = contact_request(customer_id="c-gone", email=EMAIL, first_name="Ann", last_name="Old", version=1, **profile)
    req.profile.billing_address.city = "York"
    req.lists.add(list_key="customers", member=True)
    req.lists.add(list_key="newsletter", member=True)
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="creation")
    before = sandbox.get_contact(email=EMAIL)
    assert before["dataFields"]["LASTNAME"] == "Old" and _stored_contact_id(svc) == before["contactId"]
    assert sandbox.delete_contact(email=EMAIL)
    sandbox.reset_requests()
    return before


def _assert_everything_known(contact: dict, **changed) -> None:
    fields = contact["dataFields"]
    expected = {"FIRSTNAME": "Ann", "LASTNAME": "Old", "BILLING_CITY": "York", "CUSTOMER_ID": "c-gone",
                "STORE": "uk", "LOCALE": "en-GB", "CURRENCY": "GBP", **changed}
    assert {name: fields[name] for name in expected} == expected
    assert sorted(lst["id"] for lst in contact["lists"]) == [1, 2]


async def _view(svc, n: int, product: str) -> list[int]:
    event = pb.BehaviouralEvent(event_id=f"view-{n}", identity=pb.ContactIdentity(email=EMAIL),
                                product_viewed=pb.ProductViewed(product_id=product, sku=f"SKU-{product}"))
    event.product_viewed.properties.update({"n": n})
    event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
    response = await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event))
    return list(response.outbox_message_ids)


async def test_values_of_messages_still_to_send_are_left_to_them(service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox)
    svc = await service_factory(settings)
    before = await _known_then_deleted(svc, sandbox)
    await svc.app.dispatcher.stop(drain_seconds=1)
    renamed = await svc.stub.SyncContact(contact_request(customer_id="c-gone", last_name="New", version=2))
    refused = contact_request(customer_id="c-gone", version=3)
    refused.profile.custom_fields.update({"loyaltyTier": "gold"})  # LOYALTY_TIER does not exist in the account
    refused = await svc.stub.SyncContact(refused)

    dispatcher = Dispatcher(svc.engine, settings, svc.app.clients, svc.app.hooks)
    dispatcher.start()
    try:
        await wait_for(lambda: all_settled(svc), what="delivery")
    finally:
        await dispatcher.stop(drain_seconds=1)

    # The first message recreates the contact with what reached Dotdigital before and its own LASTNAME, not with the
    # value a later message carries (which Dotdigital refuses: it fails that message alone).
    assert _contact_calls(sandbox) == [
        ("PATCH", f"/contacts/v3/contactId/{before['contactId']}", 404),
        ("PATCH", "/contacts/v3/email/gone%40example.com", 201),
        ("PATCH", f"/contacts/v3/contactId/{before['contactId'] + 1}", 400),
    ]
    recreate = [r for r in sandbox.requests if r.status == 201][0].json
    assert "LOYALTY_TIER" not in recreate["dataFields"] and recreate["identifiers"] == {"email": EMAIL}
    rows = {r["id"]: r for r in outbox_rows(svc)}
    assert rows[renamed.outbox_message_ids[0]]["status"] == "delivered"
    assert rows[refused.outbox_message_ids[0]]["status"] == "dead"
    recreated = sandbox.get_contact(email=EMAIL)
    _assert_everything_known(recreated, LASTNAME="New")
    assert _stored_contact_id(svc) == recreated["contactId"] == before["contactId"] + 1


async def test_an_insight_record_of_a_contact_deleted_in_dotdigital_recreates_it(service_factory, database_url,
                                                                               sandbox):
    svc = await service_factory(make_settings(database_url, sandbox))
    before = await _known_then_deleted(svc, sandbox)

    ids = await _view(svc, 1, "prod-1")  # no contact field changed: the insight record alone
    await wait_for(lambda: all_settled(svc), what="view")

    assert [r["kind"] for r in outbox_rows(svc) if r["id"] in ids] == ["insight.upsert"]
    assert [r["status"] for r in outbox_rows(svc)] == ["delivered"] * len(outbox_rows(svc))
    recreated = sandbox.get_contact(email=EMAIL)
    _assert_everything_known(recreated)
    puts = [(r.path.split("/")[4:6], r.status) for r in sandbox.requests if r.path.startswith("/insightData/v3/contacts/")]
    assert puts[0] == (["contactId", str(before["contactId"])], 404)
    assert puts[-1] == (["contactId", str(recreated["contactId"])], 201)
    assert _contact_calls(sandbox) == [("PATCH", "/contacts/v3/email/gone%40example.com", 201)]
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)) == {"prod-1"}
    assert _stored_contact_id(svc) == recreated["contactId"]


async def test_merged_views_whose_import_meets_the_deleted_contact_recreate_it_once(service_factory, database_url,
                                                                                  sandbox):
    svc = await service_factory(make_settings(database_url, sandbox, view_coalesce_seconds=1.0, **FAST_IMPORTS))
    await _known_then_deleted(svc, sandbox)

    for n in range(3):
        await _view(svc, n, f"prod-{n}")
    await wait_for(lambda: all(r["status"] in ("delivered", "merged") for r in outbox_rows(svc)), timeout=20,
                   what="merged views")

    imports = [r for r in sandbox.requests if r.method == "PUT" and r.path == "/insightData/v3/import"]
    assert len(imports) == 1 and len(imports[0].json["records"]) == 3  # failed for the old contactId
    assert _contact_calls(sandbox) == [("PATCH", "/contacts/v3/email/gone%40example.com", 201)]  # recreated once
    recreated = sandbox.get_contact(email=EMAIL)
    _assert_everything_known(recreated)
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)) == {"prod-0", "prod-1", "prod-2"}
    assert _stored_contact_id(svc) == recreated["contactId"]


class Shouting:
    """Sends first names in capitals: what the service built (and field_state keeps) is not what is sent."""

    @hookimpl
    def ctdd_transform_payload(self, kind, body):
        if kind == "contact" and "FIRSTNAME" in body.get("dataFields", {}):
            body["dataFields"]["FIRSTNAME"] = body["dataFields"]["FIRSTNAME"].upper()
        return body


async def test_the_known_state_is_transformed_like_the_message(service_factory, database_url, sandbox):
    svc = await service_factory(make_settings(database_url, sandbox), extra_plugins=[("shouting", Shouting())])
    await _known_then_deleted(svc, sandbox)
    await svc.stub.SyncContact(contact_request(customer_id="c-gone", last_name="New", version=2))
    await wait_for(lambda: all_settled(svc), what="re-creation")
    _assert_everything_known(sandbox.get_contact(email=EMAIL), FIRSTNAME="ANN", LASTNAME="New")
