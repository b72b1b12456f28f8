"""``ctdd dotdigital setup``: create what the configured stores need in each Dotdigital account.

For every configured account:

- **data fields**: every target of the stores' ``data_fields`` mappings, with the type from
  ``ctdd.config.data_field_type``. Names are checked (at most 20 characters of ``[A-Za-z0-9_-]``).
  Dotdigital answers ``ERROR_NON_UNIQUE_DATAFIELD`` for a name that exists: that counts as "exists".
- **lists** (address books): a list configured by NAME (``lists.newsletter = "Newsletter"``) is found by
  name, case-insensitively, or created. A list configured by id must exist; a missing id is reported, since
  a list cannot be created with a chosen id.
- **insight collections**: ``Orders`` (contact/orders), ``CartInsight`` (contact/cartInsight),
  ``ProductViews`` and ``CustomEvents`` (contact/custom), the collections TrackEvent writes; and for every
  store whose catalog is enabled its account-scoped ``Catalog_<store>`` (account/catalog) and, with
  ``include_categories``, ``Categories_<store>`` (account/productCategories), or the configured names.

- **programs**: every program of ``[stores.<key>.programs.<kind>]`` (by id, or by name, case-insensitively)
  must exist and be ``Active`` (only an Active program accepts enrolments and starts on list joins). Setup
  cannot create programs: a missing or inactive program is reported as a problem.

- **events subscription**: with ``[backsync] events_feed`` on and the back-sync enabled, the account's Events API
  export subscription ``ctdd-sync-<account>`` (``ctdd.dotdigital.event_subscriptions``) with the event types the
  back-sync reads: created when missing, made active again when Dotdigital suspended it, completed when it
  lacks a type. The events feed finds it by name at start.

The plan is computed from what the account has (GET calls only), printed item by item as ``create`` or
``exists``, and then applied unless ``dry_run``. A second run creates nothing.

:func:`resolve_list_names` is what the service runs at start: it turns list names into ids once per
account (``GET /v2/address-books``) and fails start-up when a named list does not exist.
:func:`resolve_program_names` does the same for programs configured by name (``GET /v2/programs``); the
trigger processor runs it at start and keeps the triggers of a program it cannot find until it can.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Iterable, TextIO

from ctdd.config import ConfigError, Settings, StoreConfig, data_field_type
from ctdd.domain.catalog import collection_names as catalog_collection_names
from ctdd.domain.collections import COLLECTION_TYPES
from ctdd.domain.datafields import is_valid_data_field_name
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.dotdigital.event_subscriptions import CREATE as SUB_CREATE
from ctdd.dotdigital.event_subscriptions import EXISTS as SUB_EXISTS
from ctdd.dotdigital.event_subscriptions import ensure_event_subscription, plan_event_subscription

log = logging.getLogger(__name__)


def _collections() -> dict[str, str]:
    """The contact-scoped insight collections the service writes."""
    return dict(COLLECTION_TYPES)


CREATE, EXISTS, MISSING, INVALID = "create", "exists", "missing", "invalid"


@dataclass
class PlanItem:
    """One thing an account needs, and what setup does (or did) about it."""

    account: str
    kind: str  # "data field" | "list" | "collection" | "program" | "events"
    name: str
    #: type of a data field, "scope/type" of a collection, the config keys naming a list
    detail: str
    action: str  # create | exists | missing | invalid
    note: str = ""
    #: lists: the address book id (known, or once created)
    list_id: int | None = None
    #: lists: (store key, list key) pairs configured with this name (resolved ids are printed for them)
    refs: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False

    def describe(self) -> str:
        label = f"{self.kind:<10}  {self.name} ({self.detail})"
        action = self.action
        if self.action == CREATE and self.done:
            action = "created"
        extra = f"  [{self.note}]" if self.note else ""
        if self.list_id is not None:
            extra = f"  -> id {self.list_id}" + extra
        return f"  {label:<64} {action}{extra}"


@dataclass
class SetupResult:
    items: list[PlanItem]
    dry_run: bool

    @property
    def errors(self) -> list[PlanItem]:
        return [i for i in self.items if i.action in (MISSING, INVALID)]

    @property
    def to_create(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == CREATE]


async def plan_account(client: DotdigitalClient, account: str, stores: Iterable[StoreConfig]) -> list[PlanItem]:
    """What ``account`` needs for ``stores``, compared with what it has (read-only)."""
    stores = list(stores)
    items: list[PlanItem] = []

    existing_fields = {str(f.get("name", "")).casefold(): f for f in await client.list_data_fields()}
    wanted_fields: dict[str, str] = {}
    for store in stores:
        for name in store.data_fields.values():
            wanted_fields.setdefault(name.casefold(), name)
    for folded, name in sorted(wanted_fields.items()):
        wanted_type = data_field_type(name)
        if not is_valid_data_field_name(name):
            items.append(PlanItem(account, "data field", name, wanted_type, INVALID,
                                  "not a Dotdigital data-field name: at most 20 characters of A-Z a-z 0-9 _ -"))
            continue
        have = existing_fields.get(folded)
        if have is None:
            items.append(PlanItem(account, "data field", name, wanted_type, CREATE))
        else:
            note = "" if str(have.get("type")) == wanted_type else f"exists as {have.get('type')}, expected {wanted_type}"
            items.append(PlanItem(account, "data field", name, wanted_type, EXISTS, note))

    books = await client.list_address_books()
    by_id = {int(b["id"]): b for b in books if isinstance(b.get("id"), int)}
    by_name: dict[str, dict] = {}
    for book in sorted(books, key=lambda b: b.get("id", 0)):
        by_name.setdefault(str(book.get("name", "")).strip().casefold(), book)
    named: dict[str, PlanItem] = {}
    for store in stores:
        for list_key, name in store.list_names.items():
            folded = name.strip().casefold()
            item = named.get(folded)
            if item is None:
                have = by_name.get(folded)
                item = PlanItem(account, "list", f'"{name.strip()}"', "", EXISTS if have else CREATE,
                                list_id=int(have["id"]) if have else None)
                if have and str(have.get("name", "")).strip() != name.strip():
                    item.note = f'"{str(have.get("name", "")).strip()}"'  # matched case-insensitively
                named[folded] = item
                items.append(item)
            item.refs.append((store.key, list_key))
        for list_key, list_id in store.lists.items():
            if list_key in store.list_names:
                continue  # resolved from a name at start: the named item covers it
            have = by_id.get(list_id)
            items.append(PlanItem(
                account, "list", f"id {list_id}", f"stores.{store.key}.lists.{list_key}",
                EXISTS if have else MISSING,
                f'"{have.get("name")}"' if have else "no list with this id in the account; configure a name "
                                                     "instead to have setup create it",
                list_id=list_id if have else None, refs=[(store.key, list_key)]))
    for item in named.values():
        item.detail = ", ".join(f"stores.{s}.lists.{k}" for s, k in item.refs)

    items += await _plan_programs(client, account, stores)

    existing_collections = {str(c.get("collectionName", "")).casefold(): c for c in await client.list_collections()}
    wanted = [(name, f"contact/{collection_type}") for name, collection_type in _collections().items()]
    wanted += _catalog_collections(stores)
    for name, detail in wanted:
        have = existing_collections.get(name.casefold())
        if have is None:
            items.append(PlanItem(account, "collection", name, detail, CREATE))
        else:
            actual = f"{have.get('collectionScope')}/{have.get('collectionType')}"
            note = "" if actual == detail else f"exists as {actual}"
            items.append(PlanItem(account, "collection", name, detail, EXISTS, note))
    return items


def _catalog_collections(stores: Iterable[StoreConfig]) -> list[tuple[str, str]]:
    """The account-scoped catalog collections of the stores whose catalog is enabled (docs/catalog.md):
    ``account/catalog`` for the products, ``account/productCategories`` for the categories when exported."""
    out: dict[str, str] = {}
    for store in stores:
        cfg = store.catalog
        if not cfg.enabled:
            continue
        products, categories = catalog_collection_names(store.key, cfg.collection, cfg.categories_collection)
        out.setdefault(products, "account/catalog")
        if cfg.include_categories:
            out.setdefault(categories, "account/productCategories")
    return list(out.items())


async def _plan_programs(client: DotdigitalClient, account: str, stores: list[StoreConfig]) -> list[PlanItem]:
    """One item per configured program: ``exists`` when it is Active, else a problem (``missing`` / ``invalid``)."""
    wanted = [(store, kind, cfg) for store in stores for kind, cfg in store.programs.items() if cfg.enabled]
    if not wanted:
        return []
    programs = await client.list_programs()
    by_id = {p.id: p for p in programs}
    by_name: dict[str, object] = {}
    for program in sorted(programs, key=lambda p: p.id):
        by_name.setdefault(program.name.strip().casefold(), program)
    items = []
    for store, kind, cfg in wanted:
        ref = f"stores.{store.key}.programs.{kind}"
        have = by_id.get(cfg.program) if isinstance(cfg.program, int) else by_name.get(cfg.program.strip().casefold())
        name = f"id {cfg.program}" if isinstance(cfg.program, int) else f'"{cfg.program.strip()}"'
        if have is None:
            items.append(PlanItem(account, "program", name, ref, MISSING,
                                  "no program with this " + ("id" if isinstance(cfg.program, int) else "name")
                                  + " in the account; create it in Dotdigital (setup cannot create programs)"))
        elif have.status != "Active":
            items.append(PlanItem(account, "program", name, ref, INVALID,
                                  f"program {have.id} is {have.status}: only an Active program accepts enrolments; "
                                  "activate it in Dotdigital"))
        else:
            items.append(PlanItem(account, "program", name, ref, EXISTS, f"id {have.id}, Active"))
    return items


async def resolve_program_names(settings: Settings, clients) -> tuple[dict[tuple[str, str], int], list[str]]:
    """The ids of the programs configured by name, once per account (``GET /v2/programs``).

    Returns ``({(store key, program kind): program id}, [what could not be resolved])``; programs configured
    by id are not looked up. Accounts without named programs are not called.
    """
    resolved: dict[tuple[str, str], int] = {}
    missing: list[str] = []
    for account in settings.accounts:
        named = [(store, kind, cfg) for store in settings.stores.values() if store.account == account
                 for kind, cfg in store.programs.items() if isinstance(cfg.program, str)]
        if not named:
            continue
        ids: dict[str, int] = {}
        for program in sorted(await clients.get(account).list_programs(), key=lambda p: p.id):
            ids.setdefault(program.name.strip().casefold(), program.id)
        for store, kind, cfg in named:
            program_id = ids.get(cfg.program.strip().casefold())
            if program_id is None:
                missing.append(f"stores.{store.key}.programs.{kind}.program = {cfg.program!r} (account {account})")
            else:
                resolved[(store.key, kind)] = program_id
    return resolved, missing


async def apply_item(client: DotdigitalClient, item: PlanItem) -> None:
    """Create one planned item (idempotent: an item that appeared meanwhile counts as existing)."""
    if item.action != CREATE:
        return
    if item.kind == "data field":
        created = await client.create_data_field(item.name, item.detail)
        if not created:
            item.action = EXISTS
    elif item.kind == "list":
        name = item.name.strip('"')
        try:
            book = await client.create_address_book(name)
        except DotdigitalError as exc:
            if "ERROR_ADDRESSBOOK_DUPLICATE" not in f"{exc.code} {exc}":
                raise
            book = next((b for b in await client.list_address_books()
                         if str(b.get("name", "")).strip().casefold() == name.casefold()), None)
            if book is None:
                raise
            item.action = EXISTS
        item.list_id = int(book["id"])
    elif item.kind == "events":
        plan = await ensure_event_subscription(client, item.account)
        if plan.action == SUB_EXISTS:
            item.action = EXISTS
        item.note = f"id {plan.subscription.id}" if plan.subscription else item.note
    elif item.kind == "collection":
        scope, collection_type = item.detail.split("/", 1)
        created = await client.create_collection(item.name, scope=scope, collection_type=collection_type)
        if not created:
            item.action = EXISTS
    item.done = True


async def run_setup(settings: Settings, clients, *, dry_run: bool = False, accounts: Iterable[str] | None = None,
                    out: TextIO | None = None) -> SetupResult:
    """Plan (and unless ``dry_run`` apply) the set-up of ``accounts`` (default: every configured account).

    ``clients`` has ``get(account) -> DotdigitalClient`` (``ctdd.delivery.dispatcher.DotdigitalClients``).
    The plan and the result are printed to ``out`` (default stdout). Personal data is never printed.
    """
    out = out or sys.stdout
    names = list(accounts) if accounts is not None else list(settings.accounts)
    result = SetupResult([], dry_run)
    print("Dotdigital setup" + (" (dry run: nothing is written)" if dry_run else ""), file=out, flush=True)
    for account in names:
        if account not in settings.accounts:
            raise ConfigError(f"unknown account {account!r} (known: {sorted(settings.accounts)})")
        stores = [s for s in settings.stores.values() if s.account == account]
        client = clients.get(account)
        items = await plan_account(client, account, stores)
        if settings.backsync.events_feed and settings.backsync_enabled and any(s.commercetools for s in stores):
            items.append(await _plan_events(client, account))
        if not dry_run:
            for item in items:
                await apply_item(client, item)
        result.items += items
        print(f"account {account} ({len(stores)} store(s)):", file=out)
        for item in items:
            print(item.describe(), file=out)
        lists = [i for i in items if i.kind == "list" and i.refs]
        if lists:
            print("  list ids:", file=out)
            for item in lists:
                if item.action == MISSING:
                    shown = "(missing)"
                elif item.list_id is None:
                    shown = "(created by setup)"
                else:
                    shown = str(item.list_id)
                for store_key, list_key in item.refs:
                    print(f"    stores.{store_key}.lists.{list_key} = {shown}", file=out)
        out.flush()
    created = sum(1 for i in result.items if i.action == CREATE and i.done)
    planned = len(result.to_create)
    existing = sum(1 for i in result.items if i.action == EXISTS)
    if dry_run:
        print(f"plan: {planned} to create, {existing} already there, {len(result.errors)} problem(s)", file=out)
    else:
        print(f"done: {created} created, {existing} already there, {len(result.errors)} problem(s)", file=out)
    for item in result.errors:
        print(f"problem: account {item.account}: {item.kind} {item.name} ({item.detail}): {item.note}", file=out)
    out.flush()
    return result


async def _plan_events(client: DotdigitalClient, account: str) -> PlanItem:
    """The account's events subscription as a plan item (``create`` also covers reactivating or completing it)."""
    plan = await plan_event_subscription(client, account)
    detail = "back-sync event types"
    if plan.action == SUB_EXISTS:
        return PlanItem(account, "events", plan.name, detail, EXISTS, f"id {plan.subscription.id}" if plan.subscription else "")
    note = "" if plan.action == SUB_CREATE else (
        "inactive: make active again" if plan.subscription and not plan.subscription.active
        else "add event types " + ", ".join(plan.missing_types))
    return PlanItem(account, "events", plan.name, detail, CREATE, note)


async def resolve_list_names(settings: Settings, clients) -> dict[str, dict[str, int]]:
    """Resolve the lists configured by name to ids, once per account, completing ``store.lists`` in place.

    Returns ``{store key: {list key: id}}`` of what was resolved. Raises ``ConfigError`` naming every list
    that does not exist ("run ctdd dotdigital setup"). Accounts without named lists are not called.
    """
    resolved: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    for account in settings.accounts:
        stores = [s for s in settings.stores.values() if s.account == account and s.list_names]
        if not stores:
            continue
        books = await clients.get(account).list_address_books()
        ids: dict[str, int] = {}
        for book in sorted(books, key=lambda b: b.get("id", 0)):
            if isinstance(book.get("id"), int):
                ids.setdefault(str(book.get("name", "")).strip().casefold(), book["id"])
        for store in stores:
            if not isinstance(store.lists, dict):
                raise TypeError(f"stores.{store.key}.lists must be a dict to receive resolved list ids")
            for list_key, name in store.list_names.items():
                list_id = ids.get(name.strip().casefold())
                if list_id is None:
                    missing.append(f"stores.{store.key}.lists.{list_key} = {name!r} (account {account})")
                    continue
                store.lists[list_key] = list_id
                resolved.setdefault(store.key, {})[list_key] = list_id
    if missing:
        raise ConfigError("no Dotdigital list with the configured name: " + "; ".join(missing)
                          + ". Run `ctdd dotdigital setup` to create the lists (or fix the names)")
    for store_key, lists in resolved.items():
        log.info("store %s: lists resolved by name: %s", store_key,
                 ", ".join(f"{k}={v}" for k, v in sorted(lists.items())))
    return resolved
