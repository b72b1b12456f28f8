"""A fake commercetools catalog: categories, two stores with product selections, products priced in GBP and
EUR with country, channel and dated prices (shaped like fixtures/commercetools/product-projection.example.json)."""

from __future__ import annotations

import copy

CHANNEL_UK = "chan-uk"


def _price(pid: str, currency: str, cents: int, **extra) -> dict:
    return {"id": pid, "value": {"type": "centPrecision", "currencyCode": currency, "centAmount": cents,
                                 "fractionDigits": 2}, **extra}


def product(i: int, categories: list[str], *, name_suffix: str = "", published: bool = True, version: int = 1) -> dict:
    pid = f"p{i:06d}"
    variant = {
        "id": 1, "sku": f"SKU-{i:06d}",
        "prices": [
            _price(f"{pid}-gbp", "GBP", 1000 + i),
            _price(f"{pid}-gbp-gb", "GBP", 1100 + i, country="GB",
                   discounted={"value": {"type": "centPrecision", "currencyCode": "GBP", "centAmount": 900 + i,
                                         "fractionDigits": 2}, "discount": {"typeId": "product-discount", "id": "d1"}}),
            _price(f"{pid}-gbp-chan", "GBP", 1200 + i, country="GB", channel={"typeId": "channel", "id": CHANNEL_UK}),
            _price(f"{pid}-eur", "EUR", 2000 + i),
            _price(f"{pid}-eur-de-old", "EUR", 1500 + i, country="DE", validUntil="2020-01-01T00:00:00.000Z"),
        ],
        "images": [{"url": f"https://img.example.com/{pid}.jpg", "dimensions": {"w": 100, "h": 100}}],
        "attributes": [{"name": "brand", "value": {"key": "acme", "label": "Acme"}}],
        "availability": {"isOnStock": i % 7 != 0, "availableQuantity": i % 50},
    }
    data = {
        "name": {"en-GB": f"Product {i}{name_suffix}", "de-DE": f"Produkt {i}{name_suffix}"},
        "slug": {"en-GB": f"product-{i}", "de-DE": f"produkt-{i}"},
        "description": {"en-GB": f"<p>The <b>best</b> product {i}.</p>", "de-DE": f"<p>Produkt {i}</p>"},
        "categories": [{"typeId": "category", "id": categories[i % len(categories)]}],
        "categoryOrderHints": {}, "masterVariant": variant, "variants": [], "searchKeywords": {},
    }
    stamp = f"2026-01-01T00:00:{version:02d}.000Z"
    return {"id": pid, "version": version, "key": f"product-{i}",
            "productType": {"typeId": "product-type", "id": "pt-1"},
            "masterData": {"published": published, "hasStagedChanges": False, "current": data,
                           "staged": copy.deepcopy(data)},
            "createdAt": "2026-01-01T00:00:00.000Z", "lastModifiedAt": stamp}


def seed_catalog(fake, count: int) -> dict:
    """``count`` products; store ``uk`` sells the even ones, ``de`` every product but a few (selections)."""
    root = fake.add("categories", {"id": "cat-root", "name": {"en-GB": "Clothing", "de-DE": "Kleidung"},
                                   "slug": {"en-GB": "clothing", "de-DE": "kleidung"}, "ancestors": [],
                                   "orderHint": "0.1"})
    leaves = []
    for n, (en, de) in enumerate((("Shoes", "Schuhe"), ("Hats", "Hüte"))):
        leaves.append(fake.add("categories", {
            "id": f"cat-{en.lower()}", "name": {"en-GB": en, "de-DE": de}, "slug": {"en-GB": en.lower()},
            "parent": {"typeId": "category", "id": root["id"]},
            "ancestors": [{"typeId": "category", "id": root["id"]}], "orderHint": f"0.{n + 2}"})["id"])
    ids = []
    for i in range(count):
        ids.append(fake.add("products", product(i, leaves))["id"])
    fake.add("product-selections", {"id": "sel-uk", "key": "uk-range", "name": {"en-GB": "UK"}})
    fake.add("product-selections", {"id": "sel-de", "key": "de-range", "name": {"en-GB": "DE"}})
    fake.assign_products("sel-uk", ids[0::2])
    fake.assign_products("sel-de", [p for n, p in enumerate(ids) if n % 10 != 3])
    fake.add("stores", {"key": "uk", "name": {"en-GB": "UK"}, "languages": ["en-GB"], "countries": [{"code": "GB"}],
                        "distributionChannels": [], "supplyChannels": [],
                        "productSelections": [{"productSelection": {"typeId": "product-selection", "id": "sel-uk"},
                                               "active": True}]})
    fake.add("stores", {"key": "de", "name": {"de-DE": "DE"}, "languages": ["de-DE"], "countries": [{"code": "DE"}],
                        "distributionChannels": [], "supplyChannels": [],
                        "productSelections": [{"productSelection": {"typeId": "product-selection", "id": "sel-de"},
                                               "active": True}]})
    return {"ids": ids, "leaves": leaves}
