"""The ``catalog_record`` table: per store and collection, each record's wanted content and hash, and the
hash Dotdigital has. A record is ``pending`` while the two differ (and the wanted hash is not one Dotdigital
refused); a removal is a record whose wanted content is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ctdd.db.models import CatalogRecord, RejectedRecord

CR = CatalogRecord.__table__
RR = RejectedRecord.__table__


@dataclass(frozen=True)
class Wanted:
    """A record as the export or a product message wants it (``record`` None: remove it; ``failed``: a plugin
    could not map it, the reason naming the plugin and the hook: the stored record is kept as it is)."""

    key: str
    kind: str
    product_id: str | None
    version: int | None
    record: dict[str, Any] | None
    hash: str | None
    failed: str | None = None


def _pending(hash_: str | None, sent: str | None, rejected: str | None) -> bool:
    return hash_ != sent and not (hash_ is not None and hash_ == rejected)


def apply(conn: Connection, store_key: str, collection: str, wanted: Iterable[Wanted], now: datetime, *,
          run: str | None = None) -> int:
    """Write wanted records; returns how many became pending (changed content). A record built from an
    older product version than the stored one is ignored (product messages may arrive out of order)."""
    wanted = list(wanted)
    failed = [w for w in wanted if w.failed is not None]
    if failed:
        _reject_failed(conn, store_key, collection, failed, now, run)
        wanted = [w for w in wanted if w.failed is None]
    if not wanted:
        return 0
    keys = [w.key for w in wanted]
    rows = {r.record_key: r for r in conn.execute(
        sa.select(CR.c.record_key, CR.c.sent_hash, CR.c.rejected, CR.c.hash, CR.c.version)
        .where(CR.c.store_key == store_key, CR.c.collection == collection, CR.c.record_key.in_(keys)))}
    changed = 0
    inserts, updates = [], []
    for w in wanted:
        row = rows.get(w.key)
        if row is None:
            if w.record is None:
                continue  # never sent, nothing to remove
            inserts.append({"store_key": store_key, "collection": collection, "record_key": w.key, "kind": w.kind,
                            "product_id": w.product_id, "version": w.version, "record": w.record, "hash": w.hash,
                            "sent_hash": None, "rejected": None, "pending": True, "import_id": None,
                            "seen_run": run, "updated_at": now})
            changed += 1
            continue
        if w.version is not None and row.version is not None and w.version < row.version:
            continue
        pending = _pending(w.hash, row.sent_hash, row.rejected)
        if w.hash != row.hash and pending:
            changed += 1
        updates.append({"k": w.key, "product_id": w.product_id, "version": w.version, "record": w.record,
                        "hash": w.hash, "pending": pending, "seen_run": run, "updated_at": now,
                        "same": w.hash == row.hash})
    if inserts:
        conn.execute(sa.insert(CR), inserts)
    for same in (True, False):  # one statement per kind, executed for each of its records (executemany)
        group = [u for u in updates if u["same"] is same]
        if not group:
            continue
        values: dict[str, Any] = {"product_id": sa.bindparam("b_product_id"), "version": sa.bindparam("b_version"),
                                  "pending": sa.bindparam("b_pending"), "updated_at": now}
        if run is not None:
            values["seen_run"] = run
        if not same:
            # new content: an import still carrying the old content no longer settles this record
            values.update(record=sa.bindparam("b_record", type_=CR.c.record.type), hash=sa.bindparam("b_hash"),
                          import_id=None)
        conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                         CR.c.record_key == sa.bindparam("b_k")).values(**values),
                     [{"b_k": u["k"], "b_product_id": u["product_id"], "b_version": u["version"],
                       "b_pending": u["pending"], **({} if same else {"b_record": u["record"], "b_hash": u["hash"]})}
                      for u in group])
    return changed


def _reject_failed(conn: Connection, store_key: str, collection: str, failed: list[Wanted], now: datetime,
                   run: str | None) -> None:
    """Records a plugin failed to map: one ``rejected_record`` row each (operation ``catalog.map``); a stored
    record stays as it is, and counts as seen by the run (a full export does not remove it)."""
    conn.execute(sa.insert(RR), [
        {"operation": "catalog.map", "store_key": store_key, "record_type": w.kind, "record_id": w.product_id or w.key,
         "record_version": w.version, "reason": f"catalog record {w.key!r} of {collection} not mapped: {w.failed}",
         "violations": None, "created_at": now} for w in failed])
    if run is not None:
        conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                         CR.c.record_key.in_([w.key for w in failed])).values(seen_run=run))


def product_keys(conn: Connection, store_key: str, collection: str, product_ids: Iterable[str]) -> dict[str, set[str]]:
    """The record keys stored per product (a product has one, or one per variant)."""
    out: dict[str, set[str]] = {}
    ids = list(product_ids)
    for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
        for key, product_id in conn.execute(
                sa.select(CR.c.record_key, CR.c.product_id)
                .where(CR.c.store_key == store_key, CR.c.collection == collection, CR.c.product_id.in_(chunk),
                       CR.c.hash.is_not(None))):
            out.setdefault(product_id, set()).add(key)
    return out


def removals_for_unseen(conn: Connection, store_key: str, collection: str, run: str, now: datetime, *,
                        written_before: datetime | None = None) -> int:
    """After a full read: every record the run did not see has left the store (unless it was written at or
    after ``written_before``: a product message during the run); returns how many."""
    unseen = CR.c.seen_run.is_(None) | (CR.c.seen_run != run)
    where: tuple = (CR.c.store_key == store_key, CR.c.collection == collection, CR.c.hash.is_not(None), unseen)
    if written_before is not None:
        where += (CR.c.updated_at < written_before,)
    count = conn.execute(sa.select(sa.func.count()).select_from(CR).where(*where)).scalar_one()
    conn.execute(sa.update(CR).where(*where).values(record=None, hash=None, pending=CR.c.sent_hash.is_not(None),
                                                     updated_at=now))
    return int(count)


def forget_sent(conn: Connection, store_key: str, collection: str, now: datetime) -> None:
    """Every record of the collection is to be sent again (a removal stays a removal), refused ones too."""
    conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection).values(
        sent_hash=None, rejected=None, import_id=None, updated_at=now,
        pending=CR.c.hash.is_not(None) | CR.c.sent_hash.is_not(None)))


def pending_count(conn: Connection, store_key: str, collection: str) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(CR).where(
        CR.c.store_key == store_key, CR.c.collection == collection, CR.c.pending.is_(True))).scalar_one())


def stored(conn: Connection, store_key: str, collection: str) -> dict[str, Any]:
    """Every stored record key -> its row (tests and the operator)."""
    return {r.record_key: r for r in conn.execute(
        sa.select(CR).where(CR.c.store_key == store_key, CR.c.collection == collection))}
