"""The service's logging: one stderr handler, every record redacted and kept on one line, text or JSON.

``configure_logging`` (called by ``ctdd`` for every command, before the settings are read) installs the
handler; ``apply_settings`` then applies ``[service] log_level`` and ``log_format`` and registers the
configured secrets (every ``SecretStr`` of the settings: API user passwords, client secrets, tokens) for
redaction.

Every handler of the root logger gets :class:`RedactingFilter`, which rewrites each record in place before
any handler formats it:

- the message (format string and arguments) is redacted (``ctdd.redaction.redact_text``: emails, phone
  numbers, credentials, registered secrets, SQLAlchemy parameter dumps) and its control characters are
  escaped (``\\n``, ``\\x1b`` ...), so that a value sent by a caller cannot start a log line of its own;
- the exception text (traceback) is redacted too; the messages and notes of the exceptions in it (causes,
  contexts and the sub-exceptions of exception groups, behind the group's ``|`` margin) are escaped, while
  the traceback's own lines stay on their lines;
- the current OpenTelemetry trace and span ids are kept on the record (``trace_id``, ``span_id``).

``log_format = "json"`` writes one JSON object per line: ``time``, ``level``, ``logger``, ``message``,
``exception`` (when there is one) and ``trace_id`` / ``span_id`` (when a span is current).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import datetime, timezone
from typing import Any, Iterable, TextIO

from opentelemetry import trace
from pydantic import BaseModel, SecretStr

from ctdd.redaction import escape_control, redact_text, register_secrets

__all__ = ["LOG_FORMATS", "JsonFormatter", "RedactingFilter", "TEXT_FORMAT", "apply_settings", "configure_logging",
           "settings_secrets", "use_format"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CLEAN = "_ctdd_redacted"


def _exception_chain(exc: BaseException | None) -> Iterable[BaseException]:
    """Every exception a traceback of ``exc`` shows: its cause or context chain and, for an exception group,
    each sub-exception (and their chains), however deep."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        if isinstance(link, BaseExceptionGroup):
            pending.extend(link.exceptions)
        pending.append(link.__cause__ if link.__cause__ is not None else (
            None if link.__suppress_context__ else link.__context__))


def _as_printed(message: str) -> re.Pattern[str]:
    """``message`` as a traceback prints it: inside an exception group, each of its lines after the first
    carries the group's margin (``    | ``)."""
    return re.compile(r"(?: *\| )?".join(re.escape(part) for part in message.splitlines(keepends=True)))


def _printed_texts(exc: BaseException) -> Iterable[str]:
    try:
        yield str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break logging
        pass
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        yield from (note for note in notes if isinstance(note, str))


def redact_exception_text(text: str, exc: BaseException | None) -> str:
    """A formatted traceback with each exception message (and note) in it on one line, then redacted."""
    for link in _exception_chain(exc):
        for message in _printed_texts(link):
            if message and escape_control(message) != message:
                clean = escape_control(redact_text(message))
                text = _as_printed(message).sub(lambda _: clean, text)
    # what remains is our own traceback text: keep its newlines, escape every other control character
    return "\n".join(escape_control(line) for line in redact_text(text).split("\n"))


class RedactingFilter(logging.Filter):
    """Redacts and escapes a record in place (once, whichever handler sees it first); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _CLEAN, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log what there is
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = escape_control(redact_text(message)), None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact_exception_text(text, record.exc_info[1])
        elif record.exc_text:
            record.exc_text = redact_exception_text(record.exc_text, None)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        setattr(record, _CLEAN, True)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (control characters are escaped by the JSON encoding)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for key in ("trace_id", "span_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        return json.dumps(entry, ensure_ascii=True, default=str)


def _formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", log_format: str = "text", *,
                      stream: TextIO | None = None) -> logging.Handler | None:
    """Log to ``stream`` (stderr) at ``level`` in ``log_format``; every root handler gets the redaction.
    Without ``stream``, a stderr handler is added only when the root logger has none (as
    ``logging.basicConfig`` does). Returns the handler added, if any."""
    root = logging.getLogger()
    handler = None
    if not root.handlers or stream is not None:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    use_format(log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines would repeat URLs with emails
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return handler


def use_format(log_format: str) -> None:
    """Give every handler of the root logger the redaction and the ``log_format`` formatter."""
    formatter = _formatter(log_format)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        handler.setFormatter(formatter)


def settings_secrets(model: Any) -> list[str]:
    """The value of every ``SecretStr`` in a settings model (nested tables and named tables included)."""
    found: list[str] = []
    if isinstance(model, SecretStr):
        found.append(model.get_secret_value())
    elif isinstance(model, BaseModel):
        for name in type(model).model_fields:
            found += settings_secrets(getattr(model, name, None))
    elif isinstance(model, dict):
        for value in model.values():
            found += settings_secrets(value)
    elif isinstance(model, (list, tuple, frozenset, set)):
        for value in model:
            found += settings_secrets(value)
    return found


def apply_settings(settings: Any) -> None:
    """Apply ``[service] log_level`` and ``log_format`` and register the settings' secrets for redaction."""
    logging.getLogger().setLevel(settings.log_level)
    use_format(getattr(settings.service, "log_format", "text"))
    register_secrets(settings_secrets(settings))
