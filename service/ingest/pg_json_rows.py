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
column's value is nested in the document (encoded once, with it), None stored as JSON ``null`` as SQLAlchemy's
JSON type stores it; PostgreSQL keeps the text of nested objects, arrays, numbers and literals as written, and a
string with anything to escape travels as its JSON text instead (PostgreSQL would write it again its own way).
Only columns of these kinds are accepted: strings, integers, JSON, UTC datetimes. An UPDATE's rows must have
distinct keys (a row matched twice would be updated with either).

:class:`Pipeline` sends several such statements in psycopg's pipeline mode: PostgreSQL runs one while the next
one's document is built, and the caller waits for the database once.

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
                 params: Mapping[str, str] | None = None, returning: Sequence[str] = (),
                 extra: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None):
        """``extra``: more fields of the rows, by name and SQL type, that no column takes as they are; ``values``:
        the SQL expression (over the record ``u``) a column takes instead of its own field."""
        names = (*keys, *columns)
        self.fields = tuple((name, (params or {}).get(name, name), _encoder(table.c[name])) for name in names)
        self.fields += tuple((name, name, None) for name in (extra or {}))
        #: the JSON columns (their value nested in the document), by name and parameter
        self.json_fields = tuple((name, param) for name, param, _ in self.fields
                                 if name in table.c and isinstance(table.c[name].type, sa.JSON))
        record = [f"{name} {_record_type(table.c[name])}" for name in names]
        record += [f"{name}{_AS_TEXT} text" for name, _ in self.json_fields]
        record += [f"{name} {sql_type}" for name, sql_type in (extra or {}).items()]
        source = f"json_to_recordset(CAST(:rows AS json)) AS u({', '.join(record)})"

        def value(name: str) -> str:
            if values and name in values:
                return values[name]
            if isinstance(table.c[name].type, sa.JSON):
                # the JSON text of a string (see document), else the nested value; JSON null comes out of the
                # record as SQL NULL: stored as JSON null, as SQLAlchemy's JSON type stores None
                return f"COALESCE(CAST(u.{name}{_AS_TEXT} AS json), u.{name}, 'null'::json)"
            return f"u.{name}"

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
        #: the same for the DBAPI cursor (``Pipeline``)
        self.sql = text.replace(":rows", "%s")

    def document(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """``rows`` as the statement's one JSON parameter."""
        # a batch writes the same few times many times over (its time, the events' times): each converted once
        fields = tuple((name, param, remembering(encode) if isinstance(encode, _UTCText) else encode)
                       for name, param, encode in self.fields)
        document = [{name: row[param] if encode is None else encode(row[param]) for name, param, encode in fields}
                    for row in rows]
        # A JSON value is nested in the document as it is, and PostgreSQL keeps the text of a nested object, array,
        # number or literal as it was written (SQLAlchemy's: json.dumps). A string it unescapes and writes again
        # its own way ("Zo\u00eb" becomes "Zoë"): one with anything to escape travels as its JSON text instead.
        for name, param in self.json_fields:
            text_name = name + _AS_TEXT
            for out, row in zip(document, rows):
                value = row[param]
                if value.__class__ is str and not is_plain_string(value):
                    out[name], out[text_name] = None, json.dumps(value)
        return json.dumps(document)

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> Any:
        """Write ``rows``; the result (the ``returning`` columns of each row written, in no promised order)."""
        return conn.execute(self.statement, {"rows": self.document(rows)})


class Pipeline:
    """Statements sent on the connection's DBAPI cursor in psycopg's pipeline mode, inside its transaction: each
    goes to the server as soon as it is added, so PostgreSQL runs one while the next one's parameter is built, and
    the results are waited for once, when the block ends (an error of any statement raises there, as SQLAlchemy
    would raise it; the transaction is then aborted and the caller rolls back). A statement's rows are read from
    the cursor :meth:`write` and :meth:`execute` return, after the block."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._driver = conn.connection.driver_connection
        self._cursors: list[Any] = []
        self._sql = ""

    def __enter__(self) -> "Pipeline":
        self._pipeline = self._driver.pipeline()
        self._pipeline.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with sqlalchemy_errors(self.conn, self._sql):
            self._pipeline.__exit__(*exc_info)
        if exc_info[0] is None:
            return
        for cursor in self._cursors:
            cursor.close()

    def write(self, writer: JsonRowsWrite, rows: Sequence[Mapping[str, Any]]) -> Any:
        return self.execute(writer.sql, (writer.document(rows),))

    def execute(self, sql: str, params: Any = None) -> Any:
        cursor = self._driver.cursor()
        self._cursors.append(cursor)
        self._sql = sql
        with sqlalchemy_errors(self.conn, sql):
            cursor.execute(sql, params)
        return cursor


#: the suffix of the record field that holds a JSON column's value as JSON text
_AS_TEXT = "__text"


def _record_type(column: sa.Column) -> str:
    """The column's type in the record read from JSON."""
    column_type = column.type
    if isinstance(column_type, sa.JSON):
        return "json"  # the value itself, nested in the document
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
        return None  # nested in the document as it is (encoded once, with the document)
    if isinstance(column_type, UTCDateTime):
        return _UTCText(column_type.dialect_impl(_PG).bind_processor(_PG))  # refuses naive datetimes, turns to UTC
    _record_type(column)  # refuses any other kind of column
    return None


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

