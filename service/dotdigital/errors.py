"""Dotdigital API errors and their classification.

Dotdigital has two error envelopes (Dotdigital API docs: error response types):

* v2 (``/v2/...``): ``{"message": "<text> ERROR_CODE"}`` - the code is a token embedded in the message
  (sometimes prefixed ``Error: ``), so it is extracted with the regex ``ERROR_[A-Z_]+``.
* v3 (``/contacts/v3``, ``/insightData/v3``, ``/events/v3``):
  ``{"errorCode": "service:code", "description": "...", "details": [{"item", "description"}]}``.

``error_from_response`` turns any non-2xx response into a ``DotdigitalError`` whose ``retryable`` /
``throttled`` / ``retry_after`` attributes drive the outbox's retry policy:

* retryable: 5xx, 408, 425, 429, and the v2 codes ``ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE``,
  ``ERROR_ADDRESSBOOK_IN_USE`` and ``ERROR_APIUSAGE_EXCEEDED``; every other 4xx is not.
* throttled (``DotdigitalThrottled``): 429 (tiered per-minute limits) or 400 ``ERROR_APIUSAGE_EXCEEDED``
  (legacy flat hourly limit).
* auth (``DotdigitalAuthError``): 401 (bad credentials) and 403 (e.g. wrong region: "Access is denied").
* ``retry_after``: ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset`` - which Dotdigital
  documents ambiguously as seconds-until-reset or a Unix epoch, so values > 10**9 are treated as an epoch
  - else 60 s for ``ERROR_APIUSAGE_EXCEEDED``.
* Too many active bulk imports (429 ``contacts:tooManyActiveImports`` / ``insightData:tooManyActiveImports``)
  is throttling too, but of one kind of call only: ``DotdigitalThrottled.too_many_imports`` tells it apart
  from the account-wide per-minute limit.
* Events API export subscriptions (v3 ``events:*``): 409 ``events:inactiveSubscription``
  (``DotdigitalInactiveSubscription``), 400 ``events:invalidCheckpoint`` / ``events:checkpointOutOfRange``
  (``DotdigitalInvalidCheckpoint``), 404 ``events:subscriptionNotFound`` (``DotdigitalSubscriptionNotFound``);
  none is retryable as such: the caller must reactivate, drop the checkpoint or find the subscription again.
* Insight record rejections (400 ``insightData:*``) name the insight failure reason (e.g.
  ``JsonValueIncompatibleWithSchema``) in the description or details; ``DotdigitalError.failure_reason``
  extracts it.

Errors never carry credentials, and their ``str()`` / ``response_excerpt`` mask email addresses and phone
numbers so they can be logged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

from ctdd import redaction
from ctdd.http_common import error_summary, json_or_none
from ctdd.redaction import EXCERPT_LIMIT  # noqa: F401 - part of this module's namespace, as before

__all__ = [
    "DotdigitalAuthError",
    "DotdigitalError",
    "DotdigitalImportTimeout",
    "DotdigitalInactiveSubscription",
    "DotdigitalInvalidCheckpoint",
    "DotdigitalSubscriptionNotFound",
    "DotdigitalThrottled",
    "DotdigitalTransportError",
    "INSIGHT_FAILURE_REASONS",
    "RETRYABLE_CODES",
    "TOO_MANY_IMPORTS_CODES",
    "RETRYABLE_STATUSES",
    "error_from_response",
    "redact_pii",
]

#: HTTP statuses that are worth retrying (besides every 5xx).
RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: v2 error codes that are transient whatever their HTTP status.
RETRYABLE_CODES = frozenset({
    "ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE",
    "ERROR_UNKNOWN",  # Dotdigital's error-code table: transient or unknown, retry
    "ERROR_ADDRESSBOOK_IN_USE",
    "ERROR_APIUSAGE_EXCEEDED",
    "ERROR_TRANSACTIONAL_DATA_COLLECTION_IS_RESTORING",  # the collection is back once restored
    "ERROR_IMPORT_TOOMANYACTIVEIMPORTS",
})
#: Legacy flat-limit code: HTTP 400 but really a throttle.
APIUSAGE_EXCEEDED = "ERROR_APIUSAGE_EXCEEDED"
#: Back-off used for ``ERROR_APIUSAGE_EXCEEDED`` when the response says nothing about when to retry.
DEFAULT_APIUSAGE_RETRY_AFTER = 60.0
#: Values of ``X-RateLimit-Reset`` above this are Unix epoch seconds, below it a delay in seconds.
EPOCH_THRESHOLD = 10**9
#: 429 codes of the bulk-import concurrency limits (≤ 25 contact imports, ≤ 5 insight imports).
TOO_MANY_IMPORTS_CODES = frozenset({"contacts:tooManyActiveImports", "insightData:tooManyActiveImports",
                                    "ERROR_IMPORT_TOOMANYACTIVEIMPORTS"})  # (the v2 form: HTTP 400)
#: Insight record failure reasons: the v3 import enum, then the extra v2 report reasons.
INSIGHT_FAILURE_REASONS = (
    "InvalidClientKey", "InvalidContactIdentifier", "InvalidJson", "DuplicateKey", "ContactIdDoesNotExist",
    "ContactEmailDoesNotExist", "JsonContainsNestedArray", "JsonKeyTooLong", "JsonKeyInvalidCharacters",
    "JsonValueTooLong", "JsonValueIncompatibleWithSchema", "JsonNumberValueTooLarge",
    "JsonDoesNotMatchSchema", "JsonContainsDashUnderscoreClash", "MissingCollection", "InconsistentTypes",
    "TooManyDistinctKeyValuePairs", "ContactPhoneNumberDoesNotExist", "InvalidContactIdentifierType",
    "KeyExistingForDifferentContact", "ContactCustomIdentifierValueDoesNotExist",
)

_V2_CODE_RE = re.compile(r"ERROR_[A-Z_]+")
_FAILURE_REASON_RE = re.compile(r"\b(" + "|".join(INSIGHT_FAILURE_REASONS) + r")\b")


def redact_pii(text: str) -> str:
    """Mask email addresses and phone numbers (E.164 and other phone-like digit runs, ``ctdd.redaction``)."""
    return redaction.mask_phones(redaction.mask_emails(text))


class DotdigitalError(Exception):
    """A failed Dotdigital API call.

    Attributes:
        status_code: HTTP status, or ``None`` when no response was received.
        code: v3 ``errorCode`` (e.g. ``contacts:invalidId``) or the first ``ERROR_*`` token of a v2 message.
        description: v3 ``description`` or v2 ``message`` (raw; may contain PII - ``str()`` masks it).
        details: v3 ``details`` list (``[{"item": ..., "description": ...}]``), else ``[]``.
        retryable: whether retrying the same request later can succeed.
        retry_after: seconds to wait before retrying, when the API said so.
        throttled: the call was rejected by a rate limit.
        response_excerpt: at most 500 characters of the response body with emails/phones masked.
        method, path: the request (path without query); ``str()`` masks PII in the path.
    """

    def __init__(
        self,
        description: str = "",
        *,
        status_code: int | None = None,
        code: str | None = None,
        details: list[Any] | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        throttled: bool = False,
        response_excerpt: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.description = description
        self.details = list(details or [])
        self.retryable = retryable
        self.retry_after = retry_after
        self.throttled = throttled
        self.response_excerpt = response_excerpt
        self.method = method
        self.path = path
        super().__init__(self._render())

    def _render(self) -> str:
        # e.g. "Dotdigital API error: PATCH /contacts/v3/email/<email> -> HTTP 400 contacts:invalidId - ..."
        text = error_summary("Dotdigital", method=self.method, path=self.path and redact_pii(unquote(self.path)),
                             status_code=self.status_code, code=self.code,
                             message=self.description and redact_pii(self.description))
        if self.details:
            items = [redact_pii(str(d.get("item"))) for d in self.details if isinstance(d, dict) and d.get("item")]
            if items:
                text += f" (details: {', '.join(items[:10])})"
        if self.retryable:
            text += " [retryable" + (f", retry after {self.retry_after:g}s" if self.retry_after is not None else "") + "]"
        return text

    def __str__(self) -> str:
        return self._render()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"retryable={self.retryable!r}, retry_after={self.retry_after!r})"
        )

    @property
    def failure_reason(self) -> str | None:
        """The insight failure reason this error names, e.g. ``JsonValueIncompatibleWithSchema`` for a
        schema-locking rejection of a single record upsert; ``None`` if it names none. Details come first."""
        texts = [str(d.get("description", "")) for d in self.details if isinstance(d, dict)]
        for text in [*texts, self.description]:
            match = _FAILURE_REASON_RE.search(text or "")
            if match:
                return match.group(1)
        return None


class DotdigitalThrottled(DotdigitalError):
    """Rate limited: HTTP 429 (tiered limits) or 400 ``ERROR_APIUSAGE_EXCEEDED`` (flat limit). Retryable."""

    def __init__(self, description: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("retryable", True)
        kwargs.setdefault("throttled", True)
        super().__init__(description, **kwargs)

    @property
    def too_many_imports(self) -> bool:
        """The bulk-import concurrency limit, not the per-minute API limit: only new imports must wait."""
        return self.code in TOO_MANY_IMPORTS_CODES


class DotdigitalImportTimeout(DotdigitalError):
    """A bulk import did not finish within the time a caller was willing to poll. Retryable: the import goes
    on in Dotdigital, so polling its status again later can succeed (``code`` ``IMPORT_TIMEOUT``)."""

    def __init__(self, description: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("retryable", True)
        kwargs.setdefault("code", "IMPORT_TIMEOUT")
        super().__init__(description, **kwargs)


class DotdigitalTransportError(DotdigitalError):
    """No usable response: timeout, connection refused/reset, dropped connection. Retryable.

    Note that the request may have been processed (e.g. a timeout after the server received it), so only
    idempotent calls such as the v3 upsert should be retried blindly.
    """

    def __init__(self, description: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("retryable", True)
        kwargs["status_code"] = None
        super().__init__(description, **kwargs)


class DotdigitalAuthError(DotdigitalError):
    """HTTP 401 (invalid API user credentials) or 403 (e.g. calling the wrong region). Not retryable."""


class DotdigitalInactiveSubscription(DotdigitalError):
    """409 ``events:inactiveSubscription``: the export subscription is inactive (set so, or suspended after 30
    days without a read). Its events are lost until it is made active again (``PUT`` with ``status: active``)."""


class DotdigitalInvalidCheckpoint(DotdigitalError):
    """400 ``events:invalidCheckpoint`` (not a checkpoint of this subscription) or ``events:checkpointOutOfRange``
    (issued before the subscription was suspended): read again without a checkpoint."""


class DotdigitalSubscriptionNotFound(DotdigitalError):
    """404 ``events:subscriptionNotFound``: no export subscription with this id (deleted?)."""


#: v3 ``events:*`` codes with their own error class
_EVENTS_ERRORS: dict[str, type[DotdigitalError]] = {
    "events:inactiveSubscription": DotdigitalInactiveSubscription,
    "events:invalidCheckpoint": DotdigitalInvalidCheckpoint,
    "events:checkpointOutOfRange": DotdigitalInvalidCheckpoint,
    "events:subscriptionNotFound": DotdigitalSubscriptionNotFound,
}


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date (RFC 9110, section 10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _parse_rate_limit_reset(value: str | None, now: float) -> float | None:
    """``X-RateLimit-Reset``: seconds until reset, or a Unix epoch if > 10**9 (Dotdigital documents both)."""
    if value is None or not value.strip():
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number > EPOCH_THRESHOLD:
        return max(0.0, number - now)
    return max(0.0, number)


def _excerpt(body: bytes | str | None) -> str | None:
    if not body:
        return None
    return redaction.excerpt(redaction.as_text(body), redact_pii)


def _parse_body(body: bytes | str | None) -> tuple[str | None, str, list[Any]]:
    """Return ``(code, description, details)`` from a v3 envelope, a v2 message, ProblemDetails or text."""
    if not body:
        return None, "", []
    text = redaction.as_text(body)
    payload = json_or_none(text)
    if isinstance(payload, dict):
        if isinstance(payload.get("errorCode"), str):  # v3
            details = payload.get("details")
            return payload["errorCode"], str(payload.get("description") or ""), details if isinstance(details, list) else []
        message = payload.get("message", payload.get("Message"))
        if isinstance(message, str):  # v2
            match = _V2_CODE_RE.search(message)
            return (match.group(0) if match else None), message.strip(), []
        if "title" in payload or "detail" in payload:  # RFC 7807 ProblemDetails (v2 DELETE data-field 409)
            description = str(payload.get("detail") or payload.get("title") or "")
            match = _V2_CODE_RE.search(description)
            return (match.group(0) if match else None), description, []
    if isinstance(payload, str):
        match = _V2_CODE_RE.search(payload)
        return (match.group(0) if match else None), payload, []
    stripped = " ".join(text.split())[:200]
    match = _V2_CODE_RE.search(text)
    return (match.group(0) if match else None), stripped, []


def error_from_response(
    status_code: int,
    headers: Mapping[str, str] | None,
    body_bytes: bytes | str | None,
    *,
    method: str | None = None,
    path: str | None = None,
) -> DotdigitalError:
    """Classify a non-2xx Dotdigital response (see the module docstring for the rules)."""
    now = time.time()
    code, description, details = _parse_body(body_bytes)
    retry_after = _parse_retry_after(_header(headers, "Retry-After"), now)
    if retry_after is None:
        retry_after = _parse_rate_limit_reset(_header(headers, "X-RateLimit-Reset"), now)
    common: dict[str, Any] = {
        "status_code": status_code,
        "code": code,
        "details": details,
        "response_excerpt": _excerpt(body_bytes),
        "method": method,
        "path": path,
    }
    if status_code == 429 or code == APIUSAGE_EXCEEDED or code in TOO_MANY_IMPORTS_CODES:
        if retry_after is None and code == APIUSAGE_EXCEEDED:
            retry_after = DEFAULT_APIUSAGE_RETRY_AFTER
        return DotdigitalThrottled(description, retry_after=retry_after, **common)
    if status_code in (401, 403):
        return DotdigitalAuthError(description, retryable=False, **common)
    retryable = status_code >= 500 or status_code in RETRYABLE_STATUSES or code in RETRYABLE_CODES
    if code in _EVENTS_ERRORS and not retryable:
        return _EVENTS_ERRORS[code](description, retryable=False, **common)
    return DotdigitalError(description, retryable=retryable, retry_after=retry_after if retryable else None, **common)
