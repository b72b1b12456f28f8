"""Many processes, one database: migrations, claims, lease heartbeats, the rescuer, LISTEN/NOTIFY, the
orphaned-import guard and the one-dispatcher rule on SQLite. Real PostgreSQL, real HTTP to the sandbox."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session

from support import reset_postgres, contact_request, make_settings, outbox_rows, wait_for, write_service_config
from ctdd.delivery import outbox
from ctdd.runtime.app import App
from ctdd.config import settings_from_mapping
from ctdd.ingest.contact_sync import ContactSync
from ctdd.db.engine import alembic_config, create_db_engine, upgrade_database, utcnow
from ctdd.db.models import Contact
from ctdd.delivery.dispatcher import Dispatcher
from ctdd.hooks.manager import create_plugin_manager
from ctdd.db.locks import DispatcherAlreadyRunning


@pytest.fixture
def pg_url(request):
    url = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    return url


def _contacts(engine, n: int) -> list[int]:
    with Session(engine) as s, s.begin():
        rows = [Contact(account="acc", created_at=utcnow(), updated_at=utcnow()) for _ in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def _enqueue(engine, contact_id: int, n: int = 1, *, priority: int = 0) -> list[int]:
    with Session(engine) as s, s.begin():
        return [outbox.enqueue(s, contact_id=contact_id, account="acc", kind="contact.upsert",
                               payload={"body": {"dataFields": {"N": i}}}, ref=outbox.RecordRef("uk"),
                               priority=priority) for i in range(n)]


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "CTDD_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "ctdd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, **kwargs)


# -- migrations ----------------------------------------------------------------------------------------
def test_many_processes_upgrading_at_once_do_not_trip_over_each_other(database_url):
    procs = [_cli("db", "upgrade", "--database-url", database_url) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outputs]
    engine = create_db_engine(database_url)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    engine.dispose()
    assert version == [ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()]


def test_an_upgrade_waits_for_the_one_in_progress(database_url):
    """Deterministic: while the migration lock is held (by "another process" here), ``ctdd db upgrade``
    waits; once it is released the upgrade runs."""
    import fcntl

    from ctdd.db.engine import MIGRATION_LOCK_KEY

    admin = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    conn = admin.connect() if admin.dialect.name == "postgresql" else None
    fd = None
    if conn is not None:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    else:
        fd = os.open(admin.url.database + ".migrate.lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
    proc = _cli("db", "upgrade", "--database-url", database_url)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)
    finally:
        if conn is not None:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.close()
        else:
            os.close(fd)
    _, err = proc.communicate(timeout=30)
    admin.dispose()
    assert proc.returncode == 0, err[-2000:]


# -- claims ----------------------------------------------------------------------------------------------
def test_a_claim_takes_at_most_its_limit_in_priority_order(engine):
    ids = [(_enqueue(engine, c, priority=10 if i < 5 else 0)[0]) for i, c in enumerate(_contacts(engine, 8))]
    claimed = outbox.claim(engine, worker="w", limit=3, lease_seconds=30)
    assert [m.id for m in claimed] == ids[5:8]
    assert outbox.counts_by_status(engine) == {"in_flight": 3, "pending": 5}


@pytest.mark.postgres
def test_parallel_claimers_never_break_partition_order(pg_url):
    engine = create_db_engine(pg_url)
    upgrade_database(engine)
    contacts = _contacts(engine, 30)
    expected = {}
    for c in contacts:
        expected[outbox.partition_key("acc", c)] = _enqueue(engine, c, 4)
    done: dict[str, list[int]] = {k: [] for k in expected}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        rng = random.Random(name)
        try:
            idle = 0
            while idle < 20:
                claimed = outbox.claim(engine, worker=name, limit=4, lease_seconds=30)
                if not claimed:
                    idle += 1
                    time.sleep(0.005)
                    continue
                idle = 0
                for msg in claimed:
                    time.sleep(rng.random() * 0.003)
                    with lock:
                        done[msg.partition_key].append(msg.id)
                    assert outbox.mark_delivered(engine, msg, worker=name, started_at=utcnow(), response_code=200)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    engine.dispose()
    assert not errors, errors
    assert done == expected  # every message once, each partition in sequence order


def test_heartbeat_keeps_a_lease_and_the_rescuer_takes_back_only_expired_ones(engine):
    a, b = _contacts(engine, 2)
    _enqueue(engine, a)
    _enqueue(engine, b)
    t0 = utcnow()
    claimed = {m.contact_id: m for m in outbox.claim(engine, worker="alive", limit=1, lease_seconds=2, now=t0)}
    claimed.update({m.contact_id: m for m in outbox.claim(engine, worker="dead", limit=1, lease_seconds=2, now=t0)})
    assert set(claimed) == {a, b}
    assert outbox.heartbeat(engine, worker="alive", lease_seconds=2, now=t0 + timedelta(seconds=1.5)) == 1
    assert outbox.rescue_expired(engine, now=t0 + timedelta(seconds=3)) == 1  # only the dead worker's message
    with engine.connect() as conn:
        rows = {r.contact_id: r for r in conn.execute(sa.text("SELECT * FROM outbox_message"))}
    assert rows[a].status == "in_flight" and rows[a].lease_owner == "alive"
    assert rows[b].status == "pending" and rows[b].lease_owner is None


@pytest.mark.postgres
async def test_a_slow_delivery_keeps_its_lease_while_another_worker_rescues(service_factory, pg_url, sandbox):
    """Lease 1.5 s, a call taking 3 s, two dispatchers rescuing every second: the heartbeat keeps the message
    with its worker, so it is sent exactly once."""
    settings = make_settings(pg_url, sandbox, lease_seconds=1.5, heartbeat_seconds=0.2, concurrency=2)
    svc = await service_factory(settings)
    other = Dispatcher(svc.engine, settings, svc.app.clients, svc.app.hooks, worker_id="other")
    other.start()
    try:
        sandbox.set_latency(3.0)
        await svc.stub.SyncContact(contact_request(email="slow@example.com", first_name="S"))
        await wait_for(lambda: outbox_rows(svc)[0]["status"] == "delivered", timeout=10, what="slow delivery")
    finally:
        sandbox.set_latency(0)
        await other.stop(drain_seconds=1)
    patches = [r for r in sandbox.requests if r.method == "PATCH"]
    assert len(patches) == 1
    assert [r["attempts"] for r in outbox_rows(svc)] == [1]
    assert svc.app.dispatcher.stats["heartbeats"] + other.stats["heartbeats"] >= 3


@pytest.mark.postgres
@pytest.mark.parametrize("listen", [True, False], ids=["listen", "poll-only"])
async def test_notify_wakes_an_idle_worker_at_once(pg_url, sandbox, listen):
    """The worker polls only every 30 s; an enqueue committed by another process wakes it through NOTIFY."""
    settings = make_settings(pg_url, sandbox, poll_interval_seconds=30.0, listen_notify=listen)
    worker = App(settings, serve_grpc=False)
    await worker.start()
    try:
        if listen:
            await asyncio.wait_for(worker.dispatcher._listener.connected.wait(), 5)
        await asyncio.sleep(0.3)  # the worker is idle, waiting
        ingest_engine = create_db_engine(pg_url)  # "another process": its own engine, no wake-up call
        hooks = create_plugin_manager(())
        from ctdd.api.convert import parse_sync_contact

        contact = parse_sync_contact(contact_request(email="n@example.com", first_name="N"), settings)
        t0 = time.monotonic()
        await asyncio.to_thread(ContactSync(ingest_engine, settings, hooks).sync, contact)
        ingest_engine.dispose()
        if listen:
            await wait_for(lambda: sandbox.requests_matching("PATCH"), timeout=3, what="wake-up by NOTIFY")
            assert time.monotonic() - t0 < 2
            assert worker.dispatcher._listener.received >= 1
        else:
            await asyncio.sleep(1.5)
            assert not sandbox.requests_matching("PATCH")
    finally:
        await worker.stop(grace=1)


async def test_an_import_left_running_by_a_dead_worker_ends_before_anything_newer_is_sent(
    service_factory, database_url, sandbox
):
    """A worker died after starting a bulk import. The next worker must not send newer data for those
    contacts until that import has ended, or the import would overwrite it when it finishes."""
    settings = make_settings(database_url, sandbox)
    svc = await service_factory(settings, run_dispatcher=False)
    await svc.stub.SyncContact(contact_request(email="o@example.com", first_name="v1"))
    await svc.stub.SyncContact(contact_request(email="o@example.com", first_name="v2"))
    [head] = outbox.claim(svc.engine, worker="dead", limit=5, lease_seconds=1)
    contact = svc.rows("SELECT * FROM contact")[0]
    sandbox.import_delay_seconds = 1.5
    client = svc.app.clients.get("main")
    import_id = await client.start_contacts_import(
        [{**head.payload["body"], "matchIdentifier": "email", "identifiers": {"email": contact["email"]}}])
    outbox.record_import(svc.engine, [head.id], import_id, worker="dead")
    started = time.time()  # the sandbox logs wall-clock arrival times
    assert outbox.rescue_expired(svc.engine, now=utcnow() + timedelta(seconds=2)) == 1

    dispatcher = Dispatcher(svc.engine, settings, svc.app.clients, svc.app.hooks)
    dispatcher.start()
    try:
        await wait_for(lambda: all(r["status"] == "delivered" for r in outbox_rows(svc)), timeout=10, what="delivery")
    finally:
        await dispatcher.stop(drain_seconds=1)
    patches = sandbox.requests_matching("PATCH")
    assert patches and min(r.at for r in patches) - started >= 1.4  # waited for the import
    sandbox.complete_imports()  # whatever import might still be running ends now
    assert sandbox.get_contact(email="o@example.com")["dataFields"]["FIRSTNAME"] == "v2"
    assert svc.rows("SELECT bulk_import_id FROM outbox_message WHERE bulk_import_id IS NOT NULL") == []


# -- SQLite: one dispatcher per file -------------------------------------------------------------------------
def _worker_config(tmp_path, database_url, sandbox) -> str:
    os.environ["SANDBOX_PASSWORD"] = sandbox.password
    return write_service_config(tmp_path / "worker.toml", database_url, sandbox)


async def test_sqlite_refuses_a_second_dispatcher_on_the_same_file(tmp_path, sqlite_url, sandbox):
    config = _worker_config(tmp_path, sqlite_url, sandbox)
    first = _cli("worker", "--config", config)
    try:
        line = await asyncio.to_thread(first.stdout.readline)
        assert line.startswith("ctdd worker "), first.stderr.read()
        second = _cli("worker", "--config", config)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 3 and "one dispatcher per database file" in err
        settings = settings_from_mapping({"service": {"database_url": sqlite_url},
                                          "accounts": {"main": {"api_user": "u"}}},
                                         env={"CTDD_ACCOUNT_MAIN_PASSWORD": "p"})
        in_process = App(settings, serve_grpc=False)
        with pytest.raises(DispatcherAlreadyRunning):
            await in_process.start()
        await in_process.stop(grace=0)
        ingest_only = App(settings, serve_grpc=False, run_dispatcher=False)  # serve --no-dispatcher is fine
        await ingest_only.start()
        await ingest_only.stop(grace=0)
    finally:
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        first.wait(timeout=10)
    again = _cli("worker", "--config", config)
    try:
        line = await asyncio.to_thread(again.stdout.readline)
        assert line.startswith("ctdd worker "), again.stderr.read()
    finally:
        again.terminate()
        assert again.wait(timeout=20) == 0
