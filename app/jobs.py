"""Jobs in the serving process: validation, the queue, dispatch to the pool, events and final states.

The serving process owns every job record. Workers never write one: they send events, and this
module turns events and pool results into new records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import option_names
from .errors import ApiError, bad_request, not_found, quoted
from .events import Event, EventHub
from .layout import DataLayout, list_outputs
from .pool import PoolNotRunning, WorkerPool
from .sessions import Record, Session, SessionStore, new_id
from .workers.registry import JobKind
from .workers.runner import run_job

logger = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, "timed_out", INTERRUPTED})

# How long to wait for a job's last events after its result arrived. Events and results travel
# on different channels, and the final state must not overtake the job's last progress event.
END_MARKER_TIMEOUT_S = 2.0
RETRY_AFTER_S = 1
# Times a job is offered to the pool when submitting fails because the pool broke while idle.
SUBMIT_ATTEMPTS = 3
MAX_REBUILD_DELAY_S = 5.0


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(max_length=100, description="job kind, one of GET /api/job-kinds")
    inputs: list[str] = Field(default_factory=list, description="file ids of this session")
    params: dict[str, Any] = Field(default_factory=dict, description="parameters of the kind")


def describe_validation_error(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Turn a pydantic error into one line that names each invalid field and the value sent."""
    messages = []
    for item in error.errors():
        field = prefix + ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            message = f"{field}: unknown field; use one of {sorted(model.model_fields)}"
        elif item["type"] == "model_type":
            message = f"{field or 'body'}: expected a JSON object"
        else:
            message = f"{field or 'body'}: {item['msg']}"
            if item["type"] != "missing" and not isinstance(item.get("input"), (dict, list)):
                message += f" (got {quoted(item['input'])})"
        messages.append(message)
    return "; ".join(messages)


def public_job(record: Record) -> Record:
    return {key: value for key, value in record.items() if key != "session_id"}


class JobService:
    """Queues jobs, runs at most one per worker at a time, and records every state change."""

    def __init__(self, store: SessionStore, hub: EventHub, pool: WorkerPool, kinds: dict[str, JobKind],
                 layout: DataLayout, max_queued: int, max_queued_per_session: int) -> None:
        self._store = store
        self._hub = hub
        self._pool = pool
        self._kinds = kinds
        self._layout = layout
        self._max_queued = max_queued
        self._max_queued_per_session = max_queued_per_session
        self._queued: deque[str] = deque()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._healing: asyncio.Task[None] | None = None
        self.accepting = True
        self.stopping = False
        # Set when the Manager is gone: no more events arrive, so jobs stop waiting for them.
        self.events_lost = False

    @property
    def queued_count(self) -> int:
        return len(self._queued)

    @property
    def running_count(self) -> int:
        return len(self._tasks)

    # Requests

    def create(self, session: Session, payload: Any) -> Record:
        if not self.accepting:
            raise ApiError(503, "shutting_down", "server is shutting down; no new jobs are accepted")
        try:
            request = JobRequest.model_validate(payload)
        except ValidationError as error:
            raise bad_request(describe_validation_error(error, JobRequest)) from None

        kind = self._kinds.get(request.kind)
        if kind is None:
            raise bad_request(f"kind: unknown job kind {quoted(request.kind)}; use one of {sorted(self._kinds)}")
        self._check_inputs(session, kind, request.inputs)
        try:
            params = kind.params.model_validate(request.params)
        except ValidationError as error:
            raise bad_request(describe_validation_error(error, kind.params, prefix="params.")) from None
        self._check_queue(session)

        record = self._new_record(session, kind, request.inputs, params.model_dump(mode="json"))
        self._store.put_job(record)
        self._publish_state(record)
        self._queued.append(record["job_id"])
        logger.info("session=%s job=%s queued: kind %s, inputs %s", session.session_id, record["job_id"],
                    kind.name, request.inputs)
        self._dispatch()
        return record

    def _check_inputs(self, session: Session, kind: JobKind, inputs: list[str]) -> None:
        count = len(inputs)
        if count < kind.min_inputs or (kind.max_inputs is not None and count > kind.max_inputs):
            if kind.max_inputs == kind.min_inputs:
                expected = f"exactly {kind.min_inputs}"
            elif kind.max_inputs is None:
                expected = f"at least {kind.min_inputs}"
            else:
                expected = f"{kind.min_inputs} to {kind.max_inputs}"
            raise bad_request(f"inputs: kind {kind.name!r} takes {expected} input file(s), got {count}; "
                              "start one job per file")
        for file_id in inputs:
            if file_id not in session.file_ids:
                raise not_found("file", file_id)

    def _check_queue(self, session: Session) -> None:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if len(self._queued) >= self._max_queued:
            raise ApiError(429, "too_many_jobs", f"{len(self._queued)} jobs are queued, the server maximum "
                           f"({option_names('max_queued_jobs')}); retry later", headers)
        queued_here = sum(1 for job_id in self._queued if self._store.jobs[job_id]["session_id"]
                          == session.session_id)
        if queued_here >= self._max_queued_per_session:
            raise ApiError(429, "too_many_jobs", f"this session has {queued_here} queued jobs, the maximum "
                           f"({option_names('max_queued_jobs_per_session')}); retry later", headers)

    def _new_record(self, session: Session, kind: JobKind, inputs: list[str], params: dict[str, Any]) -> Record:
        return {
            "job_id": new_id(),
            "session_id": session.session_id,
            "kind": kind.name,
            "state": QUEUED,
            "inputs": list(inputs),
            "params": params,
            "progress": {"done": 0, "total": None, "unit": "", "message": ""},
            "result": None,
            "error": None,
            "outputs": [],
            "attempts": 0,
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
        }

    def get(self, session: Session, job_id: str) -> Record:
        record = self._store.jobs.get(job_id)
        if record is None or record["session_id"] != session.session_id:
            raise not_found("job", job_id)
        return record

    def cancel(self, session: Session, job_id: str) -> Record:
        record = self.get(session, job_id)
        if record["state"] in TERMINAL_STATES:
            raise ApiError(409, "conflict", f"job {quoted(job_id)} is already {record['state']}")

        if record["state"] == QUEUED:
            self._queued.remove(job_id)
            logger.info("session=%s job=%s cancelled while queued", session.session_id, job_id)
            return self._set_state(record, CANCELLED, finished_at=time.time())

        # TODO: terminate the worker when a running job ignores the flag past a grace period.
        self._store.request_cancel(job_id)
        logger.info("session=%s job=%s cancel requested while running", session.session_id, job_id)
        return record

    def cancel_session(self, session: Session) -> list[asyncio.Task[None]]:
        """Cancel every unfinished job of a session; return the tasks of jobs that are still running."""
        for job_id in list(session.job_ids):
            record = self._store.jobs[job_id]
            if record["state"] not in TERMINAL_STATES:
                self.cancel(session, job_id)
        return [self._tasks[job_id] for job_id in session.job_ids if job_id in self._tasks]

    # Worker events, delivered on the event loop by EventPump

    def handle_event(self, event: Event) -> None:
        job_id = event.get("job_id", "")
        if event["type"] == "end":
            ended = self._ended.get(job_id)
            if ended is not None:
                ended.set()
            return

        record = self._store.jobs.get(job_id)
        if record is None or record["state"] != RUNNING:
            return
        if event["type"] == "started":
            logger.debug("session=%s job=%s started in worker pid %s", record["session_id"], job_id, event["pid"])
        elif event["type"] == "progress":
            self._store.put_job({**record, "progress": event["progress"]})
            self._hub.publish(record["session_id"],
                              {"job_id": job_id, "type": "progress", "progress": event["progress"]})
        elif event["type"] == "log":
            logger.info("session=%s job=%s log: %s", record["session_id"], job_id, event["message"])
            self._hub.publish(record["session_id"], {"job_id": job_id, "type": "log",
                                                     "level": event["level"], "message": event["message"]})

    # Dispatch

    def _dispatch(self) -> None:
        while self._queued and len(self._tasks) < self._pool.size and not self.stopping:
            job_id = self._queued.popleft()
            record = self._store.jobs[job_id]
            self._set_state(record, RUNNING, started_at=time.time(), attempts=record["attempts"] + 1)
            self._tasks[job_id] = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")

    async def _run(self, job_id: str) -> None:
        try:
            outcome = await self._execute(job_id)
            record = self._store.jobs.get(job_id)
            outputs: list[dict[str, Any]] = []
            if record is not None:
                layout = self._layout.job_dir(record["session_id"], job_id)
                outputs = await asyncio.to_thread(list_outputs, layout)
                # The session may have been deleted while the outputs were listed.
                record = self._store.jobs.get(job_id)
            if record is not None:
                self._finish(record, outcome, outputs)
        except Exception:
            logger.exception("job=%s internal error while running", job_id)
            record = self._store.jobs.get(job_id)
            if record is not None and record["state"] not in TERMINAL_STATES:
                self._finish(record, {"status": FAILED, "error": {
                    "type": "InternalError", "message": "the server failed to run this job; see its log"}}, [])
        finally:
            self._tasks.pop(job_id, None)
            self._dispatch()

    async def _execute(self, job_id: str) -> dict[str, Any]:
        if self._healing is not None:
            await self._healing
        record = self._store.jobs.get(job_id)
        if record is None:
            # The session was deleted before the job reached a worker.
            return {"status": CANCELLED}
        spec = {
            "job_id": job_id,
            "session_id": record["session_id"],
            "module": self._kinds[record["kind"]].module,
            "kind": record["kind"],
            "params": record["params"],
            "inputs": [str(self._layout.file_path(record["session_id"], file_id)) for file_id in record["inputs"]],
            "output_dir": str(self._layout.job_dir(record["session_id"], job_id)),
        }
        ended = self._ended[job_id] = asyncio.Event()
        try:
            return await self._submit(record, spec, ended)
        finally:
            self._ended.pop(job_id, None)

    async def _submit(self, record: Record, spec: dict[str, Any], ended: asyncio.Event) -> dict[str, Any]:
        for _ in range(SUBMIT_ATTEMPTS):
            generation = self._pool.generation
            try:
                future = self._pool.submit(run_job, spec)
                break
            except (BrokenProcessPool, PoolNotRunning):
                # An idle worker died, or the pool is being rebuilt: this job never ran, so it waits
                # for the new pool instead of failing.
                self._heal(generation)
                if self._healing is not None:
                    await self._healing
        else:
            return {"status": FAILED, "error": {
                "type": "WorkerCrashed", "message": "no worker pool could be started; see the server log"}}

        try:
            outcome = await future
        except BrokenProcessPool:
            self._heal(generation)
            if self.stopping:
                return {"status": INTERRUPTED, "error": {
                    "type": "Interrupted", "message": "the server stopped while the job ran"}}
            # TODO: retry jobs that were in flight when another job's worker died.
            return {"status": FAILED, "error": {
                "type": "WorkerCrashed", "message": "a worker process exited while this job ran"}}

        if self.events_lost:
            return outcome
        # The result often overtakes the job's last events, which travel through the Manager queue.
        try:
            await asyncio.wait_for(ended.wait(), END_MARKER_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.warning("session=%s job=%s last events did not arrive within %.1f s",
                           record["session_id"], record["job_id"], END_MARKER_TIMEOUT_S)
        return outcome

    def _heal(self, generation: int) -> None:
        if self._healing is None and generation == self._pool.generation and not self.stopping:
            logger.error("worker pool broken; rebuilding it")
            self._healing = asyncio.create_task(self._rebuild())

    async def _rebuild(self) -> None:
        """Rebuild the pool, retrying with a growing delay while new workers die during start-up."""
        delay = 0.1
        try:
            while not self.stopping:
                try:
                    await self._pool.rebuild()
                    return
                except (BrokenProcessPool, OSError) as error:
                    logger.error("rebuilding the worker pool failed (%s: %s); retrying in %.1f s",
                                 type(error).__name__, error, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_REBUILD_DELAY_S)
        finally:
            self._healing = None
            self._dispatch()

    # State changes

    def _finish(self, record: Record, outcome: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
        status = outcome["status"]
        changes: dict[str, Any] = {"finished_at": time.time(), "outputs": outputs}
        if status == SUCCEEDED:
            progress = record["progress"]
            done = progress["total"] if progress["total"] is not None else progress["done"]
            changes["result"] = outcome["result"]
            changes["progress"] = {**progress, "done": done}
            self._hub.publish(record["session_id"], {"job_id": record["job_id"], "type": "result",
                                                     "result": outcome["result"]})
        else:
            changes["error"] = outcome.get("error")

        elapsed = changes["finished_at"] - (record["started_at"] or changes["finished_at"])
        if status == FAILED and "traceback" in outcome:
            logger.warning("session=%s job=%s failed after %.3f s: %s\n%s", record["session_id"],
                           record["job_id"], elapsed, outcome["error"]["message"], outcome["traceback"])
        else:
            logger.info("session=%s job=%s %s after %.3f s", record["session_id"], record["job_id"],
                        status, elapsed)
        self._set_state(record, status, **changes)

    def _set_state(self, record: Record, state: str, **changes: Any) -> Record:
        record = {**record, **changes, "state": state}
        self._store.put_job(record)
        self._publish_state(record)
        return record

    def _publish_state(self, record: Record) -> None:
        self._hub.publish(record["session_id"], {"job_id": record["job_id"], "type": "state",
                                                 "state": record["state"], "job": public_job(record)})

    # Shutdown

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, mark queued ones interrupted, and give running ones ``grace`` seconds."""
        self.accepting = False
        self.stopping = True
        if self._queued:
            logger.info("interrupting %d queued jobs", len(self._queued))
        while self._queued:
            record = self._store.jobs[self._queued.popleft()]
            self._set_state(record, INTERRUPTED, finished_at=time.time(), error={
                "type": "Interrupted", "message": "the server stopped before the job started"})
        if self._tasks:
            logger.info("waiting up to %.1f s for %d running jobs", grace, len(self._tasks))
            await asyncio.wait(list(self._tasks.values()), timeout=grace)

    async def wait_finished(self, timeout: float) -> None:
        """Wait for job tasks to record their final state, after the pool was stopped."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
