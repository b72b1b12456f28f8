"""docs/configuration.md documents every key of the configuration model: each table has its heading, each key
is named in that table's section, and each environment variable the loader reads is listed."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from ctdd.config import Settings
from ctdd.config.sources import ENV_PREFIX, SECTION_VARIABLES, SERVICE_VARIABLES, TABLE_VARIABLES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def table_keys(model: type[BaseModel], table: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(table, key) of every key of ``model``: ``("stores.<key>.consent", "guest_container")`` ... A table of
    named tables (``dict[str, Model]``) is written with its name field as placeholder (``accounts.<name>``);
    fields the loader fills in itself (excluded from dumps) are not keys of the file."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if typing.get_origin(annotation) is dict and _is_model(inner := typing.get_args(annotation)[1]):
            placeholder = next(f"<{n}>" for n, f in inner.model_fields.items() if f.exclude)
            yield from table_keys(inner, table + (name, placeholder))
        elif _is_model(annotation):
            if table:
                yield ".".join(table), name  # a sub-table is also a key of its table
            yield from table_keys(annotation, table + (name,))
        else:
            yield ".".join(table), name


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def doc_sections() -> dict[str, str]:
    """Table name -> the text of its section: from a heading naming ``[table]`` to the next heading."""
    sections: dict[str, str] = {}
    current = None
    for line in DOCS.read_text().splitlines():
        if line.startswith("#"):
            match = re.search(r"`\[([^\]]+)\]`", line)
            current = match.group(1) if match else None
            if current:
                sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    return sections


def test_the_walk_covers_nested_tables():
    keys = set(table_keys(Settings))
    assert ("service", "log_level") in keys and ("dispatcher", "concurrency") in keys
    assert ("accounts.<name>", "password_env") in keys and ("commercetools.<name>", "scopes") in keys
    assert ("stores.<key>", "consent") in keys and ("stores.<key>.consent", "guest_container") in keys
    assert not any(key in ("name", "key", "list_names") for _, key in keys)  # filled in by the loader


def test_every_key_is_documented():
    sections = doc_sections()
    missing = [f"[{table}] {key}" for table, key in table_keys(Settings)
               if f"`{key}`" not in sections.get(table, "")]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_every_environment_variable_is_documented():
    docs = DOCS.read_text()
    variables = [ENV_PREFIX + "CONFIG", *(ENV_PREFIX + key.upper() for key in SERVICE_VARIABLES),
                 *SECTION_VARIABLES.values(),
                 *(f"{ENV_PREFIX}{word}_<NAME>_{keys[0].upper()}" for word, keys in TABLE_VARIABLES.values())]
    missing = [variable for variable in variables if variable not in docs]
    assert not missing, f"docs/configuration.md does not list: {', '.join(missing)}"
