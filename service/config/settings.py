"""The root of the configuration model: ``Settings``, a pydantic-settings model whose sources are the
command-line flags, the ``CTDD_*`` variables and the TOML file (:mod:`ctdd.config.sources`), and the rules
that span tables (a store names an account that exists ...)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ctdd.config.errors import InvalidKey
from ctdd.config.model import (
    AccountConfig,
    BacksyncConfig,
    CommercetoolsConfig,
    DispatcherConfig,
    InboxConfig,
    PluginConfig,
    ProgramsConfig,
    Replaceable,
    ServiceConfig,
    StoreConfig,
)
from ctdd.config.sources import ENV_PREFIX, CtddEnvSource, TomlFileSource, current_plan


class Settings(Replaceable, BaseSettings):
    """Everything the service needs to run: the TOML tables, with the ``[service]`` keys also readable as
    attributes of their own (``settings.listen``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    service: ServiceConfig = Field(default_factory=ServiceConfig)
    accounts: dict[str, AccountConfig] = Field(default_factory=dict)
    commercetools: dict[str, CommercetoolsConfig] = Field(default_factory=dict)
    stores: dict[str, StoreConfig] = Field(default_factory=dict)
    dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    backsync: BacksyncConfig = Field(default_factory=BacksyncConfig)
    inbox: InboxConfig = Field(default_factory=InboxConfig)
    programs: ProgramsConfig = Field(default_factory=ProgramsConfig)
    plugins: dict[str, PluginConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (the init arguments) over ``CTDD_*`` variables over the TOML file (no .env, no secrets dir)."""
        plan = current_plan(settings_cls)
        return init_settings, CtddEnvSource(settings_cls, plan.env), TomlFileSource(settings_cls, plan.file)

    @model_validator(mode="before")
    @classmethod
    def _fill_in_table_names(cls, data: Any) -> Any:
        """Give each table its own name, and stores the defaults that depend on other tables."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        accounts = _name_tables(data, "accounts", "name")
        clients = _name_tables(data, "commercetools", "name")
        _name_tables(data, "plugins", "name")
        for name, client in clients.items():
            if isinstance(client, dict):
                client.setdefault("project_key", name)
        for key, store in _name_tables(data, "stores", "key").items():
            if not isinstance(store, dict):
                continue
            if "account" not in store:
                if len(accounts) != 1:
                    raise InvalidKey(("stores", key, "account"), "required when there is not exactly one "
                                     f"[accounts.<name>] table (known: {sorted(accounts)})")
                store["account"] = next(iter(accounts))
            if "commercetools" not in store and len(clients) == 1:
                store["commercetools"] = next(iter(clients))
            if not store.get("commercetools_project"):
                client = clients.get(store.get("commercetools"))  # type: ignore[arg-type]
                project = client.get("project_key") if isinstance(client, dict) else getattr(client, "project_key", "")
                store["commercetools_project"] = project or "default"
        return data

    @model_validator(mode="after")
    def _stores_name_known_tables(self) -> Self:
        for key, store in self.stores.items():
            if store.account not in self.accounts:
                raise InvalidKey(("stores", key, "account"),
                                 f"unknown account {store.account!r} (known: {sorted(self.accounts)})")
            if store.commercetools is not None and store.commercetools not in self.commercetools:
                raise InvalidKey(("stores", key, "commercetools"), f"unknown commercetools section "
                                 f"{store.commercetools!r} (known: {sorted(self.commercetools)})")
        return self

    @model_validator(mode="after")
    def _plugins_name_known_stores(self) -> Self:
        for name, plugin in self.plugins.items():
            unknown = [key for key in plugin.stores if key not in self.stores]
            if unknown:
                raise InvalidKey(("plugins", name, "stores"),
                                 f"unknown store(s) {', '.join(map(repr, unknown))} (known: {sorted(self.stores)})")
        return self

    @model_validator(mode="after")
    def _retrigger_windows_within_retention(self) -> Self:
        """A decided trigger is deleted after [programs] retention_days: a longer retrigger window could not
        be honoured."""
        limit = self.programs.retention_days * 24
        for key, store in self.stores.items():
            for kind, program in store.programs.items():
                if program.retrigger_window_hours > limit:
                    raise InvalidKey(("stores", key, "programs", kind, "retrigger_window_hours"),
                                     f"must be <= programs.retention_days x 24 = {limit:g} (decided triggers "
                                     f"are deleted after retention_days), got {program.retrigger_window_hours:g}")
        return self

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes``; ``[service]`` keys may be given on their own (``listen=...``)."""
        service = {key: changes.pop(key) for key in list(changes) if key in ServiceConfig.model_fields}
        if service:
            changes["service"] = (changes.get("service") or self.service).replace(**service)
        return super().replace(**changes)

    def store(self, key: str) -> StoreConfig | None:
        return self.stores.get(key)

    @property
    def backsync_enabled(self) -> bool:
        """``[backsync] enabled``, by default on when any store has a commercetools API client."""
        if self.backsync.enabled is not None:
            return self.backsync.enabled
        return any(store.commercetools for store in self.stores.values())

    # the [service] keys, as attributes of the settings (as before they had a table of their own)
    @property
    def listen(self) -> str:
        return self.service.listen

    @property
    def database_url(self) -> str:
        return self.service.database_url

    @property
    def log_level(self) -> str:
        return self.service.log_level

    @property
    def max_request_bytes(self) -> int:
        return self.service.max_request_bytes

    @property
    def group_commit(self) -> bool:
        return self.service.group_commit

    @property
    def group_commit_max_batch(self) -> int:
        return self.service.group_commit_max_batch

    @property
    def set_based_apply(self) -> bool:
        return self.service.set_based_apply


def _name_tables(data: dict[str, Any], section: str, name_key: str) -> dict[str, Any]:
    """Replace the tables of ``section`` in ``data`` by copies carrying their own name under ``name_key``,
    and return them (tables given as model instances are left as they are)."""
    tables = data.get(section)
    if not isinstance(tables, dict):
        return {}
    tables = {name: {name_key: name, **table} if isinstance(table, dict) else table for name, table in tables.items()}
    data[section] = tables
    return tables
