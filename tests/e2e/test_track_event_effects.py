"""TrackEvent effects on real data (issue 14, items 3-7): customer deletion in Dotdigital, absent attributes
left unchanged, orders of customers not seen yet, predicate variables in commercetools queries, and
far-future timestamps refused. Real gRPC, the fake commercetools API over HTTP, the Dotdigital sandbox over
HTTP; every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest

from support import ct_payloads as ct
from support import all_settled, field_violations, make_settings, outbox_rows, wait_for
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.testing.commercetools_fake import FakeCommercetools


@pytest.fixture
def fake_ct():
    with FakeCommercetools(project_key=ct.PROJECT) as fake:
        yield fake


def track(delivery: bytes, store: str = "uk") -> pb.TrackEventRequest:
    return pb.TrackEventRequest(store_key=store, commercetools_delivery=delivery)


def outcomes(resp: pb.TrackEventResponse) -> list[str]:
    return [pb.EventOutcome.Name(n.outcome).removeprefix("EVENT_OUTCOME_") for n in resp.notifications]


# -- item 3: on_customer_deleted = "delete_contact" ------------------------------------------------------------
async def test_customer_deleted_with_delete_contact_deletes_the_dotdigital_contact(service_factory, database_url,
                                                                                   sandbox, fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct,
                                              stores_extra={"uk": {"on_customer_deleted": "delete_contact"}}))
    created = ct.message("customer", "cust-del", "CustomerCreated", version=1,
                         customer=ct.customer("cust-del", "gone@example.com", first="Gone"))
    await svc.stub.TrackEvent(track(ct.raw(created)))
    await wait_for(lambda: all_settled(svc), what="creation")
    assert sandbox.get_contact(email="gone@example.com") is not None
    deleted = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-del", "CustomerDeleted", version=2,
                                                                email="gone@example.com"))))
    assert outcomes(deleted) == ["APPLIED"] and len(deleted.outbox_message_ids) == 1
    await wait_for(lambda: all_settled(svc), what="deletion")

    assert sandbox.get_contact(email="gone@example.com") is None
    [call] = [r for r in sandbox.requests if r.method == "DELETE" and r.path.startswith("/contacts/v3/")]
    assert call.path.startswith("/contacts/v3/contactId/") and call.status == 200
    [row] = [r for r in outbox_rows(svc) if r["id"] == deleted.outbox_message_ids[0]]
    assert row["status"] == "delivered" and row["kind"] == "contact.delete"
    contact_id = deleted.notifications[0].contact_id
    assert svc.rows("SELECT field FROM field_state WHERE contact_id = :c", c=contact_id) == []
    assert svc.rows("SELECT id FROM contact_identifier WHERE kind = 'customer_id'") == []

    # The same address signs up again: a new Dotdigital contact with all of its data, not a 404 loop.
    again = ct.message("customer", "cust-new", "CustomerCreated", version=1,
                       customer=ct.customer("cust-new", "gone@example.com", first="Back"))
    await svc.stub.TrackEvent(track(ct.raw(again)))
    await wait_for(lambda: all_settled(svc), what="re-creation")
    fields = sandbox.get_contact(email="gone@example.com")["dataFields"]
    assert fields["FIRSTNAME"] == "Back" and fields["CUSTOMER_ID"] == "cust-new" and fields["LASTNAME"] == "Doe"
    assert {r["status"] for r in outbox_rows(svc)} == {"delivered"}


@pytest.mark.parametrize("erasure", [True, False])
async def test_a_deletion_with_data_erasure_deletes_the_dotdigital_contact_whatever_the_store_does(
        service_factory, database_url, sandbox, fake_ct, erasure):
    # the store keeps contacts of deleted customers; a deletion with dataErasure=true (the shop erased the
    # customer's personal data) deletes Dotdigital's copy all the same
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct,
                                              stores_extra={"uk": {"on_customer_deleted": "keep"}}))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-er", "CustomerCreated", version=1,
                                                      customer=ct.customer("cust-er", "erase@example.com")))))
    await wait_for(lambda: all_settled(svc), what="creation")
    gone = {**ct.change("ResourceDeleted", "customer", "cust-er", version=2), "dataErasure": erasure}
    deleted = await svc.stub.TrackEvent(track(ct.raw(gone)))
    assert outcomes(deleted) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deletion")
    if erasure:
        assert "data erasure" in deleted.notifications[0].reason
        assert sandbox.get_contact(email="erase@example.com") is None
        assert svc.rows("SELECT field FROM field_state WHERE contact_id = :c",
                        c=deleted.notifications[0].contact_id) == []
    else:
        assert sandbox.get_contact(email="erase@example.com") is not None and not deleted.outbox_message_ids


@pytest.mark.parametrize("erasure, policy", [(True, "keep"), (False, "keep"), (False, "delete_contact")],
                         ids=["erased", "deleted-kept", "deleted-with-its-contact"])
async def test_a_deleted_customers_later_order_messages_do_not_bring_it_back(service_factory, database_url, sandbox,
                                                                             fake_ct, erasure, policy):
    """After an erasure, or a deletion that deleted the contact too, a later message of the customer's order (a
    shipment update) is not sent: the contact is not created again. After a deletion that kept the contact the
    order still counts on that contact (its address now, not the one the order was placed with), but the deleted
    customer id is not linked to a contact again."""
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct,
                                              stores_extra={"uk": {"on_customer_deleted": policy}}))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-o", "CustomerCreated", version=1,
                                                      customer=ct.customer("cust-o", "old@example.com")))))
    # the order is placed with the customer's first address; the customer then moves to another one
    order = fake_ct.add("orders", ct.order("ord-o", number="O-1", email="old@example.com", customer_id="cust-o"))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-o", "OrderCreated", version=1, order=order))))
    fake_ct.add("customers", ct.customer("cust-o", "er@example.com", version=2))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-o", "CustomerEmailChanged", version=2,
                                                      email="er@example.com"))))
    await wait_for(lambda: all_settled(svc), what="customer and order")
    gone = {**ct.change("ResourceDeleted", "customer", "cust-o", version=3), "dataErasure": erasure}
    assert outcomes(await svc.stub.TrackEvent(track(ct.raw(gone)))) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deletion")
    fake_ct.add("orders", {**order, "version": 2, "shipmentState": "Shipped"})
    shipped = await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-o", "OrderShipmentStateChanged",
                                                                version=2, shipmentState="Shipped"))))
    await wait_for(lambda: all_settled(svc), what="the order's update")
    assert svc.rows("SELECT id FROM contact_identifier WHERE kind = 'customer_id'") == []
    assert sandbox.get_contact(email="old@example.com") is None  # no contact for the address it left
    if erasure or policy == "delete_contact":
        assert outcomes(shipped) == ["IGNORED"]
        assert ("dataErasure" if erasure else "deleted with it") in shipped.notifications[0].reason
        assert not shipped.outbox_message_ids and sandbox.get_contact(email="er@example.com") is None
    else:
        assert outcomes(shipped) == ["APPLIED"]
        assert len(svc.rows("SELECT id FROM contact")) == 1
        assert sandbox.get_contact(email="er@example.com")["dataFields"]["NUMBER_OF_ORDERS"] == 1


async def test_an_erasure_after_the_same_deletions_message_still_deletes_the_contact(
        service_factory, database_url, sandbox, fake_ct):
    # a subscription with messages and changes sends a deletion twice: the CustomerDeleted message (the store
    # keeps the contact, and the customer id stops resolving to it) and then the ResourceDeleted with dataErasure
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct,
                                              stores_extra={"uk": {"on_customer_deleted": "keep"}}))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-e2", "CustomerCreated", version=1,
                                                      customer=ct.customer("cust-e2", "erase2@example.com")))))
    message = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-e2", "CustomerDeleted",
                                                                version=2))))
    assert outcomes(message) == ["APPLIED"] and not message.outbox_message_ids
    erased = await svc.stub.TrackEvent(track(ct.raw(
        {**ct.change("ResourceDeleted", "customer", "cust-e2", version=2), "dataErasure": True})))
    assert outcomes(erased) == ["APPLIED"] and len(erased.outbox_message_ids) == 1
    await wait_for(lambda: all_settled(svc), what="erasure")
    assert sandbox.get_contact(email="erase2@example.com") is None


async def test_delete_contact_already_gone_in_dotdigital_is_delivered(service_factory, database_url, sandbox,
                                                                       fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct,
                                              stores_extra={"uk": {"on_customer_deleted": "delete_contact"}}))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-g2", "CustomerCreated", version=1,
                                                      customer=ct.customer("cust-g2", "g2@example.com")))))
    await wait_for(lambda: all_settled(svc), what="creation")
    assert sandbox.delete_contact(email="g2@example.com")  # deleted in Dotdigital by a user meanwhile
    r = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-g2", "CustomerDeleted", version=2))))
    await wait_for(lambda: all_settled(svc), what="deletion")
    [row] = [x for x in outbox_rows(svc) if x["id"] == r.outbox_message_ids[0]]
    assert row["status"] == "delivered" and row["attempts"] == 1


async def test_customer_deleted_before_its_created_message_keeps_it_deleted(service_factory, database_url, sandbox,
                                                                           fake_ct):
    """Subscription delivery is unordered: a CustomerDeleted (v2) overtaking the CustomerCreated (v1) leaves a
    tombstone (resource_state at the deleted version), so the older create is stale and the customer does not
    come back (no contact, no list membership); a newer customer id is a new customer and applies as ever."""
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct, stores_extra={
        "uk": {"on_customer_deleted": "delete_contact", "customers_list": "customers"}}))
    deleted = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-early", "CustomerDeleted",
                                                                version=2, email="early@example.com"))))
    assert outcomes(deleted) == ["IGNORED"] and not deleted.outbox_message_ids
    created = await svc.stub.TrackEvent(track(ct.raw(ct.message(
        "customer", "cust-early", "CustomerCreated", version=1,
        customer=ct.customer("cust-early", "early@example.com", first="Early")))))
    assert outcomes(created) == ["STALE"] and not created.outbox_message_ids
    # a later change notification of an older version is stale too, without a fetch
    late = await svc.stub.TrackEvent(track(ct.raw(ct.change("ResourceUpdated", "customer", "cust-early", version=2))))
    assert outcomes(late) == ["STALE"]
    assert not [r for r in fake_ct.requests if "/customers/cust-early" in r.path]
    assert svc.rows("SELECT version FROM resource_state WHERE resource_id = 'cust-early'") == [{"version": 2}]

    # a customer registering again with that address is a new customer id: applied as ever
    again = await svc.stub.TrackEvent(track(ct.raw(ct.message(
        "customer", "cust-again", "CustomerCreated", version=1,
        customer=ct.customer("cust-again", "early@example.com", first="Again")))))
    assert outcomes(again) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    [contact] = sandbox.contacts
    assert contact["dataFields"]["CUSTOMER_ID"] == "cust-again" and contact["dataFields"]["FIRSTNAME"] == "Again"
    assert [lst["id"] for lst in contact["lists"]] == [1]
    assert svc.rows("SELECT count(*) AS n FROM contact") == [{"n": 1}]


# -- item 4: absent attributes are unchanged; store defaults only where the contact has no value -------------
def _published_customer() -> dict:
    import json

    from support import SHARED_DIR

    path = SHARED_DIR / "fixtures" / "commercetools" / "customer.example.json"
    if not path.exists():
        pytest.skip(f"shared commercetools fixtures not available ({path})")
    return json.loads(path.read_text())


def _patched_data_fields(sandbox) -> list[dict]:
    return [(r.json or {}).get("dataFields", {}) for r in sandbox.requests if r.method == "PATCH"]


async def test_customer_messages_without_attributes_leave_them_unchanged(service_factory, database_url, sandbox,
                                                                        fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    customer = _published_customer()  # commercetools' own example: no locale, title, company, addresses ...
    req = pb.SyncContactRequest(store_key="uk", identity=pb.ContactIdentity(customer_id=customer["id"],
                                                                             email=customer["email"]))
    req.profile.locale, req.profile.company_name, req.profile.currency = "fr-FR", "Acme", "EUR"
    req.profile.middle_name = "Q"
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="SyncContact")
    created = ct.message("customer", customer["id"], "CustomerCreated", version=customer["version"],
                         customer=customer)
    assert outcomes(await svc.stub.TrackEvent(track(ct.raw(created)))) == ["APPLIED"]
    # a later customer message (fetched customer, still without a locale)
    fake_ct.add("customers", {**customer, "version": 2, "firstName": "Johnny"})
    renamed = ct.message("customer", customer["id"], "CustomerFirstNameSet", version=2, firstName="Johnny")
    assert outcomes(await svc.stub.TrackEvent(track(ct.raw(renamed)))) == ["APPLIED"]
    # and an order of the customer (the order path maps aggregates only)
    order = ct.order("ord-l1", number="L1", email=customer["email"], customer_id=customer["id"], currency="GBP")
    assert outcomes(await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-l1", "OrderCreated", version=1,
                                                                      order=order))))) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deliveries")

    fields = sandbox.get_contact(email=customer["email"])["dataFields"]
    assert fields["FIRSTNAME"] == "Johnny" and fields["LASTNAME"] == "Doe"
    assert (fields["LOCALE"], fields["COMPANY"], fields["CURRENCY"], fields["MIDDLENAME"]) == ("fr-FR", "Acme", "EUR", "Q")
    assert fields["NUMBER_OF_ORDERS"] == 1
    sent = _patched_data_fields(sandbox)
    # no profile field was cleared (the order aggregates are recomputed as a whole: None is their value)
    aggregates = {name for attr, name in svc.app.settings.stores["uk"].data_fields.items() if attr.startswith("orders.")}
    assert not [body for body in sent if any(v is None for k, v in body.items() if k not in aggregates)]
    assert not [body for body in sent[1:] if "LOCALE" in body or "CURRENCY" in body]


async def test_store_defaults_fill_only_a_new_contacts_missing_fields(service_factory, database_url, sandbox,
                                                                     fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    no_locale = ct.customer("cust-nl", "nl@example.com")  # the project's builder: no locale either
    with_locale = ct.customer("cust-wl", "wl@example.com", locale="de-DE")
    for c in (no_locale, with_locale):
        await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", c["id"], "CustomerCreated", version=1,
                                                          customer=c))))
    await wait_for(lambda: all_settled(svc), what="creation")
    # documented in docs/configuration.md: the store's locale / currency when the profile has none
    assert sandbox.get_contact(email="nl@example.com")["dataFields"]["LOCALE"] == "en-GB"
    assert sandbox.get_contact(email="nl@example.com")["dataFields"]["CURRENCY"] == "GBP"
    assert sandbox.get_contact(email="wl@example.com")["dataFields"]["LOCALE"] == "de-DE"
    # SyncContact may still clear explicitly (an empty optional string), and the default does not come back
    req = pb.SyncContactRequest(store_key="uk", identity=pb.ContactIdentity(customer_id="cust-nl"))
    req.profile.locale = ""
    await svc.stub.SyncContact(req)
    fake_ct.add("customers", {**no_locale, "version": 2, "firstName": "Nils"})
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-nl", "CustomerFirstNameSet", version=2,
                                                      firstName="Nils"))))
    await wait_for(lambda: all_settled(svc), what="updates")
    fields = sandbox.get_contact(email="nl@example.com")["dataFields"]
    assert fields["LOCALE"] is None and fields["FIRSTNAME"] == "Nils"


async def test_attributes_removed_from_a_customer_are_cleared_where_it_set_them(service_factory, database_url,
                                                                                 sandbox, fake_ct):
    """A customer is a full snapshot: a companyName, dateOfBirth, customerGroup or address removed in
    commercetools clears the Dotdigital field this customer set; a value another source set (SyncContact) and
    LOCALE stay."""
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    address = {"id": "a1", "city": "Leeds", "country": "GB", "postalCode": "LS1 1AA"}
    full = ct.customer("cust-rm", "rm@example.com", companyName="Acme", dateOfBirth="1990-05-01",
                       customerGroup={"typeId": "customer-group", "id": "g-1", "key": "vip"},
                       addresses=[address], defaultBillingAddressId="a1")
    r = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-rm", "CustomerCreated", version=1,
                                                          customer=full))))
    assert outcomes(r) == ["APPLIED"]
    # SyncContact (another source) sets LOCALE and the title
    req = pb.SyncContactRequest(store_key="uk", identity=pb.ContactIdentity(customer_id="cust-rm"))
    req.profile.locale, req.profile.title = "fr-FR", "Dr"
    await svc.stub.SyncContact(req)
    await wait_for(lambda: all_settled(svc), what="creation")
    fields = sandbox.get_contact(email="rm@example.com")["dataFields"]
    assert (fields["COMPANY"], fields["CUSTOMER_GROUP"], fields["BILLING_CITY"], fields["LOCALE"], fields["TITLE"]) == (
        "Acme", "vip", "Leeds", "fr-FR", "Dr")
    assert fields["DOB"]

    # the customer loses its company, birth date, group and address (and never had a locale or title)
    bare = {key: value for key, value in full.items()
            if key not in ("companyName", "dateOfBirth", "customerGroup", "defaultBillingAddressId")}
    fake_ct.add("customers", {**bare, "addresses": [], "version": 2})
    r = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-rm", "CustomerCompanyNameSet",
                                                          version=2))))
    assert outcomes(r) == ["APPLIED"] and r.outbox_message_ids
    await wait_for(lambda: all_settled(svc), what="update")
    fields = sandbox.get_contact(email="rm@example.com")["dataFields"]
    assert (fields["COMPANY"], fields["DOB"], fields["CUSTOMER_GROUP"], fields["BILLING_CITY"]) == (
        None, None, None, None)
    assert (fields["LOCALE"], fields["TITLE"], fields["FIRSTNAME"]) == ("fr-FR", "Dr", "Jane")
    [cleared] = _patched_data_fields(sandbox)[-1:]
    assert "LOCALE" not in cleared and "TITLE" not in cleared and "STORE" not in cleared

    # a value SyncContact set after the customer's is not the customer's to clear either
    fake_ct.add("customers", {**full, "version": 3})
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-rm", "CustomerCompanyNameSet", version=3))))
    await wait_for(lambda: all_settled(svc), what="company back")
    req = pb.SyncContactRequest(store_key="uk", identity=pb.ContactIdentity(customer_id="cust-rm"))
    req.profile.company_name = "Elsewhere Ltd"
    await svc.stub.SyncContact(req)
    fake_ct.add("customers", {**bare, "addresses": [], "version": 4})
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-rm", "CustomerCompanyNameSet", version=4))))
    await wait_for(lambda: all_settled(svc), what="second removal")
    fields = sandbox.get_contact(email="rm@example.com")["dataFields"]
    assert fields["COMPANY"] == "Elsewhere Ltd" and fields["DOB"] is None and fields["CUSTOMER_GROUP"] is None


# -- item 5: an order of a customer not seen yet ---------------------------------------------------------------
def _order_without_email(oid: str, customer_id: str) -> dict:
    return ct.order(oid, number=oid.upper(), email=None, customer_id=customer_id)


@pytest.mark.parametrize("processing", [pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED])
async def test_a_delivery_creating_the_customer_before_its_order_needs_no_fetch(service, sandbox, processing):
    # the store has no commercetools client; the order carries no email, but the same delivery created its
    # customer first: the order must not wait (for an hour) for a customer that is applied right before it
    customer = ct.message("customer", "cust-b1", "CustomerCreated", version=1, project="shop-eu",
                          customer=ct.customer("cust-b1", "batch@example.com"))
    order = ct.message("order", "ord-b1", "OrderCreated", version=1, project="shop-eu",
                       order=_order_without_email("ord-b1", "cust-b1"))
    r = await service.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", commercetools_delivery=ct.raw([customer, order]),
                                                           processing=processing))
    if processing == pb.PROCESSING_APPLIED:
        assert outcomes(r) == ["APPLIED", "APPLIED"]
    await wait_for(lambda: len(outbox_rows(service)) >= 3 and all_settled(service), what="delivery")
    assert "ORD-B1" in sandbox.insight_records("Orders", contact_email="batch@example.com")


async def test_order_of_an_unknown_customer_fetches_the_customer(service_factory, database_url, sandbox, fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    fake_ct.add("customers", ct.customer("cust-u1", "unseen@example.com", version=4, first="Una"))
    order = _order_without_email("ord-u1", "cust-u1")
    r = await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-u1", "OrderCreated", version=1, order=order))))
    assert outcomes(r) == ["APPLIED"] and r.notifications[0].contact_id
    await wait_for(lambda: all_settled(svc), what="deliveries")
    fields = sandbox.get_contact(email="unseen@example.com")["dataFields"]
    assert fields["FIRSTNAME"] == "Una" and fields["CUSTOMER_ID"] == "cust-u1" and fields["NUMBER_OF_ORDERS"] == 1
    assert "ORD-U1" in sandbox.insight_records("Orders", contact_email="unseen@example.com")
    # the fetched customer version is applied: its older CustomerCreated is stale now
    late = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-u1", "CustomerCreated", version=1,
                                                             customer=ct.customer("cust-u1", "unseen@example.com")))))
    assert outcomes(late) == ["STALE"]


async def test_order_of_an_unknown_customer_is_retried_while_commercetools_fails(service_factory, database_url,
                                                                                sandbox, fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    fake_ct.add("customers", ct.customer("cust-u2", "later@example.com"))
    delivery = ct.raw(ct.message("order", "ord-u2", "OrderCreated", version=1,
                                 order=_order_without_email("ord-u2", "cust-u2")))
    fake_ct.inject_fault(status=503, times=100, path_contains="/customers/cust-u2")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.stub.TrackEvent(track(delivery))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert svc.rows("SELECT dedupe_key FROM processed_event") == []  # not recorded as processed
    fake_ct.clear_faults()
    again = await svc.stub.TrackEvent(track(delivery))  # the transport's redelivery
    assert outcomes(again) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert "ORD-U2" in sandbox.insight_records("Orders", contact_email="later@example.com")


async def test_order_of_an_unknown_customer_without_a_client_is_kept_as_rejected(service, sandbox):
    order = _order_without_email("ord-u3", "cust-u3")
    r = await service.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-u3", "OrderCreated", version=1,
                                                              order=order, project="shop-eu"))))
    assert outcomes(r) == ["IGNORED"] and "no commercetools API client" in r.notifications[0].reason
    [rejected] = service.rows("SELECT operation, store_key, record_type, record_id, reason FROM rejected_record")
    assert (rejected["operation"], rejected["store_key"], rejected["record_type"], rejected["record_id"]) == (
        "TrackEvent", "uk", "order", "ord-u3")
    assert "cust-u3" in rejected["reason"] and "no email" in rejected["reason"]
    assert outbox_rows(service) == []


def _iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _no_client_messages(suffix: str, created):
    order = _order_without_email(f"ord-{suffix}", f"cust-{suffix}")
    order_msg = ct.message("order", f"ord-{suffix}", "OrderCreated", version=1, order=order, project="shop-eu",
                           created=_iso(created))
    customer_msg = ct.message("customer", f"cust-{suffix}", "CustomerCreated", version=1, project="shop-eu",
                              created=_iso(created),
                              customer=ct.customer(f"cust-{suffix}", f"{suffix}@example.com", first="Lou"))
    return ct.raw(order_msg), ct.raw(customer_msg)


async def test_order_before_its_customer_without_a_client_is_held_then_applied(service, sandbox):
    """Subscription messages come in any order: an order whose customer is not known yet (no email, no API
    client to fetch it with) is answered UNAVAILABLE, nothing written, while it is recent; the transport's
    redelivery after the CustomerCreated applies it."""
    from ctdd.clock import now

    order, customer = _no_client_messages("h1", now())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.TrackEvent(track(order))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "held for up to 3600 seconds" in info.value.details()
    assert service.rows("SELECT dedupe_key FROM processed_event") == []
    assert service.rows("SELECT id FROM rejected_record") == []
    assert outcomes(await service.stub.TrackEvent(track(customer))) == ["APPLIED"]
    again = await service.stub.TrackEvent(track(order))  # redelivered
    assert outcomes(again) == ["APPLIED"]
    await wait_for(lambda: all_settled(service), what="deliveries")
    assert sandbox.get_contact(email="h1@example.com")["dataFields"]["NUMBER_OF_ORDERS"] == 1
    assert "ORD-H1" in sandbox.insight_records("Orders", contact_email="h1@example.com")


async def test_order_before_its_customer_without_a_client_waits_in_the_inbox(service_factory, database_url,
                                                                            sandbox):
    from ctdd.clock import now
    from ctdd.config import InboxConfig, replace

    settings = make_settings(database_url, sandbox)
    svc = await service_factory(replace(settings, inbox=InboxConfig(
        batch_size=16, poll_interval_seconds=0.05, backoff_base_seconds=0.05, backoff_cap_seconds=0.2,
        lease_seconds=5.0)))
    order, customer = _no_client_messages("h2", now())
    resp = await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", commercetools_delivery=order,
                                                          processing=pb.PROCESSING_QUEUED))
    assert resp.queued
    await wait_for(lambda: svc.rows("SELECT attempts FROM event_inbox WHERE attempts >= 2 AND status = 'pending'"),
                   timeout=20, what="order retried by the inbox")
    assert svc.rows("SELECT id FROM rejected_record") == []
    assert outcomes(await svc.stub.TrackEvent(track(customer))) == ["APPLIED"]
    await wait_for(lambda: svc.rows("SELECT id FROM event_inbox WHERE status = 'done'"), timeout=20,
                   what="order applied once its customer arrived")
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert "ORD-H2" in sandbox.insight_records("Orders", contact_email="h2@example.com")


async def test_order_of_an_unknown_customer_without_a_client_is_rejected_once_the_wait_is_over(service):
    from datetime import timedelta

    from ctdd.clock import now
    from ctdd.ingest.events import UNKNOWN_CUSTOMER_WAIT

    held, _ = _no_client_messages("h3", now() - UNKNOWN_CUSTOMER_WAIT + timedelta(minutes=2))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.TrackEvent(track(held))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    late, _ = _no_client_messages("h4", now() - UNKNOWN_CUSTOMER_WAIT - timedelta(minutes=1))
    r = await service.stub.TrackEvent(track(late))
    assert outcomes(r) == ["IGNORED"] and "waited 3600 seconds" in r.notifications[0].reason
    [rejected] = service.rows("SELECT record_id, reason FROM rejected_record")
    assert rejected["record_id"] == "ord-h4" and "cust-h4" in rejected["reason"]


# -- item 6: predicate input variables -------------------------------------------------------------------------
async def test_crafted_payment_id_cannot_match_an_unrelated_order(service_factory, database_url, sandbox, fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    fake_ct.add("orders", ct.order("ord-victim", number="V1", email="victim@example.com",
                                   paymentInfo={"payments": [{"typeId": "payment", "id": "pay-v"}]}))
    crafted = 'none")) or id = "ord-victim" or paymentInfo(payments(id = "none'
    r = await svc.stub.TrackEvent(track(ct.raw(ct.message("payment", crafted, "PaymentTransactionAdded", version=2,
                                                          transaction={"id": "t1"}))))
    assert outcomes(r) == ["IGNORED"] and r.notifications[0].reason == "no order uses this payment"
    [query] = [q for q in fake_ct.requests if q.method == "GET" and q.path.endswith("/orders")]
    assert query.query["where"] == ["paymentInfo(payments(id = :pid))"] and query.query["var.pid"] == [crafted]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert sandbox.get_contact(email="victim@example.com") is None and outbox_rows(svc) == []
    # the real payment id still finds its order
    r = await svc.stub.TrackEvent(track(ct.raw(ct.message("payment", "pay-v", "PaymentTransactionAdded", version=3,
                                                          transaction={"id": "t2"}))))
    assert outcomes(r) == ["APPLIED"]


async def test_fake_commercetools_binds_input_variables_and_refuses_unbound_ones(fake_ct):
    from ctdd.commercetools.client import CommercetoolsClient
    from ctdd.commercetools.errors import CommercetoolsError

    fake_ct.add("orders", ct.order("ord-a", number="A", email="a@example.com"))
    fake_ct.add("orders", ct.order("ord-b", number="B", email="b@example.com"))
    async with CommercetoolsClient(project_key=fake_ct.project_key, client_id=fake_ct.client_id,
                                   client_secret=fake_ct.client_secret, api_url=fake_ct.base_url,
                                   auth_url=fake_ct.base_url) as client:
        hit = await client.query("orders", where=["id = :oid"], params={"var.oid": "ord-b"})
        crafted = await client.query("orders", where=["id = :oid"], params={"var.oid": 'x" or id = "ord-a'})
        with pytest.raises(CommercetoolsError) as info:
            await client.query("orders", where=["id = :oid"])
    assert [o["id"] for o in hit["results"]] == ["ord-b"] and crafted["results"] == []
    assert info.value.status_code == 400


# -- item 7: far-future staleness timestamps are refused -------------------------------------------------------
FAR_FUTURE = "9999-01-01T00:00:00Z"


def _sync(email: str, first: str, modified_at: str | None = None, customer_id: str = "") -> pb.SyncContactRequest:
    req = pb.SyncContactRequest(store_key="uk", identity=pb.ContactIdentity(email=email, customer_id=customer_id))
    req.profile.first_name = first
    if modified_at:
        req.source.resource_type, req.source.resource_id = "crm", email
        req.source.modified_at.FromJsonString(modified_at)
    return req


async def test_sync_contact_refuses_a_far_future_modified_at_and_later_updates_still_apply(service, sandbox):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.SyncContact(_sync("future@example.com", "Ninety-nine", FAR_FUTURE))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(info.value)) == ["source.modified_at"]
    assert "ahead of the server's clock" in field_violations(info.value)["source.modified_at"]
    with pytest.raises(grpc.aio.AioRpcError) as info:  # a far-future consent decision decides staleness too
        req = _sync("future@example.com", "X")
        req.consent.email.status = pb.CONSENT_STATUS_SUBSCRIBED
        req.consent.email.decided_at.FromJsonString(FAR_FUTURE)
        await service.stub.SyncContact(req)
    assert list(field_violations(info.value)) == ["consent.email.decided_at"]
    # updates stamped now (and a little ahead: a caller's clock may run a bit fast) are applied
    from datetime import datetime, timedelta, timezone

    soon = (datetime.now(timezone.utc) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await service.stub.SyncContact(_sync("future@example.com", "Soon", soon))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    await service.stub.SyncContact(_sync("other@example.com", "Now", now))
    await wait_for(lambda: all_settled(service), what="deliveries")
    assert sandbox.get_contact(email="future@example.com")["dataFields"]["FIRSTNAME"] == "Soon"
    assert sandbox.get_contact(email="other@example.com")["dataFields"]["FIRSTNAME"] == "Now"
    assert service.rows("SELECT COUNT(*) AS n FROM rejected_record")[0]["n"] == 2


async def test_max_clock_skew_is_configurable(service_factory, database_url, sandbox):
    from datetime import datetime, timedelta, timezone

    settings = make_settings(database_url, sandbox)
    svc = await service_factory(settings.replace(service=settings.service.replace(max_clock_skew_seconds=10)))
    ahead = (datetime.now(timezone.utc) + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.stub.SyncContact(_sync("skew@example.com", "Two minutes", ahead))
    assert list(field_violations(info.value)) == ["source.modified_at"]
    assert "10 seconds" in field_violations(info.value)["source.modified_at"]


async def test_track_event_refuses_far_future_event_times(service):
    custom = pb.BehaviouralEvent(event_id="ev-9999", identity=pb.ContactIdentity(email="e@example.com"),
                                 custom_event=pb.CustomEvent(name="x"))
    custom.occurred_at.FromJsonString(FAR_FUTURE)
    cart = pb.BehaviouralEvent(event_id="ev-cart-9999", identity=pb.ContactIdentity(email="e@example.com"),
                               cart_updated=pb.CartUpdated(cart_id="cart-f"))
    cart.cart_updated.cart.update({"lineItems": [ct.line_item("p1", "HAT-1", "Blue Hat", 1, 1250)],
                                   "totalPrice": ct.money(1250), "cartState": "Active",
                                   "lastModifiedAt": "9999-01-01T00:00:00.000Z"})
    for event, path in ((custom, "behavioural_event.occurred_at"),
                        (cart, "behavioural_event.cart_updated.cart.lastModifiedAt")):
        for processing in (pb.PROCESSING_APPLIED, pb.PROCESSING_QUEUED):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await service.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event,
                                                                   processing=processing))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert list(field_violations(info.value)) == [path]
    assert outbox_rows(service) == []


async def test_far_future_commercetools_customer_is_rejected_and_blocks_nothing(service_factory, database_url,
                                                                             sandbox, fake_ct):
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    forged = ct.customer("cust-f", "ff@example.com", first="Forged", modified="9999-12-31T00:00:00.000Z")
    good = ct.customer("cust-g", "gg@example.com", first="Good")
    r = await svc.stub.TrackEvent(track(ct.raw([
        ct.message("customer", "cust-f", "CustomerCreated", version=1, customer=forged),
        ct.message("customer", "cust-g", "CustomerCreated", version=1, customer=good)])))
    assert outcomes(r) == ["IGNORED", "APPLIED"]  # the other notification of the delivery is not lost
    assert "lastModifiedAt 9999-12-31" in r.notifications[0].reason
    [rejected] = svc.rows("SELECT record_type, record_id, reason FROM rejected_record")
    assert (rejected["record_type"], rejected["record_id"]) == ("customer", "cust-f")
    # the same customer with a sane time is applied: nothing was stored from the forged one
    fake_ct.add("customers", ct.customer("cust-f", "ff@example.com", version=2, first="Real"))
    later = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "cust-f", "CustomerFirstNameSet", version=2,
                                                              firstName="Real"))))
    assert outcomes(later) == ["APPLIED"]
    await wait_for(lambda: all_settled(svc), what="deliveries")
    assert sandbox.get_contact(email="ff@example.com")["dataFields"]["FIRSTNAME"] == "Real"
    assert sandbox.get_contact(email="gg@example.com")["dataFields"]["FIRSTNAME"] == "Good"


async def test_a_message_needing_a_fetch_without_a_client_is_a_failed_precondition_kept_for_the_operator(service):
    # the store has no commercetools API client: the caller's message is fine, the deployment lacks what it needs.
    # Not INVALID_ARGUMENT (poison the caller would drop): FAILED_PRECONDITION naming it; queued, the event is kept
    # as failed (retried by the operator once a client is configured), not rejected
    delivery = ct.raw(ct.message("customer", "cust-nf", "CustomerLastNameSet", version=2, project="shop-eu",
                                 lastName="Doe"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.TrackEvent(track(delivery))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no commercetools API client" in info.value.details()
    queued = await service.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", commercetools_delivery=delivery,
                                                                processing=pb.PROCESSING_QUEUED))
    assert queued.queued
    await wait_for(lambda: [r["status"] for r in service.rows("SELECT status FROM event_inbox")] == ["failed"],
                   what="the queued event failed")
    assert outbox_rows(service) == []


async def test_an_email_change_to_another_contacts_address_is_applied_with_the_conflict_in_its_reason(
        service_factory, database_url, sandbox, fake_ct):
    """The address a customer changes to is already another contact's (a guest's order): the customer's
    contact keeps its address, and the outcome says why rather than nothing."""
    svc = await service_factory(make_settings(database_url, sandbox, commercetools=fake_ct))
    guest = ct.order("ord-g", number="G-1", email="b@example.com")
    await svc.stub.TrackEvent(track(ct.raw(ct.message("order", "ord-g", "OrderCreated", version=1, order=guest))))
    await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "c-a", "CustomerCreated", version=1,
                                                      customer=ct.customer("c-a", "a@example.com")))))
    fake_ct.add("customers", ct.customer("c-a", "b@example.com", version=2))
    changed = await svc.stub.TrackEvent(track(ct.raw(ct.message("customer", "c-a", "CustomerEmailChanged",
                                                                version=2, email="b@example.com"))))
    assert outcomes(changed) == ["APPLIED"]
    assert changed.notifications[0].reason.startswith("identity conflict: the customer's email belongs to another")
    assert "b@example.com" not in changed.notifications[0].reason
    [conflict] = svc.rows("SELECT kind, rule FROM identity_conflict")
    assert conflict["kind"] == "email"
