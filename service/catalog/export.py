"""One catalog export of a store: read, map, delta, deliver; one at a time per store, resumable.

The run holds the lease ``catalog-export:<store>`` (``ctdd.programs.leases``: one holder across processes
sharing the database), renewed after every page; a second request while it is held is refused
(:class:`ExportBusy`). The lease's cursor keeps the run id, its parameters and the last product id whose
page is written to ``catalog_record``: a run that was interrupted resumes after it, and records already
delivered are not sent again (their hash matches). A full export (no ``modified_since``) also removes what
it did not see: products unpublished, deleted or no longer in the store's product selections.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

from sqlalchemy.engine import Engine

from ctdd.catalog import records
from ctdd.catalog.delivery import CatalogDelivery
from ctdd.catalog.source import CatalogSource
from ctdd.config import Settings, StoreConfig
from ctdd.domain.catalog import CatalogOptions, catalog_items, category_record, content_hash
from ctdd.domain.catalog import collection_names as catalog_collections
from ctdd.hooks.manager import Hooks
from ctdd.hooks.types import HookContext, PluginFailed
from ctdd.programs import leases

log = logging.getLogger(__name__)

LEASE_SECONDS = 300.0


class ExportBusy(Exception):
    """Another export of the store is running."""


class ExportNotPossible(Exception):
    """The store's catalog is not enabled, or it has no commercetools client: the reason is the message."""


@dataclass
class Progress:
    products_read: int = 0
    records_enqueued: int = 0
    records_rejected: int = 0
    records_removed: int = 0
    dotdigital_calls: int = 0
    done: bool = False
    resumed: bool = False
    #: how many products this run reads, as commercetools counts them (capped by commercetools; None: unknown)
    products_total: int | None = None


def collection_names(store: StoreConfig) -> tuple[str, str]:
    return catalog_collections(store.key, store.catalog.collection, store.catalog.categories_collection)


def catalog_options(store: StoreConfig, source: CatalogSource | None = None) -> CatalogOptions:
    cfg = store.catalog
    languages = [l for l in ((source.store or {}).get("languages") or []) if isinstance(l, str)] if source else []
    locales = tuple(cfg.locales or ([store.locale] if store.locale else languages[:1]) or ["en"])
    currencies = tuple(cfg.currencies or ([store.currency] if store.currency else ["EUR"]))
    channel = cfg.channel or (source.distribution_channel if source else None)
    return CatalogOptions(store_key=store.key, locales=locales, currencies=currencies, country=cfg.country,
                          channel_id=channel, customer_group_id=cfg.customer_group, sku_per=cfg.sku_per,
                          url_template=cfg.url_template, description_max_chars=cfg.description_max_chars)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _started(cursor: dict, default: datetime) -> datetime:
    try:
        return datetime.fromisoformat(cursor["started"])
    except (KeyError, TypeError, ValueError):
        return default


class CatalogExporter:
    """Runs exports; ``commercetools(store)`` and ``dotdigital(account)`` give the API clients."""

    def __init__(self, engine: Engine, settings: Settings, hooks: Hooks, *, commercetools: Callable[[StoreConfig], Any],
                 dotdigital: Callable[[str], Any], owner: str | None = None, clock: Callable[[], datetime] = _now):
        self.engine = engine
        self.settings = settings
        self.hooks = hooks
        self.commercetools = commercetools
        self.dotdigital = dotdigital
        self.owner = owner or f"catalog-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._deliveries: dict[str, CatalogDelivery] = {}

    def check(self, store_key: str) -> StoreConfig:
        store = self.settings.stores.get(store_key)
        if store is None:
            raise KeyError(store_key)
        if not store.catalog.enabled:
            raise ExportNotPossible(f"the catalog of store {store_key!r} is not enabled "
                                    f"([stores.{store_key}.catalog] enabled = true)")
        if self.commercetools(store) is None:
            raise ExportNotPossible(f"store {store_key!r} has no commercetools client to read its catalog from")
        return store

    def delivery(self, account: str) -> CatalogDelivery:
        if account not in self._deliveries:
            self._deliveries[account] = CatalogDelivery(self.engine, self.settings, self.dotdigital(account),
                                                        clock=self.clock, hooks=self.hooks)
        return self._deliveries[account]

    def map_item(self, store: StoreConfig, item) -> dict[str, Any]:
        return self.hooks.map_catalog_item(HookContext(store=store, settings=self.settings), item)

    def wanted_for(self, store: StoreConfig, options: CatalogOptions, projection: dict, categories: dict,
                   now: datetime) -> list[records.Wanted]:
        version = projection.get("version") if isinstance(projection.get("version"), int) else None
        out = []
        for item in catalog_items(projection, options, categories, now):
            try:
                record = self.map_item(store, item)
            except PluginFailed as exc:  # this item only: logged in rejected_record, the export goes on
                log.error("catalog item %s of store %s not mapped: %s", item.key, store.key, exc)
                out.append(records.Wanted(item.key, "product", item.product_id, version, None, None, failed=str(exc)))
                continue
            out.append(records.Wanted(item.key, "product", item.product_id, version, record, content_hash(record)))
        return out

    async def export(self, store_key: str, *, modified_since: datetime | None = None,
                     include_categories: bool | None = None, collection: str | None = None,
                     resend: bool = False) -> AsyncIterator[Progress]:
        """One export of the store. ``resend``: every record is sent again, unchanged ones too (the store's
        collections were emptied or recreated in Dotdigital); a resumed run does not restart it."""
        store = self.check(store_key)
        lease = f"catalog-export:{store.key}"
        if not leases.acquire(self.engine, lease, self.owner, LEASE_SECONDS, self.clock()):
            raise ExportBusy(f"an export of store {store.key!r} is already running")
        try:
            async for progress in self._run(store, lease, modified_since, include_categories, collection, resend):
                yield progress
        finally:
            leases.release(self.engine, lease, self.owner, self.clock())

    async def _run(self, store: StoreConfig, lease: str, modified_since: datetime | None,
                   include_categories: bool | None, collection: str | None,
                   resend: bool = False) -> AsyncIterator[Progress]:
        products_collection, categories_collection = collection_names(store)
        products_collection = collection or products_collection
        with_categories = store.catalog.include_categories if include_categories is None else include_categories
        params = {"since": modified_since.isoformat() if modified_since else None, "collection": products_collection,
                  "categories": with_categories, "resend": resend}
        with self.engine.connect() as conn:
            cursor = leases.cursor(conn, lease)
        progress = Progress()
        if cursor.get("run") and cursor.get("params") == params and cursor.get("phase") != "done":
            run, after, progress.resumed = cursor["run"], cursor.get("after"), True
            started = _started(cursor, self.clock())
            log.info("catalog export of %s resumes run %s after product %s", store.key, run, after)
        else:
            run, after = uuid.uuid4().hex, None
            if resend:
                with self.engine.begin() as conn:
                    for name in (products_collection, categories_collection):
                        records.forget_sent(conn, store.key, name, self.clock())
            started = self.clock()
        source = CatalogSource(self.commercetools(store), store.key, store.catalog.page_size)
        await source.load_store()
        progress.products_total = await source.count(after=after, modified_since=modified_since)
        options = catalog_options(store, source)
        categories = await source.categories()
        delivery = self.delivery(store.account)
        cfg = store.catalog

        def save(**changes: Any) -> None:
            with self.engine.begin() as conn:
                leases.set_cursor(conn, lease, {"run": run, "params": params, "after": after,
                                                "started": started.isoformat(), **changes}, self.clock())

        async def flush(name: str, kind: str, at_least: int) -> None:
            # records go when an import is full; removals and the rest at the end (at_least=1)
            result = await delivery.flush(store.key, name, kind, max_records=cfg.import_max_records,
                                          max_bytes=cfg.import_max_bytes, at_least=at_least,
                                          removals=at_least == 1)
            progress.records_rejected += result.rejected
            progress.records_removed += result.removed
            progress.dotdigital_calls += result.calls

        save(phase="products")
        async for page in source.products(after=after, modified_since=modified_since):
            now = self.clock()
            progress.products_read += len(page)
            members = await source.in_store([p["id"] for p in page])
            wanted: list[records.Wanted] = []
            with self.engine.begin() as conn:
                known = records.product_keys(conn, store.key, products_collection, [p["id"] for p in page])
                for projection in page:
                    items = (self.wanted_for(store, options, projection, categories, now)
                             if projection["id"] in members else [])
                    wanted.extend(items)
                    progress.records_rejected += sum(1 for w in items if w.failed is not None)
                    # variants gone, or a product no longer in the store's selections
                    for gone in known.get(projection["id"], set()) - {w.key for w in items}:
                        wanted.append(records.Wanted(gone, "product", projection["id"], projection.get("version"),
                                                     None, None))
                progress.records_enqueued += records.apply(conn, store.key, products_collection, wanted, now, run=run)
            after = page[-1]["id"]
            save(phase="products")
            leases.acquire(self.engine, lease, self.owner, LEASE_SECONDS, self.clock())
            await flush(products_collection, "catalog", cfg.import_max_records)
            yield progress
        if modified_since is None:
            with self.engine.begin() as conn:
                # a record a product message wrote while this run was reading is not "unseen"
                removed = records.removals_for_unseen(conn, store.key, products_collection, run, self.clock(),
                                                      written_before=started)
            progress.records_enqueued += removed
        await flush(products_collection, "catalog", 1)
        if with_categories:
            now = self.clock()
            wanted = []
            for category in categories.values():
                record = category_record(category, categories, options.locales)
                wanted.append(records.Wanted(str(category["id"]), "category", None, category.get("version"),
                                             record, content_hash(record)))
            with self.engine.begin() as conn:
                progress.records_enqueued += records.apply(conn, store.key, categories_collection, wanted, now, run=run)
                progress.records_enqueued += records.removals_for_unseen(conn, store.key, categories_collection, run, now)
            await flush(categories_collection, "productCategories", 1)
        save(phase="done", finished_at=self.clock().isoformat())
        progress.done = True
        yield progress
