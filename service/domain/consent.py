"""Consent rules (pure): what may be sent to Dotdigital given what Dotdigital already knows.

Dotdigital keeps suppression sticky: a v3 upsert of an unsubscribed or suppressed contact succeeds but
leaves the status alone unless the payload resubscribes it with ``resubscribeOptions`` (Dotdigital
API docs: Contacts v3). ctdd-sync decides when that is allowed:

- A shop opt-in resubscribes a contact that opted out in Dotdigital only when the shop's decision
  (``decided_at``) is newer than the Dotdigital opt-out; the store's resubscribe mode decides whether
  Dotdigital challenges the contact with a confirmation email. Anything else (no decision time, an older
  decision, a hard bounce or complaint that cannot be lifted) is withheld: the opt-in and the marketing
  list join are not sent, the rest of the update is.
- While a double opt-in confirmation is pending, the opt-in is not sent again (it could send another
  confirmation email).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ctdd.domain.contact import ChannelConsent

#: email statuses meaning "subscribed or never decided": an opt-in may simply be sent
EMAIL_OPEN = frozenset({"subscribed", "noSubscription", "unknown"})
#: opt-outs a newer shop opt-in may lift (a resubscribe)
EMAIL_RESUBSCRIBABLE = frozenset({"unsubscribed", "suppressed"})
SMS_OPEN = frozenset({"subscribed", "noSubscription", "unknown"})
SMS_RESUBSCRIBABLE = frozenset({"unsubscribed", "suppressed"})
PENDING = "pendingOptIn"


@dataclass(frozen=True)
class ChannelState:
    """A channel's status as Dotdigital last reported it, and since when."""

    status: str | None
    since: datetime | None


def normalise_status(status: str | None) -> str | None:
    """Dotdigital read enums vary in case (``Subscribed`` / ``subscribed``): compare in lower-camel."""
    if not status:
        return None
    return status[0].lower() + status[1:]


def _withhold(mapped: dict[str, Any], paths: list[str], reason: str, withheld: list[str]) -> None:
    for path in paths:
        if path in mapped:
            mapped.pop(path)
            withheld.append(f"{path}: {reason}")


def guard_channel(
    mapped: dict[str, Any],
    *,
    channel: str,
    consent: ChannelConsent | None,
    state: ChannelState,
    list_id: int | None,
    resubscribe_mode: str,
) -> list[str]:
    """Apply the consent rules for ``channel`` ("email" or "sms") to ``mapped`` in place.

    Returns the withheld fields as "path: reason" strings.
    """
    withheld: list[str] = []
    status_path = f"channelProperties.{channel}.status"
    if mapped.get(status_path) != "subscribed":
        return withheld
    current = normalise_status(state.status)
    open_states = EMAIL_OPEN if channel == "email" else SMS_OPEN
    resubscribable = EMAIL_RESUBSCRIBABLE if channel == "email" else SMS_RESUBSCRIBABLE
    opt_in_paths = [status_path, f"channelProperties.{channel}.optInType"]
    if list_id is not None:
        opt_in_paths.append(f"lists.{list_id}")
    if current is None or current in open_states:
        return withheld
    if current == PENDING:
        _withhold(mapped, opt_in_paths, "double opt-in confirmation pending in Dotdigital", withheld)
        return withheld
    if current not in resubscribable:
        _withhold(mapped, opt_in_paths, f"Dotdigital status {current} cannot be lifted by an opt-in", withheld)
        return withheld
    decided = consent.decided_at if consent is not None else None
    if decided is None:
        _withhold(mapped, opt_in_paths, f"contact is {current} in Dotdigital and the opt-in has no decision time",
                  withheld)
        return withheld
    if state.since is not None and decided <= state.since:
        _withhold(mapped, opt_in_paths,
                  f"opt-in of {decided.isoformat()} is not newer than the Dotdigital opt-out of {state.since.isoformat()}",
                  withheld)
        return withheld
    if channel == "email":
        mapped["channelProperties.email.resubscribeOptions.resubscribeWithNoChallenge"] = (
            resubscribe_mode == "no_challenge"
        )
    return withheld
