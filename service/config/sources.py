"""Where settings come from: command-line flags, ``CTDD_*`` environment variables and the TOML file.

Each source is turned into a *layer*: values nested like the TOML document, and for error messages where
each value came from. pydantic-settings merges the layers, flags over environment over file over the
model's defaults: the flags through its init source, the other two through the sources below, which
:meth:`ctdd.config.settings.Settings.settings_customise_sources` installs for the load in progress.

Environment variables (all optional; an empty value counts as unset):

- ``CTDD_CONFIG``: path of the TOML file;
- ``CTDD_LISTEN``, ``CTDD_DATABASE_URL``, ``CTDD_LOG_LEVEL``, ``CTDD_GROUP_COMMIT``: ``[service]`` keys;
- ``CTDD_DOTDIGITAL_BASE_URL``: ``base_url`` of every ``[accounts.<name>]``;
- ``CTDD_ACCOUNT_<NAME>_API_USER`` / ``_PASSWORD``: credentials of ``[accounts.<name>]``;
- ``CTDD_COMMERCETOOLS_<NAME>_CLIENT_ID`` / ``_CLIENT_SECRET`` / ``_API_URL`` / ``_AUTH_URL``: the API client of
  ``[commercetools.<name>]``.

``<NAME>`` is the table name upper-cased, every character other than ``A-Z0-9`` written as ``_``.

Secrets never sit in the file: a literal ``password`` / ``client_secret`` is refused. The file names them
instead, with ``password_env`` (an environment variable) or ``password_file`` (a file whose first line is
the secret); the ``CTDD_..._PASSWORD`` variable wins over both.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import tomllib
import typing
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from ctdd.config.errors import ConfigError, Path as KeyPath, dotted, error_at
from ctdd.config.renames import apply_renamed_keys

ENV_PREFIX = "CTDD_"
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
#: ``[service]`` keys read from ``CTDD_<KEY>``
SERVICE_VARIABLES = ("listen", "database_url", "log_level", "log_format", "group_commit", "set_based_apply")
#: ``[<section>.<name>]`` keys read from ``CTDD_<WORD>_<NAME>_<KEY>``
TABLE_VARIABLES = {
    "accounts": ("ACCOUNT", ("api_user", "password")),
    "commercetools": ("COMMERCETOOLS", ("client_id", "client_secret", "api_url", "auth_url")),
}
#: one variable setting a key of every table of a section
SECTION_VARIABLES = {("accounts", "base_url"): ENV_PREFIX + "DOTDIGITAL_BASE_URL"}
#: the secret of the tables of a section: never a literal in the file
SECRETS = {"accounts": "password", "commercetools": "client_secret"}
#: command-line flags of the keys overridden from the command line
FLAGS = {"listen": "--listen", "database_url": "--database-url", "log_level": "--log-level", "insecure": "--insecure"}


def env_key(name: str) -> str:
    """The ``<NAME>`` of a table in variable names: ``uk-fashion`` -> ``UK_FASHION``."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def table_variable(section: str, name: str, key: str) -> str:
    """``CTDD_ACCOUNT_MAIN_PASSWORD`` for (``accounts``, ``main``, ``password``)."""
    word, _ = TABLE_VARIABLES[section]
    return f"{ENV_PREFIX}{word}_{env_key(name)}_{key.upper()}"


@dataclass
class Layer:
    """Values from one source, nested like the TOML document, and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    #: leaf path -> origin (``from environment variable CTDD_LISTEN``)
    origins: dict[KeyPath, str] = field(default_factory=dict)
    #: origin of every value without its own (``in /etc/ctdd.toml``)
    default_origin: str | None = None

    def put(self, path: KeyPath, value: Any, origin: str) -> None:
        node = self.values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        self.origins[path] = origin

    def origin_of(self, path: KeyPath) -> str | None:
        """Where the value at ``path`` came from, when this layer has one there."""
        node: Any = self.values
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                return self.origins[path[:n]]
        return self.default_origin


@dataclass
class LoadPlan:
    """The layers of one load, highest precedence first."""

    flags: Layer
    env: Layer
    file: Layer

    def origin_of(self, path: KeyPath) -> str | None:
        """Where the value at ``path`` (or else the nearest table holding it) came from."""
        for n in range(len(path), 0, -1):
            for layer in (self.flags, self.env, self.file):
                if (origin := layer.origin_of(path[:n])) is not None:
                    return origin
        return self.file.default_origin


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML file at ``path``; unreadable or invalid files are a ConfigError naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}", origin=f"in {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", origin=f"in {path}") from None


def make_plan(settings_cls: type[BaseModel], document: Mapping[str, Any], env: Mapping[str, str],
              overrides: Mapping[str, Any] | None = None, origin: str | None = None) -> LoadPlan:
    """The layers for a load of ``document`` (from the file ``origin``), ``env`` and ``overrides``."""
    where = f"in {origin}" if origin else None
    document = apply_renamed_keys(document, origin)
    _refuse_derived_keys(settings_cls, document, where)
    env_values = env_layer(env, document)
    return LoadPlan(flags_layer(overrides or {}), env_values, file_layer(document, env, where))


def flags_layer(overrides: Mapping[str, Any]) -> Layer:
    """Command-line values: ``{"listen": ...}`` is ``[service] listen``, a dotted key is a full path.
    None means the flag was not given."""
    layer = Layer()
    for key, value in overrides.items():
        if value is None:
            continue
        path = tuple(key.split(".")) if "." in key else ("service", key)
        layer.put(path, value, f"from flag {FLAGS[key]}" if key in FLAGS else f"from {dotted(path)} override")
    return layer


def env_layer(env: Mapping[str, str], document: Mapping[str, Any]) -> Layer:
    """The ``CTDD_*`` variables, for the ``[service]`` keys and the tables the file defines."""
    layer = Layer()

    def read(path: KeyPath, variable: str) -> None:
        if value := env.get(variable):
            layer.put(path, value, f"from environment variable {variable}")

    for key in SERVICE_VARIABLES:
        read(("service", key), ENV_PREFIX + key.upper())
    for section, (_, keys) in TABLE_VARIABLES.items():
        for name in _table_names(document, section):
            for key in keys:
                read((section, name, key), table_variable(section, name, key))
    for (section, key), variable in SECTION_VARIABLES.items():
        for name in _table_names(document, section):
            read((section, name, key), variable)
    return layer


def file_layer(document: Mapping[str, Any], env: Mapping[str, str], where: str | None) -> Layer:
    """The TOML document with the secrets it points at (``password_env``, ``password_file`` ...) read."""
    values = copy.deepcopy(dict(document))
    for section, secret in SECRETS.items():
        for name in _table_names(values, section):
            table = values[section][name]
            if secret in table:
                raise error_at((section, name, secret),
                               f"a literal '{secret}' is not allowed in the config file; use {secret}_env, "
                               f"{secret}_file or {table_variable(section, name, secret)}", where)
            if not env.get(table_variable(section, name, secret)):
                value = _read_secret((section, name, secret), table, env, where)
                if value is not None:
                    table[secret] = value
    return Layer(values, default_origin=where)


def _read_secret(path: KeyPath, table: Mapping[str, Any], env: Mapping[str, str], where: str | None) -> str | None:
    """The secret that ``<secret>_env`` or ``<secret>_file`` of ``table`` points at (None: neither is set)."""
    secret = path[-1]
    if (variable := table.get(f"{secret}_env")) is not None:
        if not isinstance(variable, str) or variable not in env:
            raise error_at(path[:-1] + (f"{secret}_env",), f"environment variable {variable} is not set", where)
        return env[variable]
    if (file := table.get(f"{secret}_file")) is not None:
        try:
            return Path(file).read_text().splitlines()[0].strip()
        except (OSError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise error_at(path[:-1] + (f"{secret}_file",), f"cannot read {file}: {exc}", where) from None
    return None


def _refuse_derived_keys(settings_cls: type[BaseModel], document: Mapping[str, Any], where: str | None) -> None:
    """Keys the loader fills in itself (a table's own name, lists resolved by name) are not file keys."""
    for section, model in _table_models(settings_cls):
        derived = {name for name, info in model.model_fields.items() if info.exclude}
        for name in _table_names(document, section):
            for key in derived & set(document[section][name]):
                raise error_at((section, name, key), "unknown key", where)


def _table_models(settings_cls: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel]]]:
    """(section, model) of every ``dict[str, Model]`` section: ``("stores", StoreConfig)`` ..."""
    for section, info in settings_cls.model_fields.items():
        if typing.get_origin(info.annotation) is dict:
            model = typing.get_args(info.annotation)[1]
            if isinstance(model, type) and issubclass(model, BaseModel):
                yield section, model


def _table_names(document: Mapping[str, Any], section: str) -> list[str]:
    tables = document.get(section)
    if not isinstance(tables, dict):
        return []
    return [name for name, table in tables.items() if isinstance(table, dict)]


# -- the load in progress, and the pydantic-settings sources serving its layers -------------------------

_PLAN: ContextVar[LoadPlan | None] = ContextVar("ctdd_config_plan", default=None)


@contextlib.contextmanager
def loading(plan: LoadPlan) -> Iterator[LoadPlan]:
    """Make ``plan`` the one :meth:`Settings.settings_customise_sources` serves while the block runs."""
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def current_plan(settings_cls: type[BaseModel]) -> LoadPlan:
    """The plan of the load in progress; outside one (a bare ``Settings()``), the process environment and
    the file ``CTDD_CONFIG`` names."""
    plan = _PLAN.get()
    if plan is None:
        path = os.environ.get(CONFIG_VARIABLE)
        plan = make_plan(settings_cls, read_toml(path) if path else {}, os.environ, origin=path)
    return plan


class LayerSource(PydanticBaseSettingsSource):
    """A pydantic-settings source serving one prepared layer."""

    def __init__(self, settings_cls: type[Any], layer: Layer):
        super().__init__(settings_cls)
        self.layer = layer

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.layer.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self.layer.values)


class TomlFileSource(LayerSource):
    """The TOML file (``--config`` / ``CTDD_CONFIG``), renamed keys moved, the secrets it names read."""


class CtddEnvSource(LayerSource):
    """The ``CTDD_*`` environment variables listed in this module's docstring."""
