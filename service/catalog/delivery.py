"""Pending catalog records to Dotdigital.

Upserts go in bulk imports (``PUT /insightData/v3/import``, account scope; at most ``import_max_records``
records and ``import_max_bytes`` per import), polled with the outbox's import poller
(``ctdd.delivery.bulk.poll_import``, which learns how long imports take, so an import usually costs a start
and one poll). The import id is stored on its records before polling: a process that dies meanwhile leaves
it there and the next run reads that import's report instead of sending the records again. A 429
``tooManyActiveImports`` (Dotdigital runs at most 5 insight imports per account, shared with the outbox's
imports) waits and tries again. Every record Dotdigital rejects is logged in ``rejected_record`` with its
failure reason and product, and is not sent again until its content changes. Removals go in bulk deletes
(``DELETE /insightData/v3/accounts/{collection}/deleteRecords``, up to 5,000 keys; keys already gone are
fine); each row stays as a tombstone with the product version, so that an older product message arriving
later cannot bring the record back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ctdd.catalog.records import CR
from ctdd.config import Settings
from ctdd.db.models import RejectedRecord
from ctdd.delivery.bulk import IMPORT_OK, BulkContext, ImportTimings, import_done, poll_import
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.errors import DotdigitalError, DotdigitalThrottled
from ctdd.hooks.manager import Hooks
from ctdd.hooks.types import HookContext, PluginFailed

log = logging.getLogger(__name__)
RR = RejectedRecord.__table__
#: keys per bulk delete (``DELETE /insightData/v3/accounts/{collection}/deleteRecords`` takes 1-5,000)
DELETE_MAX_KEYS = 5000


@dataclass
class FlushResult:
    sent: int = 0
    rejected: int = 0
    removed: int = 0
    calls: int = 0


def _now() -> datetime:
    return datetime.now(timezone.utc)


class CatalogDelivery:
    def __init__(self, engine: Engine, settings: Settings, client: DotdigitalClient, *,
                 timings: ImportTimings | None = None, clock: Callable[[], datetime] = _now,
                 hooks: Hooks | None = None):
        self.engine = engine
        #: the plugins (``ctdd_transform_payload`` sees every record before it is sent); None: none
        self.hooks = hooks
        self.settings = settings
        self.client = client
        cfg = settings.dispatcher
        self.timings = timings or ImportTimings(cfg.bulk_poll_min_seconds, cfg.bulk_poll_max_seconds)
        self.clock = clock

    def _ctx(self) -> BulkContext:
        return BulkContext(msgs=[], contacts={}, client=self.client, settings=self.settings, timings=self.timings,
                           timeout_seconds=self.settings.dispatcher.bulk_import_timeout_seconds)

    async def flush(self, store_key: str, collection: str, collection_type: str, *, max_records: int,
                    max_bytes: int, at_least: int = 1, removals: bool = True) -> FlushResult:
        """Deliver the pending records of one collection (when at least ``at_least`` are pending), and its
        pending removals unless ``removals`` is False (an export removes once, at its end: fewer calls)."""
        result = FlushResult()
        await self._resume_imports(store_key, collection, result)
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(CR.c.record_key, CR.c.record, CR.c.hash, CR.c.product_id)
                    .where(CR.c.store_key == store_key, CR.c.collection == collection, CR.c.pending.is_(True),
                           CR.c.import_id.is_(None), CR.c.hash.is_not(None))
                    .order_by(CR.c.record_key).limit(max_records)).all()
            if not rows or len(rows) < at_least:
                break
            at_least = 1
            chunk, size = [], 0
            for row in rows:
                n = len(json.dumps(row.record, separators=(",", ":"), ensure_ascii=False).encode()) + 40
                if chunk and size + n > max_bytes:
                    break
                chunk.append(row)
                size += n
            chunk = self._transformed(store_key, collection, chunk, result)
            if chunk:
                await self._import(store_key, collection, collection_type, chunk, result)
        if removals:
            await self._removals(store_key, collection, result)
        return result

    def _transformed(self, store_key: str, collection: str, chunk: list[Any], result: FlushResult) -> list[Any]:
        """The rows with their records as ``ctdd_transform_payload`` leaves them; a row a plugin fails on is
        refused like a record Dotdigital rejects (``rejected_record``, not sent again until it changes)."""
        store = self.settings.stores.get(store_key)
        if self.hooks is None or store is None or not self.hooks.implementations("ctdd_transform_payload", store_key):
            return chunk
        ctx = HookContext(store=store, settings=self.settings)
        out = []
        for row in chunk:
            try:
                record = self.hooks.transform_payload(ctx, "catalog", collection, dict(row.record))
            except PluginFailed as exc:
                self._refuse(store_key, collection, row, str(exc), "catalog.transform")
                result.rejected += 1
                continue
            out.append(SimpleNamespace(record_key=row.record_key, record=record, hash=row.hash,
                                       product_id=row.product_id))
        return out

    def _refuse(self, store_key: str, collection: str, row: Any, reason: str, operation: str) -> None:
        now = self.clock()
        log.warning("catalog record %s (product %s) of %s refused: %s", row.record_key, row.product_id, collection,
                    reason)
        with self.engine.begin() as conn:
            conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                             CR.c.record_key == row.record_key, CR.c.hash == row.hash)
                         .values(rejected=row.hash, pending=False, import_id=None, updated_at=now))
            conn.execute(sa.insert(RR).values(
                operation=operation, store_key=store_key, record_type="product",
                record_id=row.product_id or row.record_key, record_version=None,
                reason=f"catalog record {row.record_key!r} of {collection} not sent: {reason}", violations=None,
                created_at=now))

    async def _start(self, collection: str, collection_type: str, records: list[dict]) -> str:
        while True:
            try:
                return await self.client.start_insight_import(collection, scope="account",
                                                              collection_type=collection_type, records=records)
            except DotdigitalThrottled as exc:
                wait = max(exc.retry_after or 0.0, self.timings.min_poll)
                log.info("insight import of %s must wait (%s): retrying in %.1fs", collection, exc.code, wait)
                await asyncio.sleep(wait)

    async def _import(self, store_key: str, collection: str, collection_type: str, chunk: list[Any],
                      result: FlushResult) -> None:
        sent = {row.record_key: row.hash for row in chunk}
        products = {row.record_key: row.product_id for row in chunk}
        import_id = await self._start(collection, collection_type,
                                      [{"key": row.record_key, "json": row.record} for row in chunk])
        result.calls += 1
        # recorded before polling: a run that dies now leaves the import id, and the next reads its report
        with self.engine.begin() as conn:  # one statement, executed for every record (executemany)
            conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                             CR.c.record_key == sa.bindparam("b_key"),
                                             CR.c.hash == sa.bindparam("b_hash"))
                         .values(import_id=import_id),
                         [{"b_key": key, "b_hash": hash_} for key, hash_ in sent.items()])
        log.info("catalog import %s started (%s, %d records)", import_id, collection, len(chunk))
        await self._settle(store_key, collection, import_id, sent, products, result)

    async def _settle(self, store_key: str, collection: str, import_id: str, sent: dict[str, str | None],
                      products: dict[str, str | None], result: FlushResult) -> None:
        polls_before = self.timings.polls
        report = await poll_import(self._ctx(), ("catalog", collection), lambda: self.client.insight_import_status(import_id),
                                   import_done, f"catalog import {import_id} ({collection})")
        result.calls += self.timings.polls - polls_before
        status = str(getattr(report, "status", "") or "")
        now = self.clock()
        if status.casefold() not in IMPORT_OK:
            log.warning("catalog import %s ended with status %s: its %d records stay pending", import_id, status,
                        len(sent))
            with self.engine.begin() as conn:
                conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                                 CR.c.import_id == import_id).values(import_id=None, updated_at=now))
            raise DotdigitalError(f"catalog import {import_id} ended with status {status}", retryable=True)
        failures = {}
        for failure in getattr(report, "failures", None) or ():
            key = str(_get(failure, "key", ""))
            reason = str(_get(failure, "failureReason", "") or "Unknown")
            details = "; ".join(str(d) for d in _get(failure, "details", None) or ())
            failures[key] = reason + (f" ({details})" if details else "")
        accepted = [{"b_key": key, "b_hash": hash_} for key, hash_ in sent.items() if key not in failures]
        with self.engine.begin() as conn:
            if accepted:  # one statement, executed for every accepted record (executemany)
                hash_param = sa.bindparam("b_hash", type_=CR.c.hash.type)
                conn.execute(sa.update(CR).where(
                    CR.c.store_key == store_key, CR.c.collection == collection,
                    CR.c.record_key == sa.bindparam("b_key")).values(
                    sent_hash=hash_param, import_id=None, updated_at=now,
                    pending=CR.c.hash.is_distinct_from(hash_param)), accepted)
                result.sent += len(accepted)
            for key, hash_ in sent.items():
                where = (CR.c.store_key == store_key, CR.c.collection == collection, CR.c.record_key == key)
                if key in failures:
                    conn.execute(sa.update(CR).where(*where).values(
                        rejected=hash_, import_id=None, updated_at=now,
                        pending=sa.and_(CR.c.hash.is_distinct_from(hash_), CR.c.hash.is_distinct_from(CR.c.sent_hash))))
                    conn.execute(sa.insert(RR).values(
                        operation="catalog.export", store_key=store_key, record_type="product",
                        record_id=products.get(key) or key, record_version=None,
                        reason=f"Dotdigital rejected catalog record {key!r} of {collection} in import {import_id}: "
                               f"{failures[key]}", violations=None, created_at=now))
                    log.warning("catalog record %s (product %s) of %s rejected: %s", key, products.get(key),
                                collection, failures[key])
                    result.rejected += 1

    async def _resume_imports(self, store_key: str, collection: str, result: FlushResult) -> None:
        """Imports a dead process left running: read their reports (their records were sent)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(CR.c.import_id, CR.c.record_key, CR.c.hash, CR.c.product_id)
                                .where(CR.c.store_key == store_key, CR.c.collection == collection,
                                       CR.c.import_id.is_not(None))).all()
        by_import: dict[str, list[Any]] = {}
        for row in rows:
            by_import.setdefault(row.import_id, []).append(row)
        for import_id, group in by_import.items():
            log.info("catalog import %s of a previous run: reading its report", import_id)
            try:
                await self._settle(store_key, collection, import_id, {r.record_key: r.hash for r in group},
                                   {r.record_key: r.product_id for r in group}, result)
            except DotdigitalError as exc:
                if exc.status_code != 404:
                    raise
                with self.engine.begin() as conn:  # unknown import: send again
                    conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                                     CR.c.import_id == import_id).values(import_id=None))

    async def _removals(self, store_key: str, collection: str, result: FlushResult) -> None:
        with self.engine.connect() as conn:
            keys = conn.execute(sa.select(CR.c.record_key).where(
                CR.c.store_key == store_key, CR.c.collection == collection, CR.c.pending.is_(True),
                CR.c.hash.is_(None))).scalars().all()
        for start in range(0, len(keys), DELETE_MAX_KEYS):
            chunk = list(keys[start:start + DELETE_MAX_KEYS])
            try:
                await self.client.delete_account_records(collection, chunk)
            except DotdigitalError as exc:
                if exc.code != "insightData:collectionNotFound":
                    raise
                log.info("catalog collection %s does not exist: its %d removals are done", collection, len(chunk))
            result.calls += 1
            result.removed += len(chunk)
            with self.engine.begin() as conn:  # tombstones: they keep the version, so an older message
                conn.execute(sa.update(CR).where(CR.c.store_key == store_key, CR.c.collection == collection,
                                                 CR.c.record_key.in_(chunk), CR.c.hash.is_(None))
                             .values(sent_hash=None, pending=False, updated_at=self.clock()))


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)
