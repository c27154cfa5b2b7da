"""Summaries of the JSON Schema that pydantic writes for a job kind's parameters, for the command line."""

from __future__ import annotations

import json
from typing import Any

Schema = dict[str, Any]


def resolve_ref(schema: Schema, root: Schema) -> Schema:
    """Follow a local ``$ref`` such as ``#/$defs/Algorithm``, which pydantic writes for enums and models."""
    reference = schema.get("$ref")
    if not isinstance(reference, str) or not reference.startswith("#/"):
        return schema
    target: Any = root
    for part in reference[2:].split("/"):
        target = target.get(part, {}) if isinstance(target, dict) else {}
    return target if isinstance(target, dict) else {}


def accepted_types(schema: Schema, root: Schema) -> set[str]:
    """Return the JSON types a schema accepts, or an empty set when it does not restrict them."""
    schema = resolve_ref(schema, root)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        found = [accepted_types(option, root) for option in options]
        return set().union(*found) if all(found) else set()
    if "enum" in schema and "type" not in schema:
        return {_json_type(value) for value in schema["enum"]}
    kind = schema.get("type")
    if isinstance(kind, list):
        return set(kind)
    return {kind} if isinstance(kind, str) else set()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "object"


def describe_type(schema: Schema, root: Schema) -> str:
    """Summarise a schema: ``list of sha256|md5``, ``integer 0 to 100``, ``string or null``."""
    schema = resolve_ref(schema, root)
    if "enum" in schema:
        return "|".join(str(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(describe_type(option, root) for option in options)
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    text = str(kind)
    if kind == "array":
        text = "list of " + describe_type(schema.get("items", {}), root)
    bounds = _bounds(schema)
    if not bounds:
        return text
    return f"{text}, {bounds}" if kind == "array" else f"{text} {bounds}"


def _bounds(schema: Schema) -> str:
    """Describe numeric bounds and lengths: ``0 to 100``, ``> 0``, ``up to 40 characters``."""
    parts = []
    if "minimum" in schema and "maximum" in schema:
        parts.append(f"{schema['minimum']} to {schema['maximum']}")
    else:
        for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                            ("exclusiveMaximum", "<")):
            if key in schema:
                parts.append(f"{symbol} {schema[key]}")
    for low, high, unit in (("minLength", "maxLength", "character"), ("minItems", "maxItems", "item")):
        if low in schema or high in schema:
            parts.append(_length(schema.get(low, 0), schema.get(high), unit))
    return ", ".join(parts)


def _length(low: int, high: int | None, unit: str) -> str:
    plural = "" if (high if high is not None else low) == 1 else "s"
    if high is None:
        return f"at least {low} {unit}{plural}"
    if low == high:
        return f"of exactly {high} {unit}{plural}"
    return f"up to {high} {unit}{plural}" if low == 0 else f"{low} to {high} {unit}{plural}"
