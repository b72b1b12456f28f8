"""Configuration: a TOML file plus ``CTDD_*`` environment variables plus command-line flags, validated.

Precedence (highest first): command-line flags, ``CTDD_*`` environment variables, the TOML file
(``--config`` or ``CTDD_CONFIG``), built-in defaults. docs/configuration.md lists every key;
ctdd.example.toml at the repository root shows them all with their defaults.

- :mod:`ctdd.config.model`: the tables as pydantic models;
- :mod:`ctdd.config.settings`: ``Settings``, their root, a pydantic-settings model, and the rules across tables;
- :mod:`ctdd.config.sources`: the flags, the environment variables and the file, as layers;
- :mod:`ctdd.config.loading`: :func:`load_settings` and :func:`settings_from_mapping`;
- :mod:`ctdd.config.errors`: :class:`ConfigError`, whose message is one line naming the key and its origin;
- :mod:`ctdd.config.renames`: renamed keys and flags, still accepted with a warning;
- :mod:`ctdd.config.render`: the effective settings as text, secrets masked (``ctdd config check``);
- :mod:`ctdd.config.defaults`: the default data-field mapping and types.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ctdd.config.defaults import (
    DATA_FIELD_TYPES,
    DEFAULT_DATA_FIELDS,
    DEFAULT_DATABASE_URL,
    DEFAULT_LISTEN,
    data_field_type,
)
from ctdd.config.errors import ConfigError
from ctdd.config.loading import load_settings, settings_from_mapping
from ctdd.config.model import (
    AccountConfig,
    BacksyncConfig,
    CommercetoolsConfig,
    ConsentFieldsConfig,
    DispatcherConfig,
    CartWatcherConfig,
    InboxConfig,
    PROGRAM_KINDS,
    PluginConfig,
    ProgramConfig,
    ProgramsConfig,
    ServiceConfig,
    StoreConfig,
    WritebackConfig,
)
from ctdd.config.renames import RENAMED_FLAGS, RENAMED_KEYS, translate_renamed_flags
from ctdd.config.settings import Settings

_Model = TypeVar("_Model", bound=Any)


def replace(model: _Model, /, **changes: Any) -> _Model:
    """A validated copy of a settings object with ``changes``, like ``dataclasses.replace``."""
    return model.replace(**changes)


__all__ = [
    "AccountConfig",
    "BacksyncConfig",
    "CommercetoolsConfig",
    "ConfigError",
    "ConsentFieldsConfig",
    "DATA_FIELD_TYPES",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_DATA_FIELDS",
    "DEFAULT_LISTEN",
    "DispatcherConfig",
    "CartWatcherConfig",
    "InboxConfig",
    "PROGRAM_KINDS",
    "PluginConfig",
    "ProgramConfig",
    "ProgramsConfig",
    "RENAMED_FLAGS",
    "RENAMED_KEYS",
    "ServiceConfig",
    "Settings",
    "StoreConfig",
    "WritebackConfig",
    "data_field_type",
    "load_settings",
    "replace",
    "settings_from_mapping",
    "translate_renamed_flags",
]
