"""The cart watcher: reads each store's changed carts from commercetools and applies them like ``cart_updated``
events (contact, ``cart`` row, CartInsight record, programs).

commercetools sends no messages for carts, and a change subscription only reports a cart's creation
(commercetools HTTP API: Subscriptions, ``ChangeSubscriptionResourceTypeId``), so abandoned carts have to be
found by polling: ``GET /{project}/in-store/key={store}/carts`` with the predicates

    cartState in :states and lastModifiedAt >= :since
    (next pages also) lastModifiedAt > :lm or (lastModifiedAt = :lm and id > :lid)

sorted ``lastModifiedAt asc, id asc``, ``withTotal=false``, paged by (lastModifiedAt, id) rather than by
offset (offsets stop at 10,000). Values travel as predicate input variables (``var.since=...``), never
pasted into a predicate. The states are Active, and Merged and Frozen: a cart merged into the customer's
cart at login or frozen at checkout must cancel its timers too, and nothing else reports those changes
(an Ordered cart is reported by its ``OrderCreated``).

The window starts at the cursor minus ``overlap_seconds`` (writes commit out of timestamp order), or
``initial_lookback_hours`` before now on the first poll. A cart is applied only when its version is newer
than the ``cart`` row's, so the overlap re-reads cost no Dotdigital call. The cursor (``{last_modified_at,
last_id}``) is kept in the store's lease row and moves after a page was applied, never backwards.

One watcher per store at a time, across processes sharing the database: the named lease
``cart-watcher:<store>`` (``ctdd.programs.leases``) is taken before a poll, renewed after every page and
given back when the watcher stops. A watcher that finds it held by a live process skips the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ctdd.background import finish_or_cancel
from ctdd.config import Settings, StoreConfig
from ctdd.db.engine import utcnow
from ctdd.commercetools.errors import CommercetoolsError
from ctdd.db.models import Cart, RejectedRecord
from ctdd.domain.commerce import parse_ts
from ctdd.ingest.carts import DERIVED_VERSION_MIN
from ctdd.ingest.events import EventProcessor
from ctdd.programs import leases
from ctdd.redaction import redact_text

log = logging.getLogger(__name__)

#: cart states the watcher reads (see the module docstring)
WATCHED_STATES = ("Active", "Merged", "Frozen")
#: carts applied per transaction
CHUNK = 100


def lease_name(store_key: str) -> str:
    return f"cart-watcher:{store_key}"


def watcher_enabled(store: StoreConfig) -> bool:
    """``cart_watcher.enabled``; by default on when the store has a commercetools client and an abandoned_cart
    program."""
    enabled = store.cart_watcher.enabled
    if enabled is None:
        return store.commercetools is not None and "abandoned_cart" in store.programs
    return enabled


def ct_time(moment: datetime) -> str:
    """A commercetools DateTime: UTC with milliseconds, ``2026-11-01T10:00:00.000Z``."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class WatchResult:
    """One poll of one store."""

    store_key: str
    #: another process holds the store's lease: nothing was read
    held_elsewhere: bool = False
    pages: int = 0
    carts_read: int = 0
    carts_applied: int = 0
    cursor: dict[str, Any] | None = None


class CartWatcher:
    """Polls the stores whose cart watcher is enabled; ``run_once`` polls each once (tests, ``ctdd simulate``)."""

    def __init__(self, engine: Engine, settings: Settings, events: EventProcessor, *, owner: str,
                 clock: Callable[[], datetime] = utcnow, store_keys: Iterable[str] | None = None):
        """``store_keys``: watch these stores whatever their ``cart_watcher.enabled`` says (tests, simulation)."""
        self.engine = engine
        self.settings = settings
        self.events = events
        self.owner = owner
        self.clock = clock
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._store_keys = None if store_keys is None else set(store_keys)
        self._stores: list[StoreConfig] | None = None

    def stores(self) -> list[StoreConfig]:
        """The stores to watch (enabled, with a commercetools client)."""
        if self._stores is None:
            self._stores = []
            for store in self.settings.stores.values():
                if not (watcher_enabled(store) if self._store_keys is None else store.key in self._store_keys):
                    continue
                if self.events.ct.get(store) is None:
                    log.warning("cart watcher of store %s is enabled, but the store has no commercetools client",
                                store.key)
                    continue
                self._stores.append(store)
        return self._stores

    # -- schedule ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None and self.stores():
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="ctdd-cart-watcher")
            log.info("cart watcher for store(s) %s", ", ".join(s.key for s in self.stores()))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop polling (a poll in progress may finish within ``grace`` seconds) and give the leases back."""
        task, self._task = self._task, None
        self._stop.set()
        await finish_or_cancel(task, grace)
        for store in self.stores():
            await asyncio.to_thread(leases.release, self.engine, lease_name(store.key), self.owner, self.clock())

    async def _loop(self) -> None:
        due = {store.key: 0.0 for store in self.stores()}
        while not self._stop.is_set():
            for store in self.stores():
                if time.monotonic() < due[store.key]:
                    continue
                try:
                    await self.poll_store(store, self.clock())
                except asyncio.CancelledError:
                    raise
                except CommercetoolsError as exc:
                    if not exc.retryable:
                        log.exception("cart watcher poll of store %s failed", store.key)
                    else:  # commercetools unreachable or busy: one line, the next interval tries again
                        log.warning("cart watcher poll of store %s failed, retrying in %ss: %s", store.key,
                                    store.cart_watcher.interval_seconds, exc)
                except Exception:
                    log.exception("cart watcher poll of store %s failed", store.key)
                due[store.key] = time.monotonic() + store.cart_watcher.interval_seconds
            wait = max(min(due.values()) - time.monotonic(), 0.0)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    async def run_once(self, now: datetime | None = None) -> list[WatchResult]:
        """Poll every watched store once (``now``: the clock's time)."""
        now = now or self.clock()
        return [await self.poll_store(store, now) for store in self.stores()]

    # -- one store ---------------------------------------------------------------------------------
    async def poll_store(self, store: StoreConfig, now: datetime) -> WatchResult:
        """Read the store's carts changed since its cursor, page by page; apply each page, then move the cursor."""
        cfg = store.cart_watcher
        result = WatchResult(store.key)
        name = lease_name(store.key)
        lease_seconds = max(3 * cfg.interval_seconds, 60.0)
        if not await asyncio.to_thread(leases.acquire, self.engine, name, self.owner, lease_seconds, now):
            result.held_elsewhere = True
            return result
        cursor = await asyncio.to_thread(self._cursor, name)
        since = _cursor_time(cursor)
        since = since - timedelta(seconds=cfg.overlap_seconds) if since else now - timedelta(
            hours=cfg.initial_lookback_hours)
        client = self.events.ct.get(store)
        after: tuple[str, str] | None = None
        while True:
            where = ["cartState in :states", "lastModifiedAt >= :since"]
            params: dict[str, Any] = {"var.states": list(WATCHED_STATES), "var.since": ct_time(since)}
            if after is not None:
                where.append("(lastModifiedAt > :lm or (lastModifiedAt = :lm and id > :lid))")
                params.update({"var.lm": after[0], "var.lid": after[1]})
            page = await client.query_in_store(store.key, "carts", where=where,
                                               sort=["lastModifiedAt asc", "id asc"], limit=cfg.page_size,
                                               with_total=False, params=params)
            carts = [c for c in page["results"] if isinstance(c, dict) and c.get("id")]
            result.pages += 1
            result.carts_read += len(carts)
            if carts:
                result.carts_applied += await self._apply(store, carts)
                last = (str(carts[-1].get("lastModifiedAt") or ""), str(carts[-1]["id"]))
                cursor = _later(cursor, {"last_modified_at": last[0], "last_id": last[1]})
                if not await asyncio.to_thread(self._save_cursor, name, cursor, lease_seconds):
                    log.warning("cart watcher of store %s lost its lease; another process continues", store.key)
                    break
                after = last
            if len(page["results"]) < cfg.page_size:
                break
        result.cursor = cursor
        return result

    async def _apply(self, store: StoreConfig, carts: list[dict]) -> int:
        """Apply the carts newer than their ``cart`` row, ``CHUNK`` per transaction; how many were applied."""
        known = await asyncio.to_thread(self._versions, store.key, [str(c["id"]) for c in carts])
        # a row on a derived version (epoch milliseconds, see carts.effective_version) is compared by the applier
        changed = [c for c in carts if not isinstance(c.get("version"), int) or c["version"] > known.get(str(c["id"]), 0)
                   or known.get(str(c["id"]), 0) >= DERIVED_VERSION_MIN]
        applied = 0
        for start in range(0, len(changed), CHUNK):
            units = [self.events.cart_unit(store, cart) for cart in changed[start:start + CHUNK]]

            def chunk(session: Session, units=units) -> list:
                return [unit(session) for unit in units]

            try:
                outcomes = await self.events.transactions.run(chunk)
            except (sa.exc.OperationalError, sa.exc.InterfaceError):
                raise  # the database is unavailable: the page is read again next time
            except Exception:
                # one cart failed the chunk: apply them one by one and skip the poison cart, else the cursor
                # would never move past it
                outcomes = []
                for cart, unit in zip(changed[start:start + CHUNK], units):
                    try:
                        outcomes.append(await self.events.transactions.run(unit))
                    except (sa.exc.OperationalError, sa.exc.InterfaceError):
                        raise
                    except Exception as exc:
                        await asyncio.to_thread(self._reject, store.key, cart, exc)
            applied += sum(1 for o in outcomes if o.outcome == "applied")
        return applied

    def _reject(self, store_key: str, cart: dict, exc: Exception) -> None:
        """Log a cart that cannot be applied (in ``rejected_record``); the watcher moves on without it."""
        version = cart.get("version") if isinstance(cart.get("version"), int) else None
        reason = f"cart watcher could not apply the cart: {type(exc).__name__}: {exc}"
        log.error("cart watcher of store %s skips cart %s (version %s): %s", store_key, cart.get("id"), version,
                  reason, exc_info=exc)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(RejectedRecord.__table__).values(
                operation="CartWatcher", store_key=store_key, record_type="cart", record_id=str(cart.get("id"))[:200],
                record_version=version, reason=redact_text(reason)[:2000], created_at=utcnow()))

    def _versions(self, store_key: str, cart_ids: list[str]) -> dict[str, int]:
        c = Cart.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.c.cart_id, c.c.version).where(c.c.store_key == store_key,
                                                                           c.c.cart_id.in_(cart_ids)))
            return {r.cart_id: r.version for r in rows}

    def _cursor(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return leases.cursor(conn, name)

    def _save_cursor(self, name: str, cursor: dict[str, Any], lease_seconds: float) -> bool:
        """Store the cursor and renew the lease, only while this watcher holds it."""
        now = self.clock()
        lt = leases.LT
        with self.engine.begin() as conn:
            return bool(conn.execute(
                sa.update(lt).where(lt.c.name == name, lt.c.owner == self.owner)
                .values(cursor=cursor, expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            ).rowcount)


def _cursor_time(cursor: dict[str, Any] | None) -> datetime | None:
    value = (cursor or {}).get("last_modified_at")
    return parse_ts(value) if isinstance(value, str) and value else None


def _later(cursor: dict[str, Any] | None, candidate: dict[str, Any]) -> dict[str, Any]:
    """The later of two cursors (by lastModifiedAt, then id): the cursor never moves backwards."""
    current = _cursor_time(cursor)
    new = _cursor_time(candidate)
    if current is None or (new is not None and (new, candidate["last_id"]) > (current, str(cursor.get("last_id")))):
        return candidate
    return dict(cursor or {})
