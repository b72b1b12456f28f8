"""Small helpers the bulk writes share (``ctdd.ingest.sqlite_direct``, ``ctdd.ingest.pg_json_rows``) to turn
values into the text a database stores without the general machinery's cost."""

from __future__ import annotations

from typing import Any, Callable


def is_plain_string(value: Any) -> bool:
    """A string ``json.dumps`` would write as itself between quotes: printable ASCII without a quote or a
    backslash (nothing to escape). Most field-state values are such strings (addresses, record digests)."""
    return (value.__class__ is str and value.isascii() and value.isprintable() and '"' not in value
            and "\\" not in value)


def remembering(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, each distinct value converted once (for one statement's rows: a batch writes the same few
    times many times over)."""
    seen: dict[Any, Any] = {}

    def converted(value: Any) -> Any:
        try:
            return seen[value]
        except KeyError:
            result = seen[value] = convert(value)
            return result

    return converted
