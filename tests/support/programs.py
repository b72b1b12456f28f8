"""Helpers of the program-trigger tests: settings with programs, contacts known to the sandbox and to the
database, carts and orders written as the ingest side writes them, and a processor on a virtual clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.clock import VirtualClock
from ctdd.db.models import Cart, Contact, OrderSummary, ProgramTrigger
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.hooks.manager import create_plugin_manager
from ctdd.programs import scheduling
from ctdd.programs.processor import TriggerProcessor
from support.helpers import make_settings

START = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)


def program_settings(database_url: str, sandbox, programs: dict[str, dict[str, dict]], *, stores_extra=None,
                     **programs_cfg: Any):
    """Settings on ``sandbox`` with ``programs`` per store key (``{"uk": {"abandoned_cart": {...}}}``) and
    ``[programs]`` values ``programs_cfg``."""
    extra = {key: dict(value) for key, value in (stores_extra or {}).items()}
    for store_key, kinds in programs.items():
        extra.setdefault(store_key, {})["programs"] = kinds
    settings = make_settings(database_url, sandbox, stores_extra=extra)
    return settings.replace(programs=settings.programs.replace(**programs_cfg)) if programs_cfg else settings


_OPEN_CLIENTS: list[DotdigitalClients] = []


def processor(engine, settings, clock, *, plugins=(), worker_id: str = "worker-1", clients=None) -> TriggerProcessor:
    """A processor on ``clock``; its Dotdigital clients are closed by :func:`close_clients` (a fixture)."""
    hooks = create_plugin_manager(plugins, load_entrypoints=False, env={})
    if clients is None:
        clients = DotdigitalClients(settings.accounts)
        _OPEN_CLIENTS.append(clients)
    return TriggerProcessor(engine, settings, clients, hooks, worker_id=worker_id, clock=clock)


async def close_clients() -> None:
    while _OPEN_CLIENTS:
        await _OPEN_CLIENTS.pop().aclose()


async def dd_contacts(sandbox, emails: list[str], *, status: str | None = None) -> list[int]:
    """Create contacts in the sandbox over HTTP; their Dotdigital contact ids."""
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url) as c:
        sem = asyncio.Semaphore(16)

        async def one(email: str) -> int:
            body: dict = {"identifiers": {"email": email}}
            if status:
                body["channelProperties"] = {"email": {"status": status}}
            async with sem:
                return (await c.upsert_contact("email", email, body)).contact_id

        return list(await asyncio.gather(*(one(e) for e in emails)))


def add_contact(engine, *, account: str = "main", email: str | None = None, mobile: str | None = None,
                dd_id: int | None = None, now: datetime = START, **status: Any) -> int:
    """A contact row as SyncContact leaves it (``status``: dd_email_status, shop_sms_consent ...)."""
    values = dict(account=account, email=email, mobile_number=mobile, dotdigital_contact_id=dd_id, next_sequence=1,
                  created_at=now, updated_at=now, **status)
    with engine.begin() as conn:
        return conn.execute(sa.insert(Contact.__table__).values(**values).returning(Contact.__table__.c.id)).scalar_one()


async def seed_contacts(engine, sandbox, count: int, *, prefix: str = "shopper") -> list[int]:
    emails = [f"{prefix}{i}@example.com" for i in range(count)]
    dd_ids = await dd_contacts(sandbox, emails)
    rows = [dict(account="main", email=e, dotdigital_contact_id=d, dd_email_status="subscribed",
                 dd_email_status_at=START, next_sequence=1, created_at=START, updated_at=START)
            for e, d in zip(emails, dd_ids)]
    with engine.begin() as conn:
        conn.execute(sa.insert(Contact.__table__), rows)
        return list(conn.execute(sa.select(Contact.__table__.c.id).where(Contact.__table__.c.email.in_(emails))
                                 .order_by(Contact.__table__.c.id)).scalars())


def put_cart(engine, settings, store_key: str, cart_id: str, *, version: int, contact_id: int | None,
             modified: datetime, lines: int = 2, state: str = "Active", now: datetime | None = None,
             order_id: str | None = None, merged_into: str | None = None) -> None:
    """Write the cart row and call the scheduling as the ingest side does, in one transaction."""
    store = settings.stores[store_key]
    now = now or modified
    values = dict(version=version, contact_id=contact_id, state=state, line_item_count=lines,
                  last_modified_at=modified, order_id=order_id, merged_into=merged_into, updated_at=now)
    with Session(engine) as session, session.begin():
        row = session.get(Cart, (store_key, cart_id))
        if row is None:
            session.add(Cart(store_key=store_key, cart_id=cart_id, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)
        session.flush()
        facts = scheduling.CartFacts(cart_id, version, contact_id, state, lines, modified)
        if state == "Active":
            scheduling.on_cart_changed(session, store, facts, now)
        else:
            scheduling.on_cart_closed(session, store, cart_id, state, now, order_id=order_id, merged_into=merged_into)


def put_order(engine, settings, store_key: str, order_id: str, *, contact_id: int, placed: datetime,
              state: str = "Open", total: float = 50.0, refund: float = 0.0, schedule: bool = True,
              first_order: bool = True, cart_id: str | None = None, now: datetime | None = None) -> None:
    store = settings.stores[store_key]
    now = now or placed
    with Session(engine) as session, session.begin():
        row = session.get(OrderSummary, (store.commercetools_project, order_id))
        if row is None:
            session.add(OrderSummary(project_key=store.commercetools_project, order_id=order_id, contact_id=contact_id,
                                     order_key=order_id, version=1, created_at=placed, total=total, currency="GBP",
                                     store_key=store_key, order_state=state, refund_total=refund, updated_at=now))
        else:
            row.order_state, row.refund_total, row.updated_at = state, refund, now
        session.flush()
        if schedule:
            scheduling.on_order_placed(session, store, contact_id, order_id, placed, now, first_order=first_order,
                                       cart_id=cart_id)


def triggers(engine, **where) -> list[dict]:
    table = ProgramTrigger.__table__
    query = sa.select(table).where(*(table.c[k] == v for k, v in where.items())).order_by(table.c.id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def one_trigger(engine, **where) -> dict:
    rows = triggers(engine, **where)
    assert len(rows) == 1, rows
    return rows[0]


async def run_until(proc: TriggerProcessor, clock: VirtualClock, until: datetime, *, step: timedelta,
                    sandbox=None) -> None:
    """Advance ``clock`` by ``step`` up to ``until``, with a processor pass at every step."""
    while True:
        await proc.run_once()
        if clock() >= until:
            return
        clock.advance(min(step, until - clock()))
