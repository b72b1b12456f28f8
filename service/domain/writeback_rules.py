"""Writing a Dotdigital change back to commercetools: whether to write one field, and what (pure: no I/O).

``ctdd.backsync.writeback`` reads the field's current value in commercetools (a customer custom field or
top-level field, a key of a guest's CustomObject), what ctdd-sync remembers of it (its ``field_state`` row:
the value the shop sent last, or the Dotdigital change written last, and that value's time) and the change's
time; :func:`decide` says what to do:

- ``NEWER``: a newer value is known, so the change is skipped. Either ctdd-sync holds a value of the field newer
  than the change (commercetools sent it through TrackEvent with a later ``lastModifiedAt``, or a later
  Dotdigital change was applied), or commercetools was modified after the change and the field there is not
  what ctdd-sync last knew (commercetools changed it meanwhile, and its notification is still on the way);
- ``UNCHANGED``: commercetools already holds the value (the same change applied twice writes once);
- ``WRITE``: write it.

The back-sync's own writes move ``lastModifiedAt`` too, so one preference-centre submission that changes a name
and a preference would see its second change "older" than commercetools after writing the first.
:func:`shop_modified_at` takes the resource's ``lastModifiedAt`` as the shop's only when it is not the back-sync's
own write: while the resource is still at the version commercetools answered that write with, the last shop
modification is the one before it (remembered with the write). Any other write moves the version on and
counts again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ctdd.domain.commerce import consent_value

WRITE, UNCHANGED, NEWER = "write", "unchanged", "newer"

#: commercetools custom field types that hold a flag as text: ``"optedIn"`` / ``"optedOut"``
TEXT_FLAG_TYPES = frozenset({"Enum", "LocalizedEnum", "String"})


def flag_of(value: Any) -> bool | None:
    """A commercetools flag value (Boolean, or ``optedIn|optedOut`` text/enum) -> True / False / None (no decision)."""
    status = consent_value(value)
    return None if status is None else status == "subscribed"


def flag_value(flag: bool, current: Any, field_type: str | None) -> Any:
    """The commercetools value of ``flag``: a Boolean, or ``"optedIn"`` / ``"optedOut"`` for a field that holds
    text (decided by the current value's JSON type, else by the field's Type definition)."""
    if isinstance(current, bool):
        return flag
    if isinstance(current, (str, dict)) or field_type in TEXT_FLAG_TYPES:
        return "optedIn" if flag else "optedOut"
    return flag


def profile_value(target_field: str, value: Any) -> Any:
    """A Dotdigital data field's value as the commercetools customer field holds it: ``dateOfBirth`` is a date
    (``YYYY-MM-DD``; Dotdigital dates carry a time), the other top-level fields are text, custom fields keep
    the JSON type."""
    if value is None or value == "":
        return None
    if target_field == "dateOfBirth":
        return str(value)[:10]
    if target_field.startswith("custom."):
        return value
    return str(value)


def shop_modified_at(modified_at: datetime | None, version: Any, own_version: int | None,
                     own_shop_modified_at: datetime | None) -> datetime | None:
    """The last modification of a commercetools resource by anyone but the back-sync: its ``lastModifiedAt``,
    unless the resource is still at ``own_version``, the version the back-sync's own last write produced; then
    ``own_shop_modified_at``, the shop's last modification before that write."""
    if own_version is not None and isinstance(version, int) and not isinstance(version, bool) \
            and version == own_version:
        return own_shop_modified_at
    return modified_at


def is_newer_known(remembered_at: datetime | None, occurred_at: datetime) -> bool:
    """ctdd-sync holds a value of the field newer than the change."""
    return remembered_at is not None and remembered_at > occurred_at


def decide(*, current: Any, target: Any, occurred_at: datetime, modified_at: datetime | None,
           remembered: bool, remembered_value: Any = None, remembered_at: datetime | None = None,
           absent_is_decision: bool = True) -> str:
    """Whether to write ``target`` over commercetools' ``current`` value of one field (both in the terms
    ctdd-sync remembers: a flag as True/False, a profile field as the shop sends it).

    ``modified_at`` is the commercetools resource's ``lastModifiedAt``; ``remembered*`` describe the field's
    ``field_state`` row as it was before this change. ``absent_is_decision=False`` (flags): a field
    commercetools does not hold is no decision of the shop, so it never wins; with ``True`` (profile fields) a
    field the shop cleared after ctdd-sync saw its value wins like any other change.
    """
    if remembered and is_newer_known(remembered_at, occurred_at):
        return NEWER
    if current == target:
        return UNCHANGED
    if modified_at is not None and modified_at > occurred_at:
        if current is None and (not absent_is_decision or not remembered):
            return WRITE  # commercetools never held a value ctdd-sync knows of: nothing of the shop's to keep
        if not remembered or current != remembered_value:
            return NEWER
    return WRITE
