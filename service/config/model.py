"""The configuration model: one class per TOML table, validated by pydantic, immutable once loaded (the
root, ``Settings``, is in :mod:`ctdd.config.settings`).

Every table refuses unknown keys. Values are checked where they are read (types and ranges on the fields,
the rules that span keys in validators), so that a bad value stops start-up with a message naming its key
instead of failing later, deep inside the service. docs/configuration.md documents every key.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from ctdd.config.defaults import DEFAULT_DATA_FIELDS, DEFAULT_DATABASE_URL, DEFAULT_LISTEN
from ctdd.config.errors import InvalidKey, from_validation_error
from ctdd.config.sources import table_variable
from ctdd.domain.datafields import is_valid_data_field_name

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: the gRPC server's hard limit on a message (ctdd.api.server.MAX_MESSAGE_BYTES)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def derived(**kwargs: Any) -> Any:
    """A field the loader fills in (a table's own name, ...): not a key of the file, not printed."""
    return Field(exclude=True, **kwargs)


class Replaceable:
    """``replace(**changes)``: a validated copy with some values changed (what ``dataclasses.replace`` did
    when the settings were dataclasses)."""

    def replace(self, **changes: Any) -> Self:
        values = {name: getattr(self, name) for name in type(self).model_fields}  # type: ignore[attr-defined]
        values.update(changes)
        try:
            return type(self).model_validate(values)  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise from_validation_error(exc, type(self)) from None  # type: ignore[arg-type]


class Section(Replaceable, BaseModel):
    """A table of the configuration: unknown keys refused, frozen (and hashable when its values are)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceConfig(Section):
    """``[service]``: the gRPC server, the database and logging."""

    #: gRPC listen address HOST:PORT (``CTDD_LISTEN``, ``--listen``)
    listen: str = DEFAULT_LISTEN
    #: SQLAlchemy URL (``CTDD_DATABASE_URL``, ``--database-url``)
    database_url: str = DEFAULT_DATABASE_URL
    #: logging level (``CTDD_LOG_LEVEL``, ``--log-level``)
    log_level: str = "INFO"
    #: ``text`` lines or one JSON object per line (``CTDD_LOG_FORMAT``; ctdd.logging_setup)
    log_format: Literal["text", "json"] = "text"
    #: ``rejected_record`` rows are deleted this long after they were written (ctdd.ingest.rejections)
    rejected_retention_days: float = Field(30.0, gt=0)
    #: larger SyncContact requests get INVALID_ARGUMENT
    max_request_bytes: int = Field(256 * 1024, ge=1, le=MAX_MESSAGE_BYTES)
    #: timestamps that decide staleness (``source.modified_at``, ``occurred_at``, a commercetools resource's
    #: ``lastModifiedAt`` ...) more than this far ahead of the server's clock are refused
    max_clock_skew_seconds: float = Field(300.0, ge=0)
    #: commit concurrent RPCs in shared transactions (ctdd.db.group_commit); ``CTDD_GROUP_COMMIT=0`` turns it off
    group_commit: bool = True
    group_commit_max_batch: int = Field(256, ge=1)
    #: apply a batch of events (queued events of a claim, concurrent RPCs of a group commit) set-based: a constant
    #: number of statements per batch (ctdd.ingest.set_apply); ``false`` applies each in its own savepoint, one
    #: statement at a time (``CTDD_SET_BASED_APPLY=0``; the same results, kept for comparison)
    set_based_apply: bool = True
    # -- who may call (ctdd.api.security; docs/api.md "Security") --
    #: PEM certificate chain and private key of the server: TLS on the gRPC port, files reloaded on change
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: PEM CA certificates: mutual TLS, every client must present a certificate issued by one of them
    tls_client_ca_file: str | None = None
    #: TOML file of the callers' bearer tokens (``[[tokens]]`` name, sha256 or token, stores, operator)
    tokens_file: str | None = None
    #: name of an environment variable holding a document like ``tokens_file``'s
    tokens_env: str | None = None
    #: with tokens: grpc.health.v1.Health without a token
    allow_unauthenticated_health: bool = True
    #: with tokens: server reflection without a token
    allow_unauthenticated_reflection: bool = False
    #: listen on a non-loopback address without TLS or tokens (``--insecure``)
    insecure: bool = False
    #: HOST:PORT of a Prometheus scrape endpoint serving the metrics at ``/metrics`` (ctdd.telemetry); off by default
    metrics_listen: str | None = None
    # -- connection and stream limits of the gRPC server (ctdd.api.limits) --
    max_connections: int = Field(1000, ge=1)
    max_concurrent_rpcs: int = Field(1000, ge=1)
    #: per connection; grpc counts a call the server has not picked up yet, so a busy server refuses new streams
    #: (RST_STREAM REFUSED_STREAM: UNAVAILABLE) well below it: 100 refused 4 calls in 10 at 1,000 calls/s over
    #: 8 connections (bench/README.md); max_concurrent_rpcs bounds the whole server
    max_concurrent_streams: int = Field(1000, ge=1)
    handshake_timeout_seconds: float = Field(10.0, gt=0)
    max_connection_idle_seconds: float = Field(300.0, gt=0)
    max_connection_age_seconds: float = Field(3600.0, gt=0)
    max_connection_age_grace_seconds: float = Field(30.0, ge=0)
    keepalive_time_seconds: float = Field(300.0, gt=0)
    keepalive_timeout_seconds: float = Field(20.0, gt=0)

    @model_validator(mode="after")
    def _tls_files_together(self) -> Self:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise InvalidKey((missing,), "tls_cert_file and tls_key_file go together (TLS needs both)")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise InvalidKey(("tls_client_ca_file",),
                             "mutual TLS needs TLS: set tls_cert_file and tls_key_file too")
        return self

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if value.startswith("unix:"):
            return value
        host, colon, port = value.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"must be HOST:PORT (port 0-65535) or unix:PATH, got {value!r}")
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_host_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, colon, port = value.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"must be HOST:PORT (port 1-65535), got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            raise ValueError("not an SQLAlchemy database URL (e.g. sqlite:///ctdd.db)") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level


def _http_url(value: str | None) -> str | None:
    """An http(s) base URL without its trailing slash; empty means none."""
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _credentials_missing(model: type[BaseModel], data: Any, user_key: str, secret_key: str) -> bool:
    """Whether the raw table ``data`` lacks its user or its secret. A table with unknown keys is left to the
    unknown-key error: a misspelt key is the likelier cause."""
    return (isinstance(data, dict) and set(data) <= set(model.model_fields)
            and (not data.get(user_key) or data.get(secret_key) in (None, "")))


class AccountConfig(Section):
    """``[accounts.<name>]``: one Dotdigital account (API user)."""

    name: str = derived()
    api_user: str
    #: from ``CTDD_ACCOUNT_<NAME>_PASSWORD``, ``password_env`` or ``password_file``; never a literal in the file
    password: SecretStr
    password_env: str | None = None
    password_file: str | None = None
    region: Literal["r1", "r2", "r3"] = "r1"
    base_url: str | None = None
    discover_endpoint: bool = True
    #: Dotdigital asks clients to allow 121 s per call
    timeout_seconds: float = Field(121.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @model_validator(mode="before")
    @classmethod
    def _credentials_given(cls, data: Any) -> Any:
        if _credentials_missing(cls, data, "api_user", "password"):
            var = table_variable("accounts", str(data.get("name", "<name>")), "")
            raise InvalidKey((), "Dotdigital credentials missing; set api_user and one of password_env / "
                                 f"password_file (or {var}API_USER / _PASSWORD), or run with --sandbox")
        return data


class CommercetoolsConfig(Section):
    """``[commercetools.<name>]``: one commercetools project's API client."""

    name: str = derived()
    project_key: str = Field(min_length=1)
    client_id: str
    #: from ``CTDD_COMMERCETOOLS_<NAME>_CLIENT_SECRET``, ``client_secret_env`` or ``client_secret_file``
    client_secret: SecretStr
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    region: str = Field("europe-west1.gcp", min_length=1)
    api_url: str | None = None
    auth_url: str | None = None
    scopes: tuple[str, ...] = ()

    @field_validator("api_url", "auth_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _http_url(value)

    @model_validator(mode="before")
    @classmethod
    def _credentials_given(cls, data: Any) -> Any:
        if _credentials_missing(cls, data, "client_id", "client_secret"):
            var = table_variable("commercetools", str(data.get("name", "<name>")), "")
            raise InvalidKey((), "API client credentials missing; set client_id and one of client_secret_env / "
                                 f"client_secret_file (or {var}CLIENT_ID / {var}CLIENT_SECRET)")
        return data


class ConsentFieldsConfig(Section):
    """``[stores.<key>.consent]``: the commercetools custom fields (and the CustomObject container of guests)
    holding consent."""

    email_opt_in_field: str = Field("dd-emailOptIn", min_length=1)
    sms_opt_in_field: str = Field("dd-smsOptIn", min_length=1)
    updated_at_field: str = Field("dd-consentUpdatedAt", min_length=1)
    guest_container: str = Field("dd-consent", min_length=1)



#: the commercetools customer fields ``[stores.<key>.writeback] profile`` may write (commercetools HTTP API:
#: Customer update actions setFirstName, setLastName, ...), besides ``custom.<field>``
WRITEBACK_CUSTOMER_FIELDS = ("firstName", "lastName", "middleName", "title", "salutation", "dateOfBirth",
                             "companyName")
#: a commercetools custom field name (commercetools HTTP API: FieldDefinition ``name``)
_CUSTOM_FIELD_NAME = r"^[A-Za-z0-9_-]{2,36}$"


class WritebackConfig(Section):
    """``[stores.<key>.writeback]``: what the back-sync writes to commercetools when a contact changes it in
    Dotdigital (a preference centre, a list, the profile; ``ctdd.backsync.writeback``)."""

    #: preference key (of ``[stores.<key>.preferences]``) -> customer custom field (the key in a guest's object)
    preferences: dict[str, str] = Field(default_factory=dict)
    #: list key (of ``[stores.<key>.lists]``) -> customer custom field (the key in a guest's object)
    lists: dict[str, str] = Field(default_factory=dict)
    #: Dotdigital data field -> customer field: ``firstName``, ``lastName``, ... or ``custom.<field>``
    profile: dict[str, str] = Field(default_factory=dict)

    @field_validator("preferences", "lists")
    @classmethod
    def _custom_field_names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key, name in value.items():
            if not re.match(_CUSTOM_FIELD_NAME, name):
                raise InvalidKey((key,), f"{name!r} is not a commercetools custom field name (2-36 characters of "
                                         "A-Z, a-z, 0-9, '_' and '-')")
        return value

    @field_validator("profile")
    @classmethod
    def _profile_fields(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for data_field, target in value.items():
            if not is_valid_data_field_name(data_field):
                raise InvalidKey((data_field,), "not a valid Dotdigital data-field name (at most 20 characters of "
                                                "A-Z, a-z, 0-9, '_' and '-')")
            custom = target[len("custom."):] if target.startswith("custom.") else None
            if custom is None and target not in WRITEBACK_CUSTOMER_FIELDS:
                raise InvalidKey((data_field,), f"{target!r} is not a customer field the back-sync can write; one of "
                                                f"{', '.join(WRITEBACK_CUSTOMER_FIELDS)} or custom.<field>")
            if custom is not None and not re.match(_CUSTOM_FIELD_NAME, custom):
                raise InvalidKey((data_field,), f"{custom!r} is not a commercetools custom field name (2-36 "
                                                "characters of A-Z, a-z, 0-9, '_' and '-')")
        return value


PROGRAM_KINDS = ("abandoned_cart", "browse_abandonment", "post_purchase_first", "post_purchase_repeat",
                 "review_request")


def _clock_time(value: str) -> tuple[int, int]:
    hours, colon, minutes = value.partition(":")
    if not colon or not hours.isdigit() or not minutes.isdigit() or int(hours) > 23 or int(minutes) > 59:
        raise ValueError(f"must be a time of day HH:MM, got {value!r}")
    return int(hours), int(minutes)


class ProgramConfig(Section):
    """``[stores.<key>.programs.<kind>]``: one Dotdigital program started by ctdd-sync for this store."""

    kind: str = derived()
    #: the Dotdigital program: its id, or its name (resolved at start; ``ctdd dotdigital setup`` checks it is Active)
    program: int | str
    #: how the program is started: enrolment (``POST /v2/programs/enrolments``, 20 calls an hour per account)
    #: or list_join (the contact is added to ``trigger_list``, for a program that starts on joining a list)
    strategy: Literal["enrolment", "list_join"] = "enrolment"
    #: strategy list_join: the list key (of ``[stores.<key>.lists]``) whose join starts the program
    trigger_list: str | None = None
    #: minutes after the subject's last change (cart change, last product view, order, delivery) until the trigger
    delay_minutes: float = Field(60.0, ge=0, le=30 * 24 * 60)
    #: reminders: minutes after the previous step (a series has at most three steps)
    reminder_minutes: list[float] = Field(default_factory=list, max_length=2)
    #: no second trigger of this program for a contact within this many hours (0: no limit)
    retrigger_window_hours: float = Field(24.0, ge=0, le=24 * 365)
    #: a trigger still unsent this many hours after it first fell due (quiet hours, a held program, a paused
    #: account, a stopped service) is skipped as ``too_old`` instead of sent late (0: no limit)
    max_age_hours: float = Field(24.0, ge=0, le=24 * 365)
    #: local time of day (the store's time zone) from which triggers wait until ``quiet_hours_end``
    quiet_hours_start: str | None = None
    quiet_hours_end: str | None = None
    #: the channel whose consent the contact needs (email or sms)
    channel: Literal["email", "sms"] = "email"
    enabled: bool = True

    @field_validator("program")
    @classmethod
    def _program_id_or_name(cls, value: int | str) -> int | str:
        if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
            raise ValueError("must be a positive Dotdigital program id or a program name")
        if isinstance(value, str) and not (0 < len(value.strip()) <= 255):
            raise ValueError("a Dotdigital program name has 1-255 characters")
        return value

    @field_validator("reminder_minutes")
    @classmethod
    def _positive_reminders(cls, value: list[float]) -> list[float]:
        if any(minutes <= 0 for minutes in value):
            raise ValueError("every reminder comes a positive number of minutes after the previous step")
        return value

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None:
            _clock_time(value)
        return value

    @model_validator(mode="after")
    def _strategy_and_quiet_hours(self) -> Self:
        if (self.quiet_hours_start is None) != (self.quiet_hours_end is None):
            raise InvalidKey(("quiet_hours_start",), "quiet_hours_start and quiet_hours_end go together")
        if self.strategy == "list_join" and not self.trigger_list:
            raise InvalidKey(("trigger_list",), "strategy list_join needs the list key whose join starts the program")
        return self

    @property
    def quiet_hours(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        if self.quiet_hours_start is None or self.quiet_hours_end is None:
            return None
        return _clock_time(self.quiet_hours_start), _clock_time(self.quiet_hours_end)

    @property
    def steps_minutes(self) -> list[float]:
        """Minutes from the subject's last change to each step of the series."""
        steps, at = [], self.delay_minutes
        steps.append(at)
        for reminder in self.reminder_minutes:
            at += reminder
            steps.append(at)
        return steps


class CartWatcherConfig(Section):
    """``[stores.<key>.cart_watcher]``: polling the store's active carts in commercetools (carts emit no
    messages, and change subscriptions only report their creation)."""

    #: None: on when the store has a commercetools client and an abandoned_cart program
    enabled: bool | None = None
    interval_seconds: float = Field(60.0, gt=0)
    #: each poll reads carts modified since the cursor minus this (writes commit out of timestamp order)
    overlap_seconds: float = Field(120.0, ge=0)
    #: how far back the first poll of a store looks
    initial_lookback_hours: float = Field(48.0, ge=0)
    page_size: int = Field(500, ge=1, le=500)


class CatalogConfig(Section):
    """``[stores.<key>.catalog]``: exporting the store's products and categories to Dotdigital insight data
    (``ctdd catalog export``, ``ExportCatalog``, product messages; docs/catalog.md)."""

    enabled: bool = False
    #: account-scoped collection of the products (default ``Catalog_<store key>``)
    collection: str | None = None
    #: export the categories too, into ``categories_collection`` (default ``Categories_<store key>``)
    include_categories: bool = False
    categories_collection: str | None = None
    #: product URL: {slug}, {product_id}, {key}, {sku}, {variant_id}, {locale}, {store} are replaced
    url_template: str | None = None
    #: locales of the texts, the first is the record's own (default: the store's locale, else "en")
    locales: list[str] = Field(default_factory=list)
    #: currencies of the prices, the first is the record's own (default: the store's currency)
    currencies: list[str] = Field(default_factory=list)
    #: price selection: country (ISO 3166-1 alpha-2), channel id (default: the store's first distribution
    #: channel), customer group id
    country: str | None = None
    channel: str | None = None
    customer_group: str | None = None
    #: one record per product (key = product id) or per variant (key = SKU)
    sku_per: Literal["product", "variant"] = "product"
    description_max_chars: int = Field(1000, ge=1, le=100_000)
    page_size: int = Field(500, ge=1, le=500)
    #: records per bulk import (and the body size limit; Dotdigital allows 50 MB)
    import_max_records: int = Field(5000, ge=1)
    import_max_bytes: int = Field(20_000_000, ge=1_000, le=50_000_000)

    @field_validator("collection", "categories_collection")
    @classmethod
    def _collection_name(cls, value: str | None) -> str | None:
        from ctdd.domain.catalog import COLLECTION_NAME_RULE, is_collection_name

        if value is not None and not is_collection_name(value):
            raise ValueError(f"a collection name has {COLLECTION_NAME_RULE}")
        return value


class StoreConfig(Section):
    """``[stores.<key>]``: one commercetools store and how it maps onto a Dotdigital account."""

    key: str = derived()
    #: the [accounts.<name>] this store sends to (default: the only account)
    account: str
    #: customer ids are scoped to it (default: the project_key of the store's commercetools client)
    commercetools_project: str = "default"
    locale: str | None = None
    currency: str | None = None
    #: profile attribute path -> Dotdigital data-field name, merged over DEFAULT_DATA_FIELDS
    data_fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_DATA_FIELDS))
    #: list key -> Dotdigital address book id. Lists configured by name (``list_names``) are added here once
    #: resolved, at service start (``ctdd.dotdigital.provisioning.resolve_list_names``)
    lists: dict[str, int] = Field(default_factory=dict)
    #: list key -> Dotdigital address book name: the entries of ``[stores.<key>.lists]`` given by name
    list_names: dict[str, str] = derived(default_factory=dict)
    #: the [commercetools.<name>] client fetching this store's resources (default: the only one; None: none)
    commercetools: str | None = None
    on_customer_deleted: Literal["keep", "remove_from_lists", "delete_contact"] = "remove_from_lists"
    #: list keys with a role: joined on email opt-in / left on opt-out; the same for SMS; joined by every
    #: registered customer (not a marketing list)
    email_list: str | None = None
    sms_list: str | None = None
    customers_list: str | None = None
    #: preference key -> Dotdigital preference id
    preferences: dict[str, int] = Field(default_factory=dict)
    #: how a contact who opted out in Dotdigital is resubscribed after a newer shop opt-in
    resubscribe: Literal["challenge", "no_challenge"] = "challenge"
    consent: ConsentFieldsConfig = Field(default_factory=ConsentFieldsConfig)
    #: IANA time zone of the store (quiet hours are local time)
    time_zone: str = "UTC"
    #: CartInsight product URL: {slug}, {product_id}, {sku}, {locale}, {store} are replaced
    product_url_template: str | None = None
    #: CartInsight cart URL (where the email's "back to your cart" goes): {cart_id}, {locale}, {store}
    cart_url_template: str | None = None
    #: the programs ctdd-sync starts for this store, by kind (abandoned_cart, browse_abandonment, ...)
    programs: dict[str, ProgramConfig] = Field(default_factory=dict)
    cart_watcher: CartWatcherConfig = Field(default_factory=CartWatcherConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    #: what the back-sync writes to commercetools from Dotdigital (preferences, lists, profile edits)
    writeback: WritebackConfig = Field(default_factory=WritebackConfig)

    @model_validator(mode="before")
    @classmethod
    def _lists_by_id_or_name(cls, data: Any) -> Any:
        """``[stores.<key>.lists]`` holds ids and names: the names go to ``list_names``."""
        if not isinstance(data, dict) or not isinstance(data.get("lists"), dict):
            return data
        ids, names = {}, dict(data.get("list_names") or {})
        for list_key, value in data["lists"].items():
            if isinstance(value, str):
                if not value.strip() or len(value) > 128:
                    raise InvalidKey(("lists", list_key), "a Dotdigital list name has 1-128 characters")
                names[list_key] = value
            elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidKey(("lists", list_key), "must be a positive Dotdigital list id or a list name")
            else:
                ids[list_key] = value
        return {**data, "lists": ids, "list_names": names}

    @field_validator("preferences", mode="before")
    @classmethod
    def _preference_ids(cls, value: Any) -> Any:
        for pref_key, pref_id in (value.items() if isinstance(value, dict) else ()):
            if isinstance(pref_id, bool) or not isinstance(pref_id, int) or pref_id <= 0:
                raise InvalidKey((pref_key,), "must be a positive Dotdigital preference id")
        return value

    @field_validator("data_fields")
    @classmethod
    def _data_field_names(cls, value: dict[str, str]) -> dict[str, str]:
        merged = {**DEFAULT_DATA_FIELDS, **value}
        for attr, name in merged.items():
            if not is_valid_data_field_name(name):
                raise InvalidKey((attr,), f"{name!r} is not a valid Dotdigital data-field name (at most 20 "
                                          "characters of A-Z, a-z, 0-9, '_' and '-')")
        return merged

    @model_validator(mode="after")
    def _roles_name_lists(self) -> Self:
        for role in ("email_list", "sms_list", "customers_list"):
            list_key = getattr(self, role)
            if list_key is not None and list_key not in self.lists and list_key not in self.list_names:
                raise InvalidKey((role,), f"{list_key!r} is not a key of stores.{self.key}.lists")
        return self

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("product_url_template", "cart_url_template")
    @classmethod
    def _http_template(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL template")
        return value

    @field_validator("programs", mode="before")
    @classmethod
    def _known_kinds(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for kind, program in value.items():
                if kind not in PROGRAM_KINDS:
                    raise InvalidKey((kind,), f"unknown program kind; one of {', '.join(PROGRAM_KINDS)}")
                if isinstance(program, dict):
                    program.setdefault("kind", kind)
        return value

    @model_validator(mode="after")
    def _trigger_lists_exist(self) -> Self:
        for kind, program in self.programs.items():
            if program.trigger_list and program.trigger_list not in self.lists and program.trigger_list not in self.list_names:
                raise InvalidKey(("programs", kind, "trigger_list"),
                                 f"{program.trigger_list!r} is not a key of stores.{self.key}.lists")
        return self

    @model_validator(mode="after")
    def _writeback_keys_exist(self) -> Self:
        import difflib

        def hint(key: str, known) -> str:
            close = difflib.get_close_matches(key, list(known), n=1)
            return f"; did you mean {close[0]!r}?" if close else (
                f"; known: {', '.join(sorted(known))}" if known else "")

        lists = self.configured_lists()
        for pref_key in self.writeback.preferences:
            if pref_key not in self.preferences:
                raise InvalidKey(("writeback", "preferences", pref_key),
                                 f"{pref_key!r} is not a key of stores.{self.key}.preferences"
                                 + hint(pref_key, self.preferences))
        for list_key in self.writeback.lists:
            if list_key not in lists:
                raise InvalidKey(("writeback", "lists", list_key),
                                 f"{list_key!r} is not a key of stores.{self.key}.lists" + hint(list_key, lists))
            role = next((r for r in ("email_list", "sms_list", "customers_list") if getattr(self, r) == list_key), None)
            if role is not None:
                raise InvalidKey(("writeback", "lists", list_key),
                                 f"{list_key!r} is the store's {role}, which follows the consent fields (a Dotdigital "
                                 "opt-out already reaches them); map another list")
        consent = {self.consent.email_opt_in_field, self.consent.sms_opt_in_field, self.consent.updated_at_field}
        for table in ("preferences", "lists"):
            for key, name in getattr(self.writeback, table).items():
                if name in consent:
                    raise InvalidKey(("writeback", table, key),
                                     f"{name!r} is a consent field of stores.{self.key}.consent; use a field of its own")
        return self

    def configured_lists(self) -> dict[str, int | str]:
        """``[stores.<key>.lists]`` as configured: ids, and names where a list was given by name."""
        return {**self.lists, **self.list_names}


class DispatcherConfig(Section):
    """``[dispatcher]``: how the outbox dispatcher delivers and retries."""

    concurrency: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    max_attempts: int = Field(20, ge=1)
    backoff_base_seconds: float = Field(1.0, gt=0)
    backoff_cap_seconds: float = Field(600.0, gt=0)
    lease_seconds: float = Field(120.0, gt=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    #: under load, outcomes of single deliveries are recorded at most this often (one transaction for all)
    settle_interval_seconds: float = Field(0.02, ge=0)
    #: how often a dispatcher extends the leases it holds (None: a third of lease_seconds)
    heartbeat_seconds: float | None = Field(None, gt=0)
    #: PostgreSQL: LISTEN for the NOTIFY of every enqueue, so idle dispatchers wake at once
    listen_notify: bool = True
    #: use the bulk import endpoints when the backlog is large
    batching: bool = True
    #: due messages in the outbox from which the dispatcher switches to bulk imports
    bulk_backlog_threshold: int = Field(200, ge=0)
    #: smallest group (one account, one kind) worth an import; smaller groups go one by one
    bulk_min_batch: int = Field(20, ge=1)
    bulk_max_batch: int = Field(2000, ge=1)
    bulk_max_bytes: int = Field(20_000_000, ge=1)
    #: imports one dispatcher runs at once (Dotdigital allows 25 contact / 5 insight imports per account)
    bulk_max_active_imports: int = Field(2, ge=1)
    bulk_poll_min_seconds: float = Field(1.0, gt=0)
    bulk_poll_max_seconds: float = Field(30.0, gt=0)
    bulk_import_timeout_seconds: float = Field(900.0, gt=0)
    #: merge pending contact upserts of one contact: when claiming for an import, always, or never
    coalesce: Literal["bulk", "always", "never"] = "bulk"
    #: a product view's insight message is due this long after it was enqueued, so the views of one contact
    #: within it go out in one call (ctdd.delivery.view_merge); the contact's later messages wait behind it at
    #: most this long. 0: no hold (views queued behind one in flight are still merged, see merge_queued_views)
    view_coalesce_seconds: float = Field(5.0, ge=0)
    #: with view_coalesce_seconds = 0: the views already queued behind a claimed view of the contact are still
    #: merged into it (no wait; under load a contact's backlog of views becomes one call). False: one call per view
    merge_queued_views: bool = True
    #: pace calls from the X-RateLimit-* headers before the limit is reached
    rate_pacing: bool = True
    #: pacing starts when less than this fraction of the account's limit remains
    rate_burst_fraction: float = Field(0.5, ge=0, le=1)
    #: calls kept in reserve: at or below it, wait for the rate-limit window to reset
    rate_reserve: int = Field(2, ge=0)
    #: an account that answered 401/403 is paused; its first probe (GET /v2/account-info) comes this long after,
    #: then the wait doubles up to auth_probe_max_seconds (ctdd.delivery.account_guard)
    auth_probe_initial_seconds: float = Field(5.0, gt=0)
    auth_probe_max_seconds: float = Field(300.0, gt=0)
    #: while an account has parked messages (max_attempts of retryable failures) and delivers nothing, its
    #: oldest parked message is tried again this often; any delivery of the account resumes them all at once
    park_retry_minutes: float = Field(30.0, gt=0)
    #: a message parked this many times while its account delivers other messages (each such delivery resumes
    #: it) goes to ``dead`` instead: its failure is its own, not the account's (ctdd.delivery.account_guard)
    max_parks: int = Field(3, ge=1)


class BacksyncConfig(Section):
    """``[backsync]``: polling Dotdigital's opt-outs back into commercetools (``ctdd.backsync.feeds``)."""

    #: None: on when any store has a commercetools API client (see ``Settings.backsync_enabled``)
    enabled: bool | None = None
    interval_seconds: float = Field(900.0, gt=0)
    #: each poll asks the feeds from the stored cursor minus this, so late or clock-skewed entries are seen
    overlap_seconds: float = Field(300.0, ge=0)
    #: how far back the very first poll of an account looks
    initial_lookback_seconds: float = Field(30 * 86400.0, ge=0)
    #: a poll leases its account for this long, renewed while it runs
    lease_seconds: float = Field(300.0, gt=0)
    #: read Dotdigital's Events API export subscription (``ctdd.backsync.events_feed``) where the account has one
    #: (``ctdd dotdigital setup`` creates it); the polling above then only reconciles
    events_feed: bool = True
    #: how often the events feed reads an account (each read also keeps the subscription active)
    events_interval_seconds: float = Field(15.0, gt=0)
    #: events asked for per read (Dotdigital: at most 5000)
    events_page_size: int = Field(2000, ge=1, le=5000)
    #: with a working events feed, the polling feeds run this often for an account, as a reconciliation
    reconcile_interval_seconds: float = Field(21600.0, gt=0)


class InboxConfig(Section):
    """``[inbox]``: the processor of events queued with PROCESSING_QUEUED (``ctdd.ingest.inbox``)."""

    #: queued events claimed and applied together (one transaction: set-based, or one savepoint per event)
    batch_size: int = Field(512, ge=1)
    #: PostgreSQL: inbox processors per process, each claiming its own share of the contacts (one on SQLite)
    lanes: int = Field(2, ge=1, le=16)
    #: a claim is held this long; a processor that died mid-batch leaves its events to the others after it
    lease_seconds: float = Field(60.0, gt=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    #: retryable failures (commercetools unreachable ...) before an event is marked failed and logged
    max_attempts: int = Field(20, ge=1)
    backoff_base_seconds: float = Field(1.0, gt=0)
    backoff_cap_seconds: float = Field(600.0, gt=0)
    #: ingest side: under load, inbox writes commit at most this often (0: at once)
    write_interval_seconds: float = Field(0.01, ge=0)
    #: finished rows (done, rejected, failed) are deleted this long after they finished
    retention_days: float = Field(7.0, gt=0)


class ProgramsConfig(Section):
    """``[programs]``: how due program triggers are decided and sent (``ctdd.programs``)."""

    #: Dotdigital allows 20 enrolment calls an hour per account, across all programs
    enrolment_calls_per_hour: int = Field(20, ge=1, le=20)
    #: contacts per enrolment call (Dotdigital: at most 25)
    enrolment_batch_size: int = Field(25, ge=1, le=25)
    #: a due trigger waits at most this long for its batch to fill before a partial batch is sent
    batch_wait_seconds: float = Field(300.0, ge=0)
    poll_interval_seconds: float = Field(5.0, gt=0)
    #: a claim is held this long; triggers of a processor that died are decided by another after it
    lease_seconds: float = Field(60.0, gt=0)
    #: triggers claimed and decided together
    batch_size: int = Field(500, ge=1)
    #: a trigger whose contact is not in Dotdigital yet waits for its upsert, re-checked this often
    contact_wait_seconds: float = Field(30.0, gt=0)
    #: decided triggers are kept this long (what ``ctdd triggers list`` shows), then deleted
    retention_days: float = Field(30.0, gt=0)



class PluginConfig(Section):
    """``[plugins.<name>]``: where an installed plugin (its entry-point name) applies (``ctdd.hooks.manager``)."""

    name: str = derived()
    #: the store keys whose records the plugin's hooks see; a plugin without this table applies to every store
    stores: tuple[str, ...] = Field(min_length=1)
