"""Dotdigital contact data-field names: the one rule for what a valid name looks like.

Dotdigital accepts data-field names of 1 to 20 characters drawn from ``[A-Za-z0-9_-]``. The
configuration, the provisioning step, the Dotdigital client and the sandbox all check names
against this single pattern.
"""

from __future__ import annotations

import re

__all__ = ["DATA_FIELD_NAME", "is_valid_data_field_name"]

DATA_FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,20}$")
"""Compiled pattern of a valid data-field name (use ``.match``)."""


def is_valid_data_field_name(name: str) -> bool:
    """True when ``name`` is an acceptable Dotdigital data-field name.

    Same test as ``DATA_FIELD_NAME.match(name)``; a non-string or empty value is not valid.
    """
    return isinstance(name, str) and DATA_FIELD_NAME.match(name) is not None
