"""Async Dotdigital API client (httpx).

Covers what the sync service needs of the Dotdigital API (https://developer.dotdigital.com/):

* region discovery: ``GET /v2/account-info`` on r1 (or an explicit base URL), then every call goes to the
  account's ``ApiEndpoint`` property; discovered once per client, concurrency-safe;
* contacts v3 single upsert ``PATCH /contacts/v3/{identifier}/{value}`` and ``GET``;
* contacts v3 bulk import ``PUT /contacts/v3/import`` and its status;
* insight data v3: collections, single record upsert / read / delete for a contact or the account
  (catalog), and the bulk import ``PUT /insightData/v3/import`` with its status;
* v2 data fields and address books: list, create, list membership removal;
* the back-sync feeds: ``GET /v2/contacts/suppressed-since/{date}``,
  ``GET /v2/contacts/unsubscribed-since/{date}`` and ``GET /contacts/v3?~modified=gte::<ts>`` (paged by marker);
* the Events API export subscriptions (``events.json``): create / list / get / update / delete a subscription,
  and read its queued events page by page with a checkpoint (``read_events``);
* programs (Dotdigital API docs: Programs): list / get programs, enrol contacts
  (``POST /v2/programs/enrolments``, asynchronous, at most 20 calls an hour per account), enrolment status and
  the CSV fault report of the contacts that were not enrolled.

Bulk imports are asynchronous: ``start_*_import`` returns the ``importId``, ``*_import_status`` returns a
report, and ``wait_for_import`` polls until the import is done. An import that failed as a whole is a report
with ``failed=True``, not an exception; rejected items are listed in the report's ``failures``.

Transport rules: HTTP Basic with the API user, JSON in and out (``Accept`` / ``Content-Type:
application/json``), a ``User-Agent``, and a default timeout of 121 s, which Dotdigital asks clients to
allow. The client does **not** retry: every failure is raised as a classified ``DotdigitalError``
(``retryable``, ``throttled``, ``retry_after``; see ``errors.py``) so the outbox owns the retry policy.
Credentials are never logged and never appear in errors or ``repr()``.
"""

from __future__ import annotations

import asyncio
import csv
import http.cookiejar
import io
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx

from ctdd.domain.datafields import is_valid_data_field_name
from ctdd.http_common import check_base_url, encode_json_body, transport_failure

from .errors import (
    DotdigitalError,
    DotdigitalImportTimeout,
    DotdigitalTransportError,
    error_from_response,
    redact_pii,
)

__all__ = [
    "COLLECTION_SCOPES",
    "COLLECTION_TYPES",
    "ENROLMENT_STATUSES",
    "IMPORT_MERGE_OPTIONS",
    "MAX_ENROLMENT_CONTACTS",
    "MERGE_OPTIONS",
    "PROGRAM_STATUSES",
    "R1_BASE_URL",
    "REGION_BASE_URLS",
    "ContactUpsertResult",
    "ContactsImportReport",
    "ContactsPage",
    "EventSubscription",
    "EventsPage",
    "DotdigitalClient",
    "DotdigitalEnrolmentAllowanceExceeded",
    "DotdigitalEnrolmentProcessing",
    "EnrolmentFault",
    "InsightImportReport",
    "Program",
    "ProgramEnrolment",
]

logger = logging.getLogger(__name__)

#: Region discovery is always done on r1, whatever the account's region.
R1_BASE_URL = "https://r1-api.dotdigital.com"
REGION_BASE_URLS: dict[str, str] = {
    "r1": R1_BASE_URL,  # Europe
    "r2": "https://r2-api.dotdigital.com",  # North America
    "r3": "https://r3-api.dotdigital.com",  # Asia Pacific
}
#: ``merge-option`` query values of the v3 PATCH upsert (kebab-case, unlike the bulk import's camelCase).
MERGE_OPTIONS = ("overwrite", "overwrite-if-not-empty", "overwrite-if-empty")
#: ``mergeOption`` values of the bulk contact import (camelCase).
IMPORT_MERGE_OPTIONS = ("overwrite", "overwriteIfNotEmpty", "overwriteIfEmpty")
#: Insight data collection scopes and types (Insight data v3 spec: ``collectionScope`` / ``collectionType``).
COLLECTION_SCOPES = ("account", "contact")
COLLECTION_TYPES = (
    "cartInsight", "catalog", "consentInsight", "custom", "easyEditorExtensions", "nostoEmailCampaigns", "orders",
    "productCategories", "webInsight", "wishList",
)
#: Recommended per-call timeout.
DEFAULT_TIMEOUT = 121.0
#: the longest request URL sent (path and query). Servers commonly refuse longer ones (414), and httpx
#: refuses URLs over 65,536 characters: a request over it can never succeed, so it fails at once, not
#: retryable (the message is dead-lettered instead of blocking its contact's partition with retries).
MAX_URL_LENGTH = 8192
#: Import statuses meaning "done and applied": the insight spec's enum says ``Complete``, its examples and the
#: contacts import say ``Finished``.
IMPORT_SUCCESS_STATUSES = frozenset({"Finished", "Complete"})
#: Import statuses meaning "done, nothing (more) will be applied" (the Magento 2 connector's list, plus the
#: contacts enum).
IMPORT_FAILURE_STATUSES = frozenset({
    "Failed", "RejectedByWatchdog", "ExceedsAllowedContactLimit", "InvalidFileFormat", "Unknown",
    "NotAvailableInThisVersion",
})

_IDENTIFIER_RE = re.compile(r"^[-A-Za-z0-9_]{1,50}$")  # path param ``identifier`` pattern of the Contacts v3 spec
_COLLECTION_NAME_RE = re.compile(r"^[-A-Za-z_][-A-Za-z0-9_]{1,255}$")  # Insight data v3 spec ``collectionName``
_DATA_FIELD_TYPES = ("String", "Numeric", "Date", "Boolean")
_VISIBILITIES = ("Private", "Public")
_PAGE_SIZE = 1000  # v2 ``select`` maximum
_FORBIDDEN_EXTRA_HEADERS = frozenset({"authorization", "host", "content-length"})
#: Programs (Dotdigital API docs: Programs, and the Programs OpenAPI document).
PROGRAM_STATUSES = ("Draft", "Active", "Deactivated", "ReadOnly")
ENROLMENT_STATUSES = ("NotAvailableInThisVersion", "Processing", "Finished")
#: Contacts one enrolment call may name (the Programs spec's ``contacts`` ``maxItems``).
MAX_ENROLMENT_CONTACTS = 25
ENROLMENT_ALLOWANCE_EXCEEDED = "ERROR_ENROLMENT_ALLOWANCE_EXCEEDED"
ENROLMENT_IS_PROCESSING = "ERROR_ENROLMENT_IS_PROCESSING"
_FAULT_REPORT_COLUMNS = ("Id", "Email", "TelephoneNumber", "Reason")


@dataclass(frozen=True)
class EventSubscription:
    """An Events API export subscription (the Events spec's ``subscription``); ``body`` is the whole object."""

    id: int
    name: str
    status: str  # "active" | "inactive"
    event_types: tuple[str, ...]
    body: dict

    @property
    def active(self) -> bool:
        return self.status == "active"

    @classmethod
    def from_body(cls, body: Any, method: str, path: str) -> EventSubscription:
        if (not isinstance(body, dict) or isinstance(body.get("id"), bool) or not isinstance(body.get("id"), int)
                or not isinstance(body.get("name"), str)):
            raise _invalid_response(method, path, "expected a subscription with an integer id and a name")
        types = tuple(str(t.get("eventType")) for t in body.get("subscribedEventTypes") or [] if isinstance(t, dict))
        return cls(body["id"], body["name"], str(body.get("status") or "inactive"), types, body)


@dataclass(frozen=True)
class EventsPage:
    """One ``GET /events/v3/export/{id}`` answer: the events (oldest first) and the checkpoint to pass next time
    (passing it acknowledges these events). No events: caught up."""

    checkpoint: str
    events: list[dict]


@dataclass(frozen=True)
class ContactUpsertResult:
    """Outcome of ``PATCH /contacts/v3/{identifier}/{value}``.

    ``created`` is true for 201 (new contact), false for 200 (updated). ``email_status`` is the email
    channel status from the response (``channelProperties.email.status``) - e.g. still ``suppressed`` /
    ``unsubscribed`` after a PATCH on a suppressed contact. ``body`` is the full v3 read model.
    """

    contact_id: int
    created: bool
    status_code: int
    email_status: str | None
    body: dict


@dataclass(frozen=True)
class ContactsPage:
    """One page of ``GET /contacts/v3``: the contacts and the marker of the next page (``None``: last)."""

    items: list[dict]
    next_marker: str | None


class _ImportReport:
    """What the contacts and the insight import reports share: reading the common fields of the status body
    (``importId``, ``status``, ``summary``, ``failures``) and telling whether the import is over. Each report
    is a frozen dataclass that adds its own fields through ``_fields_of``."""

    finished: bool  # fields of the dataclasses (annotations only: a plain class adds no dataclass fields)
    failed: bool

    @property
    def done(self) -> bool:
        return self.finished or self.failed

    @classmethod
    def from_body(cls: type[_Report], body: dict) -> _Report:
        status = str(body.get("status") or "")
        return cls(
            import_id=str(body.get("importId") or ""),
            status=status,
            finished=status in IMPORT_SUCCESS_STATUSES,
            failed=status in IMPORT_FAILURE_STATUSES,
            summary=dict(body.get("summary") or {}),
            failures=list(body.get("failures") or []),
            body=body,
            **cls._fields_of(body),
        )

    @staticmethod
    def _fields_of(body: dict) -> dict[str, Any]:
        """The report's own fields, read from the status ``body``."""
        return {}


_Report = TypeVar("_Report", bound=_ImportReport)


@dataclass(frozen=True)
class ContactsImportReport(_ImportReport):
    """``GET /contacts/v3/import/{importId}``.

    ``finished``: done and applied (``Finished``); ``failed``: done as a whole failure (``Failed``,
    ``RejectedByWatchdog``, ``ExceedsAllowedContactLimit``, ...); neither: still running (``NotFinished``).
    ``created`` / ``updated`` are ``[{contactId, identifiers}]`` - how bulk-created contacts' ids are learnt.
    ``failures`` are ``[{contactId?, matchIdentifier, identifiers, failures: [{failureCode, description}]}]``;
    a contact can be both updated and in ``failures`` (e.g. ``consentRecordsNotApplied``). ``summary`` has
    ``newContacts``, ``updatedContacts``, ``globallySuppressed``, ``invalidEntries``, ``duplicateIdentifiers``.
    """

    import_id: str
    status: str
    finished: bool
    failed: bool
    summary: dict
    created: list[dict]
    updated: list[dict]
    failures: list[dict]
    body: dict

    def failure_codes(self, identifier: str, value: Any) -> list[str]:
        """The failure codes reported for the item with ``identifiers[identifier] == value`` (emails compare
        case-insensitively). Codes are returned as sent; Dotdigital mixes PascalCase and camelCase."""
        wanted = str(value).casefold() if identifier == "email" else str(value)
        codes: list[str] = []
        for entry in self.failures:
            sent = (entry.get("identifiers") or {}).get(identifier)
            if sent is not None and (str(sent).casefold() if identifier == "email" else str(sent)) == wanted:
                codes += [str(f.get("failureCode")) for f in entry.get("failures") or [] if isinstance(f, dict)]
        return codes

    @staticmethod
    def _fields_of(body: dict) -> dict[str, Any]:
        return {"created": list(body.get("created") or []), "updated": list(body.get("updated") or [])}


@dataclass(frozen=True)
class InsightImportReport(_ImportReport):
    """``GET /insightData/v3/import/{importId}``.

    ``finished``: ``Finished`` or ``Complete`` (the spec disagrees with itself, so both count as success);
    ``failed``: ``Failed`` and the other terminal failures the Magento 2 connector knows; neither: ``NotStarted`` /
    ``Processing``.
    ``summary`` has ``totalRecords``, ``totalImported``, ``totalRejected``; ``failures`` are
    ``[{collectionOwner{ownerType, contactIdentity?}, failureReason, details, key, json}]`` - e.g.
    ``ContactEmailDoesNotExist`` for a record whose contact does not exist (the call itself still got 202).
    """

    import_id: str
    status: str
    finished: bool
    failed: bool
    collection_name: str | None
    summary: dict
    failures: list[dict]
    body: dict

    def failure_reasons(self) -> dict[str, str]:
        """``{record key: failureReason}`` of the rejected records (keys of different contacts may collide)."""
        return {str(f.get("key")): str(f.get("failureReason")) for f in self.failures if isinstance(f, dict)}

    @staticmethod
    def _fields_of(body: dict) -> dict[str, Any]:
        return {"collection_name": body.get("collectionName")}


@dataclass(frozen=True)
class Program:
    """A program (automation): ``GET /v2/programs`` / ``GET /v2/programs/{id}`` (the Programs spec's
    ``programDetails``). ``status`` is ``Draft``, ``Active``, ``Deactivated`` or ``ReadOnly``; only an
    ``Active`` program accepts enrolments. ``date_created`` is the string Dotdigital sent."""

    id: int
    name: str
    status: str
    date_created: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "Active"


@dataclass(frozen=True)
class ProgramEnrolment:
    """A program enrolment (the Programs spec's ``ApiProgramEnrolment``): ``POST /v2/programs/enrolments`` and
    ``GET /v2/programs/enrolments/{id}``. ``status`` is ``Processing`` until Dotdigital has processed it, then
    ``Finished`` (``NotAvailableInThisVersion`` also exists). ``contacts`` / ``address_books`` are the ids the
    enrolment was made for (empty when Dotdigital does not echo them)."""

    id: str
    status: str
    program_id: int
    date_created: str | None = None
    contacts: tuple[int, ...] = ()
    address_books: tuple[int, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status == "Finished"

    @classmethod
    def from_body(cls, body: Any, method: str, path: str) -> ProgramEnrolment:
        if not isinstance(body, dict):
            raise _invalid_response(method, path, "expected an enrolment object")
        enrolment_id, status, program_id = body.get("id"), body.get("status"), body.get("programId")
        if (not isinstance(enrolment_id, str) or not enrolment_id or not isinstance(status, str)
                or isinstance(program_id, bool) or not isinstance(program_id, int)):
            raise _invalid_response(method, path, "enrolment without id, status or programId")

        def ids(name: str) -> tuple[int, ...]:
            value = body.get(name)
            if not isinstance(value, list):
                return ()
            return tuple(i for i in value if isinstance(i, int) and not isinstance(i, bool))

        created = body.get("dateCreated")
        return cls(id=enrolment_id, status=status, program_id=program_id,
                   date_created=created if isinstance(created, str) else None,
                   contacts=ids("contacts"), address_books=ids("addressBooks"))


@dataclass(frozen=True)
class EnrolmentFault:
    """One row of an enrolment's fault report (a contact that was not enrolled): ``contact_id`` (``None`` if
    the row had none), ``email`` and ``phone`` (``None`` when empty) and ``reason`` as Dotdigital spells it,
    e.g. ``Unsubcribed`` [sic], ``Suppressed``, ``AlreadyInProgram``, ``PendingOptIn``. Holds PII."""

    contact_id: int | None
    email: str | None
    phone: str | None
    reason: str


class DotdigitalEnrolmentAllowanceExceeded(DotdigitalError):
    """400 ``ERROR_ENROLMENT_ALLOWANCE_EXCEEDED``: the account made its 20 enrolment calls of the rolling hour
    (across all programs). Retryable, but only enrolments must wait, so ``throttled`` stays false (the rest of
    the account's calls are not limited). Dotdigital says nothing of when a slot frees up, so ``retry_after`` is
    ``None``: a caller that keeps its own log of enrolment calls knows better (an hour after its oldest one)."""

    def __init__(self, description: str = "", **kwargs: Any) -> None:
        kwargs["retryable"] = True
        kwargs.setdefault("code", ENROLMENT_ALLOWANCE_EXCEEDED)
        super().__init__(description, **kwargs)


class DotdigitalEnrolmentProcessing(DotdigitalError):
    """400 ``ERROR_ENROLMENT_IS_PROCESSING``: the fault report of an enrolment that is still ``Processing``.
    Retryable: ask again later."""

    def __init__(self, description: str = "", **kwargs: Any) -> None:
        kwargs["retryable"] = True
        kwargs.setdefault("code", ENROLMENT_IS_PROCESSING)
        super().__init__(description, **kwargs)


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing. The API authenticates every call and needs no cookies, and httpx's
    cookie handling (matching the jar on every request, parsing every response into it) was about 5 % of
    the dispatcher's CPU per delivered message."""

    def extract_cookies(self, response, request) -> None:
        pass

    def add_cookie_header(self, request) -> None:
        pass

    def __len__(self) -> int:
        return 0



def _page(select: int, skip: int) -> dict[str, int]:
    """The paging parameters of a v2 list call: ``skip`` left out on the first page (the programs API declares
    it with a minimum of 1; every v2 list starts at the first record without it)."""
    return {"select": select, "skip": skip} if skip else {"select": select}

class DotdigitalClient:
    """Async client for one Dotdigital API user.

    Args:
        api_user: API user name (``apiuser-...@apiconnector.com``).
        password: API user password. Only used for the ``Authorization`` header; never logged.
        base_url: explicit base URL (e.g. a sandbox or ``CTDD_DOTDIGITAL_BASE_URL``). With discovery on,
            account-info is fetched from here instead of r1.
        region: ``r1`` / ``r2`` / ``r3``; used as the base URL when ``discover_endpoint`` is false and no
            ``base_url`` is given. Discovery always starts on r1 as documented.
        discover_endpoint: resolve the account's ``ApiEndpoint`` via ``GET /v2/account-info`` before the
            first call (cached for the client's lifetime).
        timeout: per-request timeout in seconds (connect, read, write and pool).
        transport: custom httpx transport (tests, proxies).
        user_agent: ``User-Agent`` header value.
        integration_token: optional Dotdigital partner ``x-ddg-integration-token`` sent on every call.
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
            check_base_url(base_url)

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
            cookies=_NoCookies(),
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

        Discovery: ``GET /v2/account-info`` on the discovery base, read property ``ApiEndpoint``
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
            check_base_url(str(value))
        except ValueError as exc:
            raise DotdigitalError(f"Invalid ApiEndpoint in account-info: {exc}", code="INVALID_API_ENDPOINT") from None
        if urlsplit(self.discovery_base_url).scheme == "https" and urlsplit(str(value)).scheme != "https":
            raise DotdigitalError("ApiEndpoint downgrades https to http; refusing to send credentials",
                                  code="INVALID_API_ENDPOINT")
        return _strip(str(value))

    # -- v2 account -----------------------------------------------------------------------------------
    async def account_info(self) -> dict:
        """``GET /v2/account-info`` on the account's endpoint: ``{id, properties: [{name, type, value}]}``."""
        info = await self._request_json("GET", await self.api_endpoint(), "/v2/account-info", expect=dict)
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
        """Create or update one contact: ``PATCH /contacts/v3/{identifier}/{value}?merge-option=``.

        ``identifier`` is ``email``, ``mobileNumber``, ``contactId`` or a custom identifier; ``value`` is
        percent-encoded as one path segment (``+`` -> ``%2B``, ``@`` -> ``%40``). ``body`` is the v3 write model
        and is sent as-is. Returns 201 -> ``created=True``, 200 -> ``created=False``.
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
        """``GET /contacts/v3/{identifier}/{value}`` -> the v3 read model, or ``None`` on 404."""
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

    async def delete_contact(self, identifier: str, value: str, *, headers: dict[str, str] | None = None) -> bool:
        """``DELETE /contacts/v3/{identifier}/{value}`` -> ``True`` when deleted (200 ``{contactId}``, or 204),
        ``False`` when there was no such contact (404 ``contacts:contactNotFound``: already gone).

        Other errors raise a classified ``DotdigitalError``; ``value`` is percent-encoded as for the upsert.
        """
        path = _contact_path(identifier, value)
        try:
            await self._request("DELETE", await self.api_endpoint(), path, headers=headers)
        except DotdigitalError as exc:
            if exc.status_code == 404 and exc.code in (None, "", "contacts:contactNotFound"):
                return False
            raise
        return True

    # -- v2 data fields -------------------------------------------------------------------------------
    async def list_data_fields(self) -> list[dict]:
        """``GET /v2/data-fields`` -> ``[{name, type, visibility, defaultValue}]``."""
        payload = await self._request_json("GET", await self.api_endpoint(), "/v2/data-fields", expect=list)
        return payload

    async def create_data_field(
        self, name: str, type: str = "String", visibility: str = "Private", default_value: Any = None  # noqa: A002
    ) -> bool:
        """``POST /v2/data-fields``; returns ``False`` if the field already existed.

        Dotdigital answers ``400 "Field already exists. ERROR_NON_UNIQUE_DATAFIELD"`` for an existing name,
        which makes "ensure field exists" idempotent. The name (max 20 chars of ``[A-Za-z0-9_-]``), type and
        visibility are checked locally first (``ValueError``) to save an API call.
        """
        if not is_valid_data_field_name(name):
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
        """``GET /v2/address-books`` (all pages of ``select=1000``) -> ``[{id, name, visibility, contacts}]``."""
        endpoint = await self.api_endpoint()
        books: list[dict] = []
        skip = 0
        while True:
            page = await self._request_json(
                "GET", endpoint, "/v2/address-books", params=_page(_PAGE_SIZE, skip), expect=list
            )
            books.extend(page)
            if len(page) < _PAGE_SIZE:
                return books
            skip += _PAGE_SIZE

    async def create_address_book(self, name: str, visibility: str = "Private") -> dict:
        """``POST /v2/address-books`` ``{name, visibility}`` -> ``{id, name, visibility, contacts}``.

        ``name`` is 1-128 characters, unique in the account (else ``ERROR_ADDRESSBOOK_DUPLICATE``, raised as a
        ``DotdigitalError``); checked locally first (``ValueError``).
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise ValueError("address book name must be 1-128 characters")
        if visibility not in _VISIBILITIES:
            raise ValueError(f"address book visibility must be one of {_VISIBILITIES}, got {visibility!r}")
        payload = await self._request_json("POST", await self.api_endpoint(), "/v2/address-books",
                                           json_body={"name": name, "visibility": visibility})
        if not isinstance(payload, dict) or isinstance(payload.get("id"), bool) or not isinstance(payload.get("id"), int):
            raise _invalid_response("POST", "/v2/address-books", "expected the created list with an integer id")
        return payload

    async def remove_contact_from_address_book(self, address_book_id: int, contact_id: int) -> None:
        """``DELETE /v2/address-books/{addressBookId}/contacts/{contactId}`` -> 204.

        v3 PATCH ``lists`` only ever adds memberships; removal is this v2 call. Raises ``DotdigitalError``
        (404 ``ERROR_ADDRESSBOOK_NOT_FOUND`` / ``ERROR_CONTACT_NOT_FOUND``) when either does not exist.
        """
        for name, number in (("address_book_id", address_book_id), ("contact_id", contact_id)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"{name} must be a non-negative int")
        await self._request(
            "DELETE", await self.api_endpoint(), f"/v2/address-books/{address_book_id}/contacts/{contact_id}"
        )

    # -- back-sync feeds ------------------------------------------------------------------------------
    async def suppressed_since(self, since: datetime, *, select: int = _PAGE_SIZE, skip: int = 0) -> list[dict]:
        """``GET /v2/contacts/suppressed-since/{date}?select=&skip=`` -> one page of
        ``[{suppressedContact: {id, email, ...}, dateRemoved, reason}]`` (unsubscribes, bounces, complaints ...).

        ``since`` must be timezone-aware (sent as UTC); ``select`` 1-1000 and ``skip`` >= 0 are checked locally
        (``ValueError``). A page shorter than ``select`` is the last one.
        """
        return await self._suppression_feed("suppressed-since", since, select, skip)

    async def unsubscribed_since(self, since: datetime, *, select: int = _PAGE_SIZE, skip: int = 0) -> list[dict]:
        """``GET /v2/contacts/unsubscribed-since/{date}?select=&skip=`` -> one page, same shape as
        :meth:`suppressed_since`, of the contacts who unsubscribed (reason ``Unsubscribed``)."""
        return await self._suppression_feed("unsubscribed-since", since, select, skip)

    async def _suppression_feed(self, feed: str, since: datetime, select: int, skip: int) -> list[dict]:
        for name, number, low, high in (("select", select, 1, _PAGE_SIZE), ("skip", skip, 0, 2**31 - 1)):
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise ValueError(f"{name} must be an int between {low} and {high}, got {number!r}")
        path = f"/v2/contacts/{feed}/{quote(_utc_timestamp(since), safe=':')}"
        payload = await self._request_json("GET", await self.api_endpoint(), path,
                                           params=_page(select, skip))
        if not isinstance(payload, list) or not all(isinstance(item, dict) for item in payload):
            raise _invalid_response("GET", path, "expected a JSON array of suppressions")
        return payload

    async def contacts_modified_since(
        self, since: datetime, *, include: tuple[str, ...] = ("channelProperties",), limit: int = 1000,
        marker: str | None = None, data_fields: tuple[str, ...] = (),
    ) -> ContactsPage:
        """``GET /contacts/v3?~modified=gte::<since>&include=&limit=&marker=`` -> one :class:`ContactsPage`.

        Contacts come in ascending order of modification; pass ``page.next_marker`` back as ``marker`` for
        the next page (``None`` when this was the last). ``include`` names extra data sets
        (``channelProperties``, ``lists``, ``preferences``, ``consentRecords``), ``data_fields`` data fields to
        return; ``limit`` is 1-5000 (checked locally, ``ValueError``).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 5000:
            raise ValueError(f"limit must be an int between 1 and 5000, got {limit!r}")
        for name in include:
            _check_choice("include", name, ("channelProperties", "lists", "preferences", "consentRecords"))
        params: dict[str, Any] = {"~modified": f"gte::{_utc_timestamp(since)}", "limit": limit}
        if include:
            params["include"] = "|".join(include)
        if data_fields:
            params["data-fields"] = "|".join(data_fields)
        if marker is not None:
            params["marker"] = marker
        payload = await self._request_json("GET", await self.api_endpoint(), "/contacts/v3", params=params)
        if not isinstance(payload, dict) or not isinstance(payload.get("_items"), list):
            raise _invalid_response("GET", "/contacts/v3", "expected {_items, _links}")
        links = payload.get("_links") if isinstance(payload.get("_links"), dict) else {}
        nxt = links.get("next") if isinstance(links.get("next"), dict) else {}
        next_marker = nxt.get("marker") if isinstance(nxt.get("marker"), str) and nxt.get("marker") else None
        if next_marker is not None and next_marker == marker:
            raise _invalid_response("GET", "/contacts/v3", "paging made no progress (same marker)")
        return ContactsPage(items=[i for i in payload["_items"] if isinstance(i, dict)], next_marker=next_marker)

    # -- Events API export subscriptions (events.json) -------------------------------------------------
    async def list_event_subscriptions(self) -> list[EventSubscription]:
        """``GET /events/v3/export/subscriptions`` (every page, by ``marker``)."""
        out: list[EventSubscription] = []
        marker: str | None = None
        path = "/events/v3/export/subscriptions"
        while True:
            params: dict[str, Any] = {"limit": 2000}
            if marker:
                params["marker"] = marker
            payload = await self._request_json("GET", await self.api_endpoint(), path, expect=dict, params=params)
            if not isinstance(payload.get("_items"), list):
                raise _invalid_response("GET", path, "expected {_items, _links}")
            out += [EventSubscription.from_body(item, "GET", path) for item in payload["_items"]]
            nxt = (payload.get("_links") or {}).get("next") if isinstance(payload.get("_links"), dict) else None
            next_marker = nxt.get("marker") if isinstance(nxt, dict) and isinstance(nxt.get("marker"), str) else None
            if not next_marker or next_marker == marker or not payload["_items"]:
                return out
            marker = next_marker

    async def create_event_subscription(self, name: str, event_types: list[str | dict], *, status: str = "active",
                                        alerts: dict | None = None) -> EventSubscription:
        """``POST /events/v3/export/subscriptions`` -> the created subscription (201). A name in use ->
        ``DotdigitalError`` 409 ``events:nameAlreadyExists``. ``event_types`` are type names or
        ``{eventType, filters}`` objects."""
        path = "/events/v3/export/subscriptions"
        body = _subscription_request(name, event_types, status, alerts)
        payload = await self._request_json("POST", await self.api_endpoint(), path, json_body=body)
        return EventSubscription.from_body(payload, "POST", path)

    async def get_event_subscription(self, subscription_id: int) -> EventSubscription:
        """``GET /events/v3/export/subscriptions/{id}``; unknown -> ``DotdigitalSubscriptionNotFound``."""
        path = f"/events/v3/export/subscriptions/{_subscription_segment(subscription_id)}"
        return EventSubscription.from_body(await self._request_json("GET", await self.api_endpoint(), path),
                                           "GET", path)

    async def update_event_subscription(self, subscription_id: int, name: str, event_types: list[str | dict], *,
                                        status: str = "active", alerts: dict | None = None) -> EventSubscription:
        """``PUT /events/v3/export/subscriptions/{id}`` with the whole ``subscriptionRequest`` (e.g. to make an
        inactive subscription active again)."""
        path = f"/events/v3/export/subscriptions/{_subscription_segment(subscription_id)}"
        body = _subscription_request(name, event_types, status, alerts)
        payload = await self._request_json("PUT", await self.api_endpoint(), path, json_body=body)
        return EventSubscription.from_body(payload, "PUT", path)

    async def delete_event_subscription(self, subscription_id: int) -> None:
        """``DELETE /events/v3/export/subscriptions/{id}`` (204). Its queued events are lost."""
        await self._request("DELETE", await self.api_endpoint(),
                            f"/events/v3/export/subscriptions/{_subscription_segment(subscription_id)}")

    async def read_events(self, subscription_id: int, *, checkpoint: str | None = None,
                          limit: int = 2000) -> EventsPage:
        """``GET /events/v3/export/{id}?limit=&checkPoint=`` -> one :class:`EventsPage`.

        Passing ``checkpoint`` (the one of the previous page) acknowledges that page's events. ``limit`` is
        1-5000 (checked locally, ``ValueError``). Errors: ``DotdigitalInactiveSubscription`` (409),
        ``DotdigitalInvalidCheckpoint`` (400), ``DotdigitalSubscriptionNotFound`` (404).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 5000:
            raise ValueError(f"limit must be an int between 1 and 5000, got {limit!r}")
        path = f"/events/v3/export/{_subscription_segment(subscription_id)}"
        params: dict[str, Any] = {"limit": limit}
        if checkpoint is not None:
            params["checkPoint"] = checkpoint
        payload = await self._request_json("GET", await self.api_endpoint(), path, expect=dict, params=params)
        events = payload.get("events")
        if not isinstance(payload.get("checkPoint"), str) or not isinstance(events, list):
            raise _invalid_response("GET", path, "expected {checkPoint, events}")
        return EventsPage(checkpoint=payload["checkPoint"], events=[e for e in events if isinstance(e, dict)])

    # -- contacts v3 bulk import ---------------------------------------------------------------------
    async def start_contacts_import(
        self, contacts: list[dict], *, merge_option: str = "overwrite", headers: dict[str, str] | None = None
    ) -> str:
        """``PUT /contacts/v3/import`` ``{mergeOption, contacts}`` -> the ``importId`` of the 202.

        Each item is a v3 write model with the import-only ``matchIdentifier`` and ``identifiers``
        (the Contacts v3 spec requires both; checked locally, ``ValueError``). ``merge_option`` is camelCase here
        (``overwrite`` | ``overwriteIfNotEmpty`` | ``overwriteIfEmpty``), unlike the PATCH. Items are sent as
        given. At most 25 imports may run at once: a 26th raises ``DotdigitalThrottled`` with
        ``too_many_imports`` set (429 ``contacts:tooManyActiveImports``).
        """
        if merge_option not in IMPORT_MERGE_OPTIONS:
            raise ValueError(f"merge_option must be one of {IMPORT_MERGE_OPTIONS}, got {merge_option!r}")
        if not isinstance(contacts, list) or not contacts:
            raise ValueError("contacts must be a non-empty list")
        for index, item in enumerate(contacts):
            if not isinstance(item, dict):
                raise TypeError(f"contacts[{index}] must be a dict (the v3 contact write model)")
            if not isinstance(item.get("matchIdentifier"), str) or not isinstance(item.get("identifiers"), dict):
                raise ValueError(f"contacts[{index}] needs a matchIdentifier and an identifiers object")
        body = {"mergeOption": merge_option, "contacts": contacts}
        return await self._start_import("/contacts/v3/import", body, headers)

    async def contacts_import_status(self, import_id: str) -> ContactsImportReport:
        """``GET /contacts/v3/import/{importId}`` -> ``ContactsImportReport``; 404 ``contacts:importNotFound``
        raises ``DotdigitalError``."""
        path = f"/contacts/v3/import/{_import_id_segment(import_id)}"
        payload = await self._request_json("GET", await self.api_endpoint(), path)
        if not isinstance(payload, dict) or not isinstance(payload.get("status"), str):
            raise _invalid_response("GET", path, "expected an import status object")
        return ContactsImportReport.from_body(payload)

    # -- insight data v3 ------------------------------------------------------------------------------
    async def create_collection(self, name: str, *, scope: str, collection_type: str) -> bool:
        """``POST /insightData/v3/collections/{name}?collectionScope=&collectionType=``.

        Returns ``True`` when created (201), ``False`` when it already existed (200). More than 1000
        collections -> ``DotdigitalError`` 412. Name, scope and type are checked locally (``ValueError``).
        """
        path = _collection_path(name)
        _check_choice("scope", scope, COLLECTION_SCOPES)
        _check_choice("collection_type", collection_type, COLLECTION_TYPES)
        response = await self._request(
            "POST", await self.api_endpoint(), path,
            params={"collectionScope": scope, "collectionType": collection_type},
        )
        if response.status_code not in (200, 201):
            raise _invalid_response("POST", path, f"unexpected HTTP {response.status_code}")
        return response.status_code == 201

    async def list_collections(self) -> list[dict]:
        """``GET /insightData/v3/collections`` -> ``[{collectionName, collectionType, collectionScope,
        recordCount}]`` of both scopes."""
        payload = await self._request_json("GET", await self.api_endpoint(), "/insightData/v3/collections",
                                           expect=list)
        return payload

    async def upsert_insight_record(
        self,
        collection: str,
        record_id: str,
        record: dict,
        *,
        identifier: str,
        value: str,
        headers: dict[str, str] | None = None,
    ) -> int:
        """``PUT /insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}`` -> 201 or 204.

        ``record`` is the record's JSON object, sent as the body (it becomes ``json``; the key is
        ``record_id``). Returns the status: 201 created, 204 replaced. The contact and the collection must
        exist: 404 ``insightData:contactNotFound`` / ``insightData:collectionNotFound`` raise a non-retryable
        ``DotdigitalError``. A record that breaks the collection's locked schema is a 400 whose
        ``failure_reason`` is e.g. ``JsonValueIncompatibleWithSchema``.
        """
        path = _insight_contact_path(identifier, value, collection, record_id)
        return await self._put_record(path, record, headers)

    async def upsert_account_record(
        self, collection: str, record_id: str, record: dict, headers: dict[str, str] | None = None
    ) -> int:
        """``PUT /insightData/v3/account/{collection}/{recordId}`` -> 201 created / 204 replaced
        (account-scoped collections such as the product catalog)."""
        return await self._put_record(_insight_account_path(collection, record_id), record, headers)

    async def get_insight_record(
        self, collection: str, record_id: str, *, identifier: str, value: str
    ) -> dict | None:
        """``GET`` of a contact's record -> ``{key, json, created, updated, ownerContactId}``, or ``None`` when
        the record does not exist. A missing contact or collection is an error, not ``None``."""
        return await self._get_record(_insight_contact_path(identifier, value, collection, record_id))

    async def get_account_record(self, collection: str, record_id: str) -> dict | None:
        """``GET /insightData/v3/account/{collection}/{recordId}`` -> the record, or ``None`` if it does not exist."""
        return await self._get_record(_insight_account_path(collection, record_id))

    async def delete_insight_record(self, collection: str, record_id: str, *, identifier: str, value: str,
                                    headers: dict[str, str] | None = None) -> bool:
        """``DELETE`` of a contact's record -> ``True`` (204), ``False`` if it did not exist (404
        ``insightData:recordNotFound``). A missing contact or collection is an error, as for ``GET``."""
        return await self._delete_record(_insight_contact_path(identifier, value, collection, record_id), headers)

    async def delete_account_record(self, collection: str, record_id: str) -> bool:
        """``DELETE /insightData/v3/account/{collection}/{recordId}`` -> ``True``, ``False`` if it did not exist."""
        return await self._delete_record(_insight_account_path(collection, record_id))

    async def delete_account_records(self, collection: str, keys: list[str]) -> list[str]:
        """``DELETE /insightData/v3/accounts/{collectionName}/deleteRecords`` with ``{"keys": [...]}`` (1-5,000
        keys; plural ``accounts`` per the Insight data v3 spec) -> the keys that were not found."""
        if not 1 <= len(keys) <= 5000:
            raise ValueError("deleteRecords takes 1 to 5000 keys")
        path = f"/insightData/v3/accounts/{_collection_segment(collection)}/deleteRecords"
        answer = await self._request_json("DELETE", await self.api_endpoint(), path, json_body={"keys": list(keys)},
                                          expect=dict)
        missing = answer.get("notFound")
        return [k for k in missing if isinstance(k, str)] if isinstance(missing, list) else []

    async def start_insight_import(
        self,
        collection: str,
        *,
        scope: str,
        collection_type: str,
        records: list[dict],
        headers: dict[str, str] | None = None,
    ) -> str:
        """``PUT /insightData/v3/import`` -> the ``importId`` of the 202. Creates the collection if missing.

        ``records`` are ``{key: str, json: dict}`` plus, for a contact-scoped collection (and only then),
        ``contactIdentity: {identifier, value}`` with string values; checked locally (``ValueError``).
        Contacts must already exist: records of unknown contacts come back in the report's ``failures``
        (``ContactEmailDoesNotExist`` / ``ContactIdDoesNotExist``) although this call succeeds. At most 5
        imports may run at once: a 6th raises ``DotdigitalThrottled`` with ``too_many_imports`` set.
        """
        _collection_path(collection)
        _check_choice("scope", scope, COLLECTION_SCOPES)
        _check_choice("collection_type", collection_type, COLLECTION_TYPES)
        if not isinstance(records, list) or not records:
            raise ValueError("records must be a non-empty list")
        for index, record in enumerate(records):
            where = f"records[{index}]"
            if not isinstance(record, dict) or set(record) - {"contactIdentity", "key", "json"}:
                raise ValueError(f"{where} must be a dict with only contactIdentity, key and json")
            if not isinstance(record.get("key"), str) or not record["key"]:
                raise ValueError(f"{where}.key must be a non-empty string")
            if not isinstance(record.get("json"), dict):
                raise ValueError(f"{where}.json must be a dict")
            identity = record.get("contactIdentity")
            if scope == "account" and identity is not None:
                raise ValueError(f"{where}: records of an account-scoped collection have no contactIdentity")
            if scope == "contact" and not (
                isinstance(identity, dict)
                and isinstance(identity.get("identifier"), str)
                and isinstance(identity.get("value"), str)
            ):
                raise ValueError(f"{where}.contactIdentity must be {{identifier: str, value: str}}")
        body = {"collectionName": collection, "collectionScope": scope, "collectionType": collection_type,
                "records": records}
        return await self._start_import("/insightData/v3/import", body, headers)

    async def insight_import_status(self, import_id: str) -> InsightImportReport:
        """``GET /insightData/v3/import/{importId}`` -> ``InsightImportReport`` (``Finished`` and ``Complete``
        both count as finished); 404 ``insightData:importNotFound`` raises ``DotdigitalError``."""
        path = f"/insightData/v3/import/{_import_id_segment(import_id)}"
        payload = await self._request_json("GET", await self.api_endpoint(), path)
        if not isinstance(payload, dict) or not isinstance(payload.get("status"), str):
            raise _invalid_response("GET", path, "expected an import status object")
        return InsightImportReport.from_body(payload)

    async def wait_for_import(
        self, import_id: str, *, kind: str, poll_interval: float = 5.0, timeout: float = 600.0
    ) -> ContactsImportReport | InsightImportReport:
        """Poll the status of a ``kind`` (``"contacts"`` or ``"insight"``) import until it is finished or failed.

        Dotdigital suggests polling every 5-30 s. Returns the last report (check ``finished`` /
        ``failed``); after ``timeout`` seconds raises ``DotdigitalImportTimeout`` (retryable: the import goes
        on). Errors of the status calls themselves (throttling, 5xx, ...) are raised as they are.
        """
        if kind not in ("contacts", "insight"):
            raise ValueError("kind must be 'contacts' or 'insight'")
        if poll_interval <= 0 or timeout < 0:
            raise ValueError("poll_interval must be > 0 and timeout >= 0")
        status = self.contacts_import_status if kind == "contacts" else self.insight_import_status
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            report = await status(import_id)
            if report.done:
                return report
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DotdigitalImportTimeout(
                    f"{kind} import {import_id} still {report.status} after {timeout:g}s",
                    method="GET", path=f"/{'contacts' if kind == 'contacts' else 'insightData'}/v3/import/{import_id}",
                )
            await asyncio.sleep(min(poll_interval, remaining))

    async def _start_import(self, path: str, body: dict, headers: dict[str, str] | None) -> str:
        response = await self._request("PUT", await self.api_endpoint(), path, json_body=body, headers=headers)
        payload = _decode_json(response, "PUT", path)
        import_id = payload.get("importId") if isinstance(payload, dict) else None
        if response.status_code != 202 or not isinstance(import_id, str) or not import_id:
            raise _invalid_response("PUT", path, f"expected 202 with an importId, got HTTP {response.status_code}")
        return import_id

    async def _put_record(self, path: str, record: dict, headers: dict[str, str] | None) -> int:
        if not isinstance(record, dict):
            raise TypeError("record must be a dict (the insight record's JSON object)")
        response = await self._request("PUT", await self.api_endpoint(), path, json_body=record, headers=headers)
        if response.status_code not in (201, 204):
            raise _invalid_response("PUT", path, f"expected 201 or 204, got HTTP {response.status_code}")
        return response.status_code

    async def _get_record(self, path: str) -> dict | None:
        try:
            payload = await self._request_json("GET", await self.api_endpoint(), path)
        except DotdigitalError as exc:
            if exc.code == "insightData:recordNotFound":
                return None
            raise
        if not isinstance(payload, dict):
            raise _invalid_response("GET", path, "expected a JSON object")
        return payload

    async def _delete_record(self, path: str, headers: dict[str, str] | None = None) -> bool:
        try:
            await self._request("DELETE", await self.api_endpoint(), path, headers=headers)
        except DotdigitalError as exc:
            if exc.code == "insightData:recordNotFound":
                return False
            raise
        return True

    # -- v2 programs (automation) ---------------------------------------------------------------------
    async def list_programs(self) -> list[Program]:
        """``GET /v2/programs`` (all pages of ``select=1000``) -> every :class:`Program` of the account.
        An account without the Programs permission -> 403, raised as ``DotdigitalAuthError``."""
        endpoint = await self.api_endpoint()
        programs: list[Program] = []
        skip = 0
        while True:
            page = await self._request_json(
                "GET", endpoint, "/v2/programs", params=_page(_PAGE_SIZE, skip), expect=list
            )
            programs.extend(_program_from(item, "/v2/programs") for item in page)
            if len(page) < _PAGE_SIZE:
                return programs
            skip += _PAGE_SIZE

    async def get_program(self, program_id: int) -> Program | None:
        """``GET /v2/programs/{id}`` -> the :class:`Program`, or ``None`` when there is none with that id
        (404 ``ERROR_PROGRAM_NOT_FOUND``)."""
        _check_int32("program_id", program_id, minimum=1)
        path = f"/v2/programs/{program_id}"
        try:
            payload = await self._request_json("GET", await self.api_endpoint(), path)
        except DotdigitalError as exc:
            if exc.code == "ERROR_PROGRAM_NOT_FOUND":
                return None
            raise
        return _program_from(payload, path)

    async def enrol_contacts(
        self, program_id: int, contact_ids: list[int], *, headers: dict[str, str] | None = None
    ) -> ProgramEnrolment:
        """``POST /v2/programs/enrolments`` ``{"programId", "contacts"}`` -> the :class:`ProgramEnrolment` of the
        201 (usually ``Processing``: Dotdigital enrols asynchronously; poll :meth:`get_enrolment`, then read
        :meth:`enrolment_faults` for the contacts that did not enter).

        ``contact_ids`` are 1-25 distinct Dotdigital contact ids (ints), in the order given; checked locally
        (``ValueError``). Errors (``DotdigitalError`` with ``code``):

        * ``ERROR_ENROLMENT_ALLOWANCE_EXCEEDED`` (more than 20 calls in an hour, across all programs; calls
          count, not contacts) -> :class:`DotdigitalEnrolmentAllowanceExceeded`, retryable, not ``throttled``;
        * ``ERROR_PROGRAM_NOT_ACTIVE`` (422), ``ERROR_PROGRAM_NOT_FOUND`` (404), ``ERROR_CONTACT_NOT_FOUND`` (an
          unknown contact id: nobody is enrolled), ``ERROR_ENROLMENT_INVALID``: not retryable;
        * 403 (no Programs permission) -> ``DotdigitalAuthError``.

        The call is not idempotent: a transport error leaves it unknown whether the enrolment was made, and a
        2xx that cannot be read is raised as a *non-retryable* ``INVALID_RESPONSE``.
        """
        _check_int32("program_id", program_id, minimum=1)
        if not isinstance(contact_ids, (list, tuple)):
            raise ValueError("contact_ids must be a list of ints")
        if not 1 <= len(contact_ids) <= MAX_ENROLMENT_CONTACTS:
            raise ValueError(f"contact_ids must hold 1-{MAX_ENROLMENT_CONTACTS} ids, got {len(contact_ids)}")
        for contact_id in contact_ids:
            _check_int32("contact id", contact_id, minimum=1)
        if len(set(contact_ids)) != len(contact_ids):
            raise ValueError("contact_ids must not repeat an id")
        path = "/v2/programs/enrolments"
        body = {"programId": program_id, "contacts": list(contact_ids)}
        try:
            response = await self._request("POST", await self.api_endpoint(), path, json_body=body, headers=headers)
        except DotdigitalError as exc:
            if exc.code == ENROLMENT_ALLOWANCE_EXCEEDED:
                raise DotdigitalEnrolmentAllowanceExceeded(
                    exc.description, status_code=exc.status_code, details=exc.details,
                    response_excerpt=exc.response_excerpt, method=exc.method, path=exc.path,
                ) from exc
            raise
        try:
            return ProgramEnrolment.from_body(_decode_json(response, "POST", path), "POST", path)
        except DotdigitalError as exc:  # the enrolment was probably made: do not invite a blind retry
            raise DotdigitalError(exc.description, code=exc.code, retryable=False, method="POST", path=path) from None

    async def get_enrolment(self, enrolment_id: str) -> ProgramEnrolment:
        """``GET /v2/programs/enrolments/{enrolmentId}`` -> the :class:`ProgramEnrolment` with its current
        ``status``. ``enrolment_id`` must be a GUID (``ValueError``); 404 ``ERROR_ENROLMENT_NOT_FOUND`` raises."""
        path = f"/v2/programs/enrolments/{_enrolment_id_segment(enrolment_id)}"
        payload = await self._request_json("GET", await self.api_endpoint(), path)
        return ProgramEnrolment.from_body(payload, "GET", path)

    async def list_enrolments(self, status: str) -> list[ProgramEnrolment]:
        """``GET /v2/programs/enrolments/{status}`` (all pages of ``select=1000``) -> the enrolments in
        ``status`` (one of ``ENROLMENT_STATUSES``, checked locally)."""
        _check_choice("status", status, ENROLMENT_STATUSES)
        endpoint = await self.api_endpoint()
        path = f"/v2/programs/enrolments/{status}"
        enrolments: list[ProgramEnrolment] = []
        skip = 0
        while True:
            page = await self._request_json("GET", endpoint, path, params=_page(_PAGE_SIZE, skip),
                                            expect=list)
            enrolments.extend(ProgramEnrolment.from_body(item, "GET", path) for item in page)
            if len(page) < _PAGE_SIZE:
                return enrolments
            skip += _PAGE_SIZE

    async def enrolment_faults(self, enrolment_id: str) -> list[EnrolmentFault]:
        """``GET /v2/programs/enrolments/{id}/report-faults`` -> one :class:`EnrolmentFault` per contact of a
        finished enrolment that was not enrolled (``[]``: everybody entered).

        The report is CSV with the header ``Id,Email,TelephoneNumber,Reason``. While the enrolment is still
        ``Processing`` Dotdigital answers 400 ``ERROR_ENROLMENT_IS_PROCESSING``, raised as
        :class:`DotdigitalEnrolmentProcessing` (retryable). An unknown id -> ``DotdigitalError``
        ``ERROR_ENROLMENT_NOT_FOUND``; a report without those columns -> ``INVALID_RESPONSE``.
        """
        path = f"/v2/programs/enrolments/{_enrolment_id_segment(enrolment_id)}/report-faults"
        try:
            response = await self._request("GET", await self.api_endpoint(), path,
                                           headers={"Accept": "text/csv, application/json;q=0.5"})
        except DotdigitalError as exc:
            if exc.code == ENROLMENT_IS_PROCESSING:
                raise DotdigitalEnrolmentProcessing(
                    exc.description, status_code=exc.status_code, details=exc.details,
                    response_excerpt=exc.response_excerpt, method=exc.method, path=exc.path,
                ) from exc
            raise
        return _parse_fault_report(response.content, path)

    # -- HTTP plumbing --------------------------------------------------------------------------------
    async def _request_json(self, method: str, base: str, path: str, *, expect: type | None = None,
                            **kwargs: Any) -> Any:
        """Send the request and decode its JSON body; with ``expect`` (dict or list) the body must be of that type."""
        response = await self._request(method, base, path, **kwargs)
        payload = _decode_json(response, method, path)
        if expect is not None and not isinstance(payload, expect):
            raise _invalid_response(method, path, f"expected a JSON {'object' if expect is dict else 'array'}")
        return payload

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
            content = encode_json_body(json_body)
            request_headers["Content-Type"] = "application/json"
        if len(base) + len(path) > MAX_URL_LENGTH:
            raise DotdigitalError(f"request URL longer than {MAX_URL_LENGTH} characters: it can never succeed",
                                  code="url_too_long", retryable=False, method=method, path=path[:200])
        started = time.monotonic()
        try:
            response = await self._http.request(
                method, base + path, content=content, params=params, headers=request_headers
            )
        except httpx.InvalidURL as exc:  # e.g. over httpx's own limit with the query: never succeeds either
            raise DotdigitalError(f"invalid request URL: {exc}", code="invalid_url", retryable=False,
                                  method=method, path=path[:200]) from exc
        except httpx.TransportError as exc:
            code, message = transport_failure(exc, redact_pii)
            raise DotdigitalTransportError(message, code=code, method=method, path=path) from exc
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
def _utc_timestamp(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.fffZ`` in UTC: the form the v3 ``~modified`` filter requires (Contacts v3 spec), which
    the v2 ``{date}`` path parameters accept too."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError("since must be a timezone-aware datetime")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _strip(url: str) -> str:
    return url.rstrip("/")


def _contact_path(identifier: str, value: str) -> str:
    """``/contacts/v3/{identifier}/{value}`` with both segments fully percent-encoded."""
    return f"/contacts/v3/{_contact_segments(identifier, value)}"


def _contact_segments(identifier: str, value: str) -> str:
    """``{identifier}/{value}``, checked and fully percent-encoded (``+`` -> ``%2B``)."""
    if not isinstance(identifier, str) or not _IDENTIFIER_RE.match(identifier):
        raise ValueError(f"invalid contact identifier {identifier!r}: 1-50 characters of A-Z a-z 0-9 _ -")
    value = str(value)
    if not 1 <= len(value) <= 256:
        raise ValueError("contact identifier value must be 1-256 characters")
    return f"{quote(identifier, safe='')}/{quote(value, safe='')}"


def _collection_segment(name: str) -> str:
    if not isinstance(name, str) or len(name) > 255 or not _COLLECTION_NAME_RE.match(name):
        raise ValueError(f"invalid insight collection name {name!r}: 2-255 characters of A-Z a-z 0-9 _ -, "
                         "not starting with a digit")
    return name  # the pattern leaves nothing to encode


def _record_segment(record_id: str) -> str:
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("record_id must be a non-empty string")
    return quote(record_id, safe="")


def _collection_path(name: str) -> str:
    return f"/insightData/v3/collections/{_collection_segment(name)}"


def _insight_contact_path(identifier: str, value: str, collection: str, record_id: str) -> str:
    """``/insightData/v3/contacts/{identifier}/{value}/{collectionName}/{recordId}``."""
    return (f"/insightData/v3/contacts/{_contact_segments(identifier, value)}/"
            f"{_collection_segment(collection)}/{_record_segment(record_id)}")


def _insight_account_path(collection: str, record_id: str) -> str:
    """``/insightData/v3/account/{collectionName}/{recordId}``."""
    return f"/insightData/v3/account/{_collection_segment(collection)}/{_record_segment(record_id)}"


def _import_id_segment(import_id: str) -> str:
    if not isinstance(import_id, str) or not import_id:
        raise ValueError("import_id must be a non-empty string")
    return quote(import_id, safe="")


def _check_int32(name: str, value: Any, *, minimum: int = -(2**31)) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**31:
        raise ValueError(f"{name} must be an int between {minimum} and {2**31 - 1}, got {value!r}")


def _enrolment_id_segment(enrolment_id: str) -> str:
    """An enrolment id path segment: the GUID in its canonical form (``ValueError`` otherwise)."""
    if not isinstance(enrolment_id, str):
        raise ValueError("enrolment_id must be a GUID string")
    try:
        return str(uuid.UUID(enrolment_id.strip("{}")))
    except ValueError:
        raise ValueError(f"enrolment_id must be a GUID, got {enrolment_id!r}") from None


def _program_from(item: Any, path: str) -> Program:
    if not isinstance(item, dict):
        raise _invalid_response("GET", path, "expected a program object")
    program_id, name, status = item.get("id"), item.get("name"), item.get("status")
    if isinstance(program_id, bool) or not isinstance(program_id, int) or not isinstance(status, str):
        raise _invalid_response("GET", path, "program without an integer id or a status")
    created = item.get("dateCreated")
    return Program(id=program_id, name=str(name or ""), status=status,
                   date_created=created if isinstance(created, str) else None)


def _parse_fault_report(content: bytes, path: str) -> list[EnrolmentFault]:
    """The enrolment fault report CSV (``Id,Email,TelephoneNumber,Reason``; column names matched
    case-insensitively, a UTF-8 BOM and blank lines tolerated) -> the faults."""
    text = content.decode("utf-8-sig", errors="replace")
    if not text.strip():
        return []
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None) or []
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    wanted = [columns.get(name.lower()) for name in _FAULT_REPORT_COLUMNS]
    if any(index is None for index in wanted):
        raise _invalid_response("GET", path, f"fault report without the columns {', '.join(_FAULT_REPORT_COLUMNS)}")
    faults: list[EnrolmentFault] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        id_cell, email, phone, reason = (row[i].strip() if i is not None and i < len(row) else "" for i in wanted)
        faults.append(EnrolmentFault(contact_id=int(id_cell) if id_cell.isdigit() else None, email=email or None,
                                     phone=phone or None, reason=reason))
    return faults


def _subscription_segment(subscription_id: int) -> str:
    if isinstance(subscription_id, bool) or not isinstance(subscription_id, int) or subscription_id < 0:
        raise ValueError(f"subscription id must be a non-negative int, got {subscription_id!r}")
    return str(subscription_id)


def _subscription_request(name: str, event_types: list[str | dict], status: str, alerts: dict | None) -> dict:
    """The Events spec's ``subscriptionRequest`` (checked locally, ``ValueError``)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 50:
        raise ValueError("an event subscription name is 1-50 characters")
    _check_choice("status", status, ("active", "inactive"))
    types = [t if isinstance(t, dict) else {"eventType": t} for t in event_types]
    if not 1 <= len(types) <= 100:
        raise ValueError("an event subscription has 1-100 event types")
    return {"name": name, "status": status, "subscribedEventTypes": types,
            "alertsConfiguration": dict(alerts) if alerts else {"alertChannels": "none"}}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


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
