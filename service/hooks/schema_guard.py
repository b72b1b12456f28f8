"""The schema guard of the "modify the record we built" hooks: a plugin's answer may not change the JSON type
of a field, relative to the record the service built or to the type the collection already has (a Dotdigital
insight or catalog collection's schema is fixed by its first records, and a record breaking it is refused).

Fields are named by path: ``a.b`` for a field of an object, ``a[]`` for the elements of an array (``a[].b``
for a field of the objects in it). ``null`` has no type: it matches every type.
"""

from __future__ import annotations

import threading
from typing import Any, Hashable, Mapping

from ctdd.domain.json_values import json_type

#: at most this many fields are remembered per collection (a plugin emitting endless distinct keys must not
#: grow the process without bound)
MAX_KNOWN_FIELDS = 2000


def field_types(record: Mapping[str, Any]) -> dict[str, str]:
    """Path -> JSON type of every non-null field of ``record`` (for an array, of its first non-null element)."""
    out: dict[str, str] = {}
    _walk(record, "", out)
    return out


def _walk(value: Any, path: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            child = f"{path}.{key}" if path else str(key)
            if inner is None:
                continue
            out.setdefault(child, json_type(inner))
            _walk(inner, child, out)
    elif isinstance(value, (list, tuple)):
        child = f"{path}[]"
        for inner in value:
            if inner is None:
                continue
            out.setdefault(child, json_type(inner))
            _walk(inner, child, out)


def type_changes(expected: Mapping[str, str], actual: Mapping[str, str], against: str) -> list[str]:
    """Every field of ``actual`` whose type differs from ``expected``'s, described (paths and types only,
    never values: they may be personal data)."""
    return [f"field {path!r} would change from {expected[path]} to {kind} ({against})"
            for path, kind in actual.items() if path in expected and expected[path] != kind]


class KnownTypes:
    """The field types seen per collection in this process (learnt from the records plugins shaped)."""

    def __init__(self) -> None:
        self._types: dict[Hashable, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Mapping[str, str]:
        return self._types.get(key, {})

    def learn(self, key: Hashable, types: Mapping[str, str]) -> None:
        with self._lock:
            known = self._types.setdefault(key, {})
            for path, kind in types.items():
                if len(known) >= MAX_KNOWN_FIELDS:
                    break
                known.setdefault(path, kind)


def refusals(built: Mapping[str, str], known: Mapping[str, str], answer: Mapping[str, Any]) -> list[str]:
    """Why ``answer`` is refused: fields changing type relative to the built record (``built``: its field
    types), else relative to the collection's ``known`` types; empty when it is fine."""
    actual = field_types(answer)
    problems = type_changes(built, actual, "the record the service built")
    rest = {path: kind for path, kind in actual.items() if path not in built}
    problems += type_changes(known, rest, "the type the collection already has")
    return problems
