"""Merging product views into one message (ctdd.delivery.view_merge): the latest view per product wins, each
record knows the messages it carries, and the caps stop the run."""

from __future__ import annotations

from ctdd.delivery.view_merge import (Follower, is_multi_record, is_view_message, merge_views, record_failures,
                                      view_records)


def _view(product: str, n: int) -> dict:
    return {"collection": "ProductViews", "record_id": product, "record": {"productId": product, "n": n},
            "scope": "contact", "collection_type": "custom"}


def test_latest_view_per_product_wins_and_records_know_their_messages():
    payload, taken = merge_views(_view("a", 1), 10, [Follower(11, _view("b", 2)), Follower(12, _view("a", 3))])
    assert taken == [11, 12]
    records = view_records(payload, 10)
    assert [(r.record_id, r.record["n"], r.message_ids) for r in records] == [("a", 3, (10, 12)), ("b", 2, (11,))]
    assert is_multi_record("insight.upsert", payload) and not is_multi_record("insight.upsert", _view("a", 1))
    failures = record_failures(records, {"a": (400, "refused")})
    assert failures == {10: (400, "refused"), 12: (400, "refused")}


def test_caps_stop_the_run_and_only_product_views_are_merged():
    followers = [Follower(100 + i, _view(f"p{i}", i)) for i in range(5)]
    payload, taken = merge_views(_view("p-head", 0), 1, followers, max_records=3)
    assert taken == [100, 101] and len(payload["records"]) == 3
    # a repeated product needs no new record, but the count of merged messages is capped too
    payload, taken = merge_views({**_view("a", 0), "merged": [{"id": 5}]}, 1,
                                 [Follower(6, _view("a", 1)), Follower(7, _view("a", 2))], max_merged=2)
    assert taken == [6] and view_records(payload, 1)[0].record["n"] == 1
    assert is_view_message("insight.upsert", _view("a", 0))
    assert not is_view_message("insight.upsert", {**_view("a", 0), "collection": "Orders"})
    assert not is_view_message("contact.upsert", _view("a", 0))
