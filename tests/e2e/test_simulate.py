"""``ctdd simulate``: the shipped example streams (examples/) replayed through the real pipeline on a virtual
clock, and the timelines they must give: every trigger decision at its time, the enrolment calls within
Dotdigital's allowance, every contact enrolled exactly once, and every body valid against Dotdigital's
published OpenAPI documents (when shared/specs/dotdigital is there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctdd.simulation import read_stream, simulate
from ctdd.simulation.stream import parse_time
from support.helpers import SHARED_DIR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "simulate.toml"
SPECS = SHARED_DIR / "specs" / "dotdigital"
HAVE_SPECS = (SPECS / "dotdigital-contacts-service.json").is_file()
needs_specs = pytest.mark.skipif(not HAVE_SPECS, reason="Dotdigital OpenAPI documents not found "
                                                        "(shared/specs/dotdigital or $CTDD_SHARED_DIR)")


def _run(name: str):
    """The example through the in-process API, checked against the OpenAPI documents when they are there."""
    return simulate(read_stream(EXAMPLES / f"{name}.jsonl"), config=CONFIG, openapi=SPECS if HAVE_SPECS else None)


@pytest.fixture(scope="module")
def results():
    return {}


@pytest.fixture
def result(results, request):
    name = request.param
    if name not in results:
        results[name] = _run(name)
    return results[name]


def _triggers(result) -> list[tuple[str, str, str, str]]:
    """(time, program and subject, status, reason) of every trigger entry, in order."""
    return [(e["at"], f"{e['program_kind']} {e['subject_id']} v{e['subject_version']}", e["status"], e["reason"])
            for e in (entry.as_json() for entry in result.timeline.entries) if e["kind"] == "trigger"]


def _calls(result, endpoint: str) -> list[dict]:
    return [e.as_json() for e in result.timeline.entries if e.kind == "dotdigital" and e.data["endpoint"] == endpoint]


ENROL = "POST /v2/programs/enrolments"


@pytest.mark.parametrize("result", ["abandoned-cart"], indirect=True)
def test_abandoned_cart_is_enrolled_once_an_hour_after_its_last_change(result):
    assert _triggers(result) == [
        ("2026-11-30T10:00:00Z", "abandoned_cart cart-ada v1", "pending", None),
        ("2026-11-30T10:10:00Z", "abandoned_cart cart-ada v1", "cancelled", "cart_changed"),
        ("2026-11-30T10:10:00Z", "abandoned_cart cart-ada v2", "pending", None),
        ("2026-11-30T10:15:00Z", "abandoned_cart cart-ada v2", "cancelled", "cart_changed"),
        ("2026-11-30T10:15:00Z", "abandoned_cart cart-ada v3", "pending", None),
        # due 60 minutes after the last change; a batch of one goes after batch_wait_seconds (300)
        ("2026-11-30T11:15:00Z", "abandoned_cart cart-ada v3", "enrolling", None),
        ("2026-11-30T11:20:00Z", "abandoned_cart cart-ada v3", "sent", None),
    ]
    (call,) = _calls(result, ENROL)
    assert (call["at"], call["program_id"], call["contacts"], call["status"]) == ("2026-11-30T11:20:00Z", 101, 1, 201)
    summary = result.summary
    assert summary["triggers"]["sent"] == 1 and summary["triggers"]["cancelled"] == {"cart_changed": 2}
    assert summary["program_entries"]["brand/101"]["contacts"] == summary["program_entries"]["brand/101"]["entries"] == 1
    # the cart's three versions went to CartInsight, the contact once
    assert summary["dotdigital_calls"]["PUT /insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}"] == 3
    assert summary["dotdigital_calls"]["PATCH /contacts/v3/{identifier}/{value}"] == 1


@pytest.mark.parametrize("result", ["cart-recovered"], indirect=True)
def test_cart_recovered_by_an_order_after_the_timer_fired_is_never_enrolled(result):
    assert _triggers(result) == [
        ("2026-11-30T09:00:00Z", "abandoned_cart cart-bob v1", "pending", None),
        ("2026-11-30T10:00:00Z", "abandoned_cart cart-bob v1", "enrolling", None),  # the timer fired
        ("2026-11-30T10:02:00Z", "abandoned_cart cart-bob v1", "cancelled", "cart_ordered"),  # before the call
        ("2026-11-30T10:02:00Z", "post_purchase_first order-bob-1 v0", "pending", None),
        ("2026-12-01T10:02:00Z", "post_purchase_first order-bob-1 v0", "enrolling", None),
        ("2026-12-01T10:07:00Z", "post_purchase_first order-bob-1 v0", "sent", None),
    ]
    assert [(c["at"], c["program_id"]) for c in _calls(result, ENROL)] == [("2026-12-01T10:07:00Z", 103)]
    assert "brand/101" not in result.summary["program_entries"]  # never entered the abandoned-cart program
    assert result.summary["program_entries"]["brand/103"]["contacts"] == 1


@pytest.mark.parametrize("result", ["guest-login"], indirect=True)
def test_guest_cart_merged_at_login_triggers_once_for_the_customer(result):
    assert _triggers(result) == [
        # the cart watcher (every 60 s) finds Cleo's phone cart
        ("2026-11-30T08:51:00Z", "abandoned_cart cart-cleo v1", "pending", None),
        # the anonymous cart (09:00) is nobody's yet, and once merged (09:05) it counts as Cleo's cart
        ("2026-11-30T09:06:00Z", "abandoned_cart cart-cleo v1", "cancelled", "cart_changed"),
        ("2026-11-30T09:06:00Z", "abandoned_cart cart-cleo v2", "pending", None),
        ("2026-11-30T10:05:00Z", "abandoned_cart cart-cleo v2", "enrolling", None),
        ("2026-11-30T10:10:00Z", "abandoned_cart cart-cleo v2", "sent", None),
    ]
    assert len(_calls(result, ENROL)) == 1
    assert result.summary["program_entries"]["brand/101"]["entries"] == 1
    assert result.summary["dotdigital_calls"]["PATCH /contacts/v3/{identifier}/{value}"] == 1  # one contact


@pytest.mark.parametrize("result", ["burst-1000"], indirect=True)
def test_burst_of_1000_carts_stays_within_the_enrolment_allowance_with_full_batches(result):
    summary = result.summary
    assert summary["triggers"]["total"] == summary["triggers"]["sent"] == 1000
    assert summary["triggers"]["contacts_sent_more_than_once"] == []
    calls = summary["enrolment_calls"]["brand"]  # both stores share the account
    assert calls["calls"] == 40 and calls["batch_sizes"] == [25] * 40 and calls["refused"] == {}
    assert calls["max_in_rolling_hour"] <= 20 and all(n <= 20 for n in calls["per_hour"].values())
    # every contact entered its store's program exactly once (the sandbox's record of entries)
    entries = summary["program_entries"]
    assert {k: (v["entries"], v["contacts"]) for k, v in entries.items()} == {"brand/101": (500, 500),
                                                                           "brand/102": (500, 500)}
    # each trigger was decided an hour after its cart's last change (at most one 60 s poll of the processor
    # later): "enrolling" while its batch fills or the allowance is used up, or "sent" at once in a full batch
    decided = {}
    for entry in result.timeline.entries:
        if entry.kind == "trigger" and entry.data["status"] != "pending":
            decided.setdefault(entry.data["trigger_id"], entry)
    assert len(decided) == 1000
    assert all(0 <= (e.at - parse_time(e.data["due_at"])).total_seconds() < 60 for e in decided.values())
    assert {e.data["status"] for e in decided.values()} == {"enrolling", "sent"}


@needs_specs
@pytest.mark.parametrize("result", ["abandoned-cart", "cart-recovered", "guest-login", "burst-1000"], indirect=True)
def test_every_body_the_examples_send_follows_the_openapi_documents(result):
    assert result.violations == []
    assert "POST /v2/programs/enrolments" not in result.unchecked_endpoints


def test_cli_prints_the_timeline_as_json():
    done = subprocess.run([sys.executable, "-m", "ctdd", "simulate", str(EXAMPLES / "abandoned-cart.jsonl"),
                           "--config", str(CONFIG), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    sent = [e for e in document["timeline"] if e["kind"] == "trigger" and e["status"] == "sent"]
    assert [(e["at"], e["subject_id"], e["subject_version"], e["program_id"]) for e in sent] == [
        ("2026-11-30T11:20:00Z", "cart-ada", 3, 101)]
    assert document["summary"]["enrolment_calls"]["brand"]["calls"] == 1
    assert document["missing_components"] == []


@needs_specs
def test_cli_lists_openapi_violations_and_exits_1(tmp_path):
    """A mapping that sends what the documents forbid: a list id beyond int32 (a typo in the configuration)."""
    config = CONFIG.read_text().replace("lists = { customers = 1, newsletter = 2 }",
                                        'lists = { customers = 3000000000, newsletter = 2 }\ncustomers_list = "customers"')
    assert "3000000000" in config
    (tmp_path / "brand.toml").write_text(config)
    done = subprocess.run([sys.executable, "-m", "ctdd", "simulate", str(EXAMPLES / "abandoned-cart.jsonl"),
                           "--config", str(tmp_path / "brand.toml"), "--openapi", str(SPECS), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    violations = json.loads(done.stdout)["openapi_violations"]
    assert [(v["endpoint"], v["where"], v["message"]) for v in violations] == [
        ("PATCH /contacts/v3/{identifier}/{value}", "$.lists[0]", "out of range for int32")]
    assert violations[0]["document"] == "dotdigital-contacts-service.json"


@needs_specs
def test_a_plugin_mapping_with_a_wrong_type_is_reported():
    from ctdd import hookimpl

    class WrongType:
        @hookimpl
        def ctdd_enrich_contact(self, ctx, contact, mapped):
            return {"channelProperties.email.emailType": 1}  # an enum string in the documents

    # (until: Dotdigital refuses the contact, so its trigger would wait a day for it before it is skipped)
    result = simulate(read_stream(EXAMPLES / "abandoned-cart.jsonl"), config=CONFIG, openapi=SPECS,
                      plugins=(WrongType(),), until="+10m")
    assert [(v["endpoint"], v["where"]) for v in result.violations] == [
        ("PATCH /contacts/v3/{identifier}/{value}", "$.channelProperties.email.emailType")] * 3  # 3 cart versions
    text = result.as_text()
    assert "OpenAPI violations: 3" in text and "$.channelProperties.email.emailType: expected string" in text


def test_cli_refuses_a_bad_stream_with_the_line(tmp_path):
    stream = tmp_path / "bad.jsonl"
    stream.write_text('{"at": "2026-11-30T10:00:00Z", "store": "uk", "cart": {"id": "c-1"}}\n'
                      '{"at": "+5x", "store": "uk", "cart": {"id": "c-1"}}\n')
    done = subprocess.run([sys.executable, "-m", "ctdd", "simulate", str(stream)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "line 2" in done.stderr and "duration" in done.stderr


def test_cli_refuses_a_stream_naming_an_unknown_store(tmp_path):
    stream = tmp_path / "unknown-store.jsonl"
    stream.write_text('{"at": "2026-11-30T10:00:00Z", "store": "default", "cart": {"id": "c-1"}}\n'
                      '{"at": "+5m", "store": "nowhere", "cart": {"id": "c-2"}}\n')
    done = subprocess.run([sys.executable, "-m", "ctdd", "simulate", str(stream)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "line 2: unknown store 'nowhere'" in done.stderr and "default" in done.stderr
    assert done.stdout == ""


def test_a_cart_line_for_a_store_without_commercetools_client_is_refused(tmp_path):
    from ctdd.simulation import SimulationError

    config = tmp_path / "plain.toml"
    config.write_text('[accounts.sandbox]\n\n[stores.plain]\naccount = "sandbox"\n')
    stream = tmp_path / "plain.jsonl"
    stream.write_text('{"at": "2026-11-30T10:00:00Z", "store": "plain", "cart": {"id": "c-1"}}\n')
    with pytest.raises(SimulationError, match=r"line 1: store 'plain' has no commercetools client"):
        simulate(read_stream(stream), config=config)


def test_the_docs_stream_example_runs_and_a_refused_input_is_listed_with_exit_1(tmp_path):
    """docs/simulate.md's example stream as written: its behavioural event has no occurredAt (stamped from the
    virtual clock, as the checks read it, not the wall clock); a line the service refuses is listed with its
    field violations and makes the exit status 1."""
    text = (ROOT / "docs" / "simulate.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    stream = tmp_path / "doc.jsonl"
    stream.write_text(example)
    done = subprocess.run([sys.executable, "-m", "ctdd", "simulate", str(stream), "--config", str(CONFIG), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    document = json.loads(done.stdout)
    assert document["summary"]["refused_inputs"] == []
    events = [e for e in document["timeline"] if e["kind"] == "event"]
    assert [e.get("outcome", "applied") for e in events] == ["applied", "applied", "applied"]
    assert any(e["kind"] == "trigger" and e["program_kind"] == "post_purchase_first" and e["status"] == "sent"
               for e in document["timeline"])

    stream.write_text(example + json.dumps({"at": "+1m", "store": "uk", "track_event": {"behaviouralEvent": {
        "eventId": "v-2", "identity": {"email": "ada@example.com"}, "productViewed": {"productId": "  "}}}}) + "\n")
    refused = subprocess.run([sys.executable, "-m", "ctdd", "simulate", str(stream), "--config", str(CONFIG)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert "REFUSED INPUTS: 1" in refused.stdout
    assert "line 4: INVALID_ARGUMENT: invalid TrackEventRequest (behavioural_event.product_viewed.product_id: " \
           "required (not blank))" in refused.stdout
