"""The ``ctdd`` command line.

    ctdd serve [--sandbox] [--config FILE] [--listen HOST:PORT] [--database-url URL] [--insecure]
    ctdd worker [--config FILE] [--database-url URL] [--grace S]
    ctdd db upgrade [--config FILE] [--database-url URL]
    ctdd sandbox [--port N]
    ctdd adapter sqs|pubsub-push ...            (ctdd.cli.adapters)
    ctdd commercetools subscriptions apply ...  (ctdd.cli.adapters)
    ctdd backfill customers|orders --store KEY  (ctdd.cli.adapters)
    ctdd dotdigital setup [--dry-run] [--account NAME]        (ctdd.cli.jobs)
    ctdd backsync run-once [--store KEY | --account NAME]     (ctdd.cli.jobs)
    ctdd triggers list|summary ...              (ctdd.cli.triggers_cmd)
    ctdd failures list|show|retry|skip ...      (ctdd.cli.failures_cmd)
    ctdd contact show --email E | --customer-id ID --store KEY | --contact-id N  (ctdd.cli.contact_cmd)
    ctdd simulate STREAM [--config F] [--openapi DIR] [--json] [--until T]  (ctdd.cli.simulate_cmd)
    ctdd catalog export --store KEY [--full | --modified-since T] [--target HOST:PORT]  (ctdd.cli.catalog_cmd)
    ctdd plugins list [--json]                  (ctdd.cli.plugins_cmd)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from ctdd import __version__
from ctdd.cli.loading import load, load_without_credentials, with_sandbox
from ctdd.config import ConfigError, translate_renamed_flags

log = logging.getLogger("ctdd")

def _setup_logging(level: str) -> None:
    """stderr, redacted, one line per record (ctdd.logging_setup); the settings' format is applied on load."""
    from ctdd.logging_setup import configure_logging

    log_format = os.environ.get("CTDD_LOG_FORMAT", "text").strip().lower()
    configure_logging(level, log_format if log_format in ("text", "json") else "text")


async def _serve(args) -> int:
    from ctdd.runtime.app import App
    from ctdd.runtime.process_tuning import freeze_startup_heap
    from ctdd.telemetry import configure_telemetry, shutdown_telemetry

    sandbox = None
    if args.sandbox:
        from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox

        sandbox = DotdigitalSandbox(port=args.sandbox_port).start()
        log.warning("SANDBOX MODE: Dotdigital calls go to the local sandbox at %s, not to Dotdigital", sandbox.base_url)
    try:
        settings = load(args) if not args.sandbox else with_sandbox(load_without_credentials(args), sandbox)
        if not settings.accounts or not settings.stores:
            raise ConfigError(
                "no Dotdigital account or store configured: pass --config FILE (see docs/configuration.md) "
                "or run with --sandbox to try the service against the bundled Dotdigital sandbox"
            )
        configure_telemetry(metrics_listen=settings.service.metrics_listen)
        # Handlers first: a SIGTERM during start-up (a supervisor scaling down) ends the process cleanly
        # once it has started, rather than killing it half-way.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        app = App(settings, run_dispatcher=not args.no_dispatcher)
        await app.start()
        freeze_startup_heap()
        print(f"ctdd-sync serving on {settings.listen} (port {app.port})", flush=True)
        await stop.wait()
        log.info("shutting down")
        await app.stop(grace=args.grace)
    finally:
        if sandbox is not None:
            sandbox.stop()
        shutdown_telemetry()
    return 0


def _db_upgrade(args) -> int:
    from ctdd.db.engine import create_db_engine, upgrade_database

    settings = load_without_credentials(args)
    engine = create_db_engine(settings.database_url)
    upgrade_database(engine)
    print(f"database upgraded: {engine.url.render_as_string(hide_password=True)}")
    return 0


async def _worker(args) -> int:
    from ctdd.runtime.process_tuning import freeze_startup_heap
    from ctdd.telemetry import configure_telemetry, shutdown_telemetry
    from ctdd.db.locks import DispatcherAlreadyRunning
    from ctdd.runtime.worker import run_worker

    try:
        settings = load(args)
        configure_telemetry(metrics_listen=settings.service.metrics_listen)
        if not settings.accounts:
            raise ConfigError("no Dotdigital account configured: pass --config FILE (see docs/configuration.md)")
        return await run_worker(settings, grace=args.grace, ready=freeze_startup_heap)
    except DispatcherAlreadyRunning as exc:
        print(f"ctdd worker: {exc}", file=sys.stderr)
        return 3
    finally:
        shutdown_telemetry()


async def _dotdigital_setup(args) -> int:
    from ctdd.cli.jobs import dotdigital_setup

    return await dotdigital_setup(args)


async def _backsync_run_once(args) -> int:
    from ctdd.cli.jobs import backsync_run_once

    return await backsync_run_once(args)


def _sandbox(args) -> int:
    from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox

    with DotdigitalSandbox(port=args.port) as sandbox:
        print(f"Dotdigital sandbox on {sandbox.base_url} (API user {sandbox.api_user})", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctdd", description="commercetools <-> Dotdigital sync service")
    parser.add_argument("--version", action="version", version=f"ctdd-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--config", default=None, help="TOML configuration file (env CTDD_CONFIG)")
        p.add_argument("--database-url", default=None, help="SQLAlchemy URL (env CTDD_DATABASE_URL)")
        p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env CTDD_LOG_LEVEL)")

    serve = sub.add_parser("serve", help="run the gRPC service and the outbox dispatcher")
    common(serve)
    serve.add_argument("--listen", default=None, help="HOST:PORT (env CTDD_LISTEN, default 127.0.0.1:50051)")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow a non-loopback --listen without TLS or tokens (anyone reaching the port may call)")
    serve.add_argument("--sandbox", action="store_true", help="send to the bundled Dotdigital sandbox on loopback")
    serve.add_argument("--sandbox-port", type=int, default=0, help="port of the sandbox (default: any free port)")
    serve.add_argument("--no-dispatcher", action="store_true",
                       help="accept RPCs only: no delivery and no processing of queued events (a `ctdd worker` does both)")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to drain RPCs and deliveries on shutdown")
    serve.set_defaults(func=lambda a: asyncio.run(_serve(a)))

    worker = sub.add_parser("worker", help="run an outbox dispatcher without the gRPC server (scale-out)")
    common(worker)
    worker.add_argument("--grace", type=float, default=10.0, help="seconds to drain deliveries on shutdown")
    worker.set_defaults(func=lambda a: asyncio.run(_worker(a)), listen=None)

    db = sub.add_parser("db", help="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply the Alembic migrations")
    common(up)
    up.set_defaults(func=_db_upgrade, listen=None)

    sb = sub.add_parser("sandbox", help="run the Dotdigital sandbox on its own")
    sb.add_argument("--port", type=int, default=0)
    sb.set_defaults(func=_sandbox)

    dd = sub.add_parser("dotdigital", help="Dotdigital account set-up")
    ddsub = dd.add_subparsers(dest="dotdigital_command", required=True)
    setup = ddsub.add_parser("setup", help="create the data fields, lists and insight collections the stores need")
    common(setup)
    setup.add_argument("--dry-run", action="store_true", help="print the plan (create/exists per item), write nothing")
    setup.add_argument("--account", default=None, help="only this [accounts.<name>] (default: every account)")
    setup.set_defaults(func=lambda a: asyncio.run(_dotdigital_setup(a)), listen=None)

    bs = sub.add_parser("backsync", help="Dotdigital opt-outs -> commercetools")
    bssub = bs.add_subparsers(dest="backsync_command", required=True)
    once = bssub.add_parser("run-once", help="poll the Dotdigital opt-out feeds once and write to commercetools")
    common(once)
    scope = once.add_mutually_exclusive_group()
    scope.add_argument("--store", default=None, help="poll the account of this store")
    scope.add_argument("--account", default=None, help="poll this account (default: every account)")
    once.set_defaults(func=lambda a: asyncio.run(_backsync_run_once(a)), listen=None)

    from ctdd.cli.adapters import register as register_integrations  # adapter, commercetools, backfill

    register_integrations(sub, common)
    from ctdd.cli.config_cmd import register as register_config  # config check

    register_config(sub, common)
    from ctdd.cli.triggers_cmd import register as register_triggers  # triggers list, triggers summary

    register_triggers(sub, common)
    from ctdd.cli.failures_cmd import register as register_failures  # failures list, show, retry, skip

    register_failures(sub, common)
    from ctdd.cli.contact_cmd import register as register_contact  # contact show

    register_contact(sub, common)
    from ctdd.cli.simulate_cmd import register as register_simulate  # simulate a recorded stream

    register_simulate(sub, common)
    from ctdd.cli.catalog_cmd import register as register_catalog  # catalog export

    register_catalog(sub, common)
    from ctdd.cli.plugins_cmd import register as register_plugins  # plugins list

    register_plugins(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(translate_renamed_flags(sys.argv[1:] if argv is None else argv))
    _setup_logging(getattr(args, "log_level", None) or os.environ.get("CTDD_LOG_LEVEL", "INFO"))
    from ctdd.db.locks import DispatcherAlreadyRunning

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"ctdd: configuration error: {exc}", file=sys.stderr)
        return 2
    except DispatcherAlreadyRunning as exc:
        print(f"ctdd: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
