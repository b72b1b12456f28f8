"""Small helpers the bulk reads and writes share (``ctdd.ingest.sqlite_direct``, ``ctdd.ingest.pg_json_rows``):
values to and from the text a database stores, without the general machinery's cost, and the driver's errors
as SQLAlchemy raises them."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection


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


def result_processor(dialect: Any, column: sa.Column) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a value of ``column`` the driver returned (on ``dialect``): its type's result
    processor, or nothing."""
    return column.type._cached_result_processor(dialect, None) or _same


def _same(value: Any) -> Any:
    return value


def json_from_text(text: Any, loads: Callable[[Any], Any]) -> Any:
    """A stored JSON text as ``loads`` reads it; a plain string (``"..."`` with no backslash: nothing escaped,
    since JSON escapes quotes and control characters) directly, as its text between the quotes. Most stored values
    are such strings (addresses, the digests of insight records), and ``json.loads`` costs more than the row's
    other work."""
    if text.__class__ is str and len(text) > 1 and text[0] == '"' and text[-1] == '"' and "\\" not in text:
        return text[1:-1]
    return loads(text)


@contextlib.contextmanager
def sqlalchemy_errors(conn: Connection, sql: str) -> Iterator[None]:
    """The DBAPI's errors as SQLAlchemy raises them (``IntegrityError`` ...): callers tell a lost race by those."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi_error, hide_parameters=True,
                                         dialect=conn.dialect) from exc
