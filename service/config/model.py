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
    #: larger SyncContact requests get INVALID_ARGUMENT
    max_request_bytes: int = Field(256 * 1024, ge=1, le=MAX_MESSAGE_BYTES)
    #: commit concurrent RPCs in shared transactions (ctdd.db.group_commit); ``CTDD_GROUP_COMMIT=0`` turns it off
    group_commit: bool = True
    group_commit_max_batch: int = Field(256, ge=1)

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if value.startswith("unix:"):
            return value
        host, colon, port = value.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"must be HOST:PORT (port 0-65535) or unix:PATH, got {value!r}")
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
    #: pace calls from the X-RateLimit-* headers before the limit is reached
    rate_pacing: bool = True
    #: pacing starts when less than this fraction of the account's limit remains
    rate_burst_fraction: float = Field(0.5, ge=0, le=1)
    #: calls kept in reserve: at or below it, wait for the rate-limit window to reset
    rate_reserve: int = Field(2, ge=0)


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


class InboxConfig(Section):
    """``[inbox]``: the processor of events queued with PROCESSING_QUEUED (``ctdd.ingest.inbox``)."""

    #: queued events claimed and applied together (one transaction, one savepoint per event)
    batch_size: int = Field(64, ge=1)
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
