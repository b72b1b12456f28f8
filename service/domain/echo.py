"""Bounded echoes of input (pure): what error replies, rejected records and logs may repeat of a value.

An error reply that quoted a 20,000-character store key exceeded gRPC's metadata limit (the caller saw
RESOURCE_EXHAUSTED), and the value was kept verbatim in ``rejected_record`` and the log. Every value echoed
goes through :func:`echo` (quoted, at most :data:`MAX_ECHO` characters) or :func:`clip` (a text capped at a
length, e.g. a reason stored in a column); both escape control characters (no forged log lines, no NUL,
which PostgreSQL refuses in text).
"""

from __future__ import annotations

__all__ = ["MAX_ECHO", "clip", "echo"]

#: characters of an input value an error message repeats
MAX_ECHO = 64


def _escape(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def clip(text: str, limit: int) -> str:
    """``text`` with control characters escaped, cut to at most ``limit`` characters (marked ``…``)."""
    if len(text) > limit:
        text = text[: limit * 2]  # escaping only lengthens: no need to look further
    text = _escape(text)
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """A value quoted for an error message: ``'abc'``, at most ``limit`` characters of it."""
    return "'" + clip(str(value), limit) + "'"
