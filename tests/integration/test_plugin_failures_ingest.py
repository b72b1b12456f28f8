"""A plugin that raises in a hook fails the record concerned only, naming the plugin and the hook, over real
gRPC against the Dotdigital sandbox, on SQLite and PostgreSQL. The plugin raises for one contact ("boom...")
and the others flow through:

- the contact hooks (``ctdd_map_contact``, ``ctdd_enrich_contact``, ``ctdd_suppress_contact``): SyncContact and
  an applied TrackEvent answer FAILED_PRECONDITION naming them, with a rejected_record row; nothing of that
  contact is written, so the same event delivered again once the plugin is fixed is applied. A queued event
  becomes ``failed`` at once (not retried), and ``ctdd failures retry inbox:<id>`` applies it once fixed;
- the record hooks (``ctdd_map_behavioural_event``, ``ctdd_map_order``, ``ctdd_map_cart``): that record is not
  sent (a rejected_record row names plugin and hook), the rest of the event applies.

``ctdd_map_catalog_item`` and ``ctdd_transform_payload`` are covered by test_plugin_failures.py."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ctdd import hookimpl
from ctdd.config import InboxConfig, replace
from ctdd.delivery import failure_view, redrive
from ctdd.domain.collections import BROWSE_COLLECTION, CART_COLLECTION, ORDERS_COLLECTION
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools
from support import all_settled, contact_request, make_settings, wait_for
from support import ct_payloads as ct

CONTACT_HOOKS = ["ctdd_map_contact", "ctdd_enrich_contact", "ctdd_suppress_contact"]
RECORD_HOOKS = ["ctdd_map_behavioural_event", "ctdd_map_order", "ctdd_map_cart"]
outcome_name = pb.EventOutcome.Name


class Breaker:
    """Raises in ``hook`` for the records of addresses starting with "boom" (until ``fixed``); otherwise every
    hook passes (None: the next plugin answers, the record is kept as built)."""

    def __init__(self, hook: str):
        self.hook = hook
        self.fixed = False

    def _check(self, hook: str, email: str | None) -> None:
        if hook == self.hook and not self.fixed and (email or "").startswith("boom"):
            raise RuntimeError("the brand's lookup table is missing")  # a message that must not be echoed

    @hookimpl
    def ctdd_map_contact(self, contact):
        self._check("ctdd_map_contact", contact.identity.email)

    @hookimpl
    def ctdd_enrich_contact(self, contact):
        self._check("ctdd_enrich_contact", contact.identity.email)

    @hookimpl
    def ctdd_suppress_contact(self, contact):
        self._check("ctdd_suppress_contact", contact.identity.email)

    @hookimpl
    def ctdd_map_behavioural_event(self, event):
        self._check("ctdd_map_behavioural_event", event.identity.email)

    @hookimpl
    def ctdd_map_order(self, order):
        self._check("ctdd_map_order", order.get("customerEmail"))

    @hookimpl
    def ctdd_map_cart(self, cart):
        self._check("ctdd_map_cart", cart.get("customerEmail"))


def named(hook: str) -> str:
    """What every error, outcome reason and rejected record says of the failure."""
    return f"plugin 'breaker' failed in {hook}: raised RuntimeError"


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


async def start(service_factory, database_url, sandbox, fake_ct, breaker: Breaker):
    settings = make_settings(database_url, sandbox, commercetools=fake_ct)
    settings = replace(settings, inbox=InboxConfig(batch_size=16, poll_interval_seconds=0.05, lease_seconds=5.0,
                                                   backoff_base_seconds=0.05, backoff_cap_seconds=0.2))
    return await service_factory(settings, extra_plugins=[("breaker", breaker)])


def view(event_id: str, email: str, product: str, processing=pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    event = pb.BehaviouralEvent(event_id=event_id, identity=pb.ContactIdentity(email=email),
                                product_viewed=pb.ProductViewed(product_id=product, sku=f"SKU-{product}"))
    event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
    return pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=processing)


def cart(event_id: str, email: str, cart_id: str, processing=pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    event = pb.BehaviouralEvent(event_id=event_id, identity=pb.ContactIdentity(email=email), currency="GBP",
                                cart_updated=pb.CartUpdated(cart_id=cart_id, cart_version=1))
    event.cart_updated.cart.update({"lineItems": [ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1000)],
                                    "totalPrice": ct.money(1000), "cartState": "Active", "customerEmail": email})
    event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
    return pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=processing)


def order(order_id: str, email: str, processing=pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    body = ct.order(order_id, number=order_id.upper(), email=email)
    delivery = ct.raw(ct.message("order", order_id, "OrderCreated", version=1, order=body))
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=delivery, processing=processing)


def customer(customer_id: str, email: str, processing=pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    delivery = ct.raw(ct.message("customer", customer_id, "CustomerCreated", version=1,
                                 customer=ct.customer(customer_id, email, first="Bo")))
    return pb.TrackEventRequest(store_key="uk", commercetools_delivery=delivery, processing=processing)


def rejected(svc) -> list[tuple[str, str, str]]:
    return [(r["operation"], r["record_type"], r["reason"]) for r in svc.rows(
        "SELECT operation, record_type, reason FROM rejected_record ORDER BY id")]


def inbox_rows(svc) -> list[dict]:
    return svc.rows("SELECT id, status, attempts, last_error FROM event_inbox ORDER BY id")


def precondition(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (type, subject) of each PreconditionFailure violation of an error."""
    status = rpc_status.from_call(err)
    assert status is not None, "rich error details missing"
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            found += [(v.type, v.subject) for v in failure.violations]
    return found


# -- the contact hooks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", CONTACT_HOOKS)
async def test_sync_contact_that_a_plugin_fails_is_refused_naming_it_and_others_flow(
        service_factory, database_url, sandbox, fake_ct, hook):
    svc = await start(service_factory, database_url, sandbox, fake_ct, Breaker(hook))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.SyncContact(contact_request(email="boom@example.com", first_name="Bo"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == f"contact not synced: {named(hook)}"
    assert precondition(err.value) == [("PLUGIN_FAILED", "plugin/breaker")]
    assert "lookup table" not in err.value.details()  # the exception's message is logged, not answered

    ann = await svc.stub.SyncContact(contact_request(email="ann@example.com", first_name="Ann"))
    assert ann.changed and ann.created
    await wait_for(lambda: all_settled(svc), what="delivery")
    assert sandbox.get_contact(email="ann@example.com")["dataFields"]["FIRSTNAME"] == "Ann"
    assert sandbox.get_contact(email="boom@example.com") is None
    assert [r["email"] for r in svc.rows("SELECT email FROM contact")] == ["ann@example.com"]
    assert rejected(svc) == [("SyncContact", None, f"contact not synced: {named(hook)}")]


@pytest.mark.parametrize("hook", CONTACT_HOOKS)
async def test_applied_event_that_a_contact_plugin_fails_is_refused_naming_it_and_others_flow(
        service_factory, database_url, sandbox, fake_ct, hook):
    breaker = Breaker(hook)
    svc = await start(service_factory, database_url, sandbox, fake_ct, breaker)
    # a behavioural event (the plugins run while it is prepared)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await svc.stub.TrackEvent(view("v-boom", "boom@example.com", "p-1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == f"event not applied: {named(hook)}"
    assert precondition(err.value) == [("PLUGIN_FAILED", "plugin/breaker")]
    # in a batch: a customer message (plugins run while it is prepared) and an order (plugins run while it is
    # applied) fail on their own, not retryable until the plugin is fixed; the other events apply
    batch = await svc.stub.TrackEventBatch(pb.TrackEventBatchRequest(events=[
        customer("cust-boom", "boom@example.com"), order("o-boom", "boom@example.com"),
        order("o-ann", "ann@example.com"), view("v-ann", "ann@example.com", "p-2")]))
    assert [(r.code, r.retryable) for r in batch.results] == [(9, False), (9, False), (0, False), (0, False)]
    assert [r.message for r in batch.results[:2]] == [f"event not applied: {named(hook)}"] * 2
    assert [outcome_name(n.outcome) for r in batch.results[2:] for n in r.response.notifications] == [
        "EVENT_OUTCOME_APPLIED"] * 2

    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert set(sandbox.insight_records(ORDERS_COLLECTION, contact_email="ann@example.com")) == {"O-ANN"}
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email="ann@example.com")) == {"p-2"}
    assert sandbox.get_contact(email="boom@example.com") is None
    assert rejected(svc) == [("TrackEvent", kind, f"event not applied: {named(hook)}")
                             for kind in ("behavioural_event", "commercetools_delivery", "commercetools_delivery")]

    # nothing of the failed events was kept as processed: delivered again once the plugin is fixed, they apply
    breaker.fixed = True
    again = await svc.stub.TrackEvent(order("o-boom", "boom@example.com"))
    assert [outcome_name(n.outcome) for n in again.notifications] == ["EVENT_OUTCOME_APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deliveries after the fix")
    assert set(sandbox.insight_records(ORDERS_COLLECTION, contact_email="boom@example.com")) == {"O-BOOM"}


@pytest.mark.parametrize("hook", CONTACT_HOOKS)
async def test_queued_event_that_a_contact_plugin_fails_fails_at_once_and_is_retried_once_fixed(
        service_factory, database_url, sandbox, fake_ct, hook):
    breaker = Breaker(hook)
    svc = await start(service_factory, database_url, sandbox, fake_ct, breaker)
    queued = pb.PROCESSING_QUEUED
    for request in (customer("cust-boom", "boom@example.com", queued),  # prepared with awaits
                    view("v-boom", "boom@example.com", "p-1", queued),  # prepared at once
                    order("o-boom", "boom@example.com", queued),  # the plugins run while it is applied
                    view("v-ann", "ann@example.com", "p-2", queued)):
        assert (await svc.stub.TrackEvent(request)).queued
    await wait_for(lambda: all(r["status"] != "pending" for r in inbox_rows(svc)), timeout=20, what="inbox processed")
    rows = inbox_rows(svc)
    # failed at the first attempt: retrying cannot help until the plugin is fixed
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", 1)] * 3 + [("done", 0)]
    assert [r["last_error"] for r in rows[:3]] == [named(hook)] * 3
    assert rejected(svc) == [("TrackEvent", "event_inbox", f"queued event failed after 1 attempt(s): {named(hook)}")] * 3
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email="ann@example.com")) == {"p-2"}
    assert sandbox.get_contact(email="boom@example.com") is None

    breaker.fixed = True
    report = redrive.retry(svc.engine, [failure_view.Ref("inbox", r["id"]) for r in rows[:3]], operator="ops",
                           reason="brand plugin fixed")
    assert [r.outcome for r in report.results] == ["retried"] * 3
    await wait_for(lambda: all(r["status"] == "done" for r in inbox_rows(svc)), timeout=20, what="retried events")
    await wait_for(lambda: all_settled(svc), what="deliveries after the fix")
    assert sandbox.get_contact(email="boom@example.com")["dataFields"]["CUSTOMER_ID"] == "cust-boom"
    assert set(sandbox.insight_records(ORDERS_COLLECTION, contact_email="boom@example.com")) == {"O-BOOM"}
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email="boom@example.com")) == {"p-1"}


# -- the record hooks ---------------------------------------------------------------------------------------------

#: per record hook: the events of boom and ann, the collection, ann's record key, why boom's is not sent
RECORDS = {
    "ctdd_map_behavioural_event": (lambda p: [view("v-boom", "boom@example.com", "p-1", p),
                                              view("v-ann", "ann@example.com", "p-2", p)],
                                   BROWSE_COLLECTION, "p-2", "product insight record not sent"),
    "ctdd_map_order": (lambda p: [order("o-boom", "boom@example.com", p), order("o-ann", "ann@example.com", p)],
                       ORDERS_COLLECTION, "O-ANN", "Orders record not sent"),
    "ctdd_map_cart": (lambda p: [cart("c-boom", "boom@example.com", "cart-boom", p),
                                 cart("c-ann", "ann@example.com", "cart-ann", p)],
                      CART_COLLECTION, "cart-ann", "CartInsight record not sent"),
}


@pytest.mark.parametrize("processing", [pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED], ids=["applied", "queued"])
@pytest.mark.parametrize("hook", RECORD_HOOKS)
async def test_a_record_that_a_plugin_fails_is_not_sent_and_the_rest_applies(
        service_factory, database_url, sandbox, fake_ct, hook, processing):
    svc = await start(service_factory, database_url, sandbox, fake_ct, Breaker(hook))
    events, collection, ann_key, not_sent = RECORDS[hook]
    responses = [await svc.stub.TrackEvent(request) for request in events(processing)]
    if processing == pb.PROCESSING_QUEUED:
        assert all(r.queued for r in responses)
        await wait_for(lambda: all(r["status"] == "done" for r in inbox_rows(svc)), timeout=20, what="inbox")
    else:
        assert [[outcome_name(n.outcome) for n in r.notifications] for r in responses] == [["EVENT_OUTCOME_APPLIED"]] * 2
        if hook != "ctdd_map_cart":  # (a cart's outcome carries no reason: its rejected record says it)
            assert responses[0].notifications[0].reason == f"{not_sent}: {named(hook)}"
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert [(op, reason) for op, _, reason in rejected(svc)] == [("TrackEvent", f"{not_sent}: {named(hook)}")]
    # the contact of the failed record is still updated; only that record is not sent
    assert sandbox.get_contact(email="boom@example.com") is not None
    assert sandbox.insight_records(collection, contact_email="boom@example.com") == {}
    assert set(sandbox.insight_records(collection, contact_email="ann@example.com")) == {ann_key}
