"""The JSON type of a decoded value (pure), as error messages and schema checks name it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def json_type(value: Any) -> str:
    """``null``, ``boolean``, ``number``, ``string``, ``object`` or ``array`` (a tuple counts as an array);
    a value JSON cannot hold is named by its Python type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__
