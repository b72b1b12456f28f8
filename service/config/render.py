"""The effective settings as text (``ctdd config check``): TOML or JSON, secrets masked as ``***``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, SecretStr

from ctdd.config.errors import dotted
from ctdd.config.model import StoreConfig
from ctdd.config.settings import Settings

MASK = "***"


def effective_values(settings: Settings) -> dict[str, Any]:
    """The settings as nested plain values shaped like the TOML file: secrets masked, the password of a
    database URL masked, keys the loader fills in left out, None for a key that is not set."""
    return _values(settings)


def render_json(settings: Settings) -> str:
    return json.dumps(effective_values(settings), indent=2)


def render_toml(settings: Settings) -> str:
    """TOML text of the settings; a key that is not set is shown as a comment."""
    lines: list[str] = []
    _table(lines, (), effective_values(settings))
    return "\n".join(lines).strip() + "\n"


def _values(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if info.exclude:
            continue
        out[name] = _value(getattr(model, name), name)
    if isinstance(model, StoreConfig):
        out["lists"] = model.configured_lists()
    return out


def _value(value: Any, name: str) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        return _values(value)
    if isinstance(value, dict):
        return {key: _value(item, key) for key, item in value.items()}
    if isinstance(value, tuple):
        return list(value)
    if name == "database_url" and isinstance(value, str):
        from sqlalchemy.engine import make_url

        return make_url(value).render_as_string(hide_password=True)
    return value


def _table(lines: list[str], path: tuple[str, ...], values: dict[str, Any]) -> None:
    tables = {key: value for key, value in values.items() if isinstance(value, dict)}
    if path and (len(tables) < len(values) or not values):  # a table holding only tables needs no header
        lines += ["", f"[{dotted(path)}]"]
    for key, value in values.items():
        if key in tables:
            continue
        if value is None:
            lines.append(f"# {dotted([key])} = (not set)")
        else:
            lines.append(f"{dotted([key])} = {_toml(value)}")
    for key, value in tables.items():
        _table(lines, path + (key,), value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
