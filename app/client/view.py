"""Output of ``offload run``: rich progress bars on stderr and results on stdout, or one JSON document."""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from .models import ClientError, JobRun


class QuietView:
    """Show nothing while the command runs; ``--json`` prints only the final document."""

    def __enter__(self) -> QuietView:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        pass

    def status(self, message: str) -> None:
        pass

    def upload_started(self, name: str, size: int) -> int:
        return 0

    def upload_advanced(self, handle: int, count: int) -> None:
        pass

    def job_added(self, run: JobRun) -> None:
        pass

    def job_updated(self, run: JobRun) -> None:
        pass

    def job_log(self, run: JobRun, level: str, message: str) -> None:
        pass


class ProgressView:
    """One progress bar per upload and per job on stderr, with messages printed above the bars.

    When stderr is not a terminal, rich draws the bars once, as they are when the command ends.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn(),
            console=console, redirect_stdout=False, redirect_stderr=False,
        )
        self._jobs: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.progress.stop()

    def status(self, message: str) -> None:
        self.progress.console.print(Text(message))

    def upload_started(self, name: str, size: int) -> int:
        return self.progress.add_task(f"upload {name}", total=size, detail=decimal(size))

    def upload_advanced(self, handle: int, count: int) -> None:
        self.progress.advance(TaskID(handle), count)

    def job_added(self, run: JobRun) -> None:
        assert run.record is not None and run.job_id is not None
        self._jobs[run.job_id] = self.progress.add_task(f"{run.record['kind']} {run.label}", total=None,
                                                        detail=run.state)
        self.job_updated(run)

    def job_updated(self, run: JobRun) -> None:
        task = self._jobs.get(run.job_id or "")
        if task is None or run.record is None:
            return
        progress = run.record["progress"]
        done, total = progress["done"], progress["total"]
        if run.state == "succeeded" and total is None:
            # A job that reported no total is complete when it succeeds.
            total = done = max(done, 1)
        detail = " ".join(part for part in (run.state, _amount(done, total, progress["unit"]),
                                            progress.get("message", "")) if part)
        self.progress.update(task, total=total, completed=done, detail=detail)

    def job_log(self, run: JobRun, level: str, message: str) -> None:
        self.progress.console.print(Text(f"{run.label}: {level}: {message}"))


def _amount(done: int | float, total: int | float | None, unit: str) -> str:
    if unit == "bytes":
        return f"{decimal(int(done))}/{decimal(int(total))}" if total is not None else decimal(int(done))
    counted = f"{done}/{total}" if total is not None else f"{done}"
    return f"{counted} {unit}".strip() if done or total else ""


def print_results(runs: list[JobRun], stdout: Console) -> None:
    """Print each job's outcome, result and saved outputs, for people; ``stdout`` may be a pipe."""
    for run in runs:
        heading = Text(f"{run.label}: ", style="bold")
        if run.record is not None:
            heading.append(f"{run.record['kind']} ")
        heading.append(run.state, style="green" if run.state == "succeeded" else "red")
        if run.record is not None and run.record.get("error"):
            error = run.record["error"]
            heading.append(f": {error.get('type', 'Error')}: {error.get('message', '')}")
        stdout.print(heading)
        if run.record is not None and run.record.get("result") is not None:
            stdout.print_json(data=run.record["result"])
        for path in run.outputs:
            stdout.print(Text(f"saved {path}"))


def summary(runs: list[JobRun]) -> str:
    failed = [run for run in runs if run.state != "succeeded"]
    if not failed:
        return f"{len(runs)} of {len(runs)} jobs succeeded"
    names = ", ".join(f"{run.label} ({run.state})" for run in failed)
    return f"{len(failed)} of {len(runs)} jobs did not succeed: {names}"


def json_document(runs: list[JobRun], kind: str, error: ClientError | None) -> dict[str, Any]:
    """Describe the whole command for scripts: ``ok``, ``error``, and per job its outcome and outputs."""
    jobs = []
    for run in runs:
        record = run.record or {}
        jobs.append({
            "kind": kind,
            "file": str(run.files[0]) if len(run.files) == 1 else None,
            "files": [str(path) for path in run.files],
            "job_id": run.job_id,
            "state": run.state,
            "result": record.get("result"),
            "error": record.get("error"),
            "outputs": [str(path) for path in run.outputs],
        })
    ok = error is None and all(run.state == "succeeded" for run in runs)
    return {"ok": ok, "error": error.message if error is not None else None, "jobs": jobs}


def print_json_document(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()
