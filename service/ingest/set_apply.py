"""Set-based apply: a batch of contact events with a constant number of statements, not a few per event.

Applying one event one statement at a time costs about 15 statements (identity lookup, contact lock, field
state, sequence bump, outbox insert, field-state writes, dedupe check and record ...), most of their cost the
driver and SQLAlchemy's per-statement work, not the database. Here a batch of :class:`~ctdd.ingest.plans.ContactPlan`
(the queued events of one claim, the concurrent RPCs of one group commit) is applied in three phases:

1. **read** (:class:`BatchAccess` construction): the owners of every identifier of the batch (one query), the
   contacts they belong to, locked in id order (one ``SELECT ... ORDER BY id FOR UPDATE``), the field state of
   those contacts for every path the batch may read (one query), and which dedupe keys were applied (one
   query);
2. **decide**: each plan is applied in arrival order by the same code as on its own (``ContactPlan.apply``),
   against the batch's state in memory: an event sees what the events before it in the batch did;
3. **write** (:meth:`BatchAccess.flush`): new identifiers, conflicts, contact rows, outbox messages (their ids
   matched by partition and sequence), field state (new and changed rows), dedupe records and
   the browse timers, each with one multi-row statement (executemany for the updates). On PostgreSQL they go
   in one pipeline (``pg_json_rows.Pipeline``): the database runs each while the next one's rows are encoded,
   and the batch waits for it once; a field-state row finds the id of its message of the batch in SQL.

A contact that did not exist is inserted when an event creates it (its id is needed by what follows); that is
the one statement per event left, and only for new contacts.

Locking (PostgreSQL): the contacts are locked in one statement in ascending id order before anything is written,
so two processors applying batches that share contacts wait for each other instead of deadlocking, and the
global lock that made all processors take turns is not needed for such batches (``ctdd.ingest.inbox``).

Anything unexpected (a uniqueness race with another process at the write, a bug) raises: the caller rolls
the batch back and applies its units one at a time, each in its own savepoint, as before. What is written is
the same as when each plan is applied on its own (``tests/integration/test_set_apply_equivalence.py``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.db.engine import utcnow
from ctdd.delivery import outbox
from ctdd.domain.delta import StoredField
from ctdd.domain.identity import SINGLE_VALUED, resolve
from ctdd.ingest.access import (CI, CONTACT_READ, CONTACT_STATE, CT, FS, PE, INSERT_CONFLICT, INSERT_CONTACT, INSERT_FIELD_STATE,
                                FIELD_COLUMNS, INSERT_IDENTIFIER, INSERT_PROCESSED, INSERT_REJECTED, UPDATE_FIELD_STATE,
                                NewContactNeedsAddress)
from ctdd.ingest.plans import ContactPlan
from ctdd.ingest import pg_json_rows, sqlite_direct
from ctdd.programs import scheduling

log = logging.getLogger(__name__)


class BatchAccess:
    """:class:`~ctdd.ingest.access.ContactAccess` over state read up front for ``plans`` (see the module doc)."""

    def __init__(self, session: Session, plans: Sequence[ContactPlan]):
        session.flush()
        self.session = session
        self.conn = session.connection()
        #: the time of the batch: every row it writes is stamped with it (one transaction, one time)
        self._now = utcnow()
        self.postgres = self.conn.dialect.name == "postgresql"
        #: (account, kind, value) -> owner contact id (None: nobody), for every identifier the batch asks about
        self._owners: dict[tuple[str, str, str], int | None] = {}
        #: contact id -> its row (CONTACT_READ columns and next_sequence), locked
        self._contacts: dict[int, dict[str, Any]] = {}
        #: contact id -> path -> stored field; ``_known`` the paths whose absence is known
        self._fields: dict[int, dict[str, StoredField]] = {}
        self._known: dict[int, set[str]] = {}
        self._processed: set[str] = set()
        # buffered writes
        self._identifiers: list[dict[str, Any]] = []
        self._detached: list[tuple[int, str]] = []
        self._conflicts: list[dict[str, Any]] = []
        self._contact_state: dict[int, dict[str, Any]] = {}
        self._messages: list[dict[str, Any]] = []
        self._field_rows: dict[tuple[int, str], dict[str, Any]] = {}
        self._field_existing: set[tuple[int, str]] = set()
        self._processed_rows: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        self._views: dict[str, tuple[Any, list[scheduling.View], datetime]] = {}
        self._created: set[int] = set()
        #: the real ids of the messages enqueued (by placeholder), once flushed
        self.message_ids: list[int] = []
        self._read(plans)

    # -- phase 1: read ---------------------------------------------------------------------------------
    def _read(self, plans: Sequence[ContactPlan]) -> None:
        requests: list[tuple[str, dict[str, str]]] = []
        keys: list[str] = []
        for plan in plans:
            requests.append((plan.store.account, plan.sync.requested_identifiers(plan.contact)))
            if plan.dedupe_key is not None:
                keys.append(plan.dedupe_key)
        wanted = {(account, kind, value) for account, requested in requests for kind, value in requested.items()}
        self._owners = dict.fromkeys(wanted)
        self._read_owners(sorted(wanted))
        ids = sorted({cid for cid in self._owners.values() if cid is not None})
        if ids:
            result = self.conn.execute(*_keyed(_CONTACTS_BY_ID["postgresql" if self.postgres else "sqlite"], ids))
            names = tuple(result.keys())  # once: a row's own mapping view costs more than the row
            for row in result:
                self._contacts[row[0]] = dict(zip(names, row))
        # The field state each plan will read, of the contact its identifiers resolve to now (an earlier event
        # of the batch may change that: what was not read here is read when asked for, see stored_fields).
        pairs: set[tuple[int, str]] = set()
        for plan, (account, requested) in zip(plans, requests):
            contact_id = resolve(requested, {kind: self._owners[(account, kind, value)]
                                             for kind, value in requested.items()}).contact_id
            if contact_id is not None:
                pairs.update((contact_id, path) for path in plan.wanted_paths())
        if pairs:
            self._load_fields(pairs)
        if keys:
            self._processed.update(pg_json_rows.processed_keys(self.conn, keys) if self.postgres else
                                   self.conn.execute(*_keyed(_PROCESSED_KEYS, keys)).scalars())

    def _load_fields(self, pairs: Iterable[tuple[int, str]]) -> None:
        pairs = sorted(pairs)
        fields, known = self._fields, self._known
        for contact_id, path in pairs:
            paths = known.get(contact_id)
            if paths is None:
                paths = known[contact_id] = set()
            if contact_id not in fields:  # (a contact asked about later, in stored_fields, has its paths already)
                fields[contact_id] = {}
            paths.add(path)
        # the rows SQLAlchemy would return, without its per-row cost
        rows = (pg_json_rows if self.postgres else sqlite_direct).field_rows(self.conn, pairs)
        existing = self._field_existing
        for contact_id, path, value, ref, version, ts in rows:
            fields[contact_id][path] = StoredField(value, ref, version, ts)
            existing.add((contact_id, path))

    def _read_owners(self, keys: list[tuple[str, str, str]]) -> None:
        rows = (pg_json_rows.owner_rows(self.conn, keys) if self.postgres
                else self.conn.execute(*_keyed(_OWNERS_BY_KEY, keys)))
        for account, kind, value, contact_id in rows:
            self._owners[(account, kind, value)] = contact_id

    # -- phase 2: the ContactAccess the plans apply through --------------------------------------------
    def now(self) -> datetime:
        return self._now

    def owners(self, account: str, requested: Mapping[str, str]) -> dict[str, int | None]:
        missing = [(account, kind, value) for kind, value in requested.items()
                   if (account, kind, value) not in self._owners]
        if missing:  # not read up front (a plan asked for more than it announced): read now
            self._owners.update(dict.fromkeys(missing))
            self._read_owners(missing)
        return {kind: self._owners[(account, kind, value)] for kind, value in requested.items()}

    def create_contact(self, account: str, row: Mapping[str, Any], now: datetime) -> int:
        values = {**row, "account": account, "created_at": now, "updated_at": now}
        contact_id = (self.conn.execute(INSERT_CONTACT, values).scalar_one() if self.postgres
                      else _SQLITE_CONTACT.execute(self.conn, [values])[0][0])
        self._contacts[contact_id] = {**row, "id": contact_id}
        self._fields[contact_id] = {}
        self._known[contact_id] = _EVERYTHING
        self._created.add(contact_id)
        return contact_id

    def lock_contact(self, contact_id: int) -> dict[str, Any]:
        row = self._contacts.get(contact_id)
        if row is None:  # an owner read after the batch's lock (see owners): lock it now
            stmt = (sa.select(*(CT.c[name] for name in CONTACT_READ), CT.c.next_sequence)
                    .where(CT.c.id == contact_id))
            row = self._contacts[contact_id] = dict(
                self.conn.execute(stmt.with_for_update() if self.postgres else stmt).one()._mapping)
        return {name: row[name] for name in CONTACT_READ}

    def stored_fields(self, contact_id: int, paths: Iterable[str]) -> dict[str, StoredField]:
        paths = list(paths)
        known = self._known.setdefault(contact_id, set())
        if known is not _EVERYTHING:
            missing = [(contact_id, p) for p in paths if p not in known]
            if missing:
                self._load_fields(missing)
        fields = self._fields.setdefault(contact_id, {})
        return {p: fields[p] for p in paths if p in fields}

    def delete_identifiers(self, contact_id: int, kind: str) -> None:
        self._identifiers = [r for r in self._identifiers if not (r["contact_id"] == contact_id and r["kind"] == kind)]
        for key, owner in self._owners.items():
            if owner == contact_id and key[1] == kind:
                self._owners[key] = None
        if contact_id not in self._created:
            self._detached.append((contact_id, kind))

    def insert_identifiers(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._owners[(row["account"], row["kind"], row["value"])] = row["contact_id"]
        self._identifiers.extend(rows)

    def insert_conflicts(self, rows: list[dict[str, Any]]) -> None:
        self._conflicts.extend(rows)

    def update_contact(self, contact_id: int, state: Mapping[str, Any], now: datetime) -> None:
        self._contacts[contact_id].update(state)
        self._contact_state.setdefault(contact_id, {}).update(state, updated_at=now)

    def enqueue(self, *, contact_id: int, account: str, kind: str, payload: Any, ref: outbox.RecordRef,
                now: datetime, priority: int, not_before: datetime | None = None) -> int:
        row = self._contacts[contact_id]
        sequence = row["next_sequence"]
        row["next_sequence"] = sequence + 1
        self._contact_state.setdefault(contact_id, {})["updated_at"] = now
        self._messages.append({
            "partition_key": outbox.partition_key(account, contact_id), "sequence": sequence, "account": account,
            "contact_id": contact_id, "kind": kind, "payload": outbox.with_trace(payload),
            "status": outbox.OutboxStatus.PENDING,
            "attempts": 0, "next_attempt_at": max(now, not_before) if not_before else now,
            "store_key": ref.store_key, "record_type": ref.record_type, "record_id": ref.record_id,
            "record_version": ref.record_version, "priority": priority, "created_at": now, "updated_at": now,
        })
        return -len(self._messages)  # a placeholder until flush

    def write_fields(self, contact_id: int, rows: list[dict[str, Any]], existing: set[str]) -> None:
        fields = self._fields.setdefault(contact_id, {})
        for row in rows:
            path = row["field"]
            fields[path] = StoredField(row["value"], row["source_ref"], row["source_version"], row["source_ts"])
            self._field_rows[(contact_id, path)] = {**row, "contact_id": contact_id}

    def processed(self, key: str) -> bool:
        return key in self._processed

    def mark_processed(self, row: dict[str, Any]) -> None:
        self._processed.add(row["dedupe_key"])
        self._processed_rows.append(row)

    def product_viewed(self, store: Any, contact_id: int, product_id: str, viewed_at: datetime, now: datetime,
                       data: dict | None) -> None:
        if scheduling.enabled_program(store, "browse_abandonment") is None:
            return
        entry = self._views.setdefault(store.key, (store, [], now))
        entry[1].append(scheduling.View(contact_id, product_id, viewed_at, data))

    def reject(self, row: dict[str, Any]) -> None:
        self._rejected.append(row)

    # -- phase 3: write ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered (a few multi-row statements); then :meth:`real_id` answers."""
        conn = self.conn
        for contact_id, kind in dict.fromkeys(self._detached):
            conn.execute(sa.delete(CI).where(CI.c.contact_id == contact_id, CI.c.kind == kind,
                                             CI.c.kind.in_(SINGLE_VALUED)))
        if self.postgres:
            self._flush_pipelined()
        else:
            self._flush_one_by_one()
        if self._rejected:
            conn.execute(INSERT_REJECTED, self._rejected)
        for store, views, at in self._views.values():
            scheduling.on_products_viewed(self.session, store, views, at)

    def _contact_rows(self) -> list[dict[str, Any]]:
        """The contacts' changed state and next sequence, as rows of ``_UPDATE_CONTACT``."""
        rows = []
        for contact_id, changed in self._contact_state.items():
            row = self._contacts[contact_id]
            rows.append({"b_id": contact_id, "b_next_sequence": row["next_sequence"],
                         "b_updated_at": changed.get("updated_at", self._now),
                         **{f"b_{name}": row[name] for name in _STATE}})
        return rows

    def _flush_one_by_one(self) -> None:
        """SQLite: each write in turn; the messages' ids come back before the field-state rows that point at them
        are written."""
        conn = self.conn
        if self._identifiers:
            self._write(INSERT_IDENTIFIER, self._identifiers)
        if self._conflicts:
            conn.execute(INSERT_CONFLICT, self._conflicts)
        if self._contact_state:
            self._write(_UPDATE_CONTACT, self._contact_rows())
        if self._messages:
            self._matched_ids(_SQLITE_MESSAGES.execute(conn, self._messages))
        inserts, updates = [], []
        for key, row in self._field_rows.items():
            row = {**row, "message_id": self.real_id(row["message_id"])}
            if key in self._field_existing:
                updates.append({f"b_{k}": v for k, v in row.items()})
            else:
                inserts.append(row)
        if updates:
            self._write(UPDATE_FIELD_STATE, updates)
        if inserts:
            self._write(INSERT_FIELD_STATE, inserts)
        if self._processed_rows:
            self._write(INSERT_PROCESSED, self._processed_rows)

    def _flush_pipelined(self) -> None:
        """PostgreSQL: every write in one pipeline (``pg_json_rows.Pipeline``): PostgreSQL runs each statement
        while the next one's rows are turned into JSON, and the batch waits for the database once. A field-state
        row that points at a message of this batch finds its id by the message's partition and sequence, in SQL."""
        inserts, updates = [], []
        for key, row in self._field_rows.items():
            message_id = row["message_id"]
            if message_id is not None and message_id < 0:
                message = self._messages[-message_id - 1]
                row = {**row, "message_id": None, "message_partition": message["partition_key"],
                       "message_sequence": message["sequence"]}
            else:
                row = {**row, "message_partition": None, "message_sequence": None}
            (updates if key in self._field_existing else inserts).append(row)
        with pg_json_rows.Pipeline(self.conn) as pipe:
            if self._identifiers:
                pipe.write(_PG_WRITES[INSERT_IDENTIFIER], self._identifiers)
            if self._contact_state:
                pipe.write(_PG_WRITES[_UPDATE_CONTACT], self._contact_rows())
            messages = pipe.write(_PG_MESSAGES, self._messages) if self._messages else None
            if self._messages:
                pipe.execute(_PG_NOTIFY)
            if updates:
                pipe.write(_PG_FIELD_UPDATE, updates)
            if inserts:
                pipe.write(_PG_FIELD_INSERT, inserts)
            if self._processed_rows:
                pipe.write(_PG_WRITES[INSERT_PROCESSED], self._processed_rows)
        if messages is not None:
            self._matched_ids(messages.fetchall())
            messages.close()
        if self._conflicts:
            self.conn.execute(INSERT_CONFLICT, self._conflicts)

    def _matched_ids(self, inserted: Iterable[tuple[int, str, int]]) -> None:
        """The messages' ids from the INSERT's RETURNING (id, partition, sequence). RETURNING of a multi-row INSERT
        comes in no promised order: each id is matched to its message by (partition, sequence), unique per message
        (asking SQLAlchemy to sort by parameter order makes it insert one row per statement on SQLite)."""
        by_key = {(partition, sequence): message_id for message_id, partition, sequence in inserted}
        self.message_ids = [by_key[(m["partition_key"], m["sequence"])] for m in self._messages]

    def _write(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        """``conn.execute(statement, rows)``, written as one statement on PostgreSQL (``ctdd.ingest.pg_json_rows``)
        and on the DBAPI cursor on SQLite (``ctdd.ingest.sqlite_direct``)."""
        (_PG_WRITES if self.postgres else _SQLITE_WRITES)[statement].execute(self.conn, rows)

    def real_id(self, message_id: int | None) -> int | None:
        """The outbox id of ``message_id`` (a placeholder before :meth:`flush`)."""
        if message_id is None or message_id >= 0:
            return message_id
        return self.message_ids[-message_id - 1]


class _Everything(set):
    """The known paths of a contact created in the batch: every path (it has no stored field)."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()
_STATE = CONTACT_STATE
_UPDATE_CONTACT = (
    sa.update(CT)
    .where(CT.c.id == sa.bindparam("b_id"))
    .values(next_sequence=sa.bindparam("b_next_sequence"),
            updated_at=sa.bindparam("b_updated_at", type_=CT.c.updated_at.type),
            **{name: sa.bindparam(f"b_{name}", type_=CT.c[name].type) for name in _STATE})
)
#: the statements :meth:`BatchAccess._write` runs on SQLite, with the DBAPI's executemany
_SQLITE_WRITES = {statement: sqlite_direct.DirectWrite(statement) for statement in (
    INSERT_IDENTIFIER, _UPDATE_CONTACT, UPDATE_FIELD_STATE, INSERT_FIELD_STATE, INSERT_PROCESSED)}
#: ... and on PostgreSQL, as one statement each (the rows as one JSON parameter; the field state's are below)
_PG_WRITES = {
    INSERT_IDENTIFIER: pg_json_rows.JsonRowsWrite(CI, ("account", "kind", "value", "contact_id", "created_at")),
    _UPDATE_CONTACT: pg_json_rows.JsonRowsWrite(CT, ("next_sequence", "updated_at", *_STATE), keys=("id",),
                                           params={name: f"b_{name}" for name in ("id", "next_sequence", "updated_at",
                                                                                   *_STATE)}),
    INSERT_PROCESSED: pg_json_rows.JsonRowsWrite(PE, ("dedupe_key", "store_key", "resource_type", "resource_id", "outcome",
                                                 "processed_at")),
}
#: ... and the field-state rows, in a pipeline with the messages they point at: a message of the batch by its
#: partition and sequence (its id is not known yet when the rows are sent)
_MESSAGE_REF = {"message_partition": "text", "message_sequence": "bigint"}
_MESSAGE_ID = ("COALESCE(u.message_id, (SELECT om.id FROM outbox_message om "
               "WHERE om.partition_key = u.message_partition AND om.sequence = u.message_sequence))")
_PG_FIELD_UPDATE = pg_json_rows.JsonRowsWrite(FS, FIELD_COLUMNS, keys=("contact_id", "field"), extra=_MESSAGE_REF,
                                              values={"message_id": _MESSAGE_ID})
_PG_FIELD_INSERT = pg_json_rows.JsonRowsWrite(FS, ("contact_id", "field", *FIELD_COLUMNS), extra=_MESSAGE_REF,
                                              values={"message_id": _MESSAGE_ID})
_PG_NOTIFY = f"NOTIFY {outbox.NOTIFY_CHANNEL}"
#: SQLite: a new contact's row (INSERT_CONTACT) on the DBAPI cursor
_SQLITE_CONTACT = sqlite_direct.DirectInsertReturning(CT, ("id",))
#: SQLite: the outbox messages with a multi-row INSERT ... RETURNING built on the DBAPI cursor (ctdd.ingest.sqlite_direct)
_SQLITE_MESSAGES = sqlite_direct.DirectInsertReturning(outbox.OM, ("id", "partition_key", "sequence"))
#: PostgreSQL: the same as one statement whose text does not grow with the rows (ctdd.ingest.pg_json_rows)
_PG_MESSAGES = pg_json_rows.JsonRowsWrite(outbox.OM, (
    "partition_key", "sequence", "account", "contact_id", "kind", "payload", "status", "attempts", "next_attempt_at",
    "store_key", "record_type", "record_id", "record_version", "priority", "created_at", "updated_at"),
    returning=("id", "partition_key", "sequence"))


# SQLite: reads by many keys with ONE bound parameter, the keys as a JSON array (of arrays: json_each), so the
# statement text never changes with the number of keys and is compiled once, where ``(a, b) IN ((?, ?), ...)`` is
# rendered again for every batch. PostgreSQL's run the same way on the DBAPI cursor (ctdd.ingest.pg_json_rows).
_OWNERS_BY_KEY = sa.text(
    "SELECT ci.account, ci.kind, ci.value, ci.contact_id FROM json_each(:keys) AS t "
    "JOIN contact_identifier ci ON ci.account = json_extract(t.value, '$[0]') "
    "AND ci.kind = json_extract(t.value, '$[1]') AND ci.value = json_extract(t.value, '$[2]')")
#: (what ctdd.ingest.sqlite_direct.field_rows runs on the DBAPI cursor; its tests compare the two)
_FIELDS_BY_PAIR = sa.text(
    "SELECT fs.contact_id, fs.field, fs.value, fs.source_ref, fs.source_version, fs.source_ts FROM json_each(:keys) AS t "
    "JOIN field_state fs ON fs.contact_id = json_extract(t.value, '$[0]') AND fs.field = json_extract(t.value, '$[1]')"
).columns(FS.c.contact_id, FS.c.field, FS.c.value, FS.c.source_ref, FS.c.source_version, FS.c.source_ts)
_PROCESSED_KEYS = sa.text("SELECT dedupe_key FROM processed_event WHERE dedupe_key IN (SELECT value FROM json_each(:keys))")
# ... and the contacts of the batch, locked in id order on PostgreSQL (FOR UPDATE)
_CONTACTS_BY_ID = {
    dialect: sa.text(
        f"SELECT {', '.join(CONTACT_READ)}, next_sequence FROM contact WHERE id IN (SELECT {element}) ORDER BY id"
        + (" FOR UPDATE" if dialect == "postgresql" else "")
    ).columns(*(CT.c[name] for name in CONTACT_READ), CT.c.next_sequence)
    for dialect, element in (("postgresql", "CAST(value AS bigint) FROM json_array_elements_text(CAST(:keys AS json))"),
                             ("sqlite", "value FROM json_each(:keys)"))
}


def _keyed(statement: Any, keys: Sequence[Any]) -> tuple[Any, dict]:
    """``statement`` and its one parameter: ``keys`` (values or tuples) as a JSON array."""
    return statement, {"keys": json.dumps(keys)}


def apply_plans(session: Session, plans: Sequence[ContactPlan]) -> list[tuple[bool, Any]]:
    """Apply ``plans`` set-based, in order, inside the caller's transaction: per plan (True, its result) or
    (False, the exception of a SyncContact that cannot create its contact). Anything else raises (the caller
    rolls back and applies the plans one by one)."""
    access = BatchAccess(session, plans)
    results: list[tuple[bool, Any]] = []
    for plan in plans:
        try:
            results.append((True, plan.apply(access)))
        except NewContactNeedsAddress as exc:  # raised before the plan wrote anything
            results.append((False, exc))
    access.flush()
    for ok, value in results:
        if ok:
            ids = value.outbox_message_ids
            ids[:] = [access.real_id(mid) for mid in ids]
    return results
