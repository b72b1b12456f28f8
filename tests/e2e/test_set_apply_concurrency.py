"""Several inbox processors applying one inbox at once (issue 16): PostgreSQL, four ``ctdd worker`` processes.

A few thousand queued events for a dozen shoppers (product views, custom events, cart updates and customer
snapshots of rising versions) are stored by an ingest-only service first; then four workers claim, apply and
deliver them at once, so their batches share contacts all the time. With ``set_based_apply`` on, batches of
contact events lock their contacts in id order and are applied at the same time; off, every apply takes
turns (the advisory lock). Either way:

- every event is applied exactly once (inbox rows done, one dedupe record each, one insight message per
  custom event, no event's effect twice);
- each contact ends at its latest values (the newest customer version's name, the newest view of each
  product, the newest version of each cart, one pending browse-abandonment and abandoned-cart timer for
  the newest view and cart version), and its outbox messages are numbered 1..n without gaps or repeats;
- no deadlock: none in the workers' logs, none counted by PostgreSQL for the database;
- all of it within a generous timeout (delivery to the sandbox is left to the delivery tests: what is sent
  is checked in the outbox, in each contact's sequence order).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ctdd.sync.v1 import sync_service_pb2 as pb
from support import ct_payloads as ct
from support import make_settings, reset_postgres, start_cli, stop_with_sigterm, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]

SHOPPERS = 12
EVENTS = 3000
WORKERS = 4
BATCH = 100
START = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
PROGRAMS = {"abandoned_cart": {"program": 101, "delay_minutes": 24 * 60},
            "browse_abandonment": {"program": 102, "delay_minutes": 24 * 60}}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Stream:
    """The events, and what each shopper must end with."""

    def __init__(self, seed: int = 4):
        rng = random.Random(seed)
        self.requests: list[pb.TrackEventRequest] = []
        self.custom_ids: set[str] = set()
        self.last_view: dict[tuple[str, str], datetime] = {}  # (email, product) -> newest view
        self.newest_view: dict[str, datetime] = {}
        self.customer_version: dict[str, int] = collections.defaultdict(int)
        self.cart_version: dict[str, int] = collections.defaultdict(int)
        self.cart_lines: dict[str, int] = {}
        self.cart_owner: dict[str, str] = {}
        for i in range(EVENTS):
            n = rng.randrange(SHOPPERS)
            email = f"busy{n}@example.com"
            at = START + timedelta(seconds=i)  # every event of the stream has its own time, rising
            roll = rng.random()
            if roll < 0.5:
                product = f"prod-{rng.randint(1, 8)}"
                event = pb.BehaviouralEvent(event_id=f"view-{i}", identity=pb.ContactIdentity(email=email),
                                            product_viewed=pb.ProductViewed(product_id=product))
                self.last_view[(email, product)] = at
                self.newest_view[email] = at
            elif roll < 0.8:
                event = pb.BehaviouralEvent(event_id=f"custom-{i}", identity=pb.ContactIdentity(email=email),
                                            custom_event=pb.CustomEvent(name="tapped"))
                event.custom_event.properties.update({"i": i})
                self.custom_ids.add(event.event_id)
            elif roll < 0.9:
                cart_id = f"cart-{n}"
                version = self.cart_version[cart_id] = self.cart_version[cart_id] + 1
                lines = [ct.line_item("prod-1", "SKU-1", "Hat", rng.randint(1, 3), 900)]
                event = pb.BehaviouralEvent(event_id=f"cart-{i}", identity=pb.ContactIdentity(email=email),
                                            currency="GBP", cart_updated=pb.CartUpdated(cart_id=cart_id,
                                                                                        cart_version=version))
                event.cart_updated.cart.update({"id": cart_id, "version": version, "lineItems": lines,
                                                "cartState": "Active", "customerEmail": email,
                                                "lastModifiedAt": _iso(at), "totalPrice": ct.money(900)})
                self.cart_lines[cart_id] = len(lines)
                self.cart_owner[cart_id] = email
            else:
                cid = f"busy-cust-{n}"
                version = self.customer_version[email] = self.customer_version[email] + 1
                customer = ct.customer(cid, email, version=version, first=f"v{version}", modified=_iso(at))
                self.requests.append(pb.TrackEventRequest(
                    store_key="uk", processing=pb.PROCESSING_QUEUED, commercetools_delivery=ct.raw(ct.message(
                        "customer", cid, "CustomerCreated", version=version, created=_iso(at), customer=customer,
                        msg_id=f"msg-{i}"))))
                continue
            event.occurred_at.FromDatetime(at)
            self.requests.append(pb.TrackEventRequest(store_key="uk", behavioural_event=event,
                                                      processing=pb.PROCESSING_QUEUED))


def _worker_config(path, url: str, sandbox, *, set_based: bool) -> str:
    programs = "".join(f"""
[stores.uk.programs.{kind}]
program = {cfg["program"]}
delay_minutes = {cfg["delay_minutes"]}
""" for kind, cfg in PROGRAMS.items())
    path.write_text(f"""
[service]
database_url = "{url}"
set_based_apply = {str(set_based).lower()}

[accounts.main]
api_user = "{sandbox.api_user}"
password_env = "SANDBOX_PASSWORD"
base_url = "{sandbox.base_url}"

[stores.uk]
account = "main"
commercetools_project = "{ct.PROJECT}"
locale = "en-GB"
currency = "GBP"
{programs}
[inbox]
batch_size = {BATCH}
poll_interval_seconds = 0.05
lease_seconds = 60

[dispatcher]
concurrency = 8
backoff_base_seconds = 0.05
backoff_cap_seconds = 0.5
poll_interval_seconds = 0.05
bulk_poll_min_seconds = 0.05
bulk_poll_max_seconds = 0.2
""")
    return str(path)


def _deadlocks(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")).scalar_one()


@pytest.mark.parametrize("set_based", [True, False], ids=["set-based", "one-by-one"])
async def test_four_workers_apply_one_inbox_once_in_order_without_deadlocks(
        tmp_path, request, service_factory, sandbox, set_based):
    url = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    settings = make_settings(url, sandbox, stores_extra={"uk": {"commercetools_project": ct.PROJECT,
                                                                "programs": PROGRAMS}})
    ingest = await service_factory(settings, run_dispatcher=False)
    stream = Stream()
    for i in range(0, len(stream.requests), 500):
        resp = await ingest.stub.TrackEventBatch(pb.TrackEventBatchRequest(events=stream.requests[i:i + 500]))
        assert all(r.code == 0 and r.response.queued for r in resp.results)
    engine = sa.create_engine(url)
    deadlocks_before = _deadlocks(engine)
    config = _worker_config(tmp_path / "worker.toml", url, sandbox, set_based=set_based)

    def counts() -> dict:
        with engine.connect() as conn:
            inbox = dict(conn.execute(sa.text("SELECT status, count(*) FROM event_inbox GROUP BY status")).all())
        return {"inbox": inbox}

    workers = [start_cli(["worker", "--config", config, "--grace", "2"], sandbox, tmp_path / f"w{i}.log")
               for i in range(WORKERS)]
    started = time.monotonic()
    try:
        await wait_for(lambda: counts()["inbox"] == {"done": len(stream.requests)}, timeout=240, interval=0.1,
                       what="the inbox applied")
        applied = time.monotonic() - started
    finally:
        codes = await asyncio.gather(*(stop_with_sigterm(w, timeout=20) for w in workers))
    logs = {i: (tmp_path / f"w{i}.log").read_text() for i in range(WORKERS)}
    assert codes == [0] * WORKERS, {i: log[-2000:] for i, log in logs.items()}
    print(f"{len(stream.requests)} events, {WORKERS} workers, set_based={set_based}: applied in {applied:.1f}s")

    with engine.connect() as conn:
        rows = lambda sql: conn.execute(sa.text(sql)).all()  # noqa: E731
        # -- every event applied exactly once ------------------------------------------------------
        # Across workers two events of one contact may be applied in either order: a customer snapshot or a
        # cart version that comes after a newer one is stale (the version rules); anything else is applied.
        processed = rows("SELECT dedupe_key, outcome FROM processed_event")
        assert len(processed) == len(stream.requests)
        assert all(o == "applied" or (o == "stale" and (k.startswith("msg-") or k.startswith("event:uk:cart-")))
                   for k, o in processed), collections.Counter(o for _, o in processed)
        inbox_outcomes = collections.Counter(o for (o,) in rows("SELECT outcome FROM event_inbox"))
        assert inbox_outcomes == collections.Counter(o for _, o in processed)
        custom = rows("SELECT payload FROM outbox_message WHERE kind = 'insight.upsert'")
        custom_ids = collections.Counter(p["record_id"] for (p,) in custom if p["collection"] == "CustomEvents")
        assert set(custom_ids) == stream.custom_ids and set(custom_ids.values()) == {1}
        # -- per contact: messages numbered 1..n, in the contact's next_sequence ------------------------
        contacts = {r.id: r for r in rows("SELECT id, email, next_sequence FROM contact")}
        assert {c.email for c in contacts.values()} == {f"busy{n}@example.com" for n in range(SHOPPERS)}
        sequences = collections.defaultdict(list)
        for contact_id, sequence in rows("SELECT contact_id, sequence FROM outbox_message ORDER BY sequence"):
            sequences[contact_id].append(sequence)
        for contact_id, seqs in sequences.items():
            assert seqs == list(range(1, len(seqs) + 1)), (contacts[contact_id].email, seqs[:20])
            assert contacts[contact_id].next_sequence == len(seqs) + 1
        by_email = {c.email: c.id for c in contacts.values()}
        # -- the newest of everything won ------------------------------------------------------------
        browse = rows("SELECT contact_id, subject_version FROM program_trigger "
                      "WHERE program_kind = 'browse_abandonment' AND status = 'pending'")
        expected_browse = {by_email[e]: int(t.timestamp() * 1000) for e, t in stream.newest_view.items()}
        assert dict(browse) == expected_browse and len(browse) == len(expected_browse)
        carts = {r.cart_id: r for r in rows("SELECT cart_id, version, contact_id FROM cart")}
        assert {c: r.version for c, r in carts.items()} == dict(stream.cart_version)
        assert all(carts[c].contact_id == by_email[e] for c, e in stream.cart_owner.items())
        pending_carts = rows("SELECT subject_id, subject_version FROM program_trigger "
                             "WHERE program_kind = 'abandoned_cart' AND status = 'pending'")
        assert dict(pending_carts) == dict(stream.cart_version) and len(pending_carts) == len(stream.cart_version)
        # -- what Dotdigital is sent, in each contact's delivery order (sequence): the newest customer
        # snapshot's name last, and for each product the newest view last
        first_names: dict[int, str] = {}
        viewed: dict[int, dict[str, str]] = collections.defaultdict(dict)
        for contact_id, kind, payload in rows("SELECT contact_id, kind, payload FROM outbox_message "
                                              "ORDER BY contact_id, sequence"):
            if kind == "contact.upsert" and "FIRSTNAME" in payload["body"].get("dataFields", {}):
                first_names[contact_id] = payload["body"]["dataFields"]["FIRSTNAME"]
            elif kind == "insight.upsert" and payload["collection"] == "ProductViews":
                viewed[contact_id][payload["record_id"]] = payload["record"]["lastViewedAt"]
    engine.dispose()
    assert first_names == {by_email[e]: f"v{v}" for e, v in stream.customer_version.items()}
    expected_views: dict[int, dict[str, str]] = collections.defaultdict(dict)
    for (email, product), at in stream.last_view.items():
        expected_views[by_email[email]][product] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert viewed == expected_views

    # -- no deadlock: none reported to a worker (each names the statement and the code that ran it) ------
    reported = [(i, line[:300]) for i, log in logs.items() for line in log.splitlines()
                if " ERROR " in line or line.startswith("psycopg.errors.DeadlockDetected")]
    assert "deadlock detected" not in "".join(logs.values()), reported[:8]
    await asyncio.sleep(0.5)  # the workers' backends have exited: their statistics are flushed
    assert _deadlocks(engine) - deadlocks_before == 0
    engine.dispose()
