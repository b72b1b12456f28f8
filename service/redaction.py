"""Masking of personal data in text that goes into API errors and logs.

Shared by ``ctdd.commercetools.errors`` and ``ctdd.dotdigital.errors``: both mask email addresses the
same way and keep the same kind of excerpt of a response body (white space folded, masked, at most
``EXCERPT_LIMIT`` characters). ``replace_secrets`` is the commercetools side's scrubbing of its client
secret and token; which masking applies where (secrets, phone numbers) stays with each errors module.

The logging layer (``ctdd.logging_setup``) and what the service stores about failures (``last_error`` of
outbox and inbox rows, ``reason`` and ``violations`` of ``rejected_record``) use :func:`redact_text`: emails,
phone numbers (E.164 and other phone-like digit runs), bearer/basic credentials and ``key=value`` secrets,
every secret registered with :func:`register_secrets` (the configured passwords, client secrets, tokens),
SQLAlchemy's ``[parameters: ...]`` / ``[SQL: ...]`` dumps and PostgreSQL's ``DETAIL`` lines that echo row
values. :func:`escape_control` makes a value safe to write on one log line.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

__all__ = ["EMAIL_RE", "EXCERPT_LIMIT", "PHONE_RE", "as_text", "escape_control", "excerpt", "mask_emails",
           "mask_phones", "redact_text", "redact_value", "register_secrets", "replace_secrets", "strip_sql_dumps"]

#: Longest excerpt of a response body an error carries (the last character is "…" when cut).
EXCERPT_LIMIT = 500
#: an email address, also URL-encoded (``jane%40example.com`` in a logged request path)
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+'-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def mask_emails(text: str) -> str:
    """Replace every email address in ``text`` by ``<email>``."""
    return EMAIL_RE.sub("<email>", text)


def replace_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """Replace each secret of 4 characters or more in ``text`` by ``<redacted>`` (a 1-3 character
    "secret" would mangle ordinary text; empty and ``None`` ones are skipped)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text


def as_text(body: bytes | str) -> str:
    """A response body as text (UTF-8, undecodable bytes replaced)."""
    return body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body


def excerpt(text: str, mask: Callable[[str], str], limit: int = EXCERPT_LIMIT) -> str:
    """``text`` with white space folded, masked by ``mask``, and cut to ``limit`` characters ending in "…"."""
    text = mask(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- logs and stored failure texts -------------------------------------------------------------------------

#: ``+`` and 7-15 digits, or 10-15 digits, with at most two separators (space ( ) . -) between digits. Not
#: a digit run inside a word, a UUID, a version or a time ("2026-01-01 12:00" is not a phone number).
PHONE_RE = re.compile(
    r"(?<![\w+])\+\d(?:[ ().-]{0,2}\d){6,14}(?!\d)"
    r"|(?<![\w.+:/-])\(?\d(?:[ ().-]{0,2}\d){9,14}(?![\w:]|[.-]\d)"
    r"|%2[Bb]\d{7,15}(?!\d)"  # URL-encoded "+" (a mobile number in a request path)
)
_CREDENTIAL_RE = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_KEY_VALUE_SECRET_RE = re.compile(
    r"""(?i)\b((?:authorization|x-api-key|api[_-]?key|api[_-]?token|password|passwd|client[_-]?secret"""
    r"""|access[_-]?token|refresh[_-]?token|id[_-]?token|token|secret)["']?\s*[:=]\s*["']?)(?!<redacted>)"""
    r"""[^\s"',;&}\]]+"""
)
_SQL_BLOCK_RE = re.compile(
    r"\[SQL: .*?\](?=\s*\n\[(?:parameters: |SQL parameters hidden)|\s*\n\(Background on this error)", re.DOTALL)
_SQL_LINE_RE = re.compile(r"\[SQL: [^\n]*")
_SQL_PARAMETERS_RE = re.compile(r"\[parameters: [^\n]*")
#: PostgreSQL's error details echo the values of a row or a key
_PG_DETAIL_RE = re.compile(r"(Failing row contains |Key \([^)\n]*\)=)\([^\n]*")
_SECRETS: set[str] = set()
#: cheap tests that spare most log messages the regular expressions above (they run on every record)
_PHONE_HINT = re.compile(r"\d(?:[ ().-]{0,2}\d){6}|%2[Bb]\d")
_SECRET_WORDS = ("auth", "key", "token", "pass", "secret", "bearer", "basic")


def mask_phones(text: str) -> str:
    """Replace every phone-number-like digit run in ``text`` by ``<phone>``."""
    return PHONE_RE.sub("<phone>", text) if _PHONE_HINT.search(text) else text


def register_secrets(secrets: Iterable[str | None]) -> None:
    """Secrets :func:`redact_text` replaces wherever they appear (as given and URL-encoded); values of fewer
    than 8 characters are ignored: Dotdigital API user passwords have at least 8, and a shorter value (the
    sandbox's placeholder ``sandbox``) would mask ordinary words in every log line."""
    from urllib.parse import quote

    for secret in secrets:
        if secret and len(secret) >= 8:
            _SECRETS.update({secret, quote(secret, safe="")})


def strip_sql_dumps(text: str) -> str:
    """Remove SQLAlchemy's statement and parameter dumps and PostgreSQL's row echoes from an error text."""
    if "[SQL: " in text:
        text = _SQL_LINE_RE.sub("[SQL hidden]", _SQL_BLOCK_RE.sub("[SQL hidden]", text))
    if "[parameters: " in text:
        text = _SQL_PARAMETERS_RE.sub("[parameters hidden]", text)
    if "Failing row contains" in text or "Key (" in text:
        text = _PG_DETAIL_RE.sub(r"\1(<hidden>)", text)
    return text


def redact_text(text: str) -> str:
    """``text`` with SQL dumps stripped and secrets, credentials, emails and phone numbers masked."""
    text = strip_sql_dumps(text)
    if _SECRETS:
        # longest first: a secret containing another is replaced whole
        text = replace_secrets(text, sorted(_SECRETS, key=len, reverse=True))
    lowered = text.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        text = _KEY_VALUE_SECRET_RE.sub(r"\1<redacted>", _CREDENTIAL_RE.sub(r"\1\2<redacted>", text))
    if "@" in text or "%40" in text:
        text = mask_emails(text)
    return mask_phones(text)


def redact_value(value: Any) -> Any:
    """:func:`redact_text` applied to every string in a JSON-like value (a ``violations`` list ...)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


#: C0 and C1 control characters, DEL and the Unicode line and paragraph separators, escaped
_CONTROL_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029",
}


def escape_control(text: str) -> str:
    """``text`` on one line: newlines, other control characters and ANSI escape sequences (their ESC) are
    written as ``\\n``, ``\\r``, ``\\x1b`` ... so that no value can start a log line of its own."""
    return text if text.isprintable() else text.translate(_CONTROL_ESCAPES)
