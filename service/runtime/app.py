"""Wiring: database, plugins, Dotdigital clients, dispatcher and gRPC server in one application object.

Shutdown order: health NOT_SERVING -> stop accepting RPCs and let in-flight ones
finish -> stop the back-sync poller -> stop the cart watcher -> stop the inbox processor (finish its batch) -> stop the program trigger processor (finish its pass, hand back claims and enrolment leases) -> stop the dispatcher (drain deliveries, release leases) -> close HTTP
clients. Start-up resolves the lists configured by name (``ctdd.dotdigital.provisioning``) before anything runs.
"""

from __future__ import annotations

import logging

from ctdd.ingest import inbox

from ctdd.delivery import outbox
from ctdd.config import Settings
from ctdd.ingest.contact_sync import ContactSync
from ctdd.db.engine import create_db_engine, is_sqlite, upgrade_database
from ctdd.api.track_event import stored_request_preparer
from ctdd.backsync.events_feed import EventsFeed, writeback_apply
from ctdd.backsync.feeds import BackSync
from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.delivery.account_guard import PauseWatcher
from ctdd.delivery.dispatcher import Dispatcher
from ctdd.dotdigital.accounts import DotdigitalClients
from ctdd.dotdigital.provisioning import resolve_list_names
from ctdd.ingest.cart_watcher import CartWatcher
from ctdd.ingest.events import EventProcessor
from ctdd.api.server import GrpcServer, SyncServicer
from ctdd.hooks.manager import create_plugin_manager
from ctdd.catalog.export import CatalogExporter
from ctdd.catalog.realtime import CatalogFlusher, CatalogRealtime
from ctdd.db.group_commit import GroupCommitRunner
from ctdd.ingest.inbox import InboxLanes, InboxWriter
from ctdd.ingest.plans import is_plan
from ctdd.db.apply_lock import take_apply_lock
from ctdd.ingest.set_apply import apply_plans
from ctdd.db.transactions import TransactionRunner
from ctdd.db.locks import SQLiteDispatcherLock
from ctdd.programs.processor import TriggerProcessor
from ctdd.runtime import metrics
from ctdd.runtime.metrics import HealthMetrics

log = logging.getLogger(__name__)


def _lock_contact_writes(session, units) -> None:
    """The RPCs' group commit on PostgreSQL: the same lock order as the inbox's (``ctdd.db.apply_lock``)."""
    take_apply_lock(session, in_order=bool(units) and all(is_plan(unit) for unit in units))


class App:
    def __init__(self, settings: Settings, *, extra_plugins=(), run_dispatcher: bool = True, serve_grpc: bool = True,
                 commercetools_factory=None, run_backsync: bool | None = None):
        self.settings = settings
        # each inbox lane uses connections of its own at once (its batch's apply, its claims and finishes): more
        # lanes get a bigger pool (10 up to two lanes, 3 more per lane after), so sixteen do not wait for connections
        self.engine = create_db_engine(settings.database_url, pool_size=max(10, 4 + 3 * settings.inbox.lanes))
        self.hooks = create_plugin_manager(extra_plugins, settings=settings)
        self.contact_sync = ContactSync(self.engine, settings, self.hooks)
        # Group commit: concurrent RPCs share transactions (one savepoint each); off = one transaction per RPC.
        # With set_based_apply, the contact changes of one group commit are applied together (ctdd.ingest.set_apply).
        set_based = (dict(set_apply=apply_plans, batchable=is_plan, on_begin=_lock_contact_writes)
                     if settings.set_based_apply else {})
        self.transactions = (GroupCommitRunner(self.engine, max_batch=settings.group_commit_max_batch, **set_based)
                             if settings.group_commit else TransactionRunner(self.engine))
        self._dispatcher_lock: SQLiteDispatcherLock | None = None
        self.clients = DotdigitalClients(settings.accounts)
        self.dispatcher = Dispatcher(self.engine, settings, self.clients, self.hooks) if run_dispatcher else None
        self.grpc: GrpcServer | None = None
        self.pause_watcher: PauseWatcher | None = None
        self.events = EventProcessor(settings, self.contact_sync, self.transactions,
                                     CommercetoolsClients(settings, commercetools_factory))
        # The catalog (ctdd.catalog): ExportCatalog, product messages through the same delta, and the flusher
        # delivering their records next to the dispatcher
        self.catalog = CatalogExporter(self.engine, settings, self.hooks, commercetools=self.events.ct.get,
                                       dotdigital=self.clients.get)
        self.catalog_flusher = CatalogFlusher(self.catalog) if run_dispatcher else None
        self.events.catalog = CatalogRealtime(
            self.catalog, on_change=self.catalog_flusher.wake if self.catalog_flusher is not None else None)
        # Events queued with PROCESSING_QUEUED: written by the gRPC layer, applied next to the dispatcher.
        self.inbox_writer: InboxWriter | None = None
        self.inbox_processor = (
            InboxLanes(self.engine, settings, self.events, worker_id=self.dispatcher.worker_id,
                       prepare=stored_request_preparer(self.events, settings), on_enqueued=self._wake_dispatcher)
            if self.dispatcher is not None else None
        )
        # Carts changed in commercetools (no messages for carts): polled next to the dispatcher, one process
        # per store at a time (a lease), for the stores whose [stores.<key>.cart_watcher] is on.
        self.cart_watcher = (CartWatcher(self.engine, settings, self.events, owner=self.dispatcher.worker_id)
                             if self.dispatcher is not None else None)
        # Program triggers (abandoned cart, post-purchase ...): decided and sent next to the dispatcher.
        self.programs = (
            TriggerProcessor(self.engine, settings, self.clients, self.hooks, worker_id=self.dispatcher.worker_id,
                             on_enqueued=self._wake_dispatcher)
            if self.dispatcher is not None else None
        )
        if serve_grpc:
            self.inbox_writer = InboxWriter(self.engine, max_batch=settings.group_commit_max_batch,
                                            min_commit_interval=settings.inbox.write_interval_seconds)
            servicer = SyncServicer(settings, self.contact_sync, self.transactions, on_enqueued=self._wake_dispatcher,
                                    events=self.events, inbox=self.inbox_writer, on_queued=self._wake_inbox)
            # ExportCatalog (ctdd.catalog.export): reads through the events' commercetools clients
            servicer.catalog = self.catalog
            self.grpc = GrpcServer(servicer, settings.listen)
            if self.dispatcher is not None:  # health: an account paused for 401/403 is NOT_SERVING
                self.dispatcher.guard.on_change = self.grpc.set_paused_accounts
            else:  # no dispatcher here (serve --no-dispatcher): read the pauses the workers keep in the database
                self.pause_watcher = PauseWatcher(self.engine, self.grpc.set_paused_accounts,
                                                  interval=settings.dispatcher.poll_interval_seconds)
        self.port: int | None = None
        # Back-sync (Dotdigital opt-outs -> commercetools): always available for run_once, polling on a
        # schedule when [backsync] is enabled (default: some store has a commercetools client).
        self.backsync = BackSync(self.engine, settings, self.clients, commercetools_factory=commercetools_factory)
        self._run_backsync = settings.backsync_enabled if run_backsync is None else run_backsync
        # the gauges read from the database and the rate budget while this service runs (ctdd.runtime.metrics)
        self.health_metrics = HealthMetrics(self.engine, settings, budget=self.clients.budget,
                                            guard=self.dispatcher.guard if self.dispatcher is not None else None)
        # ... and the events feed (Dotdigital's export subscription, read every few seconds): where it reads an
        # account, the polling above only reconciles (ctdd.backsync.events_feed)
        self.events_feed: EventsFeed | None = None
        if self._run_backsync and settings.backsync.events_feed:
            self.events_feed = EventsFeed(self.engine, settings, self.clients,
                                          writeback_apply(self.engine, settings, self.backsync.ct))
            self.backsync.events_feed = self.events_feed

    def _wake_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def _wake_inbox(self) -> None:
        if self.inbox_processor is not None:
            self.inbox_processor.wake()

    async def start(self) -> None:
        upgrade_database(self.engine)
        # lists configured by name -> ids, once per account; a missing list stops start-up (ConfigError)
        await resolve_list_names(self.settings, self.clients)
        if self.dispatcher is not None:
            if is_sqlite(self.engine):
                # One dispatcher per SQLite file (enforced by a lock file, see ctdd.db.locks): anything still
                # in flight belongs to a previous run.
                self._dispatcher_lock = SQLiteDispatcherLock.for_engine(self.engine)
                if self._dispatcher_lock is not None:
                    self._dispatcher_lock.acquire()
                released = outbox.release_leases(self.engine)
                if released:
                    log.warning("released %d in-flight message(s) left by a previous run", released)
                released = inbox.release(self.engine)
                if released:
                    log.warning("released %d queued event(s) claimed by a previous run", released)
            self.dispatcher.start()
            assert self.inbox_processor is not None
            self.inbox_processor.start()
            if self.programs is not None and self.programs.enabled:
                self.programs.start()
            assert self.cart_watcher is not None
            self.cart_watcher.start()
            if self.catalog_flusher is not None:
                self.catalog_flusher.start()
        if self.grpc is not None:
            self.port = await self.grpc.start()
            if self.pause_watcher is not None:
                self.pause_watcher.start()
            log.info("ctdd-sync listening on %s (port %s, %s), database %s", self.settings.listen, self.port,
                     self.grpc.security.describe(), self.engine.url.render_as_string(hide_password=True))
        if self._run_backsync:
            self.backsync.start()
            if self.events_feed is not None:
                self.events_feed.start()
        metrics.register(self.health_metrics)

    async def stop(self, grace: float = 5.0) -> None:
        metrics.unregister(self.health_metrics)
        if self.pause_watcher is not None:
            await self.pause_watcher.stop()
        if self.grpc is not None:
            await self.grpc.begin_shutdown()
            await self.grpc.stop(grace)
        if self.events_feed is not None:
            await self.events_feed.stop(grace=grace)  # before the back-sync: it applies with its clients
        await self.backsync.stop(grace=grace)  # finish or cancel a poll, before its clients close
        if self.cart_watcher is not None:
            await self.cart_watcher.stop(grace=grace)  # finish or cancel a poll, give the leases back
        if self.inbox_processor is not None:
            await self.inbox_processor.stop()  # before the dispatcher: it may still enqueue
        if self.programs is not None:
            await self.programs.stop()  # before the dispatcher: list joins are enqueued
        if self.catalog_flusher is not None:
            await self.catalog_flusher.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop(drain_seconds=grace)
        if self._dispatcher_lock is not None:
            self._dispatcher_lock.release()
        await self.transactions.close()
        if self.inbox_writer is not None:
            await self.inbox_writer.close()
        await self.events.ct.aclose()
        await self.clients.aclose()
        self.engine.dispose()
        log.info("ctdd-sync stopped")
