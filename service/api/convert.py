"""Validate protobuf requests and convert them into domain objects.

Every problem found becomes a field violation (field path + description, as in google.rpc.BadRequest);
the whole request is refused when there is any, so nothing partial is ever written.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit
from typing import Any

from google.protobuf import json_format

from ctdd import clock
from ctdd.sync.v1 import sync_service_pb2 as pb
from ctdd.config import Settings
from ctdd.domain.behaviour import BehaviouralEventInput
from ctdd.domain.commerce import CartContext, cart_record, parse_ts
from ctdd.domain.contact import ChannelConsent, ConsentRecord, ContactInput, Identity, SourceStamp
from ctdd.domain.echo import echo
from ctdd.domain.identity import InvalidIdentifier, is_junk, normalise_email, normalise_mobile
from ctdd.domain.json_values import insight_json_problem
from ctdd.domain.resources import MAX_ID, InvalidResource, check_resource

MAX_STRING = 1000
MAX_CUSTOM_FIELDS = 100
MAX_CONSENT_RECORDS = 5
MAX_LISTS = 100
#: Limits of values that are stored in a column or end up in a URL (one set, matching ``ctdd.db.models``;
#: tests/unit/test_input_limits.py checks them against the columns): ``source.resource_type``
#: (record_type), ``source.resource_id``, customer and anonymous ids, product ids and cart ids (resource_id,
#: customer_id, product_id, cart_id: MAX_ID = 200), behavioural event ids (the dedupe key
#: ``event:{store}:{id}`` fits processed_event.dedupe_key), locales (order_summary.locale).
MAX_RESOURCE_TYPE = 50
MAX_EVENT_ID = 190
MAX_LOCALE = 20
#: how far in the future a client's clock may be before a timestamp counts as "in the future"
CLOCK_SKEW = timedelta(minutes=5)

_STATUS = {pb.CONSENT_STATUS_SUBSCRIBED: "subscribed", pb.CONSENT_STATUS_UNSUBSCRIBED: "unsubscribed"}
_OPT_IN = {pb.OPT_IN_TYPE_SINGLE: "single", pb.OPT_IN_TYPE_DOUBLE: "double", pb.OPT_IN_TYPE_VERIFIED_DOUBLE: "verifiedDouble"}
_PROFILE_STRINGS = (
    "first_name", "last_name", "middle_name", "title", "company_name", "customer_group", "locale", "currency",
)
_ADDRESS_FIELDS = ("street_line1", "street_line2", "city", "postal_code", "region", "country", "phone")


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


class InvalidRequest(Exception):
    def __init__(self, violations: list[Violation]):
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


#: the range of google.protobuf.Timestamp (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z)
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


@functools.lru_cache(maxsize=4096)
def _whole_second(seconds: int) -> tuple[datetime, str]:
    """A second of UTC time as an aware datetime and as ``YYYY-MM-DDTHH:MM:SSZ``. Cached: the events of a
    stream arrive many per second, and converting a Timestamp otherwise costs a tenth of validating an event."""
    moment = _EPOCH + timedelta(seconds=seconds)
    return moment, moment.isoformat()[:19] + "Z"


def _check_timestamp(violations: list[Violation], path: str, value) -> bool:
    """Whether a set Timestamp field is inside the Timestamp range; one outside it is a violation."""
    if _MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos <= 999_999_999:
        return True
    violations.append(Violation(path, "not a valid timestamp (years 0001 to 9999)"))
    return False


def _timestamp_and_text(violations: list[Violation], path: str, value) -> tuple[datetime, str]:
    """A set Timestamp field as an aware UTC datetime and its second as ``YYYY-MM-DDTHH:MM:SSZ``; one
    outside the Timestamp range is a violation (and the epoch)."""
    seconds, nanos = (value.seconds, value.nanos) if _check_timestamp(violations, path, value) else (0, 0)
    moment, text = _whole_second(seconds)
    return (moment + timedelta(microseconds=nanos // 1000) if nanos >= 1000 else moment), text


def timestamp(violations: list[Violation], path: str, value) -> datetime:
    """A set Timestamp field as an aware UTC datetime (see :func:`_timestamp_and_text`)."""
    return _timestamp_and_text(violations, path, value)[0]


def to_timestamp(moment: datetime | None):
    """An aware datetime as a protobuf Timestamp for a reply (None stays None: the field is left unset)."""
    if moment is None:
        return None
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def check_values(message) -> None:
    """Refuse (InvalidRequest) a request with a NUL character in any string (PostgreSQL stores none in text)
    or NaN or Infinity in a google.protobuf.Struct (not JSON: Dotdigital and the database refuse them)."""
    violations: list[Violation] = []
    _scan(violations, "", message)
    if violations:
        raise InvalidRequest(violations)


def _scan(violations: list[Violation], path: str, message) -> None:
    for fd, value in message.ListFields():
        where = f"{path}.{fd.name}" if path else fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                _scan_value(violations, where, key, None)
                _scan_value(violations, f"{where}.{key}", item, value_fd)
        elif fd.is_repeated:
            for i, item in enumerate(value):
                _scan_value(violations, f"{where}[{i}]", item, fd)
        else:
            _scan_value(violations, where, value, fd)
        if len(violations) >= 16:
            return


def _scan_value(violations: list[Violation], path: str, value, fd) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            violations.append(Violation(path, "must not contain a NUL character"))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            violations.append(Violation(path, "must be a finite number (NaN and Infinity are not JSON)"))
    elif fd is not None and fd.message_type is not None:
        _scan(violations, path, value)


def _check_len(violations: list[Violation], path: str, value: str, limit: int = MAX_STRING) -> None:
    if len(value) > limit:
        violations.append(Violation(path, f"must be at most {limit} characters"))


#: characters a URI cannot hold unescaped (RFC 3986): whitespace and controls are checked separately
_NOT_IN_URI = set('<>"{}|\\^`')


#: a language tag as commercetools writes locales (IETF BCP 47: "en", "en-GB", "zh-Hant-TW"; "en_GB" is taken too)
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def _check_locale(v: list[Violation], path: str, value: str) -> None:
    if len(value) > MAX_LOCALE or not _LOCALE.fullmatch(value):
        v.append(Violation(path, f"must be a language tag such as en-GB (at most {MAX_LOCALE} characters)"))


def _check_currency(v: list[Violation], path: str, value: str) -> None:
    if not (len(value) == 3 and value.isascii() and value.isalpha()):
        v.append(Violation(path, "must be an ISO 4217 currency code (three letters)"))


def _is_web_url(url: str) -> bool:
    """An absolute http(s) URL with a host, without characters a URI cannot hold."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch in _NOT_IN_URI for ch in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:  # e.g. a bad port or an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_ip_address(text: str) -> bool:
    """An IPv4 or IPv6 address (no IPv6 zone such as ``%eth0``: not an address Dotdigital's format takes)."""
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _consent(violations: list[Violation], path: str, msg: pb.ChannelConsent, channel: str,
             not_after: datetime | None = None) -> ChannelConsent | None:
    if msg.status == pb.CONSENT_STATUS_UNSPECIFIED and not msg.records and msg.opt_in_type == pb.OPT_IN_TYPE_UNSPECIFIED:
        return None
    if msg.status not in (pb.CONSENT_STATUS_UNSPECIFIED, *_STATUS):
        violations.append(Violation(f"{path}.status", "unknown consent status"))
    if msg.opt_in_type not in (pb.OPT_IN_TYPE_UNSPECIFIED, *_OPT_IN):
        violations.append(Violation(f"{path}.opt_in_type", "unknown opt-in type"))
    if msg.opt_in_type != pb.OPT_IN_TYPE_UNSPECIFIED and msg.status != pb.CONSENT_STATUS_SUBSCRIBED:
        violations.append(Violation(f"{path}.opt_in_type", "only allowed with status SUBSCRIBED"))
    if channel == "sms" and msg.opt_in_type == pb.OPT_IN_TYPE_VERIFIED_DOUBLE:
        violations.append(Violation(f"{path}.opt_in_type", "VERIFIED_DOUBLE exists for the email channel only"))
    if len(msg.records) > MAX_CONSENT_RECORDS:
        violations.append(Violation(f"{path}.records", f"at most {MAX_CONSENT_RECORDS} consent records"))
    records = []
    for i, rec in enumerate(msg.records):
        rpath = f"{path}.records[{i}]"
        for name in ("text", "url", "ip_address", "user_agent"):
            if not getattr(rec, name).strip():
                violations.append(Violation(f"{rpath}.{name}", "required"))
            _check_len(violations, f"{rpath}.{name}", getattr(rec, name))
        consented_at = None
        if not rec.HasField("consented_at"):
            violations.append(Violation(f"{rpath}.consented_at", "required"))
        else:
            consented_at = timestamp(violations, f"{rpath}.consented_at", rec.consented_at)
            if consented_at > (not_after or datetime.now(timezone.utc) + CLOCK_SKEW):
                violations.append(Violation(f"{rpath}.consented_at", "must not be in the future"))
        # sent as given (trimmed): Dotdigital's consentRecord wants `ipAddress` in ipv4/ipv6 format and `url`
        # in uri format, and refuses the whole contact upsert for one that is not
        ip, url = rec.ip_address.strip(), rec.url.strip()
        if ip and not _is_ip_address(ip):
            violations.append(Violation(f"{rpath}.ip_address", "must be an IPv4 or IPv6 address"))
        if url and not _is_web_url(url):
            violations.append(Violation(f"{rpath}.url", "must be an absolute http(s) URL with a host and no spaces"))
        records.append(
            ConsentRecord(
                text=rec.text.strip(), consented_at=consented_at,
                url=url, ip_address=ip, user_agent=rec.user_agent.strip(),
            )
        )
    decided_at = timestamp(violations, f"{path}.decided_at", msg.decided_at) if msg.HasField("decided_at") else None
    if decided_at is not None and decided_at > (not_after or datetime.now(timezone.utc) + CLOCK_SKEW):
        violations.append(Violation(f"{path}.decided_at", "must not be in the future"))
    return ChannelConsent(
        status=_STATUS.get(msg.status),
        opt_in_type=_OPT_IN.get(msg.opt_in_type),
        records=tuple(records),
        decided_at=decided_at,
    )


def _address(violations: list[Violation], path: str, msg: pb.Address, attributes: dict[str, Any]) -> None:
    for name in _ADDRESS_FIELDS:
        value = getattr(msg, name)
        if value:
            _check_len(violations, f"{path}.{name}", value, 256)
            attributes[f"{path.removeprefix('profile.')}.{name}"] = value
    if msg.country and (len(msg.country) != 2 or not msg.country.isalpha()):
        violations.append(Violation(f"{path}.country", "must be an ISO 3166-1 alpha-2 code"))


def _check_identifier(v: list[Violation], path: str, name: str, value: str | None) -> None:
    if value is not None:
        _check_len(v, f"{path}.{name}", value, MAX_ID)
        if is_junk(value):
            v.append(Violation(f"{path}.{name}", "placeholder values such as 'null' or '0' are not identifiers"))


def _parse_identity(v: list[Violation], path: str, ident: pb.ContactIdentity) -> Identity:
    """Normalise a ContactIdentity; problems are appended to ``v`` as violations under ``path``."""
    customer_id, email, mobile_number, anonymous_id = _identity_values(v, path, ident)
    return Identity(customer_id=customer_id, email=email, mobile_number=mobile_number, anonymous_id=anonymous_id)


def _identity_values(v: list[Violation], path: str, ident: pb.ContactIdentity
                     ) -> tuple[str | None, str | None, str | None, str | None]:
    """The normalised (customer_id, email, mobile_number, anonymous_id) of a ContactIdentity."""
    raw_email, raw_mobile = ident.email, ident.mobile_number
    customer_id = ident.customer_id.strip() or None
    anonymous_id = ident.anonymous_id.strip() or None
    email = mobile = None
    _check_identifier(v, path, "customer_id", customer_id)
    _check_identifier(v, path, "anonymous_id", anonymous_id)
    if raw_email.strip():
        try:
            email = normalise_email(raw_email)
        except InvalidIdentifier as exc:
            v.append(Violation(f"{path}.email", str(exc)))
    if raw_mobile.strip():
        try:
            mobile = normalise_mobile(raw_mobile)
        except InvalidIdentifier as exc:
            v.append(Violation(f"{path}.mobile_number", str(exc)))
    if not (customer_id or email or mobile or anonymous_id or raw_email.strip() or raw_mobile.strip()):
        v.append(Violation(path, "at least one of customer_id, email, mobile_number or anonymous_id is required"))
    return customer_id, email, mobile, anonymous_id


def parse_sync_contact(request: pb.SyncContactRequest, settings: Settings) -> ContactInput:
    """Validate ``request``; return the domain contact or raise :class:`InvalidRequest`."""
    v: list[Violation] = []
    if request.ByteSize() > settings.max_request_bytes:
        raise InvalidRequest([Violation("", f"request is larger than {settings.max_request_bytes} bytes")])
    check_values(request)

    store = settings.store(request.store_key) if request.store_key else None
    if not request.store_key:
        v.append(Violation("store_key", "required"))
    elif store is None:
        v.append(Violation("store_key", f"unknown store {echo(request.store_key)}"))

    identity = _parse_identity(v, "identity", request.identity)
    not_after = latest_acceptable(settings)

    attributes: dict[str, Any] = {}
    profile = request.profile
    for name in _PROFILE_STRINGS:
        if profile.HasField(name):
            value = getattr(profile, name)
            _check_len(v, f"profile.{name}", value, 256)
            if name == "locale" and value:
                _check_locale(v, "profile.locale", value)
            elif name == "currency" and value:
                _check_currency(v, "profile.currency", value)
            attributes[name] = value or None
    if profile.HasField("date_of_birth"):
        dob = profile.date_of_birth
        if dob:
            try:
                parsed = datetime.strptime(dob, "%Y-%m-%d")
                if parsed.year < 1900 or parsed > datetime.now():
                    raise ValueError
                attributes["date_of_birth"] = dob
            except ValueError:
                v.append(Violation("profile.date_of_birth", "must be a past date written YYYY-MM-DD"))
        else:
            attributes["date_of_birth"] = None
    if profile.HasField("billing_address"):
        _address(v, "profile.billing_address", profile.billing_address, attributes)
    if profile.HasField("shipping_address"):
        _address(v, "profile.shipping_address", profile.shipping_address, attributes)
    if profile.HasField("custom_fields"):
        custom = json_format.MessageToDict(profile.custom_fields)
        if len(custom) > MAX_CUSTOM_FIELDS:
            v.append(Violation("profile.custom_fields", f"at most {MAX_CUSTOM_FIELDS} custom fields"))
        for key, value in custom.items():
            if isinstance(value, (dict, list)):
                v.append(Violation(f"profile.custom_fields.{key}", "must be a string, number, boolean or null"))
            elif isinstance(value, str):
                _check_len(v, f"profile.custom_fields.{key}", value)
            attributes[f"custom.{key}"] = value

    email_consent = sms_consent = None
    if request.HasField("consent"):
        email_consent = _consent(v, "consent.email", request.consent.email, "email", not_after)
        sms_consent = _consent(v, "consent.sms", request.consent.sms, "sms", not_after)
        if sms_consent is not None and sms_consent.status == "subscribed" and not identity.mobile_number:
            v.append(Violation("consent.sms.status", "SMS opt-in requires identity.mobile_number"))
        if sms_consent is not None and sms_consent.records and not identity.mobile_number:
            v.append(Violation("consent.sms.records", "SMS consent records require identity.mobile_number"))
        total = len(email_consent.records if email_consent else ()) + len(sms_consent.records if sms_consent else ())
        if total > MAX_CONSENT_RECORDS:
            v.append(Violation("consent", f"at most {MAX_CONSENT_RECORDS} consent records per request (Dotdigital limit)"))

    lists: dict[str, bool] = {}
    if len(request.lists) > MAX_LISTS:
        v.append(Violation("lists", f"at most {MAX_LISTS} list memberships"))
    for i, membership in enumerate(request.lists):
        if not membership.list_key:
            v.append(Violation(f"lists[{i}].list_key", "required"))
        elif store is not None and membership.list_key not in store.lists:
            v.append(Violation(f"lists[{i}].list_key", f"unknown list {echo(membership.list_key)} for store {store.key!r}"))
        elif lists.get(membership.list_key, membership.member) != membership.member:
            v.append(Violation(f"lists[{i}].member", f"list {echo(membership.list_key)} is given twice, once as "
                                                     "member and once not"))
        else:
            lists[membership.list_key] = membership.member

    preferences: dict[str, bool] = {}
    for i, choice in enumerate(request.preferences):
        if not choice.preference_key:
            v.append(Violation(f"preferences[{i}].preference_key", "required"))
        elif store is not None and choice.preference_key not in store.preferences:
            v.append(Violation(f"preferences[{i}].preference_key",
                               f"unknown preference {echo(choice.preference_key)} for store {store.key!r}"))
        elif preferences.get(choice.preference_key, choice.opted_in) != choice.opted_in:
            v.append(Violation(f"preferences[{i}].opted_in", f"preference {echo(choice.preference_key)} is given "
                                                             "twice, once opted in and once not"))
        else:
            preferences[choice.preference_key] = choice.opted_in

    src = request.source
    if src.version < 0:
        v.append(Violation("source.version", "must not be negative"))
    _check_len(v, "source.resource_type", src.resource_type, MAX_RESOURCE_TYPE)
    _check_len(v, "source.resource_id", src.resource_id, MAX_ID)
    # the version orders the updates of one record: without both halves of the record it would be ignored
    if bool(src.resource_type) != bool(src.resource_id):
        missing = "source.resource_id" if src.resource_type else "source.resource_type"
        v.append(Violation(missing, "required with the other half of the source record (resource_type and "
                                    "resource_id name it together)"))
    elif src.version and not src.resource_type:
        v.append(Violation("source.version", "needs source.resource_type and source.resource_id: a version is "
                                             "compared with the same record's"))
    source = SourceStamp(
        resource_type=src.resource_type or None,
        resource_id=src.resource_id or None,
        version=src.version or None,
        modified_at=timestamp(v, "source.modified_at", src.modified_at) if src.HasField("modified_at") else None,
    )
    if source.modified_at is not None and source.modified_at > not_after:
        v.append(Violation("source.modified_at", _future(settings)))

    if v:
        raise InvalidRequest(v)
    return ContactInput(
        store_key=request.store_key,
        identity=identity,
        attributes=attributes,
        email_consent=email_consent,
        sms_consent=sms_consent,
        lists=lists,
        source=source,
        preferences=preferences,
    )


MAX_EVENT_BYTES = 1024 * 1024


def _integral_floats_to_int(value: Any) -> Any:
    """google.protobuf.Struct carries every number as a double; give whole numbers back their int type
    (commercetools money amounts and quantities are integers)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(v) for v in value]
    return value


def _cart_modified_at(cart: Any) -> datetime | None:
    modified = cart.get("lastModifiedAt") if isinstance(cart, dict) else None
    try:
        return parse_ts(modified) if isinstance(modified, str) else None
    except (ValueError, OverflowError):  # not a time: the cart's own validation says so
        return None


def _struct(value) -> dict[str, Any]:
    return json_format.MessageToDict(value) if value.fields else {}


def _properties(violations: list[Violation], path: str, value) -> dict[str, Any]:
    """An event's ``properties`` as the JSON object its insight record carries; what Dotdigital would refuse in
    a record (``insight_json_problem``) is a violation here rather than a dead record later."""
    properties = _struct(value)
    problem = insight_json_problem(properties) if properties else None
    if problem is not None:
        violations.append(Violation(f"{path}.{problem[0]}"[:MAX_ID], problem[1]))
    return properties


def latest_acceptable(settings: Settings) -> datetime:
    """The latest timestamp that may decide staleness: the server's clock plus ``max_clock_skew_seconds``.
    A later one (year 9999) would make every later update look stale."""
    return clock.now() + timedelta(seconds=settings.service.max_clock_skew_seconds)


def _future(settings: Settings) -> str:
    return (f"must not be more than {settings.service.max_clock_skew_seconds:g} seconds ahead of the server's "
            "clock (max_clock_skew_seconds)")


def parse_behavioural_event(msg: pb.BehaviouralEvent, settings: Settings, store_key: str, *,
                            scanned: bool = False) -> BehaviouralEventInput:
    """Validate a typed behavioural event; return a ``BehaviouralEventInput`` or raise InvalidRequest.

    ``scanned``: the event is one the inbox stored after :func:`check_behavioural_event` accepted it, so the scan of
    every string and number for NUL, NaN and Infinity (about a third of parsing) is not repeated."""
    event = _behavioural_event(msg, build=True, settings=settings, scan=not scanned)
    assert event is not None
    return event


def check_behavioural_event(msg: pb.BehaviouralEvent, settings: Settings | None = None) -> str:
    """Validate a typed behavioural event exactly as :func:`parse_behavioural_event` does, without building
    the domain event (a queued event is stored as received and parsed when it is applied): its event id,
    or InvalidRequest. Building costs about a third of parsing, and queued ingest does little else."""
    _behavioural_event(msg, build=False, settings=settings)
    return msg.event_id.strip()


def _behavioural_event(msg: pb.BehaviouralEvent, *, build: bool, settings: Settings | None = None,
                       scan: bool = True) -> BehaviouralEventInput | None:
    v: list[Violation] = []
    event_id = msg.event_id
    if not event_id.strip():
        v.append(Violation("behavioural_event.event_id", "required (it is the deduplication key)"))
    _check_len(v, "behavioural_event.event_id", event_id, MAX_EVENT_ID)
    if scan:
        _scan(v, "behavioural_event", msg)
    if v:  # a NUL, NaN or Infinity: not converted further
        raise InvalidRequest(v)
    if msg.currency:
        _check_currency(v, "behavioural_event.currency", msg.currency)
    _check_len(v, "behavioural_event.locale", msg.locale, MAX_LOCALE)
    if msg.locale and len(msg.locale) <= MAX_LOCALE:
        _check_locale(v, "behavioural_event.locale", msg.locale)
    identity = _identity_values(v, "behavioural_event.identity", msg.identity)
    kind = msg.WhichOneof("kind")
    data: dict[str, Any] = {}
    occurred: datetime | None = None
    when = ""  # YYYY-MM-DDTHH:MM:SSZ (stamp_received: an event without occurred_at takes the time it came in)
    if msg.HasField("occurred_at"):
        if build or kind == "cart_updated":
            occurred, when = _timestamp_and_text(v, "behavioural_event.occurred_at", msg.occurred_at)
        else:
            _check_timestamp(v, "behavioural_event.occurred_at", msg.occurred_at)
        if settings is not None and _check_timestamp([], "", msg.occurred_at):
            moment = _whole_second(msg.occurred_at.seconds)[0]  # occurred_at decides staleness (the source stamp)
            if moment > latest_acceptable(settings):
                v.append(Violation("behavioural_event.occurred_at", _future(settings)))
    if kind is None:
        v.append(Violation("behavioural_event.kind", "one of product_viewed, cart_updated, custom_event is required"))
    elif kind == "product_viewed":
        pv = msg.product_viewed
        if not pv.product_id.strip():
            v.append(Violation("behavioural_event.product_viewed.product_id", "required (not blank)"))
        _check_len(v, "behavioural_event.product_viewed.product_id", pv.product_id, MAX_ID)
        _check_len(v, "behavioural_event.product_viewed.sku", pv.sku, MAX_ID)
        properties = _properties(v, "behavioural_event.product_viewed.properties", pv.properties)
        if build:
            data = {"productId": pv.product_id, "sku": pv.sku, "lastViewedAt": when, "properties": properties}
    elif kind == "cart_updated":
        cu = msg.cart_updated
        if not cu.cart_id.strip():
            v.append(Violation("behavioural_event.cart_updated.cart_id", "required (not blank)"))
        _check_len(v, "behavioural_event.cart_updated.cart_id", cu.cart_id, MAX_ID)
        if cu.cart_version < 0:
            v.append(Violation("behavioural_event.cart_updated.cart_version", "must not be negative"))
        cart = _integral_floats_to_int(json_format.MessageToDict(cu.cart))
        if not cart:  # without it there is nothing to build the CartInsight record from
            v.append(Violation("behavioural_event.cart_updated.cart", "required (the commercetools Cart as JSON)"))
        elif "id" in cart and cart["id"] != cu.cart_id:
            v.append(Violation("behavioural_event.cart_updated.cart.id", "must be cart_updated.cart_id"))
        try:  # the typed model of a commercetools Cart (ctdd.domain.resources); the id may be left out
            check_resource("cart", {"id": cu.cart_id or "-", **cart}, name="cart")
            # (also when only checking: this is what tells whether the cart is a commercetools Cart)
            cart_record(cu.cart_id, cart, CartContext(locale=msg.locale or None, currency=msg.currency or None))
        except InvalidResource as exc:
            v.append(Violation("behavioural_event.cart_updated.cart", exc.reason))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            v.append(Violation("behavioural_event.cart_updated.cart", f"not a commercetools Cart: {exc}"))
        modified = _cart_modified_at(cart)  # a cart without a version is ordered by it
        if settings is not None and modified is not None and modified > latest_acceptable(settings):
            v.append(Violation("behavioural_event.cart_updated.cart.lastModifiedAt", _future(settings)))
        # the cart itself: ingest builds the CartInsight record with the store's URL templates
        data = {"cartId": cu.cart_id, "cartVersion": cu.cart_version or None, "cart": cart, "modifiedAt": when}
    else:
        ce = msg.custom_event
        if not ce.name.strip():
            v.append(Violation("behavioural_event.custom_event.name", "required (not blank)"))
        _check_len(v, "behavioural_event.custom_event.name", ce.name, 100)
        properties = _properties(v, "behavioural_event.custom_event.properties", ce.properties)
        if build:
            data = {"name": ce.name, "occurredAt": when, "properties": properties}
    if msg.ByteSize() > MAX_EVENT_BYTES:
        v.append(Violation("behavioural_event", f"larger than {MAX_EVENT_BYTES} bytes"))
    if v:
        raise InvalidRequest(v)
    if not build:
        return None
    customer_id, email, mobile_number, anonymous_id = identity
    return BehaviouralEventInput(
        event_id=event_id.strip(), kind=kind, occurred_at=occurred, locale=msg.locale or None,
        currency=msg.currency or None, data=data,
        identity=Identity(customer_id=customer_id, email=email, mobile_number=mobile_number, anonymous_id=anonymous_id),
    )
