"""``ctdd catalog export``: a store's catalog to Dotdigital, with the progress ``ExportCatalog`` streams.

    ctdd catalog export --store KEY [--full | --modified-since T] [--categories | --no-categories]
                        [--collection NAME] [--config F] [--database-url U]
                        [--target HOST:PORT [--target-tls ...]]

By default the export runs in this process against the configured database and accounts (the same
``ctdd.catalog.export`` run as the service's, holding the same per-store lease: a service exporting the
store at the same time makes this one refused). With ``--target`` it calls a running service's
``ExportCatalog`` instead. ``--full`` sends every record again, unchanged ones too (for a collection emptied
or recreated in Dotdigital; in-process only); ``--modified-since`` reads only products modified after T and
removes nothing. On a terminal the progress is a bar; otherwise one line per page. Exit codes: 0 done;
1 refused (the store's catalog is not enabled, another export of the store is running) or failed part-way
(run it again: it resumes); 2 bad arguments or configuration (an unknown store).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from ctdd.cli.loading import load
from ctdd.progress import terminal_bar

PROG = "ctdd catalog export"


def _moment(text: str) -> datetime:
    """An ISO 8601 time, UTC unless it has an offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an ISO 8601 time (2026-01-31T12:00:00Z)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``ctdd catalog export`` to the subcommands ``sub``; ``common`` adds --config and the shared flags."""
    from ctdd.cli.adapters import add_target_arguments

    catalog = sub.add_parser("catalog", help="the catalog export: a store's products and categories -> Dotdigital")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    export = catalog_sub.add_parser(
        "export", help="export a store's catalog now (only what changed; resumes an interrupted export)")
    common(export)
    export.add_argument("--store", required=True, help="the store whose catalog is exported")
    what = export.add_mutually_exclusive_group()
    what.add_argument("--full", action="store_true",
                      help="send every record again, unchanged ones too (a collection emptied or recreated in "
                           "Dotdigital); not with --target")
    what.add_argument("--modified-since", type=_moment, default=None, metavar="T",
                      help="only products modified after T (ISO 8601, UTC unless it has an offset); removes nothing")
    export.add_argument("--categories", action=argparse.BooleanOptionalAction, default=None,
                        help="export the categories too (default: the store's include_categories)")
    export.add_argument("--collection", default=None, help="the products' collection (default: the store's)")
    export.add_argument("--target", default=None, metavar="HOST:PORT",
                        help="call this running service's ExportCatalog instead of exporting in this process")
    add_target_arguments(export)
    export.set_defaults(func=lambda a: asyncio.run(export_command(a)), listen=None)


class ProgressView:
    """The progress on ``out``: a tqdm bar redrawn in place on a terminal, else one line per report."""

    def __init__(self, store: str, out: TextIO):
        self.store = store
        self.out = out
        self.tty = out.isatty()
        self._bar = None

    def show(self, read: int, total: int | None, enqueued: int, rejected: int, done: bool) -> None:
        counts = f"{read} products read, {enqueued} records sent or removed, {rejected} rejected"
        if not self.tty:
            print(f"{'done' if done else 'progress'}: {counts}", file=self.out, flush=True)
            return
        total = max(total, read) if total else None
        if self._bar is None:
            self._bar = terminal_bar(self.store, total, read, counts, self.out)
        else:
            self._bar.counts, self._bar.total, self._bar.n = counts, total, read
            if not done:
                self._bar.refresh()
        if done:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


async def export_command(args: argparse.Namespace) -> int:
    from ctdd.domain.catalog import COLLECTION_NAME_RULE, is_collection_name

    if args.collection is not None and not is_collection_name(args.collection):
        return _fail(f"--collection: not a Dotdigital collection name ({COLLECTION_NAME_RULE})", 2)
    if args.target:  # the running service knows its stores (an unknown one is its INVALID_ARGUMENT: exit 2)
        if args.full:
            return _fail("--full runs in this process only: leave out --target", 2)
        return await _remote(args)
    settings = load(args)
    if args.store not in settings.stores:
        return _fail(f"unknown store {args.store!r} (known: {', '.join(sorted(settings.stores)) or 'none'})", 2)
    return await _local(args, settings)


async def _local(args: argparse.Namespace, settings) -> int:
    from ctdd.catalog.export import CatalogExporter, ExportBusy, ExportNotPossible
    from ctdd.commercetools.clients import CommercetoolsClients
    from ctdd.commercetools.errors import CommercetoolsError
    from ctdd.db.engine import create_db_engine, upgrade_database
    from ctdd.dotdigital.accounts import DotdigitalClients
    from ctdd.dotdigital.errors import DotdigitalError
    from ctdd.hooks.manager import create_plugin_manager

    engine = create_db_engine(settings.database_url)
    commercetools = CommercetoolsClients(settings)
    dotdigital = DotdigitalClients(settings.accounts)
    view = ProgressView(args.store, sys.stdout)
    try:
        await asyncio.to_thread(upgrade_database, engine)
        exporter = CatalogExporter(engine, settings, create_plugin_manager(settings=settings),
                                   commercetools=commercetools.get, dotdigital=dotdigital.get)
        last: Any = None
        async for progress in exporter.export(args.store, modified_since=args.modified_since,
                                              include_categories=args.categories, collection=args.collection,
                                              resend=args.full):
            if last is None and progress.resumed:
                print(f"resuming the interrupted export of store {args.store}", flush=True)
            last = progress
            view.show(progress.products_read, progress.products_total, progress.records_enqueued,
                      progress.records_rejected, progress.done)
        view.close()
        _summary(last.products_read, last.records_enqueued, last.records_rejected, last.records_removed,
                 last.dotdigital_calls)
        return 0
    except ExportNotPossible as exc:
        view.close()
        return _fail(f"refused (FAILED_PRECONDITION): {exc}", 1)
    except ExportBusy as exc:
        view.close()
        return _fail(f"refused (ABORTED): {exc}; try again when it has finished", 1)
    except (DotdigitalError, CommercetoolsError, OSError) as exc:
        view.close()
        return _fail(f"failed: {exc}; run it again to resume where it stopped", 1)
    finally:
        await commercetools.aclose()
        await dotdigital.aclose()
        engine.dispose()


def _summary(read: int, enqueued: int, rejected: int, removed: int | None, calls: int | None) -> None:
    extra = "" if removed is None else f", {removed} removed, {calls} Dotdigital calls"
    print(f"store exported: {read} products read, {enqueued} records changed{extra}, {rejected} rejected "
          f"(see `ctdd failures list --kind catalog.export`)" if rejected else
          f"store exported: {read} products read, {enqueued} records changed{extra}", flush=True)


async def _remote(args: argparse.Namespace) -> int:
    import grpc

    from ctdd.cli.adapters import target_security
    from ctdd.sync.v1 import sync_service_pb2 as pb
    from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc

    security = target_security(args)
    request = pb.ExportCatalogRequest(store_key=args.store, collection_name=args.collection or "",
                                      include_categories=bool(args.categories))
    if args.modified_since is not None:
        request.modified_since.FromDatetime(args.modified_since)
    view = ProgressView(args.store, sys.stdout)
    last = None
    async with security.channel(args.target) as channel:
        stub = pb_grpc.SyncServiceStub(channel)
        try:
            async for reply in stub.ExportCatalog(request, metadata=security.metadata or None):
                last = reply
                view.show(reply.products_read, None, reply.records_enqueued, reply.records_rejected, reply.done)
        except grpc.aio.AioRpcError as exc:
            view.close()
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                return _fail(f"refused (INVALID_ARGUMENT): {exc.details()}", 2)
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
                return _fail(f"refused ({code.name}): {exc.details()}", 1)
            return _fail(f"failed ({code.name}): {exc.details()}; run it again to resume where it stopped", 1)
    view.close()
    if last is None or not last.done:
        return _fail("the service ended the stream before the export was done; run it again to resume", 1)
    _summary(last.products_read, last.records_enqueued, last.records_rejected, None, None)
    return 0
