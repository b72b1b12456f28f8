"""Configuration errors as one line: the dotted key, what is wrong with it, and where the value came from.

    dispatcher.concurrency: must be >= 1, got 0 (in /etc/ctdd.toml)
    dispacher: unknown section; did you mean [dispatcher]? (in /etc/ctdd.toml)
    service.log_level: must be one of DEBUG, ..., got 'LOUD' (from environment variable CTDD_LOG_LEVEL)

Values that may be secret (passwords, client secrets, database URLs, anything under a misspelt key) are
never echoed.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any, Callable, Iterable, Sequence

from pydantic import BaseModel, SecretStr, ValidationError

Path = tuple[str | int, ...]

#: keys whose values are never repeated in an error message
SENSITIVE_KEYS = frozenset({"password", "client_secret", "database_url"})
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(ValueError):
    """The configuration is unusable; the message says what to fix, naming the key and where it came from.

    ``key`` is the dotted key the message is about (None when it is about no single key) and ``origin``
    where its value came from (``in FILE``, ``from environment variable X``, ``from flag --x``)."""

    def __init__(self, message: str, *, key: str | None = None, origin: str | None = None):
        super().__init__(message)
        self.key = key
        self.origin = origin


class InvalidKey(ValueError):
    """Raised by a validator to point below the model it validates: ``key`` is the path, relative to that
    model, of the value that is wrong (``()`` for the model itself)."""

    def __init__(self, key: Sequence[str | int] | str, message: str):
        super().__init__(message)
        self.key: Path = (key,) if isinstance(key, str) else tuple(key)


def dotted(path: Iterable[str | int]) -> str:
    """``("stores", "uk", "data_fields", "custom.x")`` -> ``stores.uk.data_fields."custom.x"`` (TOML key
    syntax: segments that are not bare keys are quoted; list positions are written ``[i]``)."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
            continue
        part = segment if _BARE_KEY.match(segment) else '"' + segment.replace('"', '\\"') + '"'
        text += ("." if text else "") + part
    return text


def error_at(path: Sequence[str | int], message: str, origin: str | None = None, *,
             more: Sequence[Path] = ()) -> ConfigError:
    """The ConfigError for ``message`` about ``path``: ``key: message (origin)``, plus the keys of ``more``
    problems when there are several."""
    key = dotted(path)
    text = f"{key}: {message}" if key else message
    if origin:
        text += f" ({origin})"
    if more:
        shown = ", ".join(dotted(p) or "(top level)" for p in more[:3])
        text += f" (and {len(more)} more: {shown}{', ...' if len(more) > 3 else ''})"
    return ConfigError(text, key=key or None, origin=origin)


def from_validation_error(exc: ValidationError, root: type[BaseModel],
                          origin_of: Callable[[Path], str | None] = lambda path: None) -> ConfigError:
    """One ConfigError for a pydantic ValidationError of ``root``: the first problem in full, the others by
    key. ``origin_of(path)`` says where the value at ``path`` came from."""
    problems: list[tuple[Path, str]] = []
    errors = exc.errors(include_url=False)
    # a misspelt key explains the missing one, so unknown keys come first
    for err in sorted(errors, key=lambda err: err["type"] != "extra_forbidden"):
        path, message = _describe(err, root)
        if all(p != path for p, _ in problems):
            problems.append((path, message))
    path, message = problems[0]
    return error_at(path, message, origin_of(path), more=[p for p, _ in problems[1:]])


def _describe(err: dict[str, Any], root: type[BaseModel]) -> tuple[Path, str]:
    """(path, message) of one pydantic error."""
    path: Path = tuple(seg for seg in err["loc"] if seg != "[key]")
    kind, value = err["type"], err.get("input")
    ctx = {key: f"{item:g}" if isinstance(item, float) else item for key, item in (err.get("ctx") or {}).items()}
    if kind == "extra_forbidden":
        return path, unknown_key_message(root, path, is_table=isinstance(value, dict))
    if kind in ("value_error", "assertion_error") and isinstance(ctx.get("error"), InvalidKey):
        return path + ctx["error"].key, str(ctx["error"])
    if kind in ("value_error", "assertion_error"):
        return path, str(ctx.get("error") or err["msg"])
    if kind == "missing":
        return path, "required, but not set"
    message = _MESSAGES.get(kind)
    message = message.format(**ctx) if message else re.sub(r"^Input should be", "must be", err["msg"])
    if not isinstance(value, (dict, list, tuple)) and not _is_sensitive(path):
        message += f", got {value!r}"
    return path, message


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "literal_error": "must be {expected}",
}


def _is_sensitive(path: Path) -> bool:
    return any(isinstance(seg, str) and (seg in SENSITIVE_KEYS or seg.endswith("_secret")) for seg in path)


def unknown_key_message(root: type[BaseModel], path: Path, *, is_table: bool) -> str:
    """``unknown key; did you mean 'concurrency'?`` for a key of ``path`` that the model does not have."""
    what = "unknown section" if is_table and len(path) == 1 else "unknown key"
    model = model_at(root, path[:-1])
    if model is None or not path or not isinstance(path[-1], str):
        return what
    names = [name for name, field in model.model_fields.items()  # secrets are not file keys: not suggested
             if not field.exclude and field.annotation is not SecretStr]
    close = difflib.get_close_matches(path[-1], names, n=1, cutoff=0.6)
    if not close:
        return what
    suggestion = f"[{dotted(path[:-1] + (close[0],))}]" if what == "unknown section" else repr(close[0])
    return f"{what}; did you mean {suggestion}?"


def model_at(root: type[BaseModel], path: Path) -> type[BaseModel] | None:
    """The model class of the table at ``path`` (table names of ``dict[str, Model]`` fields are skipped)."""
    model, i = root, 0
    while i < len(path):
        field = model.model_fields.get(path[i]) if isinstance(path[i], str) else None
        if field is None:
            return None
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
            i += 1  # the table name
        i += 1
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
