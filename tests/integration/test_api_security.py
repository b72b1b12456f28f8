"""Who may call the gRPC API: TLS, mutual TLS with certificates made in the test, certificate reload, bearer
tokens (UNAUTHENTICATED / PERMISSION_DENIED, store allow-list, operator-only AdminService, open health),
the refusal to listen beyond loopback unprotected, and an adapter reaching an authenticated TLS server.
Every call is a real gRPC call to a running service."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ctdd.adapters.forwarder import OK, RETRY, EventForwarder, probe_event
from ctdd.adapters.grpc_target import TargetSecurity
from ctdd.api.auth import hash_token
from ctdd.config import ConfigError
from ctdd.runtime.app import App
from ctdd.sync.v1 import admin_service_pb2 as admin_pb
from ctdd.sync.v1 import admin_service_pb2_grpc as admin_grpc
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.sync.v1 import sync_service_pb2_grpc as pb_grpc
from support.certs import Authority
from support.helpers import contact_request, make_settings

CHECKOUT_TOKEN = "checkout-token-7f3a9c1e5b2d4f60"
OPERATOR_TOKEN = "operator-token-0a1b2c3d4e5f6a7b"
UK_ONLY_TOKEN = "uk-only-token-99887766554433221"
UK_OPERATOR_TOKEN = "uk-operator-token-5566778899aabbcc"


def _tokens_file(path: Path) -> Path:
    path.write_text(f"""
[[tokens]]
name = "checkout"
token = "{CHECKOUT_TOKEN}"

[[tokens]]
name = "ops"
sha256 = "{hash_token(OPERATOR_TOKEN)}"
operator = true

[[tokens]]
name = "uk-shop"
sha256 = "{hash_token(UK_ONLY_TOKEN)}"
stores = ["uk"]

[[tokens]]
name = "uk-ops"
token = "{UK_OPERATOR_TOKEN}"
stores = ["uk"]
operator = true
""")
    return path


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _health(channel: grpc.aio.Channel, **kwargs) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5, **kwargs)
    return reply.status


async def _code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _tls_channel(port: int, authority: Authority, client: tuple[Path, Path] | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=authority.ca_pem,
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


@pytest.fixture
def pki(tmp_path):
    server_ca = Authority("server", tmp_path / "pki")
    client_ca = Authority("clients", tmp_path / "pki")
    return server_ca, client_ca


# -- TLS and mutual TLS --------------------------------------------------------------------------------

async def test_tls_call_works_and_a_plaintext_client_fails(service_factory, sqlite_url, sandbox, pki):
    server_ca, _ = pki
    cert, key = server_ca.issue("ctdd", server=True)
    settings = make_settings(sqlite_url, sandbox).replace(tls_cert_file=str(cert), tls_key_file=str(key))
    svc = await service_factory(settings, run_dispatcher=False)

    async with _tls_channel(svc.app.port, server_ca) as channel:
        reply = await pb_grpc.SyncServiceStub(channel).SyncContact(
            contact_request(customer_id="c-1", email="jane@example.com"), timeout=10)
        assert reply.created
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.app.port}") as plain:
        assert await _code_of(_health(plain)) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_clients_without_a_certificate_or_with_one_of_another_ca(
        service_factory, sqlite_url, sandbox, pki, tmp_path):
    server_ca, client_ca = pki
    cert, key = server_ca.issue("ctdd", server=True)
    stranger_ca = Authority("stranger", tmp_path / "pki")
    settings = make_settings(sqlite_url, sandbox).replace(
        tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(client_ca.ca_file))
    svc = await service_factory(settings, run_dispatcher=False)
    port = svc.app.port

    async with _tls_channel(port, server_ca, client_ca.issue("adapter", server=False)) as trusted:
        assert await _health(trusted) == health_pb2.HealthCheckResponse.SERVING
    async with _tls_channel(port, server_ca) as no_certificate:
        assert await _code_of(_health(no_certificate)) == grpc.StatusCode.UNAVAILABLE
    async with _tls_channel(port, server_ca, stranger_ca.issue("intruder", server=False)) as foreign:
        assert await _code_of(_health(foreign)) == grpc.StatusCode.UNAVAILABLE


async def test_replaced_certificate_files_are_used_by_new_connections(service_factory, sqlite_url, sandbox, pki,
                                                                     tmp_path):
    first_ca, _ = pki
    second_ca = Authority("rotated", tmp_path / "pki")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = first_ca.issue("ctdd", server=True)
    shutil.copy(cert, live / "server.pem")
    shutil.copy(key, live / "server.key")
    settings = make_settings(sqlite_url, sandbox).replace(
        tls_cert_file=str(live / "server.pem"), tls_key_file=str(live / "server.key"))
    svc = await service_factory(settings, run_dispatcher=False)
    port = svc.app.port
    async with _tls_channel(port, first_ca) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING

    new_cert, new_key = second_ca.issue("ctdd", server=True)
    # replaced as a deployment does: new files renamed over the old ones
    shutil.copy(new_key, live / "server.key.new")
    shutil.copy(new_cert, live / "server.pem.new")
    os.replace(live / "server.key.new", live / "server.key")
    os.replace(live / "server.pem.new", live / "server.pem")

    async with _tls_channel(port, second_ca) as fresh:
        assert await _health(fresh) == health_pb2.HealthCheckResponse.SERVING
    async with _tls_channel(port, first_ca) as old_trust:
        assert await _code_of(_health(old_trust)) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_that_does_not_match_its_key_stops_start_up(sqlite_url, sandbox, pki):
    server_ca, client_ca = pki
    cert, _ = server_ca.issue("ctdd", server=True)
    _, other_key = client_ca.issue("other", server=True)
    settings = make_settings(sqlite_url, sandbox).replace(tls_cert_file=str(cert), tls_key_file=str(other_key))
    with pytest.raises(ConfigError, match="tls_cert_file / tls_key_file"):
        App(settings, run_dispatcher=False)


# -- bearer tokens ---------------------------------------------------------------------------------------

@pytest.fixture
async def token_service(service_factory, sqlite_url, sandbox, tmp_path):
    settings = make_settings(sqlite_url, sandbox).replace(tokens_file=str(_tokens_file(tmp_path / "tokens.toml")))
    return await service_factory(settings, run_dispatcher=False)


async def test_calls_without_a_known_token_are_unauthenticated(token_service):
    stub = token_service.stub
    request = contact_request(customer_id="c-1", email="jane@example.com")
    assert await _code_of(stub.SyncContact(request, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = _bearer("not-a-known-token-but-long-enough")
    assert await _code_of(stub.SyncContact(request, timeout=5, metadata=wrong)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code_of(stub.SyncContact(request, timeout=5, metadata=(("authorization", CHECKOUT_TOKEN),))
                          ) == grpc.StatusCode.UNAUTHENTICATED  # no "Bearer " scheme
    reply = await stub.SyncContact(request, timeout=10, metadata=_bearer(CHECKOUT_TOKEN))
    assert reply.created


async def test_admin_service_needs_an_operator_token(token_service):
    admin = admin_grpc.AdminServiceStub(token_service.channel)
    request = admin_pb.ListTriggersRequest(store_key="uk", email="jane@example.com")
    assert await _code_of(admin.ListTriggers(request, timeout=5, metadata=_bearer(CHECKOUT_TOKEN))
                          ) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code_of(admin.ListTriggers(request, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    code = await _code_of(admin.ListTriggers(request, timeout=5, metadata=_bearer(OPERATOR_TOKEN)))
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_store_outside_the_tokens_allow_list_is_permission_denied(token_service):
    stub, uk_only = token_service.stub, _bearer(UK_ONLY_TOKEN)
    assert await _code_of(stub.SyncContact(contact_request("de", customer_id="c-2", email="max@example.com"),
                                           timeout=5, metadata=uk_only)) == grpc.StatusCode.PERMISSION_DENIED
    event = pb.TrackEventRequest(store_key="de", processing=pb.PROCESSING_QUEUED, behavioural_event=pb.BehaviouralEvent(
        event_id="ev-1", identity=pb.ContactIdentity(email="max@example.com"),
        product_viewed=pb.ProductViewed(product_id="p-1", sku="SKU-1")))
    assert await _code_of(stub.TrackEvent(event, timeout=5, metadata=uk_only)) == grpc.StatusCode.PERMISSION_DENIED
    uk_event = pb.TrackEventRequest()
    uk_event.CopyFrom(event)
    uk_event.store_key = "uk"
    batch = pb.TrackEventBatchRequest(events=[uk_event, event])
    assert await _code_of(stub.TrackEventBatch(batch, timeout=5, metadata=uk_only)) == grpc.StatusCode.PERMISSION_DENIED
    # nothing of the refused batch was stored
    assert token_service.rows("SELECT * FROM event_inbox") == []
    # its own store goes through
    reply = await stub.SyncContact(contact_request("uk", customer_id="c-3", email="ann@example.com"), timeout=10,
                                   metadata=uk_only)
    assert reply.created
    assert (await stub.TrackEvent(uk_event, timeout=10, metadata=uk_only)).queued


async def test_health_is_open_and_reflection_needs_a_token_by_default(token_service):
    channel = token_service.channel
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def list_services(metadata=()):
        call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=5, metadata=metadata)
        return [s.name async for reply in call for s in reply.list_services_response.service]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_services()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ctdd.sync.v1.SyncService" in await list_services(_bearer(CHECKOUT_TOKEN))


async def test_refused_calls_are_logged_with_peer_and_method_but_never_the_token(token_service, caplog):
    caplog.set_level(logging.DEBUG)
    stub = token_service.stub
    wrong = "wrong-token-that-must-not-be-logged-123"
    await _code_of(stub.SyncContact(contact_request(customer_id="c-9", email="x@example.com"), timeout=5,
                                    metadata=_bearer(wrong)))
    await _code_of(stub.SyncContact(contact_request("de", customer_id="c-9", email="x@example.com"), timeout=5,
                                    metadata=_bearer(UK_ONLY_TOKEN)))
    await stub.SyncContact(contact_request(customer_id="c-8", email="y@example.com"), timeout=10,
                           metadata=_bearer(CHECKOUT_TOKEN))
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused call")]
    assert len(refusals) == 2
    assert all("/ctdd.sync.v1.SyncService/SyncContact" in line and "127.0.0.1" in line for line in refusals)
    assert "uk-shop" in refusals[1]
    for secret in (wrong, CHECKOUT_TOKEN, UK_ONLY_TOKEN, OPERATOR_TOKEN):
        assert secret not in caplog.text


async def test_token_files_refuse_short_tokens_and_tokens_env_is_read(sqlite_url, sandbox, tmp_path, monkeypatch):
    short = tmp_path / "short.toml"
    short.write_text('[[tokens]]\nname = "x"\ntoken = "s3cr3t-short"\n')
    settings = make_settings(sqlite_url, sandbox)
    with pytest.raises(ConfigError, match="too short") as refused:
        App(settings.replace(tokens_file=str(short)), run_dispatcher=False)
    assert "s3cr3t-short" not in str(refused.value)  # the token itself is not echoed
    monkeypatch.setenv("CTDD_TEST_TOKENS", f'[[tokens]]\nname = "env"\nsha256 = "{hash_token(CHECKOUT_TOKEN)}"\n')
    app = App(settings.replace(tokens_env="CTDD_TEST_TOKENS"), run_dispatcher=False)
    assert app.grpc.security.describe() == "plaintext, 1 token(s)"


# -- listening beyond loopback -----------------------------------------------------------------------------

async def test_a_non_loopback_address_without_tls_or_tokens_is_refused_unless_insecure(sqlite_url, sandbox, tmp_path):
    settings = make_settings(sqlite_url, sandbox).replace(listen="0.0.0.0:0")
    with pytest.raises(ConfigError, match="--insecure"):
        App(settings, run_dispatcher=False)
    assert App(settings.replace(insecure=True), run_dispatcher=False).grpc is not None
    tokens = str(_tokens_file(tmp_path / "tokens.toml"))
    assert App(settings.replace(tokens_file=tokens), run_dispatcher=False).grpc is not None
    for loopback in ("127.0.0.1:0", "[::1]:0", "localhost:0"):
        assert App(settings.replace(listen=loopback), run_dispatcher=False).grpc is not None


# -- an adapter reaching an authenticated TLS server --------------------------------------------------------

async def test_an_adapter_reaches_a_mutual_tls_server_with_its_token(service_factory, sqlite_url, sandbox, pki,
                                                                     tmp_path):
    server_ca, client_ca = pki
    cert, key = server_ca.issue("ctdd", server=True)
    settings = make_settings(sqlite_url, sandbox).replace(
        tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(client_ca.ca_file),
        tokens_file=str(_tokens_file(tmp_path / "tokens.toml")))
    svc = await service_factory(settings, run_dispatcher=False)
    target = f"127.0.0.1:{svc.app.port}"
    client_cert, client_key = client_ca.issue("sqs-adapter", server=False)
    security = TargetSecurity(ca_file=str(server_ca.ca_file), cert_file=str(client_cert),
                              key_file=str(client_key), token=UK_ONLY_TOKEN)
    assert UK_ONLY_TOKEN not in repr(security)

    async with EventForwarder(target, timeout=10, security=security) as forwarder:
        [outcome] = await forwarder.forward([probe_event("uk")])
    assert outcome.kind == OK

    without_token = TargetSecurity(ca_file=str(server_ca.ca_file), cert_file=str(client_cert),
                                   key_file=str(client_key))
    async with EventForwarder(target, timeout=10, security=without_token) as forwarder:
        [outcome] = await forwarder.forward([probe_event("uk")])
    # refused for now, not poison: the messages wait in the transport until the token is fixed
    assert outcome.kind == RETRY and outcome.code == grpc.StatusCode.UNAUTHENTICATED.value[0]


# -- connection limits ---------------------------------------------------------------------------------------

async def test_idle_connections_that_never_handshake_are_closed_and_health_answers(service_factory, sqlite_url,
                                                                                   sandbox):
    import asyncio

    settings = make_settings(sqlite_url, sandbox).replace(handshake_timeout_seconds=0.5, max_connections=8)
    svc = await service_factory(settings, run_dispatcher=False)
    idle = [await asyncio.open_connection("127.0.0.1", svc.app.port) for _ in range(8)]
    try:
        # the server hangs up (GOAWAY, then end of stream) on every connection that sent nothing ...
        received = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in idle)), timeout=30)
        assert all(b"before handshake timeout" in data for data in received)
        assert all(reader.at_eof() for reader, _ in idle)
        # ... so that they no longer hold the slots of max_connections, and health answers on a new one
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.app.port}") as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for _, writer in idle:
            writer.close()


async def test_connections_beyond_max_connections_are_refused(service_factory, sqlite_url, sandbox):
    import asyncio

    settings = make_settings(sqlite_url, sandbox).replace(max_connections=2, handshake_timeout_seconds=60)
    svc = await service_factory(settings, run_dispatcher=False)
    idle = [await asyncio.open_connection("127.0.0.1", svc.app.port) for _ in range(2)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.app.port}") as channel:
            assert await _code_of(_health(channel)) == grpc.StatusCode.UNAVAILABLE
    finally:
        for _, writer in idle:
            writer.close()
            await writer.wait_closed()


# -- review fixes: AdminService store allow-list, streaming refusals, refusal before decoding ------------------

def _failed_inbox_row(svc, store_key: str, dedupe_key: str) -> int:
    import sqlalchemy as sa
    from datetime import datetime, timezone
    from ctdd.db.models import EventInbox
    now = datetime.now(timezone.utc)
    with svc.engine.begin() as conn:
        return conn.execute(sa.insert(EventInbox.__table__).values(
            dedupe_key=dedupe_key, store_key=store_key, request=b"", status="failed", attempts=3, next_attempt_at=now,
            last_error="HTTP 503 from commercetools", received_at=now, processed_at=now,
        ).returning(EventInbox.__table__.c.id)).scalar_one()


async def test_a_store_restricted_operator_sees_and_acts_on_its_stores_failures_only(token_service, caplog):
    caplog.set_level(logging.WARNING)
    svc = token_service
    admin, uk_ops = admin_grpc.AdminServiceStub(svc.channel), _bearer(UK_OPERATOR_TOKEN)
    uk_ref = f"inbox:{_failed_inbox_row(svc, 'uk', 'msg-uk')}"
    de_id = _failed_inbox_row(svc, "de", "msg-de")
    de_ref = f"inbox:{de_id}"
    denied = grpc.StatusCode.PERMISSION_DENIED

    def listing(store: str = "") -> admin_pb.ListFailuresRequest:
        return admin_pb.ListFailuresRequest(filter=admin_pb.FailureFilter(store_key=store))

    # listing: another store, or no store at all, is refused; its own store lists its own rows only
    assert await _code_of(admin.ListFailures(listing("de"), timeout=5, metadata=uk_ops)) == denied
    assert await _code_of(admin.ListFailures(admin_pb.ListFailuresRequest(), timeout=5, metadata=uk_ops)) == denied
    assert [f.ref for f in (await admin.ListFailures(listing("uk"), timeout=5, metadata=uk_ops)).failures] == [uk_ref]
    # an unrestricted operator still lists everything without a filter
    everything = await admin.ListFailures(admin_pb.ListFailuresRequest(), timeout=5, metadata=_bearer(OPERATOR_TOKEN))
    assert {f.ref for f in everything.failures} == {uk_ref, de_ref}

    # a reference of another store's row is answered as if there were none
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await admin.GetFailure(admin_pb.GetFailureRequest(ref=de_ref), timeout=5, metadata=uk_ops)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND and "another store" not in (hidden.value.details() or "")
    assert (await admin.GetFailure(admin_pb.GetFailureRequest(ref=uk_ref), timeout=5, metadata=uk_ops)).failure.ref == uk_ref

    # acting: all_matching must name one of its stores; references of other stores are not found, not acted on
    for matching in (admin_pb.FailureFilter(store_key="de"), admin_pb.FailureFilter()):
        assert await _code_of(admin.RetryFailures(admin_pb.RetryFailuresRequest(all_matching=matching), timeout=5,
                                                  metadata=uk_ops)) == denied
        assert await _code_of(admin.SkipFailures(admin_pb.SkipFailuresRequest(all_matching=matching, reason="x"),
                                                 timeout=5, metadata=uk_ops)) == denied
    skipped = await admin.SkipFailures(admin_pb.SkipFailuresRequest(refs=[de_ref], reason="not mine"), timeout=5,
                                       metadata=uk_ops)
    assert [(r.ref, r.outcome) for r in skipped.results] == [(de_ref, admin_pb.REDRIVE_OUTCOME_NOT_FOUND)]
    retried = await admin.RetryFailures(admin_pb.RetryFailuresRequest(refs=[de_ref, uk_ref]), timeout=5,
                                        metadata=uk_ops)
    assert [(r.ref, r.outcome) for r in retried.results] == [
        (de_ref, admin_pb.REDRIVE_OUTCOME_NOT_FOUND), (uk_ref, admin_pb.REDRIVE_OUTCOME_RETRIED)]
    assert retried.changed == 1
    assert svc.rows("SELECT status FROM event_inbox WHERE id = :id", id=de_id) == [{"status": "failed"}]
    dry = await admin.RetryFailures(admin_pb.RetryFailuresRequest(
        all_matching=admin_pb.FailureFilter(store_key="uk", statuses=[admin_pb.FAILURE_STATUS_FAILED]), dry_run=True),
        timeout=5, metadata=uk_ops)
    assert de_ref not in [r.ref for r in dry.results]

    # ListTriggers: no store, or another store, is refused
    triggers = admin_pb.ListTriggersRequest(email="jane@example.com")
    assert await _code_of(admin.ListTriggers(triggers, timeout=5, metadata=uk_ops)) == denied
    triggers.store_key = "de"
    assert await _code_of(admin.ListTriggers(triggers, timeout=5, metadata=uk_ops)) == denied
    triggers.store_key = "uk"
    assert await _code_of(admin.ListTriggers(triggers, timeout=5, metadata=uk_ops)) == grpc.StatusCode.NOT_FOUND

    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused call")]
    assert all("uk-ops" in line for line in refusals) and len(refusals) == 11  # one per refused call or part
    assert sum("GetFailure" in line for line in refusals) == 1


async def test_list_triggers_of_a_store_restricted_operator_shows_its_stores_triggers_only(token_service):
    import sqlalchemy as sa
    from datetime import datetime, timedelta, timezone
    svc = token_service
    admin = admin_grpc.AdminServiceStub(svc.channel)
    # one contact (uk and de share the Dotdigital account "main") with a trigger in each store
    await svc.stub.SyncContact(contact_request("uk", customer_id="c-t", email="tess@example.com"), timeout=10,
                               metadata=_bearer(CHECKOUT_TOKEN))
    contact_id = svc.rows("SELECT contact_id FROM contact_identifier WHERE kind = 'email'")[0]["contact_id"]
    now = datetime.now(timezone.utc)
    columns = {c["name"] for c in sa.inspect(svc.engine).get_columns("program_trigger")}
    with svc.engine.begin() as conn:
        for i, store in enumerate(("uk", "de")):
            row = dict(contact_id=contact_id, store_key=store, account="main", program_kind="browse_abandonment",
                       program_id=5001, subject_type="browse", subject_id=f"b-{store}", subject_version=1, step=0,
                       status="pending", due_at=now + timedelta(hours=i + 1), attempts=0, created_at=now)
            conn.execute(sa.text(f"INSERT INTO program_trigger ({', '.join(k for k in row if k in columns)}) VALUES "
                                 f"({', '.join(':' + k for k in row if k in columns)})"), row)
    request = admin_pb.ListTriggersRequest(email="tess@example.com", store_key="uk")
    everything = await admin.ListTriggers(request, timeout=5, metadata=_bearer(OPERATOR_TOKEN))
    assert sorted(t.store_key for t in everything.triggers) == ["de", "uk"]
    own = await admin.ListTriggers(request, timeout=5, metadata=_bearer(UK_OPERATOR_TOKEN))
    assert [t.store_key for t in own.triggers] == ["uk"]
    assert sum(s.count for s in own.summary.statuses) == 1 and not own.has_more


async def test_a_streaming_method_without_a_token_is_unauthenticated_and_logged_once(token_service, caplog):
    caplog.set_level(logging.DEBUG)
    call = token_service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="uk"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [reply async for reply in call]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    call = token_service.stub.ExportCatalog(pb.ExportCatalogRequest(store_key="de"), timeout=5,
                                            metadata=_bearer(UK_ONLY_TOKEN))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        [reply async for reply in call]
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused call")]
    assert len(refusals) == 2 and all("/ctdd.sync.v1.SyncService/ExportCatalog" in line for line in refusals)
    assert "missing bearer token" in refusals[0]


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff", b"\x0a\x05ab"], ids=["corrupt", "truncated"])
async def test_an_undecodable_request_without_a_token_is_unauthenticated_and_not_decoded(token_service, caplog, raw):
    caplog.set_level(logging.DEBUG)
    method = token_service.channel.unary_unary("/ctdd.sync.v1.SyncService/SyncContact")
    assert await _code_of(method(raw, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code_of(method(raw, timeout=5, metadata=_bearer("not-a-known-token-but-long-enough"))
                          ) == grpc.StatusCode.UNAUTHENTICATED
    assert "undecodable" not in caplog.text
    # with a known token the bytes are decoded, and refused as undecodable
    assert await _code_of(method(raw, timeout=5, metadata=_bearer(CHECKOUT_TOKEN))) == grpc.StatusCode.INVALID_ARGUMENT
    stream = token_service.channel.unary_stream("/ctdd.sync.v1.SyncService/ExportCatalog")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [reply async for reply in stream(raw, timeout=5)]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
