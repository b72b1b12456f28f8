"""The JSON type of a decoded value (pure), as error messages and schema checks name it, and what Dotdigital refuses
inside an insight record."""

from __future__ import annotations

import re
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


#: a key Dotdigital takes inside an insight record (else the record fails with ``JsonKeyInvalidCharacters``)
_INSIGHT_KEY = re.compile(r"[A-Za-z0-9_-]+")


def insight_json_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first part of ``value`` (decoded JSON) that Dotdigital refuses inside an insight record, as (path,
    problem), or None. Insight data (the failure reasons of Dotdigital's insight import report): object keys
    of ``A-Z a-z 0-9 _ -`` only (``JsonKeyInvalidCharacters``), no two keys of an object that differ only by
    ``-`` and ``_`` (``JsonContainsDashUnderscoreClash``), no array directly inside an array
    (``JsonContainsNestedArray``)."""
    if isinstance(value, Mapping):
        seen: dict[str, str] = {}
        for key, item in sorted(value.items(), key=lambda kv: str(kv[0])):  # (the same answer whatever the order)
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or not _INSIGHT_KEY.fullmatch(key):
                return where, "a key of insight data has only the characters A-Z a-z 0-9 _ -"
            folded = key.replace("-", "_")
            if folded in seen:
                return where, f"keys {seen[folded]!r} and {key!r} differ only by '-' and '_', which Dotdigital refuses"
            seen[folded] = key
            problem = insight_json_problem(item, where)
            if problem is not None:
                return problem
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if isinstance(item, (list, tuple)):
                return where, "an array inside an array (Dotdigital's insight data has no arrays of arrays)"
            problem = insight_json_problem(item, where)
            if problem is not None:
                return problem
    return None
