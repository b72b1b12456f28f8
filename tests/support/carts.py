"""Helpers of the cart tests: settings with URL templates and programs, a spy on the programs' scheduling
interface, carts created in the fake commercetools project over HTTP, and the service's cart rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctdd.config import StoreConfig
from ctdd.programs import scheduling
from support import ct_payloads as ct
from support.helpers import RunningService, make_settings

PRODUCT_URL = "https://shop.example/{locale}/p/{slug}"
CART_URL = "https://shop.example/{store}/cart/{cart_id}"
PROGRAMS = {"abandoned_cart": {"program": 101}, "browse_abandonment": {"program": 102},
            "post_purchase_first": {"program": 103}, "post_purchase_repeat": {"program": 104},
            "review_request": {"program": 105}}
SCHEDULING = ("on_cart_changed", "on_cart_closed", "on_order_placed", "on_order_cancelled", "on_shipment_delivered",
              "on_product_viewed", "on_product_added_to_cart")


def cart_settings(database_url: str, sandbox, fake, *, programs: dict | None = None, **watcher: Any):
    """Settings for store ``uk`` with URL templates, programs of every kind and the given cart watcher keys
    (the watcher is off unless ``enabled=True``: the tests call ``run_once`` themselves)."""
    uk = {"product_url_template": PRODUCT_URL, "cart_url_template": CART_URL,
          "programs": PROGRAMS if programs is None else programs,
          "cart_watcher": {"enabled": False, **watcher}}
    return make_settings(database_url, sandbox, commercetools=fake, stores_extra={"uk": uk})


@dataclass
class Call:
    name: str
    args: tuple
    kwargs: dict


@dataclass
class SchedulingSpy:
    """Records every call into ``ctdd.programs.scheduling`` (the engine still runs)."""

    calls: list[Call] = field(default_factory=list)

    def of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def install(self, monkeypatch) -> SchedulingSpy:
        for name in SCHEDULING:
            real = getattr(scheduling, name)

            def spy(session, store: StoreConfig, *args, _real=real, _name=name, **kwargs):
                self.calls.append(Call(_name, args, kwargs))
                return _real(session, store, *args, **kwargs)

            monkeypatch.setattr(scheduling, name, spy)
        real_many = scheduling.on_products_viewed

        def spy_many(session, store: StoreConfig, views, now, _real=real_many):
            # the set-based apply path hands the views of a batch over at once: one call per view, as the
            # one-at-a-time path makes them
            for v in views:
                self.calls.append(Call("on_product_viewed", (v.contact_id, v.product_id, v.viewed_at, now),
                                       {"data": v.data}))
            return _real(session, store, views, now)

        monkeypatch.setattr(scheduling, "on_products_viewed", spy_many)
        return self


def line_draft(product_id: str, sku: str, name: str, qty: int, cents: int) -> dict:
    """A ``LineItemDraft`` the fake accepts (an external price), with what a real line item carries."""
    return {"productId": product_id, "name": {"en": name}, "productSlug": {"en": name.lower().replace(" ", "-")},
            "variant": {"id": 1, "sku": sku, "images": [{"url": f"https://img.example/{sku}.jpg"}]},
            "externalPrice": ct.money(cents), "quantity": qty}


def ct_client(svc: RunningService, store: str = "uk"):
    """The service's own commercetools client of ``store`` (real HTTP to the fake)."""
    return svc.app.events.ct.get(svc.app.settings.store(store))


async def create_cart(svc: RunningService, store: str = "uk", **draft: Any) -> dict:
    body = {"currency": "GBP", "locale": "en-GB", **draft}
    return await ct_client(svc, store).create(f"in-store/key={store}/carts", body)


def cart_rows(svc: RunningService) -> dict[str, dict]:
    return {r["cart_id"]: r for r in svc.rows("SELECT * FROM cart ORDER BY cart_id")}


def cart_puts(sandbox) -> list:
    return [r for r in sandbox.requests if r.method == "PUT" and "/CartInsight/" in r.path and r.status < 300]
