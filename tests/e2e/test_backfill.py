"""``ctdd backfill customers|orders`` against the fake commercetools API over HTTP, feeding a real gRPC peer.

The peer is the scripted TrackEventBatch server (per-event results on demand); the synthetic notifications
are additionally checked with the service's own delivery parser (``ctdd.domain.notifications``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from support import commercetools_section
from ctdd.sync.v1 import sync_service_pb2 as pb
from support.scripted_sync_service import INVALID_ARGUMENT, OK, UNAVAILABLE, ScriptedSyncService
from ctdd.adapters.forwarder import EventForwarder
from ctdd.adapters.backfill import CURSOR_CONTAINER, BackfillError, ProgressBar, run_backfill
from ctdd.commercetools.client import CommercetoolsClient
from ctdd.domain.notifications import parse_delivery
from ctdd.testing.commercetools_fake import FakeCommercetools

PROJECT = "shop-eu"


def customer(n: int) -> dict:
    return {"id": f"{n:02d}-cust-{n * 7919 % 97:02d}", "version": n % 3 + 1, "email": f"person{n}@example.com",
            "firstName": f"First{n}", "lastName": "Doe", "addresses": [], "isEmailVerified": True, "stores": [],
            "authenticationMode": "Password", "customerNumber": f"C{n}"}


def order(n: int) -> dict:
    return {"type": "Order", "id": f"ord-{n:03d}", "version": 2, "orderNumber": f"N{n}",
            "customerEmail": f"person{n}@example.com", "orderState": "Open", "lineItems": [],
            "totalPrice": {"type": "centPrecision", "currencyCode": "GBP", "centAmount": 100 * n, "fractionDigits": 2}}


@pytest.fixture
def fake():
    with FakeCommercetools(project_key=PROJECT) as f:
        # seeded out of id order: the backfill must sort by id
        for n in (7, 2, 9, 0, 5, 1, 8, 3, 6, 4, 10):
            f.add("customers", customer(n))
        for n in range(10, 0, -1):
            f.add("orders", order(n))
        yield f


@pytest.fixture
async def peer():
    service = await ScriptedSyncService().start()
    yield service
    await service.stop()


@pytest.fixture
async def ct(fake):
    client = CommercetoolsClient(project_key=fake.project_key, client_id=fake.client_id,
                                 client_secret=fake.client_secret, api_url=fake.base_url, auth_url=fake.base_url)
    yield client
    await client.aclose()


async def backfill(ct, peer, resource="customers", **kw):
    async with EventForwarder(peer.target, timeout=5) as forwarder:
        return await run_backfill(ct, forwarder, store_key="uk", project_key=PROJECT, resource=resource,
                                  page_size=kw.pop("page_size", 3), show_progress=False, **kw)


def sent_ids(events) -> list[str]:
    return [json.loads(e.commercetools_delivery)["resource"]["id"] for e in events]


def cursor(fake, key="uk-customers") -> dict | None:
    return next((o for o in fake.all("custom-objects") if o["container"] == CURSOR_CONTAINER and o["key"] == key),
                None)


async def test_every_customer_once_in_id_order_at_backfill_priority(fake, ct, peer):
    result = await backfill(ct, peer)
    assert result.completed and result.processed == 11 and result.accepted == 11 and result.poison == 0
    expected = sorted(c["id"] for c in fake.all("customers"))
    events = [e for call in peer.calls for e in call]
    assert sent_ids(events) == expected  # each exactly once, ascending id
    assert [len(call) for call in peer.calls] == [3, 3, 3, 2]  # one TrackEventBatch per page
    assert {e.priority for e in events} == {pb.PRIORITY_BACKFILL}
    assert {e.store_key for e in events} == {"uk"}

    # the synthetic deliveries are valid platform-format CustomerCreated messages with the full customer
    stored = {c["id"]: c for c in fake.all("customers")}
    for event in events:
        [n] = parse_delivery(event.commercetools_delivery)
        assert n.notification_type == "Message" and n.message_type == "CustomerCreated"
        assert n.project_key == PROJECT and n.resource_type == "customer"
        assert n.dedupe_key == f"backfill:customer:{n.resource_id}:{stored[n.resource_id]['version']}"
        assert n.resource_version == stored[n.resource_id]["version"]
        assert n.payload["customer"] == stored[n.resource_id]
        assert n.payload["resourceUserProvidedIdentifiers"] == {"customerNumber": stored[n.resource_id]["customerNumber"]}

    # paging by id: sort=id asc, limit 3, withTotal=false, where id > last; never an offset > 0
    pages = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/customers")]
    assert len(pages) == 4
    for r in pages:
        assert r.query["sort"] == ["id asc"] and r.query["limit"] == ["3"] and r.query["withTotal"] == ["false"]
        assert r.query.get("offset", ["0"]) == ["0"]
    assert "where" not in pages[0].query
    assert [r.query["where"] for r in pages[1:]] == [["id > :afterId"]] * 3  # the id is an input variable
    assert [r.query["var.afterId"] for r in pages[1:]] == [[expected[i]] for i in (2, 5, 8)]

    obj = cursor(fake)
    assert obj["value"]["status"] == "completed" and obj["value"]["lastId"] == expected[-1]
    assert obj["value"]["processed"] == 11


async def test_retryable_failure_stops_at_last_accepted_page_and_resumes(fake, ct, peer):
    expected = sorted(c["id"] for c in fake.all("customers"))
    fail_once = {expected[4]}  # second page

    def script(event, attempt):
        rid = json.loads(event.commercetools_delivery)["resource"]["id"]
        return UNAVAILABLE if rid in fail_once and attempt == 1 else OK

    peer.script = script
    first = await backfill(ct, peer)
    assert not first.completed and first.processed == 3 and first.last_id == expected[2]
    assert "run again to resume" in first.stopped_reason
    assert cursor(fake)["value"]["status"] == "running" and cursor(fake)["value"]["lastId"] == expected[2]

    peer.calls.clear()
    fake.reset_requests()
    second = await backfill(ct, peer)
    assert second.completed and second.resumed_after == expected[2] and second.processed == 11
    # resumed at the cursor: page 1 is not read or sent again
    assert sent_ids(e for call in peer.calls for e in call) == expected[3:]
    first_page = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/customers")][0]
    assert first_page.query["where"] == ["id > :afterId"] and first_page.query["var.afterId"] == [expected[2]]
    # every customer ended up accepted; the two accepted before the stop were sent again (same message ids:
    # the service drops the duplicates)
    accepted = sent_ids(peer.accepted)
    assert sorted(set(accepted)) == expected and len(accepted) == 11 + 2


async def test_commercetools_fault_mid_run_resumes_from_the_cursor(fake, ct, peer):
    expected = sorted(c["id"] for c in fake.all("customers"))

    def script(event, attempt):
        # after the second page was accepted, commercetools fails the next page request
        if json.loads(event.commercetools_delivery)["resource"]["id"] == expected[5]:
            fake.inject_fault(status=503, times=5, method="GET", path_contains="/customers")
        return OK

    peer.script = script
    first = await backfill(ct, peer)
    assert not first.completed and first.processed == 6
    assert "commercetools" in first.stopped_reason
    assert cursor(fake)["value"]["lastId"] == expected[5]

    fake.clear_faults()
    peer.script = lambda event, attempt: OK
    second = await backfill(ct, peer)
    assert second.completed and second.processed == 11
    assert sent_ids(peer.accepted) == expected  # each exactly once across both runs


async def test_poison_is_skipped_and_the_run_completes(fake, ct, peer, caplog):
    peer.script = lambda event, attempt: INVALID_ARGUMENT if b'"ord-004"' in event.commercetools_delivery else OK
    with caplog.at_level("WARNING"):
        result = await backfill(ct, peer, resource="orders", page_size=4)
    assert result.completed and result.accepted == 9 and result.poison == 1
    assert "order ord-004 (version 2): refused by the service (code 3); skipped" in caplog.text
    assert "person" not in caplog.text
    events = [e for call in peer.calls for e in call]
    assert sent_ids(events) == [f"ord-{n:03d}" for n in range(1, 11)]
    [n] = parse_delivery(events[0].commercetools_delivery)
    assert n.message_type == "OrderImported" and n.payload["order"]["orderNumber"] == "N1"
    assert n.payload["resourceUserProvidedIdentifiers"] == {"orderNumber": "N1"}
    assert cursor(fake, "uk-orders")["value"]["poison"] == 1


async def test_a_completed_backfill_starts_over_with_the_same_message_ids(fake, ct, peer):
    await backfill(ct, peer)
    first = [e.commercetools_delivery for call in peer.calls for e in call]
    peer.calls.clear()
    again = await backfill(ct, peer)
    assert again.completed and again.resumed_after is None
    assert [e.commercetools_delivery for call in peer.calls for e in call] == first  # deduplicated by the service


async def test_a_concurrent_run_on_the_same_cursor_is_refused(fake, ct, peer):
    def script(event, attempt):
        obj = cursor(fake)
        if obj["value"].get("lastId") is None and obj["version"] < 5:  # someone else writes the cursor
            fake.bump_version("custom-objects", obj["id"])
        return OK

    peer.script = script
    with pytest.raises(BackfillError, match="another backfill"):
        await backfill(ct, peer)


def test_progress_bar_renders_counts():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    sink = Sink()
    bar = ProgressBar("customers", total=10, stream=sink, width=10)
    bar.update(0)
    bar.update(5, final=True)
    assert "customers [#####.....] 5/10  50.0%" in sink.text
    assert "\r" not in sink.text  # off a terminal: plain lines


def test_progress_bar_on_a_terminal_is_redrawn_in_place():
    import pty
    import re

    leader, follower = pty.openpty()
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        bar = ProgressBar("customers", total=10, stream=terminal)
        for done in (0, 5):
            bar.update(done)
        bar.update(10, final=True)
    chunks = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks += chunk
    os.close(leader)
    text = chunks.decode()
    assert re.search(r"\rcustomers  50%\|█+[▏▎▍▌▋▊▉ ]* *\| 5/10 [\d,]+/s", text), text
    assert re.search(r"\rcustomers 100%\|█+\| 10/10 [\d,]+/s *\r\n$", text), text
    assert text.count("\n") == 1  # one line, redrawn


async def test_cli_backfill_orders(fake, peer, tmp_path):
    config = tmp_path / "ctdd.toml"
    config.write_text(f"""
[accounts.main]
region = "r1"

{commercetools_section(fake)}
[stores.uk]
account = "main"
commercetools = "shop"
""")
    env = {**os.environ, "CT_SECRET": fake.client_secret, "CTDD_LOG_LEVEL": "WARNING"}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ctdd", "backfill", "orders", "--store", "uk", "--config", str(config),
         "--page-size", "4", "--target", peer.target],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "completed; 10 processed in total, 10 accepted" in proc.stdout
    assert "orders [" in proc.stderr and "10/10 100.0%" in proc.stderr  # the progress bar
    assert sent_ids(peer.accepted_bodies_events()) == [f"ord-{n:03d}" for n in range(1, 11)]
    assert fake.client_secret not in proc.stdout + proc.stderr


# -- against the real service -----------------------------------------------------------------------

async def test_backfill_into_the_real_service(service_factory, sqlite_url, sandbox):
    """Customers from the fake commercetools API become Dotdigital contacts through the real pipeline, at
    backfill priority; running the backfill again is deduplicated (nothing new is enqueued)."""
    from support import ct_payloads as cp
    from support import all_settled, make_settings, outbox_rows, wait_for as wait_settled
    from ctdd.delivery import outbox

    with FakeCommercetools(project_key=cp.PROJECT) as fake_ct:
        for n in range(7):
            fake_ct.add("customers", cp.customer(f"cust-bf-{n}", f"bf{n}@example.com", first=f"Bf{n}"))
        svc = await service_factory(make_settings(sqlite_url, sandbox, commercetools=fake_ct))
        client = CommercetoolsClient(project_key=fake_ct.project_key, client_id=fake_ct.client_id,
                                     client_secret=fake_ct.client_secret, api_url=fake_ct.base_url,
                                     auth_url=fake_ct.base_url)
        try:
            async with EventForwarder(f"127.0.0.1:{svc.app.port}") as forwarder:
                store = svc.app.settings.store("uk")
                result = await run_backfill(client, forwarder, store_key="uk", project_key=store.commercetools_project,
                                            resource="customers", page_size=3, show_progress=False)
                assert result.completed and result.accepted == 7
                rows = outbox_rows(svc)
                assert rows and {r["priority"] for r in rows} == {outbox.PRIORITY_BACKFILL}
                again = await run_backfill(client, forwarder, store_key="uk",
                                           project_key=store.commercetools_project, resource="customers",
                                           page_size=3, show_progress=False)
                assert again.completed and again.accepted == 7
                assert len(outbox_rows(svc)) == len(rows)  # duplicates: nothing new enqueued
        finally:
            await client.aclose()
        await wait_settled(lambda: all_settled(svc), what="deliveries")
        assert {c["identifiers"]["email"] for c in sandbox.contacts} == {f"bf{n}@example.com" for n in range(7)}
