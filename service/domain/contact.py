"""The contact as ctdd-sync understands it, independent of gRPC and of the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping


@dataclass(frozen=True)
class Identity:
    """Identifiers of one person as given by the caller (already normalised by validation)."""

    customer_id: str | None = None
    email: str | None = None
    mobile_number: str | None = None
    anonymous_id: str | None = None

    def is_empty(self) -> bool:
        return not (self.customer_id or self.email or self.mobile_number or self.anonymous_id)


@dataclass(frozen=True)
class Address:
    street_line1: str | None = None
    street_line2: str | None = None
    city: str | None = None
    postal_code: str | None = None
    region: str | None = None
    country: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class ConsentRecord:
    text: str
    consented_at: datetime | None
    url: str
    ip_address: str
    user_agent: str


@dataclass(frozen=True)
class ChannelConsent:
    """``status`` is "subscribed" or "unsubscribed"; ``opt_in_type`` single | double | verifiedDouble."""

    status: str | None = None
    opt_in_type: str | None = None
    records: tuple[ConsentRecord, ...] = ()
    decided_at: datetime | None = None


@dataclass(frozen=True)
class SourceStamp:
    """Where a record came from and how new it is; decides whether it may overwrite stored data."""

    resource_type: str | None = None
    resource_id: str | None = None
    version: int | None = None
    modified_at: datetime | None = None

    @property
    def ref(self) -> str | None:
        if self.resource_type and self.resource_id:
            return f"{self.resource_type}/{self.resource_id}"
        return None


@dataclass(frozen=True)
class ContactInput:
    """One SyncContact request in domain terms."""

    store_key: str
    identity: Identity
    #: profile attributes by attribute path ("first_name", "billing_address.city", "custom.loyaltyTier" ...);
    #: only attributes present in the request are here (None means "clear")
    attributes: Mapping[str, Any] = field(default_factory=dict)
    email_consent: ChannelConsent | None = None
    sms_consent: ChannelConsent | None = None
    #: list key -> member?
    lists: Mapping[str, bool] = field(default_factory=dict)
    source: SourceStamp = field(default_factory=SourceStamp)
    #: preference key -> opted in?
    preferences: Mapping[str, bool] = field(default_factory=dict)
