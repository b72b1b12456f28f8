"""Faults on PostgreSQL with several worker processes.

Two ``ctdd worker`` processes deliver from one PostgreSQL database while the sandbox answers about 30 % of
all calls with a 5xx and sends bursts of 429. One worker is killed with SIGKILL while a bulk import of its
is running, and restarted. Checked from the sandbox's request log: every contact ends with its latest
value, and the writes each contact received (single PATCHes and bulk import items, each placed at the
moment the sandbox applied it) never go back to an older value.
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa

from support import (reset_postgres, contact_request, make_settings, start_cli, stop_with_sigterm, wait_for,
                      write_service_config)

pytestmark = pytest.mark.postgres

CONTACTS = 60
IMPORT_DELAY = 0.3
LATENCY = 0.01


DISPATCH = dict(concurrency=4, batch_size=8, max_attempts=40, backoff_base_seconds=0.05, backoff_cap_seconds=0.4,
                lease_seconds=2.0, heartbeat_seconds=0.5, poll_interval_seconds=0.1, bulk_backlog_threshold=20,
                bulk_min_batch=5, bulk_max_batch=40, bulk_poll_min_seconds=0.05, bulk_poll_max_seconds=0.3)


def _config(tmp_path, database_url, sandbox) -> str:
    return write_service_config(tmp_path / "worker.toml", database_url, sandbox, dispatcher=DISPATCH)


def _start_worker(config, sandbox, log_path) -> subprocess.Popen:
    return start_cli(["worker", "--config", config, "--grace", "2"], sandbox, log_path)


class FaultInjector(threading.Thread):
    """~30 % of calls get a 5xx; after every 25 calls, a burst of three 429s (with X-RateLimit-* headers)."""

    def __init__(self, sandbox, rate: float = 0.3, seed: int = 7):
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.rate = rate
        self.rng = random.Random(seed)
        self.stopped = threading.Event()
        self.injected = collections.Counter()

    def run(self) -> None:
        # one burst up front: with bulk imports a run may make fewer than 25 calls
        self.sandbox.inject_fault(status=429, times=3, headers={
            "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"})
        self.injected[429] += 3
        seen = 0
        while not self.stopped.is_set():
            n = len(self.sandbox.requests)
            for i in range(seen, n):
                if i % 25 == 24:
                    self.sandbox.inject_fault(status=429, times=3, headers={
                        "X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"})
                    self.injected[429] += 3
                elif self.rng.random() < self.rate:
                    status = self.rng.choice((500, 502, 503))
                    self.sandbox.inject_fault(status=status)
                    self.injected[status] += 1
            seen = n
            time.sleep(0.003)


def _writes_by_contact(sandbox) -> dict[str, list[tuple[float, int, str]]]:
    """Per email: (time the sandbox applied it, version n of FIRSTNAME "v<n>", what) for every successful write."""
    by_id = {c["contactId"]: c["identifiers"]["email"] for c in sandbox.contacts}
    writes: dict[str, list[tuple[float, int, str]]] = collections.defaultdict(list)
    for r in sandbox.requests:
        if r.method == "PATCH" and r.status < 300:
            first = (r.json.get("dataFields") or {}).get("FIRSTNAME")
            if first:
                email = by_id.get(r.contact_id)
                writes[email].append((r.at + LATENCY, int(first[1:]), "patch"))
        elif r.method == "PUT" and r.path == "/contacts/v3/import" and r.status == 202:
            applied = r.at + LATENCY + IMPORT_DELAY  # imports apply once due (first request after it)
            for item in r.json["contacts"]:
                first = (item.get("dataFields") or {}).get("FIRSTNAME")
                ids = item["identifiers"]
                email = ids.get("email") or by_id.get(ids.get("contactId"))
                if first:
                    writes[email].append((applied, int(first[1:]), "import"))
    return writes


async def test_kill_a_worker_mid_import_under_5xx_and_429_bursts(tmp_path, service_factory, request, sandbox):
    url = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    sandbox.import_delay_seconds = IMPORT_DELAY
    sandbox.set_latency(LATENCY)
    ingest = await service_factory(make_settings(url, sandbox), run_dispatcher=False)
    engine = sa.create_engine(url)
    config = _config(tmp_path, url, sandbox)
    emails = [f"f{i}@example.com" for i in range(CONTACTS)]

    async def sync_all(version: int) -> None:
        await asyncio.gather(*(ingest.stub.SyncContact(contact_request(email=e, first_name=f"v{version}"))
                               for e in emails))

    def statuses() -> collections.Counter:
        with engine.connect() as conn:
            return collections.Counter(dict(conn.execute(
                sa.text("SELECT status, count(*) FROM outbox_message GROUP BY status")).all()))

    await sync_all(1)  # a backlog: the workers start with bulk imports
    injector = FaultInjector(sandbox)
    injector.start()
    workers = {"a": _start_worker(config, sandbox, tmp_path / "a.log")}
    try:
        # Kill worker A as soon as it has a bulk import running (accepted, recorded, not yet finished).
        def orphaned() -> int:
            with engine.connect() as conn:
                return conn.execute(sa.text(
                    "SELECT count(*) FROM outbox_message WHERE status = 'in_flight' AND bulk_import_id IS NOT NULL"
                )).scalar_one()

        await wait_for(orphaned, timeout=30, interval=0.005, what="a running bulk import of worker A")
        workers["a"].send_signal(signal.SIGKILL)
        workers["a"].wait(timeout=10)
        assert orphaned() > 0, "the kill came after the batch: nothing to test"

        workers["b"] = _start_worker(config, sandbox, tmp_path / "b.log")
        await sync_all(2)
        await asyncio.sleep(0.5)
        workers["a2"] = _start_worker(config, sandbox, tmp_path / "a2.log")
        await sync_all(3)
        await wait_for(lambda: set(statuses()) <= {"delivered", "merged"} and sum(statuses().values()) > 0,
                       timeout=60, interval=0.1, what="every message settled")
        # A2 must be up before it is stopped (a SIGTERM while Python still imports ends it by the signal).
        await wait_for(lambda: "delivering from" in (tmp_path / "a2.log").read_text(), timeout=60,
                       interval=0.1, what="worker A2 started")
        with engine.connect() as conn:
            unsettled_merged = conn.execute(sa.text(
                "SELECT count(*) FROM outbox_message m JOIN outbox_message h ON m.merged_into = h.id "
                "WHERE m.status = 'merged' AND h.status <> 'delivered'")).scalar_one()
            workers_seen = conn.execute(sa.text(
                "SELECT count(DISTINCT worker) FROM delivery_attempt")).scalar_one()
        assert unsettled_merged == 0
    finally:
        injector.stopped.set()
        await asyncio.gather(*(stop_with_sigterm(proc, timeout=20) for proc in workers.values()))
        engine.dispose()
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("a", "b", "a2"))
    assert workers["b"].returncode == 0 and workers["a2"].returncode == 0, logs[-3000:]
    assert "waiting for that import to end" in logs  # the orphaned import was waited for

    # The faults really happened.
    statuses_seen = collections.Counter(r.status for r in sandbox.requests)
    assert statuses_seen[429] >= 3 and sum(statuses_seen[s] for s in (500, 502, 503)) >= 0.2 * len(sandbox.requests)
    assert workers_seen >= 2

    # Exactly once in effect: every contact exists once, with its latest value ...
    contacts = {c["identifiers"]["email"]: c["dataFields"]["FIRSTNAME"] for c in sandbox.contacts}
    assert contacts == {e: "v3" for e in emails}
    # ... and, from the request log, no contact ever went back to an older value.
    writes = _writes_by_contact(sandbox)
    assert set(writes) == set(emails)
    for email, ws in writes.items():
        versions = [n for _, n, _ in sorted(ws)]
        assert versions == sorted(versions), f"{email} went backwards: {sorted(ws)}"
        assert versions[-1] == 3
