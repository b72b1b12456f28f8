"""``ctdd serve --sandbox``: the programs of the configuration exist in the sandbox, Active, so that a program
configured by name resolves and one configured by id accepts enrolments (``ctdd.cli.loading.with_sandbox``)."""

from __future__ import annotations

from support.helpers import make_settings
from ctdd.cli.loading import with_sandbox
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.provisioning import resolve_program_names

PROGRAMS = {
    "abandoned_cart": {"program": "Abandoned cart"},
    "post_purchase_first": {"program": 4242},
    "browse_abandonment": {"program": "Browse", "strategy": "list_join", "trigger_list": "vip"},
}


def _settings(sqlite_url, sandbox):
    return make_settings(sqlite_url, sandbox, stores_extra={"uk": {"lists": {"customers": 1, "newsletter": 2,
                                                                             "sms": 3, "vip": "VIP"},
                                                                   "programs": PROGRAMS}})


def test_sandbox_mode_creates_the_configured_programs_active(sqlite_url, sandbox):
    with_sandbox(_settings(sqlite_url, sandbox), sandbox)
    programs = {p["name"]: p for p in sandbox.programs}
    assert {"Abandoned cart", "program 4242", "Browse"} <= set(programs)
    assert all(programs[name]["status"] == "Active" for name in ("Abandoned cart", "program 4242", "Browse"))
    assert programs["program 4242"]["id"] == 4242
    vip = next(b["id"] for b in sandbox.address_books if b["name"] == "VIP")
    assert sandbox._program(programs["Browse"]["id"]).start_list_id == vip


def test_sandbox_mode_leaves_existing_programs_and_is_idempotent(sqlite_url, sandbox):
    sandbox.add_program("abandoned CART", status="Draft")
    settings = _settings(sqlite_url, sandbox)
    with_sandbox(settings, sandbox)
    with_sandbox(settings, sandbox)
    names = [p["name"].casefold() for p in sandbox.programs]
    assert names.count("abandoned cart") == 1 and names.count("program 4242") == 1 and names.count("browse") == 1


async def test_programs_configured_by_name_resolve_against_the_sandbox(sqlite_url, sandbox):
    settings = with_sandbox(_settings(sqlite_url, sandbox), sandbox)
    clients = DotdigitalClients(settings.accounts)
    try:
        resolved, missing = await resolve_program_names(settings, clients)
    finally:
        await clients.aclose()
    assert missing == []
    ids = {p["name"]: p["id"] for p in sandbox.programs}
    assert resolved == {("uk", "abandoned_cart"): ids["Abandoned cart"], ("uk", "browse_abandonment"): ids["Browse"]}


async def test_a_program_configured_by_name_starts_in_a_sandbox_mode_service(service_factory, sqlite_url, sandbox):
    """The wiring of ``ctdd serve --sandbox``: the program given by name exists nowhere but in the
    configuration, and its trigger is sent (not held as ``program_unresolved``)."""
    from datetime import timedelta

    from ctdd.clock import VirtualClock, use_clock
    from support import all_settled, contact_request, wait_for
    from support.programs import START, one_trigger, program_settings, put_cart
    from ctdd.sync.v1 import sync_service_pb2 as pb

    clock = VirtualClock(START)
    sandbox.clock = clock
    with use_clock(clock):
        settings = with_sandbox(program_settings(sqlite_url, sandbox, {"uk": {"abandoned_cart": {
            "program": "Sandbox abandoned cart", "strategy": "list_join", "trigger_list": "ac_trigger",
            "delay_minutes": 60}}},
            stores_extra={"uk": {"lists": {"customers": 1, "newsletter": 2, "sms": 3, "ac_trigger": "AC trigger"}}},
            poll_interval_seconds=0.05), sandbox)
        program = next(p["id"] for p in sandbox.programs if p["name"] == "Sandbox abandoned cart")
        svc = await service_factory(settings)
        req = contact_request(customer_id="c-1", email="lia@example.com")
        req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
        reply = await svc.stub.SyncContact(req)
        await wait_for(lambda: all_settled(svc), what="contact upsert")
        put_cart(svc.engine, svc.app.settings, "uk", "cart-1", version=1, contact_id=int(reply.contact_id),
                 modified=clock())
        clock.advance(timedelta(minutes=61))
        svc.app.programs.wake()
        await wait_for(lambda: one_trigger(svc.engine)["status"] == "sent", what="the trigger decided")
        await wait_for(lambda: all_settled(svc), what="the list join delivered")
        assert one_trigger(svc.engine)["program_id"] == program
        assert len(sandbox.program_entries(program)) == 1
