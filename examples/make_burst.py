"""Writes burst-1000.jsonl: 1,000 customers each leave a cart within one hour, alternating between the
stores uk and eu (one Dotdigital account, a program per store), one cart every 3.6 seconds from 10:00. The
carts are in commercetools, where the cart watcher finds them (every 60 seconds, per store).

    python examples/make_burst.py            # writes examples/burst-1000.jsonl
    python examples/make_burst.py -n 200 -o /tmp/burst-200.jsonl

Expected (examples/README.md): each cart falls due an hour after it was filled; the account's 20 enrolment
calls an hour carry full batches of 25, so 1,000 contacts take 40 calls over a little more than two hours, at
most 20 in any hour, and every contact is enrolled exactly once.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
STORES = {  # store key -> (locale, currency, product slug, price in cents)
    "uk": ("en-GB", "GBP", "wool-scarf", 3500),
    "eu": ("de-DE", "EUR", "wollschal", 3900),
}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def money(cents: int, currency: str) -> dict:
    return {"type": "centPrecision", "currencyCode": currency, "centAmount": cents, "fractionDigits": 2}


def cart_line(index: int, store: str, at: datetime) -> dict:
    """One customer's cart, as commercetools holds it (the cart watcher finds it at its next poll)."""
    locale, currency, slug, cents = STORES[store]
    customer = f"cust-{store}-{index:04d}"
    cart = {
        "id": f"cart-{store}-{index:04d}", "version": 1, "cartState": "Active", "locale": locale,
        "customerId": customer, "customerEmail": f"{customer}@example.com",
        "createdAt": iso(at), "lastModifiedAt": iso(at), "store": {"typeId": "store", "key": store},
        "lineItems": [{"id": "li-1", "productId": "prod-scarf", "productSlug": {locale: slug},
                       "name": {locale: "Wool scarf"}, "variant": {"sku": "SCARF-GRY"},
                       "price": {"value": money(cents, currency)}, "quantity": 1,
                       "totalPrice": money(cents, currency)}],
        "totalPrice": money(cents, currency),
    }
    return {"at": iso(at), "store": store, "cart": cart}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="number of carts (default 1000)")
    parser.add_argument("-o", default=str(Path(__file__).with_name("burst-1000.jsonl")), help="output file")
    args = parser.parse_args()
    step = timedelta(hours=1) / args.n
    stores = list(STORES)
    with open(args.o, "w", encoding="utf-8") as out:
        out.write(f"# {args.n} carts in one hour across the stores uk and eu; written by examples/make_burst.py\n")
        for index in range(args.n):
            line = cart_line(index, stores[index % len(stores)], START + index * step)
            out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
