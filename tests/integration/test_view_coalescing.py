"""Coalesced product views ([dispatcher] view_coalesce_seconds, ctdd.delivery.view_merge): the views of one
contact within the window reach the real sandbox as one call carrying the latest view per product; a refused
record settles only its own messages; nothing is merged across another message of the contact, and the
contact's order holds. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from support import contact_request, make_settings, outbox_rows, wait_for
from ctdd.domain.collections import BROWSE_COLLECTION, CUSTOM_EVENTS_COLLECTION
from ctdd.sync.v1 import sync_service_pb2 as pb

EMAIL = "viewer@example.com"
FAST_IMPORTS = dict(bulk_poll_min_seconds=0.02, bulk_poll_max_seconds=0.2)


def _payload(row: dict) -> dict:
    return json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"]


def _settled(svc) -> bool:
    rows = outbox_rows(svc)
    status = {r["id"]: r["status"] for r in rows}
    return bool(rows) and all(
        r["status"] in ("delivered", "dead") or (r["status"] == "merged" and status[r["merged_into"]] in ("delivered", "dead"))
        for r in rows)


def _insight_calls(sandbox) -> list:
    return [r for r in sandbox.requests if r.path.startswith("/insightData/")]


async def _view(svc, n: int, product: str, **properties):
    event = pb.BehaviouralEvent(event_id=f"view-{n}", identity=pb.ContactIdentity(email=EMAIL),
                                product_viewed=pb.ProductViewed(product_id=product, sku=f"SKU-{product}"))
    event.product_viewed.properties.update({"n": n, **properties})
    event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
    response = await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event))
    return response.outbox_message_ids[-1]


async def _known_contact(svc, sandbox):
    """The contact exists in Dotdigital; the sandbox's request log starts afresh."""
    await svc.stub.SyncContact(contact_request(email=EMAIL, first_name="Vi"))
    await wait_for(lambda: _settled(svc), what="contact created")
    sandbox.reset_requests()


async def test_views_within_the_window_go_out_as_one_call_with_the_latest_view_per_product(
        service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox, view_coalesce_seconds=2.0, **FAST_IMPORTS)
    svc = await service_factory(settings)
    await _known_contact(svc, sandbox)

    ids = [await _view(svc, n, f"prod-{n % 10}") for n in range(30)]  # 30 views of 10 products
    assert len(set(ids)) == 30
    await wait_for(lambda: _settled(svc), timeout=20, what="views delivered")

    records = sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)
    assert {key: rec["properties"]["n"] for key, rec in records.items()} == {f"prod-{p}": 20 + p for p in range(10)}
    rows = {r["id"]: r for r in outbox_rows(svc)}
    assert all(rows[i]["status"] == "delivered" for i in ids)  # merged messages take their head's status
    heads = [i for i in ids if rows[i]["merged_into"] is None]
    assert 1 <= len(heads) <= 2 and all(rows[i]["merged_into"] in heads for i in ids if i not in heads)
    # One import (start + a poll or two) instead of 30 PUTs; a slow machine may split the views in two.
    calls = _insight_calls(sandbox)
    assert 2 <= len(calls) <= 8, [(c.method, c.path) for c in calls]
    imports = [c for c in calls if c.method == "PUT" and c.path == "/insightData/v3/import"]
    assert 1 <= len(imports) <= 2 and not [c for c in calls if "/insightData/v3/contacts/" in c.path]
    for c in imports:  # one record per product, its latest view
        keys = [rec["key"] for rec in c.json["records"]]
        assert len(keys) == len(set(keys)) and (len(imports) == 2 or len(keys) == 10)
    first = _payload(rows[ids[0]])
    assert len(first["records"]) == 10 and len(first["merged"]) >= 10


async def test_window_zero_keeps_one_call_per_view(service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox, view_coalesce_seconds=0, **FAST_IMPORTS)
    svc = await service_factory(settings)
    await _known_contact(svc, sandbox)
    for n in range(6):
        await _view(svc, n, f"prod-{n % 3}")
    await wait_for(lambda: _settled(svc), timeout=20, what="views delivered")

    puts = [c for c in _insight_calls(sandbox) if c.method == "PUT" and c.status != 404]  # 404: no collection yet
    assert [c.path.rsplit("/", 1)[-1] for c in puts] == [f"prod-{n % 3}" for n in range(6)]
    assert not any(r["status"] == "merged" for r in outbox_rows(svc))
    records = sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)
    assert {key: rec["properties"]["n"] for key, rec in records.items()} == {"prod-0": 3, "prod-1": 4, "prod-2": 5}


async def test_window_zero_merges_the_views_that_queued_behind_a_call_in_flight(service_factory, database_url, sandbox):
    """merge_queued_views (the default): no hold, the first view is sent at once; the views that arrive while its
    call is in flight queue behind it and go out together in one call, each product with its latest view."""
    settings = make_settings(database_url, sandbox, view_coalesce_seconds=0, merge_queued_views=True, **FAST_IMPORTS)
    svc = await service_factory(settings)
    await _known_contact(svc, sandbox)
    sandbox.set_latency(0.5)
    await _view(svc, 0, "prod-0")
    await wait_for(lambda: _insight_calls(sandbox) or any(r["status"] == "in_flight" for r in outbox_rows(svc)),
                   timeout=5, what="first view claimed")
    for n in range(1, 9):
        await _view(svc, n, f"prod-{n % 4}")
    await wait_for(lambda: _settled(svc), timeout=30, what="views delivered")

    calls = [c for c in _insight_calls(sandbox) if c.status != 404 and not c.path.startswith("/insightData/v3/import/")]
    assert len(calls) <= 3, [c.path for c in calls]  # the first view, then the eight queued ones in one call
    rows = outbox_rows(svc)
    assert sum(r["merged_into"] is not None for r in rows) >= 6
    records = sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)
    assert {key: rec["properties"]["n"] for key, rec in records.items()} == {"prod-0": 8, "prod-1": 5, "prod-2": 6,
                                                                            "prod-3": 7}


async def test_a_refused_record_settles_only_the_messages_that_carried_it(service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox, view_coalesce_seconds=1.0, **FAST_IMPORTS)
    svc = await service_factory(settings)
    await _known_contact(svc, sandbox)
    await _view(svc, 0, "prod-0", price=1.5)  # locks "price" as a number in the collection's schema
    await wait_for(lambda: _settled(svc), timeout=20, what="first view")

    bad_head = await _view(svc, 1, "prod-x", price="cheap")  # refused: a string where the schema has a number
    good = await _view(svc, 2, "prod-a", price=2.5)
    bad_again = await _view(svc, 3, "prod-x", price="dear")
    await wait_for(lambda: _settled(svc), timeout=20, what="merged views settled")

    rows = {r["id"]: r for r in outbox_rows(svc)}
    assert [m["id"] for m in _payload(rows[bad_head])["merged"]] == [good, bad_again]
    # the refused merged message is dead on its own account (an operator's retry sends its own record)
    assert rows[good]["merged_into"] == bad_head and rows[bad_again]["merged_into"] is None
    imports = [c for c in _insight_calls(sandbox) if c.method == "PUT" and c.path == "/insightData/v3/import"]
    assert len(imports) == 1 and {r["key"] for r in imports[0].json["records"]} == {"prod-x", "prod-a"}
    # Not all delivered: the messages of the refused record are dead with the import's reason, the other's
    # record is delivered.
    assert rows[good]["status"] == "delivered"
    for mid in (bad_head, bad_again):
        assert rows[mid]["status"] == "dead" and "JsonValueIncompatibleWithSchema" in rows[mid]["last_error"]
    records = sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)
    assert set(records) == {"prod-0", "prod-a"} and records["prod-a"]["properties"]["price"] == 2.5
    # The refused record is forgotten: the same view again is sent again (not taken for "unchanged").
    assert not svc.rows("SELECT 1 FROM field_state WHERE field = :f", f=f"insight.{BROWSE_COLLECTION}.prod-x")


async def test_views_are_not_merged_across_another_message_and_the_contact_order_holds(
        service_factory, database_url, sandbox):
    settings = make_settings(database_url, sandbox, view_coalesce_seconds=1.5, **FAST_IMPORTS)
    svc = await service_factory(settings)
    await _known_contact(svc, sandbox)

    first = [await _view(svc, 1, "prod-a"), await _view(svc, 2, "prod-b")]
    event = pb.BehaviouralEvent(event_id="custom-1", identity=pb.ContactIdentity(email=EMAIL),
                                custom_event=pb.CustomEvent(name="wishlist_added"))
    event.occurred_at.FromJsonString("2026-11-02T10:00:00Z")
    custom = (await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event))
              ).outbox_message_ids[-1]
    later = [await _view(svc, 3, "prod-a"), await _view(svc, 4, "prod-c")]
    await wait_for(lambda: _settled(svc), timeout=20, what="views and event delivered")

    rows = {r["id"]: r for r in outbox_rows(svc)}
    assert rows[first[1]]["merged_into"] == first[0] and rows[later[1]]["merged_into"] == later[0]
    assert rows[custom]["status"] == "delivered" and rows[custom]["merged_into"] is None
    assert {rows[i]["status"] for i in (first[0], later[0])} == {"delivered"}
    # In the contact's order: the first two views, then the custom event, then the later views.
    writes = [c for c in _insight_calls(sandbox) if c.method == "PUT" and c.status != 404]  # 404: no collection yet
    seen = [sorted(r["key"] for r in c.json["records"]) if c.path == "/insightData/v3/import"
            else c.path.split("/")[-2] for c in writes]
    assert seen == [["prod-a", "prod-b"], CUSTOM_EVENTS_COLLECTION, ["prod-a", "prod-c"]]
    records = sandbox.insight_records(BROWSE_COLLECTION, contact_email=EMAIL)
    assert records["prod-a"]["properties"]["n"] == 3


async def test_under_backlog_merged_views_of_many_contacts_share_one_import(service_factory, database_url, sandbox):
    """Bulk mode: each contact's views are merged into its head, and the heads go in one insight import; a
    refused record dead-letters only its own message."""
    import asyncio

    from ctdd.delivery.dispatcher import Dispatcher

    settings = make_settings(database_url, sandbox, view_coalesce_seconds=0.3, bulk_backlog_threshold=5,
                             bulk_min_batch=2, **FAST_IMPORTS)
    svc = await service_factory(settings)
    emails = [f"shopper{c}@example.com" for c in range(6)]
    for email in emails:
        await svc.stub.SyncContact(contact_request(email=email, first_name="S"))
    await wait_for(lambda: _settled(svc), timeout=20, what="contacts created")
    await svc.app.dispatcher.stop(drain_seconds=1)
    sandbox.reset_requests()

    refused = None
    for c, email in enumerate(emails):
        for v in range(3):
            event = pb.BehaviouralEvent(event_id=f"bulk-{c}-{v}", identity=pb.ContactIdentity(email=email),
                                        product_viewed=pb.ProductViewed(product_id=f"p{c}-{v}"))
            bad = (c, v) == (5, 1)
            event.product_viewed.properties.update({"price": "free" if bad else 1.5 + v})
            response = await svc.stub.TrackEvent(pb.TrackEventRequest(store_key="uk", behavioural_event=event))
            refused = response.outbox_message_ids[-1] if bad else refused
    await asyncio.sleep(0.5)  # all of them due: a backlog

    dispatcher = Dispatcher(svc.engine, settings, svc.app.clients, svc.app.hooks)
    dispatcher.start()
    try:
        await wait_for(lambda: _settled(svc), timeout=20, what="bulk views")
    finally:
        await dispatcher.stop(drain_seconds=1)

    imports = [c for c in _insight_calls(sandbox) if c.method == "PUT" and c.path == "/insightData/v3/import"]
    assert len(imports) == 1 and len(imports[0].json["records"]) == 18
    assert not [c for c in _insight_calls(sandbox) if "/insightData/v3/contacts/" in c.path]
    rows = outbox_rows(svc)
    views = [r for r in rows if r["kind"] == "insight.upsert"]
    # 6 heads, each with its 2 later views; the refused one left its head
    assert sum(r["merged_into"] is not None for r in views) == 11
    assert sum(len(_payload(r).get("merged") or ()) for r in views) == 12
    assert [r["id"] for r in views if r["status"] == "dead"] == [refused]
    assert "JsonValueIncompatibleWithSchema" in next(r for r in rows if r["id"] == refused)["last_error"]
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email=emails[5])) == {"p5-0", "p5-2"}
    assert set(sandbox.insight_records(BROWSE_COLLECTION, contact_email=emails[0])) == {"p0-0", "p0-1", "p0-2"}
