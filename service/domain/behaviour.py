"""Behavioural events (product views, cart updates, custom events) as ctdd-sync understands them,
independent of gRPC and of the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ctdd.domain.contact import Identity


@dataclass
class BehaviouralEventInput:
    """A typed storefront/middleware event (converted from the proto by the gRPC layer)."""

    event_id: str
    kind: str  # product_viewed | cart_updated | custom_event
    identity: Identity
    occurred_at: datetime | None
    locale: str | None
    currency: str | None
    data: dict[str, Any]
