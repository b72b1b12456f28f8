"""Async Dotdigital API client (httpx).

Covers what the sync service needs (reference ``shared/reference/dotdigital.md``):

* region discovery: ``GET /v2/account-info`` on r1 (or an explicit base URL), then every call goes to the
  account's ``ApiEndpoint`` property (§1); discovered once per client, concurrency-safe;
* contacts v3 single upsert ``PATCH /contacts/v3/{identifier}/{value}`` and ``GET`` (§4);
* v2 data fields (§4.5) and address books / list membership removal (§6).

Transport rules (§1): HTTP Basic with the API user, JSON in and out (``Accept`` / ``Content-Type:
application/json``), a ``User-Agent``, and a default timeout of 121 s, which Dotdigital asks clients to
allow. The client does **not** retry: every failure is raised as a classified ``DotdigitalError``
(``retryable``, ``throttled``, ``retry_after``; see ``errors.py``) so the outbox owns the retry policy.
Credentials are never logged and never appear in errors or ``repr()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from .errors import (
    DotdigitalError,
    DotdigitalTransportError,
    error_from_response,
    redact_pii,
)

__all__ = [
    "MERGE_OPTIONS",
    "R1_BASE_URL",
    "REGION_BASE_URLS",
    "ContactUpsertResult",
    "DotdigitalClient",
]

logger = logging.getLogger(__name__)

#: Region discovery is always done on r1, whatever the account's region (§1).
R1_BASE_URL = "https://r1-api.dotdigital.com"
REGION_BASE_URLS: dict[str, str] = {
    "r1": R1_BASE_URL,  # Europe
    "r2": "https://r2-api.dotdigital.com",  # North America
    "r3": "https://r3-api.dotdigital.com",  # Asia Pacific
}
#: ``merge-option`` query values of the v3 PATCH upsert (kebab-case, unlike the bulk import's camelCase; §4.4).
MERGE_OPTIONS = ("overwrite", "overwrite-if-not-empty", "overwrite-if-empty")
#: Recommended per-call timeout (§1).
DEFAULT_TIMEOUT = 121.0

_IDENTIFIER_RE = re.compile(r"^[-A-Za-z0-9_]{1,50}$")  # path param ``identifier`` pattern [SPEC-C3]
_DATA_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")  # §4.5
_DATA_FIELD_TYPES = ("String", "Numeric", "Date", "Boolean")
_VISIBILITIES = ("Private", "Public")
_PAGE_SIZE = 1000  # v2 ``select`` maximum (§5)
_FORBIDDEN_EXTRA_HEADERS = frozenset({"authorization", "host", "content-length"})


@dataclass(frozen=True)
class ContactUpsertResult:
    """Outcome of ``PATCH /contacts/v3/{identifier}/{value}``.

    ``created`` is true for 201 (new contact), false for 200 (updated). ``email_status`` is the email
    channel status from the response (``channelProperties.email.status``) - e.g. still ``suppressed`` /
    ``unsubscribed`` after a PATCH on a suppressed contact (§6). ``body`` is the full v3 read model.
    """

    contact_id: int
    created: bool
    status_code: int
    email_status: str | None
    body: dict


class DotdigitalClient:
    """Async client for one Dotdigital API user.

    Args:
        api_user: API user name (``apiuser-...@apiconnector.com``).
        password: API user password. Only used for the ``Authorization`` header; never logged.
        base_url: explicit base URL (e.g. a sandbox or ``CTDD_DOTDIGITAL_BASE_URL``). With discovery on,
            account-info is fetched from here instead of r1.
        region: ``r1`` / ``r2`` / ``r3``; used as the base URL when ``discover_endpoint`` is false and no
            ``base_url`` is given. Discovery always starts on r1 as documented (§1).
        discover_endpoint: resolve the account's ``ApiEndpoint`` via ``GET /v2/account-info`` before the
            first call (cached for the client's lifetime).
        timeout: per-request timeout in seconds (connect, read, write and pool).
        transport: custom httpx transport (tests, proxies).
        user_agent: ``User-Agent`` header value.
        integration_token: optional Dotdigital partner ``x-ddg-integration-token`` sent on every call (§1).
    """

    def __init__(
        self,
        *,
        api_user: str,
        password: str,
        base_url: str | None = None,
        region: str | None = None,
        discover_endpoint: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "ctdd-sync",
        integration_token: str | None = None,
    ) -> None:
        if not api_user:
            raise ValueError("api_user is required")
        if not password:
            raise ValueError("password is required")
        if region is not None and region not in REGION_BASE_URLS:
            raise ValueError(f"unknown Dotdigital region {region!r}; expected one of {sorted(REGION_BASE_URLS)}")
        if base_url is not None:
            _check_base_url(base_url)

        self.api_user = api_user
        self.discover_endpoint = discover_endpoint
        #: Where ``GET /v2/account-info`` is called for discovery.
        self.discovery_base_url = _strip(base_url) if base_url else R1_BASE_URL
        self._endpoint: str | None = None
        if not discover_endpoint:
            self._endpoint = _strip(base_url) if base_url else REGION_BASE_URLS[region or "r1"]
        self._endpoint_lock = asyncio.Lock()

        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if integration_token:
            headers["x-ddg-integration-token"] = integration_token
        self._http = httpx.AsyncClient(
            auth=httpx.BasicAuth(api_user, password),
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"DotdigitalClient(api_user={self.api_user!r}, endpoint={self._endpoint or self.discovery_base_url!r})"

    # -- lifecycle ------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> DotdigitalClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- endpoint discovery ---------------------------------------------------------------------------
    async def api_endpoint(self) -> str:
        """The base URL all API calls go to (no trailing slash), discovering it on first use.

        Discovery (§1): ``GET /v2/account-info`` on the discovery base, read property ``ApiEndpoint``
        (e.g. ``https://r2-api.dotdigital.com/``). Concurrent callers share one discovery call. If the
        property is missing, the discovery base is used. An ``ApiEndpoint`` that is not an absolute
        http(s) URL - or is plain http while discovery used https - is rejected, because the credentials
        would be sent there.
        """
        if self._endpoint is not None:
            return self._endpoint
        async with self._endpoint_lock:
            if self._endpoint is None:
                info = await self._request_json("GET", self.discovery_base_url, "/v2/account-info")
                self._endpoint = self._endpoint_from_account_info(info)
                logger.info("Dotdigital API endpoint for %s: %s", self.api_user, self._endpoint)
        return self._endpoint

    def _endpoint_from_account_info(self, info: Any) -> str:
        value = None
        if isinstance(info, dict):
            for prop in info.get("properties") or []:
                if isinstance(prop, dict) and str(prop.get("name", "")).lower() == "apiendpoint":
                    value = prop.get("value")
                    break
        if not value:
            logger.warning("Dotdigital account-info has no ApiEndpoint; using %s", self.discovery_base_url)
            return self.discovery_base_url
        try:
            _check_base_url(str(value))
        except ValueError as exc:
            raise DotdigitalError(f"Invalid ApiEndpoint in account-info: {exc}", code="INVALID_API_ENDPOINT") from None
        if urlsplit(self.discovery_base_url).scheme == "https" and urlsplit(str(value)).scheme != "https":
            raise DotdigitalError("ApiEndpoint downgrades https to http; refusing to send credentials",
                                  code="INVALID_API_ENDPOINT")
        return _strip(str(value))

    # -- v2 account -----------------------------------------------------------------------------------
    async def account_info(self) -> dict:
        """``GET /v2/account-info`` on the account's endpoint: ``{id, properties: [{name, type, value}]}``."""
        info = await self._request_json("GET", await self.api_endpoint(), "/v2/account-info")
        if not isinstance(info, dict):
            raise _invalid_response("GET", "/v2/account-info", "expected a JSON object")
        return info

    # -- contacts v3 ----------------------------------------------------------------------------------
    async def upsert_contact(
        self,
        identifier: str,
        value: str,
        body: dict,
        *,
        merge_option: str = "overwrite",
        headers: dict[str, str] | None = None,
    ) -> ContactUpsertResult:
        """Create or update one contact: ``PATCH /contacts/v3/{identifier}/{value}?merge-option=`` (§4.1).

        ``identifier`` is ``email``, ``mobileNumber``, ``contactId`` or a custom identifier; ``value`` is
        percent-encoded as one path segment (``+`` -> ``%2B``, ``@`` -> ``%40``). ``body`` is the v3 write model
        (§4.2) and is sent as-is. Returns 201 -> ``created=True``, 200 -> ``created=False``.
        ``headers`` adds request headers (e.g. ``Idempotency-Key``); ``Authorization`` cannot be overridden.
        """
        if merge_option not in MERGE_OPTIONS:
            raise ValueError(f"merge_option must be one of {MERGE_OPTIONS}, got {merge_option!r}")
        if not isinstance(body, dict):
            raise TypeError("body must be a dict (the v3 contact write model)")
        path = _contact_path(identifier, value)
        response = await self._request(
            "PATCH", await self.api_endpoint(), path, json_body=body, params={"merge-option": merge_option},
            headers=headers,
        )
        payload = _decode_json(response, "PATCH", path)
        contact_id = payload.get("contactId") if isinstance(payload, dict) else None
        if isinstance(contact_id, bool) or not isinstance(contact_id, int):
            raise _invalid_response("PATCH", path, "response has no integer contactId")
        email = (payload.get("channelProperties") or {}).get("email") or {}
        return ContactUpsertResult(
            contact_id=contact_id,
            created=response.status_code == 201,
            status_code=response.status_code,
            email_status=email.get("status") if isinstance(email, dict) else None,
            body=payload,
        )

    async def get_contact(self, identifier: str, value: str) -> dict | None:
        """``GET /contacts/v3/{identifier}/{value}`` -> the v3 read model, or ``None`` on 404 (§4.1)."""
        path = _contact_path(identifier, value)
        try:
            payload = await self._request_json("GET", await self.api_endpoint(), path)
        except DotdigitalError as exc:
            if exc.status_code == 404:
                return None
            raise
        if not isinstance(payload, dict):
            raise _invalid_response("GET", path, "expected a JSON object")
        return payload

    # -- v2 data fields -------------------------------------------------------------------------------
    async def list_data_fields(self) -> list[dict]:
        """``GET /v2/data-fields`` -> ``[{name, type, visibility, defaultValue}]`` (§4.5)."""
        payload = await self._request_json("GET", await self.api_endpoint(), "/v2/data-fields")
        if not isinstance(payload, list):
            raise _invalid_response("GET", "/v2/data-fields", "expected a JSON array")
        return payload

    async def create_data_field(
        self, name: str, type: str = "String", visibility: str = "Private", default_value: Any = None  # noqa: A002
    ) -> bool:
        """``POST /v2/data-fields``; returns ``False`` if the field already existed (§4.5).

        Dotdigital answers ``400 "Field already exists. ERROR_NON_UNIQUE_DATAFIELD"`` for an existing name,
        which makes "ensure field exists" idempotent. The name (max 20 chars of ``[A-Za-z0-9_-]``), type and
        visibility are checked locally first (``ValueError``) to save an API call.
        """
        if not _DATA_FIELD_NAME_RE.match(name or ""):
            raise ValueError(f"invalid data field name {name!r}: 1-20 characters of A-Z a-z 0-9 _ -")
        if type not in _DATA_FIELD_TYPES:
            raise ValueError(f"data field type must be one of {_DATA_FIELD_TYPES}, got {type!r}")
        if visibility not in _VISIBILITIES:
            raise ValueError(f"data field visibility must be one of {_VISIBILITIES}, got {visibility!r}")
        body: dict[str, Any] = {"name": name, "type": type, "visibility": visibility}
        if default_value is not None:
            body["defaultValue"] = default_value
        try:
            await self._request("POST", await self.api_endpoint(), "/v2/data-fields", json_body=body)
        except DotdigitalError as exc:
            if exc.code == "ERROR_NON_UNIQUE_DATAFIELD":
                return False
            raise
        return True

    # -- v2 address books (lists) ---------------------------------------------------------------------
    async def list_address_books(self) -> list[dict]:
        """``GET /v2/address-books`` (all pages of ``select=1000``) -> ``[{id, name, visibility, contacts}]`` (§6)."""
        endpoint = await self.api_endpoint()
        books: list[dict] = []
        skip = 0
        while True:
            page = await self._request_json(
                "GET", endpoint, "/v2/address-books", params={"select": _PAGE_SIZE, "skip": skip}
            )
            if not isinstance(page, list):
                raise _invalid_response("GET", "/v2/address-books", "expected a JSON array")
            books.extend(page)
            if len(page) < _PAGE_SIZE:
                return books
            skip += _PAGE_SIZE

    async def remove_contact_from_address_book(self, address_book_id: int, contact_id: int) -> None:
        """``DELETE /v2/address-books/{addressBookId}/contacts/{contactId}`` -> 204 (§6).

        v3 PATCH ``lists`` only ever adds memberships; removal is this v2 call. Raises ``DotdigitalError``
        (404 ``ERROR_ADDRESSBOOK_NOT_FOUND`` / ``ERROR_CONTACT_NOT_FOUND``) when either does not exist.
        """
        for name, number in (("address_book_id", address_book_id), ("contact_id", contact_id)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"{name} must be a non-negative int")
        await self._request(
            "DELETE", await self.api_endpoint(), f"/v2/address-books/{address_book_id}/contacts/{contact_id}"
        )

    # -- HTTP plumbing --------------------------------------------------------------------------------
    async def _request_json(self, method: str, base: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, base, path, **kwargs)
        return _decode_json(response, method, path)

    async def _request(
        self,
        method: str,
        base: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; return the 2xx response or raise a classified ``DotdigitalError``."""
        request_headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            if name.lower() in _FORBIDDEN_EXTRA_HEADERS:
                raise ValueError(f"header {name!r} cannot be overridden")
            request_headers[name] = value
        content: bytes | None = None
        if json_body is not None:
            # Serialised here (not via httpx json=) to reject NaN/Infinity, which are not JSON.
            try:
                content = json.dumps(json_body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
            except ValueError as exc:
                raise ValueError(f"request body is not valid JSON: {exc}") from None
            request_headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            response = await self._http.request(
                method, base + path, content=content, params=params, headers=request_headers
            )
        except httpx.TimeoutException as exc:
            raise DotdigitalTransportError(
                f"timed out: {type(exc).__name__}", code="TIMEOUT", method=method, path=path
            ) from exc
        except httpx.TransportError as exc:
            raise DotdigitalTransportError(
                f"{type(exc).__name__}: {redact_pii(str(exc))}", code="TRANSPORT_ERROR", method=method, path=path
            ) from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Dotdigital %s %s -> %s (%.0f ms)", method, redact_pii(unquote(path)),
                         response.status_code, elapsed_ms)
        if 200 <= response.status_code < 300:
            return response
        raise error_from_response(response.status_code, response.headers, response.content, method=method, path=path)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _strip(url: str) -> str:
    return url.rstrip("/")


def _check_base_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL must be an absolute http(s) URL, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("base URL must not contain credentials, a query or a fragment")


def _contact_path(identifier: str, value: str) -> str:
    """``/contacts/v3/{identifier}/{value}`` with both segments fully percent-encoded (§4.1)."""
    if not isinstance(identifier, str) or not _IDENTIFIER_RE.match(identifier):
        raise ValueError(f"invalid contact identifier {identifier!r}: 1-50 characters of A-Z a-z 0-9 _ -")
    value = str(value)
    if not 1 <= len(value) <= 256:
        raise ValueError("contact identifier value must be 1-256 characters")
    return f"/contacts/v3/{quote(identifier, safe='')}/{quote(value, safe='')}"


def _decode_json(response: httpx.Response, method: str, path: str) -> Any:
    if not response.content:
        raise _invalid_response(method, path, f"empty body with HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise _invalid_response(method, path, f"body is not JSON (HTTP {response.status_code})") from None


def _invalid_response(method: str, path: str, reason: str) -> DotdigitalError:
    # A 2xx we cannot understand (e.g. an HTML page from a proxy): the call may or may not have been
    # applied, so report it as retryable; the endpoints used here are idempotent.
    return DotdigitalError(f"unexpected response: {reason}", code="INVALID_RESPONSE", retryable=True,
                           method=method, path=path)
