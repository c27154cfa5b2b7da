"""The ``offload`` command: ``offload serve`` starts the server, ``offload kinds`` lists job kinds."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .config import SettingsError, add_arguments, settings_from


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_arguments(parser)
    return parser


def serve_command(argv: list[str] | None = None) -> int:
    """Parse server flags and serve until a shutdown signal; return the exit status."""
    parser = _serve_parser(argparse.ArgumentParser(
        prog="python -m app.main", description="Serve the Offload HTTP and websocket API."))
    return _serve(parser.parse_args(argv), parser)


def _serve(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .server import run_server

    try:
        settings = settings_from(vars(arguments))
    except SettingsError as error:
        parser.error(str(error))
    return run_server(settings)


def _kinds(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .validation import param_caps
    from .workers.registry import KindError, discover_kinds

    try:
        settings = settings_from(vars(arguments))
    except SettingsError as error:
        parser.error(str(error))
    try:
        kinds = discover_kinds(settings.extra_kinds)
    except KindError as error:
        print(f"offload kinds: {error}", file=sys.stderr)
        return 1
    if arguments.json:
        print(json.dumps([kind.describe(param_caps(kind, settings)) for kind in kinds.values()], indent=2))
        return 0
    for kind in kinds.values():
        print(f"{kind.name}: {kind.description}")
        for name, schema in kind.params.model_json_schema().get("properties", {}).items():
            default = f", default {json.dumps(schema['default'])}" if "default" in schema else ""
            print(f"    {name} ({_describe_type(schema)}{default}): {schema.get('description', '')}")
    return 0


def _describe_type(schema: dict[str, object]) -> str:
    """Summarise a JSON Schema property: ``list of sha256|md5``, ``integer 0 to 100``, ``string or null``."""
    if "enum" in schema:
        return "|".join(str(value) for value in schema["enum"])  # type: ignore[attr-defined]
    if "anyOf" in schema:
        return " or ".join(_describe_type(option) for option in schema["anyOf"])  # type: ignore[attr-defined]
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return "list of " + _describe_type(schema.get("items", {}))  # type: ignore[arg-type]
    if "minimum" in schema and "maximum" in schema:
        return f"{kind} {schema['minimum']} to {schema['maximum']}"
    return kind


def main(argv: list[str] | None = None) -> int:
    # ``python -m`` puts the working directory on sys.path and console scripts do not; spawned
    # workers inherit sys.path, so this makes --extra-kinds modules importable the same way.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog="offload", description="Offload: CPU-heavy jobs on uploaded files.")
    parser.add_argument("--version", action="version", version=f"offload {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _serve_parser(commands.add_parser("serve", help="start the server"))
    serve.set_defaults(handler=_serve, parser=serve)

    kinds = commands.add_parser("kinds", help="list job kinds and their parameters")
    kinds.add_argument("--json", action="store_true", help="print the kinds as JSON")
    kinds.add_argument("--extra-kinds", dest="extra_kinds", default=None,
                       help="comma-separated importable modules that define more job kinds")
    kinds.set_defaults(handler=_kinds, parser=kinds)

    arguments = parser.parse_args(argv)
    return arguments.handler(arguments, arguments.parser)


if __name__ == "__main__":
    sys.exit(main())
