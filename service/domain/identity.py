"""Identifier normalisation and the identity-resolution rules (pure: no I/O).

Rules (documented in docs/api.md, "Identity resolution"):

1. Identity is scoped to a Dotdigital account: Dotdigital itself keeps one contact per email address and
   per mobile number within an account, so ctdd-sync keeps one internal contact per person per account.
2. Identifiers are matched exactly after normalisation: email trimmed and lower-cased, mobile numbers in
   E.164, customer ids prefixed with the commercetools project key (``project/customer-id``).
3. Junk values (``null``, ``anonymous``, ``-1``, all zeros ...) never match anything.
4. Priority: ``customer_id`` > ``email`` > ``mobile_number`` > ``anonymous_id``. When the identifiers of a
   request point at different contacts, the contact found by the highest-priority identifier wins (the
   anchor). Lower-priority identifiers owned by another contact stay with their owner: they are not
   moved and the contacts are not merged; the conflict is recorded for review and reported to the caller.
5. When no identifier matches, a new contact is created; it needs an email address or a mobile number,
   because Dotdigital cannot create a contact without one.
6. A contact holds one current email and one current mobile number: giving a known contact a new email
   moves the contact to the new address (the old address no longer resolves to it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Mapping

import phonenumbers

#: identifier kinds in priority order (highest first)
PRIORITY = ("customer_id", "email", "mobile_number", "anonymous_id")
#: kinds of which a contact holds exactly one current value
SINGLE_VALUED = ("email", "mobile_number")

_JUNK = re.compile(r"^(?:[0\-\s]*|-1|null|none|undefined|anonymous|n/?a|unknown)$", re.IGNORECASE)
# Pragmatic address check: one @, no spaces, a dot in the domain, no empty labels.
_EMAIL = re.compile(r"^[^@\s]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$")


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalised; the message is safe to show to the caller."""


def is_junk(value: str) -> bool:
    return bool(_JUNK.match(value.strip()))


def normalise_email(value: str) -> str:
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email) or ".." in email:
        raise InvalidIdentifier("not a valid email address")
    return email


def normalise_mobile(value: str) -> str:
    """Return ``value`` as E.164; it must already be written in international form (``+`` and country code)."""
    raw = value.strip()
    if not raw.startswith("+"):
        raise InvalidIdentifier("must be in E.164 format, for example +447700900123")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise InvalidIdentifier("must be in E.164 format, for example +447700900123") from None
    # "possible" (right length for the country) rather than "valid" (allocated range): number-range
    # metadata ages, and refusing a newly allocated range would lose a real customer's consent.
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidIdentifier("is not a possible phone number for its country code")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 != raw:
        # the number is not echoed: violation texts reach the caller, the log and rejected_record
        raise InvalidIdentifier("must be in E.164 format, without spaces or punctuation (for example +447700900123)")
    return e164


def customer_key(project: str, customer_id: str) -> str:
    return f"{project}/{customer_id}"


def hash_identifier(value: str) -> str:
    """Stable hash of an identifier value, for logs and review records (no personal data)."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Conflict:
    kind: str
    owner_contact_id: int
    rule: str


@dataclass(frozen=True)
class Resolution:
    """Outcome of resolving the identifiers of one request.

    ``contact_id`` is None when a new contact must be created. ``attach`` lists the (kind, value) pairs to
    give to the resolved contact; ``conflicts`` the identifiers left with their current owner.
    """

    contact_id: int | None
    attach: tuple[tuple[str, str], ...]
    conflicts: tuple[Conflict, ...]


def resolve(requested: Mapping[str, str], owners: Mapping[str, int | None]) -> Resolution:
    """Decide which contact ``requested`` identifiers belong to.

    ``requested`` maps kind -> normalised value; ``owners`` maps kind -> the contact owning that value
    (None when nobody does). Pure function: the caller looks the owners up and applies the result.
    """
    anchor: int | None = None
    anchor_kind: str | None = None
    for kind in PRIORITY:
        if kind in requested and owners.get(kind) is not None:
            anchor, anchor_kind = owners[kind], kind
            break
    attach: list[tuple[str, str]] = []
    conflicts: list[Conflict] = []
    for kind in PRIORITY:
        if kind not in requested:
            continue
        owner = owners.get(kind)
        if owner is None:
            attach.append((kind, requested[kind]))
        elif anchor is not None and owner != anchor:
            conflicts.append(Conflict(kind, owner, f"{anchor_kind} outranks {kind}"))
    return Resolution(anchor, tuple(attach), tuple(conflicts))
