"""A faithful, in-process Dotdigital API sandbox for tests (stdlib only).

The sandbox is a *real* HTTP server (``http.server.ThreadingHTTPServer``) bound to loopback and run in a
daemon thread, so code under test talks to it over real sockets exactly as it would talk to
``https://r1-api.dotdigital.com``. It implements the subset of the Dotdigital API the sync service uses and
is deliberately strict about the documented rules, so that payload bugs surface in tests rather than in
production. The rules come from the Dotdigital API docs (https://developer.dotdigital.com/) and Dotdigital's
OpenAPI documents published there: "the Contacts v3 spec" (Contacts), "the Insight data v3 spec" or "the
insight spec" (Insight data service) and "the v2 spec" (the v2 API).

Implemented endpoints
---------------------
* ``GET  /v2/account-info`` - region discovery; ``ApiEndpoint`` points at the sandbox itself.
* ``GET|POST /v2/data-fields`` - contact data fields.
* ``GET|POST /v2/address-books`` and ``DELETE /v2/address-books/{id}/contacts/{contactId}``.
* ``GET /v2/contacts/suppressed-since/{date}`` and ``GET /v2/contacts/unsubscribed-since/{date}`` - the
  suppression feeds back-sync polls, fed by every change of a contact's email channel into a
  suppressed status (``suppress()``, a PATCH or an import); ``dateRemoved`` is when that happened.
* ``GET /contacts/v3?~modified=gte::<ts>&include=channelProperties&limit=&marker=`` - contacts modified
  since a time, ascending, paged with ``_links.next.marker`` (SMS opt-outs show here).
* ``PATCH /contacts/v3/{identifier}/{value}`` - single contact upsert,
  ``GET /contacts/v3/{identifier}/{value}`` and ``DELETE /contacts/v3/{identifier}/{value}``.
* ``PUT /contacts/v3/import`` and ``GET /contacts/v3/import/{importId}`` - asynchronous bulk contact import;
  every item goes through the same validation and upsert code as the PATCH.
* Insight data v3: ``POST /insightData/v3/collections/{collectionName}``, ``GET /insightData/v3/collections``,
  ``GET /insightData/v3/account``, ``GET /insightData/v3/collections/{collectionName}/schema``,
  ``PUT|GET|DELETE /insightData/v3/contacts/{identifier}/{value}/{collectionName}/{recordId}``,
  ``PUT|GET|DELETE /insightData/v3/account/{collectionName}/{recordId}`` (catalog) and the asynchronous
  bulk import ``PUT /insightData/v3/import`` + ``GET /insightData/v3/import/{importId}``. Collections lock their
  schema on first write.
* Programs (Dotdigital API docs: Programs, and the Programs OpenAPI document): ``GET /v2/programs``,
  ``GET /v2/programs/{id}``, ``POST /v2/programs/enrolments``, ``GET /v2/programs/enrolments/{enrolmentId}``,
  ``GET /v2/programs/enrolments/{status}`` and ``GET /v2/programs/enrolments/{enrolmentId}/report-faults``.
* Events API export subscriptions (``/events/v3/export/...``, ``ctdd.testing.dotdigital_events``): checkpoints,
  limits, inactivity after 30 days of sandbox time; every change of a contact emits the events Dotdigital would
  (``contact.updated``, ``contact.membershipUpdated``, ``contact.preferenceUpdated``, ``interaction.unsubscribe``
  ...), and ``preference_centre(...)`` acts as the contact in a preference centre.

Bulk imports are accepted with 202 and finish ``import_delay_seconds`` later (default 0.05 s): until then
their status is ``NotFinished`` (contacts) or ``NotStarted`` / ``Processing`` (insight). Items are applied when
the import finishes, against the account state of that moment. ``complete_imports()`` finishes all at once.

Time: ``created`` / ``updated`` / ``dateRemoved`` come from ``sandbox.clock`` (a callable returning an aware
``datetime``; ``None``, the default, is the current time), so tests can place changes in time. Programs run
entirely on that clock too (see below), so a simulation with a virtual clock can run a day in seconds.

Programs: tests set them up with ``add_program(name, status="Active", allow_reentry=False,
start_list_id=None)``, ``set_program_status`` and ``set_program_reentry``; ``programs_enabled = False`` makes the
account lack the Programs permission (403 everywhere below ``/v2/programs``). An enrolment is ``Processing``
for ``enrolment_delay_seconds`` (default 0.2) of *sandbox* time, then ``Finished``; ``finish_enrolments()``
finishes all at once. When it finishes, each contact either enters the program or gets a fault report row
(``Unsubcribed`` [sic], ``Suppressed``, ``PendingOptIn``, ``AlreadyInProgram``: see ``_entry_refusal``).
At most ``enrolment_allowance_per_hour`` (20) calls are accepted per rolling hour of sandbox time, across all
programs. A program with a ``start_list_id`` also starts for every contact that joins that list (v3 PATCH
``lists``, bulk contact imports), once per join, without allowance. ``program_entries(program_id)`` lists who
really entered which program, how (enrolment id or ``"list_join"``) and when: assert exactly-once on it;
``enrolment_calls`` lists every enrolment call with its time and outcome.

Cross-cutting behaviour: HTTP Basic auth on every endpoint, optional per-minute rate limiting with
``X-RateLimit-*`` headers, v2 / v3 error envelopes chosen by path, fault injection
(status, body, headers, latency, dropped connections) and a thread-safe log of every request received,
with the ``Authorization`` header redacted.

Where Dotdigital's behaviour is not documented the sandbox makes a choice and says so in the docstring
of the rule ("sandbox choice"); such choices always err on the side of *rejecting* questionable input.

Usage::

    with DotdigitalSandbox() as sandbox:
        client = DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password,
                                  base_url=sandbox.base_url)
        ...
        assert sandbox.get_contact(email="jane@example.com")["dataFields"]["FIRSTNAME"] == "Jane"
"""

from __future__ import annotations

import base64
import binascii
import copy
import csv
import io
import ipaddress
import json
import logging
import math
import re
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import unquote, urlencode, urlsplit

from ctdd.domain.datafields import is_valid_data_field_name
from ctdd.testing import loopback_http
from ctdd.testing.dotdigital_events import ExportEvents, snapshot

__all__ = [
    "COLLECTION_SCOPES",
    "COLLECTION_TYPES",
    "DEFAULT_ADDRESS_BOOKS",
    "DEFAULT_DATA_FIELDS",
    "ENROLMENT_FAULT_REASONS",
    "ENROLMENT_STATUSES",
    "LIST_JOIN",
    "PROGRAM_STATUSES",
    "DotdigitalSandbox",
    "EnrolmentCall",
    "ProgramEntry",
    "RecordedRequest",
]

logger = logging.getLogger(__name__)

#: Data fields every new sandbox account has (name -> type). The first five are Dotdigital's system
#: defaults; the rest is a commerce set modelled on the Magento 2 connector's fields.
DEFAULT_DATA_FIELDS: dict[str, str] = {
    "FIRSTNAME": "String",
    "LASTNAME": "String",
    "FULLNAME": "String",
    "GENDER": "String",
    "POSTCODE": "String",
    "TITLE": "String",
    "MIDDLENAME": "String",
    "COMPANY": "String",
    "CUSTOMER_ID": "String",
    "DOB": "Date",
    "CUSTOMER_GROUP": "String",
    "STORE": "String",
    "LOCALE": "String",
    "CURRENCY": "String",
    "BILLING_CITY": "String",
    "BILLING_COUNTRY": "String",
    "BILLING_POSTCODE": "String",
    "DELIVERY_CITY": "String",
    "DELIVERY_COUNTRY": "String",
    "DELIVERY_POSTCODE": "String",
    "NUMBER_OF_ORDERS": "Numeric",
    "TOTAL_SPEND": "Numeric",
    "LAST_ORDER_DATE": "Date",
}

#: System data fields are public in Dotdigital's examples (spec GET /v2/data-fields example); custom ones
#: default to ``Private``.
_SYSTEM_DATA_FIELDS = frozenset({"FIRSTNAME", "LASTNAME", "FULLNAME", "GENDER", "POSTCODE"})

#: Address books (lists) every new sandbox account has (id -> name).
DEFAULT_ADDRESS_BOOKS: dict[int, str] = {1: "Customers", 2: "Newsletter", 3: "SMS"}

DATA_FIELD_TYPES = ("String", "Numeric", "Date", "Boolean")
_VISIBILITIES = ("Private", "Public")

# -- contacts v3 vocabulary (Contacts v3 spec: components/schemas) -------------------------------------------
_PATH_IDENTIFIERS = ("contactId", "email", "mobileNumber")
_MERGE_OPTIONS = ("overwrite", "overwrite-if-not-empty", "overwrite-if-empty")
_WRITE_TOP_LEVEL_KEYS = frozenset(
    {"identifiers", "dataFields", "channelProperties", "lists", "preferences", "consentRecords", "matchIdentifier"}
)
# write enum (lower-camel) -> read enum (Pascal); the Contacts v3 spec's channelProperties_channelProperties_email vs
# contact_channelProperties_email. Matching is case-insensitive because Dotdigital's own import example
# sends "emailType": "Html".
_EMAIL_TYPES = {"plaintext": "PlainText", "html": "Html"}
_OPT_IN_TYPES = {"unknown": "Unknown", "single": "Single", "double": "Double", "verifieddouble": "VerifiedDouble"}
_EMAIL_WRITE_STATUSES = {"subscribed": "subscribed", "unsubscribed": "unsubscribed", "suppressed": "suppressed"}
_CHANNEL_WRITE_STATUSES = {
    "nosubscription": "noSubscription",
    "subscribed": "subscribed",
    "unsubscribed": "unsubscribed",
    "suppressed": "suppressed",
}
_EMAIL_READ_STATUSES = (
    "noSubscription", "subscribed", "unsubscribed", "softBounced", "hardBounced", "ispComplained", "pendingOptIn",
    "directComplaint", "spamTrap", "deleted", "blockedlocalpart", "sharedsuppression", "sharedDomainSuppression",
    "suppressed", "purchased", "knownComplainer", "knownLitigator", "binned", "domainSuppressed",
)
#: Email channel statuses that put the address on the account's suppression list. A PATCH cannot
#: change them, except an explicit resubscribe (see ``_apply_email_status``).
_SUPPRESSED_EMAIL_STATUSES = frozenset({
    "unsubscribed", "hardBounced", "ispComplained", "directComplaint", "spamTrap", "blockedlocalpart",
    "sharedsuppression", "sharedDomainSuppression", "suppressed", "knownComplainer", "knownLitigator",
    "domainSuppressed",
})
#: Suppressions a resubscribe can lift; others (hard bounce, complaints, ...) are "ContactCannotBeUnsuppressed".
_RESUBSCRIBABLE_EMAIL_STATUSES = frozenset({"unsubscribed", "suppressed"})
_STICKY_SMS_STATUSES = frozenset({"suppressed", "bounced"})
_PREFERRED_LOCALES = frozenset({
    "cs-CS", "da-DA", "de-DE", "el-EL", "en-EN", "es-ES", "es", "fi-FI", "fr-FR", "hu-HU", "it-IT", "nl-NL",
    "nb-NO", "pl-PL", "pt-PT", "ru-RU", "se-SE", "sk-SK", "tr-TR", "zh-CN",
})
_CONSENT_KEYS = ("text", "dateTimeConsented", "url", "ipAddress", "userAgent")

_IDENTIFIER_NAME_RE = re.compile(r"^[-A-Za-z0-9_]{1,50}$")
_EMAIL_RE = re.compile(
    r"^(?=.{3,254}$)(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_E164_RE = re.compile(r"^\+?([1-9][0-9]{6,14})$")
_ISO_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)
_DATE_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:?\d{2})?$")

#: Calling code -> ISO country, for the read model's ``channelProperties.sms.countryCode`` (longest prefix wins).
_CALLING_CODES = {
    "1": "US", "7": "RU", "20": "EG", "27": "ZA", "30": "GR", "31": "NL", "32": "BE", "33": "FR", "34": "ES",
    "36": "HU", "39": "IT", "40": "RO", "41": "CH", "43": "AT", "44": "GB", "45": "DK", "46": "SE", "47": "NO",
    "48": "PL", "49": "DE", "52": "MX", "55": "BR", "61": "AU", "64": "NZ", "65": "SG", "81": "JP", "82": "KR",
    "86": "CN", "91": "IN", "351": "PT", "352": "LU", "353": "IE", "358": "FI", "420": "CZ", "421": "SK",
    "971": "AE",
}

# -- bulk imports ---------------------------------------------------------------------------------------
#: ``mergeOption`` of the contacts import (camelCase) -> the PATCH ``merge-option`` value (kebab-case).
_IMPORT_MERGE_OPTIONS = {
    "overwrite": "overwrite",
    "overwriteIfNotEmpty": "overwrite-if-not-empty",
    "overwriteIfEmpty": "overwrite-if-empty",
}
_IMPORT_ID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
#: The Contacts v3 spec's 429 example of ``PUT /contacts/v3/import`` (verbatim, typo included).
_TOO_MANY_CONTACT_IMPORTS = (
    "Your import request cannot be accepted as too many imports are being processed for you account. "
    "Please wait for an import to complete and then resubmit."
)

# -- programs (Dotdigital API docs: Programs, and the Programs OpenAPI document) ------------------------------
PROGRAM_STATUSES = ("Draft", "Active", "Deactivated", "ReadOnly")
ENROLMENT_STATUSES = ("NotAvailableInThisVersion", "Processing", "Finished")
#: ``Reason`` column of an enrolment fault report. The first four are Dotdigital's (``Unsubcribed`` is spelt as
#: Dotdigital spells it); ``ContactNotFound`` (the contact was deleted before the enrolment ran) and
#: ``ProgramNotActive`` (the program stopped being Active before it ran) are sandbox choices.
ENROLMENT_FAULT_REASONS = ("Unsubcribed", "Suppressed", "PendingOptIn", "AlreadyInProgram", "ContactNotFound",
                           "ProgramNotActive")
#: ``ProgramEntry.via`` of an entry caused by joining the program's start list.
LIST_JOIN = "list_join"
#: Enrolment body keys, case-insensitively (the Magento 2 connector sends ``ProgramId``, ``Contacts``, ``AddressBooks``).
_ENROLMENT_KEYS = {"programid": "programId", "contacts": "contacts", "addressbooks": "addressBooks"}
_MAX_ENROLMENT_CONTACTS = 25  # Programs spec: contacts maxItems
_MAX_ENROLMENT_ADDRESS_BOOKS = 10  # Programs spec: addressBooks maxItems (ERROR_ADDRESSBOOK_TOOMANY)
_ENROLMENT_ALLOWANCE_WINDOW = timedelta(hours=1)
_FAULT_REPORT_COLUMNS = ("Id", "Email", "TelephoneNumber", "Reason")
_V2_ERROR_CODE_RE = re.compile(r"ERROR_[A-Z_]+")

# -- insight data v3 vocabulary (Insight data v3 spec: components/schemas) ----------------------------------------
#: ``collectionName``: pattern ``(^[-A-Za-z_][-A-Za-z0-9_]{1,255}$)`` and ``maxLength: 255``.
_COLLECTION_NAME_RE = re.compile(r"^[-A-Za-z_][-A-Za-z0-9_]{1,255}$")
_COLLECTION_NAME_MAX = 255
COLLECTION_SCOPES = ("account", "contact")
COLLECTION_TYPES = (
    "cartInsight", "catalog", "consentInsight", "custom", "easyEditorExtensions", "nostoEmailCampaigns", "orders",
    "productCategories", "webInsight", "wishList",
)
#: Keys inside a record's JSON (the Magento 2 connector ``KeyValidator``; failure reason ``JsonKeyInvalidCharacters``).
_INSIGHT_JSON_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INSIGHT_IMPORT_KEYS = frozenset({"collectionName", "collectionScope", "collectionType", "records"})
_INSIGHT_RECORD_KEYS = frozenset({"contactIdentity", "key", "json"})  # upsertInsightRecord (closed)
_RECORD_KEY_MAX = 255  # sandbox choice: the spec gives recordId no length limit
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Failure reason when a contact-scoped import record names a contact that does not exist.
_MISSING_OWNER_REASONS = {"email": "ContactEmailDoesNotExist", "contactId": "ContactIdDoesNotExist"}

_RESERVED_ADDRESS_BOOK_NAMES = frozenset({"test", "all contacts"})
_APIUSAGE_HOURLY_CAP = 2000  # legacy flat limit, reported through account-info
_RATE_WINDOW_SECONDS = 60.0


# ---------------------------------------------------------------------------------------------------
# Public data types
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedRequest(loopback_http.RecordedRequest):
    """One request the sandbox received.

    ``path`` is the raw request path as sent on the wire (still percent-encoded, without the query), so
    tests can assert on encoding (e.g. ``%2B`` for ``+`` in an email). ``status`` is the status sent back;
    ``0`` means the connection was dropped without a response (``inject_fault(drop_connection=True)``).
    ``headers`` has lower-cased names and the ``authorization`` value replaced by ``"<redacted>"``.
    ``contact_id`` is the contact the request read or wrote, when there is one.
    """

    contact_id: int | None = None


@dataclass(frozen=True)
class ProgramEntry:
    """A contact that really entered a program: what tests count to assert "exactly once".

    ``via`` is the id of the enrolment that brought the contact in, or ``LIST_JOIN`` (``"list_join"``) when
    joining the program's start list did; then ``list_id`` names that list. ``at`` is the sandbox time of
    the entry (aware, UTC): when the enrolment finished, or when the contact joined the list.
    """

    program_id: int
    contact_id: int
    via: str
    at: datetime
    list_id: int | None = None

    @property
    def enrolment_id(self) -> str | None:
        return None if self.via == LIST_JOIN else self.via


@dataclass(frozen=True)
class EnrolmentCall:
    """One ``POST /v2/programs/enrolments`` the sandbox answered after authentication and the per-minute limit.

    ``at`` is the sandbox time of the call; ``status`` the HTTP status sent back (201 = accepted); ``error``
    the ``ERROR_*`` code of a refused call. Only accepted calls count against the hourly enrolment allowance
    (``counted``). ``program_id``, ``contacts`` and ``address_books`` are what could be read from the body.
    """

    at: datetime
    status: int
    program_id: int | None = None
    contacts: tuple[int, ...] = ()
    address_books: tuple[int, ...] = ()
    enrolment_id: str | None = None
    error: str | None = None

    @property
    def counted(self) -> bool:
        return self.status == 201


# ---------------------------------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Response(loopback_http.Response):
    contact_id: int | None = None  # recorded as RecordedRequest.contact_id


class _ApiError(Exception):
    """Raised inside request handling to short-circuit with an error response.

    ``failure_code`` is the code a bulk contact import reports for the same problem, when it differs
    from the default mapping in ``_import_failure_code``.
    """

    def __init__(self, response: _Response, failure_code: str | None = None) -> None:
        super().__init__(response.status)
        self.response = response
        self.failure_code = failure_code


@dataclass
class _DataField:
    name: str
    type: str
    visibility: str = "Private"
    default_value: Any = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "visibility": self.visibility, "defaultValue": self.default_value}


@dataclass
class _AddressBook:
    id: int
    name: str
    visibility: str = "Private"


@dataclass
class _Contact:
    contact_id: int
    created: str
    updated: str
    email: str | None = None
    mobile: str | None = None  # stored without "+", as Dotdigital's examples show ("447123123123")
    data: dict[str, Any] = field(default_factory=dict)  # canonical field name -> value (set values only)
    email_type: str = "Html"
    opt_in_type: str = "Unknown"
    email_status: str = "subscribed"
    sms_status: str = "noSubscription"
    whatsapp_status: str = "noSubscription"
    lists: dict[int, str] = field(default_factory=dict)  # address book id -> time added
    preferences: dict[int, bool] = field(default_factory=dict)
    consent_records: list[dict[str, Any]] = field(default_factory=list)
    #: when the email channel last went into a suppressed status (the feeds' ``dateRemoved``)
    email_removed_at: datetime | None = None


@dataclass
class _ContactWrite:
    """A validated, normalised v3 write model."""

    email: str | None = None
    mobile: str | None = None
    contact_id: int | None = None
    data_fields: dict[str, Any] = field(default_factory=dict)  # canonical name -> value (None clears)
    email_type: str | None = None
    opt_in_type: str | None = None
    email_status: str | None = None
    resubscribe_no_challenge: bool | None = None  # None = no resubscribeOptions supplied
    sms_status: str | None = None
    whatsapp_status: str | None = None
    lists: list[int] = field(default_factory=list)
    preferences: list[tuple[int, bool]] = field(default_factory=list)
    consent_records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Import:
    """One asynchronous bulk import (contacts or insight); ``result`` is set when it has been processed."""

    import_id: str
    kind: str  # "contacts" | "insight"
    submitted: float  # time.monotonic()
    due: float
    payload: dict[str, Any]
    result: dict[str, Any] | None = None


@dataclass
class _PreparedImportItem:
    """A contacts-import item that passed validation (pass 1 of ``_process_contacts_import``)."""

    match: str
    match_value: str
    write: _ContactWrite
    consent_error: str | None
    identity_keys: list[tuple[str, Any]]


@dataclass
class _Program:
    id: int
    name: str
    status: str
    created: str
    allow_reentry: bool = False
    start_list_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The Programs spec's ``programDetails``: ``{id, name, status, dateCreated}``."""
        return {"id": self.id, "name": self.name, "status": self.status, "dateCreated": self.created}


@dataclass
class _Enrolment:
    """One program enrolment; ``finished_at`` is set (and ``faults`` filled) when it has been processed."""

    id: str
    program_id: int
    contacts: list[int]
    address_books: list[int]
    created: datetime
    due: datetime  # sandbox time at which it finishes
    finished_at: datetime | None = None
    #: fault report rows: (Id, Email, TelephoneNumber, Reason)
    faults: list[tuple[Any, str, str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "Processing" if self.finished_at is None else "Finished"

    def as_json(self, echo: bool = True) -> dict[str, Any]:
        """The Programs spec's ``ApiProgramEnrolment``; ``echo=False``: ``contacts`` and ``addressBooks`` are null,
        as in the spec's own example of the 201 answer."""
        return {"id": self.id, "programId": self.program_id, "status": self.status, "dateCreated": _iso(self.created),
                "contacts": list(self.contacts) if echo else None,
                "addressBooks": list(self.address_books) if echo else None}


_SHAPE_NAMES = {"STRING": "String", "FLOAT": "Number", "BOOLEAN": "Boolean", "RECORD": "Object"}


@dataclass
class _Shape:
    """The locked type of one insight JSON value (schema locking).

    ``kind`` is STRING, FLOAT (every JSON number, as in the insight spec's schema example), BOOLEAN or RECORD, or
    ``None`` while only ``null`` / empty arrays were seen, which fix nothing. ``repeated`` marks an array of
    ``kind``.
    """

    kind: str | None = None
    repeated: bool = False
    fields: dict[str, _Shape] = field(default_factory=dict)

    @property
    def blank(self) -> bool:
        return self.kind is None and not self.repeated

    def describe(self) -> str:
        name = _SHAPE_NAMES.get(self.kind or "", "Null")
        if self.repeated:
            return "List" if self.kind is None else f"List of {name}"
        return name

    def copy(self) -> _Shape:
        return _Shape(self.kind, self.repeated, {k: v.copy() for k, v in self.fields.items()})


class _RecordRejected(Exception):
    """An insight record failed validation; ``reason`` is an Insight data v3 spec ``failureReason``."""

    def __init__(self, reason: str, detail: str, item: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.item = item


@dataclass
class _InsightRecord:
    key: str
    json: dict[str, Any]
    created: str
    updated: str
    owner_contact_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The Insight data v3 spec ``returnedInsightRecord``: ``{key, json, created, updated, ownerContactId}``."""
        body: dict[str, Any] = {"key": self.key, "json": copy.deepcopy(self.json), "created": self.created,
                                "updated": self.updated}
        if self.owner_contact_id is not None:
            body["ownerContactId"] = self.owner_contact_id
        return body


@dataclass
class _Collection:
    name: str
    scope: str
    type: str
    shape: _Shape = field(default_factory=lambda: _Shape("RECORD"))
    #: (owner contactId, or None for account scope, record key) -> record
    records: dict[tuple[int | None, str], _InsightRecord] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The Insight data v3 spec ``collectionSummary``."""
        return {"collectionName": self.name, "collectionType": self.type, "collectionScope": self.scope,
                "recordCount": len(self.records)}


def _utc_now_iso() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``, the form Dotdigital's examples use."""
    if moment.tzinfo is None:
        raise ValueError("sandbox times must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lower_camel(phrase: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", phrase)
    if not words:
        return "error"
    return words[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in words[1:])


# ---------------------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------------------
class _SandboxRequestHandler(loopback_http.LoopbackRequestHandler):
    server_version = "DotdigitalSandbox/1.0"
    do_OPTIONS = loopback_http.LoopbackRequestHandler.do_GET  # noqa: N815


class DotdigitalSandbox(loopback_http.LoopbackServer[RecordedRequest]):
    """A Dotdigital account behind a loopback HTTP server.

    All state (data fields, address books, contacts, recorded requests, faults, rate-limit window) lives
    in this object and is guarded by one lock, so tests may inspect or change it while the server is
    serving requests from other threads. Lifecycle (``start``, ``stop``, context manager, ``base_url``),
    the request log (``requests``, ``requests_matching``, ``reset_requests``), ``inject_fault`` /
    ``clear_faults`` and ``set_latency`` come from ``loopback_http.LoopbackServer``.

    Injected faults are checked before authentication and rate limiting and do not count against the
    budget. ``body=None`` sends a generic error body in the envelope of the path's API version; a ``str``
    body is sent verbatim (``application/json`` if it parses as JSON, else ``text/plain``).

    Parameters beyond the documented ones:
        account_id: value of ``id`` in ``/v2/account-info``.
        mobile_subscription_default: SMS/WhatsApp status given to new contacts with a mobile number when
            the payload sets none (Dotdigital takes it from the account setting "Mobile subscription").
        import_delay_seconds: how long a bulk import stays unfinished (also settable as an attribute).
        enrolment_delay_seconds: how long a program enrolment stays ``Processing``, in sandbox time (also
            settable as an attribute); see "Programs" in the module docstring.
    """

    api_user: str
    password: str
    #: ``X-RateLimit-Scope`` reported with rate-limit headers. The sandbox keeps one counter; Dotdigital
    #: keeps one per tier (Low/Medium/High/Unlimited).
    rate_limit_scope: str = "Medium"
    #: Unfinished imports allowed at once: 25 contact imports, 5 insight imports. Past that -> 429.
    max_active_contact_imports: int = 25
    max_active_insight_imports: int = 5
    #: Insight data collections an account may have; creating one more -> 412.
    max_insight_collections: int = 1000
    #: Status of a finished insight import. The insight spec's examples (and the Magento 2 connector) say ``Finished``, its enum says
    #: ``Complete``; set ``"Complete"`` to check that a client accepts both.
    insight_import_finished_status: str = "Finished"
    #: Whether enrolments answered over HTTP carry their ``contacts`` and ``addressBooks``. The Programs spec's
    #: example answers them null; set False to check that a client does not depend on them.
    echo_enrolment_contacts: bool = True
    #: Accepted ``POST /v2/programs/enrolments`` calls allowed per rolling hour of sandbox time, across all
    #: programs (Dotdigital API docs: Programs - 20 per account); one more -> 400 ``ERROR_ENROLMENT_ALLOWANCE_EXCEEDED``.
    enrolment_allowance_per_hour: int = 20
    #: Whether list joins made by a bulk contact import start list-join programs (a third-party guide claims
    #: bulk imports do not fire list-join triggers; set ``False`` to simulate that).
    imports_start_list_programs: bool = True

    _thread_name = "dotdigital-sandbox"
    _label = "Dotdigital sandbox"
    _short_label = "sandbox"
    _logger = logger
    _handler_class = _SandboxRequestHandler
    _record_type = RecordedRequest
    _response_type = _Response
    _sniff_fault_content_type = True

    def __init__(
        self,
        *,
        api_user: str = "apiuser-sandbox@apiconnector.com",
        password: str = "sandbox-password",
        host: str = "127.0.0.1",
        port: int = 0,
        data_fields: dict[str, str] | None = None,
        address_books: dict[int, str] | None = None,
        rate_limit_per_minute: int | None = None,
        account_id: int = 1,
        mobile_subscription_default: str = "noSubscription",
        import_delay_seconds: float = 0.05,
        enrolment_delay_seconds: float = 0.2,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_user = api_user
        self.password = password
        self.account_id = account_id
        self._api_endpoint_override: str | None = None

        if mobile_subscription_default not in _CHANNEL_WRITE_STATUSES.values():
            raise ValueError(f"invalid mobile_subscription_default {mobile_subscription_default!r}")
        self._mobile_default = mobile_subscription_default

        self._data_fields: dict[str, _DataField] = {}  # casefolded name -> field (insertion ordered)
        for name, type_ in (DEFAULT_DATA_FIELDS if data_fields is None else data_fields).items():
            self._define_data_field(name, type_, "Public" if name.upper() in _SYSTEM_DATA_FIELDS else "Private")
        self._address_books: dict[int, _AddressBook] = {}
        for book_id, name in (DEFAULT_ADDRESS_BOOKS if address_books is None else address_books).items():
            self._address_books[int(book_id)] = _AddressBook(int(book_id), name)

        self._contacts: dict[int, _Contact] = {}
        self._next_contact_id = 1
        self._rate_limit = self._check_rate_limit_value(rate_limit_per_minute)
        self._window: deque[float] = deque()  # timestamps of requests counted against the per-minute budget
        self._hourly: deque[float] = deque()  # timestamps of authenticated calls in the last hour
        self._collections: dict[str, _Collection] = {}  # casefolded name -> collection (insertion ordered)
        self._imports: dict[str, _Import] = {}  # lower-case importId -> import (submission ordered)
        self._import_delay = self._check_delay_value(import_delay_seconds)
        self._clock: Callable[[], datetime] | None = None

        self._programs: dict[int, _Program] = {}
        self._programs_enabled = True
        self._enrolments: dict[str, _Enrolment] = {}  # lower-case enrolment id -> enrolment (creation ordered)
        self._enrolment_delay = self._check_delay_value(enrolment_delay_seconds, "enrolment_delay_seconds")
        self._enrolment_calls: list[EnrolmentCall] = []
        self._allowance_window: deque[datetime] = deque()  # sandbox times of accepted enrolment calls
        self._program_entries: list[ProgramEntry] = []
        self._entered: set[tuple[int, int]] = set()  # (program id, contact id) that ever entered
        self._applying_import = False  # list joins made now come from a bulk contact import
        #: Events API export subscriptions and the events contacts' changes emit (``dotdigital_events``)
        self._events = ExportEvents(account_id, self._now, lambda status, body: _Response(status, body))

    def __repr__(self) -> str:  # never show the password
        return f"DotdigitalSandbox(base_url={self.base_url if self._server else None!r}, api_user={self.api_user!r})"

    @property
    def api_endpoint(self) -> str:
        """The ``ApiEndpoint`` account property (with trailing slash, like the real API).

        Defaults to the sandbox itself; assign another URL to simulate an account living in a different
        region from the one used for discovery.
        """
        with self._lock:
            if self._api_endpoint_override is not None:
                return self._api_endpoint_override
        return self.base_url + "/"

    @api_endpoint.setter
    def api_endpoint(self, value: str | None) -> None:
        with self._lock:
            self._api_endpoint_override = None if value is None else value.rstrip("/") + "/"

    # -- environment ----------------------------------------------------------------------------------
    def set_rate_limit(self, per_minute: int | None) -> None:
        """Set the per-minute request budget (``None`` = unlimited) and start a fresh window."""
        with self._lock:
            self._rate_limit = self._check_rate_limit_value(per_minute)
            self._window.clear()

    @staticmethod
    def _check_rate_limit_value(per_minute: int | None) -> int | None:
        if per_minute is not None and per_minute < 1:
            raise ValueError("rate limit must be >= 1 or None")
        return per_minute

    # -- time -----------------------------------------------------------------------------------------
    @property
    def clock(self) -> Callable[[], datetime] | None:
        """Source of the sandbox's time (``created``, ``updated``, ``dateRemoved``); ``None`` = now."""
        with self._lock:
            return self._clock

    @clock.setter
    def clock(self, value: Callable[[], datetime] | None) -> None:
        if value is not None and not callable(value):
            raise TypeError("clock must be a callable returning an aware datetime, or None")
        with self._lock:
            self._clock = value

    def _now(self) -> datetime:
        clock = self._clock
        moment = clock() if clock is not None else datetime.now(timezone.utc)
        if moment.tzinfo is None:
            raise ValueError("the sandbox clock must return timezone-aware datetimes")
        return moment.astimezone(timezone.utc)

    def _now_iso(self) -> str:
        return _iso(self._now())

    # -- state inspection / manipulation --------------------------------------------------------------
    def get_contact(
        self, *, email: str | None = None, mobile: str | None = None, contact_id: int | None = None
    ) -> dict | None:
        """The v3 read model of the contact with this email / mobile number / id, or ``None``."""
        with self._lock:
            self._advance()
            contact = self._find_contact(email=email, mobile=mobile, contact_id=contact_id)
            return None if contact is None else self._read_model(contact)

    @property
    def contacts(self) -> list[dict]:
        """Read models of all contacts, ordered by ``contactId``."""
        with self._lock:
            self._advance()
            return [self._read_model(c) for _, c in sorted(self._contacts.items())]

    def suppress(self, *, email: str | None = None, mobile: str | None = None, reason: str = "unsubscribed",
                 at: datetime | None = None) -> None:
        """Simulate a suppression made in Dotdigital (unsubscribe link, bounce, complaint, ...).

        With ``email`` the contact's email channel status becomes ``reason`` (any v3 email channel status,
        e.g. ``unsubscribed``, ``suppressed``, ``hardBounced``, ``ispComplained``); with only ``mobile`` the SMS
        channel becomes ``unsubscribed`` (reason ``unsubscribed``) or ``suppressed`` (anything else). The
        contact is created if it does not exist yet (a suppressed address is still a contact).

        ``at`` (aware) is when it happened - the ``dateRemoved`` of the suppression feeds and the contact's
        ``updated``; default: the sandbox clock.
        """
        if at is not None and at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        if email is None and mobile is None:
            raise ValueError("email or mobile is required")
        by_lower = {s.lower(): s for s in _EMAIL_READ_STATUSES}
        status = by_lower.get(reason.lower())
        if status is None or status not in _SUPPRESSED_EMAIL_STATUSES:
            raise ValueError(f"{reason!r} is not a suppression status")
        with self._lock:
            self._advance_enrolments()  # enrolments due before this change see the old state
            contact = self._find_contact(email=email) if email is not None else None
            if contact is None and mobile is not None:
                contact = self._find_contact(mobile=mobile)
            moment = at.astimezone(timezone.utc) if at is not None else self._now()
            before = snapshot(contact) if contact is not None else None
            if contact is None:
                contact = self._new_contact(
                    email=email, mobile=_normalise_mobile(mobile) if mobile else None, now=_iso(moment)
                )
            if email is not None:
                contact.email_status = status
                contact.email_removed_at = moment
            else:
                contact.sms_status = "unsubscribed" if status == "unsubscribed" else "suppressed"
            contact.updated = _iso(moment)
            self._events.contact_changed(before, snapshot(contact), at=moment,
                                         unsubscribed=[] if status != "unsubscribed" else ["email" if email else "sms"])

    def delete_contact(self, *, email: str | None = None, mobile: str | None = None,
                       contact_id: int | None = None) -> bool:
        """Simulate a contact deleted in Dotdigital (by a user or a retention rule); its contactId is gone,
        and so are its contact-scoped insight records."""
        with self._lock:
            self._advance_enrolments()  # enrolments due before this change see the old state
            contact = self._find_contact(email=email, mobile=mobile, contact_id=contact_id)
            if contact is None:
                return False
            self._remove_contact(contact)
            return True

    # -- Events API (export subscriptions; see ``ctdd.testing.dotdigital_events``) ------------------------
    def preference_centre(self, *, email: str | None = None, mobile: str | None = None,
                          preferences: dict[int, bool] | None = None, lists: dict[int, bool] | None = None,
                          data_fields: dict[str, Any] | None = None, unsubscribe: bool = False,
                          at: datetime | None = None) -> dict:
        """Act as the contact in a Dotdigital preference centre (or a signup/profile form): change it as
        Dotdigital would and emit the events of the Events API. Returns the contact's read model.

        ``preferences`` {preference id: opted in}; ``lists`` {list id: member} (joining starts the list's
        programs, as every list join does); ``data_fields`` {name: value or None to clear} (existing fields,
        values of their type); ``unsubscribe`` unsubscribes the email channel (the SMS channel for a contact
        without email), which the suppression feeds report too. ``at`` (aware) is when: default the sandbox clock.
        Unknown contact, list or data field, or a value of the wrong type -> ``ValueError``.
        """
        if at is not None and at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        with self._lock:
            self._advance_enrolments()
            contact = self._find_contact(email=email) if email is not None else self._find_contact(mobile=mobile)
            if contact is None:
                raise ValueError("no such contact in the sandbox")
            fields: dict[str, Any] = {}
            for name, value in (data_fields or {}).items():
                known = self._data_fields.get(name.casefold())
                if known is None:
                    raise ValueError(f"no data field {name!r} in the sandbox account")
                if value is not None and _coerce_data_value(known.type, value) is _INVALID:
                    raise ValueError(f"{value!r} is not a {known.type} value for data field {known.name}")
                fields[known.name] = value
            for book_id in lists or {}:
                if book_id not in self._address_books:
                    raise ValueError(f"no list {book_id} in the sandbox account")
            moment = at.astimezone(timezone.utc) if at is not None else self._now()
            before = snapshot(contact)
            for name, value in fields.items():
                if value is None:
                    contact.data.pop(name, None)
                else:
                    contact.data[name] = value
            for pref_id, opted_in in (preferences or {}).items():
                contact.preferences[int(pref_id)] = bool(opted_in)
            for book_id, member in (lists or {}).items():
                if member and book_id not in contact.lists:
                    contact.lists[book_id] = _iso(moment)
                    self._on_list_join(contact, book_id)
                elif not member:
                    contact.lists.pop(book_id, None)
            unsubscribed: list[str] = []
            if unsubscribe:
                if contact.email is not None:
                    if contact.email_status not in _SUPPRESSED_EMAIL_STATUSES:
                        contact.email_status, contact.email_removed_at = "unsubscribed", moment
                    unsubscribed.append("email")
                else:
                    contact.sms_status = "unsubscribed"
                    unsubscribed.append("sms")
            contact.updated = _iso(moment)
            self._events.contact_changed(before, snapshot(contact), at=moment, unsubscribed=unsubscribed)
            return self._read_model(contact)

    @property
    def event_subscriptions(self) -> list[dict[str, Any]]:
        """The account's export subscriptions, as ``GET /events/v3/export/subscriptions`` lists them."""
        with self._lock:
            return self._events.subscriptions()

    @property
    def emitted_events(self) -> list[dict[str, Any]]:
        """Every event the account emitted (whether a subscription captured it or not), oldest first."""
        with self._lock:
            return [copy.deepcopy(e) for e in self._events.emitted]

    def queued_events(self, subscription_id: int) -> int:
        """Events queued for a subscription and not yet acknowledged with a checkpoint."""
        with self._lock:
            return self._events.queued(subscription_id)

    def add_data_field(self, name: str, type: str = "String") -> None:  # noqa: A002 - mirrors the API field name
        """Create a contact data field directly (no-op if it already exists, case-insensitive)."""
        if not is_valid_data_field_name(name):
            raise ValueError(f"invalid data field name {name!r} (max 20 chars of [A-Za-z0-9_-])")
        with self._lock:
            if name.casefold() not in self._data_fields:
                self._define_data_field(name, type, "Private")

    def add_address_book(self, name: str, *, book_id: int | None = None, visibility: str = "Private") -> int:
        """Create an address book (list) directly and return its id."""
        with self._lock:
            new_id = book_id if book_id is not None else max(self._address_books, default=0) + 1
            if new_id in self._address_books:
                raise ValueError(f"address book {new_id} already exists")
            self._address_books[new_id] = _AddressBook(new_id, name, visibility)
            return new_id

    @property
    def data_fields(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_json() for f in self._data_fields.values()]

    @property
    def address_books(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._address_book_json(b) for b in self._address_books.values()]

    # -- insight data and imports ---------------------------------------------------------------------
    @property
    def import_delay_seconds(self) -> float:
        """Seconds a new bulk import stays unfinished (captured per import when it is submitted)."""
        with self._lock:
            return self._import_delay

    @import_delay_seconds.setter
    def import_delay_seconds(self, value: float) -> None:
        with self._lock:
            self._import_delay = self._check_delay_value(value)

    @staticmethod
    def _check_delay_value(value: float, name: str = "import_delay_seconds") -> float:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0")
        return value

    def complete_imports(self) -> None:
        """Finish every pending bulk import now (their items are applied in submission order)."""
        with self._lock:
            now = time.monotonic()
            for imp in self._imports.values():
                if imp.result is None:
                    imp.due = min(imp.due, now)
            self._advance()

    @property
    def collections(self) -> list[dict[str, Any]]:
        """Summaries of all insight collections, as ``GET /insightData/v3/collections`` returns them."""
        with self._lock:
            self._advance()
            return [c.summary() for c in self._collections.values()]

    def create_collection(self, name: str, *, scope: str = "contact", collection_type: str = "custom") -> bool:
        """Create an insight collection directly; ``False`` if it already exists (same scope and type)."""
        if not isinstance(name, str) or len(name) > _COLLECTION_NAME_MAX or not _COLLECTION_NAME_RE.match(name):
            raise ValueError(f"invalid collection name {name!r}")
        if scope not in COLLECTION_SCOPES or collection_type not in COLLECTION_TYPES:
            raise ValueError(f"invalid scope {scope!r} or collection type {collection_type!r}")
        with self._lock:
            existing = self._find_collection(name)
            if existing is not None:
                if (existing.scope, existing.type) != (scope, collection_type):
                    raise ValueError(f"collection {existing.name!r} exists as {existing.scope}/{existing.type}")
                return False
            self._collections[name.casefold()] = _Collection(name, scope, collection_type)
            return True

    def insight_records(
        self, collection: str, *, contact_email: str | None = None, contact_id: int | None = None
    ) -> dict[str, Any]:
        """``{key: json}`` of one contact's records in a contact-scoped collection (``{}`` for an unknown
        contact). Raises ``KeyError`` for an unknown collection and ``ValueError`` for an account-scoped one."""
        if (contact_email is None) == (contact_id is None):
            raise ValueError("pass exactly one of contact_email / contact_id")
        with self._lock:
            self._advance()
            found = self._collection_for_helper(collection, "contact")
            contact = self._find_contact(email=contact_email, contact_id=contact_id)
            if contact is None:
                return {}
            return {key: copy.deepcopy(record.json) for (owner, key), record in found.records.items()
                    if owner == contact.contact_id}

    def account_records(self, collection: str) -> dict[str, Any]:
        """``{key: json}`` of an account-scoped collection (e.g. a catalog)."""
        with self._lock:
            self._advance()
            found = self._collection_for_helper(collection, "account")
            return {key: copy.deepcopy(record.json) for (_, key), record in found.records.items()}

    def collection_schema(self, collection: str) -> list[dict[str, Any]]:
        """The locked schema, as ``GET /insightData/v3/collections/{name}/schema`` returns it in ``schema``."""
        with self._lock:
            self._advance()
            found = self._find_collection(collection)
            if found is None:
                raise KeyError(f"no insight collection {collection!r}")
            return self._schema_json(found)

    def _collection_for_helper(self, name: str, scope: str) -> _Collection:
        found = self._find_collection(name)
        if found is None:
            raise KeyError(f"no insight collection {name!r}")
        if found.scope != scope:
            raise ValueError(f"collection {found.name!r} is {found.scope} scoped")
        return found

    # -- programs and enrolments ----------------------------------------------------------------------
    def add_program(
        self,
        name: str,
        status: str = "Active",
        *,
        allow_reentry: bool = False,
        start_list_id: int | None = None,
        program_id: int | None = None,
    ) -> int:
        """Create a program (automation) and return its id.

        ``status`` is one of ``PROGRAM_STATUSES``; only ``Active`` programs accept enrolments and start on list
        joins. ``allow_reentry``: whether a contact that entered the program before may enter it again (else
        a later enrolment reports it as ``AlreadyInProgram``). ``start_list_id``: the program starts when a
        contact joins this address book (which must exist).
        """
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise ValueError("program name must be 1-255 characters")  # Programs spec: name minLength/maxLength
        if status not in PROGRAM_STATUSES:
            raise ValueError(f"program status must be one of {PROGRAM_STATUSES}, got {status!r}")
        with self._lock:
            if start_list_id is not None and start_list_id not in self._address_books:
                raise ValueError(f"address book {start_list_id} does not exist")
            new_id = program_id if program_id is not None else max(self._programs, default=0) + 1
            if new_id in self._programs:
                raise ValueError(f"program {new_id} already exists")
            self._programs[new_id] = _Program(new_id, name, status, self._now_iso(), bool(allow_reentry),
                                              start_list_id)
            return new_id

    def set_program_status(self, program_id: int, status: str) -> None:
        """Change a program's status (e.g. ``Deactivated``: enrolments get 422 ``ERROR_PROGRAM_NOT_ACTIVE``)."""
        if status not in PROGRAM_STATUSES:
            raise ValueError(f"program status must be one of {PROGRAM_STATUSES}, got {status!r}")
        with self._lock:
            self._program(program_id).status = status

    def set_program_reentry(self, program_id: int, allow_reentry: bool) -> None:
        """Change whether contacts may enter the program more than once."""
        with self._lock:
            self._program(program_id).allow_reentry = bool(allow_reentry)

    def _program(self, program_id: int) -> _Program:
        program = self._programs.get(program_id)
        if program is None:
            raise KeyError(f"no program {program_id}")
        return program

    @property
    def programs(self) -> list[dict[str, Any]]:
        """All programs, as ``GET /v2/programs`` returns them."""
        with self._lock:
            return [p.as_json() for _, p in sorted(self._programs.items())]

    @property
    def programs_enabled(self) -> bool:
        """Whether the account has the Programs permission; ``False`` -> every program endpoint answers 403."""
        with self._lock:
            return self._programs_enabled

    @programs_enabled.setter
    def programs_enabled(self, value: bool) -> None:
        with self._lock:
            self._programs_enabled = bool(value)

    @property
    def enrolment_delay_seconds(self) -> float:
        """Sandbox seconds a new enrolment stays ``Processing`` (captured per enrolment when it is created)."""
        with self._lock:
            return self._enrolment_delay

    @enrolment_delay_seconds.setter
    def enrolment_delay_seconds(self, value: float) -> None:
        with self._lock:
            self._enrolment_delay = self._check_delay_value(value, "enrolment_delay_seconds")

    def finish_enrolments(self) -> None:
        """Process every ``Processing`` enrolment now (in creation order), whatever the clock says."""
        with self._lock:
            self._advance()
            now = self._now()
            for enrolment in sorted(self._pending_enrolments(), key=lambda e: e.due):
                self._process_enrolment(enrolment, min(enrolment.due, now))

    @property
    def enrolments(self) -> list[dict[str, Any]]:
        """All enrolments (oldest first), as ``GET /v2/programs/enrolments/{id}`` returns them."""
        with self._lock:
            self._advance()
            return [e.as_json() for e in self._enrolments.values()]

    @property
    def enrolment_calls(self) -> list[EnrolmentCall]:
        """Every ``POST /v2/programs/enrolments`` answered, accepted or not, oldest first."""
        with self._lock:
            return list(self._enrolment_calls)

    @property
    def enrolment_allowance_remaining(self) -> int:
        """Enrolment calls still allowed in the rolling hour that ends now (sandbox time)."""
        with self._lock:
            self._prune_allowance_window(self._now())
            return max(0, self.enrolment_allowance_per_hour - len(self._allowance_window))

    def program_entries(self, program_id: int | None = None, *, contact_id: int | None = None) -> list[ProgramEntry]:
        """Contacts that really entered programs (of ``program_id`` / for ``contact_id`` when given), in order of
        entry. Enrolments due by now are processed first."""
        with self._lock:
            self._advance()
            return [e for e in self._program_entries
                    if (program_id is None or e.program_id == program_id)
                    and (contact_id is None or e.contact_id == contact_id)]

    # ==================================================================================================
    # Request pipeline (called from handler threads)
    # ==================================================================================================
    def _fault_error_body(self, status: int, phrase: str, raw_path: str) -> Any:
        """A fault without a body answers in the envelope of the path's API version."""
        return _error_body(raw_path, status, _lower_camel(phrase), phrase).body

    def _internal_error_response(self, raw_path: str) -> _Response:
        return _error_body(raw_path, 500, "internalError", "Sandbox internal error")

    def _record_extras(self, response: _Response) -> dict[str, Any]:
        return {"contact_id": response.contact_id}

    def _authenticate(self, authorization: str | None) -> bool:
        """HTTP Basic with the API user. Compared in constant time."""
        return loopback_http.basic_auth_matches(authorization, self.api_user, self.password)

    def _rate_limit_check(self, raw_path: str, method: str | None = None) -> tuple[_Response | None, dict[str, str]]:
        """Tiered per-minute limit: rolling 60 s window; past the budget -> 429 + ``X-RateLimit-*``.

        ``X-RateLimit-Reset`` is sent as *seconds until reset* (the Dotdigital PHP SDK's reading); clients must
        also cope with epoch values, which the generic fault mechanism can simulate. Program enrolments do not
        count toward the flat hourly limit (``ApiCallsInLastHour``; Dotdigital API docs: Programs): they have
        their own allowance.
        """
        now = time.time()
        with self._lock:
            if not (method == "POST" and raw_path.lower().rstrip("/") == "/v2/programs/enrolments"):
                self._hourly.append(now)
            while self._hourly and self._hourly[0] <= now - 3600:
                self._hourly.popleft()
            limit = self._rate_limit
            if limit is None:
                return None, {}
            while self._window and self._window[0] <= now - _RATE_WINDOW_SECONDS:
                self._window.popleft()
            if len(self._window) >= limit:
                reset = max(1, math.ceil(self._window[0] + _RATE_WINDOW_SECONDS - now))
                headers = {
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                    "X-RateLimit-Scope": self.rate_limit_scope,
                }
                response = _error_body(
                    raw_path, 429, "tooManyRequests",
                    f"API rate limit of {limit} calls per minute exceeded; retry in {reset} seconds.",
                )
                response.headers.update(headers)
                return response, headers
            self._window.append(now)
            reset = max(1, math.ceil(self._window[0] + _RATE_WINDOW_SECONDS - now))
            return None, {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(0, limit - len(self._window))),
                "X-RateLimit-Reset": str(reset),
                "X-RateLimit-Scope": self.rate_limit_scope,
            }

    def _process(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> _Response:
        """Authenticate, rate-limit and route one request (faults and latency are handled by the caller)."""
        if not self._authenticate(headers.get("authorization")):
            response = _error_body(raw_path, 401, "unauthorized", "Authorization has been denied for this request.")
            response.headers["WWW-Authenticate"] = 'Basic realm="dotdigital-sandbox"'
            return response
        throttled, rl_headers = self._rate_limit_check(raw_path, method)
        if throttled is not None:
            return throttled
        try:
            response = self._route(method, raw_path, query, body)
        except _ApiError as exc:
            response = exc.response
        response.headers.update(rl_headers)
        return response

    def _route(self, method: str, raw_path: str, query: dict[str, list[str]], body: bytes) -> _Response:
        segments = raw_path.split("/")[1:]
        lowered = [s.lower() for s in segments]
        handler: Callable[[], _Response] | None = None
        path_known = False

        if lowered == ["v2", "account-info"]:
            path_known = True
            if method == "GET":
                handler = self._v2_account_info
        elif lowered == ["v2", "data-fields"]:
            path_known = True
            if method == "GET":
                handler = self._v2_list_data_fields
            elif method == "POST":
                handler = lambda: self._v2_create_data_field(body)  # noqa: E731
        elif lowered == ["v2", "address-books"]:
            path_known = True
            if method == "GET":
                handler = lambda: self._v2_list_address_books(query)  # noqa: E731
            elif method == "POST":
                handler = lambda: self._v2_create_address_book(body)  # noqa: E731
        elif len(lowered) == 5 and lowered[:2] == ["v2", "address-books"] and lowered[3] == "contacts":
            path_known = True
            if method == "DELETE":
                handler = lambda: self._v2_remove_from_address_book(segments[2], segments[4])  # noqa: E731
        elif (len(lowered) == 4 and lowered[:2] == ["v2", "contacts"]
              and lowered[2] in ("suppressed-since", "unsubscribed-since")):
            path_known = True
            if method == "GET":
                handler = lambda: self._v2_suppressions_since(lowered[2], segments[3], query)  # noqa: E731
        elif lowered == ["contacts", "v3"]:
            path_known = True
            if method == "GET":
                handler = lambda: self._v3_list_contacts(query)  # noqa: E731
        elif len(lowered) == 4 and lowered[:2] == ["contacts", "v3"] and lowered[2] not in ("import", "delete"):
            path_known = True
            if method == "PATCH":
                handler = lambda: self._v3_patch_contact(segments[2], segments[3], query, body)  # noqa: E731
            elif method == "GET":
                handler = lambda: self._v3_get_contact(segments[2], segments[3])  # noqa: E731
            elif method == "DELETE":
                handler = lambda: self._v3_delete_contact(segments[2], segments[3])  # noqa: E731

        elif lowered == ["contacts", "v3", "import"]:
            path_known = True
            if method == "PUT":
                handler = lambda: self._v3_start_contacts_import(body)  # noqa: E731
        elif len(lowered) == 4 and lowered[:3] == ["contacts", "v3", "import"]:
            path_known = True
            if method == "GET":
                handler = lambda: self._import_status("contacts", segments[3])  # noqa: E731
        elif lowered[:2] == ["insightdata", "v3"]:
            path_known, handler = self._route_insight(method, segments[2:], lowered[2:], query, body)
        elif lowered[:2] == ["v2", "programs"]:
            path_known, handler = self._route_programs(method, segments[2:], lowered[2:], query, body)
        elif lowered[:2] == ["events", "v3"]:
            path_known, handler = self._events.route(method, segments[2:], lowered[2:], query, body)

        if handler is not None:
            with self._lock:
                self._advance()
                return handler()
        if path_known:
            return _error_body(raw_path, 405, "methodNotAllowed",
                               f"The requested resource does not support http method '{method}'.")
        return _error_body(raw_path, 404, "notFound",
                           f"No HTTP resource was found that matches the request URI '{raw_path}'.")

    # ==================================================================================================
    # v2 endpoints
    # ==================================================================================================
    def _v2_account_info(self) -> _Response:
        """``GET /v2/account-info``: ``{id, properties: [{name, type, value}]}`` incl. ``ApiEndpoint``."""
        calls = len(self._hourly)
        properties = [
            ("AvailableEmailSendsCredits", "Int", "10000"),
            ("AvailableSmsSendsCredits", "Int", "1000"),
            ("PremiumWalletBalance", "Decimal", "0.00"),
            ("ListManagedUsers", "String", ""),
            ("Name", "String", "Dotdigital sandbox"),
            ("MainMobilePhoneNumber", "String", ""),
            ("MainEmail", "String", "owner@sandbox.example.com"),
            ("APILocale", "String", "en-GB"),
            ("ApiCallsInLastHour", "Int", str(calls)),
            ("ApiCallsRemaining", "Int", str(max(0, _APIUSAGE_HOURLY_CAP - calls))),
            ("ApiEndpoint", "String", self.api_endpoint),
            ("CurrencyCode", "String", "GBP"),
            ("CampaignEmailMtaPool", "String", "Shared"),
            ("ShowClock", "Boolean", "False"),
            ("TimeZoneIana", "String", "Europe/London"),
        ]
        return _Response(200, {"id": self.account_id,
                               "properties": [{"name": n, "type": t, "value": v} for n, t, v in properties]})

    def _v2_list_data_fields(self) -> _Response:
        """``GET /v2/data-fields``: ``[{name, type, visibility, defaultValue}]``."""
        return _Response(200, [f.as_json() for f in self._data_fields.values()])

    def _v2_create_data_field(self, raw: bytes) -> _Response:
        """``POST /v2/data-fields``.

        * ``name`` required, ``^[A-Za-z0-9_-]{1,20}$`` -> else 400 ``ERROR_DATAFIELD_INVALID``.
        * ``type`` required (hub spec) and one of String|Numeric|Date|Boolean; ``visibility`` Private|Public.
        * existing name (case-insensitive) -> 400 ``Field already exists. ERROR_NON_UNIQUE_DATAFIELD``.
        * ``ApiDataField`` is ``additionalProperties: false`` in the v2 spec -> unknown keys rejected.
        * ``defaultValue`` must fit the type (sandbox choice). Success: 201 echo.
        """
        body = _parse_v2_json(raw)
        if not isinstance(body, dict):
            raise _ApiError(_v2_error(400, "The data field must be a JSON object. ERROR_MALFORMED_REQUEST"))
        unknown = sorted(set(body) - {"name", "type", "visibility", "defaultValue"})
        if unknown:
            raise _ApiError(_v2_error(400, f"Unknown data field property '{unknown[0]}'. ERROR_DATAFIELD_INVALID"))
        name = body.get("name")
        if not is_valid_data_field_name(name):
            raise _ApiError(_v2_error(
                400, "The data field name must be 1-20 characters of A-Z, a-z, 0-9, '-' or '_'. ERROR_DATAFIELD_INVALID"))
        type_ = _match_choice(body.get("type"), DATA_FIELD_TYPES)
        if type_ is None:
            raise _ApiError(_v2_error(
                400, "The data field type must be one of String, Numeric, Date, Boolean. ERROR_DATAFIELD_INVALID"))
        visibility = _match_choice(body.get("visibility", "Private"), _VISIBILITIES)
        if visibility is None:
            raise _ApiError(_v2_error(400, "The data field visibility must be Private or Public. ERROR_DATAFIELD_INVALID"))
        default = body.get("defaultValue")
        if default is not None and _coerce_data_value(type_, default) is _INVALID:
            raise _ApiError(_v2_error(400, f"The default value is not a valid {type_}. ERROR_DATAFIELD_INVALID"))
        if name.casefold() in self._data_fields:
            raise _ApiError(_v2_error(400, "Field already exists. ERROR_NON_UNIQUE_DATAFIELD"))
        created = self._define_data_field(name, type_, visibility, default)
        return _Response(201, created.as_json())

    def _v2_list_address_books(self, query: dict[str, list[str]]) -> _Response:
        """``GET /v2/address-books?select=&skip=``; ``select`` 1-1000 (default 1000), ``skip`` >= 0."""
        select = _int_param(query, "select", 1000)
        skip = _int_param(query, "skip", 0)
        if select is None or skip is None or not 1 <= select <= 1000 or skip < 0:
            raise _ApiError(_v2_error(400, "select must be 1-1000 and skip >= 0. ERROR_PARAMETER_INVALID"))
        books = sorted(self._address_books.values(), key=lambda b: b.id)[skip : skip + select]
        return _Response(200, [self._address_book_json(b) for b in books])

    def _v2_create_address_book(self, raw: bytes) -> _Response:
        """``POST /v2/address-books``.

        ``name`` required, <= 128 chars (else ``ERROR_ADDRESSBOOK_INVALID``), unique case-insensitively and
        not a reserved system list ("Test", "All Contacts") -> else ``ERROR_ADDRESSBOOK_DUPLICATE``.
        Answers 201 as the v2 spec documents (the per-area hub spec says 200).
        """
        body = _parse_v2_json(raw)
        if not isinstance(body, dict):
            raise _ApiError(_v2_error(400, "The list must be a JSON object. ERROR_MALFORMED_REQUEST"))
        unknown = sorted(set(body) - {"id", "name", "visibility", "contacts"})
        if unknown:
            raise _ApiError(_v2_error(400, f"Unknown list property '{unknown[0]}'. ERROR_ADDRESSBOOK_INVALID"))
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise _ApiError(_v2_error(400, "The list name must be 1-128 characters. ERROR_ADDRESSBOOK_INVALID"))
        visibility = _match_choice(body.get("visibility", "Private"), _VISIBILITIES)
        if visibility is None:
            raise _ApiError(_v2_error(400, "The list visibility must be Private or Public. ERROR_ADDRESSBOOK_INVALID"))
        folded = name.strip().casefold()
        if folded in _RESERVED_ADDRESS_BOOK_NAMES or any(
            b.name.strip().casefold() == folded for b in self._address_books.values()
        ):
            raise _ApiError(_v2_error(400, "A list with this name already exists. ERROR_ADDRESSBOOK_DUPLICATE"))
        book = _AddressBook(max(self._address_books, default=0) + 1, name, visibility)
        self._address_books[book.id] = book
        return _Response(201, self._address_book_json(book))

    def _v2_remove_from_address_book(self, raw_book_id: str, raw_contact_id: str) -> _Response:
        """``DELETE /v2/address-books/{addressBookId}/contacts/{contactId}`` -> 204.

        Unknown list -> 404 ``ERROR_ADDRESSBOOK_NOT_FOUND``; unknown contact -> 404 ``ERROR_CONTACT_NOT_FOUND``.
        Removing a contact that is not a member answers 204 (sandbox choice: removal is idempotent).
        """
        book_id, contact_id = _parse_int32(unquote(raw_book_id)), _parse_int32(unquote(raw_contact_id))
        if book_id is None or contact_id is None:
            raise _ApiError(_v2_error(400, "The list id and contact id must be integers. ERROR_PARAMETER_INVALID"))
        if book_id not in self._address_books:
            raise _ApiError(_v2_error(404, "Error: ERROR_ADDRESSBOOK_NOT_FOUND", contact_id=contact_id))
        contact = self._contacts.get(contact_id)
        if contact is None:
            raise _ApiError(_v2_error(404, "Error: ERROR_CONTACT_NOT_FOUND", contact_id=contact_id))
        before = snapshot(contact)
        if contact.lists.pop(book_id, None) is not None:
            contact.updated = self._now_iso()
            self._events.contact_changed(before, snapshot(contact))
        return _Response(204, None, contact_id=contact_id)

    def _v2_suppressions_since(self, feed: str, raw_date: str, query: dict[str, list[str]]) -> _Response:
        """``GET /v2/contacts/suppressed-since/{date}`` and ``/v2/contacts/unsubscribed-since/{date}``.

        ``[{"suppressedContact": ApiContact, "dateRemoved": dt, "reason": ApiContactStatuses}]`` for every
        contact whose email channel went into a suppressed status at or after ``date`` and is still in it
        (a resubscribed contact drops out); ``unsubscribed-since`` lists the ``Unsubscribed`` ones only.
        Ascending by ``dateRemoved`` (then id), paged with ``select`` 1-1000 (default 1000) and ``skip`` >= 0
        (else 400 ``ERROR_PARAMETER_INVALID``). ``date`` is ISO 8601 (a date, or a date-time; without an
        offset it is UTC); anything else -> 400 ``ERROR_PARAMETER_INVALID`` (sandbox choice: the code of a
        bad path date is not documented).
        """
        select = _int_param(query, "select", 1000)
        skip = _int_param(query, "skip", 0)
        if select is None or skip is None or not 1 <= select <= 1000 or skip < 0:
            raise _ApiError(_v2_error(400, "select must be 1-1000 and skip >= 0. ERROR_PARAMETER_INVALID"))
        since = _parse_since_date(unquote(raw_date))
        if since is None:
            raise _ApiError(_v2_error(400, "The date must be an ISO 8601 date or date-time. ERROR_PARAMETER_INVALID"))
        rows = []
        for contact in self._contacts.values():
            removed = contact.email_removed_at
            if contact.email is None or removed is None or contact.email_status not in _SUPPRESSED_EMAIL_STATUSES:
                continue
            if removed < since or (feed == "unsubscribed-since" and contact.email_status != "unsubscribed"):
                continue
            rows.append((removed, contact.contact_id, contact))
        rows.sort(key=lambda row: (row[0], row[1]))
        page = [
            {"suppressedContact": self._v2_contact_json(contact), "dateRemoved": _iso(removed),
             "reason": _v2_status(contact.email_status)}
            for removed, _, contact in rows[skip : skip + select]
        ]
        return _Response(200, page)

    def _v2_contact_json(self, c: _Contact) -> dict[str, Any]:
        """The v2 spec's ``ApiContact``: PascalCase enums, ``dataFields`` as key/value pairs."""
        return {
            "id": c.contact_id,
            "email": c.email,
            "optInType": c.opt_in_type,
            "emailType": "PlainText" if c.email_type == "PlainText" else "Html",
            "dataFields": [{"key": f.name, "value": c.data[f.name]} for f in self._data_fields.values()
                           if f.name in c.data],
            "status": _v2_status(c.email_status),
        }

    # ==================================================================================================
    # v2 programs (Dotdigital API docs: Programs)
    # ==================================================================================================
    def _route_programs(
        self, method: str, segments: list[str], lowered: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[bool, Callable[[], _Response] | None]:
        """Routes below ``/v2/programs`` (``segments`` / ``lowered`` without that prefix)."""
        if lowered == []:
            return True, (lambda: self._v2_list_programs(query)) if method == "GET" else None
        if lowered == ["enrolments"]:
            return True, (lambda: self._v2_create_enrolment(body)) if method == "POST" else None
        if len(lowered) == 2 and lowered[0] == "enrolments":
            return True, (lambda: self._v2_get_enrolments(segments[1], query)) if method == "GET" else None
        if len(lowered) == 3 and lowered[0] == "enrolments" and lowered[2] == "report-faults":
            return True, (lambda: self._v2_enrolment_faults(segments[1])) if method == "GET" else None
        if len(lowered) == 1:
            return True, (lambda: self._v2_get_program(segments[0])) if method == "GET" else None
        return False, None

    def _require_programs(self) -> None:
        """403 when the account lacks the Programs permission (``programs_enabled = False``). The Programs spec
        gives the 403 no body; the sandbox sends the v2 envelope with ``ERROR_FEATURENOTACTIVE`` (sandbox choice)."""
        if not self._programs_enabled:
            raise _ApiError(_v2_error(403, "The account does not have the Programs permission. ERROR_FEATURENOTACTIVE"))

    def _v2_list_programs(self, query: dict[str, list[str]]) -> _Response:
        """``GET /v2/programs?select=&skip=`` -> ``[programDetails]`` by id; ``select`` 1-1000 (default 1000),
        ``skip`` >= 0 (the spec's ``minimum: 1`` contradicts its own "must not be negative"; the sandbox follows
        the text, like the other v2 lists) -> else 400 ``ERROR_PARAMETER_INVALID``."""
        self._require_programs()
        select, skip = _paging(query)
        programs = [p for _, p in sorted(self._programs.items())][skip : skip + select]
        return _Response(200, [p.as_json() for p in programs])

    def _v2_get_program(self, raw_id: str) -> _Response:
        """``GET /v2/programs/{id}`` -> ``programDetails``; not an int32 -> 400 ``ERROR_PARAMETER_INVALID``,
        unknown -> 404 ``ERROR_PROGRAM_NOT_FOUND``."""
        self._require_programs()
        program_id = _parse_int32(unquote(raw_id))
        if program_id is None:
            raise _ApiError(_v2_error(400, "The program id must be an integer. ERROR_PARAMETER_INVALID"))
        program = self._programs.get(program_id)
        if program is None:
            raise _ApiError(_v2_error(404, "Error: ERROR_PROGRAM_NOT_FOUND"))
        return _Response(200, program.as_json())

    def _v2_create_enrolment(self, raw: bytes) -> _Response:
        """``POST /v2/programs/enrolments`` -> 201 ``ApiProgramEnrolment`` (``Processing``; ``Finished`` when
        ``enrolment_delay_seconds`` is 0). Every call is recorded in ``enrolment_calls``. Checks, in order:

        * programs disabled -> 403; malformed JSON -> 400 ``ERROR_MALFORMED_REQUEST``.
        * Body: an object with ``programId`` (int32, required), ``contacts`` (1-25 contact ids) and/or
          ``addressBooks`` (ids). Keys match case-insensitively (``ProgramId``, ``Contacts``, ``AddressBooks``
          as the Magento 2 connector sends them); ``null`` is the same as absent. Anything else -> 400
          ``ERROR_ENROLMENT_INVALID``: a missing or non-integer ``programId``, no contacts and no (non-empty)
          address books, ``contacts: []`` (the spec's ``minItems: 1``), more than 25 contacts, non-integer
          ids; and, as sandbox choices: unknown keys, a key given twice in different cases, repeated ids,
          and contacts *and* address books in one call (the docs say "contacts or address books").
        * More than 10 address books -> 400 ``ERROR_ADDRESSBOOK_TOOMANY``.
        * Unknown program -> 404 ``ERROR_PROGRAM_NOT_FOUND``; a program that is not ``Active`` -> 422
          ``ERROR_PROGRAM_NOT_ACTIVE``.
        * Any unknown contact id -> 400 ``ERROR_CONTACT_NOT_FOUND``; any unknown address book -> 400
          ``ERROR_ADDRESSBOOK_NOT_FOUND``. The whole call is refused (the Programs spec lists both as reasons
          the request is invalid); nobody is enrolled.
        * ``enrolment_allowance_per_hour`` (20) accepted calls in the rolling hour of sandbox time before
          this one -> 400 ``Error: ERROR_ENROLMENT_ALLOWANCE_EXCEEDED `` (with the trailing space of the real
          message the Magento 2 connector matches). Calls, not contacts, are counted, across all programs; only
          accepted calls count (sandbox choice: refused ones, including refusals for the allowance, do not).
        """
        now = self._now()
        seen: dict[str, Any] = {}
        try:
            self._require_programs()
            enrolment = self._accept_enrolment(raw, now, seen)
        except _ApiError as exc:
            message = exc.response.body.get("message", "") if isinstance(exc.response.body, dict) else ""
            code = _V2_ERROR_CODE_RE.search(message)
            self._enrolment_calls.append(EnrolmentCall(
                now, exc.response.status, seen.get("programId"), tuple(seen.get("contacts") or ()),
                tuple(seen.get("addressBooks") or ()), error=code.group(0) if code else None))
            raise
        self._enrolment_calls.append(EnrolmentCall(now, 201, enrolment.program_id, tuple(enrolment.contacts),
                                                   tuple(enrolment.address_books), enrolment_id=enrolment.id))
        return _Response(201, enrolment.as_json(self.echo_enrolment_contacts))

    def _accept_enrolment(self, raw: bytes, now: datetime, seen: dict[str, Any]) -> _Enrolment:
        def invalid(reason: str) -> _ApiError:
            return _ApiError(_v2_error(400, f"{reason} ERROR_ENROLMENT_INVALID"))

        body = _parse_v2_json(raw)
        if not isinstance(body, dict):
            raise invalid("The enrolment must be a JSON object.")
        fields: dict[str, Any] = {}
        for key, value in body.items():
            name = _ENROLMENT_KEYS.get(str(key).lower())
            if name is None:
                raise invalid(f"Unknown enrolment property '{key}'.")
            if name in fields:
                raise invalid(f"The enrolment property '{name}' is given more than once.")
            fields[name] = value

        program_id = fields.get("programId")
        if isinstance(program_id, bool) or not isinstance(program_id, int) or not -(2**31) <= program_id < 2**31:
            raise invalid("programId is required and must be an integer.")
        seen["programId"] = program_id
        lists: dict[str, list[int]] = {}
        for name in ("contacts", "addressBooks"):
            value = fields.get(name)
            if value is None:
                lists[name] = []
                continue
            if not isinstance(value, list) or any(
                isinstance(i, bool) or not isinstance(i, int) or not -(2**31) <= i < 2**31 for i in value
            ):
                raise invalid(f"{name} must be an array of integer ids.")
            seen[name] = value
            if len(set(value)) != len(value):
                raise invalid(f"{name} holds the same id more than once.")
            lists[name] = list(value)
        contacts, books = lists["contacts"], lists["addressBooks"]
        if fields.get("contacts") is not None and not contacts:
            raise invalid("contacts must hold at least one contact id.")
        if len(contacts) > _MAX_ENROLMENT_CONTACTS:
            raise invalid(f"At most {_MAX_ENROLMENT_CONTACTS} contacts can be enrolled in one call.")
        if len(books) > _MAX_ENROLMENT_ADDRESS_BOOKS:
            raise _ApiError(_v2_error(400, "Error: ERROR_ADDRESSBOOK_TOOMANY"))
        if not contacts and not books:
            raise invalid("No contacts or address books were specified.")
        if contacts and books:
            raise invalid("Enrol contacts or address books, not both.")

        program = self._programs.get(program_id)
        if program is None:
            raise _ApiError(_v2_error(404, "Error: ERROR_PROGRAM_NOT_FOUND"))
        if program.status != "Active":
            raise _ApiError(_v2_error(422, "Error: ERROR_PROGRAM_NOT_ACTIVE"))
        if any(c not in self._contacts for c in contacts):
            raise _ApiError(_v2_error(400, "Error: ERROR_CONTACT_NOT_FOUND"))
        if any(b not in self._address_books for b in books):
            raise _ApiError(_v2_error(400, "Error: ERROR_ADDRESSBOOK_NOT_FOUND"))
        self._prune_allowance_window(now)
        if len(self._allowance_window) >= self.enrolment_allowance_per_hour:
            raise _ApiError(_v2_error(400, "Error: ERROR_ENROLMENT_ALLOWANCE_EXCEEDED "))

        self._allowance_window.append(now)
        enrolment = _Enrolment(str(uuid.uuid4()), program_id, contacts, books, now,
                               now + timedelta(seconds=self._enrolment_delay))
        self._enrolments[enrolment.id] = enrolment
        if enrolment.due <= now:
            self._process_enrolment(enrolment, now)
        return enrolment

    def _prune_allowance_window(self, now: datetime) -> None:
        while self._allowance_window and self._allowance_window[0] <= now - _ENROLMENT_ALLOWANCE_WINDOW:
            self._allowance_window.popleft()

    def _v2_get_enrolments(self, raw_key: str, query: dict[str, list[str]]) -> _Response:
        """``GET /v2/programs/enrolments/{enrolmentId}`` and ``GET /v2/programs/enrolments/{status}`` share a path.

        A status (``ENROLMENT_STATUSES``, matched case-insensitively) lists the enrolments in it, oldest first,
        paged by ``select`` / ``skip`` like ``GET /v2/programs``; a GUID answers that enrolment or 404
        ``ERROR_ENROLMENT_NOT_FOUND``; anything else -> 400 ``ERROR_PARAMETER_INVALID`` (sandbox choice).
        """
        self._require_programs()
        key = unquote(raw_key)
        status = _match_choice(key, ENROLMENT_STATUSES)
        if status is not None:
            select, skip = _paging(query)
            matching = [e for e in self._enrolments.values() if e.status == status][skip : skip + select]
            return _Response(200, [e.as_json(self.echo_enrolment_contacts) for e in matching])
        return _Response(200, self._find_enrolment(key).as_json(self.echo_enrolment_contacts))

    def _find_enrolment(self, enrolment_id: str) -> _Enrolment:
        if not _IMPORT_ID_RE.match(enrolment_id):
            raise _ApiError(_v2_error(400, "The enrolment id must be a GUID. ERROR_PARAMETER_INVALID"))
        enrolment = self._enrolments.get(enrolment_id.lower())
        if enrolment is None:
            raise _ApiError(_v2_error(404, "Error: ERROR_ENROLMENT_NOT_FOUND"))
        return enrolment

    def _v2_enrolment_faults(self, raw_id: str) -> _Response:
        """``GET /v2/programs/enrolments/{id}/report-faults`` -> 200 ``text/csv``: the header
        ``Id,Email,TelephoneNumber,Reason`` and one row per contact that was not enrolled (telephone numbers
        with ``+``; empty cells for what the contact lacks). While the enrolment is ``Processing`` -> 400
        ``ERROR_ENROLMENT_IS_PROCESSING``; not a GUID -> 400 ``ERROR_PARAMETER_INVALID``; unknown -> 404
        ``ERROR_ENROLMENT_NOT_FOUND``."""
        self._require_programs()
        enrolment = self._find_enrolment(unquote(raw_id))
        if enrolment.finished_at is None:
            raise _ApiError(_v2_error(400, "Error: ERROR_ENROLMENT_IS_PROCESSING"))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_FAULT_REPORT_COLUMNS)
        writer.writerows(enrolment.faults)
        return _Response(200, out.getvalue().encode("utf-8"), headers={"Content-Type": "text/csv; charset=utf-8"})

    # -- enrolment processing and program entries -----------------------------------------------------
    def _pending_enrolments(self) -> list[_Enrolment]:
        return [e for e in self._enrolments.values() if e.finished_at is None]

    def _advance_enrolments(self) -> None:
        """Process every enrolment that is due by the sandbox clock, earliest first (the caller holds the lock)."""
        pending = self._pending_enrolments()
        if not pending:
            return
        now = self._now()
        for enrolment in sorted(pending, key=lambda e: e.due):
            if enrolment.due <= now:
                self._process_enrolment(enrolment, enrolment.due)

    def _process_enrolment(self, enrolment: _Enrolment, at: datetime) -> None:
        """Finish an enrolment against the account state of now: enter each of its contacts (the listed ones,
        then the members of its address books by contactId, each once) or report why not (see
        ``_entry_refusal``; a contact deleted meanwhile -> ``ContactNotFound``, a program no longer ``Active``
        -> ``ProgramNotActive``). Entries are stamped ``at``."""
        program = self._programs.get(enrolment.program_id)
        members = [c.contact_id for _, c in sorted(self._contacts.items())
                   if any(b in c.lists for b in enrolment.address_books)]
        for contact_id in dict.fromkeys([*enrolment.contacts, *members]):
            contact = self._contacts.get(contact_id)
            if contact is None:
                enrolment.faults.append((contact_id, "", "", "ContactNotFound"))
                continue
            reason = "ProgramNotActive" if program is None or program.status != "Active" \
                else self._entry_refusal(program, contact)
            if reason is not None:
                phone = f"+{contact.mobile}" if contact.mobile else ""
                enrolment.faults.append((contact.contact_id, contact.email or "", phone, reason))
                continue
            assert program is not None
            self._enter_program(program, contact, enrolment.id, at)
        enrolment.finished_at = at

    def _entry_refusal(self, program: _Program, contact: _Contact) -> str | None:
        """Why ``contact`` cannot enter ``program`` now (a fault report ``Reason``), or ``None``.

        The channel status (email, or SMS for a contact without email) decides first: ``unsubscribed`` ->
        ``Unsubcribed`` (sic), ``pendingOptIn`` -> ``PendingOptIn``, any other suppressed status -> ``Suppressed``.
        Then a contact that entered the program before -> ``AlreadyInProgram`` unless the program allows
        re-entry (the sandbox does not model contacts leaving a program).
        """
        status = contact.email_status if contact.email is not None else contact.sms_status
        if status == "unsubscribed":
            return "Unsubcribed"
        if status == "pendingOptIn":
            return "PendingOptIn"
        if status in _SUPPRESSED_EMAIL_STATUSES or status in _STICKY_SMS_STATUSES:
            return "Suppressed"
        if not program.allow_reentry and (program.id, contact.contact_id) in self._entered:
            return "AlreadyInProgram"
        return None

    def _enter_program(self, program: _Program, contact: _Contact, via: str, at: datetime,
                       list_id: int | None = None) -> None:
        self._program_entries.append(ProgramEntry(program.id, contact.contact_id, via, at, list_id))
        self._entered.add((program.id, contact.contact_id))

    def _on_list_join(self, contact: _Contact, book_id: int) -> None:
        """``contact`` just joined address book ``book_id`` (it was not a member): every ``Active`` program
        started by that list enters it, at the sandbox time of now, under the same rules as an enrolment
        (``_entry_refusal``: a suppressed or pending contact, or one already in a program without re-entry,
        does not enter). No allowance applies. Every path that adds list members must call this."""
        if self._applying_import and not self.imports_start_list_programs:
            return
        now: datetime | None = None
        for program in self._programs.values():
            if program.start_list_id != book_id or program.status != "Active":
                continue
            if self._entry_refusal(program, contact) is None:
                now = now or self._now()
                self._enter_program(program, contact, LIST_JOIN, now, list_id=book_id)

    # ==================================================================================================
    # contacts v3
    # ==================================================================================================
    def _v3_list_contacts(self, query: dict[str, list[str]]) -> _Response:
        """``GET /contacts/v3`` - contacts by criteria, ascending, paged by marker (Contacts v3 spec: getContacts).

        * ``~modified=gte::<ts>`` / ``~created=gte::<ts>`` (pattern ``gte::YYYY-MM-DDTHH:MM:SS[.fff]Z``, not
          both) -> else 400 ``contacts:invalidFilter``; ``~listId`` (existing list) filters on membership;
          ``~segmentId`` -> 400 ``contacts:invalidFilter`` (the sandbox has no segments).
        * Items hold ``contactId``, ``status``, ``created``, ``updated`` and ``identifiers``, plus the sets named
          in ``include`` (pipe-delimited ``channelProperties|lists|preferences|consentRecords``) and the data
          fields named in ``data-fields`` (pipe-delimited, or ``[[ALL]]``). Unknown values -> 400
          ``contacts:invalidParameter`` (sandbox choice).
        * Order: ``updated`` (with ``~modified``) else ``created``, then ``contactId``. ``limit`` 1-5000 (default
          1000, sandbox choice); ``marker`` is opaque: ``_links.next.marker`` of the previous page, present
          while more items follow. A contact modified while a walk is under way moves to its end.
        """
        def single(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        def bad(code: str, description: str, item: str) -> _ApiError:
            return _ApiError(_v3_error(400, f"contacts:{code}", description, [{"item": item, "description": description}]))

        modified, created = single("~modified"), single("~created")
        if modified is not None and created is not None:
            raise bad("invalidFilter", "~created can't be used in conjunction with ~modified", "~created")
        since: datetime | None = None
        order_by = "updated" if modified is not None else "created"
        for name, raw in (("~modified", modified), ("~created", created)):
            if raw is None:
                continue
            if not _V3_SINCE_FILTER_RE.match(raw):
                raise bad("invalidFilter", f"The filter value '{raw}' is invalid", name)
            since = datetime.fromisoformat(raw[len("gte::"):].replace("Z", "+00:00"))
        list_id = None
        if (raw_list := single("~listId")) is not None:
            list_id = _parse_int32(raw_list)
            if list_id is None or list_id not in self._address_books:
                raise bad("invalidFilter", f"The filter value '{raw_list}' is invalid", "~listId")
        if single("~segmentId") is not None:
            raise bad("invalidFilter", "The sandbox has no segments", "~segmentId")
        limit = _int_param(query, "limit", 1000)
        if limit is None or not 1 <= limit <= 5000:
            raise bad("invalidParameter", "limit must be between 1 and 5000", "limit")
        include: list[str] = []
        for value in query.get("include", []):
            for part in value.split("|"):
                if part not in _V3_INCLUDES:
                    raise bad("invalidParameter", f"'{part}' is not one of {', '.join(_V3_INCLUDES)}", "include")
                include.append(part)
        fields: list[str] | None = None
        for value in query.get("data-fields", []):
            fields = fields or []
            for part in value.split("|"):
                if part == "[[ALL]]":
                    fields += [f.name for f in self._data_fields.values()]
                    continue
                definition = self._data_fields.get(part.casefold())
                if definition is None:
                    raise bad("invalidParameter", f"The data field '{part}' does not exist", "data-fields")
                fields.append(definition.name)
        after = None
        if (marker := single("marker")) is not None:
            after = _decode_marker(marker)
            if after is None:
                raise bad("invalidParameter", "The marker is invalid", "marker")

        rows = []
        for contact in self._contacts.values():
            stamp = _parse_sandbox_time(contact.updated if order_by == "updated" else contact.created)
            if since is not None and stamp < since:
                continue
            if list_id is not None and list_id not in contact.lists:
                continue
            key = (stamp, contact.contact_id)
            if after is not None and key <= after:
                continue
            rows.append((key, contact))
        rows.sort(key=lambda row: row[0])
        page, more = rows[:limit], len(rows) > limit

        items = []
        for _, contact in page:
            model = self._read_model(contact)
            item = {k: model[k] for k in ("contactId", "status", "created", "updated", "identifiers")}
            if fields is not None:
                item["dataFields"] = {name: model["dataFields"].get(name) for name in dict.fromkeys(fields)}
            for name in include:
                if name == "preferences":
                    item["preferences"] = model.get("preferences", [])
                else:
                    item[name] = model[name]
            items.append(item)

        base_query = [(k, v) for k, values in query.items() if k != "marker" for v in values]

        def link(marker_value: str) -> dict[str, str]:
            return {"marker": marker_value,
                    "link": f"{self.base_url}/contacts/v3?{urlencode(base_query + [('marker', marker_value)])}"}

        links: dict[str, Any] = {"self": link(marker or _encode_marker(None)), "first": link(_encode_marker(None))}
        if more:
            links["next"] = link(_encode_marker(page[-1][0]))
        return _Response(200, {"_items": items, "_links": links})

    def _v3_get_contact(self, raw_identifier: str, raw_value: str) -> _Response:
        """``GET /contacts/v3/{identifier}/{value}`` -> read model, or 404 ``contacts:contactNotFound``."""
        identifier, value = self._parse_contact_path(raw_identifier, raw_value)
        contact = self._lookup(identifier, value)
        if contact is None:
            raise _ApiError(_contact_not_found(identifier, value))
        return _Response(200, self._read_model(contact), contact_id=contact.contact_id)

    def _v3_delete_contact(self, raw_identifier: str, raw_value: str) -> _Response:
        """``DELETE /contacts/v3/{identifier}/{value}`` -> 200 ``{contactId}`` (the Contacts v3 spec's
        ``deleteContact``), or 404 ``contacts:contactNotFound``. The contact's contact-scoped insight records go
        with it, as with :meth:`delete_contact`."""
        identifier, value = self._parse_contact_path(raw_identifier, raw_value)
        contact = self._lookup(identifier, value)
        if contact is None:
            raise _ApiError(_contact_not_found(identifier, value))
        self._remove_contact(contact)
        return _Response(200, {"contactId": contact.contact_id}, contact_id=contact.contact_id)

    def _remove_contact(self, contact: _Contact) -> None:
        del self._contacts[contact.contact_id]
        self._events.contact_changed(snapshot(contact), None)
        for collection in self._collections.values():
            for owner_key in [k for k in collection.records if k[0] == contact.contact_id]:
                del collection.records[owner_key]

    def _v3_patch_contact(
        self, raw_identifier: str, raw_value: str, query: dict[str, list[str]], raw: bytes
    ) -> _Response:
        """``PATCH /contacts/v3/{identifier}/{value}?merge-option=`` - the single-contact upsert.

        * Existing contact (matched by the path identifier) -> only supplied fields change, 200.
        * No match -> create (email or mobileNumber required; new sequential ``contactId``), 201; the path
          value becomes the matching identifier unless ``identifiers`` supplies that identifier too.
        * Path identifier ``contactId`` with no match -> 404 ``contacts:contactNotFound`` (cannot create).
        * An identifier already owned by another contact -> 409 ``contacts:idAlreadyExists``.
        * Suppression is sticky: see ``_apply_email_status``.
        * ``lists`` adds memberships and never removes any.
        """
        identifier, value = self._parse_contact_path(raw_identifier, raw_value)
        merge_values = query.get("merge-option", [])
        merge = merge_values[-1] if merge_values else "overwrite"
        if merge not in _MERGE_OPTIONS:
            # Sandbox choice: the spec documents the enum but no error code for a bad query parameter.
            raise _ApiError(_v3_error(400, "contacts:invalidParameter",
                                      f"merge-option must be one of {', '.join(_MERGE_OPTIONS)}",
                                      [{"item": "merge-option", "description": f"'{merge}' is not allowed"}]))
        body = _parse_v3_json(raw)
        write = self._validate_write(body)
        contact, created = self._upsert_contact(identifier, value, write, merge)
        return _Response(201 if created else 200, self._read_model(contact), contact_id=contact.contact_id)

    def _upsert_contact(self, identifier: str, value: str, write: _ContactWrite, merge: str) -> tuple[_Contact, bool]:
        """Create or update the contact matched by ``identifier``/``value`` (normalised); ``True`` if created.

        The one upsert code path, shared by the PATCH and by each item of a bulk contact import.
        """
        contact = self._lookup(identifier, value)
        before = snapshot(contact) if contact is not None else None
        now = self._now_iso()
        if contact is None:
            if identifier == "contactId":
                raise _ApiError(_contact_not_found(identifier, value), "contactNotFound")
            if write.contact_id is not None:
                raise _ApiError(_v3_error(400, "contacts:invalidId", "A contactId cannot be set on a new contact",
                                          [{"item": "identifiers.contactId", "description": "contactId is immutable"}]),
                                "InvalidContactId")
            email = write.email if write.email is not None else (value if identifier == "email" else None)
            mobile = write.mobile if write.mobile is not None else (value if identifier == "mobileNumber" else None)
            if email is None and mobile is None:
                raise _ApiError(_v3_error(400, "contacts:invalidId",
                                          "A new contact needs an email or mobileNumber identifier"), "NoValidIdentifiers")
            self._check_identifier_conflicts(None, email, mobile)
            contact = self._new_contact(email=email, mobile=mobile, now=now, write=write)
            created = True
        else:
            if write.contact_id is not None and write.contact_id != contact.contact_id:
                raise _ApiError(_v3_error(400, "contacts:invalidId", "It is not possible to modify the contactId field",
                                          [{"item": "identifiers.contactId", "description": "contactId is immutable"}]),
                                "InvalidContactId")
            self._check_identifier_conflicts(contact, write.email, write.mobile)
            if write.email is not None and contact.email is None:
                contact.email_status = "subscribed"  # a new email channel starts like a new contact
            if write.email is not None:
                contact.email = write.email
            if write.mobile is not None:
                if contact.mobile is None:
                    contact.sms_status = contact.whatsapp_status = self._mobile_default
                contact.mobile = write.mobile
            created = False
            self._apply_write(contact, write, merge, creating=False)
        contact.updated = now
        self._events.contact_changed(before, snapshot(contact))
        return contact, created

    # -- contact helpers ------------------------------------------------------------------------------
    def _parse_contact_path(self, raw_identifier: str, raw_value: str, *, service: str = "contacts") -> tuple[str, str]:
        """Validate ``{identifier}/{value}``; errors carry ``<service>:invalidId``.

        * ``identifier`` must be ``contactId``, ``email`` or ``mobileNumber`` (the sandbox account has no
          custom identifiers, which "must exist in the account") -> else 400 ``contacts:invalidId``.
        * ``value`` 1-256 chars, of the identifier's type (valid email / E.164 number / integer).
        * A literal ``+`` in the value segment is rejected (sandbox strictness): Dotdigital says to URL-encode
          it as ``%2B``; an unencoded ``+`` is easily read as a space by the server.
        """
        identifier = unquote(raw_identifier)
        if not _IDENTIFIER_NAME_RE.match(identifier) or identifier not in _PATH_IDENTIFIERS:
            raise _ApiError(_v3_error(400, f"{service}:invalidId",
                                      f"The identifier '{identifier}' is not a valid identifier for this account"))
        if "+" in raw_value:
            raise _ApiError(_v3_error(400, f"{service}:invalidId",
                                      f"The id value is invalid for the identifier '{identifier}': '+' must be "
                                      "percent-encoded as %2B"))
        value = unquote(raw_value)
        invalid = _v3_error(400, f"{service}:invalidId", f"The id value '{value}' is invalid for the identifier '{identifier}'")
        if not 1 <= len(value) <= 256:
            raise _ApiError(invalid)
        if identifier == "email":
            if not _EMAIL_RE.match(value):
                raise _ApiError(invalid)
        elif identifier == "mobileNumber":
            normalised = _normalise_mobile(value)
            if normalised is None:
                raise _ApiError(invalid)
            value = normalised
        else:
            if not value.isdigit() or _parse_int32(value) is None:
                raise _ApiError(invalid)
            value = str(int(value))
        return identifier, value

    def _lookup(self, identifier: str, value: str) -> _Contact | None:
        if identifier == "email":
            return self._find_contact(email=value)
        if identifier == "mobileNumber":
            return self._find_contact(mobile=value)
        return self._contacts.get(int(value))

    def _find_contact(
        self, *, email: str | None = None, mobile: str | None = None, contact_id: int | None = None
    ) -> _Contact | None:
        if contact_id is not None:
            return self._contacts.get(int(contact_id))
        if email is not None:
            folded = email.casefold()
            return next((c for c in self._contacts.values() if c.email and c.email.casefold() == folded), None)
        if mobile is not None:
            digits = mobile.lstrip("+")
            return next((c for c in self._contacts.values() if c.mobile == digits), None)
        return None

    def _check_identifier_conflicts(self, contact: _Contact | None, email: str | None, mobile: str | None) -> None:
        """All identifiers must be unique in the account -> 409 ``contacts:idAlreadyExists`` (Contacts v3 spec)."""
        for name, value, other in (
            ("email", email, self._find_contact(email=email) if email else None),
            ("mobileNumber", mobile, self._find_contact(mobile=mobile) if mobile else None),
        ):
            if other is not None and other is not contact:
                raise _ApiError(_v3_error(
                    409, "contacts:idAlreadyExists",
                    f"The id value '{value}' for the identifier '{name}' already exists. All identifiers must be unique!",
                    [{"item": str(value), "description": f"Already in use by another contact ('{name}')"}],
                ))

    def _new_contact(
        self, *, email: str | None, mobile: str | None, now: str | None = None, write: _ContactWrite | None = None
    ) -> _Contact:
        now = now or self._now_iso()
        contact = _Contact(contact_id=self._next_contact_id, created=now, updated=now, email=email, mobile=mobile,
                           sms_status=self._mobile_default, whatsapp_status=self._mobile_default)
        self._next_contact_id += 1
        self._contacts[contact.contact_id] = contact
        if write is not None:
            self._apply_write(contact, write, "overwrite", creating=True)
        return contact

    def _apply_write(self, contact: _Contact, write: _ContactWrite, merge: str, *, creating: bool) -> None:
        # Data fields with merge semantics (overwrite | overwrite-if-not-empty | overwrite-if-empty).
        for name, value in write.data_fields.items():
            current = contact.data.get(name)
            if merge == "overwrite-if-not-empty" and value in (None, ""):
                continue
            if merge == "overwrite-if-empty" and current not in (None, ""):
                continue
            if value is None:
                contact.data.pop(name, None)  # null clears the field
            else:
                contact.data[name] = value

        if write.email_type is not None:
            contact.email_type = write.email_type
        if write.opt_in_type is not None:
            contact.opt_in_type = write.opt_in_type
        before = None if creating else contact.email_status
        if creating:
            requested = write.email_status or "subscribed"  # documented default for new contacts
            if requested == "subscribed" and contact.opt_in_type == "VerifiedDouble":
                requested = "pendingOptIn"
            contact.email_status = requested
        else:
            self._apply_email_status(contact, write)
        if contact.email_status in _SUPPRESSED_EMAIL_STATUSES:
            if before not in _SUPPRESSED_EMAIL_STATUSES or contact.email_removed_at is None:
                contact.email_removed_at = self._now()  # the suppression feeds report this change
        else:
            contact.email_removed_at = None

        for attr, requested in (("sms_status", write.sms_status), ("whatsapp_status", write.whatsapp_status)):
            if requested is None:
                continue
            if not creating and getattr(contact, attr) in _STICKY_SMS_STATUSES:
                continue  # sandbox choice: suppressed/bounced mobile channels stay so
            setattr(contact, attr, requested)

        now = self._now_iso()
        for book_id in write.lists:
            if book_id not in contact.lists:
                contact.lists[book_id] = now
                self._on_list_join(contact, book_id)
        for pref_id, opted_in in write.preferences:
            contact.preferences[pref_id] = opted_in
        for record in write.consent_records:
            contact.consent_records.append({**record, "dateTimeCreated": now})

    @staticmethod
    def _apply_email_status(contact: _Contact, write: _ContactWrite) -> None:
        """Email channel status change on an existing contact.

        * No status in the payload -> unchanged.
        * Currently suppressed (unsubscribed, suppressed, bounced, complained, ...): the PATCH still succeeds
          but the status is sticky. Only ``status: "subscribed"`` *with* ``resubscribeOptions`` lifts an
          ``unsubscribed``/``suppressed`` state: to ``subscribed`` when ``resubscribeWithNoChallenge`` is true
          (the default), else ``pendingOptIn`` (a challenge email is sent). Hard bounces, complaints etc.
          cannot be lifted ("ContactCannotBeUnsuppressed").
        * Otherwise the requested status applies; ``subscribed`` with ``optInType: verifiedDouble`` becomes
          ``pendingOptIn`` until confirmed.
        """
        requested = write.email_status
        if requested is None or contact.email is None:
            return
        current = contact.email_status
        if current in _SUPPRESSED_EMAIL_STATUSES:
            if (
                requested == "subscribed"
                and write.resubscribe_no_challenge is not None
                and current in _RESUBSCRIBABLE_EMAIL_STATUSES
            ):
                contact.email_status = "subscribed" if write.resubscribe_no_challenge else "pendingOptIn"
            return
        if requested == "subscribed":
            if current != "subscribed" and contact.opt_in_type == "VerifiedDouble":
                contact.email_status = "pendingOptIn"
            else:
                contact.email_status = "subscribed"
        else:
            contact.email_status = requested

    def _validate_write(self, body: Any) -> _ContactWrite:
        """Validate a v3 contact write model (Contacts v3 spec: ``updateContactRequest``).

        Structural problems (not an object, unknown top-level key, wrong JSON types, bad enums, bad
        consent records) -> 400 ``contacts:badJson``. Identifier values -> 400 ``contacts:invalidId``.
        Data-field problems (unknown field, value incompatible with the field type) and unknown list ids ->
        400 ``contacts:invalidContacts`` (the code in Dotdigital's error-handling docs example; the
        spec has no code for this case) with one ``details`` entry per offending field.
        """
        if not isinstance(body, dict):
            raise _ApiError(_bad_json("The request body must be a JSON object"))
        unknown = sorted(set(body) - _WRITE_TOP_LEVEL_KEYS)
        if unknown:
            raise _ApiError(_bad_json("The request JSON contains unknown properties",
                                      [{"item": k, "description": "Unknown property"} for k in unknown]))
        write = _ContactWrite()

        match_identifier = body.get("matchIdentifier")
        if match_identifier is not None and match_identifier not in _PATH_IDENTIFIERS:
            raise _ApiError(_bad_json("matchIdentifier must be contactId, email or mobileNumber",
                                      [{"item": "matchIdentifier", "description": str(match_identifier)}]),
                            "InvalidMatchIdentifier")

        self._validate_identifiers(body.get("identifiers"), write, "identifiers" in body)
        self._validate_data_fields(body, write)
        self._validate_channel_properties(body, write)
        self._validate_lists(body, write)
        _validate_preferences(body, write)
        _validate_consent_records(body, write)
        return write

    @staticmethod
    def _validate_identifiers(identifiers: Any, write: _ContactWrite, present: bool) -> None:
        """``identifiers``: email (valid address), mobileNumber (E.164, stored without ``+``), contactId
        (match only, int >= 0). A ``null`` identifier is ignored: nulls only clear data fields."""
        if not present:
            return
        if not isinstance(identifiers, dict):
            raise _ApiError(_bad_json("identifiers must be an object", [{"item": "identifiers", "description": "Not an object"}]))
        for key, value in identifiers.items():
            if key not in ("email", "mobileNumber", "contactId"):
                raise _ApiError(_v3_error(400, "contacts:invalidId",
                                          f"The identifier '{key}' does not exist in this account",
                                          [{"item": f"identifiers.{key}", "description": "Unknown custom identifier"}]),
                                "NoValidIdentifiers")
            if value is None:
                continue
            if key == "contactId":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise _ApiError(_bad_json("identifiers.contactId must be a non-negative integer",
                                              [{"item": "identifiers.contactId", "description": repr(value)}]),
                                    "InvalidContactId")
                write.contact_id = value
                continue
            invalid = _v3_error(400, "contacts:invalidId", f"The id value '{value}' is invalid for the identifier '{key}'",
                                [{"item": f"identifiers.{key}", "description": "Invalid value"}])
            failure_code = "InvalidEmail" if key == "email" else "InvalidPhoneNumber"  # import codes
            if not isinstance(value, str):
                raise _ApiError(invalid, failure_code)
            if key == "email":
                if not _EMAIL_RE.match(value):
                    raise _ApiError(invalid, failure_code)
                write.email = value
            else:
                normalised = _normalise_mobile(value)
                if normalised is None:
                    raise _ApiError(invalid, failure_code)
                write.mobile = normalised

    def _validate_data_fields(self, body: dict[str, Any], write: _ContactWrite) -> None:
        """``dataFields``: every key must be an existing data field (case-insensitive; create fields first)
        and every value must fit the field's type: Numeric -> JSON number, Date -> ISO 8601 date or
        date-time string, Boolean -> JSON boolean, String -> JSON string; ``null`` clears the field."""
        if "dataFields" not in body:
            return
        data_fields = body["dataFields"]
        if not isinstance(data_fields, dict):
            raise _ApiError(_bad_json("dataFields must be an object", [{"item": "dataFields", "description": "Not an object"}]))
        details: list[dict[str, str]] = []
        for key, value in data_fields.items():
            definition = self._data_fields.get(str(key).casefold())
            if definition is None:
                details.append({"item": key, "description": f"The data field '{key}' does not exist"})
                continue
            if value is None:
                write.data_fields[definition.name] = None
                continue
            coerced = _coerce_data_value(definition.type, value)
            if coerced is _INVALID:
                details.append({"item": key, "description": f"'{value}' is not a valid {definition.type.lower()} "
                                                            f"for the {definition.type} data field '{definition.name}'"})
                continue
            write.data_fields[definition.name] = coerced
        if details:
            raise _ApiError(_v3_error(400, "contacts:invalidContacts", "Invalid contact data fields", details))

    @staticmethod
    def _validate_channel_properties(body: dict[str, Any], write: _ContactWrite) -> None:
        """``channelProperties`` (Contacts v3 spec: ``channelProperties_channelProperties*``, all
        ``additionalProperties: false``): email {emailType plainText|html, optInType
        unknown|single|double|verifiedDouble, status subscribed|unsubscribed|suppressed, resubscribeOptions},
        sms/whatsApp {status noSubscription|subscribed|unsubscribed|suppressed}. Enum matching is
        case-insensitive (Dotdigital's own import example sends ``"Html"``)."""
        if "channelProperties" not in body:
            return
        channels = body["channelProperties"]
        if not isinstance(channels, dict):
            raise _ApiError(_bad_json("channelProperties must be an object"))
        unknown = sorted(set(channels) - {"email", "sms", "whatsApp"})
        if unknown:
            raise _ApiError(_bad_json("Unknown channel", [{"item": f"channelProperties.{k}", "description": "Unknown property"} for k in unknown]))

        def enum(container: dict[str, Any], key: str, choices: dict[str, str], where: str) -> str | None:
            if key not in container or container[key] is None:
                return None
            value = container[key]
            result = choices.get(value.lower()) if isinstance(value, str) else None
            if result is None:
                raise _ApiError(_bad_json(f"Invalid value for {where}.{key}",
                                          [{"item": f"{where}.{key}", "description": f"'{value}' is not one of "
                                                                                     f"{', '.join(sorted(set(choices.values())))}"}]),
                                "InvalidContactStatus" if key == "status" else None)
            return result

        email = channels.get("email")
        if email is not None:
            if not isinstance(email, dict):
                raise _ApiError(_bad_json("channelProperties.email must be an object"))
            unknown = sorted(set(email) - {"emailType", "optInType", "status", "resubscribeOptions"})
            if unknown:
                raise _ApiError(_bad_json("Unknown email channel property",
                                          [{"item": f"channelProperties.email.{k}", "description": "Unknown property"} for k in unknown]))
            write.email_type = enum(email, "emailType", _EMAIL_TYPES, "channelProperties.email")
            write.opt_in_type = enum(email, "optInType", _OPT_IN_TYPES, "channelProperties.email")
            write.email_status = enum(email, "status", _EMAIL_WRITE_STATUSES, "channelProperties.email")
            options = email.get("resubscribeOptions")
            if options is not None:
                if not isinstance(options, dict):
                    raise _ApiError(_bad_json("resubscribeOptions must be an object"))
                no_challenge = options.get("resubscribeWithNoChallenge", True)
                if not isinstance(no_challenge, bool):
                    raise _ApiError(_bad_json("resubscribeWithNoChallenge must be a boolean"))
                locale = options.get("preferredLocale")
                if locale is not None and locale not in _PREFERRED_LOCALES:
                    raise _ApiError(_bad_json("preferredLocale is not supported",
                                              [{"item": "channelProperties.email.resubscribeOptions.preferredLocale",
                                                "description": str(locale)}]))
                redirect = options.get("redirectUrlAfterChallenge")
                if redirect is not None and not _is_uri(redirect):
                    raise _ApiError(_bad_json("redirectUrlAfterChallenge must be an absolute URI"))
                write.resubscribe_no_challenge = no_challenge
        for name, attr in (("sms", "sms_status"), ("whatsApp", "whatsapp_status")):
            channel = channels.get(name)
            if channel is None:
                continue
            if not isinstance(channel, dict) or set(channel) - {"status"}:
                raise _ApiError(_bad_json(f"channelProperties.{name} only accepts 'status'"))
            setattr(write, attr, enum(channel, "status", _CHANNEL_WRITE_STATUSES, f"channelProperties.{name}"))

    def _validate_lists(self, body: dict[str, Any], write: _ContactWrite) -> None:
        """``lists``: 1-100 integer address book ids, each of which must exist (else
        ``contacts:invalidContacts``; the import report calls it ``InvalidAddressBookIds``)."""
        if "lists" not in body:
            return
        lists = body["lists"]
        if not isinstance(lists, list) or not 1 <= len(lists) <= 100:
            raise _ApiError(_bad_json("lists must be an array of 1-100 list ids"))
        if any(isinstance(i, bool) or not isinstance(i, int) for i in lists):
            raise _ApiError(_bad_json("list ids must be integers"))
        missing = [i for i in lists if i not in self._address_books]
        if missing:
            raise _ApiError(_v3_error(400, "contacts:invalidContacts", "Invalid list ids",
                                      [{"item": str(i), "description": "List not found"} for i in missing]),
                            "InvalidAddressBookIds")
        write.lists = list(dict.fromkeys(lists))

    # -- serialisation --------------------------------------------------------------------------------
    def _read_model(self, c: _Contact) -> dict[str, Any]:
        """The v3 read model (Contacts v3 spec: ``contact``): read enums are Pascal-case for emailType /
        optInType; ``dataFields`` lists every account field (``null`` where unset)."""
        identifiers: dict[str, Any] = {}
        if c.email is not None:
            identifiers["email"] = c.email
        if c.mobile is not None:
            identifiers["mobileNumber"] = c.mobile
        channels: dict[str, Any] = {}
        if c.email is not None:
            channels["email"] = {"emailType": c.email_type, "optInType": c.opt_in_type, "status": c.email_status}
        if c.mobile is not None:
            channels["sms"] = {"countryCode": _country_code(c.mobile), "status": c.sms_status}
            channels["whatsApp"] = {"status": c.whatsapp_status}
        list_status = self._list_status(c)
        model: dict[str, Any] = {
            "contactId": c.contact_id,
            "status": self._contact_status(c),
            "created": c.created,
            "updated": c.updated,
            "identifiers": identifiers,
            "dataFields": {f.name: c.data.get(f.name) for f in self._data_fields.values()},
            "channelProperties": channels,
            "lists": [
                {"id": book_id, "name": self._address_books[book_id].name, "status": list_status}
                for book_id in sorted(c.lists)
                if book_id in self._address_books
            ],
            "consentRecords": [dict(r) for r in c.consent_records],
        }
        opted_in = [{"id": pid, "isOptedIn": True} for pid, flag in sorted(c.preferences.items()) if flag]
        if opted_in:  # the spec declares minItems 1 for preferences
            model["preferences"] = opted_in
        return model

    @staticmethod
    def _contact_status(c: _Contact) -> str:
        """Top-level contact status (Contacts v3 spec: ``status`` enum), derived from the email channel (or SMS)."""
        status = c.email_status if c.email is not None else c.sms_status
        if status in ("subscribed", "unsubscribed", "pendingOptIn", "noSubscription", "deleted", "binned", "suppressed"):
            return status
        if status in ("softBounced", "purchased"):
            return "subscribed"
        return "suppressed"

    @staticmethod
    def _list_status(c: _Contact) -> str:
        """List membership status (subscribed|suppressed|pending), derived from the channel status."""
        status = c.email_status if c.email is not None else c.sms_status
        if status == "pendingOptIn":
            return "pending"
        if status in _SUPPRESSED_EMAIL_STATUSES or status in _STICKY_SMS_STATUSES:
            return "suppressed"
        return "subscribed"

    def _address_book_json(self, book: _AddressBook) -> dict[str, Any]:
        members = sum(1 for c in self._contacts.values() if book.id in c.lists)
        return {"id": book.id, "name": book.name, "visibility": book.visibility, "contacts": members}

    def _define_data_field(self, name: str, type_: str, visibility: str, default: Any = None) -> _DataField:
        canonical = _match_choice(type_, DATA_FIELD_TYPES)
        if canonical is None:
            raise ValueError(f"invalid data field type {type_!r}; expected one of {DATA_FIELD_TYPES}")
        if not is_valid_data_field_name(name):
            raise ValueError(f"invalid data field name {name!r}")
        data_field = _DataField(name=name, type=canonical, visibility=visibility, default_value=default)
        self._data_fields[name.casefold()] = data_field
        return data_field

    # ==================================================================================================
    # Bulk imports: shared plumbing
    # ==================================================================================================
    def _new_import(self, kind: str, payload: dict[str, Any]) -> _Import:
        now = time.monotonic()
        imp = _Import(str(uuid.uuid4()), kind, now, now + self._import_delay, payload)
        self._imports[imp.import_id] = imp
        return imp

    def _advance(self) -> None:
        """Bring the account up to date (the caller holds the lock): due bulk imports, then due enrolments."""
        self._advance_imports()
        self._advance_enrolments()

    def _advance_imports(self) -> None:
        """Process every import whose time has come, earliest first (the caller holds the lock)."""
        now = time.monotonic()
        due = sorted((i for i in self._imports.values() if i.result is None and i.due <= now), key=lambda i: i.due)
        for imp in due:
            if imp.kind == "contacts":
                imp.result = self._process_contacts_import(imp.payload)
            else:
                imp.result = self._process_insight_import(imp.payload)

    def _check_import_capacity(self, kind: str, limit: int, code: str, description: str) -> None:
        """At most ``limit`` unfinished imports of a kind, else 429 ``code``. ``Retry-After`` says when the
        earliest one finishes (sandbox choice: Dotdigital documents no header for this case)."""
        pending = [i for i in self._imports.values() if i.kind == kind and i.result is None]
        if len(pending) >= limit:
            wait = max(1, math.ceil(min(i.due for i in pending) - time.monotonic()))
            response = _v3_error(429, code, description)
            response.headers["Retry-After"] = str(wait)
            raise _ApiError(response)

    def _import_status(self, kind: str, raw_import_id: str) -> _Response:
        """``GET /contacts/v3/import/{importId}`` and ``GET /insightData/v3/import/{importId}``.

        * Not a GUID -> 400 ``<service>:invalidId`` (sandbox choice); unknown (or of the other kind) -> 404
          ``<service>:importNotFound`` with the specs' description.
        * Contacts: ``NotFinished`` until done, then ``Finished`` with the report (``_process_contacts_import``).
        * Insight: ``NotStarted`` for the first half of the delay, ``Processing`` for the second, then
          ``insight_import_finished_status`` with ``collectionName``, ``summary`` and - if any - ``failures``
          (the Insight data v3 spec declares ``failures`` with ``minItems: 1``).
        """
        service = "contacts" if kind == "contacts" else "insightData"
        import_id = unquote(raw_import_id)
        if not _IMPORT_ID_RE.match(import_id):
            raise _ApiError(_v3_error(400, f"{service}:invalidId", f"The import id '{import_id}' is invalid",
                                      [{"item": import_id, "description": "Not a valid import id"}]))
        imp = self._imports.get(import_id.lower())
        if imp is None or imp.kind != kind:
            raise _ApiError(_v3_error(404, f"{service}:importNotFound",
                                      f"The import request '{import_id}' could not be found!"))
        if kind == "contacts":
            if imp.result is None:
                return _Response(200, {"importId": imp.import_id, "status": "NotFinished"})
            return _Response(200, {"importId": imp.import_id, "status": "Finished", **copy.deepcopy(imp.result)})
        if imp.result is None:
            started = time.monotonic() - imp.submitted >= (imp.due - imp.submitted) / 2
            return _Response(200, {"importId": imp.import_id, "status": "Processing" if started else "NotStarted"})
        body = {"importId": imp.import_id, "status": self.insight_import_finished_status, **copy.deepcopy(imp.result)}
        if not body.get("failures"):
            body.pop("failures", None)
        return _Response(200, body)

    # ==================================================================================================
    # contacts v3 bulk import
    # ==================================================================================================
    def _v3_start_contacts_import(self, raw: bytes) -> _Response:
        """``PUT /contacts/v3/import`` -> 202 ``{importId}`` (Contacts v3 spec: ``v3_import_body``).

        * Body ``{mergeOption?, contacts: [...]}``: another top-level key, a ``mergeOption`` other than
          ``overwrite`` | ``overwriteIfNotEmpty`` | ``overwriteIfEmpty`` (camelCase, unlike the PATCH query) or no
          / an empty ``contacts`` array -> 400 ``contacts:badJson``. Items are checked when the import runs, each
          on its own (``_process_contacts_import``).
        * ``max_active_contact_imports`` (25) unfinished imports -> 429 ``contacts:tooManyActiveImports``.
        """
        body = _parse_v3_json(raw)
        if not isinstance(body, dict):
            raise _ApiError(_bad_json("The request body must be a JSON object"))
        unknown = sorted(set(body) - {"mergeOption", "contacts"})
        if unknown:
            raise _ApiError(_bad_json("The request JSON contains unknown properties",
                                      [{"item": k, "description": "Unknown property"} for k in unknown]))
        merge = body.get("mergeOption", "overwrite")
        if not isinstance(merge, str) or merge not in _IMPORT_MERGE_OPTIONS:
            raise _ApiError(_bad_json("mergeOption must be one of overwrite, overwriteIfNotEmpty, overwriteIfEmpty",
                                      [{"item": "mergeOption", "description": f"'{merge}' is not allowed"}]))
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            raise _ApiError(_bad_json("contacts must be an array of 1 or more contacts",
                                      [{"item": "contacts", "description": "At least one contact is required"}]))
        self._check_import_capacity("contacts", self.max_active_contact_imports, "contacts:tooManyActiveImports",
                                    _TOO_MANY_CONTACT_IMPORTS)
        imp = self._new_import("contacts", {"merge": _IMPORT_MERGE_OPTIONS[merge], "contacts": copy.deepcopy(contacts)})
        return _Response(202, {"importId": imp.import_id})

    def _process_contacts_import(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply a contacts import item by item, with the PATCH's validation and upsert.

        The report (Contacts v3 spec: ``inline_response_200_2``) has ``summary``, ``created`` / ``updated`` as
        ``[{contactId, identifiers}]`` and ``failures`` as ``[{contactId?, matchIdentifier, identifiers,
        failures: [{failureCode, description}]}]``. Each item fails alone:

        * invalid item (``invalidEntries``): not an object (``ApiSchemaViolation``); no ``identifiers``
          (``NoValidIdentifiers``); bad or missing ``matchIdentifier``, or no value for it in ``identifiers``
          (``InvalidMatchIdentifier``); bad email / phone number (E.164) / contactId (``InvalidEmail`` /
          ``InvalidPhoneNumber`` / ``InvalidContactId``); unknown data field or a value not fitting its type
          (``InvalidContact``); unknown list (``InvalidAddressBookIds``); bad channel status
          (``InvalidContactStatus``); other schema violations (``ApiSchemaViolation``); a ``contactId`` match
          without contact (``contactNotFound``); an identifier owned by another contact (``identifierConflict``);
        * items sharing an email, mobile number or contactId (``duplicateIdentifiers``): all of them fail with
          ``duplicateIdentifier`` (sandbox choice: none of them wins);
        * an existing contact whose email channel (or, without email, SMS channel) is suppressed is left alone:
          ``GloballySuppressed`` (``globallySuppressed``: "suppressed at the account level, so can't be
          updated", the Contacts v3 spec), unless the item explicitly resubscribes a resubscribable status. This is
          stricter than the PATCH, which still updates a suppressed contact's data fields;
        * invalid ``consentRecords`` do not stop the contact: it is imported without them and also listed in
          ``failures`` with ``consentRecordsNotApplied`` and its ``contactId`` (the Contacts v3 spec's example).

        Failure codes are those of the import report docs (PascalCase) where it has one, else those of the Contacts v3 spec examples
        (camelCase); compare them case-insensitively.
        """
        merge = payload["merge"]
        summary = {"newContacts": 0, "updatedContacts": 0, "globallySuppressed": 0, "invalidEntries": 0,
                   "duplicateIdentifiers": 0}
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        prepared = [self._prepare_import_item(item) for item in payload["contacts"]]
        counts = Counter(key for p in prepared if isinstance(p, _PreparedImportItem) for key in p.identity_keys)

        for item, ready in zip(payload["contacts"], prepared):
            if not isinstance(ready, _PreparedImportItem):
                summary["invalidEntries"] += 1
                failures.append(_import_failure(item, *ready))
                continue
            duplicates = [key for key in ready.identity_keys if counts[key] > 1]
            if duplicates:
                summary["duplicateIdentifiers"] += 1
                name, value = duplicates[0]
                failures.append(_import_failure(item, "duplicateIdentifier",
                                                f"Duplicate identifier detected for {name} '{value}'"))
                continue
            existing = self._lookup(ready.match, ready.match_value)
            if existing is not None and self._globally_suppressed(existing, ready.write):
                summary["globallySuppressed"] += 1
                failures.append(_import_failure(item, "GloballySuppressed",
                                                "The contact is suppressed at the account level, so it can't be updated",
                                                existing.contact_id))
                continue
            self._applying_import = True  # list joins of this item come from an import
            try:
                contact, was_created = self._upsert_contact(ready.match, ready.match_value, ready.write, merge)
            except _ApiError as exc:
                summary["invalidEntries"] += 1
                failures.append(_import_failure(item, _import_failure_code(exc), _api_error_text(exc)))
                continue
            finally:
                self._applying_import = False
            reference = {"contactId": contact.contact_id, "identifiers": self._identifiers_json(contact)}
            if was_created:
                summary["newContacts"] += 1
                created.append(reference)
            else:
                summary["updatedContacts"] += 1
                updated.append(reference)
            if ready.consent_error is not None:
                failures.append(_import_failure(item, "consentRecordsNotApplied", ready.consent_error,
                                                contact.contact_id))
        return {"summary": summary, "created": created, "updated": updated, "failures": failures}

    def _prepare_import_item(self, item: Any) -> _PreparedImportItem | tuple[str, str]:
        """Validate one import item like a PATCH body (``_validate_write``), plus the import-only rules:
        ``identifiers`` and ``matchIdentifier`` are required (Contacts v3 spec: ``contactRequest``) and the match
        identifier must have a value. Returns the prepared item or ``(failureCode, description)``."""
        if not isinstance(item, dict):
            return "ApiSchemaViolation", "Each contact must be a JSON object"
        identifiers = item.get("identifiers")
        if not isinstance(identifiers, dict) or not identifiers:
            return "NoValidIdentifiers", "identifiers is required and must hold at least one identifier"
        match = item.get("matchIdentifier")
        if not isinstance(match, str) or match not in _PATH_IDENTIFIERS:
            return "InvalidMatchIdentifier", f"matchIdentifier must be contactId, email or mobileNumber, not {match!r}"
        try:
            write = self._validate_write({k: v for k, v in item.items() if k != "consentRecords"})
        except _ApiError as exc:
            return _import_failure_code(exc), _api_error_text(exc)
        value = {"email": write.email, "mobileNumber": write.mobile, "contactId": write.contact_id}[match]
        if value is None:
            return "InvalidMatchIdentifier", f"identifiers has no value for the matchIdentifier '{match}'"
        consent_error = None
        try:
            _validate_consent_records(item, write)
        except _ApiError as exc:
            write.consent_records = []
            consent_error = ("The provided consent records could not be applied as they were incorrectly formatted: "
                             + _api_error_text(exc))
        keys = [("email", write.email.casefold() if write.email else None), ("mobileNumber", write.mobile),
                ("contactId", write.contact_id)]
        return _PreparedImportItem(match, str(value), write, consent_error, [(n, v) for n, v in keys if v is not None])

    @staticmethod
    def _globally_suppressed(contact: _Contact, write: _ContactWrite) -> bool:
        if contact.email is None:
            return contact.sms_status in _STICKY_SMS_STATUSES
        if contact.email_status not in _SUPPRESSED_EMAIL_STATUSES:
            return False
        resubscribes = (write.email_status == "subscribed" and write.resubscribe_no_challenge is not None
                        and contact.email_status in _RESUBSCRIBABLE_EMAIL_STATUSES)
        return not resubscribes

    @staticmethod
    def _identifiers_json(contact: _Contact) -> dict[str, Any]:
        identifiers: dict[str, Any] = {}
        if contact.email is not None:
            identifiers["email"] = contact.email
        if contact.mobile is not None:
            identifiers["mobileNumber"] = contact.mobile
        return identifiers

    # ==================================================================================================
    # insight data v3
    # ==================================================================================================
    def _route_insight(
        self, method: str, segments: list[str], lowered: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[bool, Callable[[], _Response] | None]:
        """Routes below ``/insightData/v3`` (``segments`` / ``lowered`` without that prefix).

        Not implemented (404 like any unknown path, or 405 for another method on a known path): collection
        delete / empty, the paged record listings, the per-contact ``deleteRecords``, per-contact ``empty`` and the
        async jobs (the account-scoped ``deleteRecords`` is implemented).
        """
        record_methods = ("PUT", "GET", "DELETE")
        if lowered == ["import"]:
            return True, (lambda: self._insight_start_import(body)) if method == "PUT" else None
        if len(lowered) == 2 and lowered[0] == "import":
            return True, (lambda: self._import_status("insight", segments[1])) if method == "GET" else None
        if lowered == ["collections"]:
            return True, (lambda: _Response(200, [c.summary() for c in self._collections.values()])) \
                if method == "GET" else None
        if lowered == ["account"]:
            return True, (lambda: _Response(200, [c.summary() for c in self._collections.values()
                                                  if c.scope == "account"])) if method == "GET" else None
        if len(lowered) == 2 and lowered[0] == "collections":
            return True, (lambda: self._insight_create_collection(segments[1], query)) if method == "POST" else None
        if len(lowered) == 3 and lowered[0] == "collections" and lowered[2] == "schema":
            return True, (lambda: self._insight_get_schema(segments[1])) if method == "GET" else None
        if len(lowered) == 3 and lowered[0] == "accounts" and lowered[2] == "deleterecords":
            return True, (lambda: self._insight_delete_account_records(segments[1], body)) \
                if method == "DELETE" else None
        if len(lowered) == 3 and lowered[0] == "account":
            return True, (lambda: self._insight_record(method, None, segments[1], segments[2], body)) \
                if method in record_methods else None
        if len(lowered) == 5 and lowered[0] == "contacts" and not (
            method == "DELETE" and lowered[4] in ("deleterecords", "empty")
        ):
            return True, (lambda: self._insight_record(method, (segments[1], segments[2]), segments[3], segments[4],
                                                       body)) if method in record_methods else None
        return False, None

    def _insight_create_collection(self, raw_name: str, query: dict[str, list[str]]) -> _Response:
        """``POST /insightData/v3/collections/{collectionName}?collectionScope=&collectionType=``.

        * Name pattern ``(^[-A-Za-z_][-A-Za-z0-9_]{1,255}$)``, max 255 -> 400 ``insightData:invalidId``
          ("The collectionName value 'x' is invalid", the Insight data v3 spec).
        * Both query parameters are required, with exact enum values -> else 400 ``insightData:invalidParameter``
          (sandbox choice: the spec documents no code).
        * Existing collection -> 200 (names compare case-insensitively and are unique across scopes); the
          same name with another scope or type -> 400 ``insightData:invalidId`` (sandbox choice).
        * One more than ``max_insight_collections`` (1000) -> 412 ``insightData:collectionLimitExceeded`` (the
          spec gives 412 no body; code is a sandbox choice). Else 201. Successes have an empty body.
        """
        name = _parse_collection_name(raw_name)
        scope = _query_enum(query, "collectionScope", COLLECTION_SCOPES)
        collection_type = _query_enum(query, "collectionType", COLLECTION_TYPES)
        return _Response(201 if self._ensure_collection(name, scope, collection_type) else 200)

    def _ensure_collection(self, name: str, scope: str, collection_type: str) -> bool:
        existing = self._find_collection(name)
        if existing is not None:
            if (existing.scope, existing.type) != (scope, collection_type):
                raise _ApiError(_v3_error(
                    400, "insightData:invalidId",
                    f"The collection '{existing.name}' already exists with collectionScope '{existing.scope}' and "
                    f"collectionType '{existing.type}'",
                    [{"item": name, "description": "Collection names are unique across scopes"}],
                ))
            return False
        if len(self._collections) >= self.max_insight_collections:
            raise _ApiError(_v3_error(412, "insightData:collectionLimitExceeded",
                                      "Insight data collection limit exceeded: an account can have at most "
                                      f"{self.max_insight_collections} collections"))
        self._collections[name.casefold()] = _Collection(name, scope, collection_type)
        return True

    def _find_collection(self, name: str) -> _Collection | None:
        return self._collections.get(name.casefold())

    def _require_collection(self, name: str, scope: str) -> _Collection:
        """The collection, which must exist with this scope -> else 404 ``insightData:collectionNotFound``."""
        collection = self._find_collection(name)
        if collection is None:
            raise _ApiError(_collection_not_found(name, "Not found"))
        if collection.scope != scope:
            raise _ApiError(_collection_not_found(name, f"Not a {scope} scoped collection"))
        return collection

    def _insight_get_schema(self, raw_name: str) -> _Response:
        """``GET /insightData/v3/collections/{collectionName}/schema`` -> ``{collectionName, collectionType,
        schema}``; unknown -> 404 ``insightData:collectionNotFound``. See ``_schema_json``."""
        name = _parse_collection_name(raw_name)
        collection = self._find_collection(name)
        if collection is None:
            raise _ApiError(_collection_not_found(name, "Not found"))
        return _Response(200, {"collectionName": collection.name, "collectionType": collection.type,
                               "schema": self._schema_json(collection)})

    @staticmethod
    def _schema_json(collection: _Collection) -> list[dict[str, Any]]:
        """The locked schema as BigQuery-style columns ``{name, mode, type, fields}``, like the only example in
        the insight spec, whose schema declares ``schema`` an *object*; the sandbox follows the example. System columns
        first, then ``json`` with one field per key whose type is fixed: STRING, FLOAT (all numbers), BOOLEAN or
        RECORD, ``mode: REPEATED`` for arrays. Keys seen only with ``null`` / ``[]`` are not listed yet."""
        columns = [{"name": "key", "mode": "NULLABLE", "type": "STRING", "fields": []}]
        if collection.scope == "contact":
            columns.append({"name": "contactIdentifier", "mode": "REQUIRED", "type": "INTEGER", "fields": []})
        columns += [
            {"name": "dateModified", "mode": "REQUIRED", "type": "TIMESTAMP", "fields": []},
            {"name": "deleted", "mode": "NULLABLE", "type": "BOOLEAN", "fields": []},
            {"name": "rowId", "mode": "NULLABLE", "type": "STRING", "fields": []},
            {"name": "json", "mode": "NULLABLE", "type": "RECORD", "fields": _shape_columns(collection.shape)},
        ]
        return columns

    def _insight_record(
        self, method: str, contact_path: tuple[str, str] | None, raw_name: str, raw_record_id: str, raw: bytes
    ) -> _Response:
        """One record of a contact-scoped collection (``contact_path`` = raw ``identifier``/``value``:
        ``/insightData/v3/contacts/{identifier}/{value}/{collectionName}/{recordId}``) or of an account-scoped one
        (``/insightData/v3/account/{collectionName}/{recordId}``, e.g. the catalog). Checks in this order:

        * collection name pattern, ``identifier``/``value`` (as for contacts) and ``recordId`` (1-255
          characters, sandbox choice) -> 400 ``insightData:invalidId``;
        * PUT body: the record's JSON object -> else 400 ``insightData:badJson``. The insight spec types the body
          ``type: string, format: json``; a JSON *string* holding the record (double encoding) is rejected;
        * the contact must exist -> 404 ``insightData:contactNotFound`` (the Insight data v3 spec's example);
        * the collection must exist with this scope -> 404 ``insightData:collectionNotFound``. A single PUT never
          creates a collection: the Insight data v3 spec documents collectionNotFound for it, and only the bulk import
          "will create" a missing collection;
        * PUT: the record rules and schema locking of ``_store_record`` -> 400 ``insightData:badJson`` whose
          description starts with the failure reason, e.g. ``JsonValueIncompatibleWithSchema. A value named
          'price' of type Number already exists in this collection and new values must be of this type.`` (the v2
          error message), with ``details: [{item: <field path>, description: <reason>}]`` (sandbox choice: the
          spec names no code for this);
        * GET / DELETE of a missing record -> 404 ``insightData:recordNotFound``.

        PUT answers 201 (created) or 204 (replaced), GET 200 ``returnedInsightRecord``, DELETE 204.
        """
        name = _parse_collection_name(raw_name)
        identifier = value = None
        if contact_path is not None:
            identifier, value = self._parse_contact_path(*contact_path, service="insightData")
        key = _parse_record_id(raw_record_id)
        record = _parse_record_body(raw) if method == "PUT" else None
        owner: int | None = None
        if identifier is not None and value is not None:
            contact = self._lookup(identifier, value)
            if contact is None:
                raise _ApiError(_contact_not_found(identifier, value, service="insightData"))
            owner = contact.contact_id
        scope = "account" if contact_path is None else "contact"
        collection = self._require_collection(name, scope)
        if record is not None:
            try:
                created = self._store_record(collection, owner, key, record)
            except _RecordRejected as exc:
                raise _ApiError(_v3_error(400, "insightData:badJson", f"{exc.reason}. {exc.detail}",
                                          [{"item": exc.item or key, "description": exc.reason}])) from None
            return _Response(201 if created else 204, None, contact_id=owner)
        stored = collection.records.get((owner, key))
        if stored is None:
            raise _ApiError(_v3_error(404, "insightData:recordNotFound", "The Insight data record could not be found",
                                      [{"item": key, "description": f"Not found in the {scope} collection "
                                                                    f"'{collection.name}'"}]))
        if method == "GET":
            return _Response(200, stored.as_json(), contact_id=owner)
        del collection.records[(owner, key)]
        return _Response(204, None, contact_id=owner)

    def _insight_delete_account_records(self, raw_name: str, raw: bytes) -> _Response:
        """``DELETE /insightData/v3/accounts/{collectionName}/deleteRecords`` (plural ``accounts``, as the
        Insight data v3 spec has it) with ``{"keys": [1..5000 strings]}`` -> 200 ``{summary: {totalRecords,
        totalDeleted, totalNotFound}, notFound: [...]}``; no or too many keys -> 400
        ``insightData:noRecordsSpecified`` (the spec's example; more than 5,000 is a sandbox choice of code);
        an unknown account collection -> 404 ``insightData:collectionNotFound``."""
        name = _parse_collection_name(raw_name)
        body = _parse_v3_json(raw, service="insightData")
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not 1 <= len(keys) <= 5000 or not all(isinstance(k, str) for k in keys):
            raise _ApiError(_v3_error(400, "insightData:noRecordsSpecified",
                                      "You must specify the keys (1 to 5000 strings) of the records to be deleted "
                                      "from the collection.", [{"item": "keys", "description": "Required"}]))
        collection = self._require_collection(name, "account")
        not_found = []
        for key in keys:
            if collection.records.pop((None, key), None) is None:
                not_found.append(key)
        return _Response(200, {"summary": {"totalRecords": len(keys), "totalDeleted": len(keys) - len(not_found),
                                           "totalNotFound": len(not_found)}, "notFound": not_found})

    @staticmethod
    def _store_record(collection: _Collection, owner: int | None, key: str, value: dict[str, Any]) -> bool:
        """Upsert one record after the record rules (``_shape_of``) and schema locking: the first non-null value of
        a field fixes its type for the whole collection; a later record may add fields but a value of another
        type (string vs number vs boolean vs object vs list) is ``JsonValueIncompatibleWithSchema``. Nothing is
        changed when the record is rejected. Returns ``True`` if the record is new."""
        collection.shape = _unify(collection.shape, _shape_of(value, ""), "")
        now = _utc_now_iso()
        existing = collection.records.get((owner, key))
        if existing is not None:
            existing.json = copy.deepcopy(value)
            existing.updated = now
            return False
        collection.records[(owner, key)] = _InsightRecord(key, copy.deepcopy(value), now, now, owner)
        return True

    def _insight_start_import(self, raw: bytes) -> _Response:
        """``PUT /insightData/v3/import`` -> 202 ``{importId}`` (Insight data v3 spec: ``v3_import_body``).

        Checked at once, 400 ``insightData:badJson`` unless noted: a JSON object with exactly ``collectionName``
        (pattern -> 400 ``insightData:invalidId``), ``collectionScope`` and ``collectionType`` (enums) and
        ``records``: 1 or more objects with no keys but ``contactIdentity`` / ``key`` / ``json``
        (``upsertInsightRecord`` is closed). Then ``max_active_insight_imports`` (5) unfinished imports -> 429
        ``insightData:tooManyActiveImports`` (sandbox choice of code; the insight spec documents no 429, the limit is from
        Dotdigital's docs). A missing collection is created (412 past the limit); one with another scope or type
        -> 400. The records are checked when the import runs (``_process_insight_import``).
        """
        body = _parse_v3_json(raw, service="insightData")

        def bad(description: str, item: str) -> _ApiError:
            return _ApiError(_bad_json(description, [{"item": item, "description": description}],
                                       service="insightData"))

        if not isinstance(body, dict):
            raise _ApiError(_bad_json("The request body must be a JSON object", service="insightData"))
        for key in sorted(set(body) - _INSIGHT_IMPORT_KEYS):
            raise bad("Unknown property", key)
        for key in sorted(_INSIGHT_IMPORT_KEYS - set(body)):
            raise bad("Required property is missing", key)
        name = body["collectionName"]
        if not isinstance(name, str) or len(name) > _COLLECTION_NAME_MAX or not _COLLECTION_NAME_RE.match(name):
            raise _ApiError(_v3_error(400, "insightData:invalidId", f"The collectionName value '{name}' is invalid",
                                      [{"item": "collectionName", "description": "Invalid collection name"}]))
        if body["collectionScope"] not in COLLECTION_SCOPES:
            raise bad(f"collectionScope must be one of {', '.join(COLLECTION_SCOPES)}", "collectionScope")
        if body["collectionType"] not in COLLECTION_TYPES:
            raise bad(f"collectionType must be one of {', '.join(COLLECTION_TYPES)}", "collectionType")
        records = body["records"]
        if not isinstance(records, list) or not records:
            raise bad("records must be an array of 1 or more records", "records")
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise bad("Each record must be a JSON object", f"records[{index}]")
            for key in sorted(set(record) - _INSIGHT_RECORD_KEYS):
                raise bad("Unknown property", f"records[{index}].{key}")
        self._check_import_capacity(
            "insight", self.max_active_insight_imports, "insightData:tooManyActiveImports",
            "Your import request cannot be accepted as too many imports are being processed for your account. "
            "Please wait for an import to complete and then resubmit.",
        )
        self._ensure_collection(name, body["collectionScope"], body["collectionType"])
        imp = self._new_import("insight", {"collection": name, "records": copy.deepcopy(records)})
        return _Response(202, {"importId": imp.import_id})

    def _process_insight_import(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply an insight import record by record; a rejected record fails alone (insight failure reasons):

        * contact scope: ``contactIdentity`` ``{identifier, value}`` (strings) is required; an identifier other
          than email / mobileNumber / contactId, or a value invalid for it -> ``InvalidContactIdentifier``; no
          such contact -> ``ContactEmailDoesNotExist`` / ``ContactIdDoesNotExist`` (a mobile number -> ``Unknown``
          with detail ``ContactPhoneNumberDoesNotExist``, a v2 reason the v3 enum lacks). Contacts are never
          created. Account scope: a ``contactIdentity`` -> ``InvalidContactIdentifier`` (sandbox choice).
        * ``key``: a string of 1-255 characters -> else ``InvalidClientKey`` (so the numeric key of the insight spec
          example is rejected: sandbox strictness). The same owner + key twice in one import -> the later record
          fails with ``DuplicateKey``.
        * ``json``: an object -> else ``InvalidJson``; then the rules of ``_store_record``.

        Report: ``{collectionName, summary{totalRecords, totalImported, totalRejected}, failures: [{collectionOwner
        {ownerType, contactIdentity?}, failureReason, details: [str], key, json}]}``.
        """
        collection = self._find_collection(payload["collection"])
        assert collection is not None  # created when the import was accepted; collections are never deleted
        failures: list[dict[str, Any]] = []
        seen: set[tuple[int | None, str]] = set()
        imported = 0
        for record in payload["records"]:
            try:
                owner = self._insight_record_owner(collection, record.get("contactIdentity"))
                key = record.get("key")
                if not isinstance(key, str) or not 1 <= len(key) <= _RECORD_KEY_MAX:
                    raise _RecordRejected("InvalidClientKey", f"The key must be a string of 1-{_RECORD_KEY_MAX} "
                                                              f"characters, got {key!r}")
                if not isinstance(record.get("json"), dict):
                    raise _RecordRejected("InvalidJson", "The record json must be a JSON object")
                if (owner, key) in seen:
                    raise _RecordRejected("DuplicateKey", f"The key '{key}' appears more than once in this import")
                self._store_record(collection, owner, key, record["json"])
                seen.add((owner, key))
                imported += 1
            except _RecordRejected as exc:
                failure: dict[str, Any] = {"collectionOwner": {"ownerType": collection.scope}}
                if isinstance(record.get("contactIdentity"), dict):
                    failure["collectionOwner"]["contactIdentity"] = copy.deepcopy(record["contactIdentity"])
                failure.update(failureReason=exc.reason, details=[exc.detail])
                for name in ("key", "json"):
                    if name in record:
                        failure[name] = copy.deepcopy(record[name])
                failures.append(failure)
        total = len(payload["records"])
        return {"collectionName": collection.name,
                "summary": {"totalRecords": total, "totalImported": imported, "totalRejected": total - imported},
                "failures": failures}

    def _insight_record_owner(self, collection: _Collection, identity: Any) -> int | None:
        if collection.scope == "account":
            if identity is not None:
                raise _RecordRejected("InvalidContactIdentifier",
                                      "A record of an account scoped collection cannot have a contactIdentity")
            return None
        if (
            not isinstance(identity, dict)
            or set(identity) - {"identifier", "value"}
            or not isinstance(identity.get("identifier"), str)
            or not isinstance(identity.get("value"), str)
        ):
            raise _RecordRejected("InvalidContactIdentifier", "Records of a contact scoped collection need a "
                                                              "contactIdentity {identifier, value} of strings")
        identifier, raw_value = identity["identifier"], identity["value"]
        if identifier not in _PATH_IDENTIFIERS:
            raise _RecordRejected("InvalidContactIdentifier", f"The identifier '{identifier}' does not exist in "
                                                              "this account")
        value = _normalise_identifier_value(identifier, raw_value)
        if value is None:
            raise _RecordRejected("InvalidContactIdentifier", f"The id value '{raw_value}' is invalid for the "
                                                              f"identifier '{identifier}'")
        contact = self._lookup(identifier, value)
        if contact is None:
            reason = _MISSING_OWNER_REASONS.get(identifier, "Unknown")
            prefix = "" if identifier in _MISSING_OWNER_REASONS else "ContactPhoneNumberDoesNotExist: "
            raise _RecordRejected(reason, f"{prefix}No contact exists with the {identifier} '{raw_value}'")
        return contact.contact_id


# ---------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------
_INVALID = object()


def _coerce_data_value(type_: str, value: Any) -> Any:
    """Return ``value`` if it is valid for a data field of ``type_``, else the ``_INVALID`` sentinel."""
    if type_ == "String":
        return value if isinstance(value, str) else _INVALID
    if type_ == "Numeric":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return _INVALID
        return value
    if type_ == "Boolean":
        return value if isinstance(value, bool) else _INVALID
    if type_ == "Date":
        if not isinstance(value, str):
            return _INVALID
        match = _ISO_DATE_RE.match(value)
        if not match:
            return _INVALID
        try:
            date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            if match.group(4) is not None and (int(match.group(4)) > 23 or int(match.group(5)) > 59
                                               or int(match.group(6) or 0) > 59):
                return _INVALID
        except ValueError:
            return _INVALID
        return value
    return _INVALID


def _validate_preferences(body: dict[str, Any], write: _ContactWrite) -> None:
    """``preferences``: >= 1 items of ``{id: int, isOptedIn: bool}`` (Contacts v3 spec: ``preference``)."""
    if "preferences" not in body:
        return
    prefs = body["preferences"]
    if not isinstance(prefs, list) or not prefs:
        raise _ApiError(_bad_json("preferences must be a non-empty array"))
    for index, pref in enumerate(prefs):
        if (
            not isinstance(pref, dict)
            or isinstance(pref.get("id"), bool)
            or not isinstance(pref.get("id"), int)
            or not isinstance(pref.get("isOptedIn"), bool)
        ):
            raise _ApiError(_bad_json("Each preference needs an integer id and a boolean isOptedIn",
                                      [{"item": f"preferences[{index}]", "description": "Invalid preference"}]))
        write.preferences.append((pref["id"], pref["isOptedIn"]))


def _validate_consent_records(body: dict[str, Any], write: _ContactWrite) -> None:
    """``consentRecords``: 1-5 records with exactly ``text`` (non-empty), ``dateTimeConsented`` (ISO 8601
    date-time), ``url`` (absolute URI), ``ipAddress`` (IPv4/IPv6) and ``userAgent`` (non-empty); all
    required, no other keys (``additionalProperties: false``) (Contacts v3 spec: ``consentRecord``)."""
    if "consentRecords" not in body:
        return
    records = body["consentRecords"]
    if not isinstance(records, list) or not 1 <= len(records) <= 5:
        raise _ApiError(_bad_json("consentRecords must be an array of 1-5 records",
                                  [{"item": "consentRecords", "description": "Between 1 and 5 records are allowed"}]))
    for index, record in enumerate(records):
        where = f"consentRecords[{index}]"
        if not isinstance(record, dict):
            raise _ApiError(_bad_json("Consent record must be an object", [{"item": where, "description": "Not an object"}]))
        problems: list[dict[str, str]] = []
        for key in sorted(set(record) - set(_CONSENT_KEYS)):
            problems.append({"item": f"{where}.{key}", "description": "Unknown property"})
        for key in _CONSENT_KEYS:
            if key not in record:
                problems.append({"item": f"{where}.{key}", "description": "Required"})
        if not problems:
            checks = {
                "text": isinstance(record["text"], str) and len(record["text"]) >= 1,
                "dateTimeConsented": isinstance(record["dateTimeConsented"], str)
                and bool(_DATE_TIME_RE.match(record["dateTimeConsented"])),
                "url": _is_uri(record["url"]),
                "ipAddress": _is_ip(record["ipAddress"]),
                "userAgent": isinstance(record["userAgent"], str) and len(record["userAgent"]) >= 1,
            }
            problems = [{"item": f"{where}.{k}", "description": "Invalid value"} for k, ok in checks.items() if not ok]
        if problems:
            raise _ApiError(_bad_json("Invalid consent record", problems))
        write.consent_records.append({k: record[k] for k in _CONSENT_KEYS})


def _is_uri(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return bool(parts.scheme) and bool(parts.netloc) and " " not in value


def _is_ip(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _normalise_mobile(value: str | None) -> str | None:
    """E.164 check; returns the digits without ``+`` (Dotdigital's examples store ``447123123123``)."""
    if not isinstance(value, str):
        return None
    match = _E164_RE.match(value.strip())
    return match.group(1) if match else None


def _country_code(mobile: str) -> str:
    for length in (3, 2, 1):
        code = _CALLING_CODES.get(mobile[:length])
        if code:
            return code
    return ""


def _match_choice(value: Any, choices: tuple[str, ...]) -> str | None:
    if not isinstance(value, str):
        return None
    return next((c for c in choices if c.lower() == value.lower()), None)


_V3_SINCE_FILTER_RE = re.compile(r"^gte::\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")  # Contacts v3 spec ``~modified``
_V3_INCLUDES = ("channelProperties", "lists", "preferences", "consentRecords")
#: v3 email status -> v2 ``ApiContactStatuses``; statuses without a v2 counterpart are ``Suppressed``
_V2_STATUSES = {
    "subscribed": "Subscribed", "unsubscribed": "Unsubscribed", "softBounced": "SoftBounced",
    "hardBounced": "HardBounced", "ispComplained": "IspComplained", "pendingOptIn": "PendingOptIn",
    "directComplaint": "DirectComplaint", "deleted": "Deleted", "sharedsuppression": "SharedSuppression",
    "suppressed": "Suppressed", "domainSuppressed": "DomainSuppression", "sharedDomainSuppression": "DomainSuppression",
    "blockedlocalpart": "MailBlocked",
}


def _v2_status(status: str) -> str:
    return _V2_STATUSES.get(status, "Suppressed")


def _parse_since_date(value: str) -> datetime | None:
    """A v2 path date (ISO 8601 date or date-time; no offset = UTC), or ``None`` if it is not one."""
    if not _ISO_DATE_RE.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _parse_sandbox_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _encode_marker(after: tuple[datetime, int] | None) -> str:
    payload = {"start": True} if after is None else {"after": _iso(after[0]), "id": after[1]}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def _decode_marker(marker: str) -> tuple[datetime, int] | None:
    """The position a marker stands for, ``(time, contactId)`` to continue after (the start: the earliest
    possible position), or ``None`` when it is not a marker the sandbox issued."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(marker.encode() + b"=" * (-len(marker) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("start") is True:
        return (datetime.min.replace(tzinfo=timezone.utc), 0)
    after, contact_id = payload.get("after"), payload.get("id")
    if not isinstance(after, str) or isinstance(contact_id, bool) or not isinstance(contact_id, int):
        return None
    try:
        return _parse_sandbox_time(after), contact_id
    except ValueError:
        return None


def _parse_int32(value: str) -> int | None:
    if not re.fullmatch(r"-?\d{1,10}", value):
        return None
    number = int(value)
    return number if -(2**31) <= number < 2**31 else None


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int | None:
    values = query.get(name)
    if not values:
        return default
    return _parse_int32(values[-1])


def _paging(query: dict[str, list[str]]) -> tuple[int, int]:
    """v2 ``select`` (1-1000, default 1000) and ``skip`` (>= 0, default 0) -> else 400 ``ERROR_PARAMETER_INVALID``."""
    select = _int_param(query, "select", 1000)
    skip = _int_param(query, "skip", 0)
    if select is None or skip is None or not 1 <= select <= 1000 or skip < 0:
        raise _ApiError(_v2_error(400, "select must be 1-1000 and skip >= 0. ERROR_PARAMETER_INVALID"))
    return select, skip


def _parse_v2_json(raw: bytes) -> Any:
    """Malformed or missing v2 JSON -> 400 ``ERROR_MALFORMED_REQUEST``."""
    try:
        return json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(_v2_error(400, "The request body could not be parsed as JSON. ERROR_MALFORMED_REQUEST")) from None


def _parse_v3_json(raw: bytes, *, service: str = "contacts") -> Any:
    """Malformed or missing v3 JSON (the request body is required) -> 400 ``<service>:badJson``."""
    if not raw.strip():
        raise _ApiError(_bad_json("The request body is required", service=service))
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(_bad_json("The request JSON is badly formed", service=service)) from None


def _normalise_identifier_value(identifier: str, value: str) -> str | None:
    """A contact identifier value in the form ``_lookup`` expects, or ``None`` if invalid for its type."""
    if not 1 <= len(value) <= 256:
        return None
    if identifier == "email":
        return value if _EMAIL_RE.match(value) else None
    if identifier == "mobileNumber":
        return _normalise_mobile(value)
    if value.isdigit() and _parse_int32(value) is not None:
        return str(int(value))
    return None


# -- bulk contact import helpers ----------------------------------------------------------------------
#: Import failure code for a PATCH error without an explicit ``failure_code``.
_DEFAULT_IMPORT_FAILURE_CODES = {
    "contacts:badJson": "ApiSchemaViolation",
    "contacts:invalidContacts": "InvalidContact",
    "contacts:invalidId": "NoValidIdentifiers",
    "contacts:contactNotFound": "contactNotFound",  # the Contacts v3 spec's failures example
    "contacts:idAlreadyExists": "identifierConflict",  # the token the Magento 2 connector looks for
}


def _import_failure_code(exc: _ApiError) -> str:
    if exc.failure_code:
        return exc.failure_code
    body = exc.response.body if isinstance(exc.response.body, dict) else {}
    return _DEFAULT_IMPORT_FAILURE_CODES.get(str(body.get("errorCode")), "InvalidContact")


def _api_error_text(exc: _ApiError) -> str:
    """The description of an error response, with its details, for an import failure description."""
    body = exc.response.body if isinstance(exc.response.body, dict) else {}
    text = str(body.get("description") or body.get("message") or "Invalid contact")
    details = [f"{d.get('item')}: {d.get('description')}" for d in body.get("details") or [] if isinstance(d, dict)]
    return f"{text} ({'; '.join(details)})" if details else text


def _import_failure(item: Any, code: str, description: str, contact_id: int | None = None) -> dict[str, Any]:
    """One ``failures`` entry of a contacts import report (Contacts v3 spec: ``inline_response_200_2_failures_1``)."""
    entry: dict[str, Any] = {}
    if contact_id is not None:
        entry["contactId"] = contact_id
    source = item if isinstance(item, dict) else {}
    match = source.get("matchIdentifier")
    entry["matchIdentifier"] = match if isinstance(match, str) else ""
    identifiers = source.get("identifiers")
    entry["identifiers"] = copy.deepcopy(identifiers) if isinstance(identifiers, dict) else {}
    entry["failures"] = [{"failureCode": code, "description": description}]
    return entry


# -- insight data helpers -----------------------------------------------------------------------------
def _parse_collection_name(raw: str) -> str:
    """Path ``collectionName`` (Insight data v3 spec: pattern, max 255) -> else 400 ``insightData:invalidId``."""
    name = unquote(raw)
    if len(name) > _COLLECTION_NAME_MAX or not _COLLECTION_NAME_RE.match(name):
        raise _ApiError(_v3_error(400, "insightData:invalidId", f"The collectionName value '{name}' is invalid",
                                  [{"item": "collectionName", "description": "Invalid collection name"}]))
    return name


def _parse_record_id(raw: str) -> str:
    """Path ``recordId``: 1-255 characters (sandbox choice) -> else 400 ``insightData:invalidId``."""
    key = unquote(raw)
    if not 1 <= len(key) <= _RECORD_KEY_MAX:
        raise _ApiError(_v3_error(400, "insightData:invalidId", f"The recordId value '{key}' is invalid",
                                  [{"item": "recordId", "description": f"1-{_RECORD_KEY_MAX} characters"}]))
    return key


def _parse_record_body(raw: bytes) -> dict[str, Any]:
    record = _parse_v3_json(raw, service="insightData")
    if isinstance(record, str):
        raise _ApiError(_bad_json("The Insight data record must be a JSON object, not a JSON-encoded string",
                                  service="insightData"))
    if not isinstance(record, dict):
        raise _ApiError(_bad_json("The Insight data record must be a JSON object", service="insightData"))
    return record


def _query_enum(query: dict[str, list[str]], name: str, choices: tuple[str, ...]) -> str:
    values = query.get(name) or []
    value = values[-1] if values else None
    if value not in choices:
        raise _ApiError(_v3_error(400, "insightData:invalidParameter",
                                  f"{name} is required and must be one of {', '.join(choices)}",
                                  [{"item": name, "description": "Required" if value is None
                                    else f"'{value}' is not allowed"}]))
    return str(value)


def _collection_not_found(name: str, description: str) -> _Response:
    return _v3_error(404, "insightData:collectionNotFound", "The collection could not be found",
                     [{"item": name, "description": description}])


def _shape_of(value: Any, path: str) -> _Shape:
    """The shape of a record's JSON value, enforcing Dotdigital's insight record rules (raises ``_RecordRejected``):

    * object keys of ``[A-Za-z0-9_-]`` only -> ``JsonKeyInvalidCharacters``;
    * no array directly inside an array -> ``JsonContainsNestedArray`` (arrays of objects are fine);
    * integers within signed 64 bits, no infinities -> ``JsonNumberValueTooLarge``, NaN -> ``InvalidJson``
      (sandbox choice of bound: Dotdigital documents no limit);
    * the items of one array share a type -> ``JsonValueIncompatibleWithSchema``.
    Length limits (``JsonKeyTooLong``, ``JsonValueTooLong``) are not enforced: their values are unknown.
    """
    if value is None:
        return _Shape()
    if isinstance(value, bool):
        return _Shape("BOOLEAN")
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _RecordRejected("JsonNumberValueTooLarge", f"The number '{path}' does not fit in 64 bits", path)
        return _Shape("FLOAT")
    if isinstance(value, float):
        if math.isnan(value):
            raise _RecordRejected("InvalidJson", f"'{path}' is NaN, which is not JSON", path)
        if math.isinf(value):
            raise _RecordRejected("JsonNumberValueTooLarge", f"The number '{path}' is too large", path)
        return _Shape("FLOAT")
    if isinstance(value, str):
        return _Shape("STRING")
    if isinstance(value, dict):
        fields: dict[str, _Shape] = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or not _INSIGHT_JSON_KEY_RE.match(key):
                raise _RecordRejected("JsonKeyInvalidCharacters",
                                      f"The key '{child}' may only contain A-Z, a-z, 0-9, '-' and '_'", child)
            fields[key] = _shape_of(item, child)
        return _Shape("RECORD", fields=fields)
    if isinstance(value, list):
        element = _Shape()
        for index, item in enumerate(value):
            if isinstance(item, list):
                raise _RecordRejected("JsonContainsNestedArray", f"'{path}[{index}]' is an array inside an array", path)
            element = _unify(element, _shape_of(item, f"{path}[{index}]"), path, in_array=True)
        return _Shape(element.kind, True, element.fields)
    raise _RecordRejected("InvalidJson", f"'{path}' is not a JSON value", path)  # pragma: no cover


def _unify(existing: _Shape, new: _Shape, path: str, *, in_array: bool = False) -> _Shape:
    """Merge ``new`` into ``existing`` (neither is changed): new fields extend the schema, a type change is
    ``JsonValueIncompatibleWithSchema`` naming the locked type, as in the v2 error message."""
    if existing.blank:
        return new.copy()
    if new.blank:
        return existing.copy()
    if existing.repeated != new.repeated or (existing.kind and new.kind and existing.kind != new.kind):
        where = "this array" if in_array else "this collection"
        raise _RecordRejected(
            "JsonValueIncompatibleWithSchema",
            f"A value named '{path}' of type {existing.describe()} already exists in {where} and new values must be "
            "of this type.", path,
        )
    fields = {k: v.copy() for k, v in existing.fields.items()}
    for name, sub in new.fields.items():
        child = f"{path}.{name}" if path else name
        fields[name] = _unify(fields[name], sub, child, in_array=in_array) if name in fields else sub.copy()
    return _Shape(existing.kind or new.kind, existing.repeated, fields)


def _shape_columns(shape: _Shape) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = []
    for name, sub in shape.fields.items():
        if sub.kind is None:
            continue
        column: dict[str, Any] = {"name": name}
        if sub.repeated:
            column["mode"] = "REPEATED"
        column["type"] = sub.kind
        column["fields"] = _shape_columns(sub) if sub.kind == "RECORD" else []
        columns.append(column)
    return columns


# ---------------------------------------------------------------------------------------------------
# Error envelopes
# ---------------------------------------------------------------------------------------------------
def _v2_error(status: int, message: str, *, contact_id: int | None = None) -> _Response:
    """v2 envelope ``{"message": "<text> ERROR_CODE"}``."""
    return _Response(status, {"message": message}, contact_id=contact_id)


def _v3_error(status: int, code: str, description: str, details: list[dict[str, str]] | None = None) -> _Response:
    """v3 envelope ``{"errorCode": "service:code", "description": ..., "details": [{item, description}]}``."""
    return _Response(status, {"errorCode": code, "description": description, "details": list(details or [])})


def _bad_json(description: str, details: list[dict[str, str]] | None = None, *, service: str = "contacts") -> _Response:
    return _v3_error(400, f"{service}:badJson", description, details)


def _contact_not_found(identifier: str, value: str, *, service: str = "contacts") -> _Response:
    """404 ``<service>:contactNotFound`` (the contacts and insight specs use the same description and details)."""
    return _v3_error(404, f"{service}:contactNotFound", "The following contacts could not be found",
                     [{"item": value, "description": f"Not found using the identifier '{identifier}'"}])


def _v3_service(raw_path: str) -> str | None:
    lowered = raw_path.lower()
    for prefix, service in (("/contacts/v3", "contacts"), ("/insightdata/v3", "insightData"), ("/events/v3", "events")):
        if lowered == prefix or lowered.startswith(prefix + "/"):
            return service
    return None


def _error_body(raw_path: str, status: int, code: str, description: str) -> _Response:
    """An error in the envelope of the API version the path belongs to (v3 services vs everything else)."""
    service = _v3_service(raw_path)
    if service is not None:
        return _v3_error(status, f"{service}:{code}", description)
    return _v2_error(status, description)
