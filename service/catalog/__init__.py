"""The catalog room: a store's products and categories exported to Dotdigital account-scoped insight data.

- ``source``: reading commercetools (the store, its product selections, categories, product projections
  paged by id);
- ``records``: the per-store record table (``catalog_record``): wanted content, content hash, what Dotdigital has;
- ``delivery``: pending records to Dotdigital in bulk imports (the outbox's import poller), removals;
- ``export``: ``ExportCatalog`` / ``ctdd catalog export``: one run per store at a time (a lease), resumable;
- ``realtime``: product messages (published, unpublished, deleted, prices, stock) through the same delta.

The rules (price selection, items, hashes) are pure, in ``ctdd.domain.catalog``.
"""
