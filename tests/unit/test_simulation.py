"""The pieces of ``ctdd simulate`` that need no service: the stream format, the virtual clock, the OpenAPI
checker and the timeline's arithmetic (the whole simulator runs in tests/e2e/test_simulate.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ctdd.clock import VirtualClock, now, use_clock
from ctdd.db.engine import utcnow
from ctdd.simulation.stream import StreamError, parse_duration, parse_lines
from ctdd.simulation.timeline import endpoint_of, max_in_rolling_hour
from ctdd.testing.openapi import OpenApiDocuments

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)


# -- the virtual clock ----------------------------------------------------------------------------------------
def test_use_clock_makes_the_service_clock_virtual_and_gives_it_back():
    clock = VirtualClock(T0)
    with use_clock(clock):
        assert utcnow() == now() == T0
        clock.advance(timedelta(minutes=90))
        assert utcnow() == T0 + timedelta(minutes=90)
        clock.advance(datetime(2026, 12, 1, tzinfo=timezone.utc))
        assert utcnow() == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert abs(utcnow() - datetime.now(timezone.utc)) < timedelta(seconds=5)


def test_virtual_clock_never_goes_back_and_needs_aware_times():
    clock = VirtualClock(T0)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(T0 - timedelta(seconds=1))
    with pytest.raises(ValueError):
        VirtualClock(datetime(2026, 11, 30))
    assert clock.advance(T0) == T0  # standing still is fine


# -- the stream ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                           ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "m", "1h 30m", "-5m", "30m1"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def _line(**fields) -> str:
    return json.dumps({"store": "uk", "cart": {"id": "c-1"}, **fields})


def test_stream_lines_with_offsets_comments_and_kinds():
    events = parse_lines([
        "# a comment", "",
        _line(at="2026-11-30T10:00:00Z", label="first"),
        _line(at="+90m"),
        json.dumps({"at": "+1d", "track_event": {"storeKey": "eu", "behaviouralEvent": {"eventId": "e"}}}),
        json.dumps({"at": "2026-12-01T13:30:00+01:00", "store": "uk",
                    "commercetools": {"action": "remove", "resource": "carts", "id": "c-1"}}),
    ])
    assert [(e.at, e.kind, e.store, e.line) for e in events] == [
        (T0, "cart", "uk", 3),
        (T0 + timedelta(minutes=90), "cart", "uk", 4),
        (T0 + timedelta(days=1, minutes=90), "track_event", "eu", 5),  # the store from the request
        (datetime(2026, 12, 1, 12, 30, tzinfo=timezone.utc), "commercetools", "uk", 6),
    ]
    assert events[0].describe() == "first"
    assert events[1].describe() == "cart c-1 v1 Active (0 items, anonymous) in commercetools"


@pytest.mark.parametrize("lines, message", [
    ([_line(at="+5m")], "line 1: at: the first line needs an absolute time"),
    ([_line(at="2026-11-30T10:00:00")], "needs an offset"),
    ([_line(at="2026-11-30T10:00:00Z"), _line(at="2026-11-30T09:00:00Z")], "line 2: at .* is before the previous"),
    ([json.dumps({"at": "2026-11-30T10:00:00Z", "store": "uk"})], "needs exactly one of"),
    ([json.dumps({"at": "2026-11-30T10:00:00Z", "store": "uk", "cart": {"id": "c"}, "sync_contact": {}})],
     "needs exactly one of"),
    ([_line(at="2026-11-30T10:00:00Z", colour="red")], "unknown key.*colour"),
    ([json.dumps({"at": "2026-11-30T10:00:00Z", "cart": {"id": "c"}})], "'store'"),
    ([json.dumps({"at": "2026-11-30T10:00:00Z", "store": "uk", "commercetools": {"action": "nuke"}})], "action"),
    (["{not json"], "line 1: not JSON"),
])
def test_bad_stream_lines_name_the_line(lines, message):
    with pytest.raises(StreamError, match=message):
        parse_lines(lines)


# -- the OpenAPI checker -------------------------------------------------------------------------------------
OPENAPI3 = {
    "openapi": "3.0.3",
    "paths": {
        "/v2/programs/enrolments": {"post": {"requestBody": {"$ref": "#/components/requestBodies/Enrol"}}},
        "/v2/programs/enrolments/{id}": {"get": {}},
        "/contacts/v3/{identifier}/{value}": {"patch": {"requestBody": {"content": {"application/json": {
            "schema": {"type": "object", "properties": {"lists": {"type": "array", "items": {
                "type": "integer", "format": "int32"}}}}}}}}},
        "/contacts/v3/import": {"put": {"requestBody": {"content": {"application/json": {
            "schema": {"type": "array", "maxItems": 2}}}}}},
        "/insightData/v3/account/{collectionName}/{recordId}": {"put": {"requestBody": {"content": {
            "application/json": {"schema": {"type": "string", "format": "json"}}}}}},
    },
    "components": {
        "requestBodies": {"Enrol": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/E"}}}}},
        "schemas": {"E": {"type": "object", "required": ["programId"], "additionalProperties": False,
                          "properties": {"programId": {"type": "integer"},
                                         "contacts": {"type": "array", "maxItems": 25, "items": {"type": "integer"}}}}},
    },
}
SWAGGER2 = {
    "swagger": "2.0",
    "basePath": "/v2",
    "paths": {"/address-books/{id}/contacts": {"post": {"parameters": [
        {"in": "path", "name": "id", "type": "integer"},
        {"in": "body", "name": "contact", "schema": {"$ref": "#/definitions/Contact"}}]}}},
    "definitions": {"Contact": {"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}}},
}


@pytest.fixture
def documents(tmp_path):
    (tmp_path / "v3.json").write_text(json.dumps(OPENAPI3))
    (tmp_path / "v2.yaml").write_text(json.dumps(SWAGGER2))  # JSON is YAML
    (tmp_path / "README.md").write_text("# not a document")
    return OpenApiDocuments.from_directory(tmp_path)


def _wrong(documents, method, path, body):
    violations, known = documents.check(method, path, body)
    assert known
    return [(v.where, v.message, v.document, v.template) for v in violations]


def test_bodies_are_checked_against_the_operation_of_their_method_and_path(documents):
    assert _wrong(documents, "POST", "/v2/programs/enrolments", {"programId": 7, "contacts": [1, 2]}) == []
    assert _wrong(documents, "POST", "/v2/programs/enrolments", {"programId": "7", "contacts": list(range(26))}) == [
        ("$.programId", "expected integer, got str", "v3.json", "/v2/programs/enrolments"),
        ("$.contacts", "more than 25 items", "v3.json", "/v2/programs/enrolments"),
    ]
    assert _wrong(documents, "POST", "/v2/programs/enrolments", {"contacts": [1], "extra": 1}) == [
        ("$", "missing required 'programId'", "v3.json", "/v2/programs/enrolments"),
        ("$", "unexpected property 'extra'", "v3.json", "/v2/programs/enrolments"),
    ]
    # an email in the path, percent-encoded; int32 range
    assert _wrong(documents, "PATCH", "/contacts/v3/email/jane%40example.com", {"lists": [2**31]}) == [
        ("$.lists[0]", "out of range for int32", "v3.json", "/contacts/v3/{identifier}/{value}")]
    # the literal path wins over the template with the same number of segments
    assert _wrong(documents, "PUT", "/contacts/v3/import", [1, 2, 3])[0][3] == "/contacts/v3/import"
    # a record body the document calls "a string of JSON" is any JSON document
    assert _wrong(documents, "PUT", "/insightData/v3/account/Catalog/sku-1", {"any": ["shape"]}) == []


def test_swagger2_body_parameters_and_base_path(documents):
    assert _wrong(documents, "POST", "/v2/address-books/3/contacts", {"email": "a@example.com"}) == []
    assert _wrong(documents, "POST", "/v2/address-books/3/contacts", {}) == [
        ("$", "missing required 'email'", "v2.yaml", "/v2/address-books/{id}/contacts")]


def test_unknown_operations_and_bodiless_operations(documents):
    assert documents.check("DELETE", "/v2/programs/enrolments", {}) == ([], False)
    assert documents.check("GET", "/v2/programs/enrolments/abc", None) == ([], True)


def test_a_folder_without_documents_is_refused(tmp_path):
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="no OpenAPI document"):
        OpenApiDocuments.from_directory(tmp_path)


# -- the timeline's arithmetic -------------------------------------------------------------------------------
def test_calls_in_a_rolling_hour():
    times = [T0 + timedelta(minutes=m) for m in (0, 10, 59, 60, 61, 130)]
    assert max_in_rolling_hour(times) == 4  # 10, 59, 60, 61; the call at 0 is an hour before the one at 60
    assert max_in_rolling_hour([]) == 0


@pytest.mark.parametrize("method, path, endpoint", [
    ("PATCH", "/contacts/v3/email/jane%40example.com", "PATCH /contacts/v3/{identifier}/{value}"),
    ("PUT", "/contacts/v3/import", "PUT /contacts/v3/import"),
    ("GET", "/contacts/v3/import/5f0c", "GET /contacts/v3/import/{importId}"),
    ("PUT", "/insightData/v3/contacts/contactId/1/CartInsight/c-1",
     "PUT /insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}"),
    ("GET", "/v2/programs/enrolments/3f2a/report-faults", "GET /v2/programs/enrolments/{id}/report-faults"),
    ("POST", "/v2/programs/enrolments", "POST /v2/programs/enrolments"),
])
def test_endpoints(method, path, endpoint):
    assert endpoint_of(method, path) == endpoint
