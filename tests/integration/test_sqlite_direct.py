"""ctdd.ingest.sqlite_direct on SQLite: the rows its DBAPI-level writes store are the rows SQLAlchemy's own
statements store (JSON values of every kind, NULLs, datetimes in other offsets, repeated times), its RETURNING
gives each row's id, and the field-state rows it reads are those SQLAlchemy reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ctdd.db.engine import create_db_engine, upgrade_database
from ctdd.delivery.outbox import OM
from ctdd.ingest import set_apply
from ctdd.ingest.access import CT, FS, INSERT_FIELD_STATE, UPDATE_FIELD_STATE
from ctdd.ingest.sqlite_direct import DirectInsertReturning, DirectWrite, field_rows

NOW = datetime(2026, 12, 3, 11, 0, tzinfo=timezone.utc)
#: JSON values: the plain strings take the reading shortcut, the others json.loads
VALUES = ["plain", "", 'say "hi"', "back\\slash", "Zoë", "tab\there", None, 0, 1.5, True, [1, None, {"a": "b"}],
          {"k": "v"}, '"', "\"quoted\" inside", "del\x7f", "new\nline", "a/b:c d~e", "0123456789abcdef" * 4]


@pytest.fixture
def engine(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'direct.db'}")
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _contacts(conn, n: int) -> list[int]:
    return [conn.execute(sa.insert(CT).returning(CT.c.id), {"account": "main", "next_sequence": 1, "created_at": NOW,
                                                            "updated_at": NOW}).scalar_one() for _ in range(n)]


def _field_row(contact_id: int, i: int, value) -> dict:
    # one time in another offset (the same instant), one repeated many times, one per row, NULL, and UTC as
    # another tzinfo than timezone.utc
    ts = [NOW.astimezone(timezone(timedelta(hours=-7))), NOW, NOW + timedelta(microseconds=i), None,
          NOW.astimezone(ZoneInfo("UTC")) + timedelta(seconds=i)][i % 5]
    return {"contact_id": contact_id, "field": f"f{i}", "value": value, "source_ref": None if i % 2 else f"customer/{i}",
            "source_version": None if i % 3 else i, "source_ts": ts, "message_id": i, "updated_at": NOW}


def _stored_fields(conn, contact_id: int) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.select(FS).where(FS.c.contact_id == contact_id).order_by(FS.c.field))]


def _raw_fields(conn, contact_id: int) -> list[tuple]:
    """The stored text itself (what another reader of the file sees)."""
    return conn.exec_driver_sql("SELECT field, value, source_ref, source_version, source_ts, message_id, updated_at "
                                "FROM field_state WHERE contact_id = ? ORDER BY field", (contact_id,)).all()


def test_direct_writes_store_what_sqlalchemy_stores(engine):
    with engine.begin() as conn:
        direct, core = _contacts(conn, 2)
        insert = DirectWrite(INSERT_FIELD_STATE)
        insert.execute(conn, [_field_row(direct, i, v) for i, v in enumerate(VALUES)])
        assert None not in insert._plans.values()  # written on the DBAPI cursor, not handed back to SQLAlchemy
        conn.execute(INSERT_FIELD_STATE, [_field_row(core, i, v) for i, v in enumerate(VALUES)])
    with engine.connect() as conn:
        assert [r[1:] for r in _stored_fields(conn, direct)] == [r[1:] for r in _stored_fields(conn, core)]
        assert _raw_fields(conn, direct) == _raw_fields(conn, core)
    # updates: every value replaced, the same way
    changed = [{f"b_{k}": v for k, v in _field_row(0, i, v).items()}
               for i, v in enumerate(reversed(VALUES))]
    with engine.begin() as conn:
        update = DirectWrite(UPDATE_FIELD_STATE)
        update.execute(conn, [{**r, "b_contact_id": direct} for r in changed])
        assert None not in update._plans.values()
        conn.execute(UPDATE_FIELD_STATE, [{**r, "b_contact_id": core} for r in changed])
    with engine.connect() as conn:
        assert _raw_fields(conn, direct) == _raw_fields(conn, core)
        assert {r[1]: r[2] for r in _stored_fields(conn, direct)} == {
            f"f{i}": v for i, v in enumerate(reversed(VALUES))}


def test_direct_reads_return_what_sqlalchemy_returns(engine):
    with engine.begin() as conn:
        contact_id, = _contacts(conn, 1)
        conn.execute(INSERT_FIELD_STATE, [_field_row(contact_id, i, v) for i, v in enumerate(VALUES)])
        pairs = sorted([(contact_id, f"f{i}") for i in range(len(VALUES))] + [(contact_id, "absent")])
        by_core = [tuple(r) for r in conn.execute(*set_apply._keyed(set_apply._FIELDS_BY_PAIR, pairs))]
        by_direct = field_rows(conn, pairs)
    assert sorted(by_direct, key=str) == sorted(by_core, key=str)
    assert len(by_direct) == len(VALUES)
    assert {r[1]: r[2] for r in by_direct} == {f"f{i}": v for i, v in enumerate(VALUES)}


def _message(i: int, prefix: str) -> dict:
    return {"partition_key": f"{prefix}:{i % 7}", "sequence": i, "account": "main", "contact_id": None,
            "kind": "insight.upsert", "payload": {"record": {"n": i, "name": "Zoë \"q\""}, "trace": {}},
            "status": "pending", "attempts": 0,
            "next_attempt_at": (NOW + timedelta(seconds=i % 3)).astimezone(timezone(timedelta(hours=5))),
            "store_key": "uk", "record_type": "event", "record_id": f"r-{i}", "record_version": None,
            "priority": i % 3, "created_at": NOW, "updated_at": NOW}


def test_direct_insert_returning_gives_every_rows_id(engine):
    insert = DirectInsertReturning(OM, ("id", "partition_key", "sequence"))
    with engine.begin() as conn:
        returned = insert.execute(conn, [_message(i, "direct") for i in range(250)])  # several statements
        conn.execute(sa.insert(OM), [_message(i, "core") for i in range(250)])
    with engine.connect() as conn:
        by_id = {i: (p, s) for i, p, s in conn.execute(sa.select(OM.c.id, OM.c.partition_key, OM.c.sequence))}
        raw = conn.exec_driver_sql("SELECT partition_key, sequence, payload, status, next_attempt_at, created_at, "
                                   "updated_at, record_version, priority FROM outbox_message "
                                   "ORDER BY sequence, partition_key").all()
    assert None not in insert._plans.values()
    assert sorted(s for _, _, s in returned) == list(range(250))
    assert all(by_id[message_id] == (partition, sequence) for message_id, partition, sequence in returned)
    direct = [(r[0].split(":")[1], *r[1:]) for r in raw if r[0].startswith("direct:")]
    core = [(r[0].split(":")[1], *r[1:]) for r in raw if r[0].startswith("core:")]
    assert len(direct) == 250 and direct == core


def test_a_refused_write_raises_what_sqlalchemy_raises(engine):
    # the caller tells a lost uniqueness race by SQLAlchemy's IntegrityError (ctdd.db.transactions.lost_race)
    with engine.begin() as conn:
        contact_id, = _contacts(conn, 1)
        row = _field_row(contact_id, 1, "x")
        DirectWrite(INSERT_FIELD_STATE).execute(conn, [row])
        with pytest.raises(sa.exc.IntegrityError):
            DirectWrite(INSERT_FIELD_STATE).execute(conn, [row])
