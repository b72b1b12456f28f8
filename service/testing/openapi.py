"""Dotdigital's published OpenAPI documents as a contract: request bodies checked against their schemas.

- :class:`SchemaValidator`: a small JSON Schema / OpenAPI validator for the subset Dotdigital's documents use,
  with the reading of ``allOf`` that OpenAPI generators (and Dotdigital's docs) intend. The contract tests of
  the Dotdigital client use it, and so does ``ctdd simulate --openapi``.
- :class:`OpenApiDocuments`: the documents of a folder (``*.json`` / ``*.yaml``; OpenAPI 3.x and Swagger 2),
  indexed by method and path template, answering "what is wrong with this body sent to ``METHOD path``?".

Not ``jsonschema``: OpenAPI 3.0 schemas are not JSON Schema (``nullable``, and the merged ``allOf`` reading
below, without which Dotdigital's own documents reject bodies they document), and the project does not need
the dependency for this subset.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["OpenApiDocuments", "Operation", "SchemaValidator", "Violation"]

_INTEGER_FORMATS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class SchemaValidator:
    """A minimal JSON Schema / OpenAPI 3.0-3.1 validator for the subset Dotdigital's specs use.

    Supports local ``$ref``, ``type`` (incl. 3.1 type lists and 3.0 ``nullable``), ``enum``, ``required``,
    ``properties``, ``additionalProperties`` (bool or schema), ``min/maxProperties``, ``items``,
    ``min/maxItems``, ``min/maxLength``, ``pattern`` (search semantics), ``minimum``/``maximum``, ``format``
    (date-time, uri, ipv4, ipv6), ``allOf``, ``oneOf`` and ``anyOf``.

    ``merge_allof=True`` validates an ``allOf`` as the *merged* object schema (union of properties,
    closed if any branch is closed) - how OpenAPI generators read composed request models. Plain JSON
    Schema semantics (``merge_allof=False``) check each branch on its own, under which a closed branch
    rejects properties declared by a sibling branch (see ``test_spec_quirk_...``).
    """

    _TYPES = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }

    def __init__(self, document: dict, *, merge_allof: bool = True) -> None:
        self.document = document
        self.merge_allof = merge_allof

    def errors(self, instance: Any, schema: dict | str) -> list[str]:
        found: list[str] = []
        self._check(instance, {"$ref": schema} if isinstance(schema, str) else schema, "$", found)
        return found

    def resolve(self, ref: str) -> dict:
        assert ref.startswith("#/"), f"only local refs are supported: {ref}"
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _deref(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.resolve(schema["$ref"])
        return schema

    def _merged(self, schema: dict) -> dict:
        branches = [self._deref(b) for b in schema["allOf"]]
        branches = [self._merged(b) if "allOf" in b else b for b in branches]
        own = {k: v for k, v in schema.items() if k != "allOf"}
        merged: dict[str, Any] = {}
        properties: dict[str, list[dict]] = {}
        required: set[str] = set()
        closed, extra = False, []
        for part in [own, *branches]:
            for name, sub in part.get("properties", {}).items():
                properties.setdefault(name, []).append(sub)
            required |= set(part.get("required", []))
            additional = part.get("additionalProperties")
            if additional is False:
                closed = True
            elif isinstance(additional, dict):
                extra.append(additional)
            for key, value in part.items():
                if key not in ("properties", "required", "additionalProperties", "description", "example"):
                    merged.setdefault(key, value)
        merged["properties"] = {n: s[0] if len(s) == 1 else {"allOf": s} for n, s in properties.items()}
        if required:
            merged["required"] = sorted(required)
        if closed:
            merged["additionalProperties"] = False
        elif extra:
            merged["additionalProperties"] = extra[0] if len(extra) == 1 else {"allOf": extra}
        return merged

    def _check(self, value: Any, schema: dict, where: str, errors: list[str]) -> None:
        schema = self._deref(schema)
        if "allOf" in schema:
            if self.merge_allof:
                schema = self._merged(schema)
            else:
                for branch in schema["allOf"]:
                    self._check(value, branch, where, errors)
        if value is None and schema.get("nullable"):
            return
        types = schema.get("type")
        if types is not None:
            allowed = types if isinstance(types, list) else [types]
            if not any(self._TYPES[t](value) for t in allowed):
                errors.append(f"{where}: expected {types}, got {type(value).__name__}")
                return
        if "enum" in schema and value not in schema["enum"]:
            errors.append(f"{where}: {value!r} not in {schema['enum']}")
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0):
                errors.append(f"{where}: shorter than {schema['minLength']}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errors.append(f"{where}: longer than {schema['maxLength']}")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errors.append(f"{where}: does not match {schema['pattern']}")
            fmt = schema.get("format")
            if fmt and not self._format_ok(fmt, value):
                errors.append(f"{where}: not a valid {fmt}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errors.append(f"{where}: below minimum {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                errors.append(f"{where}: above maximum {schema['maximum']}")
            bounds = _INTEGER_FORMATS.get(schema.get("format", ""))
            if bounds is not None and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
                errors.append(f"{where}: out of range for {schema['format']}")
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0):
                errors.append(f"{where}: fewer than {schema['minItems']} items")
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                errors.append(f"{where}: more than {schema['maxItems']} items")
            if "items" in schema:
                for index, item in enumerate(value):
                    self._check(item, schema["items"], f"{where}[{index}]", errors)
        if isinstance(value, dict):
            for name in schema.get("required", []):
                if name not in value:
                    errors.append(f"{where}: missing required {name!r}")
            if len(value) < schema.get("minProperties", 0) or len(value) > schema.get("maxProperties", len(value)):
                errors.append(f"{where}: wrong number of properties")
            properties = schema.get("properties", {})
            additional = schema.get("additionalProperties", True)
            for name, item in value.items():
                if name in properties:
                    self._check(item, properties[name], f"{where}.{name}", errors)
                elif additional is False:
                    errors.append(f"{where}: unexpected property {name!r}")
                elif isinstance(additional, dict):
                    self._check(item, additional, f"{where}.{name}", errors)
        for keyword, want in (("oneOf", 1), ("anyOf", None)):
            if keyword in schema:
                passing = sum(not self.errors(value, branch) for branch in schema[keyword])
                if (want is not None and passing != want) or (want is None and passing == 0):
                    errors.append(f"{where}: {passing} {keyword} branches match")

    @staticmethod
    def _format_ok(fmt: str, value: str) -> bool:
        if fmt == "date-time":
            return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", value))
        if fmt == "uri":
            parts = urlsplit(value)
            return bool(parts.scheme and parts.netloc)
        if fmt in ("ipv4", "ipv6"):
            try:
                return ip_address(value).version == int(fmt[-1])
            except ValueError:
                return False
        return True  # formats not used by these specs are not checked


# ---------------------------------------------------------------------------------------------------
# a folder of OpenAPI documents
# ---------------------------------------------------------------------------------------------------
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@dataclass(frozen=True)
class Operation:
    """One operation of one document: ``METHOD template`` and the schema of its JSON request body."""

    document: str  # the file name
    method: str  # upper case
    template: str  # "/contacts/v3/{identifier}/{value}"
    body_schema: dict | None
    validator: SchemaValidator
    literal_segments: int  # more literal segments = more specific ("/contacts/v3/import" over "{identifier}")

    def matches(self, segments: list[str]) -> bool:
        parts = self.template.strip("/").split("/")
        if len(parts) != len(segments):
            return False
        return all(p.startswith("{") or p.casefold() == s.casefold() for p, s in zip(parts, segments))


@dataclass(frozen=True)
class Violation:
    """A body that does not follow the schema: where (JSON path) and what, and the operation it was checked
    against."""

    method: str
    path: str
    document: str
    template: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.document}: {self.template}) {self.where}: {self.message}"

    def as_json(self) -> dict[str, str]:
        return {"method": self.method, "path": self.path, "document": self.document, "operation": self.template,
                "where": self.where, "message": self.message}


class OpenApiDocuments:
    """The OpenAPI 3.x and Swagger 2 documents of a folder, indexed by operation.

    A request is checked against every document that defines its operation (the most specific path template
    of each document): Dotdigital publishes some endpoints in more than one document (the v2 API as one file
    and per area), and a body must follow each.
    """

    def __init__(self, documents: dict[str, dict]) -> None:
        self.documents = documents
        self.operations: list[Operation] = []
        for name, document in sorted(documents.items()):
            self.operations.extend(_operations(name, document))

    @classmethod
    def from_directory(cls, directory: str | Path) -> OpenApiDocuments:
        """Every ``*.json``, ``*.yaml`` and ``*.yml`` document of ``directory`` that has ``paths`` (others, like
        a README, are skipped). ValueError when there is none, or a file does not parse."""
        folder = Path(directory)
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
        documents: dict[str, dict] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".json", ".yaml", ".yml") or not path.is_file():
                continue
            document = _load(path)
            if isinstance(document, dict) and isinstance(document.get("paths"), dict):
                documents[path.name] = document
        if not documents:
            raise ValueError(f"no OpenAPI document (*.json, *.yaml with paths) in {folder}")
        return cls(documents)

    def find(self, method: str, path: str) -> list[Operation]:
        """The operations ``METHOD path`` matches: per document, the one with the most literal segments."""
        segments = [unquote(s) for s in urlsplit(path).path.strip("/").split("/")]
        best: dict[str, Operation] = {}
        for op in self.operations:
            if op.method == method.upper() and op.matches(segments):
                known = best.get(op.document)
                if known is None or op.literal_segments > known.literal_segments:
                    best[op.document] = op
        return list(best.values())

    def check(self, method: str, path: str, body: Any) -> tuple[list[Violation], bool]:
        """The violations of ``body`` sent as ``METHOD path``, and whether any document knows the operation."""
        found = self.find(method, path)
        violations: list[Violation] = []
        for op in found:
            if op.body_schema is None:
                continue
            for error in op.validator.errors(body, op.body_schema):
                where, _, message = error.partition(": ")
                violations.append(Violation(method.upper(), urlsplit(path).path, op.document, op.template, where,
                                            message))
        return violations, bool(found)


def _load(path: Path) -> Any:
    text = path.read_text("utf-8")
    try:
        return json.loads(text)  # Dotdigital's ".yaml" files are single-line JSON
    except json.JSONDecodeError:
        if path.suffix.lower() == ".json":
            raise ValueError(f"{path.name}: not valid JSON") from None
    try:
        import yaml  # PyYAML, only for documents that really are YAML
    except ImportError:
        raise ValueError(f"{path.name} is YAML: install PyYAML to read it") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name}: not valid YAML ({exc})") from None


def _operations(name: str, document: dict) -> Iterable[Operation]:
    validator = SchemaValidator(document)
    swagger2 = str(document.get("swagger", "")).startswith("2")
    prefix = (document.get("basePath") or "").rstrip("/") if swagger2 else ""
    for template, item in document["paths"].items():
        if not isinstance(item, dict):
            continue
        if "$ref" in item:
            item = validator.resolve(item["$ref"])
        shared_parameters = item.get("parameters", [])
        full = prefix + template
        literal = sum(1 for part in full.strip("/").split("/") if not part.startswith("{"))
        for method in _METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            schema = (_swagger2_body(validator, [*shared_parameters, *op.get("parameters", [])]) if swagger2
                      else _openapi3_body(validator, op.get("requestBody")))
            yield Operation(name, method.upper(), full, schema, validator, literal)


def _openapi3_body(validator: SchemaValidator, request_body: Any) -> dict | None:
    if not isinstance(request_body, dict):
        return None
    if "$ref" in request_body:
        request_body = validator.resolve(request_body["$ref"])
    content = request_body.get("content") or {}
    for media, entry in content.items():
        if "json" in media.lower() and isinstance(entry, dict) and isinstance(entry.get("schema"), dict):
            return _json_document(validator, entry["schema"])
    return None


def _json_document(validator: SchemaValidator, schema: dict) -> dict:
    """Dotdigital's insight-data documents describe a record body (a JSON object of any shape) as ``type:
    string`` (``format: json``, or an example that is a serialized object): the body is that JSON text, not a
    JSON string literal. Such a schema accepts any JSON document."""
    resolved = validator._deref(schema)
    if resolved.get("type") != "string":
        return schema
    if resolved.get("format") == "json":
        return {}
    example = resolved.get("example")
    if isinstance(example, str):
        try:
            return {} if isinstance(json.loads(example), (dict, list)) else schema
        except json.JSONDecodeError:
            return schema
    return schema


def _swagger2_body(validator: SchemaValidator, parameters: list) -> dict | None:
    for parameter in parameters:
        if isinstance(parameter, dict) and "$ref" in parameter:
            parameter = validator.resolve(parameter["$ref"])
        if isinstance(parameter, dict) and parameter.get("in") == "body" and isinstance(parameter.get("schema"), dict):
            return parameter["schema"]
    return None
