"""Multi-row INSERT ... RETURNING on PostgreSQL whose statement text does not grow with the rows.

SQLAlchemy renders an executemany INSERT with RETURNING as ``INSERT ... VALUES (...), (...), ...`` with one
parameter per value ("insertmanyvalues"). psycopg caches the parsing of a query only up to 50 parameters and
4,096 characters, so such a statement is parsed again (a regular expression over the whole text) on every
batch, and PostgreSQL plans it again: on the apply path that cost more than the rows' own work.

:func:`unnest_insert` writes the rows as one array parameter per column instead::

    INSERT INTO t (a, b) SELECT u.a, u.b FROM unnest(CAST(:a AS bigint[]), CAST(:b AS text[])) AS u(a, b)
    RETURNING ...

The text is the same whatever the number of rows (parsed once, prepared by psycopg after a few runs).
Values go through each column type's own bind processing (e.g. ``UTCDateTime``); JSON values are encoded
with :func:`json.dumps`, as SQLAlchemy's JSON type does by default, and cast back per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

_PG = postgresql.dialect()


@dataclass(frozen=True)
class UnnestInsert:
    """One table's multi-row INSERT through ``unnest``: :attr:`statement` with :meth:`params` of the rows."""

    statement: sa.TextualSelect
    columns: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def params(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        """One list per column (``rows`` must all have every column)."""
        out: dict[str, list] = {}
        for name, process in zip(self.columns, self.processors):
            values = [row[name] for row in rows]
            out[f"u_{name}"] = values if process is None else [None if v is None else process(v) for v in values]
        return out


def _element_type(column: sa.Column) -> tuple[str, Callable[[Any], Any] | None]:
    """The SQL type of ``column``'s array parameter and the processing of each value bound to it."""
    column_type = column.type
    if isinstance(column_type, sa.JSON):
        return "text", json.dumps
    impl = column_type.dialect_impl(_PG)
    process = impl.bind_processor(_PG) if isinstance(column_type, sa.TypeDecorator) else None
    return column_type.compile(dialect=_PG), process


def unnest_insert(table: sa.Table, columns: Sequence[str], returning: Sequence[str]) -> UnnestInsert:
    """The INSERT of ``columns`` of ``table`` for many rows, returning ``returning`` of each row."""
    casts, selects, processors = [], [], []
    for name in columns:
        sql_type, process = _element_type(table.c[name])
        casts.append(f"CAST(:u_{name} AS {sql_type}[])")
        selects.append(f"u.{name}::json" if isinstance(table.c[name].type, sa.JSON) else f"u.{name}")
        processors.append(process)
    text = (f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(selects)} "
            f"FROM unnest({', '.join(casts)}) AS u({', '.join(columns)}) RETURNING {', '.join(returning)}")
    statement = sa.text(text).columns(*(table.c[name] for name in returning))
    return UnnestInsert(statement, tuple(columns), tuple(processors))
