"""commercetools API errors and their classification.

commercetools answers every failed HTTP API call with one error envelope (commercetools HTTP API docs:
Errors; the API's RAML type ``ErrorResponse``)::

    {"statusCode": 409,
     "message": "Object 3cdc... has a different version than expected. Expected: 1 - Actual: 2.",
     "errors": [{"code": "ConcurrentModification", "message": "...", "currentVersion": 2}]}

The OAuth endpoint uses the same envelope and adds the OAuth 2 fields ``error`` and
``error_description`` (e.g. ``invalid_client``, ``invalid_token``, ``insufficient_scope``).

``error_from_response`` turns a non-2xx response into one of:

* ``CommercetoolsConflict`` - HTTP 409 (``ConcurrentModification``, optimistic locking);
  carries ``current_version`` when the API sends it. Re-read and retry.
* ``CommercetoolsAuthError`` - 401 (after one token refresh), 403 (e.g. ``insufficient_scope``), and any
  rejection of the client credentials by the token endpoint. Not retryable.
* ``CommercetoolsError`` - everything else; ``retryable`` for 5xx (500, 502, 503, 504 ...) and 429
  (the docs' "retry 502/503/504 with exponential backoff").
* ``CommercetoolsTransportError`` - no response at all (timeout, connection refused/reset). Retryable.

Errors never carry the client secret or a bearer token (the client scrubs both from anything it puts in
an error), and their ``str()`` masks email addresses, because commercetools echoes input values in some
messages (e.g. ``DuplicateField`` on ``email``).
"""

from __future__ import annotations

from typing import Any, Iterable

from ctdd import redaction
from ctdd.http_common import error_summary, json_or_none
from ctdd.redaction import EXCERPT_LIMIT  # noqa: F401 - part of this module's namespace, as before

__all__ = [
    "CommercetoolsAuthError",
    "CommercetoolsConflict",
    "CommercetoolsError",
    "CommercetoolsTransportError",
    "RETRYABLE_STATUSES",
    "error_from_response",
    "redact",
]

#: Statuses worth retrying besides every 5xx: 429 Too Many Requests.
RETRYABLE_STATUSES = frozenset({429})


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Replace each non-empty secret in ``text`` by ``<redacted>`` and mask email addresses."""
    return redaction.mask_emails(redaction.replace_secrets(text, secrets))


class CommercetoolsError(Exception):
    """A failed commercetools API call.

    Attributes:
        status_code: HTTP status, or ``None`` when no response was received.
        code: ``errors[0].code`` of the envelope (e.g. ``ResourceNotFound``, ``InvalidInput``,
            ``ConcurrentModification``, ``invalid_client``), or the OAuth ``error`` field.
        message: the envelope's top-level ``message`` (raw; ``str()`` masks emails).
        errors: the envelope's ``errors`` list as sent (each a dict with at least ``code`` and ``message``).
        method, path: the request (path without the query string).
        retryable: whether the same request may succeed later.
        response_excerpt: up to 500 characters of the body, emails masked, for bodies that are not an envelope.
    """

    def __init__(
        self,
        status_code: int | None,
        code: str | None,
        message: str,
        errors: list[Any] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        retryable: bool | None = None,
        response_excerpt: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message or ""
        self.errors = list(errors or [])
        self.method = method
        self.path = path
        if retryable is None:
            retryable = status_code is None or status_code >= 500 or status_code in RETRYABLE_STATUSES
        self.retryable = retryable
        self.response_excerpt = response_excerpt
        super().__init__(self._render())

    def _render(self) -> str:
        # e.g. "commercetools API error: POST /my-project/customers/abc -> HTTP 409 ConcurrentModification - ..."
        text = error_summary("commercetools", method=self.method, path=self.path and redact(self.path),
                             status_code=self.status_code, code=self.code,
                             message=self.message and redact(self.message))
        if self.retryable:
            text += " [retryable]"
        return text

    def __str__(self) -> str:
        return self._render()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
                f"retryable={self.retryable!r})")


class CommercetoolsConflict(CommercetoolsError):
    """HTTP 409: the resource's version is not the one sent (``ConcurrentModification``).

    ``current_version`` is the resource's current version when the API reports it (``currentVersion`` of
    the ``ConcurrentModification`` error); re-read the resource and retry with fresh update actions.
    """

    def __init__(self, *args: Any, current_version: int | None = None, **kwargs: Any) -> None:
        self.current_version = current_version
        kwargs.setdefault("retryable", False)
        super().__init__(*args, **kwargs)


class CommercetoolsAuthError(CommercetoolsError):
    """401 after a token refresh, 403, or client credentials refused by the token endpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(*args, **kwargs)


class CommercetoolsTransportError(CommercetoolsError):
    """No usable response (timeout, connection refused or reset). Retryable.

    The request may still have been applied (a timeout after the server received it), so only retry
    idempotent calls blindly; updates are protected by optimistic locking (a replay gets a 409).
    """

    def __init__(self, message: str, *, code: str = "TRANSPORT_ERROR", **kwargs: Any) -> None:
        kwargs["retryable"] = True
        super().__init__(None, code, message, [], **kwargs)


def _parse_envelope(body: bytes | str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Return ``(envelope, excerpt)``: the decoded JSON object (if any) and a masked excerpt otherwise."""
    if not body:
        return None, None
    text = redaction.as_text(body)
    payload = json_or_none(text)
    if isinstance(payload, dict):
        return payload, None
    return None, redaction.excerpt(text, redact)


def error_from_response(
    status_code: int,
    body: bytes | str | None,
    *,
    method: str | None = None,
    path: str | None = None,
    secrets: Iterable[str | None] = (),
    auth_endpoint: bool = False,
) -> CommercetoolsError:
    """Classify a non-2xx commercetools response (rules in the module docstring).

    ``secrets`` are scrubbed from the message and from every string in ``errors`` before the error is
    built, so that a server echoing a credential back cannot leak it into logs. ``auth_endpoint`` marks a
    response of ``POST /oauth/token``: any 4xx there means the client credentials (or requested scopes)
    were refused and becomes ``CommercetoolsAuthError``.
    """
    secrets = tuple(s for s in secrets if s)
    envelope, excerpt = _parse_envelope(body)
    code: str | None = None
    message = ""
    errors: list[Any] = []
    current_version: int | None = None
    if envelope is not None:
        raw_errors = envelope.get("errors")
        if isinstance(raw_errors, list):
            errors = [_scrub(item, secrets) for item in raw_errors]
        first = next((e for e in errors if isinstance(e, dict)), None)
        if first is not None and isinstance(first.get("code"), str):
            code = first["code"]
        elif isinstance(envelope.get("error"), str):  # bare OAuth error body
            code = envelope["error"]
        raw_message = envelope.get("message")
        if not isinstance(raw_message, str):
            raw_message = envelope.get("error_description") if isinstance(envelope.get("error_description"), str) else ""
        message = _scrub(raw_message, secrets)
        for item in errors:
            if isinstance(item, dict) and item.get("code") == "ConcurrentModification":
                version = item.get("currentVersion")
                if isinstance(version, int) and not isinstance(version, bool):
                    current_version = version
                break
    elif excerpt:
        excerpt = _scrub(excerpt, secrets)
        message = excerpt
    common: dict[str, Any] = {"method": method, "path": path, "response_excerpt": excerpt}
    if status_code == 409:
        return CommercetoolsConflict(status_code, code or "ConcurrentModification", message, errors,
                                     current_version=current_version, **common)
    if status_code in (401, 403) or (auth_endpoint and 400 <= status_code < 500 and status_code != 429):
        return CommercetoolsAuthError(status_code, code, message, errors, **common)
    return CommercetoolsError(status_code, code, message, errors, **common)


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """Recursively replace secrets in strings of a decoded JSON value (emails are kept; ``str()`` masks)."""
    if not secrets:
        return value
    if isinstance(value, str):
        return redaction.replace_secrets(value, secrets)
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    return value
