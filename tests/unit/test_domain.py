"""Pure domain rules: identifier normalisation, identity resolution, delta and payload building."""

from datetime import datetime, timezone

import pytest

from ctdd.domain.contact import SourceStamp
from ctdd.domain.delta import StoredField, compute_delta
from ctdd.domain.identity import InvalidIdentifier, is_junk, normalise_email, normalise_mobile, resolve
from ctdd.domain.payload import build_contact_body, known_contact_body, recreate_contact_body


def test_email_normalisation():
    assert normalise_email("  Jane.Doe@Example.COM ") == "jane.doe@example.com"
    for bad in ("jane", "jane@", "@example.com", "jane@example", "ja ne@example.com", "a..b@example.com"):
        with pytest.raises(InvalidIdentifier):
            normalise_email(bad)


def test_email_syntax_is_email_validators_and_internationalised_domains_are_kept_in_ascii():
    # accepted: plus addressing, apostrophes, long TLDs; an IDNA domain in either spelling is one address
    for given, normalised in (("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
                              ("O'Brien@Example.ie", "o'brien@example.ie"),
                              ("jane@example.museum", "jane@example.museum"),
                              ("Jane@Bücher.DE", "jane@xn--bcher-kva.de"),
                              ("jane@XN--BCHER-KVA.de", "jane@xn--bcher-kva.de"),
                              ("kim@例え.jp", "kim@xn--r8jz45g.jp"),
                              ("QA@Shop.Test", "qa@shop.test")):  # test data's reserved TLD
        assert normalise_email(given) == normalised, given
    # refused: a non-ASCII mailbox (Dotdigital documents no SMTPUTF8 support), quoted local parts, IP literals,
    # special-use domains, a hyphen at a label's edge, over-long parts; the message never echoes the address
    for bad in ("jürgen@example.de", '"ja ne"@example.com', "jane@[192.0.2.1]", "jane@192.0.2.1", "jane@host.local",
                "jane@localhost", "jane@example-.com", "jane.@example.com", ("x" * 65) + "@example.com",
                "jane@" + ("a" * 64) + ".com", "jane@" + ".".join(["abcdefghij"] * 25) + ".com"):
        with pytest.raises(InvalidIdentifier) as refused:
            normalise_email(bad)
        assert str(refused.value) == "not a valid email address", bad


def test_mobile_must_be_e164():
    assert normalise_mobile("+447700900123") == "+447700900123"
    for bad in ("07700900123", "+44 7700 900123", "+44770090012345678", "+1555"):
        with pytest.raises(InvalidIdentifier):
            normalise_mobile(bad)


def test_junk_values_are_not_identifiers():
    assert all(is_junk(v) for v in ("null", "0000", "-1", "anonymous", "N/A", "  "))
    assert not is_junk("c-123")


def test_resolution_creates_when_nothing_matches():
    r = resolve({"email": "a@x.io", "customer_id": "p/1"}, {"email": None, "customer_id": None})
    assert r.contact_id is None
    assert r.attach == (("customer_id", "p/1"), ("email", "a@x.io"))


def test_resolution_joins_identifiers_of_one_person():
    r = resolve({"email": "a@x.io", "customer_id": "p/1"}, {"email": 7, "customer_id": None})
    assert r.contact_id == 7 and r.attach == (("customer_id", "p/1"),) and not r.conflicts


def test_resolution_priority_customer_id_outranks_email_and_never_merges():
    r = resolve({"email": "a@x.io", "customer_id": "p/1", "mobile_number": "+447700900123"},
                {"email": 8, "customer_id": 7, "mobile_number": 9})
    assert r.contact_id == 7
    assert [(c.kind, c.owner_contact_id) for c in r.conflicts] == [("email", 8), ("mobile_number", 9)]
    assert r.attach == ()


def test_resolution_email_outranks_mobile():
    r = resolve({"email": "a@x.io", "mobile_number": "+447700900123"}, {"email": 3, "mobile_number": 4})
    assert r.contact_id == 3 and r.conflicts[0].rule == "email outranks mobile_number"


T1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T2 = datetime(2026, 1, 2, tzinfo=timezone.utc)


def test_delta_sends_only_changes():
    stored = {"dataFields.A": StoredField("x", "customer/1", 1, T1), "dataFields.B": StoredField("y", "customer/1", 1, T1)}
    d = compute_delta({"dataFields.A": "x", "dataFields.B": "z", "dataFields.C": 1}, stored,
                      SourceStamp("customer", "1", 2, T2))
    assert d.changed == {"dataFields.B": "z", "dataFields.C": 1} and d.stale == ()


def test_delta_drops_older_versions_of_the_same_record():
    stored = {"dataFields.A": StoredField("new", "customer/1", 5, None)}
    d = compute_delta({"dataFields.A": "old"}, stored, SourceStamp("customer", "1", 4, None))
    assert d.changed == {} and d.stale == ("dataFields.A",)


def test_delta_uses_timestamps_across_records():
    stored = {"dataFields.A": StoredField("new", "order/9", 50, T2)}
    assert compute_delta({"dataFields.A": "old"}, stored, SourceStamp("customer", "1", 99, T1)).stale == ("dataFields.A",)
    assert compute_delta({"dataFields.A": "newer"}, stored, SourceStamp("customer", "1", 1, T2)).changed


def test_delta_without_source_information_is_never_stale():
    stored = {"dataFields.A": StoredField("a", "customer/1", 5, T2)}
    assert compute_delta({"dataFields.A": "b"}, stored, SourceStamp()).changed == {"dataFields.A": "b"}


def test_payload_builder_nests_paths():
    body = build_contact_body({
        "identifiers.email": "a@x.io",
        "dataFields.FIRSTNAME": "A",
        "channelProperties.email.status": "subscribed",
        "lists.12": True,
        "lists.3": True,
        "consentRecords.email.abc": {"text": "t"},
        "preferences.7": False,
    })
    assert body == {
        "identifiers": {"email": "a@x.io"},
        "dataFields": {"FIRSTNAME": "A"},
        "channelProperties": {"email": {"status": "subscribed"}},
        "lists": [3, 12],
        "consentRecords": [{"text": "t"}],
        "preferences": [{"id": 7, "isOptedIn": False}],
    }
    with pytest.raises(ValueError):
        build_contact_body({"bogus.x": 1})


def _consent(day: int) -> dict:
    return {"text": f"t{day}", "dateTimeConsented": f"2026-11-{day:02d}T10:00:00Z"}


def test_known_contact_body_keeps_what_a_recreated_contact_needs():
    body = known_contact_body({
        "identifiers.email": "a@x.io",
        "dataFields.FIRSTNAME": "A",
        "dataFields.COMPANY": None,  # cleared: nothing to send to a new contact
        "channelProperties.email.status": "subscribed",
        "lists.1": True,
        "lists.2": False,  # left
        "lists.3": None,
        "preferences.7": False,  # an opt-out is a choice: kept
        "insight.Orders.1001": "digest",  # not a contact field
        **{f"consentRecords.email.d{day}": _consent(day) for day in (3, 9, 1, 5, 7, 2)},
        "consentRecords.email.odd": "not a record",
    })
    assert body == {
        "identifiers": {"email": "a@x.io"},
        "dataFields": {"FIRSTNAME": "A"},
        "channelProperties": {"email": {"status": "subscribed"}},
        "lists": [1],
        "preferences": [{"id": 7, "isOptedIn": False}],
        # all of them (a request takes 5: recreate_contact_body chooses), latest consent first
        "consentRecords": [_consent(day) for day in (9, 7, 5, 3, 2, 1)],
    }
    assert known_contact_body({}) == {}


def test_recreate_contact_body_lets_the_message_win():
    known = {"identifiers": {"email": "old@x.io", "mobileNumber": "447700900123"},
             "dataFields": {"FIRSTNAME": "A", "LASTNAME": "Old"}, "lists": [1, 2],
             "channelProperties": {"email": {"status": "subscribed", "optInType": "single"}},
             "preferences": [{"id": 7, "isOptedIn": True}, {"id": 8, "isOptedIn": True}]}
    message = {"dataFields": {"LASTNAME": "New", "COMPANY": None}, "lists": [3],
               "channelProperties": {"email": {"status": "unsubscribed"}}, "preferences": [{"id": 7, "isOptedIn": False}]}
    assert recreate_contact_body(known, message, {"email": "a@x.io"}) == {
        "identifiers": {"email": "a@x.io", "mobileNumber": "447700900123"},
        "dataFields": {"FIRSTNAME": "A", "LASTNAME": "New", "COMPANY": None},
        "lists": [1, 2, 3],
        "channelProperties": {"email": {"status": "unsubscribed", "optInType": "single"}},
        "preferences": [{"id": 7, "isOptedIn": False}, {"id": 8, "isOptedIn": True}],
    }
    # the message's identifiers win over ctdd-sync's address, which wins over the known ones
    assert recreate_contact_body(known, {"identifiers": {"email": "new@x.io"}}, {"email": "a@x.io"})["identifiers"] == {
        "email": "new@x.io", "mobileNumber": "447700900123"}
    assert recreate_contact_body({}, {"dataFields": {"A": 1}}) == {"dataFields": {"A": 1}}
    assert known == {"identifiers": {"email": "old@x.io", "mobileNumber": "447700900123"},
                     "dataFields": {"FIRSTNAME": "A", "LASTNAME": "Old"}, "lists": [1, 2],
                     "channelProperties": {"email": {"status": "subscribed", "optInType": "single"}},
                     "preferences": [{"id": 7, "isOptedIn": True}, {"id": 8, "isOptedIn": True}]}  # not changed


def test_recreate_contact_body_sends_at_most_five_consent_records_without_repeating_the_message_s():
    known = {"consentRecords": [_consent(day) for day in (9, 7, 5, 3, 2, 1)]}
    # the message's own records (also in field_state) go once, the latest known others fill up to 5
    body = recreate_contact_body(known, {"consentRecords": [_consent(7), _consent(10)]})
    assert body["consentRecords"] == [_consent(9), _consent(5), _consent(3), _consent(7), _consent(10)]
    assert recreate_contact_body(known, {})["consentRecords"] == [_consent(day) for day in (9, 7, 5, 3, 2)]
    full = [_consent(day) for day in range(11, 16)]
    assert recreate_contact_body(known, {"consentRecords": full})["consentRecords"] == full



def test_became_delivered_compares_with_the_version_applied_before():
    from ctdd.domain.commerce import became_delivered

    assert became_delivered("Delivered", "Shipped", first_seen=False) is True
    assert became_delivered("Delivered", "", first_seen=False) is True  # the order had no shipment state
    assert became_delivered("Delivered", "Delivered", first_seen=False) is False  # a later update: once only
    assert became_delivered("Shipped", "Pending", first_seen=False) is False
    assert became_delivered("Delivered", None, first_seen=True) is True  # first seen already delivered
    assert became_delivered("Delivered", None, first_seen=False) is None  # a row without its state: unknown


def test_catalog_collection_names_are_names_dotdigital_takes_whatever_the_store_key():
    from ctdd.domain.catalog import collection_names, is_collection_name

    for key, expected in (("uk", "uk"), ("zürich", "z_rich"), ("brand.eu/de", "brand_eu_de"), ("٣-shop", "_-shop")):
        products, categories = collection_names(key)
        assert (products, categories) == (f"Catalog_{expected}", f"Categories_{expected}")
        assert is_collection_name(products) and is_collection_name(categories)
    assert collection_names("uk", "Products", "Cats") == ("Products", "Cats")
    assert not any(is_collection_name(n) for n in ("1st", "a", "Catalog zürich", "x" * 257, "Catalog_ü"))


def test_a_consent_time_that_is_no_iso_time_counts_as_no_time():
    """A shop's String field "dd-consentUpdatedAt" filled its own way: the consent still counts (dated by the
    customer's lastModifiedAt); it used to raise ValueError, answered INTERNAL and retried as a passing fault."""
    from ctdd.domain.commerce import consent_from_custom_fields

    for value in ("02/01/2026", "not-a-date", "9999-12-31T23:59:59-23:59", ""):
        email, sms = consent_from_custom_fields({"dd-emailOptIn": True, "dd-consentUpdatedAt": value},
                                                email_field="dd-emailOptIn", sms_field="dd-smsOptIn",
                                                updated_at_field="dd-consentUpdatedAt")
        assert (email.status, email.decided_at, sms) == ("subscribed", None, None), value
    email, _ = consent_from_custom_fields({"dd-emailOptIn": False, "dd-consentUpdatedAt": "2026-01-02T03:04:05Z"},
                                          email_field="dd-emailOptIn", sms_field="dd-smsOptIn",
                                          updated_at_field="dd-consentUpdatedAt")
    assert (email.status, email.decided_at.isoformat()) == ("unsubscribed", "2026-01-02T03:04:05+00:00")


def test_order_aggregates_keep_the_minor_units_of_the_currency():
    from datetime import datetime, timezone

    from ctdd.domain.commerce import SummaryRow, order_aggregates

    def row(key, total, currency, refund=0.0):
        return SummaryRow(key, datetime(2026, 1, int(key[-1]), tzinfo=timezone.utc), total, currency, "uk", None,
                          "Open", refund, [])

    kwd = order_aggregates([row("o1", 1.235, "KWD"), row("o2", 2.001, "KWD", refund=0.125)])
    assert (kwd["orders.total_spend"], kwd["orders.average_order_value"], kwd["orders.total_refund"]) == (
        3.236, 1.618, 0.125)
    gbp = order_aggregates([row("o1", 10.005, "GBP"), row("o2", 3.33, "GBP")])
    assert (gbp["orders.total_spend"], gbp["orders.average_order_value"]) == (13.34, 6.67)
    jpy = order_aggregates([row("o1", 1000.0, "JPY"), row("o2", 2001.0, "JPY")])
    assert (jpy["orders.total_spend"], jpy["orders.average_order_value"]) == (3001.0, 1500.0)


def test_a_customers_mobile_is_read_as_shops_write_it():
    """commercetools' address mobile is free text: spacing, punctuation, (0) and 00 are read; no country code is
    refused (an SMS opt-in of such a customer is dropped, as before)."""
    from ctdd.domain.identity import InvalidIdentifier, mobile_from_text

    for text in ("+44 7700 900123", "+44 (0) 7700 900123", "0044 7700 900123", " +44-7700-900-123 ", "+447700900123"):
        assert mobile_from_text(text) == "+447700900123", text
    for text in ("07700 900123", "+44 12", "call me", "00", "+1 800 FLOWERS", "+447700900123x",
                 "+44 7700 900123 ext 5"):
        with pytest.raises(InvalidIdentifier):
            mobile_from_text(text)
