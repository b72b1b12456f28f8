"""Programs inside the running service (``ctdd serve`` wiring): the list-join strategy through the outbox to the
sandbox, program names resolved at start, and ``ctdd dotdigital setup`` checking the configured programs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ctdd.clock import VirtualClock, use_clock
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.provisioning import run_setup
from support import all_settled, contact_request, outbox_rows, wait_for
from support import ct_payloads as ct
from support.programs import START, one_trigger, program_settings, put_cart, triggers
from ctdd.sync.v1 import sync_service_pb2 as pb


@pytest.fixture
def clock(sandbox):
    clock = VirtualClock(START)
    sandbox.clock = clock
    with use_clock(clock):
        yield clock


async def test_list_join_starts_the_program_through_the_contacts_outbox(service_factory, database_url, sandbox,
                                                                        clock):
    trigger_list = sandbox.add_address_book("Abandoned cart trigger")
    program = sandbox.add_program("Abandoned cart (list)", start_list_id=trigger_list, allow_reentry=True)
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {
        "program": "Abandoned cart (list)", "strategy": "list_join", "trigger_list": "ac_trigger",
        "delay_minutes": 60, "retrigger_window_hours": 24}}},
        stores_extra={"uk": {"lists": {"customers": 1, "newsletter": 2, "sms": 3, "ac_trigger": trigger_list}}},
        poll_interval_seconds=0.05)
    svc = await service_factory(settings)
    req = contact_request(customer_id="c-1", email="lia@example.com")
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    reply = await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="contact upsert")
    put_cart(svc.engine, settings, "uk", "cart-1", version=1, contact_id=int(reply.contact_id), modified=clock())
    clock.advance(timedelta(minutes=61))
    svc.app.programs.wake()
    await wait_for(lambda: one_trigger(svc.engine)["status"] == "sent", what="the trigger decided")
    await wait_for(lambda: all_settled(svc), what="the list join delivered")
    row = one_trigger(svc.engine)
    assert row["reason"] == f"list_join: {trigger_list}" and row["program_id"] == program
    kinds = [m["kind"] for m in outbox_rows(svc) if m["record_type"] == "program_trigger"]
    assert kinds == ["contact.remove_from_lists", "contact.upsert"]  # leave, then join: always a fresh join
    entries = sandbox.program_entries(program)
    assert [(e.via, e.list_id) for e in entries] == [("list_join", trigger_list)]
    assert sandbox.enrolment_calls == []  # no enrolment allowance spent

    # the next cart, a day later (outside the window): the contact is still in the list, and joins again
    clock.advance(timedelta(days=1))
    put_cart(svc.engine, settings, "uk", "cart-2", version=1, contact_id=int(reply.contact_id), modified=clock())
    clock.advance(timedelta(minutes=61))
    svc.app.programs.wake()
    await wait_for(lambda: [r["status"] for r in triggers(svc.engine)] == ["sent", "sent"], what="second trigger")
    await wait_for(lambda: all_settled(svc), what="the second join delivered")
    assert len(sandbox.program_entries(program)) == 2


async def test_setup_checks_the_configured_programs(tmp_path, sqlite_url, sandbox, capsys):
    active = sandbox.add_program("Abandoned cart")
    sandbox.add_program("Post purchase", status="Deactivated")
    settings = program_settings(sqlite_url, sandbox, {"uk": {
        "abandoned_cart": {"program": "abandoned CART"},  # names match case-insensitively
        "post_purchase_first": {"program": "Post purchase"},
        "review_request": {"program": 999},
    }})
    clients = DotdigitalClients(settings.accounts)
    try:
        result = await run_setup(settings, clients, dry_run=True)
    finally:
        await clients.aclose()
    out = capsys.readouterr().out
    programs = {i.detail: (i.action, i.note) for i in result.items if i.kind == "program"}
    assert programs["stores.uk.programs.abandoned_cart"] == ("exists", f"id {active}, Active")
    assert programs["stores.uk.programs.post_purchase_first"][0] == "invalid"
    assert "Deactivated" in programs["stores.uk.programs.post_purchase_first"][1]
    assert programs["stores.uk.programs.review_request"][0] == "missing"
    assert "problem: account main: program id 999" in out and "2 problem(s)" in out


async def test_program_names_resolve_at_start(service_factory, database_url, sandbox, clock):
    program = sandbox.add_program("Browse abandonment")
    settings = program_settings(database_url, sandbox, {"uk": {
        "browse_abandonment": {"program": "Browse abandonment"},
        "review_request": {"program": "No such program"}}}, poll_interval_seconds=0.05)
    svc = await service_factory(settings)
    directory = svc.app.programs.directory
    await wait_for(lambda: directory.program_id("uk", "browse_abandonment") == program, what="resolution")
    assert directory.program_id("uk", "review_request") is None  # its triggers wait (program_unresolved)


def _iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _cart_event(event_id: str, cart_id: str, version: int, at, **fields) -> pb.TrackEventRequest:
    event = pb.BehaviouralEvent(event_id=event_id, identity=pb.ContactIdentity(customer_id="c-7"),
                                cart_updated=pb.CartUpdated(cart_id=cart_id, cart_version=version))
    event.cart_updated.cart.update({
        "id": cart_id, "version": version, "customerId": "c-7", "customerEmail": "eve@example.com",
        "cartState": "Active", "lastModifiedAt": _iso(at), "totalPrice": ct.money(1250),
        "lineItems": [ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)], **fields})
    event.occurred_at.FromJsonString(_iso(at))
    return pb.TrackEventRequest(store_key="uk", behavioural_event=event)


async def test_track_event_end_to_end_a_recovered_cart_is_never_triggered(service_factory, database_url, sandbox,
                                                                         clock):
    """Carts and an order arrive through TrackEvent; the cart the order recovered is cancelled, the other one
    (changed after the order) enrols the contact once."""
    program = sandbox.add_program("Abandoned cart")
    settings = program_settings(database_url, sandbox, {"uk": {"abandoned_cart": {
        "program": program, "delay_minutes": 60, "retrigger_window_hours": 24}}},
        stores_extra={"uk": {"commercetools_project": ct.PROJECT}}, poll_interval_seconds=0.05, batch_wait_seconds=0)
    svc = await service_factory(settings)
    req = contact_request(customer_id="c-7", email="eve@example.com")
    req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="contact upsert")

    await svc.stub.TrackEvent(_cart_event("ev-1", "cart-b", 1, clock()))
    clock.advance(timedelta(minutes=10))
    order = ct.order("order-1", number="1001", email="eve@example.com", customer_id="c-7", created=_iso(clock()),
                     cart={"typeId": "cart", "id": "cart-b"})
    placed = ct.message("order", "order-1", "OrderCreated", version=1, created=_iso(clock()), order=order)
    await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw(placed)))
    clock.advance(timedelta(minutes=10))
    await svc.stub.TrackEvent(_cart_event("ev-2", "cart-a", 1, clock()))
    got = {r["subject_id"]: (r["status"], r["reason"]) for r in triggers(svc.engine)}
    assert got == {"cart-b": ("cancelled", "cart_ordered"), "cart-a": ("pending", None)}

    clock.advance(timedelta(minutes=61))
    svc.app.programs.wake()
    await wait_for(lambda: one_trigger(svc.engine, subject_id="cart-a")["status"] == "sent", what="cart-a sent")
    assert one_trigger(svc.engine, subject_id="cart-b")["status"] == "cancelled"
    dd_id = sandbox.get_contact(email="eve@example.com")["contactId"]
    clock.advance(timedelta(seconds=5))
    assert [e.contact_id for e in sandbox.program_entries(program)] == [dd_id]
    assert [c.contacts for c in sandbox.enrolment_calls] == [(dd_id,)]
