"""The helpers both HTTP clients share (ctdd.http_common)."""

import httpx
import pytest

from ctdd.http_common import check_base_url, encode_json_body, error_summary, json_or_none, transport_failure


def test_base_url_checks():
    check_base_url("https://r1-api.dotdigital.com/some/prefix")
    check_base_url("http://127.0.0.1:8080/", allow_path=False)
    with pytest.raises(ValueError, match="absolute http"):
        check_base_url("ftp://x")
    with pytest.raises(ValueError, match="^base URL must not contain credentials, a query or a fragment$"):
        check_base_url("https://u:p@x")
    with pytest.raises(ValueError, match="^base URL must not contain a path, credentials, a query or a fragment$"):
        check_base_url("https://x/project", allow_path=False)


def test_json_body_is_compact_utf8_and_refuses_nan():
    assert encode_json_body({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()
    with pytest.raises(ValueError, match="request body is not valid JSON"):
        encode_json_body({"x": float("nan")})


def test_json_or_none():
    assert json_or_none('{"a": 1}') == {"a": 1}
    assert json_or_none("<html>") is None


def test_transport_failure_tells_timeouts_apart_and_scrubs():
    def scrub(text):
        return text.replace("s3cret", "<redacted>")

    assert transport_failure(httpx.ReadTimeout("s3cret"), scrub) == ("TIMEOUT", "timed out: ReadTimeout")
    assert transport_failure(httpx.ConnectError("to s3cret"), scrub) == (
        "TRANSPORT_ERROR", "ConnectError: to <redacted>")
    assert transport_failure(httpx.ConnectTimeout("x"), scrub, what="token request") == (
        "TIMEOUT", "token request timed out: ConnectTimeout")
    assert transport_failure(httpx.ReadError("x"), scrub, what="token request") == (
        "TRANSPORT_ERROR", "token request failed: ReadError: x")


def test_error_summary():
    assert error_summary("X", method="GET", path="/a", status_code=404, code="NotFound", message="gone") == \
        "X API error: GET /a -> HTTP 404 NotFound - gone"
    assert error_summary("X", method=None, path="/a", status_code=None, code=None, message="") == \
        "X API error: no response"
