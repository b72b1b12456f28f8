"""Command-line wiring of the integration commands (registered by ``ctdd.cli.main.build_parser``):

    ctdd adapter sqs --queue-url URL --target HOST:PORT --store KEY [--dlq-url URL] [--endpoint-url URL]
                     [--region R] [--batch 10] [--wait 20] [--visibility-timeout S] [--retry-base S] [--retry-cap S]
    ctdd adapter pubsub-push --listen HOST:PORT --target HOST:PORT --store KEY [--token T | env CTDD_PUBSUB_PUSH_TOKEN]
                     [--oidc-audience AUD --oidc-service-account SA] [--insecure]
                     [--path /] [--dead-letter-dir DIR] [--max-body-bytes N]
    ctdd commercetools subscriptions apply --store KEY --destination-type SQS|SNS|GoogleCloudPubSub|EventBridge
                     [destination options] [--format Platform|CloudEvents] [--dry-run]
    ctdd backfill customers|orders --store KEY [--page-size 500] [--target HOST:PORT] [--where PRED] [--restart]

The adapters and the backfill also take --target-tls, --target-ca-file, --target-cert-file, --target-key-file,
--target-server-name and --target-token-file (or env CTDD_TARGET_TOKEN) to reach a ctdd-sync with TLS and tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from ctdd.config import ConfigError

log = logging.getLogger("ctdd")


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _check_store(forwarder, store_key: str) -> bool:
    from ctdd.adapters.forwarder import POISON, RETRY, probe_store

    outcome = await probe_store(forwarder, store_key)
    if outcome.kind == POISON:
        print(f"ctdd: the target refused store key {store_key!r}: {outcome.message}", file=sys.stderr)
        return False
    if outcome.kind == RETRY:
        log.warning("target %s not answering yet (code %d); starting anyway, messages wait in the transport",
                    forwarder.target, outcome.code)
    return True


# -- reaching an authenticated target (TLS, client certificate, bearer token) ----------------------

def target_security(args):
    """The TLS and token settings of ``--target-*`` (and ``CTDD_TARGET_TOKEN``) for the gRPC channel."""
    from ctdd.adapters.grpc_target import TOKEN_VARIABLE, TargetSecurity, TargetSecurityError, read_token_file

    try:
        token = (read_token_file(args.target_token_file) if args.target_token_file
                 else os.environ.get(TOKEN_VARIABLE) or None)
        return TargetSecurity(tls=args.target_tls, ca_file=args.target_ca_file, cert_file=args.target_cert_file,
                              key_file=args.target_key_file, server_name=args.target_server_name, token=token)
    except TargetSecurityError as exc:
        raise ConfigError(str(exc)) from None


def target_forwarder(args):
    """The EventForwarder to ``--target`` with the ``--target-*`` TLS and token settings."""
    from ctdd.adapters.forwarder import EventForwarder

    return EventForwarder(args.target, timeout=args.rpc_timeout, security=target_security(args))


def add_target_arguments(parser) -> None:
    """``--target-tls``, ``--target-ca-file`` ...: how to reach a ctdd-sync with TLS and tokens."""
    group = parser.add_argument_group("reaching an authenticated ctdd-sync (docs/adapters.md)")
    group.add_argument("--target-tls", action="store_true", help="TLS to the target, verified with the system's CAs")
    group.add_argument("--target-ca-file", default=None, help="PEM CA file verifying the target's certificate (implies TLS)")
    group.add_argument("--target-cert-file", default=None, help="PEM client certificate for mutual TLS")
    group.add_argument("--target-key-file", default=None, help="PEM private key of --target-cert-file")
    group.add_argument("--target-server-name", default=None, help="TLS name to verify instead of the target's host")
    group.add_argument("--target-token-file", default=None,
                       help="file whose first line is the bearer token (else the env CTDD_TARGET_TOKEN)")


# -- adapter sqs ------------------------------------------------------------------------------------

async def _adapter_sqs(args) -> int:
    from ctdd.adapters.sqs import SqsAdapter, SqsAdapterConfig

    config = SqsAdapterConfig(
        queue_url=args.queue_url, dlq_url=args.dlq_url, endpoint_url=args.endpoint_url, region=args.region,
        target=args.target, store_key=args.store, batch=args.batch, wait=args.wait,
        visibility_timeout=args.visibility_timeout, retry_base=args.retry_base, retry_cap=args.retry_cap,
        rpc_timeout=args.rpc_timeout, processing=_processing(args),
    )
    from ctdd.adapters.extras import require

    require("boto3", extra="sqs", what="ctdd adapter sqs")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        adapter = SqsAdapter(config, forwarder=target_forwarder(args))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    stop = asyncio.Event()
    _install_stop(stop)
    try:
        if not await _check_store(adapter.forwarder, args.store):
            return 2
        print(f"ctdd SQS adapter: {args.queue_url} -> {args.target} (store {args.store})", flush=True)
        await adapter.run(stop)
    except (BotoCoreError, ClientError) as exc:
        print(f"ctdd: SQS: {exc}", file=sys.stderr)
        return 1
    finally:
        await adapter.close()
    return 0


# -- adapter pubsub-push ----------------------------------------------------------------------------

async def _adapter_pubsub(args) -> int:
    from ctdd.adapters.pubsub_push import PubSubPushAdapter, PubSubPushConfig
    from ctdd.adapters.push_auth import GOOGLE_CERTS_URL, InsecureConfigError, OidcSettings

    token = args.token or os.environ.get("CTDD_PUBSUB_PUSH_TOKEN") or None
    audience = args.oidc_audience or os.environ.get("CTDD_PUBSUB_PUSH_OIDC_AUDIENCE") or None
    accounts = args.oidc_service_account or [
        a.strip() for a in os.environ.get("CTDD_PUBSUB_PUSH_OIDC_SERVICE_ACCOUNTS", "").split(",") if a.strip()]
    try:
        oidc = (OidcSettings(audience=audience or "", service_accounts=tuple(accounts),
                             certs_url=args.oidc_certs_url or GOOGLE_CERTS_URL)
                if audience or accounts else None)
        config = PubSubPushConfig(
            listen=args.listen, target=args.target, store_key=args.store, token=token, oidc=oidc,
            insecure=args.insecure, path=args.path, dead_letter_dir=args.dead_letter_dir,
            max_body_bytes=args.max_body_bytes, rpc_timeout=args.rpc_timeout, processing=_processing(args),
        )
        adapter = PubSubPushAdapter(config, forwarder=target_forwarder(args))
    except InsecureConfigError as exc:
        raise ConfigError(f"pubsub-push: {exc}") from None
    stop = asyncio.Event()
    _install_stop(stop)
    if not await _check_store(adapter.forwarder, args.store):
        await adapter.forwarder.close()
        return 2
    port = await adapter.start()
    print(f"ctdd Pub/Sub push adapter listening on {args.listen} (port {port}) -> {args.target} "
          f"(store {args.store})", flush=True)
    await stop.wait()
    await adapter.stop(grace=args.grace)
    return 0


# -- commercetools subscriptions apply -------------------------------------------------------------

def _commercetools_client(args):
    """The commercetools client of ``--store``'s ``[commercetools.<name>]`` section, and the store."""
    from ctdd.cli.loading import load_without_credentials
    from ctdd.commercetools.client import CommercetoolsClient

    settings = load_without_credentials(args)
    store = settings.store(args.store)
    if store is None:
        raise ConfigError(f"unknown store {args.store!r} (known: {sorted(settings.stores)})")
    if not store.commercetools or store.commercetools not in settings.commercetools:
        raise ConfigError(f"store {args.store!r} has no [commercetools.<name>] section (see docs/configuration.md)")
    ct = settings.commercetools[store.commercetools]
    client = CommercetoolsClient(project_key=ct.project_key, client_id=ct.client_id,
                                 client_secret=ct.client_secret.get_secret_value(),
                                 region=ct.region, api_url=ct.api_url, auth_url=ct.auth_url,
                                 scopes=list(ct.scopes) or None)
    return settings, store, client


def _destination_from_args(args) -> dict:
    from ctdd.commercetools.subscriptions import build_destination

    secret = None
    if args.access_secret_env:
        secret = os.environ.get(args.access_secret_env)
        if not secret:
            raise ConfigError(f"--access-secret-env: environment variable {args.access_secret_env} is not set")
    t = args.destination_type
    if t == "SQS":
        return build_destination(t, queueUrl=args.queue_url, region=args.region,
                                 authenticationMode=args.authentication_mode, accessKey=args.access_key,
                                 accessSecret=secret)
    if t == "SNS":
        return build_destination(t, topicArn=args.topic_arn, authenticationMode=args.authentication_mode,
                                 accessKey=args.access_key, accessSecret=secret)
    if t == "GoogleCloudPubSub":
        return build_destination(t, projectId=args.project_id, topic=args.topic)
    return build_destination(t, region=args.region, accountId=args.account_id)


async def _subscriptions_apply(args) -> int:
    from ctdd.commercetools.subscriptions import (
        SubscriptionConfigError, apply_plan, build_format, desired_subscriptions, fetch_current, plan,
    )

    try:
        destination = _destination_from_args(args)
        desired = desired_subscriptions(args.store, destination, build_format(args.format), key_prefix=args.key_prefix)
    except SubscriptionConfigError as exc:
        raise ConfigError(str(exc)) from None
    _, _, client = _commercetools_client(args)
    async with client:
        current = await fetch_current(client, [d["key"] for d in desired])
        changes = plan(current, desired)
        for s in current:
            if s.get("status") not in (None, "Healthy"):
                print(f"warning: subscription {s['key']} has status {s['status']} (see commercetools' Subscription health status)",
                      file=sys.stderr)
        header = "plan (dry run, nothing written)" if args.dry_run else "plan"
        print(f"{header} for project {client.project_key}:")
        for change in changes:
            print(change.describe())
        pending = [c for c in changes if c.action != "unchanged"]
        if args.dry_run:
            print(f"{len(pending)} to change, {len(changes) - len(pending)} unchanged (dry run: nothing written)")
            return 0
        await apply_plan(client, changes)
        print(f"applied: {sum(c.action == 'create' for c in changes)} created, "
              f"{sum(c.action == 'update' for c in changes)} updated, "
              f"{sum(c.action == 'recreate' for c in changes)} recreated, "
              f"{len(changes) - len(pending)} unchanged")
    return 0


# -- backfill ----------------------------------------------------------------------------------------

async def _backfill(args) -> int:
    from ctdd.adapters.forwarder import EventForwarder
    from ctdd.adapters.backfill import BackfillError, run_backfill

    settings, store, client = _commercetools_client(args)
    target = args.target or settings.listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "127.0.0.1:")
    async with client, EventForwarder(target, timeout=args.rpc_timeout, security=target_security(args)) as forwarder:
        if not await _check_store(forwarder, args.store):
            return 2
        try:
            result = await run_backfill(client, forwarder, store_key=store.key, project_key=store.commercetools_project,
                                        resource=args.resource, page_size=args.page_size, where=args.where or (),
                                        restart=args.restart, show_progress=not args.no_progress)
        except BackfillError as exc:
            print(f"ctdd: backfill: {exc}", file=sys.stderr)
            return 2
    summary = (f"backfill {args.resource} of store {store.key}: "
               f"{'completed' if result.completed else 'stopped'}; {result.processed} processed in total, "
               f"{result.accepted} accepted and {result.poison} poison skipped this run")
    print(summary, flush=True)
    if not result.completed:
        print(f"ctdd: {result.stopped_reason}", file=sys.stderr)
        return 1
    return 0


# -- parsers -----------------------------------------------------------------------------------------

QUEUED_HELP = ("send events with PROCESSING_QUEUED: a message is acknowledged once it is in ctdd-sync's event "
               "inbox, which applies it and retries commercetools fetches itself (default: applied before the answer)")


def _processing(args) -> int:
    from ctdd.sync.v1 import sync_service_pb2 as pb

    return pb.PROCESSING_QUEUED if args.queued else pb.PROCESSING_APPLIED


def register(sub, common) -> None:
    """Add the adapter, subscriptions and backfill commands to ``ctdd``'s subparsers."""
    run = asyncio.run

    adapter = sub.add_parser("adapter", help="run a middleware adapter that forwards deliveries to the gRPC API")
    asub = adapter.add_subparsers(dest="adapter_command", required=True)

    sqs = asub.add_parser("sqs", help="long-poll an SQS queue and forward its messages (TrackEventBatch)")
    sqs.add_argument("--queue-url", required=True)
    sqs.add_argument("--dlq-url", default=None, help="where poison messages go (else the queue's redrive policy)")
    sqs.add_argument("--endpoint-url", default=None, help="SQS endpoint (moto, LocalStack)")
    sqs.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    sqs.add_argument("--target", required=True, help="ctdd-sync gRPC address HOST:PORT")
    sqs.add_argument("--store", required=True, help="store key sent with every event")
    sqs.add_argument("--batch", type=int, default=10, help="messages per receive (1-10)")
    sqs.add_argument("--wait", type=int, default=20, help="long-poll seconds (0-20)")
    sqs.add_argument("--visibility-timeout", type=int, default=None, help="seconds (default: the queue's)")
    sqs.add_argument("--retry-base", type=float, default=2.0,
                     help="visibility backoff of a retryable message: base * 2^(receives-1) seconds")
    sqs.add_argument("--retry-cap", type=float, default=300.0, help="maximum visibility backoff in seconds")
    sqs.add_argument("--rpc-timeout", type=float, default=30.0)
    sqs.add_argument("--queued", action="store_true", help=QUEUED_HELP)
    add_target_arguments(sqs)
    sqs.set_defaults(func=lambda a: run(_adapter_sqs(a)))

    ps = asub.add_parser("pubsub-push", help="HTTP endpoint for Google Pub/Sub push subscriptions")
    ps.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    ps.add_argument("--target", required=True, help="ctdd-sync gRPC address HOST:PORT")
    ps.add_argument("--store", required=True, help="store key sent with every event")
    ps.add_argument("--token", default=None,
                    help="shared secret expected as ?token= or Authorization: Bearer (prefer the env CTDD_PUBSUB_PUSH_TOKEN)")
    ps.add_argument("--oidc-audience", default=None,
                    help="verify Google-signed OIDC tokens with this audience (the subscription's "
                         "--push-auth-token-audience; env CTDD_PUBSUB_PUSH_OIDC_AUDIENCE)")
    ps.add_argument("--oidc-service-account", action="append", default=None,
                    help="service account allowed to push (the subscription's --push-auth-service-account), "
                         "repeatable (env CTDD_PUBSUB_PUSH_OIDC_SERVICE_ACCOUNTS, comma-separated)")
    ps.add_argument("--oidc-certs-url", default=None,
                    help="where the token signing certificates are fetched (default: Google's, "
                         "https://www.googleapis.com/oauth2/v1/certs)")
    ps.add_argument("--insecure", action="store_true",
                    help="serve without a token or OIDC (anyone who reaches the endpoint can push)")
    ps.add_argument("--path", default="/", help="path of the push endpoint (default /)")
    ps.add_argument("--dead-letter-dir", default=None, help="write poison requests here before acknowledging them")
    ps.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    ps.add_argument("--rpc-timeout", type=float, default=30.0)
    ps.add_argument("--queued", action="store_true", help=QUEUED_HELP)
    ps.add_argument("--grace", type=float, default=10.0, help="seconds to finish requests on shutdown")
    add_target_arguments(ps)
    ps.set_defaults(func=lambda a: run(_adapter_pubsub(a)))

    ct = sub.add_parser("commercetools", help="commercetools project set-up")
    ctsub = ct.add_subparsers(dest="ct_command", required=True)
    subs = ctsub.add_parser("subscriptions", help="the commercetools Subscriptions ctdd-sync needs")
    subsub = subs.add_subparsers(dest="subscriptions_command", required=True)
    apply = subsub.add_parser("apply", help="create or update the Subscriptions of a store (idempotent)")
    common(apply)
    apply.add_argument("--store", required=True)
    apply.add_argument("--destination-type", required=True, choices=["SQS", "SNS", "GoogleCloudPubSub", "EventBridge"])
    apply.add_argument("--queue-url", help="SQS")
    apply.add_argument("--region", help="SQS, EventBridge")
    apply.add_argument("--topic-arn", help="SNS")
    apply.add_argument("--authentication-mode", choices=["IAM", "Credentials"], help="SQS, SNS (default IAM)")
    apply.add_argument("--access-key", help="SQS, SNS with Credentials")
    apply.add_argument("--access-secret-env", help="name of the env variable holding the access secret")
    apply.add_argument("--project-id", help="GoogleCloudPubSub")
    apply.add_argument("--topic", help="GoogleCloudPubSub")
    apply.add_argument("--account-id", help="EventBridge")
    apply.add_argument("--format", default="Platform", choices=["Platform", "CloudEvents"])
    apply.add_argument("--key-prefix", default="ctdd", help="subscription keys are <prefix>-<store>-<what>")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    apply.set_defaults(func=lambda a: run(_subscriptions_apply(a)), listen=None)

    bf = sub.add_parser("backfill", help="feed existing customers or orders through the pipeline (low priority)")
    common(bf)
    bf.add_argument("resource", choices=["customers", "orders"])
    bf.add_argument("--store", required=True)
    bf.add_argument("--page-size", type=int, default=500)
    bf.add_argument("--target", default=None, help="ctdd-sync gRPC address (default: the configured listen address)")
    bf.add_argument("--where", action="append", help="extra query predicate, repeatable")
    bf.add_argument("--restart", action="store_true", help="start from the beginning even if a run was interrupted")
    bf.add_argument("--no-progress", action="store_true", help="no progress bar")
    bf.add_argument("--rpc-timeout", type=float, default=60.0)
    add_target_arguments(bf)
    bf.set_defaults(func=lambda a: run(_backfill(a)), listen=None)


__all__ = ["register"]
