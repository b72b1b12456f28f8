"""What the Dotdigital and the commercetools HTTP clients do alike.

Both clients (``ctdd.dotdigital.client``, ``ctdd.commercetools.client``) and their error modules share:

* checking a configured base URL (absolute http(s), no credentials, query or fragment; commercetools also
  wants no path) - :func:`check_base_url`;
* encoding a request body as compact UTF-8 JSON that refuses NaN and Infinity - :func:`encode_json_body`;
* reading a response body that may or may not be JSON - :func:`json_or_none`;
* telling a timeout from another transport failure, with a message that carries no secret -
  :func:`transport_failure`;
* the first part of an error's text, ``"<API> API error: METHOD path -> HTTP 409 Code - message"`` -
  :func:`error_summary`.

What each API masks (emails and phone numbers, or secrets) stays in its own ``errors`` module and in
``ctdd.redaction``.
"""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

__all__ = ["check_base_url", "encode_json_body", "error_summary", "json_or_none", "transport_failure"]


def check_base_url(url: str, *, allow_path: bool = True) -> None:
    """Raise ``ValueError`` unless ``url`` is an absolute http(s) URL without credentials, query or fragment
    (and, with ``allow_path=False``, without a path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL must be an absolute http(s) URL, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password or (not allow_path and parts.path.strip("/")):
        raise ValueError("base URL must not contain " + ("" if allow_path else "a path, ")
                         + "credentials, a query or a fragment")


def encode_json_body(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON. Done here rather than by httpx's ``json=`` so that NaN and Infinity,
    which are not JSON, are refused (``ValueError``) instead of sent."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:
        raise ValueError(f"request body is not valid JSON: {exc}") from None


def json_or_none(text: str) -> Any:
    """The decoded JSON value of ``text``, or ``None`` when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def transport_failure(exc: httpx.TransportError, scrub: Callable[[str], str], *,
                      what: str | None = None) -> tuple[str, str]:
    """``(code, message)`` for a request that got no response.

    ``code`` is ``TIMEOUT`` for any ``httpx.TimeoutException`` (the message then names only the exception
    type), else ``TRANSPORT_ERROR`` (the message adds the exception's text, passed through ``scrub``, which
    removes what must not be logged). ``what`` (e.g. ``"token request"``) prefixes the message:
    ``"token request timed out: ReadTimeout"``, ``"token request failed: ConnectError: ..."``.
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return "TIMEOUT", f"{what + ' ' if what else ''}timed out: {name}"
    return "TRANSPORT_ERROR", f"{what + ' failed: ' if what else ''}{name}: {scrub(str(exc))}"


def error_summary(api: str, *, method: str | None, path: str | None, status_code: int | None,
                  code: str | None, message: str | None) -> str:
    """``"<api> API error: METHOD path -> HTTP 400 code - message"``; the request part only when both
    ``method`` and ``path`` are given, ``"no response"`` without a status. ``path`` and ``message`` are put
    in as given: the caller masks them first."""
    text = f"{api} API error: "
    if method and path:
        text += f"{method} {path} -> "
    text += f"HTTP {status_code}" if status_code is not None else "no response"
    if code:
        text += f" {code}"
    if message:
        text += f" - {message}"
    return text
