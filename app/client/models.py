"""Data of the ``offload run`` client: runs, sessions, errors with their exit statuses, and the view protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

Record = dict[str, Any]

EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted"})


class ClientError(Exception):
    """A failure that ends the command, with the exit status it should give."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class JobRun:
    """One job of the command: its input files, and its record once the server created it."""

    files: list[Path]
    job_id: str | None = None
    record: Record | None = None
    outputs: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(path.name for path in self.files) or "(no input)"

    @property
    def state(self) -> str:
        return self.record["state"] if self.record is not None else "not started"

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class RunRequest:
    """The files, kind, parameters and options of one ``offload run`` command."""

    files: list[Path]
    kind: str
    param_options: list[str]
    output_dir: Path
    single_job: bool = False


class RunView(Protocol):
    """The client's progress display: rich progress bars, or nothing for ``--json``."""

    def status(self, message: str) -> None: ...

    def upload_started(self, name: str, size: int) -> int: ...

    def upload_advanced(self, handle: int, count: int) -> None: ...

    def job_added(self, run: JobRun) -> None: ...

    def job_updated(self, run: JobRun) -> None: ...

    def job_log(self, run: JobRun, level: str, message: str) -> None: ...


@dataclass(frozen=True)
class Session:
    session_id: str
    token: str

    @property
    def prefix(self) -> str:
        return f"/api/sessions/{self.session_id}"


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.reason_phrase}"


def check_response(response: httpx.Response, action: str) -> Any:
    """Return the response's JSON body, or raise ClientError with the server's message."""
    if response.is_success:
        return response.json() if response.content else None
    # Invalid input is the user's to fix; anything else is a problem of the server or the network.
    exit_code = EXIT_USAGE if response.status_code in (400, 413, 422) else EXIT_CONNECTION
    raise ClientError(f"{action}: {error_message(response)}", exit_code)


