"""The ``offload`` command: ``serve`` starts the server, ``run`` processes files, ``kinds`` lists job kinds."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import SettingsError, add_arguments, settings_from
from .json_schema import describe_type, resolve_ref


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
        _print_kind(kind.describe())
    return 0


def _print_kind(kind: dict[str, Any]) -> None:
    """Print a kind as ``offload kinds`` lists it: name, inputs and time limit, then one line per parameter."""
    from .workers.registry import describe_input_count

    inputs = describe_input_count(kind["inputs"]["min"], kind["inputs"]["max"])
    limit = f", time limit {kind['timeout_s']:g} s" if kind["timeout_s"] is not None else ""
    print(f"{kind['name']}: {kind['description']}")
    print(f"  takes {inputs}{limit}")
    schema = kind["params"]
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        default = "required" if name in required else f"default {json.dumps(prop.get('default'))}"
        description = prop.get("description") or resolve_ref(prop, schema).get("description", "")
        print(f"  --param {name}=... ({describe_type(prop, schema)}; {default})" +
              (f": {description}" if description else ""))


RUN_EPILOG = """\
exit status: 0 when every job succeeded, 1 when a job did not succeed, 2 for invalid arguments or
input that the server rejected, 3 when the server could not be reached, failed or did not start,
130 after Ctrl+C.
"""


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                        help="files to process; each gets its own job unless --single-job is given")
    parser.add_argument("--kind", required=True, help="job kind; offload kinds lists them")
    parser.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of the kind, repeatable; VALUE is parsed as JSON when it parses "
                             "(3, true, null, [\"md5\", \"sha1\"]), else taken as text; repeating NAME "
                             "makes a list")
    parser.add_argument("--server", metavar="URL",
                        help="URL of a running server, such as http://127.0.0.1:8000 [default: start a "
                             "local server for this command, with a temporary data directory]")
    parser.add_argument("--output-dir", type=Path, default=Path("."), metavar="DIR",
                        help="directory for the jobs' output files, created if missing; existing files are "
                             "kept and the new one gets a numbered name [default: current directory]")
    parser.add_argument("--single-job", action="store_true",
                        help="start one job with every FILE as its inputs, for kinds that take several")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with every job's outcome, and no progress bars")
    parser.add_argument("--extra-kinds", default=None, metavar="MODULES",
                        help="comma-separated importable modules that define more job kinds, for the local "
                             "server; not allowed with --server")
    return parser


def _run(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .client.command import run_command

    return run_command(arguments)


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

    run = _run_parser(commands.add_parser(
        "run", help="process files with a job kind and download the results", epilog=RUN_EPILOG,
        description="Upload FILEs, run a job on each, show live progress, print the results and save the "
                    "output files.", formatter_class=argparse.RawDescriptionHelpFormatter))
    run.set_defaults(handler=_run, parser=run)

    arguments = parser.parse_args(argv)
    return arguments.handler(arguments, arguments.parser)


if __name__ == "__main__":
    sys.exit(main())
