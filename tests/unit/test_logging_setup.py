"""The logging layer (ctdd.logging_setup) and the masking it uses (ctdd.redaction): redaction of messages and
tracebacks, one line per record, JSON lines with trace ids."""

from __future__ import annotations

import io
import json
import logging

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from ctdd.logging_setup import configure_logging, settings_secrets
from ctdd.redaction import escape_control, redact_text, register_secrets, strip_sql_dumps

EMAIL = "jane.doe@example.com"
PHONE = "+447700900123"


@pytest.fixture
def captured():
    """The service's logging set-up writing to a buffer (text format); the handler is removed afterwards."""
    root = logging.getLogger()
    level = root.level
    streams: list[tuple[logging.Handler, io.StringIO]] = []

    def start(log_format: str = "text") -> io.StringIO:
        buf = io.StringIO()
        handler = configure_logging("INFO", log_format, stream=buf)
        assert handler is not None
        streams.append((handler, buf))
        return buf

    yield start
    for handler, _ in streams:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("text, masked", [
    ("call +44 7700 900123 now", "call <phone> now"),
    (f"to {PHONE}.", "to <phone>."),
    ("landline (020) 7946 0018", "landline <phone>"),
    ("us 555-123-4567", "us <phone>"),
    (f"contact {EMAIL} failed", "contact <email> failed"),
    ("Authorization: Bearer eyJhbGciOi.x-y_z", "Authorization: <redacted> <redacted>"),
    ('{"client_secret": "s3cr3t!", "x": 1}', '{"client_secret": "<redacted>", "x": 1}'),
    ("password=hunter22&user=a", "password=<redacted>&user=a"),
])
def test_redact_text_masks_personal_data_and_credentials(text, masked):
    assert redact_text(text) == masked


@pytest.mark.parametrize("text", [
    "at 2026-01-01 12:00:00.123456", "uuid 550e8400-e29b-41d4-a716-446655440000", "ip 203.0.113.5",
    "outbox message 1234 (attempt 3)", "version 1.2.3", "at 0x7f1234567890", "line 1234567",
    "customer/c-1 v3",
])
def test_redact_text_keeps_ids_times_and_references(text):
    assert redact_text(text) == text


def test_registered_secrets_are_masked_also_url_encoded():
    register_secrets(["Pa ss/word-123", "ab"])  # a 2-character "secret" is ignored
    assert redact_text("pw Pa ss/word-123 or Pa%20ss%2Fword-123 ab") == "pw <redacted> or <redacted> ab"


def test_sqlalchemy_and_postgresql_dumps_are_stripped():
    text = (f"(psycopg.errors.NotNullViolation) null value\nDETAIL:  Failing row contains (1, {EMAIL}, x).\n"
            "[SQL: INSERT INTO outbox_message (payload)\nVALUES (%(payload)s)]\n"
            "[parameters: {'payload': '{\"firstName\": \"Jane\"}'}]\n"
            "(Background on this error at: https://sqlalche.me/e/20/gkpj)")
    stripped = strip_sql_dumps(text)
    assert "Jane" not in stripped and EMAIL not in stripped and "payload" not in stripped
    assert "[SQL hidden]" in stripped and "[parameters hidden]" in stripped
    assert "Failing row contains (<hidden>)" in stripped
    assert stripped.endswith("(Background on this error at: https://sqlalche.me/e/20/gkpj)")
    assert strip_sql_dumps("Key (dedupe_key)=(ev-1) already exists.") == "Key (dedupe_key)=(<hidden>)"


def test_escape_control_keeps_everything_on_one_line():
    assert escape_control("a\nb\r\tc\x1b[31md\x85e\u2028f\x00") == "a\\nb\\r\\tc\\x1b[31md\\x85e\\u2028f\\x00"


def test_a_forged_line_in_a_logged_value_stays_on_its_record_line(captured):
    buf = captured()
    key = "uk\n2026-01-01 00:00:00,000 CRITICAL ctdd: database corrupted \x1b[31m"
    logging.getLogger("ctdd.test").warning("rejected request for store %s", key)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("rejected request for store uk\\n2026-01-01 00:00:00,000 CRITICAL ctdd: database "
                             "corrupted \\x1b[31m")


def test_tracebacks_keep_their_lines_but_exception_messages_are_escaped_and_redacted(captured):
    buf = captured()
    try:
        raise ValueError(f"bad value for {EMAIL}\n2026-01-01 CRITICAL forged {PHONE}")
    except ValueError:
        logging.getLogger("ctdd.test").exception("failed for %s", EMAIL)
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("ERROR ctdd.test: failed for <email>")
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith('  File "') for line in lines)
    assert lines[-1] == "ValueError: bad value for <email>\\n2026-01-01 CRITICAL forged <phone>"
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert EMAIL not in buf.getvalue() and PHONE not in buf.getvalue()


def test_messages_inside_exception_groups_are_escaped_too(captured):
    """A sub-exception of an ExceptionGroup (however deep, and a note on one) cannot start a log line of its
    own: the traceback prints it behind the group's margin, and it is escaped there as well."""
    buf = captured()
    try:
        try:
            raise ExceptionGroup("batch failed", [
                ValueError(f"bad {EMAIL}\n2026-01-01 00:00:00,000 CRITICAL ctdd: forged one"),
                ExceptionGroup("inner\n2026-01-01 CRITICAL forged group", [
                    KeyError("k"), RuntimeError("deep\r\n2026-01-01 CRITICAL forged deep")]),
            ])
        except ExceptionGroup as group:
            group.exceptions[0].add_note(f"note\n2026-01-01 CRITICAL forged note {PHONE}")
            raise RuntimeError("outer") from group
    except RuntimeError:
        logging.getLogger("ctdd.test").exception("failed")
    lines = buf.getvalue().splitlines()
    assert not any("2026-01-01" in line and "forged" in line and "\\n" not in line for line in lines), lines
    assert not any(line.lstrip(" |").startswith("2026-01-01") for line in lines)
    assert any(line.endswith("| ValueError: bad <email>\\n2026-01-01 00:00:00,000 CRITICAL ctdd: forged one")
               for line in lines)
    assert any(line.endswith("| RuntimeError: deep\\r\\n2026-01-01 CRITICAL forged deep") for line in lines)
    assert any(line.endswith("| note\\n2026-01-01 CRITICAL forged note <phone>") for line in lines)
    assert any("ExceptionGroup: inner\\n2026-01-01 CRITICAL forged group (2 sub-exceptions)" in line
               for line in lines)
    assert lines[-1] == "RuntimeError: outer"
    assert EMAIL not in buf.getvalue() and PHONE not in buf.getvalue()


def test_a_database_error_logged_with_its_traceback_carries_no_parameters(captured, tmp_path):
    from ctdd.db.engine import create_db_engine

    buf = captured()
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    raw = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")  # without hide_parameters: the logging layer strips
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE)"))
        conn.execute(sa.text("INSERT INTO t (email) VALUES (:e)"), {"e": EMAIL})
    for eng in (engine, raw):
        try:
            with eng.begin() as conn:
                conn.execute(sa.text("INSERT INTO t (email) VALUES (:e)"), {"e": EMAIL})
        except sa.exc.IntegrityError as exc:
            logging.getLogger("ctdd.test").error("insert failed: %s", exc, exc_info=True)
    engine.dispose()
    raw.dispose()
    out = buf.getvalue()
    assert out.count("insert failed") == 2 and "IntegrityError" in out
    assert EMAIL not in out and "[parameters: " not in out


def test_json_lines_parse_and_carry_trace_ids_inside_a_span(captured):
    buf = captured("json")
    log = logging.getLogger("ctdd.test")
    log.info("outside a span\nsecond line")
    tracer = TracerProvider().get_tracer("test")  # a local provider: the span is current without a global one
    with tracer.start_as_current_span("work") as span:
        try:
            raise RuntimeError(f"boom for {EMAIL}")
        except RuntimeError:
            log.exception("inside a span for %s", PHONE)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    outside, inside = (json.loads(line) for line in lines)
    assert outside["message"] == "outside a span\\nsecond line" and outside["level"] == "INFO"
    assert outside["logger"] == "ctdd.test" and outside["time"].endswith("Z")
    assert "trace_id" not in outside and "exception" not in outside
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["message"] == "inside a span for <phone>" and inside["level"] == "ERROR"
    assert inside["exception"].startswith("Traceback") and "RuntimeError: boom for <email>" in inside["exception"]


def test_settings_secrets_finds_every_secret_of_the_configuration():
    from ctdd.config import settings_from_mapping

    settings = settings_from_mapping(
        {"accounts": {"main": {"api_user": "u@apiconnector.com"}},
         "commercetools": {"ct": {"project_key": "p", "client_id": "cid", "client_secret_env": "CT"}},
         "stores": {"uk": {"account": "main", "commercetools": "ct"}}},
        env={"CTDD_ACCOUNT_MAIN_PASSWORD": "dd-password-1", "CT": "ct-secret-2"})
    assert {"dd-password-1", "ct-secret-2"} <= set(settings_secrets(settings))


def test_credentials_are_masked_but_words_after_bearer_are_not():
    from ctdd.redaction import redact_text

    assert "s3cr3t-t0ken-value" not in redact_text("authorization: Bearer s3cr3t-t0ken-value")
    assert redact_text("refused: missing bearer token") == "refused: missing bearer token"
