"""How the contact core reads and writes the database: one statement at a time (:class:`DirectAccess`).

``ctdd.ingest.contact_sync`` and ``ctdd.ingest.plans`` decide what to write (identity, delta, outbox messages,
field state) and ask an *access* object for everything they read and write. Two kinds exist:

- :class:`DirectAccess` (here): every call is a prepared Core statement, executed at once in the caller's
  transaction. Used by a unit of work applied on its own (SyncContact without group commit, orders and
  carts, ``set_based_apply = false``).
- :class:`ctdd.ingest.set_apply.BatchAccess`: the state of a whole batch of events is read up front with a few
  set queries; the calls answer from memory and the writes are buffered, then written with multi-row
  statements when the batch ends.

Both answer the same questions the same way, so a stream of events leaves the same database whichever
applies it (``tests/integration/test_set_apply_equivalence.py``).

Message ids: :meth:`enqueue` answers an ``int``. With :class:`DirectAccess` it is the outbox row's id; with
``BatchAccess`` a placeholder (negative) that the batch replaces by the real id once the rows are written
(in field state and in the results).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.db.engine import utcnow
from ctdd.db.models import (Contact, ContactIdentifier, FieldState, IdentityConflictRecord, ProcessedEvent,
                             RejectedRecord)
from ctdd.delivery import outbox
from ctdd.domain.delta import StoredField

#: contact columns the core reads (``id`` and ``dotdigital_contact_id`` and Dotdigital's channel statuses) and
#: may change (the rest)
CONTACT_STATE = ("email", "mobile_number", "shop_email_consent", "shop_email_consent_at", "shop_sms_consent",
                 "shop_sms_consent_at")
CONTACT_READ = ("id", "dotdigital_contact_id", "dd_email_status", "dd_email_status_at", "dd_sms_status",
                "dd_sms_status_at", *CONTACT_STATE)
NEW_CONTACT: dict[str, Any] = {**dict.fromkeys(CONTACT_READ), "next_sequence": 1}
del NEW_CONTACT["id"]


class NewContactNeedsAddress(Exception):
    """No identifier matched and there is neither an email nor a mobile number to create a contact with."""


class ContactAccess(Protocol):
    """What the contact core needs of the database (see the module docstring)."""

    def now(self) -> datetime:
        """The time the rows written are stamped with: the clock's now, or the batch's time (set-based: one
        transaction, one time, as PostgreSQL's ``now()`` is the time of the transaction)."""

    def owners(self, account: str, requested: Mapping[str, str]) -> dict[str, int | None]:
        """kind -> the contact owning the requested value of that kind (None: nobody)."""

    def create_contact(self, account: str, row: Mapping[str, Any], now: datetime) -> int:
        """Insert a new contact with ``row`` (the columns of :data:`CONTACT_READ` but ``id``); its id."""

    def lock_contact(self, contact_id: int) -> dict[str, Any]:
        """The contact's columns of :data:`CONTACT_READ`, the row locked until the transaction ends."""

    def stored_fields(self, contact_id: int, paths: Iterable[str]) -> dict[str, StoredField]:
        """The field state of ``paths`` the contact has (absent paths are left out)."""

    def delete_identifiers(self, contact_id: int, kind: str) -> None:
        """Detach every identifier of ``kind`` from the contact (a single-valued kind moves)."""

    def insert_identifiers(self, rows: list[dict[str, Any]]) -> None:
        """Attach identifiers (account, kind, value, contact_id, created_at)."""

    def insert_conflicts(self, rows: list[dict[str, Any]]) -> None:
        """Record identity conflicts (no identifier values: hashes)."""

    def update_contact(self, contact_id: int, state: Mapping[str, Any], now: datetime) -> None:
        """Write the contact columns of :data:`CONTACT_STATE`."""

    def enqueue(self, *, contact_id: int, account: str, kind: str, payload: Any, ref: outbox.RecordRef,
                now: datetime, priority: int, not_before: datetime | None = None) -> int:
        """Append a message to the contact's partition (next sequence number); its id (or placeholder)."""

    def write_fields(self, contact_id: int, rows: list[dict[str, Any]], existing: set[str]) -> None:
        """Write field state rows (``field``, ``value``, ``source_*``, ``message_id``, ``updated_at``); a row whose
        field is in ``existing`` replaces the stored one, the others are new."""

    def processed(self, key: str) -> bool:
        """Whether the event of dedupe ``key`` was applied already."""

    def mark_processed(self, row: dict[str, Any]) -> None:
        """Record an applied event (processed_event: dedupe_key, store_key, resource_type, resource_id,
        outcome, processed_at)."""

    def product_viewed(self, store: Any, contact_id: int, product_id: str, viewed_at: datetime, now: datetime,
                       data: dict | None) -> None:
        """The browse-abandonment side of a product view (``ctdd.programs.scheduling.on_product_viewed``)."""

    def reject(self, row: dict[str, Any]) -> None:
        """Keep a record that was not sent visible (a ``rejected_record`` row: no personal data)."""


class DirectAccess:
    """:class:`ContactAccess` executing each call at once in ``session``'s transaction."""

    def __init__(self, session: Session):
        session.flush()  # ORM objects the caller has pending, as the ORM's autoflush would
        self.session = session
        self.conn = session.connection()

    def now(self) -> datetime:
        return utcnow()

    def owners(self, account: str, requested: Mapping[str, str]) -> dict[str, int | None]:
        owners: dict[str, int | None] = dict.fromkeys(requested)
        if requested:
            params: dict[str, Any] = {"account": account}
            for kind, value in requested.items():
                params[f"v_{kind}"] = value
            for kind, owner in self.conn.execute(owners_statement(tuple(requested)), params):
                owners[kind] = owner
        return owners

    def create_contact(self, account: str, row: Mapping[str, Any], now: datetime) -> int:
        return self.conn.execute(INSERT_CONTACT, {**row, "account": account, "created_at": now,
                                                  "updated_at": now}).scalar_one()

    def lock_contact(self, contact_id: int) -> dict[str, Any]:
        return dict(self.conn.execute(_LOCK_CONTACT, {"contact_id": contact_id}).one()._mapping)

    def stored_fields(self, contact_id: int, paths: Iterable[str]) -> dict[str, StoredField]:
        return {r[0]: StoredField(r[1], r[2], r[3], r[4])
                for r in self.conn.execute(_SELECT_FIELDS, {"contact_id": contact_id, "fields": sorted(paths)})}

    def delete_identifiers(self, contact_id: int, kind: str) -> None:
        self.conn.execute(DELETE_IDENTIFIERS, {"contact_id": contact_id, "kind": kind})

    def insert_identifiers(self, rows: list[dict[str, Any]]) -> None:
        # a lost uniqueness race raises IntegrityError here: the caller retries the unit
        self.conn.execute(INSERT_IDENTIFIER, rows)

    def insert_conflicts(self, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(INSERT_CONFLICT, rows)

    def update_contact(self, contact_id: int, state: Mapping[str, Any], now: datetime) -> None:
        self.conn.execute(UPDATE_CONTACT, {**state, "contact_id": contact_id, "now": now})

    def enqueue(self, *, contact_id: int, account: str, kind: str, payload: Any, ref: outbox.RecordRef,
                now: datetime, priority: int, not_before: datetime | None = None) -> int:
        return outbox.enqueue(self.session, contact_id=contact_id, account=account, kind=kind, payload=payload,
                              ref=ref, now=now, priority=priority, **({"not_before": not_before} if not_before else {}))

    def write_fields(self, contact_id: int, rows: list[dict[str, Any]], existing: set[str]) -> None:
        updates = [{f"b_{k}": v for k, v in r.items()} | {"b_contact_id": contact_id}
                   for r in rows if r["field"] in existing]
        inserts = [{**r, "contact_id": contact_id} for r in rows if r["field"] not in existing]
        if updates:
            self.conn.execute(UPDATE_FIELD_STATE, updates)
        if inserts:
            self.conn.execute(INSERT_FIELD_STATE, inserts)

    def processed(self, key: str) -> bool:
        return self.conn.execute(SELECT_PROCESSED, {"key": key}).first() is not None

    def mark_processed(self, row: dict[str, Any]) -> None:
        # a concurrent insert of the same key raises IntegrityError: the unit is run again, finds it
        self.conn.execute(INSERT_PROCESSED, row)

    def product_viewed(self, store: Any, contact_id: int, product_id: str, viewed_at: datetime, now: datetime,
                       data: dict | None) -> None:
        from ctdd.ingest import triggers  # the programs' ingest side (imports the scheduling module)

        triggers.product_viewed(self.session, store, contact_id, product_id, viewed_at, now, data=data)

    def reject(self, row: dict[str, Any]) -> None:
        self.conn.execute(INSERT_REJECTED, row)


# -- prepared statements (built once: a reused statement keeps its compiled form) ---------------------------
CI = ContactIdentifier.__table__
CT = Contact.__table__
FS = FieldState.__table__
ICR = IdentityConflictRecord.__table__
PE = ProcessedEvent.__table__

_LOCK_CONTACT = (
    sa.select(*(CT.c[name] for name in CONTACT_READ)).where(CT.c.id == sa.bindparam("contact_id")).with_for_update()
)
INSERT_CONTACT = sa.insert(CT).returning(CT.c.id)
UPDATE_CONTACT = (
    sa.update(CT)
    .where(CT.c.id == sa.bindparam("contact_id"))
    .values(updated_at=sa.bindparam("now", type_=CT.c.updated_at.type),
            **{name: sa.bindparam(name, type_=CT.c[name].type) for name in CONTACT_STATE})
)
_SELECT_FIELDS = sa.select(FS.c.field, FS.c.value, FS.c.source_ref, FS.c.source_version, FS.c.source_ts).where(
    FS.c.contact_id == sa.bindparam("contact_id"), FS.c.field.in_(sa.bindparam("fields", expanding=True))
)
FIELD_COLUMNS = ("value", "source_ref", "source_version", "source_ts", "message_id", "updated_at")
#: parameters ``b_<column>`` (``b_contact_id``, ``b_field`` and :data:`FIELD_COLUMNS`)
UPDATE_FIELD_STATE = (
    sa.update(FS)
    .where(FS.c.contact_id == sa.bindparam("b_contact_id"), FS.c.field == sa.bindparam("b_field"))
    .values(**{name: sa.bindparam(f"b_{name}", type_=FS.c[name].type) for name in FIELD_COLUMNS})
)
INSERT_FIELD_STATE = sa.insert(FS)
SELECT_FIELD_VALUE = sa.select(FS.c.value).where(FS.c.contact_id == sa.bindparam("contact_id"),
                                                 FS.c.field == sa.bindparam("field"))
DELETE_IDENTIFIERS = sa.delete(CI).where(CI.c.contact_id == sa.bindparam("contact_id"),
                                         CI.c.kind == sa.bindparam("kind"))
INSERT_IDENTIFIER = sa.insert(CI)
INSERT_CONFLICT = sa.insert(ICR)
SELECT_PROCESSED = sa.select(PE.c.dedupe_key).where(PE.c.dedupe_key == sa.bindparam("key"))
INSERT_PROCESSED = sa.insert(PE)
INSERT_REJECTED = sa.insert(RejectedRecord.__table__)
_OWNERS: dict[tuple[str, ...], sa.Executable] = {}


def owners_statement(kinds: tuple[str, ...]):
    """(kind, contact_id) of the owners of the requested identifiers: one index lookup per kind, one round trip."""
    stmt = _OWNERS.get(kinds)
    if stmt is None:
        selects = [
            sa.select(CI.c.kind, CI.c.contact_id).where(
                CI.c.account == sa.bindparam("account"), CI.c.kind == kind,
                CI.c.value == sa.bindparam(f"v_{kind}"),
            )
            for kind in kinds
        ]
        stmt = selects[0] if len(selects) == 1 else sa.union_all(*selects)
        _OWNERS[kinds] = stmt
    return stmt


def processed_row(key: str, store_key: str, resource_type: str, resource_id: str, outcome: str,
                  now: datetime | None = None) -> dict[str, Any]:
    """The ``processed_event`` row of an applied event (processed ``now``, by default the clock's)."""
    return {"dedupe_key": key, "store_key": store_key, "resource_type": resource_type or None,
            "resource_id": resource_id or None, "outcome": outcome, "processed_at": now or utcnow()}
