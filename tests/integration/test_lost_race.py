"""Which database errors count as a lost race (the unit of work is simply run again) and which fail the same way
on every try (NOT NULL, CHECK): those are not retried (``ctdd.db.transactions.lost_race``), on SQLite and on
the real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from support import reset_postgres
from ctdd.db.engine import create_db_engine
from ctdd.db.transactions import lost_race


@pytest.fixture
def engine(database_url):
    if database_url.startswith("postgresql"):
        reset_postgres(database_url)
    engine = create_db_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE race_probe (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL UNIQUE, "
                             "n INTEGER CHECK (n > 0))")
        conn.exec_driver_sql("INSERT INTO race_probe (id, name, n) VALUES (1, 'taken', 1)")
    yield engine
    engine.dispose()


def error_of(engine, sql: str) -> sa.exc.DBAPIError:
    with pytest.raises(sa.exc.DBAPIError) as caught:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    return caught.value


def test_a_uniqueness_conflict_is_a_lost_race_a_null_or_check_violation_is_not(engine):
    assert lost_race(error_of(engine, "INSERT INTO race_probe (id, name, n) VALUES (2, 'taken', 1)"))
    assert lost_race(error_of(engine, "INSERT INTO race_probe (id, name, n) VALUES (1, 'other', 1)"))
    assert not lost_race(error_of(engine, "INSERT INTO race_probe (id, name, n) VALUES (3, NULL, 1)"))
    assert not lost_race(error_of(engine, "INSERT INTO race_probe (id, name, n) VALUES (4, 'fine', 0)"))
    assert not lost_race(ValueError("not a database error"))
