"""Async commercetools HTTP API client (httpx).

Covers what the sync service needs from the commercetools Composable Commerce HTTP API
(https://docs.commercetools.com/api/):

* hosts per region: ``https://api.{region}.commercetools.com/{projectKey}/...`` and
  ``https://auth.{region}.commercetools.com``; both can be overridden (fake server, proxies);
* OAuth 2 client credentials: ``POST {auth}/oauth/token`` with HTTP Basic ``client_id:client_secret``
  and a form body ``grant_type=client_credentials&scope=...``. The token is cached until shortly before
  ``expires_in`` and shared by concurrent callers; a 401 from the API refetches it once and retries the
  call once;
* reads: by id, by key, paged queries with ``where`` / ``sort`` / ``limit`` / ``offset`` / ``withTotal`` /
  ``expand``, and deep paging by id;
* writes: create, update with optimistic locking (409 ``ConcurrentModification`` -> re-read and retry),
  delete, and CustomObjects (upsert on container + key).

The client does not retry failures other than the 401 token refresh and ``update_with_retry``'s 409 loop:
every other failure is raised as a classified ``CommercetoolsError`` (``retryable`` set for 5xx / 429 /
transport errors, see ``errors.py``) so that the caller owns the retry policy. The client secret and the
bearer token are never logged and never appear in errors or ``repr()``.

Helpers for mapping commercetools data: ``money_to_major`` (Money), ``localized`` (LocalizedString),
``custom_object_key_for_email`` and ``predicate_string`` (string literals in query predicates).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from ctdd.domain.commerce import localized, money_to_major  # noqa: F401  (re-exported)
from ctdd.http_common import check_base_url, encode_json_body, transport_failure
from ctdd.retry import in_process_retries
from ctdd.telemetry import instrument_httpx_client

from .errors import (
    CommercetoolsConflict,
    CommercetoolsError,
    CommercetoolsTransportError,
    error_from_response,
    redact,
)

__all__ = [
    "DEFAULT_REGION",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "REGIONS",
    "CommercetoolsClient",
    "custom_object_key_for_email",
    "localized",
    "money_to_major",
    "predicate_string",
]

logger = logging.getLogger(__name__)

#: Regions of the HTTP API.
REGIONS = ("us-central1.gcp", "us-east-2.aws", "europe-west1.gcp", "eu-central-1.aws", "australia-southeast1.gcp")
DEFAULT_REGION = "europe-west1.gcp"
#: Query limits: ``limit`` at most 500, ``offset`` at most 10,000.
MAX_LIMIT = 500
MAX_OFFSET = 10_000
#: the predicate input variable holding the last id of the previous page (``iterate_pages``)
_AFTER_ID_VAR = "afterId"
#: A cached token is refreshed this long before it expires (capped at half its lifetime).
TOKEN_REFRESH_MARGIN_SECONDS = 300.0

#: commercetools store keys
_STORE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{2,256}$")
# Path segments: the first is a resource name ("customers", "product-projections", "in-store"), the rest
# may be keys such as "key=uk" ("in-store/key=uk/customers").
_RESOURCE_RE = re.compile(r"^[a-z][a-z-]*(?:/[A-Za-z0-9_.~=-]+)*$")
#: CustomObject container and key pattern; the key is 1-256 characters.
_CUSTOM_OBJECT_PART_RE = re.compile(r"^[-_~.a-zA-Z0-9]+$")
_USER_AGENT = "ctdd-sync"

#: ISO 4217 minor-unit exponents that differ from 2, used when a Money draft omits ``fractionDigits``
#: ("Drafts may omit type/fractionDigits"; the default is the currency's number of minor units).


class CommercetoolsClient:
    """Async client for one commercetools project and API client.

    Args:
        project_key: the project key, the first segment of every API path.
        client_id, client_secret: API client credentials for the client-credentials flow. The
            secret is only sent to the token endpoint; it is never logged.
        region: one of ``REGIONS``; selects the default hosts.
        api_url, auth_url: override the hosts, e.g. ``FakeCommercetools.base_url`` in tests
            (no trailing slash needed; no path, query or credentials allowed).
        scopes: requested scopes, e.g. ``["view_customers:my-project"]``. ``None`` omits ``scope``,
            and the token gets every scope of the API client.
        timeout: per-request timeout in seconds.
        transport: custom httpx transport (tests, proxies).
    """

    def __init__(
        self,
        *,
        project_key: str,
        client_id: str,
        client_secret: str,
        region: str = DEFAULT_REGION,
        api_url: str | None = None,
        auth_url: str | None = None,
        scopes: list[str] | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not project_key or not re.match(r"^[A-Za-z0-9_-]+$", project_key):
            raise ValueError(f"invalid project_key {project_key!r}")
        if not client_id:
            raise ValueError("client_id is required")
        if not client_secret:
            raise ValueError("client_secret is required")
        if (api_url is None or auth_url is None) and region not in REGIONS:
            raise ValueError(f"unknown commercetools region {region!r}; expected one of {REGIONS}")
        for url in (api_url, auth_url):
            if url is not None:
                check_base_url(url, allow_path=False)
        if scopes is not None and (isinstance(scopes, str) or not all(isinstance(s, str) and s for s in scopes)):
            raise ValueError("scopes must be a list of non-empty strings")

        self.project_key = project_key
        self.client_id = client_id
        self.region = region
        self.api_url = (api_url or f"https://api.{region}.commercetools.com").rstrip("/")
        self.auth_url = (auth_url or f"https://auth.{region}.commercetools.com").rstrip("/")
        self.scopes = list(scopes) if scopes is not None else None
        self._client_secret = client_secret
        self._token: str | None = None
        self._token_expires_at = 0.0  # time.monotonic() deadline for reuse
        self._token_scope: str | None = None
        self._token_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )
        instrument_httpx_client(self._http)  # HTTP client spans while tracing is on (ctdd.telemetry)

    def __repr__(self) -> str:  # never show the secret or the token
        return (f"CommercetoolsClient(project_key={self.project_key!r}, client_id={self.client_id!r}, "
                f"api_url={self.api_url!r})")

    # -- lifecycle ------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the connection pool. The cached token is dropped."""
        self._token = None
        await self._http.aclose()

    async def __aenter__(self) -> CommercetoolsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- token ----------------------------------------------------------------------------------------
    @property
    def token_scope(self) -> str | None:
        """The ``scope`` granted with the current token (space-separated), once one has been fetched."""
        return self._token_scope

    async def _access_token(self, *, stale: str | None = None) -> str:
        """Return a valid bearer token, fetching one if none is cached, it is about to expire, or it is ``stale``.

        ``stale`` is the token that just got a 401: if another caller already replaced it, the new token is
        reused instead of fetching yet another one, so N concurrent 401s cause one token request.
        """
        token = self._token
        if token is not None and token != stale and time.monotonic() < self._token_expires_at:
            return token
        async with self._token_lock:
            token = self._token
            if token is not None and token != stale and time.monotonic() < self._token_expires_at:
                return token
            self._token = None
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        """``POST {auth_url}/oauth/token`` (client credentials, HTTP Basic). Caller holds the lock."""
        path = "/oauth/token"
        form = {"grant_type": "client_credentials"}
        if self.scopes:
            form["scope"] = " ".join(self.scopes)
        started = time.monotonic()
        try:
            response = await self._http.post(
                self.auth_url + path, data=form, auth=httpx.BasicAuth(self.client_id, self._client_secret)
            )
        except httpx.TransportError as exc:
            code, message = transport_failure(exc, self._scrub, what="token request")
            raise CommercetoolsTransportError(message, code=code, method="POST", path=path) from None
        if not 200 <= response.status_code < 300:
            error = error_from_response(response.status_code, response.content, method="POST", path=path,
                                        secrets=self._secrets(), auth_endpoint=True)
            logger.warning("commercetools token request for client %s refused: HTTP %s %s",
                           self.client_id, response.status_code, error.code or "")
            raise error
        try:
            payload = response.json()
        except ValueError:
            payload = None
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise CommercetoolsError(response.status_code, "INVALID_RESPONSE",
                                     "token response has no access_token", method="POST", path=path, retryable=True)
        expires_in = payload.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            expires_in = 3600.0  # be conservative when the server does not say
        margin = min(TOKEN_REFRESH_MARGIN_SECONDS, float(expires_in) / 2)
        self._token = token
        self._token_expires_at = started + float(expires_in) - margin
        self._token_scope = payload.get("scope") if isinstance(payload.get("scope"), str) else None
        logger.info("commercetools token fetched for client %s (expires in %ss, scope %s)",
                    self.client_id, expires_in, self._token_scope)
        return token

    def _secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._client_secret, self._token) if s)

    def _scrub(self, text: str) -> str:
        return redact(text, self._secrets())

    # -- reads ----------------------------------------------------------------------------------------
    async def get(
        self, resource: str, id: str, *, expand: Sequence[str] = (),  # noqa: A002 - mirrors the API
        params: Mapping[str, Any] | None = None,
    ) -> dict | None:
        """``GET /{projectKey}/{resource}/{id}`` -> the resource, or ``None`` on 404.

        ``resource`` is the plural path name (``customers``, ``orders``, ``payments``, ``carts``,
        ``products``, ``product-projections``, ``categories``, ``subscriptions``, ``types``, ``stores`` ...).
        ``expand`` adds reference expansions; ``params`` adds other query parameters, e.g.
        ``{"staged": "false"}`` or price selection for product projections.
        """
        return await self._get_one(resource, _segment(id, "id"), expand=expand, params=params)

    async def get_by_key(
        self, resource: str, key: str, *, expand: Sequence[str] = (), params: Mapping[str, Any] | None = None
    ) -> dict | None:
        """``GET /{projectKey}/{resource}/key={key}`` -> the resource, or ``None`` on 404."""
        return await self._get_one(resource, "key=" + _segment(key, "key"), expand=expand, params=params)

    async def _get_one(self, resource: str, tail: str, *, expand: Sequence[str],
                       params: Mapping[str, Any] | None) -> dict | None:
        path = f"{self._resource_path(resource)}/{tail}"
        return await self._object_or_none("GET", path, params=_expand_params(expand) + _extra_params(params))

    async def query(
        self,
        resource: str,
        *,
        where: Sequence[str] = (),
        sort: Sequence[str] = (),
        limit: int = 20,
        offset: int = 0,
        with_total: bool = True,
        expand: Sequence[str] = (),
        params: Mapping[str, Any] | None = None,
    ) -> dict:
        """``GET /{projectKey}/{resource}`` -> ``PagedQueryResponse`` ``{limit, offset, count, total?, results}``.

        ``where`` predicates are repeated and AND-ed by commercetools; ``sort`` is repeatable
        (``"lastModifiedAt asc"``). ``limit`` must be 0-500 and ``offset`` 0-10,000 (checked locally
        with ``ValueError``); for more than 10,000 results use ``iterate_pages``. ``with_total=False`` skips
        the (capped, estimated) count. Pass values as predicate input variables rather than in the predicate's
        text: ``where=["email = :email"], params={"var.email": email}`` (commercetools HTTP API, "Query
        Predicates": input variables); ``predicate_string`` is for literals that are not input.
        """
        _check_strings(where, "where")
        _check_strings(sort, "sort")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an int between 0 and {MAX_LIMIT}, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise ValueError(f"offset must be an int between 0 and {MAX_OFFSET}, got {offset!r}")
        path = self._resource_path(resource)
        query: list[tuple[str, str]] = [("where", w) for w in where]
        query += [("sort", s) for s in sort]
        query += [("limit", str(limit)), ("offset", str(offset)), ("withTotal", "true" if with_total else "false")]
        query += _expand_params(expand) + _extra_params(params)
        payload = _expect_object(await self._request_json("GET", path, params=query), "GET", path)
        if not isinstance(payload.get("results"), list):
            raise _invalid_response("GET", path, "PagedQueryResponse has no results list")
        return payload

    async def query_in_store(self, store_key: str, resource: str, **kwargs: Any) -> dict:
        """``GET /{projectKey}/in-store/key={storeKey}/{resource}``: :meth:`query` limited to one store's
        resources (carts, orders, customers ...; commercetools HTTP API: "in-store" endpoints, which also work
        with a token scoped to that store only)."""
        if not isinstance(store_key, str) or not _STORE_KEY_RE.match(store_key):
            raise ValueError(f"invalid store key {store_key!r}")
        return await self.query(f"in-store/key={store_key}/{resource}", **kwargs)

    async def iterate_pages(
        self,
        resource: str,
        *,
        after_id: str | None = None,
        page_size: int = 500,
        where: Sequence[str] = (),
        expand: Sequence[str] = (),
        params: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[list[dict]]:
        """Yield every matching resource, page by page, in ascending ``id`` order (deep paging).

        Each request is ``sort=id asc&limit={page_size}&withTotal=false`` plus ``where=id > :afterId`` with
        ``var.afterId=<last id>`` after the first page (or from ``after_id``, to resume from a stored cursor),
        AND-ed with ``where``.
        Offsets stop at 10,000, ids do not. Iteration stops after the first page shorter than ``page_size``;
        empty pages are not yielded. The last id of each page is a resumable cursor.
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_LIMIT:
            raise ValueError(f"page_size must be an int between 1 and {MAX_LIMIT}, got {page_size!r}")
        _check_strings(where, "where")
        last = after_id
        while True:
            predicates, page_params = list(where), dict(params or {})
            if last is not None:
                # a predicate input variable: the id is a value, never part of the predicate's text
                predicates.append(f"id > :{_AFTER_ID_VAR}")
                page_params[f"var.{_AFTER_ID_VAR}"] = last
            page = await self.query(resource, where=predicates, sort=("id asc",), limit=page_size,
                                    with_total=False, expand=expand, params=page_params)
            results = page["results"]
            if results:
                yield results
            if len(results) < page_size:
                return
            next_id = results[-1].get("id") if isinstance(results[-1], dict) else None
            if not isinstance(next_id, str) or next_id == last:
                # Guards against an endless loop if the server ignored the id predicate.
                raise _invalid_response("GET", self._resource_path(resource), "deep paging made no progress")
            last = next_id

    # -- writes ---------------------------------------------------------------------------------------
    async def create(self, resource: str, draft: dict) -> dict:
        """``POST /{projectKey}/{resource}`` with a draft -> the created resource, as the API returns it.

        Note that ``customers`` answers with a ``CustomerSignInResult`` ``{"customer": {...}, "cart": ...}``
        rather than the bare customer; orders are created from an import draft with
        ``create("orders/import", draft)``.
        """
        if not isinstance(draft, dict):
            raise TypeError("draft must be a dict")
        path = self._resource_path(resource)
        return _expect_object(await self._request_json("POST", path, json_body=draft), "POST", path)

    async def update(self, resource: str, id: str, version: int, actions: list[dict]) -> dict:  # noqa: A002
        """``POST /{projectKey}/{resource}/{id}`` ``{version, actions}`` -> the updated resource.

        Optimistic locking: if ``version`` is not the current one the API answers 409, raised as
        ``CommercetoolsConflict`` (with ``current_version``). See ``update_with_retry``.
        """
        _check_version(version)
        if not isinstance(actions, list) or not actions or not all(isinstance(a, dict) for a in actions):
            raise ValueError("actions must be a non-empty list of update action dicts")
        path = f"{self._resource_path(resource)}/{_segment(id, 'id')}"
        body = {"version": version, "actions": actions}
        return _expect_object(await self._request_json("POST", path, json_body=body), "POST", path)

    async def update_with_retry(
        self,
        resource: str,
        id: str,  # noqa: A002
        make_actions: Callable[[dict], list[dict] | None | Awaitable[list[dict] | None]],
        *,
        max_attempts: int = 5,
    ) -> dict | None:
        """Read-modify-write with optimistic locking ("409 ConcurrentModification -> re-read and retry").

        Each attempt GETs the current resource, calls ``make_actions(resource)`` (sync or async) and sends
        the actions with the version just read. ``None`` / ``[]`` from ``make_actions`` means nothing to do:
        the current resource is returned without an update. On ``CommercetoolsConflict`` the resource is
        re-read and ``make_actions`` called again, after a short jittered pause, up to ``max_attempts``
        times; the last conflict is raised. Returns ``None`` if the resource does not exist (404).
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

        def conflict(exc: BaseException, attempt: int) -> None:
            logger.info("commercetools %s/%s: version conflict (current %s), retrying (%d/%d)",
                        resource, id, getattr(exc, "current_version", None), attempt, max_attempts)

        async for attempt in in_process_retries(attempts=max_attempts, retry_on=CommercetoolsConflict, base=0.05,
                                                cap=1.0, jitter=(0.5, 1.0), on_retry=conflict):
            with attempt:
                current = await self.get(resource, id)
                if current is None:
                    return None
                actions = make_actions(current)
                if inspect.isawaitable(actions):
                    actions = await actions
                if not actions:
                    return current
                return await self.update(resource, id, current["version"], list(actions))
        raise AssertionError("unreachable")  # pragma: no cover

    async def delete(self, resource: str, id: str, version: int, *, data_erasure: bool = False) -> dict:  # noqa: A002
        """``DELETE /{projectKey}/{resource}/{id}?version=`` -> the deleted resource.

        ``data_erasure=True`` adds ``dataErasure=true`` (erase personal data; see ``ResourceDeleted.dataErasure``).
        A stale ``version`` raises ``CommercetoolsConflict``.
        """
        _check_version(version)
        path = f"{self._resource_path(resource)}/{_segment(id, 'id')}"
        query = [("version", str(version))] + ([("dataErasure", "true")] if data_erasure else [])
        return _expect_object(await self._request_json("DELETE", path, params=query), "DELETE", path)

    # -- custom objects ---------------------------------------------------------------------------------
    async def get_custom_object(self, container: str, key: str) -> dict | None:
        """``GET /{projectKey}/custom-objects/{container}/{key}`` -> the CustomObject, or ``None`` on 404."""
        return await self._object_or_none("GET", self._custom_object_path(container, key))

    async def upsert_custom_object(self, container: str, key: str, value: Any, *, version: int | None = None) -> dict:
        """``POST /{projectKey}/custom-objects`` ``{container, key, value, version?}`` -> the CustomObject.

        The endpoint is an upsert on (container, key). With ``version`` it becomes a compare-and-set:
        a mismatch raises ``CommercetoolsConflict``. ``container`` and ``key`` must match
        ``^[-_~.a-zA-Z0-9]+$`` (so no ``@``: use ``custom_object_key_for_email``). Note that ``null`` fields
        inside ``value`` are not stored by commercetools.
        """
        draft: dict[str, Any] = {
            "container": _custom_object_part(container, "container"),
            "key": _custom_object_part(key, "key"),
            "value": value,
        }
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int) or version < 0:
                raise ValueError("version must be a non-negative int")
            draft["version"] = version
        path = self._resource_path("custom-objects")
        return _expect_object(await self._request_json("POST", path, json_body=draft), "POST", path)

    async def delete_custom_object(self, container: str, key: str, *, version: int | None = None) -> dict | None:
        """``DELETE /{projectKey}/custom-objects/{container}/{key}[?version=]`` -> the deleted object, ``None`` on 404.

        Used e.g. to release a lock object; with ``version`` a stale object raises ``CommercetoolsConflict``.
        """
        path = self._custom_object_path(container, key)
        query: list[tuple[str, str]] = []
        if version is not None:
            _check_version(version)
            query.append(("version", str(version)))
        return await self._object_or_none("DELETE", path, params=query)

    # -- HTTP plumbing --------------------------------------------------------------------------------
    def _resource_path(self, resource: str) -> str:
        if not isinstance(resource, str) or not _RESOURCE_RE.match(resource) or ".." in resource:
            raise ValueError(f"invalid resource {resource!r}; expected a path such as 'customers'")
        return f"/{self.project_key}/{resource}"

    def _custom_object_path(self, container: str, key: str) -> str:
        return (f"{self._resource_path('custom-objects')}/{_custom_object_part(container, 'container')}/"
                f"{_custom_object_part(key, 'key')}")

    async def _object_or_none(self, method: str, path: str, *, params: list[tuple[str, str]] | None = None
                              ) -> dict | None:
        """The JSON object the request answers, or ``None`` on 404."""
        try:
            payload = await self._request_json(method, path, params=params)
        except CommercetoolsError as exc:
            if exc.status_code == 404:
                return None
            raise
        return _expect_object(payload, method, path)

    async def _request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if not response.content:
            raise _invalid_response(method, path, "empty body", response.status_code)
        try:
            return response.json()
        except ValueError:
            raise _invalid_response(method, path, "body is not JSON", response.status_code) from None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: Any = None,
    ) -> httpx.Response:
        """Send one API request with the bearer token; on 401 refetch the token once and resend once."""
        content: bytes | None = None
        headers: dict[str, str] = {}
        if json_body is not None:
            content = encode_json_body(json_body)
            headers["Content-Type"] = "application/json"
        token = await self._access_token()
        response = await self._send(method, path, params, content, headers, token)
        if response.status_code == 401:
            logger.info("commercetools %s %s -> 401; refreshing the access token and retrying once", method, path)
            token = await self._access_token(stale=token)
            response = await self._send(method, path, params, content, headers, token)
        if 200 <= response.status_code < 300:
            return response
        raise error_from_response(response.status_code, response.content, method=method, path=path,
                                  secrets=self._secrets())

    async def _send(self, method: str, path: str, params: list[tuple[str, str]] | None, content: bytes | None,
                    headers: dict[str, str], token: str) -> httpx.Response:
        started = time.monotonic()
        try:
            response = await self._http.request(
                method, self.api_url + path, params=params or None, content=content,
                headers={**headers, "Authorization": f"Bearer {token}"},
            )
        except httpx.TransportError as exc:
            code, message = transport_failure(exc, self._scrub)
            raise CommercetoolsTransportError(message, code=code, method=method, path=path) from None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("commercetools %s %s -> %s (%.0f ms)", method, path, response.status_code,
                         (time.monotonic() - started) * 1000)
        return response


# ---------------------------------------------------------------------------------------------------
# mapping helpers
# ---------------------------------------------------------------------------------------------------
def custom_object_key_for_email(email: str) -> str:
    """CustomObject key for an email address: sha256 hex of the trimmed, lower-cased address.

    CustomObject keys must match ``^[-_~.a-zA-Z0-9]+$``, so an address (with ``@``) cannot be a key,
    hence the hash. The result is 64 characters, within the 256 limit.
    """
    if not isinstance(email, str) or not email.strip():
        raise ValueError("email must be a non-empty string")
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def predicate_string(value: str) -> str:
    """A double-quoted string literal for a query predicate, with ``"`` and ``\\`` escaped.

    ``f"email = {predicate_string(email)}"`` -> ``email = "jane@example.com"``.
    """
    if not isinstance(value, str):
        raise TypeError("predicate_string expects a str")
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _segment(value: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return quote(value, safe="")


def _custom_object_part(value: str, name: str) -> str:
    if not isinstance(value, str) or not _CUSTOM_OBJECT_PART_RE.match(value) or len(value) > 256:
        raise ValueError(f"CustomObject {name} must be 1-256 characters of [-_~.a-zA-Z0-9], got {value!r}")
    return value


def _check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}")


def _check_strings(values: Sequence[str], name: str) -> None:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a single string")
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(f"every {name} value must be a non-empty string")


def _expand_params(expand: Sequence[str]) -> list[tuple[str, str]]:
    _check_strings(expand, "expand")
    return [("expand", e) for e in expand]


def _extra_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            out.append((name, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return out


def _expect_object(payload: Any, method: str, path: str) -> dict:
    if not isinstance(payload, dict):
        raise _invalid_response(method, path, "expected a JSON object")
    return payload


def _invalid_response(method: str, path: str, reason: str, status_code: int | None = None) -> CommercetoolsError:
    # A 2xx we cannot understand (e.g. an HTML page from a proxy): reported as retryable.
    return CommercetoolsError(status_code, "INVALID_RESPONSE", f"unexpected response: {reason}", [],
                              method=method, path=path, retryable=True)

