"""A small JSON Schema validator for the subset `manifest.schema.json` uses (its description lists
the keywords), so the runtime checks manifests with the very file the C++ host reads, without a
dependency: the `jsonschema` package pulls in four more (one of them a compiled Rust extension),
a lot for a lean runtime whose one schema is ~100 lines. The tests check that this validator and
`jsonschema` (Draft 2020-12) agree on every manifest the fuzz makes.

`first_error(schema, value)` returns None or one line: "field.path: what is wrong".
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

MANIFEST_SCHEMA = Path(__file__).with_name("manifest.schema.json")

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    # JSON has no NaN or infinity; a number that is one is not a number here
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}
_KNOWN = {
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "const",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "anyOf",
}


@cache
def manifest_schema() -> dict:
    """The parsed `manifest.schema.json` shipped beside this module."""
    return json.loads(MANIFEST_SCHEMA.read_text(encoding="utf-8"))


def first_error(schema: dict, value, root: dict | None = None, where: str = "") -> str | None:
    """The first way `value` breaks `schema`, as one line, or None when it is valid."""
    root = schema if root is None else root
    unknown = set(schema) - _KNOWN
    if unknown:  # a keyword this validator would silently skip: refuse to pretend
        raise ValueError(f"schema keyword(s) {sorted(unknown)} are not supported by restr.runtime.schema")
    at = where or "manifest"
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return first_error(node, value, root, where)
    if "type" in schema and not _TYPES[schema["type"]](value):
        return f"{at}: {_show(value)} is not {'an' if schema['type'][0] in 'aeiou' else 'a'} {schema['type']}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{at}: {_show(value)} must be {json.dumps(schema['const'])}"
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return f"{at}: {_show(value)} is not one of {', '.join(json.dumps(e) for e in schema['enum'])}"
    if "anyOf" in schema:
        errors = [first_error(s, value, root, where) for s in schema["anyOf"]]
        if all(errors):
            return min(errors, key=len)
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{at}: {_show(value)} is below the minimum {schema['minimum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return f"{at}: {_show(value)} must be above {schema['exclusiveMinimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{at}: {_show(value)} is above the maximum {schema['maximum']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{at}: {_show(value)} is too short"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{at}: {_show(value)} is not of the expected form ({schema.get('description') or schema['pattern']})"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return f"{at}: has {len(value)} items, needs at least {schema['minItems']}"
        if len(value) > schema.get("maxItems", len(value)):
            return f"{at}: has {len(value)} items, at most {schema['maxItems']} allowed"
        if "items" in schema:
            for i, item in enumerate(value):
                if err := first_error(schema["items"], item, root, f"{at}[{i}]"):
                    return err
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                return f"{at}: required field {key!r} is missing"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = props.get(key, extra)
            if sub is False:
                return f"{at}: unexpected field {key!r}"
            if isinstance(sub, dict) and (err := first_error(sub, item, root, f"{where}.{key}" if where else key)):
                return err
    return None


def _same(a, b) -> bool:
    # JSON equality: 1 == 1.0, but true is not 1
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _show(value) -> str:
    s = json.dumps(value, default=str)
    return s if len(s) <= 60 else s[:57] + "..."
