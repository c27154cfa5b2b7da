"""``offload run``: check the arguments, start a local server unless ``--server`` names one, run the
jobs, report them, and turn the outcome into the exit status."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

import httpx
from rich.console import Console

from .local_server import LocalServer, LocalServerError
from .models import (EXIT_CONNECTION, EXIT_INTERRUPTED, EXIT_JOBS_FAILED, EXIT_OK, EXIT_USAGE, ClientError, JobRun,
                     RunRequest, RunView)
from .run import execute, plan_runs
from .view import ProgressView, QuietView, json_document, print_json_document, print_results, summary


def run_command(arguments: argparse.Namespace) -> int:
    """Run ``offload run`` and return its exit status."""
    request = RunRequest(files=arguments.files, kind=arguments.kind, param_options=arguments.params,
                         output_dir=arguments.output_dir, single_job=arguments.single_job)
    runs = plan_runs(request)
    view: QuietView | ProgressView = QuietView() if arguments.json else ProgressView(Console(stderr=True))
    error: ClientError | None = None

    with contextlib.ExitStack() as cleanup:
        try:
            _check_arguments(arguments)
            with view:
                server_url = arguments.server or _start_local_server(cleanup, arguments.extra_kinds, view)
                asyncio.run(execute(server_url, request, runs, view, trust_env=arguments.server is not None))
        except ClientError as failure:
            error = failure
        except LocalServerError as failure:
            error = ClientError(str(failure), EXIT_CONNECTION)
        except httpx.TransportError as failure:
            error = ClientError(f"cannot reach the server at {arguments.server or 'the local server'}: "
                                f"{str(failure) or type(failure).__name__}", EXIT_CONNECTION)
        except KeyboardInterrupt:
            error = ClientError("interrupted; the jobs that were started are cancelled", EXIT_INTERRUPTED)
        # Results come before the local server stops, which takes a few seconds.
        return _report(arguments, runs, error)


def _check_arguments(arguments: argparse.Namespace) -> None:
    """Reject missing files, a bad URL or output directory before any server work starts."""
    for path in arguments.files:
        if not path.is_file():
            problem = "is not a file" if path.exists() else "not found"
            raise ClientError(f"input file {str(path)!r} {problem}", EXIT_USAGE)
        if not os.access(path, os.R_OK):
            raise ClientError(f"input file {str(path)!r} is not readable", EXIT_USAGE)
    if arguments.server is not None:
        if not arguments.server.startswith(("http://", "https://")):
            raise ClientError(f"invalid --server {arguments.server!r}: use a URL such as http://127.0.0.1:8000",
                              EXIT_USAGE)
        if arguments.extra_kinds:
            raise ClientError("--extra-kinds applies to the local server only; start your server with "
                              "--extra-kinds instead", EXIT_USAGE)
    output_dir: Path = arguments.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        raise ClientError(f"invalid --output-dir {str(output_dir)!r}: it is a file; name a directory", EXIT_USAGE)


def _start_local_server(cleanup: contextlib.ExitStack, extra_kinds: str | None, view: RunView) -> str:
    modules = tuple(name.strip() for name in (extra_kinds or "").split(",") if name.strip())
    view.status("starting a local server")
    server = cleanup.enter_context(LocalServer(modules))
    return server.url


def _report(arguments: argparse.Namespace, runs: list[JobRun], error: ClientError | None) -> int:
    if arguments.json:
        print_json_document(json_document(runs, arguments.kind, error))
    elif any(run.record is not None for run in runs):
        print_results(runs, Console(soft_wrap=True))

    if error is not None:
        print(f"offload run: {error.message}", file=sys.stderr)
        return error.exit_code
    if not arguments.json:
        print(summary(runs), file=sys.stderr)
    return EXIT_OK if all(run.state == "succeeded" for run in runs) else EXIT_JOBS_FAILED
