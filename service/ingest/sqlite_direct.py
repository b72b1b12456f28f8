"""The set-based apply's bulk reads and writes on SQLite, without SQLAlchemy's per-row machinery.

A batch of contact events reads a few field-state rows per event and writes a few rows per event
(``ctdd.ingest.set_apply``). Through SQLAlchemy each row costs more in Python (building the parameters and
the result rows, the processor calls around each value) than SQLite takes to store or find it, and SQLite runs
in the worker's own process, so the worker pays both. Here the statements run on the DBAPI cursor of the same
connection (same transaction), and every value goes through the very bind or result processor of its column
type that SQLAlchemy would call, so what is written and read is the same.

One shortcut on reading: a JSON value that is a plain string (``"..."`` with no backslash: nothing escaped,
since ``json.dumps`` escapes quotes, control and non-ASCII characters) is its text between the quotes. Most
stored values are such strings (addresses, the digests of insight records), and ``json.loads`` costs more than
the row's other work.
"""

from __future__ import annotations

import functools
import json
import operator
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel.sql.sqltypes import UTCDateTime

from ctdd.ingest.access import FS
from ctdd.ingest.value_text import is_plain_string, json_from_text, remembering, result_processor, sqlalchemy_errors

_Processor = Callable[[Any], Any]

# -- reads ----------------------------------------------------------------------------------------------
#: (contact_id, field, value, source_ref, source_version, source_ts) of the requested (contact_id, field) pairs
#: (a JSON array of pairs: one parameter, so the text never changes and sqlite3 prepares it once)
_FIELDS_BY_PAIR = (
    "SELECT fs.contact_id, fs.field, fs.value, fs.source_ref, fs.source_version, fs.source_ts FROM json_each(?) AS t "
    "JOIN field_state fs ON fs.contact_id = json_extract(t.value, '$[0]') AND fs.field = json_extract(t.value, '$[1]')")
_field_processors: dict[str, tuple[_Processor, _Processor]] = {}


def _column_processors(conn: Connection) -> tuple[_Processor, _Processor]:
    """The result processors of ``field_state.value`` (JSON) and ``field_state.source_ts`` (UTC datetime)."""
    dialect = conn.dialect
    found = _field_processors.get(dialect.name)
    if found is None:
        value = result_processor(dialect, FS.c.value)
        ts = result_processor(dialect, FS.c.source_ts)
        found = _field_processors[dialect.name] = (value, _fast_utc_datetime(ts))
    return found


def field_rows(conn: Connection, pairs: Sequence[tuple[int, str]]) -> list[tuple[Any, ...]]:
    """The stored field-state rows of ``pairs`` (contact id, field), as SQLAlchemy would return them."""
    json_value, timestamp = _column_processors(conn)
    cursor = conn.connection.cursor()
    try:
        with sqlalchemy_errors(conn, _FIELDS_BY_PAIR):
            cursor.execute(_FIELDS_BY_PAIR, (json.dumps(pairs),))
            raw = cursor.fetchall()
    finally:
        cursor.close()
    return [(contact_id, field, json_from_text(value, json_value), ref, version, None if ts is None else timestamp(ts))
            for contact_id, field, value, ref, version, ts in raw]


def _fast_utc_datetime(process: _Processor) -> _Processor:
    """A ``UTCDateTime`` column's value from SQLite's text as ``process`` (SQLAlchemy's chain of processors:
    ``datetime.fromisoformat``, then to UTC) makes it, without the calls around it. Checked against ``process``
    once (a dialect with its own storage format keeps ``process``); text it cannot read goes to ``process``."""
    def parse(text: Any) -> Any:
        try:
            value = datetime.fromisoformat(text)
        except (TypeError, ValueError):
            return process(text)
        return value.replace(tzinfo=timezone.utc) if value.utcoffset() is None else value.astimezone(timezone.utc)

    samples = ("2026-12-03 11:06:44.123456", "2026-01-02 23:04:05.000000", "2026-01-02 23:04:05",
               "2026-01-02T23:04:05.5+02:00")
    try:
        same = all(parse(text) == process(text) and parse(text).tzinfo == process(text).tzinfo for text in samples)
    except Exception:  # the dialect's own processor reads other text
        same = False
    return parse if same else process


# -- writes ---------------------------------------------------------------------------------------------
class DirectWrite:
    """An INSERT or UPDATE without RETURNING, executed for many rows with the DBAPI's ``executemany``.

    Compiled once per dialect and set of row keys (by SQLAlchemy: the same SQL and the same bind processors as
    ``conn.execute(statement, rows)``). Whatever this cannot do as SQLAlchemy would (a column default to fill in,
    rows of different keys) goes through ``conn.execute``."""

    def __init__(self, statement: sa.Executable):
        self.statement = statement
        #: (dialect name, row keys) -> (SQL, parameter names in order, their processors), or None: use SQLAlchemy
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...], tuple[_Processor | None, ...]]
                          | None] = {}

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        keys = tuple(rows[0])
        plan = self._plan(conn, keys)
        if plan is not None:
            sql, names, processors = plan
            params = _parameters(rows, names, processors)
            if params is not None:
                cursor = conn.connection.cursor()
                try:
                    with sqlalchemy_errors(conn, sql):
                        cursor.executemany(sql, params)
                finally:
                    cursor.close()
                return
        conn.execute(self.statement, list(rows))

    def _plan(self, conn: Connection, keys: tuple[str, ...]):
        key = (conn.dialect.name, keys)
        if key not in self._plans:
            compiled = self.statement.compile(dialect=conn.dialect, column_keys=list(keys))
            names = tuple(compiled.positiontup or ())
            if compiled.returning or not names or any(name not in keys for name in names) or len(names) != len(keys):
                self._plans[key] = None  # something SQLAlchemy fills in (a default), or not a plain statement
            else:
                self._plans[key] = (compiled.string, names, _processors(compiled, names))
        return self._plans[key]


class DirectInsertReturning:
    """A multi-row ``INSERT ... VALUES (...), (...) RETURNING ...`` of many rows, on the DBAPI cursor.

    SQLAlchemy's "insertmanyvalues" writes such a statement too, but builds each row's parameters through its
    execution context; here they are built as :class:`DirectWrite` builds them (the same SQL head and the same
    bind processors, compiled by SQLAlchemy). The rows returned come in no promised order (as SQLAlchemy's)."""

    def __init__(self, table: sa.Table, returning: Sequence[str]):
        self.table = table
        self.returning = tuple(returning)
        self.statement = sa.insert(table).returning(*(table.c[name] for name in self.returning))
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[str, str, tuple[str, ...], tuple[_Processor | None, ...]]
                          | None] = {}

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        keys = tuple(rows[0])
        plan = self._plan(conn, keys)
        params_of_rows = None if plan is None else _parameters(rows, plan[2], plan[3])
        if params_of_rows is None:  # a default to fill in, or a row of other keys: SQLAlchemy's own way
            return [tuple(r) for r in conn.execute(self.statement, list(rows))]
        head, values, names, _ = plan
        per_statement = max(1, min(_ROWS_PER_STATEMENT, _max_parameters() // len(names)))
        out: list[tuple[Any, ...]] = []
        cursor = conn.connection.cursor()
        try:
            for start in range(0, len(rows), per_statement):
                chunk = params_of_rows[start:start + per_statement]
                params = [value for row in chunk for value in row]
                sql = _multi_row_sql(head, values, len(chunk), self.returning)
                with sqlalchemy_errors(conn, sql):
                    cursor.execute(sql, params)
                    out.extend(cursor.fetchall())
        finally:
            cursor.close()
        return out

    def _plan(self, conn: Connection, keys: tuple[str, ...]):
        key = (conn.dialect.name, keys)
        if key not in self._plans:
            compiled = sa.insert(self.table).compile(dialect=conn.dialect, column_keys=list(keys))
            names = tuple(compiled.positiontup or ())
            head, sep, values = compiled.string.partition(" VALUES ")
            if not sep or not names or len(names) != len(keys) or any(name not in keys for name in names):
                self._plans[key] = None  # something SQLAlchemy fills in (a default)
            else:
                self._plans[key] = (head, values, names, _processors(compiled, names))
        return self._plans[key]


class _UTCTimes:
    """Marks the bind processor of a UTC datetime column (``UTCDateTime``: every value is turned into UTC first,
    so equal instants are written as the same text): one batch writes the same few times many times over (the
    time of the event, of the batch), each converted once per statement (see :func:`_per_call`)."""

    __slots__ = ("process",)

    def __init__(self, process: _Processor):
        self.process = process


def _processors(compiled: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The bind processor of each parameter (None: the value as it is), UTC datetimes marked."""
    out = []
    for name in names:
        process = compiled._bind_processors.get(name)
        column_type = compiled.binds[name].type
        if process is not None and isinstance(column_type, UTCDateTime):
            process = _UTCTimes(_utc_text(process))
        elif process is not None and isinstance(column_type, sa.JSON):
            process = _json_text(process)
        out.append(process)
    return tuple(out)


def _json_text(process: _Processor) -> _Processor:
    """A JSON column's bind processor with a shortcut for a plain string (printable ASCII without a quote or a
    backslash: nothing ``json.dumps`` would escape), whose JSON is the string between quotes; the reverse of
    ``ctdd.ingest.value_text.json_from_text``. Most field-state values are such strings (addresses, the digests
    of insight records). Checked against ``process`` once; anything else goes to ``process``."""
    def text(value: Any) -> Any:
        return f'"{value}"' if is_plain_string(value) else process(value)

    samples = ("", "a@example.com", "0123456789abcdef", "x y/z:1-2_3.4~5")
    return text if all(text(sample) == process(sample) for sample in samples) else process


def _utc_text(process: _Processor) -> _Processor:
    """SQLite's text of a UTC datetime column, as ``process`` (SQLAlchemy's) writes it, in a fraction of its time:
    the time in UTC as ``YYYY-MM-DD HH:MM:SS.ffffff``. Checked against ``process`` once; anything but an aware
    datetime (None, a naive one: refused) goes to ``process`` itself."""
    def text(value: Any) -> Any:
        if value.__class__ is not datetime:
            return process(value)
        if value.tzinfo is timezone.utc:  # the common case (ctdd.clock): its text less the "+00:00"
            return value.isoformat(" ", "microseconds")[:-6]
        if value.utcoffset() is None:
            return process(value)
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")

    samples = (datetime(2026, 12, 3, 11, 6, 44, 123456, tzinfo=timezone.utc),
               datetime(2026, 1, 2, 23, 4, 5, tzinfo=timezone(timedelta(hours=-7))),
               datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc))
    return text if all(text(sample) == process(sample) for sample in samples) else process


def _parameters(rows: Sequence[Mapping[str, Any]], names: tuple[str, ...], processors: tuple[Any, ...]
                ) -> list[tuple[Any, ...]] | None:
    """Each row's values in the order of ``names``, through the processors; None when a row has other keys."""
    n = len(names)
    getter = operator.itemgetter(*names)
    converting = [(i, process) for i, process in enumerate(_per_call(processors)) if process is not None]
    out: list[Any] = []
    try:
        for row in rows:
            if len(row) != n:
                return None
            values = getter(row)
            if n == 1:
                values = (values,)
            if converting:
                values = list(values)
                for i, process in converting:
                    values[i] = process(values[i])
            out.append(values)
    except KeyError:
        return None
    return out


def _per_call(processors: tuple[Any, ...]) -> tuple[_Processor | None, ...]:
    """The processors for one statement's rows: a UTC datetime's converted once per distinct value."""
    return tuple(remembering(p.process) if isinstance(p, _UTCTimes) else p for p in processors)


#: rows per INSERT: few distinct statement texts (one per row count), each short enough to prepare quickly
_ROWS_PER_STATEMENT = 100


@functools.lru_cache(maxsize=256)
def _multi_row_sql(head: str, values: str, rows: int, returning: tuple[str, ...]) -> str:
    """One text per row count, so that sqlite3's statement cache prepares it once."""
    return f"{head} VALUES {', '.join([values] * rows)} RETURNING {', '.join(returning)}"


def _max_parameters() -> int:
    """Bound parameters per statement: 32,766 since SQLite 3.32, 999 before."""
    return 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
