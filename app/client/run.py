"""The ``offload run`` client: upload files, start jobs, follow them live, download their outputs.

Everything goes through the public HTTP and websocket API, so the client works the same against a
local server and a remote one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote

import httpx

from ..workers.registry import describe_input_count
from .events import JobTracker, follow_events, websocket_url
from .models import (EXIT_USAGE, ClientError, JobRun, Record, RunRequest, RunView, Session,
                     check_response, error_message)
from .params import ParamError, parse_params
from .transfers import download_outputs, upload

HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DELETE_TIMEOUT_S = 10.0


def plan_runs(request: RunRequest) -> list[JobRun]:
    """Return one run per file, or a single run with every file for ``--single-job`` or no files."""
    if request.single_job or not request.files:
        return [JobRun(list(request.files))]
    return [JobRun([path]) for path in request.files]


async def execute(server_url: str, request: RunRequest, runs: list[JobRun], view: RunView,
                  trust_env: bool = True) -> None:
    """Run ``runs`` on the server at ``server_url``, filling in their records and output paths.

    The session is deleted at the end, also after an error or a cancellation, which cancels any
    job still running.
    """
    base_url = server_url.rstrip("/")
    async with httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT, trust_env=trust_env) as http:
        kind = await _fetch_kind(http, request.kind)
        _check_input_count(kind, runs)
        try:
            params = parse_params(request.param_options, kind.get("params", {}))
        except ParamError as error:
            raise ClientError(str(error), EXIT_USAGE) from None

        session = await _create_session(http)
        try:
            tracker = JobTracker(runs, view)
            events_url = websocket_url(base_url) + f"{session.prefix}/ws?token={quote(session.token)}"
            await _run_jobs(http, session, request, params, tracker, follow_events(events_url, tracker, trust_env))
            for run in runs:
                if run.state == "succeeded":
                    run.outputs = await download_outputs(http, session, run, request.output_dir)
        finally:
            await _delete_session(http, session, view)


async def _run_jobs(http: httpx.AsyncClient, session: Session, request: RunRequest, params: Record,
                    tracker: JobTracker, follow: Coroutine[Any, Any, None]) -> None:
    """Upload each run's files and start its job while the event stream updates the records."""
    follower = asyncio.create_task(follow, name="offload-events")
    try:
        for run in tracker.runs:
            file_ids = [await upload(http, session, path, tracker.view) for path in run.files]
            body = {"kind": request.kind, "inputs": file_ids, "params": params}
            tracker.add(run, await _start_job(http, session, body, tracker.view))
        await _wait_finished(tracker, follower)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def _wait_finished(tracker: JobTracker, follower: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(tracker.finished.wait())
    try:
        await asyncio.wait({waiter, follower}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not tracker.finished.is_set():
        # The follower ends only by raising; it gave up on the event stream.
        follower.result()


async def _fetch_kind(http: httpx.AsyncClient, name: str) -> Record:
    kinds = check_response(await http.get("/api/job-kinds"), "listing job kinds failed")["kinds"]
    for kind in kinds:
        if kind["name"] == name:
            return kind
    names = ", ".join(kind["name"] for kind in kinds)
    raise ClientError(f"unknown job kind {name!r}; use one of {names} (offload kinds lists their parameters)",
                      EXIT_USAGE)


def _check_input_count(kind: Record, runs: list[JobRun]) -> None:
    low, high = kind["inputs"]["min"], kind["inputs"]["max"]
    for run in runs:
        count = len(run.files)
        if low <= count and (high is None or count <= high):
            continue
        together = sum(len(other.files) for other in runs)
        hint = "; pass --single-job to give one job all the files" if count < low <= together else ""
        raise ClientError(f"kind {kind['name']!r} takes {describe_input_count(low, high)} per job, and this job "
                          f"would get {count}{hint}", EXIT_USAGE)


async def _create_session(http: httpx.AsyncClient) -> Session:
    created = check_response(await http.post("/api/sessions"), "creating a session failed")
    session = Session(created["session_id"], created["token"])
    http.headers["Authorization"] = f"Bearer {session.token}"
    return session


async def _delete_session(http: httpx.AsyncClient, session: Session, view: RunView) -> None:
    try:
        response = await http.delete(session.prefix, timeout=DELETE_TIMEOUT_S)
    except httpx.HTTPError as error:
        view.status(f"could not delete session {session.session_id}: {str(error) or type(error).__name__}; "
                    "it expires when unused")
        return
    if response.status_code not in (204, 404):
        view.status(f"could not delete session {session.session_id}: {error_message(response)}; "
                    "it expires when unused")


async def _start_job(http: httpx.AsyncClient, session: Session, body: Record, view: RunView) -> Record:
    """Start a job; while the server's queue is full (429), retry after its ``Retry-After`` delay."""
    while True:
        response = await http.post(f"{session.prefix}/jobs", json=body)
        if response.status_code != 429:
            return dict(check_response(response, "the server rejected the job"))
        delay = _retry_after(response)
        view.status(f"the server's job queue is full; retrying in {delay:g} s")
        await asyncio.sleep(delay)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(1.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0
