"""What a contact changed in Dotdigital (a preference centre, a list, the profile), as the back-sync sees it.

Pure data: ``ctdd.backsync`` reads the changes from Dotdigital (the Events API export subscription, or the polling
feeds) and writes them to commercetools; the two halves meet here. Nothing in this module does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

#: kinds of change
PREFERENCES, LISTS, PROFILE, UNSUBSCRIBE = "preferences", "lists", "profile", "unsubscribe"


@dataclass(frozen=True)
class ContactChange:
    """One change a contact made (or an operator made) in Dotdigital.

    Identity: ``dotdigital_contact_id`` when known, else ``email`` / ``mobile_number`` (within ``account``).
    ``occurred_at`` is when Dotdigital says the change happened (the event's ``eventDate``): the staleness
    rules compare it with commercetools' own changes. ``event_id`` identifies the change for idempotency (the
    Events API event id; a synthetic stable key for the polling feeds).
    """

    event_id: str
    account: str
    kind: str
    occurred_at: datetime
    dotdigital_contact_id: int | None = None
    email: str | None = None
    mobile_number: str | None = None
    #: PREFERENCES: Dotdigital preference id -> opted in
    preferences: Mapping[int, bool] = field(default_factory=dict)
    #: LISTS: Dotdigital list (address book) id -> member
    lists: Mapping[int, bool] = field(default_factory=dict)
    #: PROFILE: Dotdigital data field name (upper case, as Dotdigital names them) -> new value
    data_fields: Mapping[str, Any] = field(default_factory=dict)
    #: UNSUBSCRIBE: the channel ("email" or "sms")
    channel: str | None = None
