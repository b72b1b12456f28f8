"""Product messages through the same delta as the export (TrackEvent's commercetools deliveries).

``ProductPublished`` carries the current projection (unless ``payloadNotIncluded``); ``ProductUnpublished``,
``ProductDeleted`` and a product ``ResourceDeleted`` remove the product's records; every other product
message or change notification (``ProductPriceChanged``, ``ProductPriceAdded``, ``ProductPriceDiscountsSet``,
``ProductVariantAdded``/``Deleted`` ...; staged-only changes are ignored) re-reads the published projection
(none: unpublished or deleted, so removed). Inventory messages (``InventoryEntryQuantitySet`` ...) find the
product by SKU and re-read it. Only stores whose catalog is enabled and whose product selections hold the
product are written; a product that left the selections is removed. The records are written in the
notification's own transaction (with its dedupe record); the record store refuses a record built from an
older product version than the stored one, so the order of arrival does not matter. :class:`CatalogFlusher`
then delivers the pending records (woken at once, and every ``interval`` seconds for what a crash left).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ctdd.catalog import records
from ctdd.catalog.export import CatalogExporter, catalog_options, collection_names
from ctdd.catalog.source import CatalogSource
from ctdd.config import StoreConfig
from ctdd.programs import leases

log = logging.getLogger(__name__)

#: product messages that remove the product's records
REMOVING = frozenset({"ProductUnpublished", "ProductDeleted"})
#: how long a store's categories and store resource are reused between product messages
CONTEXT_SECONDS = 300.0


@dataclass(frozen=True)
class CatalogChange:
    """What one notification does to a store's product collection (``wanted`` empty: remove the product)."""

    store_key: str
    collection: str
    product_id: str
    version: int | None
    wanted: tuple[records.Wanted, ...]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class CatalogRealtime:
    """Turns product and inventory notifications into :class:`CatalogChange` (reading commercetools)."""

    def __init__(self, exporter: CatalogExporter, *, on_change: Callable[[], None] | None = None):
        self.exporter = exporter
        self.on_change = on_change
        self._context: dict[str, tuple[float, CatalogSource, dict]] = {}

    async def _source(self, store: StoreConfig, client: Any) -> tuple[CatalogSource, dict]:
        cached = self._context.get(store.key)
        if cached is not None and time.monotonic() - cached[0] < CONTEXT_SECONDS:
            return cached[1], cached[2]
        source = CatalogSource(client, store.key, store.catalog.page_size)
        await source.load_store()
        categories = await source.categories()
        self._context[store.key] = (time.monotonic(), source, categories)
        return source, categories

    async def product_change(self, store: StoreConfig, client: Any, product_id: str, message_type: str | None,
                             payload: dict, version: int | None, fetch: bool) -> CatalogChange | str:
        """The change for a product notification, or the reason it changes nothing."""
        collection = collection_names(store)[0]
        if isinstance(payload.get("staged"), bool) and payload["staged"]:
            return "a staged change: the published product is unchanged"
        if message_type in REMOVING:
            return CatalogChange(store.key, collection, product_id, version, ())
        projection = payload.get("productProjection") if message_type == "ProductPublished" and not fetch else None
        if not isinstance(projection, dict) or projection.get("id") != product_id:
            projection = await CatalogSource(client, store.key).projection(product_id)
            if projection is None:  # unpublished or deleted
                return CatalogChange(store.key, collection, product_id, version, ())
        return await self._from_projection(store, client, collection, projection)

    async def inventory_change(self, store: StoreConfig, client: Any, sku: str) -> CatalogChange | str:
        collection = collection_names(store)[0]
        page = await client.query("product-projections", where=("masterVariant(sku = :sku) or variants(sku = :sku)",),
                                  limit=1, with_total=False, params={"staged": "false", "var.sku": sku})
        found = [p for p in page.get("results") or () if isinstance(p, dict) and isinstance(p.get("id"), str)]
        if not found:
            return "no published product has this SKU"
        return await self._from_projection(store, client, collection, found[0])

    async def _from_projection(self, store: StoreConfig, client: Any, collection: str,
                               projection: dict) -> CatalogChange:
        product_id = str(projection.get("id"))
        version = projection.get("version") if isinstance(projection.get("version"), int) else None
        source, categories = await self._source(store, client)
        if product_id not in await source.in_store([product_id]):
            return CatalogChange(store.key, collection, product_id, version, ())
        options = catalog_options(store, source)
        wanted = self.exporter.wanted_for(store, options, projection, categories, self.exporter.clock())
        return CatalogChange(store.key, collection, product_id, version, tuple(wanted))

    @staticmethod
    def apply(conn: Connection, change: CatalogChange, now: datetime) -> int:
        """Write the change (in the notification's transaction); returns how many records became pending."""
        known = records.product_keys(conn, change.store_key, change.collection, [change.product_id])
        keep = {w.key for w in change.wanted}
        wanted = list(change.wanted) + [
            records.Wanted(key, "product", change.product_id, change.version, None, None)
            for key in sorted(known.get(change.product_id, set()) - keep)]
        return records.apply(conn, change.store_key, change.collection, wanted, now)

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class CatalogFlusher:
    """Delivers the pending records of catalog-enabled stores: when woken, and every ``interval`` seconds.

    It holds the store's export lease while it sends (an export running meanwhile delivers them itself)."""

    def __init__(self, exporter: CatalogExporter, *, interval: float = 30.0, settle: float = 0.2):
        self.exporter = exporter
        self.interval = interval
        self.settle = settle
        self.owner = f"catalog-flush-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Flush soon (callable from any thread: units of work may run in one)."""
        if self._loop_ref is not None:
            self._loop_ref.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        if self._task is None and any(s.catalog.enabled for s in self.exporter.settings.stores.values()):
            self._loop_ref = asyncio.get_running_loop()
            self._task = self._loop_ref.create_task(self._loop(), name="catalog-flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
                await asyncio.sleep(self.settle)  # a burst of messages goes in one import
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # Dotdigital or the database unavailable: the records stay pending
                log.exception("catalog records not delivered now; trying again in %.0fs", self.interval)

    async def flush_all(self) -> int:
        """One pass over every catalog-enabled store; returns how many records were sent or removed."""
        done = 0
        for store in self.exporter.settings.stores.values():
            if not store.catalog.enabled:
                continue
            products, categories = collection_names(store)
            with self.exporter.engine.connect() as conn:
                pending = conn.execute(sa.select(sa.func.count()).select_from(records.CR).where(
                    records.CR.c.store_key == store.key, records.CR.c.pending.is_(True))).scalar_one()
            if not pending:
                continue
            lease = f"catalog-export:{store.key}"
            if not leases.acquire(self.exporter.engine, lease, self.owner, 300.0, self.exporter.clock()):
                continue  # an export is running: it delivers them
            try:
                delivery = self.exporter.delivery(store.account)
                for name, kind in ((products, "catalog"), (categories, "productCategories")):
                    result = await delivery.flush(store.key, name, kind, max_records=store.catalog.import_max_records,
                                                  max_bytes=store.catalog.import_max_bytes)
                    done += result.sent + result.removed
            finally:
                leases.release(self.exporter.engine, lease, self.owner, self.exporter.clock())
        return done
