"""Two brands on one commercetools project: a commercetools Subscription is project-wide, so an adapter
delivers every store's messages with its own ``store_key``. Orders, carts and customers are applied under the
commercetools store they name (its Dotdigital account, lists and fields), whatever store the call named, and
exactly once per store however many adapters deliver them. Real gRPC, the fake commercetools API, a Dotdigital
sandbox per brand's account, SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from support import ct_payloads as ct
from support import all_settled, make_settings, wait_for
from ctdd.config import InboxConfig, replace
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


@pytest.fixture
def sandbox_de():
    """The Dotdigital account of the ``de`` brand (``uk`` sends to the ``sandbox`` fixture's)."""
    with DotdigitalSandbox(api_user="apiuser-de@apiconnector.com", account_id=2) as sb:
        yield sb


def two_brands(database_url, sandbox, sandbox_de, fake_ct):
    """uk and de: the two brands of the fake's project, each with its own Dotdigital account; fr: a store of
    another commercetools project, which is never a target for this project's resources."""
    settings = make_settings(database_url, sandbox, commercetools=fake_ct, accounts_extra={"brand_de": sandbox_de},
                             stores_extra={"de": {"account": "brand_de"},
                                           "fr": {"commercetools_project": "another-project"}})
    return replace(settings, inbox=InboxConfig(batch_size=16, poll_interval_seconds=0.05, lease_seconds=5.0,
                                               backoff_base_seconds=0.05, backoff_cap_seconds=0.2))


@pytest.fixture
async def svc(service_factory, database_url, sandbox, sandbox_de, fake_ct):
    return await service_factory(two_brands(database_url, sandbox, sandbox_de, fake_ct))


def track(delivery: bytes, store: str, processing=pb.PROCESSING_APPLIED) -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key=store, commercetools_delivery=delivery, processing=processing)


def inbox_done(svc, rows: int):
    def done() -> bool:
        found = svc.rows("SELECT status FROM event_inbox")
        return len(found) == rows and all(r["status"] == "done" for r in found)

    return done


def outcomes(resp: pb.TrackEventResponse) -> list[str]:
    return [pb.EventOutcome.Name(n.outcome).removeprefix("EVENT_OUTCOME_") for n in resp.notifications]


def routed(resp: pb.TrackEventResponse) -> list[list[str]]:
    return [list(n.store_keys) for n in resp.notifications]


def store(key: str) -> dict:
    return {"typeId": "store", "key": key}


def upserts(sandbox: DotdigitalSandbox, email: str) -> int:
    path = "/contacts/v3/email/" + email.replace("@", "%40")
    return len([r for r in sandbox.requests if r.method == "PATCH" and r.status < 300 and r.path == path])


def de_order(oid: str, number: str, email: str, **extra) -> dict:
    return ct.order(oid, number=number, email=email, currency="EUR", store="de",
                    items=[ct.line_item("p-hut", "HUT-1", "Hut", 1, 2500, "EUR")], **extra)


async def test_an_order_goes_to_the_store_it_names_whichever_adapter_delivers_it(svc, sandbox, sandbox_de, fake_ct):
    order = de_order("ord-de", "DE-1", "anna@example.com",
                     paymentInfo={"payments": [{"typeId": "payment", "id": "pay-de"}]})
    created = ct.message("order", "ord-de", "OrderCreated", version=1, order=order)
    via_uk = await svc.stub.TrackEvent(track(ct.raw(created), "uk"))
    via_de = await svc.stub.TrackEvent(track(ct.pubsub_push(created), "de"))  # the de adapter's copy
    assert (outcomes(via_uk), routed(via_uk)) == (["APPLIED"], [["de"]])
    assert outcomes(via_de) == ["DUPLICATE"] and not via_de.outbox_message_ids
    # a later message of the order, whose order is fetched, is routed by the fetched order
    fake_ct.add("orders", {**order, "version": 2, "shipmentState": "Shipped"})
    shipped = await svc.stub.TrackEvent(track(ct.raw(ct.message(
        "order", "ord-de", "OrderShipmentStateChanged", version=2, shipmentState="Shipped")), "uk"))
    assert (outcomes(shipped), routed(shipped)) == (["APPLIED"], [["de"]])
    # so is a refund on its payment (the order found by its payment)
    fake_ct.add("payments", {"id": "pay-de", "version": 2, "transactions": [
        {"id": "t1", "type": "Charge", "state": "Success", "amount": ct.money(2500, "EUR")},
        {"id": "t2", "type": "Refund", "state": "Success", "amount": ct.money(500, "EUR")}]})
    refund = await svc.stub.TrackEvent(track(ct.raw(ct.message("payment", "pay-de", "PaymentTransactionAdded",
                                                               version=2, transaction={"id": "t2"})), "uk"))
    assert (outcomes(refund), routed(refund)) == (["APPLIED"], [["de"]])
    # and the uk brand's order that the de adapter delivers goes to uk
    uk_order = ct.order("ord-uk", number="UK-1", email="anna@example.com", store="uk")
    uk = await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-uk", "OrderCreated", version=1,
                                                           order=uk_order)), "de"))
    assert (outcomes(uk), routed(uk)) == (["APPLIED"], [["uk"]])
    await wait_for(lambda: all_settled(svc), what="deliveries")

    de_records = sandbox_de.insight_records("Orders", contact_email="anna@example.com")
    assert set(de_records) == {"DE-1"}
    assert (de_records["DE-1"]["storeKey"], de_records["DE-1"]["currency"]) == ("de", "EUR")
    assert (de_records["DE-1"]["shipmentStatus"], de_records["DE-1"]["refundTotal"]) == ("Shipped", 5.0)
    de_fields = sandbox_de.get_contact(email="anna@example.com")["dataFields"]
    assert (de_fields["NUMBER_OF_ORDERS"], de_fields["LAST_ORDER_STORE"], de_fields["TOTAL_SPEND"]) == (1, "de", 25.0)
    assert set(sandbox.insight_records("Orders", contact_email="anna@example.com")) == {"UK-1"}
    uk_fields = sandbox.get_contact(email="anna@example.com")["dataFields"]
    assert (uk_fields["NUMBER_OF_ORDERS"], uk_fields["LAST_ORDER_STORE"]) == (1, "uk")
    kept = svc.rows("SELECT store_key FROM processed_event WHERE resource_id IN ('ord-de', 'pay-de')")
    assert [r["store_key"] for r in kept] == ["de", "de", "de"]  # the dedupe records name the store applied to


async def test_an_order_of_a_store_that_is_not_configured_for_the_project_is_ignored(svc, sandbox, sandbox_de):
    unknown = ct.order("ord-it", number="IT-1", email="ivo@example.com", store="it")
    other_project = ct.order("ord-fr", number="FR-1", email="ivo@example.com", store="fr")
    no_store = ct.order("ord-none", number="NONE-1", email="ivo@example.com", store="uk")
    del no_store["store"]
    resp = await svc.stub.TrackEvent(track(ct.raw([
        ct.message("order", "ord-it", "OrderCreated", version=1, order=unknown),
        ct.message("order", "ord-fr", "OrderCreated", version=1, order=other_project),
        ct.message("order", "ord-none", "OrderCreated", version=1, order=no_store)]), "de"))
    assert outcomes(resp) == ["IGNORED", "IGNORED", "APPLIED"]
    assert resp.notifications[0].reason == ("order of commercetools store 'it', which is not a configured store of "
                                            f"commercetools project '{ct.PROJECT}'")
    assert "'fr'" in resp.notifications[1].reason
    assert routed(resp) == [[], [], ["de"]]  # an order without a store: the caller's store
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert set(sandbox_de.insight_records("Orders", contact_email="ivo@example.com")) == {"NONE-1"}
    assert sandbox.get_contact(email="ivo@example.com") is None
    assert [r["resource_id"] for r in svc.rows("SELECT resource_id FROM processed_event")] == ["ord-none"]


async def test_a_customer_goes_to_every_configured_store_it_lists_once(svc, sandbox, sandbox_de):
    def created(cid: str, email: str, stores: list[str]) -> dict:
        return ct.message("customer", cid, "CustomerCreated", version=1,
                          customer=ct.customer(cid, email, first=cid, stores=[store(k) for k in stores]))

    de_only = created("cust-de", "dora@example.com", ["de"])
    both = created("cust-both", "bea@example.com", ["uk", "de", "it"])
    global_customer = created("cust-all", "gil@example.com", [])
    foreign = created("cust-fr", "fay@example.com", ["fr", "it"])
    first = await svc.stub.TrackEvent(track(ct.raw([de_only, both, global_customer, foreign]), "de"))
    assert outcomes(first) == ["APPLIED", "APPLIED", "APPLIED", "IGNORED"]
    # the caller's store first, then the others in key order; a global customer: the caller's store
    assert routed(first) == [["de"], ["de", "uk"], ["de"], []]
    assert first.notifications[3].reason == ("customer of commercetools stores 'fr', 'it', none of which is a "
                                             f"configured store of commercetools project '{ct.PROJECT}'")
    # the uk adapter delivers the same messages: nothing is applied twice
    again = await svc.stub.TrackEvent(track(ct.sns_notification(de_only), "uk"))
    again_both = await svc.stub.TrackEvent(track(ct.raw(both), "uk"))
    assert outcomes(again) == outcomes(again_both) == ["DUPLICATE"]
    await wait_for(lambda: all_settled(svc), what="deliveries")

    assert sandbox.get_contact(email="dora@example.com") is None
    assert sandbox_de.get_contact(email="dora@example.com")["dataFields"]["FIRSTNAME"] == "cust-de"
    assert upserts(sandbox, "bea@example.com") == upserts(sandbox_de, "bea@example.com") == 1
    assert sandbox.get_contact(email="bea@example.com")["dataFields"]["CUSTOMER_ID"] == "cust-both"
    assert sandbox.get_contact(email="gil@example.com") is None and sandbox_de.get_contact(email="gil@example.com")
    assert not any(sb.get_contact(email="fay@example.com") for sb in (sandbox, sandbox_de))
    stored = {r["resource_id"]: r["store_key"] for r in svc.rows("SELECT resource_id, store_key FROM processed_event")}
    assert stored == {"cust-de": "de", "cust-both": "de", "cust-all": "de"}


async def test_a_cart_notification_goes_to_the_store_of_the_fetched_cart(svc, sandbox, sandbox_de, fake_ct):
    fake_ct.add("carts", {"id": "cart-de", "version": 3, "customerEmail": "carl@example.com", "store": store("de"),
                          "cartState": "Active", "locale": "de-DE",
                          "lineItems": [ct.line_item("p-hut", "HUT-1", "Hut", 1, 2500, "EUR")],
                          "totalPrice": ct.money(2500, "EUR")})
    notification = ct.change("ResourceCreated", "cart", "cart-de", version=3)
    first = await svc.stub.TrackEvent(track(ct.raw(notification), "uk"))
    again = await svc.stub.TrackEvent(track(ct.raw(notification), "de"))
    assert (outcomes(first), routed(first)) == (["APPLIED"], [["de"]])
    assert outcomes(again) == ["DUPLICATE"]
    assert [(r["store_key"], r["version"]) for r in svc.rows("SELECT store_key, version FROM cart")] == [("de", 3)]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert set(sandbox_de.insight_records("CartInsight", contact_email="carl@example.com")) == {"cart-de"}
    assert sandbox.get_contact(email="carl@example.com") is None


async def test_queued_deliveries_are_routed_when_the_inbox_applies_them(svc, sandbox, sandbox_de):
    order = ct.message("order", "ord-q", "OrderCreated", version=1,
                       order=de_order("ord-q", "DE-Q", "quinn@example.com"))
    customer = ct.message("customer", "cust-q", "CustomerCreated", version=1,
                          customer=ct.customer("cust-q", "quinn@example.com", first="Quinn", stores=[store("de")]))
    queued = pb.PROCESSING_QUEUED
    first = await svc.stub.TrackEvent(track(ct.raw([customer, order]), "uk", queued))
    single = await svc.stub.TrackEvent(track(ct.raw(order), "de", queued))
    assert first.queued and single.queued  # a one-notification delivery: its message id is its inbox key
    again = await svc.stub.TrackEvent(track(ct.pubsub_push(order), "uk", queued))
    assert again.duplicate and not again.queued

    await wait_for(inbox_done(svc, 2), what="the inbox")
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert sorted(r["outcome"] for r in svc.rows("SELECT outcome FROM event_inbox")) == ["applied,applied", "duplicate"]
    contact = sandbox_de.get_contact(email="quinn@example.com")
    assert contact["dataFields"]["FIRSTNAME"] == "Quinn" and contact["dataFields"]["LAST_ORDER_STORE"] == "de"
    assert set(sandbox_de.insight_records("Orders", contact_email="quinn@example.com")) == {"DE-Q"}
    assert sandbox.get_contact(email="quinn@example.com") is None


UK_TOKEN, DE_TOKEN = "uk-adapter-token-1a2b3c4d5e6f7a8b", "de-adapter-token-9f8e7d6c5b4a3928"
ALL_TOKEN = "every-store-token-0c1d2e3f4a5b6c7d"


async def test_a_store_restricted_token_applies_resources_only_under_its_stores(
        service_factory, database_url, sandbox, sandbox_de, fake_ct, tmp_path):
    """A token limited to the uk store cannot write into de's account by sending a de order: the notification is
    ignored without a dedupe record, so de's own adapter (its token limited to de) still applies it."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "uk-adapter"\ntoken = "{UK_TOKEN}"\nstores = ["uk"]\n\n'
                      f'[[tokens]]\nname = "de-adapter"\ntoken = "{DE_TOKEN}"\nstores = ["de"]\n')
    svc = await service_factory(two_brands(database_url, sandbox, sandbox_de, fake_ct).replace(tokens_file=str(tokens)))
    uk, de = ((("authorization", f"Bearer {token}"),) for token in (UK_TOKEN, DE_TOKEN))
    order = ct.message("order", "ord-t", "OrderCreated", version=1, order=de_order("ord-t", "DE-T", "tess@example.com"))
    refused = await svc.stub.TrackEvent(track(ct.raw(order), "uk"), metadata=uk)
    assert (outcomes(refused), routed(refused)) == (["IGNORED"], [[]])
    assert refused.notifications[0].reason == "order of store 'de', which the token of this call may not use"
    applied = await svc.stub.TrackEvent(track(ct.pubsub_push(order), "de"), metadata=de)
    assert (outcomes(applied), routed(applied)) == (["APPLIED"], [["de"]])
    # queued: the uk adapter's copy does not make the de adapter's a duplicate
    customer = ct.message("customer", "cust-t", "CustomerCreated", version=1,
                          customer=ct.customer("cust-t", "tess@example.com", first="Tess", stores=[store("de")]))
    queued = [await svc.stub.TrackEvent(track(wrap(customer), key, pb.PROCESSING_QUEUED), metadata=token)
              for wrap, key, token in ((ct.raw, "uk", uk), (ct.sns_notification, "de", de))]
    assert [(q.queued, q.duplicate) for q in queued] == [(True, False), (True, False)]
    await wait_for(inbox_done(svc, 2), what="the inbox")
    assert [r["outcome"] for r in svc.rows("SELECT outcome FROM event_inbox ORDER BY id")] == ["ignored", "applied"]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    contact = sandbox_de.get_contact(email="tess@example.com")
    assert contact["dataFields"]["FIRSTNAME"] == "Tess" and contact["dataFields"]["LAST_ORDER_STORE"] == "de"
    assert sandbox.get_contact(email="tess@example.com") is None
    stored = {r["resource_id"]: r["store_key"] for r in svc.rows("SELECT resource_id, store_key FROM processed_event")}
    assert stored == {"ord-t": "de", "cust-t": "de"}


async def test_a_customer_of_two_brands_deleted_leaves_both(service_factory, database_url, sandbox, sandbox_de,
                                                             fake_ct):
    # the deletion names no store: every brand's account that knows the customer applies its own policy
    settings = two_brands(database_url, sandbox, sandbox_de, fake_ct)
    settings = replace(settings, stores={**settings.stores,
                                         "de": replace(settings.stores["de"], on_customer_deleted="delete_contact")})
    svc = await service_factory(settings)
    created = await svc.stub.TrackEvent(track(ct.raw(ct.message(
        "customer", "cust-2b", "CustomerCreated", version=1,
        customer=ct.customer("cust-2b", "both@example.com", stores=[store("uk"), store("de")]))), "uk"))
    assert routed(created) == [["uk", "de"]]
    await wait_for(lambda: all_settled(svc), what="the customer in both accounts")
    assert sandbox.get_contact(email="both@example.com") and sandbox_de.get_contact(email="both@example.com")

    deleted = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-2b", "CustomerDeleted",
                                                                version=2)), "uk"))
    assert outcomes(deleted) == ["APPLIED"] and len(deleted.outbox_message_ids) == 2
    assert "remove_from_lists in store 'uk'" in deleted.notifications[0].reason
    assert "delete_contact in store 'de'" in deleted.notifications[0].reason
    await wait_for(lambda: all_settled(svc), what="the deletion in both accounts")
    assert sandbox_de.get_contact(email="both@example.com") is None  # de deletes its contact
    uk = sandbox.get_contact(email="both@example.com")  # uk takes it out of its lists
    assert uk is not None and not uk["lists"]
    assert svc.rows("SELECT id FROM contact_identifier WHERE kind = 'customer_id'") == []


async def test_an_email_less_order_of_a_customer_known_in_another_brand_is_applied(svc, sandbox, sandbox_de, fake_ct):
    # a global customer is applied under the store that delivered it (uk); its order names de and carries no email.
    # Fetching the customer for de gives nothing new (its version is applied already): the order takes the address
    # the customer has in uk's account, instead of being dropped as of an unknown customer
    cust = ct.customer("cust-g", "gwen@example.com", first="Gwen")
    fake_ct.add("customers", cust)
    created = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-g", "CustomerCreated", version=1,
                                                                customer=cust)), "uk"))
    assert routed(created) == [["uk"]]
    order = de_order("ord-g", "DE-G", None, customer_id="cust-g")
    placed = await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-g", "OrderCreated", version=1,
                                                               order=order)), "uk"))
    assert outcomes(placed) == ["APPLIED"] and routed(placed) == [["de"]]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert set(sandbox_de.insight_records("Orders", contact_email="gwen@example.com")) == {"DE-G"}


async def test_a_deletion_through_store_restricted_adapters_reaches_each_brand(
        service_factory, database_url, sandbox, sandbox_de, fake_ct, tmp_path):
    # one adapter per brand, each token limited to its store: the uk adapter's copy of an erasure deletes in uk
    # only, and must not make the de adapter's copy a duplicate
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "uk-adapter"\ntoken = "{UK_TOKEN}"\nstores = ["uk"]\n\n'
                      f'[[tokens]]\nname = "de-adapter"\ntoken = "{DE_TOKEN}"\nstores = ["de"]\n\n'
                      f'[[tokens]]\nname = "backfill"\ntoken = "{ALL_TOKEN}"\n')
    svc = await service_factory(two_brands(database_url, sandbox, sandbox_de, fake_ct).replace(tokens_file=str(tokens)))
    uk, de, every = ((("authorization", f"Bearer {token}"),) for token in (UK_TOKEN, DE_TOKEN, ALL_TOKEN))
    customer = ct.message("customer", "cust-r", "CustomerCreated", version=1,
                          customer=ct.customer("cust-r", "rita@example.com", stores=[store("uk"), store("de")]))
    created = await svc.stub.TrackEvent(track(ct.raw(customer), "uk"), metadata=every)
    assert routed(created) == [["uk", "de"]]
    await wait_for(lambda: all_settled(svc), what="the customer in both accounts")
    assert sandbox.get_contact(email="rita@example.com") and sandbox_de.get_contact(email="rita@example.com")

    gone = {**ct.change("ResourceDeleted", "customer", "cust-r", version=3), "dataErasure": True}
    via_uk = await svc.stub.TrackEvent(track(ct.raw(gone), "uk"), metadata=uk)
    via_de = await svc.stub.TrackEvent(track(ct.sns_notification(gone), "de"), metadata=de)
    again = await svc.stub.TrackEvent(track(ct.raw(gone), "uk"), metadata=uk)  # a redelivery is still one
    assert (outcomes(via_uk), outcomes(via_de), outcomes(again)) == (["APPLIED"], ["APPLIED"], ["DUPLICATE"])
    await wait_for(lambda: all_settled(svc), what="the erasure in both accounts")
    assert sandbox.get_contact(email="rita@example.com") is None
    assert sandbox_de.get_contact(email="rita@example.com") is None
