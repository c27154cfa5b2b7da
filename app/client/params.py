"""``--param NAME=VALUE`` options of ``offload run``, turned into a job's ``params`` object.

A value is parsed as JSON when it parses (``3``, ``true``, ``null``, ``["md5", "sha1"]``) and taken
as a string otherwise. The kind's JSON Schema then fixes two common cases: a parameter that only
takes strings keeps the text as written, and a single value of a list parameter becomes a list of
one. Repeating a name collects its values into one list. The server validates the result.
"""

from __future__ import annotations

import json
from typing import Any

from ..json_schema import Schema, accepted_types


class ParamError(ValueError):
    """Raised when a ``--param`` option is not ``NAME=VALUE``."""


def parse_params(options: list[str], schema: Schema) -> dict[str, Any]:
    """Build a job's parameters from ``NAME=VALUE`` options and the kind's parameter schema."""
    properties: dict[str, Schema] = schema.get("properties", {})
    values: dict[str, list[Any]] = {}
    for option in options:
        name, separator, text = option.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ParamError(f"invalid --param {option!r}: use NAME=VALUE, for example --param top=10")
        values.setdefault(name, []).append(_parse_value(text, properties.get(name, {}), schema))

    params: dict[str, Any] = {}
    for name, items in values.items():
        if len(items) > 1:
            params[name] = [element for item in items for element in (item if isinstance(item, list) else [item])]
        elif accepted_types(properties.get(name, {}), schema) == {"array"} and not isinstance(items[0], list):
            params[name] = items
        else:
            params[name] = items[0]
    return params


def _parse_value(text: str, property_schema: Schema, root: Schema) -> Any:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text
    types = accepted_types(property_schema, root)
    if value is not None and not isinstance(value, str) and types and types <= {"string", "null"}:
        return text
    return value


def _reject_constant(name: str) -> Any:
    # NaN and Infinity parse in Python but are not JSON, so the server could not read them.
    raise ValueError(f"{name} is not JSON")
