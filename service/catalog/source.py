"""Reading a store's catalog from commercetools.

- the store (``GET /stores/key={key}``): languages, distribution channels, product selections;
- categories, and published product projections (``staged=false``), paged by id: ``sort=id asc`` with the
  predicate ``id > :after`` and ``var.after`` (offsets stop at 10,000; values always travel as ``var.*``
  query parameters, never inside the predicate text);
- which products of a page belong to the store: when the store has active product selections,
  ``GET /in-store/key={store}/product-selection-assignments?where=product(id in :ids)`` (a store without
  product selections sells every product).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, AsyncIterator


class CatalogSource:
    def __init__(self, client: Any, store_key: str, page_size: int = 500):
        self.client = client
        self.store_key = store_key
        self.page_size = page_size
        self.store: dict[str, Any] | None = None

    async def load_store(self) -> dict[str, Any]:
        self.store = await self.client.get_by_key("stores", self.store_key) or {}
        return self.store

    @property
    def has_selections(self) -> bool:
        return any(isinstance(s, dict) and s.get("active", True) for s in (self.store or {}).get("productSelections") or ())

    @property
    def distribution_channel(self) -> str | None:
        for ref in (self.store or {}).get("distributionChannels") or ():
            if isinstance(ref, dict) and isinstance(ref.get("id"), str):
                return ref["id"]
        return None

    async def pages(self, resource: str, *, after: str | None = None, where: tuple[str, ...] = (),
                    variables: dict[str, Any] | None = None,
                    params: dict[str, Any] | None = None) -> AsyncIterator[list[dict]]:
        """Every matching resource in ascending id order, page by page, from ``after`` (exclusive)."""
        last = after
        while True:
            predicates = list(where)
            extra: dict[str, Any] = dict(params or {})
            extra.update({f"var.{name}": value for name, value in (variables or {}).items()})
            if last is not None:
                predicates.append("id > :after")
                extra["var.after"] = last
            page = await self.client.query(resource, where=predicates, sort=("id asc",), limit=self.page_size,
                                           with_total=False, params=extra)
            results = [r for r in page["results"] if isinstance(r, dict)]
            if results:
                yield results
            if len(page["results"]) < self.page_size:
                return
            if results[-1].get("id") == last:
                raise RuntimeError(f"paging {resource} made no progress")
            last = results[-1].get("id")

    @staticmethod
    def _since(modified_since: datetime | None) -> tuple[tuple[str, ...], dict[str, Any]]:
        if modified_since is None:
            return (), {}
        return ("lastModifiedAt > :since",), {
            "since": modified_since.isoformat(timespec="milliseconds").replace("+00:00", "Z")}

    def products(self, *, after: str | None, modified_since: datetime | None) -> AsyncIterator[list[dict]]:
        where, variables = self._since(modified_since)
        return self.pages("product-projections", after=after, where=where, variables=variables,
                          params={"staged": "false"})

    async def count(self, *, after: str | None, modified_since: datetime | None) -> int | None:
        """How many published products :meth:`products` reads (commercetools caps and may estimate it)."""
        where, variables = self._since(modified_since)
        params: dict[str, Any] = {"staged": "false", **{f"var.{k}": v for k, v in variables.items()}}
        if after is not None:
            where += ("id > :after",)
            params["var.after"] = after
        page = await self.client.query("product-projections", where=where, limit=0, with_total=True, params=params)
        total = page.get("total")
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    async def categories(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        async for page in self.pages("categories"):
            out.update({c["id"]: c for c in page if isinstance(c.get("id"), str)})
        return out

    async def in_store(self, product_ids: list[str]) -> set[str]:
        """The ids among ``product_ids`` that the store's product selections hold."""
        if not self.has_selections or not product_ids:
            return set(product_ids)
        found: set[str] = set()
        for start in range(0, len(product_ids), 100):
            chunk = product_ids[start:start + 100]
            page = await self.client.query_in_store(
                self.store_key, "product-selection-assignments", where=("product(id in :ids)",),
                limit=500, with_total=False, params={"var.ids": chunk})
            for assignment in page["results"]:
                product = assignment.get("product") if isinstance(assignment, dict) else None
                if isinstance(product, dict) and isinstance(product.get("id"), str):
                    found.add(product["id"])
        return found

    async def projection(self, product_id: str) -> dict | None:
        """The published projection of one product (None: unpublished or deleted)."""
        return await self.client.get("product-projections", product_id, params={"staged": "false"})
