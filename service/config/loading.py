"""Loading the settings: the TOML file, the environment and the command-line flags, merged and validated.

Every problem is a :class:`~ctdd.config.errors.ConfigError` whose message is one line naming the key and
where its value came from; the command line prints it and exits with status 2.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from pydantic import ValidationError

from ctdd.config.errors import from_validation_error
from ctdd.config.settings import Settings
from ctdd.config.sources import CONFIG_VARIABLE, loading, make_plan, read_toml


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from the TOML file ``path`` (or ``CTDD_CONFIG``), the environment ``env`` (default
    ``os.environ``) and ``overrides`` (the command-line flags: ``{"listen": ..., "database_url": ...,
    "log_level": ...}``, None for a flag not given)."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_VARIABLE) or None
    document = read_toml(path) if path else {}
    return settings_from_mapping(document, env=env, overrides=overrides, source=path)


def settings_from_mapping(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build settings from an already parsed TOML document (read from the file ``source``, named in errors)."""
    env = os.environ if env is None else env
    origin = os.fspath(source) if source is not None else None
    plan = make_plan(Settings, raw, env, overrides, origin)
    with loading(plan):
        try:
            return Settings(**plan.flags.values)
        except ValidationError as exc:
            raise from_validation_error(exc, Settings, plan.origin_of) from None
