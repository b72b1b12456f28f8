"""Wiring: database, plugins, Dotdigital clients, dispatcher and gRPC server in one application object.

Shutdown order (engineering notes §2.3): health NOT_SERVING -> stop accepting RPCs and let in-flight ones
finish -> stop the dispatcher (drain deliveries, release leases) -> close HTTP clients.
"""

from __future__ import annotations

import logging

from service import outbox
from service.config import Settings
from service.contact_sync import ContactSync
from service.db.engine import create_db_engine, is_sqlite, upgrade_database
from service.dispatcher import Dispatcher, DotdigitalClients
from service.grpc_api import GrpcServer, SyncServicer
from service.plugins import create_plugin_manager
from service.transactions import TransactionRunner

log = logging.getLogger(__name__)


class App:
    def __init__(self, settings: Settings, *, extra_plugins=(), run_dispatcher: bool = True, serve_grpc: bool = True):
        self.settings = settings
        self.engine = create_db_engine(settings.database_url)
        self.hooks = create_plugin_manager(extra_plugins)
        self.contact_sync = ContactSync(self.engine, settings, self.hooks)
        self.transactions = TransactionRunner(self.engine)
        self.clients = DotdigitalClients(settings.accounts)
        self.dispatcher = Dispatcher(self.engine, settings, self.clients, self.hooks) if run_dispatcher else None
        self.grpc: GrpcServer | None = None
        if serve_grpc:
            servicer = SyncServicer(settings, self.contact_sync, self.transactions, on_enqueued=self._wake_dispatcher)
            self.grpc = GrpcServer(servicer, settings.listen)
        self.port: int | None = None

    def _wake_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def start(self) -> None:
        upgrade_database(self.engine)
        if self.dispatcher is not None:
            if is_sqlite(self.engine):
                # One dispatcher per SQLite file: anything still in flight belongs to a previous run.
                released = outbox.release_leases(self.engine)
                if released:
                    log.warning("released %d in-flight message(s) left by a previous run", released)
            self.dispatcher.start()
        if self.grpc is not None:
            self.port = await self.grpc.start()
            log.info("ctdd-sync listening on %s (port %s), database %s", self.settings.listen, self.port,
                     self.engine.url.render_as_string(hide_password=True))

    async def stop(self, grace: float = 5.0) -> None:
        if self.grpc is not None:
            await self.grpc.begin_shutdown()
            await self.grpc.stop(grace)
        if self.dispatcher is not None:
            await self.dispatcher.stop(drain_seconds=grace)
        await self.transactions.close()
        await self.clients.aclose()
        self.engine.dispose()
        log.info("ctdd-sync stopped")
