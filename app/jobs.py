"""Jobs in the serving process: the queue, dispatch to workers, limits, events and final states.

The serving process owns every job record. Workers never write one: they send events, and this
module turns events and worker results into new records.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .config import Settings, option_names
from .errors import ApiError, bad_request, not_found, quoted
from .events import Event, EventHub
from .layout import DataLayout, list_outputs
from .logs import log_ids
from .metrics import Metrics
from .pool import Worker, WorkerPool, describe_exit
from .sessions import Record, Session, SessionStore, new_id
from .validation import JobRequest, apply_caps, check_inputs, describe_validation_error, job_timeout
from .workers.registry import JobKind
from .workers.runner import run_job

logger = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
INTERRUPTED = "interrupted"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, INTERRUPTED})

# How long to wait for a job's last events after its result arrived. Events and results travel
# on different channels, and the final state must not overtake the job's last progress event.
END_MARKER_TIMEOUT_S = 2.0
RETRY_AFTER_S = 1
# Seconds between checks of the workers' memory and of idle workers that died.
WATCH_INTERVAL_S = 0.25


def public_job(record: Record) -> Record:
    return {key: value for key, value in record.items() if key != "session_id"}


@dataclass
class RunningJob:
    """A job on a worker, with the reason it is being stopped, if it is."""

    job_id: str
    session_id: str
    kind: str
    worker: Worker
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def log_ids(self) -> dict[str, str]:
        return log_ids(self.session_id, self.job_id)


class JobService:
    """Queues jobs, runs one per worker, enforces their limits, and records every state change."""

    def __init__(self, store: SessionStore, hub: EventHub, pool: WorkerPool, kinds: dict[str, JobKind],
                 layout: DataLayout, settings: Settings, metrics: Metrics) -> None:
        self._store = store
        self._hub = hub
        self._pool = pool
        self._kinds = kinds
        self._layout = layout
        self._settings = settings
        self._metrics = metrics
        self._queued: deque[str] = deque()
        # Session id -> its jobs in ``_queued``, so the per-session limit costs no scan of the queue.
        self._queued_by_session: Counter[str] = Counter()
        self._running: dict[str, RunningJob] = {}
        self._ended: dict[str, asyncio.Event] = {}
        # Each run of a job gets the next mark, which its worker stores as it starts the job.
        self._marks = itertools.count(1)
        self._watcher: asyncio.Task[None] | None = None
        self.accepting = True
        self.stopping = False
        # Set when the Manager is gone: no more events arrive, so jobs stop waiting for them.
        self.events_lost = False

    def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch_workers(), name="offload-worker-watch")

    @property
    def queued_count(self) -> int:
        return len(self._queued)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def active_records(self) -> list[Record]:
        """Return the records of queued and running jobs."""
        job_ids = [*self._queued, *self._running]
        return [record for job_id in job_ids if (record := self._store.jobs.get(job_id)) is not None]

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
        check_inputs(session, kind, request.inputs)
        try:
            params = kind.params.model_validate(request.params)
        except ValidationError as error:
            raise bad_request(describe_validation_error(error, kind.params, prefix="params.")) from None
        params = apply_caps(kind, params, self._settings)
        timeout_s = job_timeout(kind, request.timeout_s, self._settings)
        self._check_queue(session)

        record = self._new_record(session, kind, request.inputs, params.model_dump(mode="json"), timeout_s)
        self._store.put_job(record)
        self._publish_state(record)
        self._enqueue(record)
        logger.info("queued: kind %s, inputs %s, time limit %.0f s", kind.name, request.inputs, timeout_s,
                    extra=log_ids(session.session_id, record["job_id"]))
        self._dispatch()
        return record

    def _check_queue(self, session: Session) -> None:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if len(self._queued) >= self._settings.max_queued_jobs:
            raise ApiError(429, "too_many_jobs", f"{len(self._queued)} jobs are queued, the server maximum "
                           f"({option_names('max_queued_jobs')}); retry later", headers)
        queued_here = self._queued_by_session[session.session_id]
        if queued_here >= self._settings.max_queued_jobs_per_session:
            raise ApiError(429, "too_many_jobs", f"this session has {queued_here} queued jobs, the maximum "
                           f"({option_names('max_queued_jobs_per_session')}); retry later", headers)

    def _enqueue(self, record: Record, front: bool = False) -> None:
        if front:
            self._queued.appendleft(record["job_id"])
        else:
            self._queued.append(record["job_id"])
        self._queued_by_session[record["session_id"]] += 1

    def _take_queued(self) -> Record:
        """Remove the job at the head of the queue and return its record."""
        record = self._store.jobs[self._queued.popleft()]
        self._count_dequeued(record["session_id"])
        return record

    def _count_dequeued(self, session_id: str) -> None:
        self._queued_by_session[session_id] -= 1
        if self._queued_by_session[session_id] <= 0:
            del self._queued_by_session[session_id]

    def _new_record(self, session: Session, kind: JobKind, inputs: list[str], params: dict[str, Any],
                    timeout_s: float) -> Record:
        return {
            "job_id": new_id(),
            "session_id": session.session_id,
            "kind": kind.name,
            "state": QUEUED,
            "inputs": list(inputs),
            "params": params,
            "timeout_s": timeout_s,
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
        """Cancel a job: a queued one at once, a running one by its flag, then by killing its worker."""
        record = self.get(session, job_id)
        if record["state"] in TERMINAL_STATES:
            raise ApiError(409, "conflict", f"job {quoted(job_id)} is already {record['state']}")

        if record["state"] == QUEUED:
            self._queued.remove(job_id)
            self._count_dequeued(session.session_id)
            logger.info("cancelled while queued", extra=log_ids(session.session_id, job_id))
            return self._set_state(record, CANCELLED, finished_at=time.time())

        self._stop_running(job_id, CANCELLED)
        return record

    def cancel_session(self, session: Session) -> list[asyncio.Task[None]]:
        """Cancel every unfinished job of a session; return the tasks of jobs that are still running."""
        for job_id in list(session.job_ids):
            record = self._store.jobs[job_id]
            if record["state"] not in TERMINAL_STATES:
                self.cancel(session, job_id)
        return [running.task for job_id, running in self._running.items()
                if job_id in session.job_ids and running.task is not None]

    # Stopping running jobs

    def _stop_running(self, job_id: str, reason: str) -> None:
        """Ask a running job to stop; kill its worker if it still runs after the grace period."""
        running = self._running.get(job_id)
        if running is None or running.stop_reason is not None:
            return
        running.stop_reason = reason
        self._store.request_cancel(job_id)
        grace = self._settings.cancel_grace_s
        logger.info("asked to stop (%s); its worker is killed after %.1f s", reason, grace,
                    extra=running.log_ids())
        loop = asyncio.get_running_loop()
        running.timers.append(loop.call_later(grace, self._kill_worker, job_id))

    def _kill_worker(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is None or running.worker.job_id != job_id:
            return
        logger.warning("still running %.1f s after it was asked to stop; killing worker pid %s",
                       self._settings.cancel_grace_s, running.worker.pid, extra=running.log_ids())
        running.worker.kill(running.stop_reason or CANCELLED)

    def _expire(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None:
            logger.warning("reached its time limit", extra=running.log_ids())
        self._stop_running(job_id, TIMED_OUT)

    async def _watch_workers(self) -> None:
        """Kill workers over the memory limit, and replace idle workers that died."""
        limit = self._settings.max_worker_rss_bytes
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for running in list(self._running.values()):
                if limit and running.stop_reason is None and running.worker.rss() > limit:
                    logger.warning("worker pid %s is over %d bytes of memory; killing it", running.worker.pid,
                                   limit, extra=running.log_ids())
                    running.stop_reason = "memory"
                    running.worker.kill("memory")
            for worker in self._pool.idle_workers():
                if worker.process is not None and not worker.process.is_alive():
                    logger.error("idle worker pid %s exited with %s; replacing it", worker.pid,
                                 describe_exit(worker.process.exitcode))
                    self._pool.remove_idle(worker)
                    self._pool.replace(worker, self._dispatch)

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
        if event["type"] == "progress":
            self._store.put_job({**record, "progress": event["progress"]}, durable=False)
            self._hub.publish(record["session_id"],
                              {"job_id": job_id, "type": "progress", "progress": event["progress"]})
        elif event["type"] == "log":
            # The worker logged the line itself, with the job's ids.
            self._hub.publish(record["session_id"], {"job_id": job_id, "type": "log",
                                                     "level": event["level"], "message": event["message"]})

    # Dispatch

    def _dispatch(self) -> None:
        while self._queued and not self.stopping:
            worker = self._pool.take_idle()
            if worker is None:
                return
            record = self._take_queued()
            job_id = record["job_id"]
            worker.job_id = job_id
            running = self._running[job_id] = RunningJob(job_id, record["session_id"], record["kind"], worker)
            self._set_state(record, RUNNING, started_at=time.time(), attempts=record["attempts"] + 1)
            loop = asyncio.get_running_loop()
            running.timers.append(loop.call_later(record["timeout_s"], self._expire, job_id))
            running.task = asyncio.create_task(self._run(running), name=f"job-{job_id}")

    async def _run(self, running: RunningJob) -> None:
        job_id = running.job_id
        try:
            outcome = await self._execute(running)
            await self._conclude(running, outcome)
        except Exception:
            logger.exception("internal error while running", extra=running.log_ids())
            record = self._store.jobs.get(job_id)
            if record is not None and record["state"] not in TERMINAL_STATES:
                await self._finish(record, {"status": FAILED, "error": {
                    "type": "InternalError", "message": "the server failed to run this job; see its log"}}, [])
            self._pool.replace(running.worker, self._dispatch)
        finally:
            for timer in running.timers:
                timer.cancel()
            if job_id not in self._store.jobs:
                # The session was deleted while the job ran, so no final state was published.
                self._metrics.job_finished(running.kind, CANCELLED, None)
            self._running.pop(job_id, None)
            self._store.clear_cancel(job_id)
            self._dispatch()

    async def _execute(self, running: RunningJob) -> dict[str, Any]:
        record = self._store.jobs.get(running.job_id)
        if record is None:
            # The session was deleted before the job reached its worker.
            return {"status": CANCELLED}
        spec = {
            "job_id": running.job_id,
            "session_id": record["session_id"],
            "mark": next(self._marks),
            "module": self._kinds[record["kind"]].module,
            "kind": record["kind"],
            "params": record["params"],
            "inputs": [str(self._layout.file_path(record["session_id"], file_id)) for file_id in record["inputs"]],
            "input_names": [self._input_name(file_id) for file_id in record["inputs"]],
            "output_dir": str(self._layout.job_dir(record["session_id"], running.job_id)),
        }
        ended = self._ended[running.job_id] = asyncio.Event()
        try:
            return await self._submit(running, spec, ended)
        finally:
            self._ended.pop(running.job_id, None)

    def _input_name(self, file_id: str) -> str:
        # An input of an unfinished job cannot be deleted, so its record is normally still there.
        file = self._store.files.get(file_id)
        return file["name"] if file is not None else file_id

    async def _submit(self, running: RunningJob, spec: dict[str, Any], ended: asyncio.Event) -> dict[str, Any]:
        worker = running.worker
        try:
            future = self._pool.run(worker, run_job, spec)
        except BrokenProcessPool:
            # The worker died while idle, and its executor noticed before the watch did.
            logger.warning("worker pid %s had exited before the job was handed to it; queued again",
                           worker.pid, extra=running.log_ids())
            return {"status": "not_started"}
        try:
            outcome = await future
        except BrokenProcessPool:
            exit_code = await self._pool.exit_code(worker)
            if worker.started_mark != spec["mark"]:
                # The worker died before it took the job, for example within the few milliseconds
                # in which its executor had not yet noticed, so the job is not to blame.
                logger.warning("worker pid %s exited with %s before it started the job; queued again",
                               worker.pid, describe_exit(exit_code), extra=running.log_ids())
                return {"status": "not_started"}
            return {"status": "crashed", "exit_code": exit_code}

        if not self.events_lost and outcome.get("sent_events", True):
            # The result often overtakes the job's last events, which travel through the Manager queue.
            try:
                await asyncio.wait_for(ended.wait(), END_MARKER_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.warning("last events did not arrive within %.1f s", END_MARKER_TIMEOUT_S,
                               extra=running.log_ids())
        return outcome

    async def _conclude(self, running: RunningJob, outcome: dict[str, Any]) -> None:
        """Turn a worker's outcome into the job's next state, and release or replace its worker."""
        worker = running.worker
        if outcome["status"] in ("crashed", "not_started"):
            self._pool.replace(worker, self._dispatch)
            outcome = self._crash_outcome(running, outcome)
        else:
            self._recycle_or_release(worker)
            if outcome["status"] == CANCELLED and running.stop_reason == TIMED_OUT:
                outcome = self._timed_out_outcome(running)

        record = self._store.jobs.get(running.job_id)
        if record is None:
            return
        if outcome["status"] == QUEUED:
            self._requeue(record, outcome)
            return
        outputs = outcome.get("outputs")
        if outputs is None:
            # The worker died or was killed, so it did not list the outputs.
            outputs = await asyncio.to_thread(list_outputs, self._layout.job_dir(record["session_id"],
                                                                                running.job_id))
            # The session may have been deleted while the outputs were listed.
            record = self._store.jobs.get(running.job_id)
        if record is not None:
            await self._finish(record, outcome, outputs)

    def _crash_outcome(self, running: RunningJob, outcome: dict[str, Any]) -> dict[str, Any]:
        """Explain a dead worker: killed by the server on purpose, or crashed by its job.

        A job asked to stop ends as asked even if its worker died for another reason meanwhile.
        """
        reason = running.stop_reason or running.worker.kill_reason
        if reason == "stopping" or self.stopping:
            return {"status": INTERRUPTED, "error": {
                "type": "Interrupted", "message": "the server stopped while the job ran"}}
        if reason == CANCELLED:
            return {"status": CANCELLED}
        if reason == TIMED_OUT:
            return self._timed_out_outcome(running)
        if outcome["status"] == "not_started":
            return {"status": QUEUED, "retry": False}
        if reason == "memory":
            limit = self._settings.max_worker_rss_bytes
            return {"status": FAILED, "error": {
                "type": "MemoryLimitExceeded",
                "message": f"the job's worker used more than {limit} bytes of memory "
                           f"({option_names('max_worker_rss_bytes')}) and was killed"}}

        exit_code = outcome["exit_code"]
        record = self._store.jobs.get(running.job_id)
        if record is None:
            # The session was deleted meanwhile.
            return {"status": CANCELLED}
        attempts = record["attempts"]
        if attempts <= self._settings.crash_retries:
            logger.warning("killed its worker pid %s with %s; retrying (attempt %d of %d)", running.worker.pid,
                           describe_exit(exit_code), attempts + 1, self._settings.crash_retries + 1,
                           extra=running.log_ids())
            return {"status": QUEUED, "retry": True}
        logger.error("killed its worker pid %s with %s on every attempt; failing it", running.worker.pid,
                     describe_exit(exit_code), extra=running.log_ids())
        return {"status": FAILED, "error": {
            "type": "WorkerCrashed", "exit_code": exit_code,
            "message": f"the job's worker process ended with {describe_exit(exit_code)} "
                       f"on {attempts} attempt(s)"}}

    def _timed_out_outcome(self, running: RunningJob) -> dict[str, Any]:
        record = self._store.jobs.get(running.job_id)
        limit = record["timeout_s"] if record is not None else 0
        return {"status": TIMED_OUT, "error": {
            "type": "TimedOut", "message": f"the job ran longer than its time limit of {limit} s"}}

    def _recycle_or_release(self, worker: Worker) -> None:
        worker.jobs_run += 1
        max_jobs = self._settings.max_jobs_per_worker
        max_rss = self._settings.max_worker_rss_bytes
        if worker.kill_reason is not None:
            # The server killed the worker after its job's result arrived. A worker that died by
            # itself is not checked for here, which would cost a system call per job: its next job
            # finds it broken and goes back to the queue, and an idle one is found by the watch.
            self._pool.replace(worker, self._dispatch)
        elif max_jobs and worker.jobs_run >= max_jobs:
            logger.info("worker pid %s ran %d jobs; replacing it", worker.pid, worker.jobs_run)
            self._pool.replace(worker, self._dispatch)
        elif max_rss and (rss := worker.rss()) > max_rss:
            logger.info("worker pid %s uses %d bytes of memory; replacing it", worker.pid, rss)
            self._pool.replace(worker, self._dispatch)
        else:
            self._pool.release(worker)

    def _requeue(self, record: Record, outcome: dict[str, Any]) -> None:
        # A job that never ran gives its attempt back; a retried one keeps it.
        attempts = record["attempts"] if outcome["retry"] else record["attempts"] - 1
        self._set_state(record, QUEUED, attempts=attempts, started_at=None,
                        progress={"done": 0, "total": None, "unit": "", "message": ""})
        self._enqueue(record, front=not outcome["retry"])

    # State changes

    async def _finish(self, record: Record, outcome: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
        """Record a job's final state: in the journal first, then for clients and watchers."""
        if self._store.jobs.get(record["job_id"]) is None:
            return
        status = outcome["status"]
        changes: dict[str, Any] = {"finished_at": time.time(), "outputs": outputs}
        if status == SUCCEEDED:
            progress = record["progress"]
            done = progress["total"] if progress["total"] is not None else progress["done"]
            changes["result"] = outcome["result"]
            changes["progress"] = {**progress, "done": done}
        else:
            changes["error"] = outcome.get("error")

        # A state shown to a client must survive a crash, so it is committed before it is published.
        final = {**record, **changes, "state": status}
        self._store.journal.put_job(final)
        await self._store.journal.committed()
        if self._store.jobs.get(record["job_id"]) is None:
            return
        if status == SUCCEEDED:
            self._hub.publish(record["session_id"], {"job_id": record["job_id"], "type": "result",
                                                     "result": outcome["result"]})

        elapsed = changes["finished_at"] - (record["started_at"] or changes["finished_at"])
        ids = log_ids(record["session_id"], record["job_id"])
        if status == FAILED and "traceback" in outcome:
            logger.warning("failed after %.3f s: %s\n%s", elapsed, outcome["error"]["message"],
                           outcome["traceback"], extra=ids)
        else:
            logger.info("%s after %.3f s", status, elapsed, extra=ids)
        self._store.put_job(final, durable=False)
        self._publish_state(final)

    def _set_state(self, record: Record, state: str, **changes: Any) -> Record:
        record = {**record, **changes, "state": state}
        self._store.put_job(record)
        self._publish_state(record)
        return record

    def _publish_state(self, record: Record) -> None:
        if record["state"] in TERMINAL_STATES:
            started = record["started_at"]
            run_seconds = record["finished_at"] - started if started is not None else None
            self._metrics.job_finished(record["kind"], record["state"], run_seconds)
        self._hub.publish(record["session_id"], {"job_id": record["job_id"], "type": "state",
                                                 "state": record["state"], "job": public_job(record)})

    # Shutdown

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, mark queued ones interrupted, and give running ones ``grace`` seconds."""
        self.accepting = False
        self.stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._queued:
            logger.info("interrupting %d queued jobs", len(self._queued))
        while self._queued:
            record = self._take_queued()
            self._set_state(record, INTERRUPTED, finished_at=time.time(), error={
                "type": "Interrupted", "message": "the server stopped before the job started"})
        tasks = self._tasks()
        if tasks:
            logger.info("waiting up to %.1f s for %d running jobs", grace, len(tasks))
            await asyncio.wait(tasks, timeout=grace)

    async def wait_finished(self, timeout: float) -> None:
        """Wait for job tasks to record their final state, after the workers were stopped."""
        tasks = self._tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [running.task for running in self._running.values() if running.task is not None]
