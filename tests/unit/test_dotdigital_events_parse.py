"""Events of the Events API export subscription -> ContactChange (``ctdd.domain.dotdigital_events``, pure)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ctdd.domain.dotdigital_changes import LISTS, PREFERENCES, PROFILE, UNSUBSCRIBE
from ctdd.domain.dotdigital_events import changes_from_event, parse_events, subscription_name

AT = "2026-03-01T12:00:00.000Z"


def event(kind: str, event_id: str = "e1", **data) -> dict:
    return {"id": event_id, "accountId": 1, "processedDate": AT, "type": kind, "eventDate": AT,
            "data": {"contactId": 7, "identifiers": {"email": "jane@example.com", "mobileNumber": "447700900123"},
                     **data}}


def test_each_back_sync_event_type_becomes_its_change():
    prefs, = changes_from_event("main", event("contact.preferenceUpdated", preferences=[
        {"id": 5, "isOptedIn": False}, {"id": 6, "isOptedIn": True}]))
    assert (prefs.kind, dict(prefs.preferences)) == (PREFERENCES, {5: False, 6: True})
    assert (prefs.event_id, prefs.account, prefs.dotdigital_contact_id) == ("e1", "main", 7)
    assert (prefs.email, prefs.mobile_number) == ("jane@example.com", "+447700900123")
    assert prefs.occurred_at == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)

    joined, = changes_from_event("main", event("contact.membershipUpdated", listId=2, status="added"))
    left, = changes_from_event("main", event("contact.membershipUpdated", listId=3, status="removed"))
    assert (joined.kind, dict(joined.lists), dict(left.lists)) == (LISTS, {2: True}, {3: False})

    unsub, = changes_from_event("main", event("interaction.unsubscribe", channel="sms"))
    assert (unsub.kind, unsub.channel) == (UNSUBSCRIBE, "sms")
    default, = changes_from_event("main", event("interaction.unsubscribe"))
    assert default.channel == "email"


def test_contact_updated_carries_profile_edits_and_closed_channels():
    profile, email_off = changes_from_event("main", event(
        "contact.updated", dataFields={"firstName": "Jo", "LASTNAME": None},
        channelProperties={"email": {"status": "unsubscribed"}}))
    assert (profile.kind, dict(profile.data_fields)) == (PROFILE, {"FIRSTNAME": "Jo", "LASTNAME": None})
    assert (email_off.kind, email_off.channel) == (UNSUBSCRIBE, "email")
    assert email_off.event_id != profile.event_id  # each change has its own idempotency key
    # a channel that opened (or is pending) is nothing to write back as an opt-out
    assert changes_from_event("main", event("contact.updated", channelProperties={
        "email": {"status": "subscribed"}, "sms": {"status": "pendingOptIn"}})) == []
    bounced, = changes_from_event("main", event("contact.updated", channelProperties={"sms": {"status": "bounced"}}))
    assert bounced.channel == "sms"


@pytest.mark.parametrize("bad", [
    {"type": "contact.preferenceUpdated", "eventDate": AT, "data": {"contactId": 7}},  # no id
    {**event("contact.preferenceUpdated", preferences=[]), },  # nothing in it
    {**event("contact.membershipUpdated", listId=2, status="sideways")},
    {**event("contact.preferenceUpdated", preferences=[{"id": True, "isOptedIn": True}])},
    {**event("interaction.unsubscribe", channel="whatsApp")},
    {**event("contact.updated"), "eventDate": "yesterday", "processedDate": None},  # no time
    {"id": "e9", "type": "interaction.unsubscribe", "eventDate": AT, "data": {}},  # nobody
])
def test_unusable_events_give_nothing(bad):
    assert changes_from_event("main", bad) == []


def test_parse_keeps_order_and_counts_what_it_skips():
    parsed = parse_events("main", [
        event("contact.membershipUpdated", "a", listId=2, status="added"),
        event("message.sent", "b", channel="email"),
        event("contact.preferenceUpdated", "c", preferences=[{"id": 1, "isOptedIn": True}]),
        event("interaction.click", "d"),
        event("message.sent", "e"),
    ])
    assert [c.event_id for c in parsed.changes] == ["a", "c"]
    assert parsed.skipped == {"message.sent": 2, "interaction.click": 1} and parsed.skipped_total == 3


def test_subscription_name_fits_dotdigital_s_50_characters():
    assert subscription_name("main") == "ctdd-sync-main"
    long_a, long_b = subscription_name("a" * 60), subscription_name("a" * 59 + "b")
    assert len(long_a) == len(long_b) == 50 and long_a != long_b
    assert subscription_name("a" * 60) == long_a  # stable
