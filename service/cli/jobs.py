"""One-shot jobs against the configured accounts: ``ctdd dotdigital setup`` and ``ctdd backsync run-once``."""

from __future__ import annotations

import asyncio
import sys

from ctdd.backsync.feeds import BackSync
from ctdd.cli.loading import load
from ctdd.config import ConfigError
from ctdd.db.engine import create_db_engine, upgrade_database
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.errors import DotdigitalError
from ctdd.dotdigital.provisioning import resolve_list_names, run_setup


async def dotdigital_setup(args) -> int:
    """``ctdd dotdigital setup [--dry-run] [--account NAME]``."""
    settings = load(args)
    if not settings.accounts:
        raise ConfigError("no Dotdigital account configured: pass --config FILE (see docs/configuration.md)")
    clients = DotdigitalClients(settings.accounts)
    try:
        result = await run_setup(settings, clients, dry_run=args.dry_run,
                                 accounts=[args.account] if args.account else None)
    except DotdigitalError as exc:
        print(f"ctdd: Dotdigital: {exc}", file=sys.stderr)
        return 1
    finally:
        await clients.aclose()
    return 1 if result.errors else 0


async def backsync_run_once(args) -> int:
    """``ctdd backsync run-once [--store KEY | --account NAME]``: one poll, counts printed."""
    settings = load(args)
    if args.store:
        store = settings.store(args.store)
        if store is None:
            raise ConfigError(f"unknown store {args.store!r} (known: {sorted(settings.stores)})")
        accounts = [store.account]
    elif args.account:
        if args.account not in settings.accounts:
            raise ConfigError(f"unknown account {args.account!r} (known: {sorted(settings.accounts)})")
        accounts = [args.account]
    else:
        accounts = None
    engine = create_db_engine(settings.database_url)
    clients = DotdigitalClients(settings.accounts)
    backsync = BackSync(engine, settings, clients)
    try:
        await asyncio.to_thread(upgrade_database, engine)
        await resolve_list_names(settings, clients)
        results = await backsync.run_once(accounts)
    finally:
        await backsync.stop()
        await clients.aclose()
        engine.dispose()
    if not results:
        print("back-sync: no account has a store with a commercetools client; nothing to do", file=sys.stderr)
    for result in results:
        print(result.summary(), flush=True)
    return 0 if all(r.complete or not r.polled for r in results) else 1
