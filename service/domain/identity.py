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

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Mapping

import email_validator
import phonenumbers

#: identifier kinds in priority order (highest first)
PRIORITY = ("customer_id", "email", "mobile_number", "anonymous_id")
#: kinds of which a contact holds exactly one current value
SINGLE_VALUED = ("email", "mobile_number")

_JUNK = re.compile(r"^(?:[0\-\s]*|-1|null|none|undefined|anonymous|n/?a|unknown)$", re.IGNORECASE)
#: addresses validated since start (the same contact's address comes again and again); syntax only
_EMAIL_CACHE_SIZE = 8192


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalised; the message is safe to show to the caller."""


def is_junk(value: str) -> bool:
    return bool(_JUNK.match(value.strip()))


def normalise_email(value: str) -> str:
    """An email address trimmed, checked and lower-cased, in its ASCII form.

    The syntax check is email-validator's (RFC 5321/5322 as mail systems accept it; syntax only, no DNS).
    An internationalised domain (``jane@bücher.de``) is accepted and kept in its IDNA ASCII form
    (``jane@xn--bcher-kva.de``), so the two spellings are one contact and Dotdigital gets an address any mail
    system accepts. The part before the ``@`` must be ASCII: Dotdigital documents no support for
    internationalised (SMTPUTF8) mailboxes, so such an address is refused here rather than by Dotdigital later.
    Quoted local parts, IP-address domains and the special-use domains no mail can reach (``.local``,
    ``localhost``, ``.invalid`` ...) are refused as well; ``.test`` domains are accepted (test data). The message of the error never echoes the address.
    """
    return _normalise_email(value.strip().lower())


@functools.lru_cache(maxsize=_EMAIL_CACHE_SIZE)
def _normalise_email(email: str) -> str:
    # email-validator takes ~70 us an address (the old regex ~1 us); the cache makes a known address ~0.1 us
    if len(email) > 254:
        raise InvalidIdentifier("not a valid email address")
    try:
        # test_environment: ``.test`` domains are accepted (shops' test data uses them; Dotdigital decides)
        checked = email_validator.validate_email(email, check_deliverability=False, allow_smtputf8=False,
                                                 test_environment=True)
    except email_validator.EmailNotValidError:
        raise InvalidIdentifier("not a valid email address") from None
    if len(checked.local_part) > 64:  # RFC 5321's limit, which email-validator 2 no longer enforces
        raise InvalidIdentifier("not a valid email address")
    return (checked.ascii_email or checked.normalized).lower()


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


def mobile_from_text(value: str) -> str:
    """A phone number as a shop stores it (commercetools' address ``mobile`` is free text: "+44 7700 900123",
    "+44 (0) 7700 900123", "0044 7700 900123") as E.164, or InvalidIdentifier. Spacing and punctuation are read
    as phonenumbers reads them, a leading ``00`` is the international prefix; a number without its country code
    is refused (the country it belongs to is not known), and so is one with letters (a vanity number, an
    extension: the number texts would go to is not guessed)."""
    raw = value.strip()
    if any(ch.isalpha() for ch in raw):  # a vanity number ("+1 800 FLOWERS") or an extension: not guessed at
        raise InvalidIdentifier("must be digits only (with spacing and punctuation)")
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    if not raw.startswith("+"):
        raise InvalidIdentifier("must be in international form, with + and the country code")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise InvalidIdentifier("is not a phone number") from None
    return normalise_mobile(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


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
