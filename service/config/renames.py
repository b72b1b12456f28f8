"""Renamed keys and flags: an old spelling keeps working, with a warning naming the new one.

To rename a key, add ``"old.path": "new.path"`` to :data:`RENAMED_KEYS` (``*`` stands for any table name:
``"stores.*.old_key": "stores.*.new_key"``); to rename a flag, add ``"--old": "--new"`` to
:data:`RENAMED_FLAGS`. Keep an entry for at least one release, and say so in docs/configuration.md.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterator, Mapping, Sequence

from ctdd.config.errors import ConfigError, dotted

log = logging.getLogger("ctdd.config")

#: old dotted key -> new dotted key. No key has been renamed yet.
RENAMED_KEYS: dict[str, str] = {}
#: old command-line flag -> new flag. No flag has been renamed yet.
RENAMED_FLAGS: dict[str, str] = {}


def apply_renamed_keys(document: Mapping[str, Any], origin: str | None = None,
                       renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A copy of the TOML ``document`` with every old key moved to its new place, each logged once.

    Raises ConfigError when a key is given in both spellings."""
    renamed = RENAMED_KEYS if renamed is None else renamed
    document = copy.deepcopy(dict(document))
    for old_pattern, new_pattern in renamed.items():
        old_parts, new_parts = old_pattern.split("."), new_pattern.split(".")
        for old, names in list(_matches(document, old_parts)):
            names_left = iter(names)
            new = tuple(next(names_left) if part == "*" else part for part in new_parts)
            parent = _table(document, old[:-1])
            if _has(document, new):
                raise ConfigError(
                    f"{dotted(old)}: renamed to {dotted(new)}, which is set as well; remove {dotted(old)}"
                    + (f" ({origin})" if origin else ""), key=dotted(old), origin=origin)
            value = parent.pop(old[-1])
            target = document
            for part in new[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"{dotted(old)}: renamed to {dotted(new)}, but {part} is not a table",
                                      key=dotted(old), origin=origin)
            target[new[-1]] = value
            log.warning("%s%s is deprecated: it is now spelt %s", f"{origin}: " if origin else "", dotted(old),
                        dotted(new))
    return document


def translate_renamed_flags(argv: Sequence[str], renamed: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` with every old flag (``--old`` or ``--old=value``) replaced by its new spelling, each logged."""
    renamed = RENAMED_FLAGS if renamed is None else renamed
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in renamed:
            log.warning("flag %s is deprecated: it is now spelt %s", flag, renamed[flag])
            arg = renamed[flag] + eq + value
        out.append(arg)
    return out


def _matches(node: Any, parts: list[str], path: tuple[str, ...] = (),
             names: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(concrete path, names bound to ``*``) of every key of ``node`` matching the pattern ``parts``."""
    if not parts:
        yield path, names
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    for key in keys:
        yield from _matches(node[key], rest, path + (key,), names + ((key,) if head == "*" else ()))


def _table(document: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for part in path:
        document = document[part]
    return document


def _has(document: Any, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(document, dict) or part not in document:
            return False
        document = document[part]
    return True
