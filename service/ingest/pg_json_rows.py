"""The set-based apply's bulk writes on PostgreSQL as one statement each, the rows as one JSON parameter.

SQLAlchemy writes the batch's field-state rows, dedupe records, identifiers and contact updates as an
executemany: with psycopg, a multi-row ``VALUES`` text that grows with the rows (parsed again on every batch),
each value through SQLAlchemy's execution context. Array parameters (``unnest``) keep the text fixed, but psycopg
dumps every text element of an array with a regular expression (in Python): more than the row's other work.
Here the rows travel as one JSON document (``json.dumps``, in C) that PostgreSQL reads back into typed columns::

    INSERT INTO t (a, b) SELECT u.a, u.b FROM json_to_recordset(CAST(:rows AS json)) AS u(a bigint, b text)
    UPDATE t SET b = u.b FROM json_to_recordset(CAST(:rows AS json)) AS u(a bigint, b text) WHERE t.a = u.a

The text is the same for any number of rows. Values go through each column type's bind processing
(``UTCDateTime``: to UTC), times as ISO 8601 text with their offset (read back to the microsecond); a JSON
column's value travels as its own JSON text, None included (JSON ``null``, as SQLAlchemy's JSON type stores
None), cast back per row. Only columns of these kinds are accepted: strings, integers, JSON, UTC datetimes. An
UPDATE's rows must have distinct keys (a row matched twice would be updated with either).

The batch's reads by many keys (field state by contact and path, identifier owners, dedupe keys) run the same
way on the DBAPI cursor of the same connection: the keys as one JSON array of arrays (``json.dumps`` of tuples,
in C; a list of records costs a dictionary per key in Python), JSON values read as their text and parsed here
(psycopg's JSON loader detects the encoding of every value first), each value otherwise through the result
processor of its column that SQLAlchemy would call. Measured on a batch of 512 view events (2,800 keys, 1,600 rows
found): 4 ms of the worker's CPU against 10-13 ms through ``Connection.execute``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlmodel.sql.sqltypes import UTCDateTime

from ctdd.ingest.access import FS
from ctdd.ingest.value_text import is_plain_string, json_from_text, remembering, result_processor, sqlalchemy_errors

_PG = postgresql.dialect()

# -- reads ----------------------------------------------------------------------------------------------
#: (contact_id, field, value as JSON text, source_ref, source_version, source_ts) of (contact_id, field) pairs
_FIELDS_BY_PAIR = (
    "SELECT fs.contact_id, fs.field, fs.value::text, fs.source_ref, fs.source_version, fs.source_ts "
    "FROM json_array_elements(CAST(%s AS json)) AS t(k) "
    "JOIN field_state fs ON fs.contact_id = (t.k->>0)::bigint AND fs.field = t.k->>1")
#: (account, kind, value, contact_id) of the identifiers of (account, kind, value) keys that have an owner
_OWNERS_BY_KEY = (
    "SELECT ci.account, ci.kind, ci.value, ci.contact_id FROM json_array_elements(CAST(%s AS json)) AS t(k) "
    "JOIN contact_identifier ci ON ci.account = t.k->>0 AND ci.kind = t.k->>1 AND ci.value = t.k->>2")
#: the dedupe keys of a list that were applied already
_PROCESSED_KEYS = ("SELECT dedupe_key FROM processed_event "
                   "WHERE dedupe_key IN (SELECT value FROM json_array_elements_text(CAST(%s AS json)))")


def field_rows(conn: Connection, pairs: Sequence[tuple[int, str]]) -> list[tuple[Any, ...]]:
    """The stored field-state rows of ``pairs`` (contact id, field), as SQLAlchemy would return them."""
    timestamp = remembering(result_processor(conn.dialect, FS.c.source_ts))  # a batch's rows share a few times
    loads = conn.dialect._json_deserializer or json.loads  # what SQLAlchemy has psycopg parse JSON with
    return [(contact_id, field, None if value is None else json_from_text(value, loads), ref, version,
             None if ts is None else timestamp(ts))
            for contact_id, field, value, ref, version, ts in _fetch(conn, _FIELDS_BY_PAIR, pairs)]


def owner_rows(conn: Connection, keys: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str, int]]:
    """(account, kind, value, contact id) of the identifier ``keys`` (account, kind, value) that have an owner."""
    return _fetch(conn, _OWNERS_BY_KEY, keys)


def processed_keys(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Those of the dedupe ``keys`` that were applied already."""
    return [key for key, in _fetch(conn, _PROCESSED_KEYS, keys)]


def _fetch(conn: Connection, sql: str, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
    cursor = conn.connection.cursor()
    try:
        with sqlalchemy_errors(conn, sql):
            cursor.execute(sql, (json.dumps(keys),))
            return cursor.fetchall()
    finally:
        cursor.close()


# -- writes ---------------------------------------------------------------------------------------------


class JsonRowsWrite:
    """An INSERT (no ``keys``) or an UPDATE of ``columns`` matched on ``keys``, for many rows at once.

    ``params``: the key of each column (``keys`` and ``columns``) in the rows given, by default its name."""

    def __init__(self, table: sa.Table, columns: Sequence[str], *, keys: Sequence[str] = (),
                 params: Mapping[str, str] | None = None, returning: Sequence[str] = ()):
        names = (*keys, *columns)
        self.fields = tuple((name, (params or {}).get(name, name), _encoder(table.c[name])) for name in names)
        source = (f"json_to_recordset(CAST(:rows AS json)) AS u("
                  f"{', '.join(f'{name} {_record_type(table.c[name])}' for name in names)})")

        def value(name: str) -> str:
            return f"u.{name}::json" if isinstance(table.c[name].type, sa.JSON) else f"u.{name}"

        if keys:
            assignments = ", ".join(f"{name} = {value(name)}" for name in columns)
            matches = " AND ".join(f"{table.name}.{name} = u.{name}" for name in keys)
            text = f"UPDATE {table.name} SET {assignments} FROM {source} WHERE {matches}"
        else:
            text = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
                    f"SELECT {', '.join(value(name) for name in columns)} FROM {source}")
        if returning:
            text += f" RETURNING {', '.join(f'{table.name}.{name}' for name in returning)}"
        self.statement = sa.text(text).columns(*(table.c[name] for name in returning)) if returning else sa.text(text)

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> Any:
        """Write ``rows``; the result (the ``returning`` columns of each row written, in no promised order)."""
        # a batch writes the same few times many times over (its time, the events' times): each converted once
        fields = tuple((name, param, remembering(encode) if isinstance(encode, _UTCText) else encode)
                       for name, param, encode in self.fields)
        document = [{name: row[param] if encode is None else encode(row[param]) for name, param, encode in fields}
                    for row in rows]
        return conn.execute(self.statement, {"rows": json.dumps(document)})


def _record_type(column: sa.Column) -> str:
    """The column's type in the record read from JSON."""
    column_type = column.type
    if isinstance(column_type, sa.JSON):
        return "text"  # its JSON text, cast back per row
    if isinstance(column_type, UTCDateTime):
        return "timestamptz"
    plain = column_type.impl if isinstance(column_type, sa.TypeDecorator) else column_type  # e.g. AutoString
    if isinstance(plain, (sa.String, sa.Integer)) and column_type.dialect_impl(_PG).bind_processor(_PG) is None:
        return column_type.compile(dialect=_PG)  # a value SQLAlchemy passes on as it is
    raise TypeError(f"{column}: {column_type!r} is not written through JSON rows")


def _encoder(column: sa.Column) -> Callable[[Any], Any] | None:
    """How a value of ``column`` goes into the JSON document (None: as it is)."""
    column_type = column.type
    if isinstance(column_type, sa.JSON):
        return _json_text
    if isinstance(column_type, UTCDateTime):
        return _UTCText(column_type.dialect_impl(_PG).bind_processor(_PG))  # refuses naive datetimes, turns to UTC
    _record_type(column)  # refuses any other kind of column
    return None


def _json_text(value: Any) -> str:
    """``json.dumps(value)``; a plain string (printable ASCII, no quote or backslash: nothing to escape) directly."""
    if is_plain_string(value):
        return f'"{value}"'
    return json.dumps(value)


class _UTCText:
    """A UTC datetime column's value as ISO 8601 text (through the type's bind processing: to UTC)."""

    __slots__ = ("process",)

    def __init__(self, process: Callable[[Any], Any] | None):
        self.process = process

    def __call__(self, value: Any) -> Any:
        if value.__class__ is datetime and value.tzinfo is timezone.utc:  # already what processing makes it
            return value.isoformat()
        converted = self.process(value) if self.process is not None else value
        return None if converted is None else converted.isoformat()

