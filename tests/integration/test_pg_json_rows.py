"""ctdd.ingest.pg_json_rows on the real PostgreSQL: its one-statement INSERTs and UPDATEs leave the rows SQLAlchemy's
own executemany leaves (JSON values of every kind, None stored as JSON null, NULLs, datetimes in other offsets
and to the microsecond, big integers), and the statement has one parameter whatever the number of rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ctdd.db.engine import create_db_engine, upgrade_database
from ctdd.ingest import pg_json_rows, set_apply
from ctdd.delivery.outbox import OM
from ctdd.ingest.access import CI, CT, FS, INSERT_FIELD_STATE, INSERT_PROCESSED, PE, UPDATE_FIELD_STATE
from support.helpers import reset_postgres

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 3, 11, 0, tzinfo=timezone.utc)
VALUES = ["plain", "", 'say "hi"', "back\\slash", "Zoë", None, 0, 1.5, True, [1, None, {"a": "b"}], {"k": "v"},
          "del\x7f", "tab\there", "a/b:c d~e", "0123456789abcdef" * 4, {"n": "Zoë \"q\"", "x": [1.50, "é\\"]},
          ["ë", "\u2028", {}], 10 ** 20, -0.0, "\u00e9\U0001f600"]


def _field_row(contact_id: int, i: int, value) -> dict:
    ts = [NOW.astimezone(timezone(timedelta(hours=-7))), NOW, NOW + timedelta(microseconds=i), None,
          NOW.astimezone(ZoneInfo("UTC")) + timedelta(seconds=i)][i % 5]
    return {"contact_id": contact_id, "field": f"f{i:02d}", "value": value,
            "source_ref": None if i % 2 else f"customer/{i}", "source_version": None if i % 3 else 2 ** 40 + i,
            "source_ts": ts, "message_id": i, "updated_at": NOW, "message_partition": None, "message_sequence": None}


def _core(row: dict) -> dict:
    """A row as SQLAlchemy's own statements take it (no message reference)."""
    return {k: v for k, v in row.items() if not k.startswith("message_") or k == "message_id"}


def _fields(conn, contact_id: int) -> list[tuple]:
    """Each row as stored, JSON as its text (JSON null and SQL NULL differ there)."""
    return conn.execute(sa.text("SELECT field, value::text, value IS NULL, source_ref, source_version, source_ts, "
                                "message_id, updated_at FROM field_state WHERE contact_id = :c ORDER BY field"),
                        {"c": contact_id}).all()


def test_json_rows_writes_leave_what_sqlalchemy_leaves(postgres_database):
    reset_postgres(postgres_database)
    engine = create_db_engine(postgres_database)
    upgrade_database(engine)
    writes = set_apply._PG_WRITES
    try:
        with engine.begin() as conn:
            by_json, core = (conn.execute(sa.insert(CT).returning(CT.c.id), {
                "account": "main", "next_sequence": 1, "created_at": NOW, "updated_at": NOW}).scalar_one()
                for _ in range(2))
            with pg_json_rows.Pipeline(conn) as pipe:  # as the batch writes them
                pipe.write(set_apply._PG_FIELD_INSERT, [_field_row(by_json, i, v) for i, v in enumerate(VALUES)])
            conn.execute(INSERT_FIELD_STATE, [_core(_field_row(core, i, v)) for i, v in enumerate(VALUES)])
            processed = [{"dedupe_key": f"{who}:{i}", "store_key": "uk", "resource_type": None if i else "product",
                          "resource_id": "p", "outcome": "applied", "processed_at": NOW + timedelta(seconds=i)}
                         for who in ("x",) for i in range(3)]
            writes[INSERT_PROCESSED].execute(conn, processed)
            conn.execute(INSERT_PROCESSED, [{**r, "dedupe_key": "core" + r["dedupe_key"]} for r in processed])
        with engine.connect() as conn:
            assert _fields(conn, by_json) == _fields(conn, core)
            assert len(_fields(conn, by_json)) == len(VALUES)
            stored = conn.execute(sa.select(PE).order_by(PE.c.dedupe_key)).all()
            assert [tuple(r)[1:] for r in stored if r[0].startswith("x")] == \
                [tuple(r)[1:] for r in stored if r[0].startswith("core")]
        # every value replaced, through the UPDATE ... FROM json_to_recordset
        changed = [_field_row(0, i, v) for i, v in enumerate(reversed(VALUES))]
        with engine.begin() as conn:
            set_apply._PG_FIELD_UPDATE.execute(conn, [{**r, "contact_id": by_json} for r in changed])
            conn.execute(UPDATE_FIELD_STATE, [{f"b_{k}": v for k, v in _core({**r, "contact_id": core}).items()}
                                              for r in changed])
            contact = [{"b_id": by_json, "b_next_sequence": 7, "b_updated_at": NOW + timedelta(hours=1),
                        "b_email": "a@example.com", "b_mobile_number": None, "b_shop_email_consent": "subscribed",
                        "b_shop_email_consent_at": NOW.astimezone(timezone(timedelta(hours=2))),
                        "b_shop_sms_consent": None, "b_shop_sms_consent_at": None}]
            writes[set_apply._UPDATE_CONTACT].execute(conn, contact)
            conn.execute(set_apply._UPDATE_CONTACT, [{**contact[0], "b_id": core}])
        with engine.connect() as conn:
            assert _fields(conn, by_json) == _fields(conn, core)
            assert {r.field: r.value for r in conn.execute(sa.select(FS.c.field, FS.c.value)
                                                           .where(FS.c.contact_id == by_json))} == {
                f"f{i:02d}": v for i, v in enumerate(reversed(VALUES))}
            a, b = (conn.execute(sa.select(CT).where(CT.c.id == cid)).one()._mapping for cid in (by_json, core))
            assert {**a, "id": None} == {**b, "id": None}
            assert a["next_sequence"] == 7 and a["email"] == "a@example.com"
    finally:
        engine.dispose()
    # one parameter, the rows: the same text for any number of rows
    assert str(set_apply._PG_FIELD_UPDATE.statement).count(":rows") == 1


def test_pipelined_field_rows_find_the_ids_of_the_messages_sent_before_them(postgres_database):
    """In the batch's pipeline the field-state rows are sent before the messages' ids are known: a row that points
    at a message of the batch (by partition and sequence) gets that message's id; one with an id keeps it; a failing
    statement raises as SQLAlchemy would raise it, at the end of the pipeline, and nothing of the batch stays."""
    reset_postgres(postgres_database)
    engine = create_db_engine(postgres_database)
    upgrade_database(engine)
    try:
        with engine.begin() as conn:
            contact_id = conn.execute(sa.insert(CT).returning(CT.c.id), {
                "account": "main", "next_sequence": 1, "created_at": NOW, "updated_at": NOW}).scalar_one()
            conn.execute(INSERT_FIELD_STATE, [_core(_field_row(contact_id, 0, "old"))])
            messages = [_message(i, "main") for i in range(3)]
            rows = [{**_field_row(contact_id, i, f"v{i}"), "message_id": None,
                     "message_partition": messages[i]["partition_key"], "message_sequence": messages[i]["sequence"]}
                    for i in range(3)]
            rows.append({**_field_row(contact_id, 3, "kept"), "message_id": 12345})
            with pg_json_rows.Pipeline(conn) as pipe:
                inserted = pipe.write(set_apply._PG_MESSAGES, messages)
                pipe.write(set_apply._PG_FIELD_UPDATE, rows[:1])
                pipe.write(set_apply._PG_FIELD_INSERT, rows[1:])
            ids = {(p, s): i for i, p, s in inserted.fetchall()}
        with engine.connect() as conn:
            stored = dict(conn.execute(sa.select(FS.c.field, FS.c.message_id).where(FS.c.contact_id == contact_id)).all())
        assert stored == {"f00": ids[("main:0", 0)], "f01": ids[("main:1", 1)], "f02": ids[("main:2", 2)],
                          "f03": 12345}
        with pytest.raises(sa.exc.IntegrityError):
            with engine.begin() as conn:
                with pg_json_rows.Pipeline(conn) as pipe:
                    pipe.write(set_apply._PG_MESSAGES, [_message(7, "main")])
                    pipe.write(set_apply._PG_FIELD_INSERT, rows[3:])  # (contact, f03) exists: a unique violation
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(OM)
                                .where(OM.c.sequence == 7)).scalar_one() == 0
    finally:
        engine.dispose()


def _message(i: int, prefix: str) -> dict:
    return {"partition_key": f"{prefix}:{i % 7}", "sequence": i, "account": "main", "contact_id": None,
            "kind": "insight.upsert",
            "payload": {"record": {"n": i, "name": "Zoë's \"quoted\" \\ name", "nested": [1, None, {"a": True}]},
                        "empty": {}, "trace": {}},
            "status": "pending", "attempts": 0,
            "next_attempt_at": (NOW + timedelta(seconds=i, microseconds=i)).astimezone(timezone(timedelta(hours=5))),
            "store_key": "uk" if i % 2 else None, "record_type": "event", "record_id": f"r-{i}",
            "record_version": None if i % 4 == 0 else 2 ** 40 + i, "priority": i % 3, "created_at": NOW,
            "updated_at": NOW}


def test_json_rows_insert_returns_every_rows_id_and_writes_what_sqlalchemy_writes(postgres_database):
    reset_postgres(postgres_database)
    engine = create_db_engine(postgres_database)
    upgrade_database(engine)
    try:
        with engine.begin() as conn:
            returned = set_apply._PG_MESSAGES.execute(conn, [_message(i, "json") for i in range(300)]).all()
            conn.execute(sa.insert(OM), [_message(i, "core") for i in range(300)])
        with engine.connect() as conn:
            by_id = {i: (p, s) for i, p, s in conn.execute(sa.select(OM.c.id, OM.c.partition_key, OM.c.sequence))}
            stored = conn.execute(sa.text(
                "SELECT split_part(partition_key, ':', 1), split_part(partition_key, ':', 2), sequence, account, "
                "contact_id, kind, payload::text, status, attempts, next_attempt_at, store_key, record_type, record_id, "
                "record_version, priority, created_at, updated_at FROM outbox_message ORDER BY sequence, partition_key"
            )).all()
    finally:
        engine.dispose()
    assert sorted(s for _, _, s in returned) == list(range(300))
    assert all(by_id[message_id] == (partition, sequence) for message_id, partition, sequence in returned)
    by_json = [tuple(r)[1:] for r in stored if r[0] == "json"]
    by_core = [tuple(r)[1:] for r in stored if r[0] == "core"]
    assert len(by_json) == 300 and by_json == by_core


def test_direct_reads_return_what_sqlalchemy_returns(postgres_database):
    """The batch's reads on the DBAPI cursor (field state, identifier owners, applied dedupe keys) return the rows and
    values a plain SQLAlchemy select returns: every kind of JSON value (a plain string read from its text, escaped
    ones, JSON null, SQL NULL), times in other offsets as UTC, keys that match nothing left out."""
    reset_postgres(postgres_database)
    engine = create_db_engine(postgres_database)
    upgrade_database(engine)
    try:
        with engine.begin() as conn:
            contact_id = conn.execute(sa.insert(CT).returning(CT.c.id), {
                "account": "main", "next_sequence": 1, "created_at": NOW, "updated_at": NOW}).scalar_one()
            conn.execute(INSERT_FIELD_STATE, [_core(_field_row(contact_id, i, v)) for i, v in enumerate(VALUES)])
            conn.execute(sa.text("UPDATE field_state SET value = NULL WHERE field = 'f03'"))  # SQL NULL, not JSON null
            conn.execute(sa.insert(CI), [{"account": "main", "kind": kind, "value": value, "contact_id": contact_id,
                                          "created_at": NOW} for kind, value in (("email", "a@example.com"),
                                                                                 ("customer", "Zoë \"q\" \\"))])
            conn.execute(INSERT_PROCESSED, [{"dedupe_key": key, "store_key": "uk", "resource_type": None,
                                             "resource_id": None, "outcome": "applied", "processed_at": NOW}
                                            for key in ("m-1", "m-2 \"x\"")])
            pairs = sorted([(contact_id, f"f{i:02d}") for i in range(len(VALUES))] + [(contact_id, "absent")])
            by_core = conn.execute(sa.select(FS.c.contact_id, FS.c.field, FS.c.value, FS.c.source_ref,
                                             FS.c.source_version, FS.c.source_ts)
                                   .where(FS.c.contact_id == contact_id)).all()
            by_direct = pg_json_rows.field_rows(conn, pairs)
            owners = pg_json_rows.owner_rows(conn, [("main", "email", "a@example.com"), ("main", "email", "b@x.com"),
                                                    ("main", "customer", "Zoë \"q\" \\"), ("other", "email", "a@example.com")])
            processed = pg_json_rows.processed_keys(conn, ["m-1", "m-2 \"x\"", "m-3"])
    finally:
        engine.dispose()
    assert sorted(by_direct, key=str) == sorted((tuple(r) for r in by_core), key=str)
    assert len(by_direct) == len(VALUES)
    assert {r[1]: r[2] for r in by_direct} == {f"f{i:02d}": None if i == 3 else v for i, v in enumerate(VALUES)}
    assert all(r[5] is None or r[5].tzinfo is timezone.utc for r in by_direct)
    assert sorted(owners) == [("main", "customer", "Zoë \"q\" \\", contact_id), ("main", "email", "a@example.com", contact_id)]
    assert sorted(processed) == ["m-1", "m-2 \"x\""]
