"""Configuration: a TOML file plus ``CTDD_*`` environment variables.

Precedence (highest first): command-line flags, ``CTDD_*`` environment variables, the TOML file
(``--config`` or ``CTDD_CONFIG``), built-in defaults.

Environment variables:

- ``CTDD_CONFIG``: path of the TOML file.
- ``CTDD_LISTEN``: gRPC listen address, ``HOST:PORT`` (default ``127.0.0.1:50051``).
- ``CTDD_DATABASE_URL``: SQLAlchemy URL (default ``sqlite:///ctdd.db``).
- ``CTDD_DOTDIGITAL_BASE_URL``: overrides the Dotdigital base URL of every account.
- ``CTDD_ACCOUNT_<NAME>_API_USER`` / ``CTDD_ACCOUNT_<NAME>_PASSWORD``: credentials of account ``<name>``
  (upper-cased, ``-`` written as ``_``).
- ``CTDD_COMMERCETOOLS_<NAME>_CLIENT_ID`` / ``_CLIENT_SECRET`` / ``_API_URL`` / ``_AUTH_URL``: the API client of
  ``[commercetools.<name>]``.
- ``CTDD_LOG_LEVEL``: logging level (default ``INFO``).
- ``CTDD_GROUP_COMMIT``: ``0`` commits every RPC in its own transaction (default: group commit).

Secrets: a password is read from ``password_env`` (the name of an environment variable),
``password_file`` (a file whose first line is the password) or the ``CTDD_ACCOUNT_<NAME>_PASSWORD``
variable; a literal ``password`` in the TOML file is refused so secrets do not end up in version control.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///ctdd.db"

#: Default mapping of profile attributes to Dotdigital data fields (Magento 2 connector names).
DEFAULT_DATA_FIELDS: dict[str, str] = {
    "customer_id": "CUSTOMER_ID",
    "first_name": "FIRSTNAME",
    "last_name": "LASTNAME",
    "middle_name": "MIDDLENAME",
    "title": "TITLE",
    "date_of_birth": "DOB",
    "company_name": "COMPANY",
    "customer_group": "CUSTOMER_GROUP",
    "locale": "LOCALE",
    "currency": "CURRENCY",
    "store": "STORE",
    "billing_address.city": "BILLING_CITY",
    "billing_address.country": "BILLING_COUNTRY",
    "billing_address.postal_code": "BILLING_POSTCODE",
    "shipping_address.city": "DELIVERY_CITY",
    "shipping_address.country": "DELIVERY_COUNTRY",
    "shipping_address.postal_code": "DELIVERY_POSTCODE",
    # contact aggregates recomputed from the contact's orders (ctdd.domain.commerce.order_aggregates)
    "orders.last_order_date": "LAST_ORDER_DATE",
    "orders.last_order_id": "LAST_ORDER_ID",
    "orders.number_of_orders": "NUMBER_OF_ORDERS",
    "orders.total_spend": "TOTAL_SPEND",
    "orders.average_order_value": "AVERAGE_ORDER_VALUE",
    "orders.total_refund": "TOTAL_REFUND",
    "orders.first_category": "FIRST_CATEGORY_PUR",
    "orders.last_category": "LAST_CATEGORY_PUR",
    "orders.most_category": "MOST_PUR_CATEGORY",
    "orders.last_order_store": "LAST_ORDER_STORE",
    "orders.last_order_locale": "LAST_ORDER_LOCALE",
    "orders.last_order_currency": "LAST_ORDER_CCY",
}

#: Dotdigital data-field types of the default fields (anything else is a String)
DATA_FIELD_TYPES: dict[str, str] = {
    "DOB": "Date",
    "LAST_ORDER_DATE": "Date",
    "NUMBER_OF_ORDERS": "Numeric",
    "TOTAL_SPEND": "Numeric",
    "AVERAGE_ORDER_VALUE": "Numeric",
    "TOTAL_REFUND": "Numeric",
}


def data_field_type(name: str) -> str:
    return DATA_FIELD_TYPES.get(name, "String")

_DATA_FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,20}$")


class ConfigError(ValueError):
    """The configuration is unusable; the message says what to fix."""


@dataclass(frozen=True)
class AccountConfig:
    """One Dotdigital account (API user)."""

    name: str
    api_user: str
    password: str = field(repr=False)
    region: str = "r1"
    base_url: str | None = None
    discover_endpoint: bool = True
    timeout_seconds: float = 121.0


@dataclass(frozen=True)
class CommercetoolsConfig:
    """One commercetools project's API client credentials (``[commercetools.<name>]``)."""

    name: str
    project_key: str
    client_id: str
    client_secret: str = field(repr=False)
    region: str = "europe-west1.gcp"
    api_url: str | None = None
    auth_url: str | None = None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsentFieldsConfig:
    """Names of the commercetools custom fields (and the CustomObject container) holding consent."""

    email_opt_in_field: str = "dd-emailOptIn"
    sms_opt_in_field: str = "dd-smsOptIn"
    updated_at_field: str = "dd-consentUpdatedAt"
    guest_container: str = "dd-consent"


@dataclass(frozen=True)
class StoreConfig:
    """One commercetools store and how it maps onto a Dotdigital account."""

    key: str
    account: str
    commercetools_project: str = "default"
    locale: str | None = None
    currency: str | None = None
    #: profile attribute path -> Dotdigital data-field name
    data_fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_DATA_FIELDS))
    #: list key -> Dotdigital address book id. Lists configured by NAME (see ``list_names``) are added here
    #: once resolved, at service start (``ctdd.dotdigital.provisioning.resolve_list_names``)
    lists: Mapping[str, int] = field(default_factory=dict)
    #: list key -> Dotdigital address book name, for lists configured by name (``lists.newsletter = "Newsletter"``)
    list_names: Mapping[str, str] = field(default_factory=dict)
    #: name of the [commercetools.<name>] section used to fetch resources of this store (None: none configured)
    commercetools: str | None = None
    #: what a CustomerDeleted message does: "keep", "remove_from_lists" or "delete_contact"
    on_customer_deleted: str = "remove_from_lists"
    #: list keys (in ``lists``) with a role: joined on email opt-in / left on opt-out; the same for SMS;
    #: joined by every registered customer (not a marketing list)
    email_list: str | None = None
    sms_list: str | None = None
    customers_list: str | None = None
    #: preference key -> Dotdigital preference id
    preferences: Mapping[str, int] = field(default_factory=dict)
    #: how a contact who opted out in Dotdigital is resubscribed after a newer shop opt-in:
    #: "challenge" (Dotdigital sends a confirmation email) or "no_challenge"
    resubscribe: str = "challenge"
    #: where consent lives in commercetools (customer custom fields; CustomObjects for guests)
    consent: "ConsentFieldsConfig" = field(default_factory=lambda: ConsentFieldsConfig())


@dataclass(frozen=True)
class DispatcherConfig:
    """How the outbox dispatcher delivers and retries."""

    concurrency: int = 8
    batch_size: int = 32
    max_attempts: int = 20
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 600.0
    lease_seconds: float = 120.0
    poll_interval_seconds: float = 1.0
    #: under load, outcomes of single deliveries are recorded at most this often (one transaction for all)
    settle_interval_seconds: float = 0.02
    # -- scale-out (see README "Many processes, one database") --
    #: how often a dispatcher extends the leases it holds (default: a third of lease_seconds)
    heartbeat_seconds: float | None = None
    #: PostgreSQL: LISTEN for the NOTIFY of every enqueue, so idle dispatchers wake at once
    listen_notify: bool = True
    # -- adaptive batching (README "Adaptive batching") --
    #: use the bulk import endpoints when the backlog is large
    batching: bool = True
    #: due messages in the outbox from which the dispatcher switches to bulk imports
    bulk_backlog_threshold: int = 200
    #: smallest group (one account, one kind) worth an import; smaller groups go one by one
    bulk_min_batch: int = 20
    bulk_max_batch: int = 2000
    bulk_max_bytes: int = 20_000_000
    #: imports one dispatcher runs at once (Dotdigital allows 25 contact / 5 insight imports per account)
    bulk_max_active_imports: int = 2
    bulk_poll_min_seconds: float = 1.0
    bulk_poll_max_seconds: float = 30.0
    bulk_import_timeout_seconds: float = 900.0
    #: merge pending contact upserts of one contact: "bulk" (when claiming for an import), "always", "never"
    coalesce: str = "bulk"
    # -- rate limits (README "Rate limits") --
    #: pace calls from the X-RateLimit-* headers before the limit is reached
    rate_pacing: bool = True
    #: pacing starts when less than this fraction of the account's limit remains
    rate_burst_fraction: float = 0.5
    #: calls kept in reserve: at or below it, wait for the rate-limit window to reset
    rate_reserve: int = 2

    def __post_init__(self) -> None:
        if self.coalesce not in ("bulk", "always", "never"):
            raise ConfigError(f"dispatcher.coalesce: must be bulk, always or never, not {self.coalesce!r}")


@dataclass(frozen=True)
class BacksyncConfig:
    """``[backsync]``: polling Dotdigital's opt-outs back into commercetools (``ctdd.backsync.feeds``)."""

    #: None: on when any store has a commercetools API client (see ``Settings.backsync_enabled``)
    enabled: bool | None = None
    interval_seconds: float = 900.0
    #: each poll asks the feeds from the stored cursor minus this, so late or clock-skewed entries are seen
    overlap_seconds: float = 300.0
    #: how far back the very first poll of an account looks
    initial_lookback_seconds: float = 30 * 86400.0
    #: a poll leases its account for this long, renewed while it runs (processes sharing a database take
    #: turns; after a crash the account waits this long)
    lease_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise ConfigError("backsync.enabled: must be true or false")
        for name in ("interval_seconds", "lease_seconds"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"backsync.{name}: must be > 0")
        for name in ("overlap_seconds", "initial_lookback_seconds"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"backsync.{name}: must be >= 0")


@dataclass(frozen=True)
class InboxConfig:
    """``[inbox]``: the processor of events queued with PROCESSING_QUEUED (``ctdd.ingest.inbox``)."""

    #: queued events claimed and applied together (one transaction, one savepoint per event)
    batch_size: int = 64
    #: a claim is held this long; a processor that died mid-batch leaves its events to the others after it
    lease_seconds: float = 60.0
    poll_interval_seconds: float = 1.0
    #: retryable failures (commercetools unreachable ...) before an event is marked failed and logged
    max_attempts: int = 20
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 600.0
    #: ingest side: under load, inbox writes commit at most this often, so one commit (one fsync) carries the
    #: events of that long (or less: it commits once no event has arrived for a millisecond); a write that
    #: follows no other recent one commits at once
    write_interval_seconds: float = 0.01
    #: finished rows (done, rejected, failed) are deleted this long after they finished; a redelivery after
    #: that is still recognised by the dedupe record of its effects (``processed_event``)
    retention_days: float = 7.0

    def __post_init__(self) -> None:
        if float(self.write_interval_seconds) < 0:
            raise ConfigError("inbox.write_interval_seconds: must be >= 0")
        if not float(self.retention_days) > 0:
            raise ConfigError("inbox.retention_days: must be > 0")
        for name in ("batch_size", "max_attempts"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"inbox.{name}: must be >= 1")
        for name in ("lease_seconds", "poll_interval_seconds", "backoff_base_seconds", "backoff_cap_seconds"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"inbox.{name}: must be > 0")


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to run."""

    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    log_level: str = "INFO"
    max_request_bytes: int = 256 * 1024
    accounts: Mapping[str, AccountConfig] = field(default_factory=dict)
    commercetools: Mapping[str, CommercetoolsConfig] = field(default_factory=dict)
    stores: Mapping[str, StoreConfig] = field(default_factory=dict)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    backsync: BacksyncConfig = field(default_factory=BacksyncConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    #: commit concurrent RPCs in shared transactions (ctdd.db.group_commit); CTDD_GROUP_COMMIT=0 turns it off
    group_commit: bool = True
    group_commit_max_batch: int = 256

    def store(self, key: str) -> StoreConfig | None:
        return self.stores.get(key)

    @property
    def backsync_enabled(self) -> bool:
        """``[backsync] enabled``, by default on when any store has a commercetools API client."""
        if self.backsync.enabled is not None:
            return self.backsync.enabled
        return any(store.commercetools for store in self.stores.values())


def _env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _read_secret(section: str, name: str, raw: Mapping[str, Any], env: Mapping[str, str], *, secret: str,
                 env_var: str) -> str | None:
    """Read secret ``secret`` of ``[section.name]`` from ``env_var``, ``<secret>_env`` or ``<secret>_file``."""
    if secret in raw:
        raise ConfigError(
            f"{section}.{name}: a literal '{secret}' is not allowed in the config file; "
            f"use {secret}_env, {secret}_file or {env_var}"
        )
    if (var := env.get(env_var)) is not None:
        return var
    if (env_name := raw.get(f"{secret}_env")) is not None:
        if env_name not in env:
            raise ConfigError(f"{section}.{name}.{secret}_env: environment variable {env_name} is not set")
        return env[env_name]
    if (path := raw.get(f"{secret}_file")) is not None:
        try:
            return Path(path).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"{section}.{name}.{secret}_file: cannot read {path}: {exc}") from None
    return None


def _read_password(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    return _read_secret("accounts", name, raw, env, secret="password",
                        env_var=f"CTDD_ACCOUNT_{_env_key(name)}_PASSWORD")


def _parse_commercetools(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> CommercetoolsConfig:
    prefix = f"CTDD_COMMERCETOOLS_{_env_key(name)}"
    client_id = env.get(f"{prefix}_CLIENT_ID", raw.get("client_id"))
    secret = _read_secret("commercetools", name, raw, env, secret="client_secret", env_var=f"{prefix}_CLIENT_SECRET")
    project_key = raw.get("project_key", name)
    if not client_id or secret is None:
        raise ConfigError(
            f"commercetools.{name}: API client credentials missing; set client_id and one of client_secret_env / "
            f"client_secret_file (or {prefix}_CLIENT_ID / {prefix}_CLIENT_SECRET)"
        )
    return CommercetoolsConfig(
        name=name,
        project_key=str(project_key),
        client_id=str(client_id),
        client_secret=secret,
        region=str(raw.get("region", "europe-west1.gcp")),
        api_url=(env.get(f"{prefix}_API_URL") or raw.get("api_url") or None),
        auth_url=(env.get(f"{prefix}_AUTH_URL") or raw.get("auth_url") or None),
        scopes=tuple(raw.get("scopes", ())),
    )


def _parse_account(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> AccountConfig:
    api_user = env.get(f"CTDD_ACCOUNT_{_env_key(name)}_API_USER", raw.get("api_user"))
    password = _read_password(name, raw, env)
    if not api_user or password is None:
        raise ConfigError(
            f"accounts.{name}: Dotdigital credentials missing; set api_user and one of password_env / "
            f"password_file (or CTDD_ACCOUNT_{_env_key(name)}_API_USER / _PASSWORD), or run with --sandbox"
        )
    region = raw.get("region", "r1")
    if region not in ("r1", "r2", "r3"):
        raise ConfigError(f"accounts.{name}.region: must be r1, r2 or r3, not {region!r}")
    base_url = env.get("CTDD_DOTDIGITAL_BASE_URL") or raw.get("base_url")
    return AccountConfig(
        name=name,
        api_user=str(api_user),
        password=password,
        region=region,
        base_url=base_url.rstrip("/") if base_url else None,
        discover_endpoint=bool(raw.get("discover_endpoint", True)),
        timeout_seconds=float(raw.get("timeout_seconds", 121.0)),
    )


def _parse_store(key: str, raw: Mapping[str, Any], accounts: Mapping[str, AccountConfig],
                 commercetools: Mapping[str, CommercetoolsConfig] | None = None) -> StoreConfig:
    account = raw.get("account")
    if account is None and len(accounts) == 1:
        account = next(iter(accounts))
    if account not in accounts:
        raise ConfigError(f"stores.{key}.account: unknown account {account!r} (known: {sorted(accounts)})")
    data_fields = dict(DEFAULT_DATA_FIELDS)
    data_fields.update({str(k): str(v) for k, v in raw.get("data_fields", {}).items()})
    for attr, dd_name in data_fields.items():
        if not _DATA_FIELD_NAME.match(dd_name):
            raise ConfigError(
                f"stores.{key}.data_fields.{attr}: {dd_name!r} is not a valid Dotdigital data-field name "
                "(at most 20 characters of A-Z, a-z, 0-9, '_' and '-')"
            )
    lists: dict[str, int] = {}
    list_names: dict[str, str] = {}
    for list_key, list_id in raw.get("lists", {}).items():
        if isinstance(list_id, str):
            if not list_id.strip() or len(list_id) > 128:
                raise ConfigError(f"stores.{key}.lists.{list_key}: a Dotdigital list name has 1-128 characters")
            list_names[str(list_key)] = list_id
            continue
        if isinstance(list_id, bool) or not isinstance(list_id, int) or list_id <= 0:
            raise ConfigError(
                f"stores.{key}.lists.{list_key}: must be a positive Dotdigital list id or a list name")
        lists[str(list_key)] = list_id
    commercetools = commercetools or {}
    ct_name = raw.get("commercetools")
    if ct_name is None and len(commercetools) == 1:
        ct_name = next(iter(commercetools))
    if ct_name is not None and ct_name not in commercetools:
        raise ConfigError(f"stores.{key}.commercetools: unknown commercetools section {ct_name!r}")
    on_deleted = raw.get("on_customer_deleted", "remove_from_lists")
    if on_deleted not in ("keep", "remove_from_lists", "delete_contact"):
        raise ConfigError(f"stores.{key}.on_customer_deleted: must be keep, remove_from_lists or delete_contact")
    project = raw.get("commercetools_project") or (commercetools[ct_name].project_key if ct_name else "default")
    roles = {}
    for role in ("email_list", "sms_list", "customers_list"):
        list_key = raw.get(role)
        if list_key is not None and list_key not in lists and list_key not in list_names:
            raise ConfigError(f"stores.{key}.{role}: {list_key!r} is not a key of stores.{key}.lists")
        roles[role] = list_key
    preferences: dict[str, int] = {}
    for pref_key, pref_id in raw.get("preferences", {}).items():
        if not isinstance(pref_id, int) or pref_id <= 0:
            raise ConfigError(f"stores.{key}.preferences.{pref_key}: must be a positive Dotdigital preference id")
        preferences[str(pref_key)] = pref_id
    resubscribe = raw.get("resubscribe", "challenge")
    if resubscribe not in ("challenge", "no_challenge"):
        raise ConfigError(f"stores.{key}.resubscribe: must be challenge or no_challenge")
    consent_raw = raw.get("consent", {})
    unknown = set(consent_raw) - set(ConsentFieldsConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"stores.{key}.consent: unknown settings {sorted(unknown)}")
    return StoreConfig(
        key=key,
        account=str(account),
        commercetools_project=str(project),
        commercetools=ct_name,
        on_customer_deleted=on_deleted,
        preferences=preferences,
        resubscribe=resubscribe,
        consent=ConsentFieldsConfig(**consent_raw),
        **roles,
        locale=raw.get("locale"),
        currency=raw.get("currency"),
        data_fields=data_fields,
        lists=lists,
        list_names=list_names,
    )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from ``path`` (or ``CTDD_CONFIG``), the environment and ``overrides``."""
    env = os.environ if env is None else env
    path = path or env.get("CTDD_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return settings_from_mapping(raw, env=env, overrides=overrides)


def settings_from_mapping(
    raw: Mapping[str, Any], *, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build settings from an already parsed TOML document."""
    env = os.environ if env is None else env
    overrides = overrides or {}
    svc = raw.get("service", {})
    accounts = {name: _parse_account(name, a, env) for name, a in raw.get("accounts", {}).items()}
    commercetools = {name: _parse_commercetools(name, c, env) for name, c in raw.get("commercetools", {}).items()}
    stores = {key: _parse_store(key, s, accounts, commercetools) for key, s in raw.get("stores", {}).items()}
    d = raw.get("dispatcher", {})
    known = DispatcherConfig.__dataclass_fields__
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"dispatcher: unknown settings {sorted(unknown)}")
    dispatcher = DispatcherConfig(**d)
    b = raw.get("backsync", {})
    unknown = set(b) - set(BacksyncConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"backsync: unknown settings {sorted(unknown)}")
    backsync = BacksyncConfig(**b)
    i = raw.get("inbox", {})
    unknown = set(i) - set(InboxConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"inbox: unknown settings {sorted(unknown)}")
    inbox = InboxConfig(**i)
    return Settings(
        listen=overrides.get("listen") or env.get("CTDD_LISTEN") or svc.get("listen", DEFAULT_LISTEN),
        database_url=overrides.get("database_url")
        or env.get("CTDD_DATABASE_URL")
        or svc.get("database_url", DEFAULT_DATABASE_URL),
        log_level=env.get("CTDD_LOG_LEVEL") or svc.get("log_level", "INFO"),
        max_request_bytes=int(svc.get("max_request_bytes", 256 * 1024)),
        group_commit=str(env.get("CTDD_GROUP_COMMIT", svc.get("group_commit", True))).lower() not in ("0", "false", "no", "off"),
        group_commit_max_batch=int(svc.get("group_commit_max_batch", 256)),
        accounts=accounts,
        commercetools=commercetools,
        stores=stores,
        dispatcher=dispatcher,
        backsync=backsync,
        inbox=inbox,
    )
