"""``Runtime``: everything the server builds when it starts serving and tears down when it stops.

Nothing here runs at import time. Quart's ``before_serving`` hook calls ``Runtime.start`` and
``after_serving`` calls ``Runtime.stop``, in the serving process, so spawned workers that re-import
these modules create no processes, threads or Managers of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .config import Settings, option_names
from .events import EventHub, EventPump
from .jobs import INTERRUPTED, QUEUED, RUNNING, JobService
from .journal import Journal, JournalContents
from .layout import DataLayout
from .logs import log_ids
from .metrics import Metrics
from .pool import WorkerPool
from .sessions import SessionStore
from .validation import check_capped_params
from .workers.registry import JobKind, KindError, discover_kinds
from .workers.runner import init_manager, sigint_blocked

logger = logging.getLogger(__name__)

DAEMONIC_MESSAGE = (
    "Offload cannot start in a daemonic process, because its worker pool and Manager are child "
    "processes and daemonic processes may not have children. The hypercorn command runs apps in a "
    "daemonic process by default. Start Offload with 'python -m app.main' (or 'offload serve'), or "
    "with 'hypercorn --workers 0 app.main:app', or with a Hypercorn config file that sets "
    "'daemon = false' and 'workers = 1'."
)
# Websocket close codes (RFC 6455, section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
# Seconds between checks that the Manager still responds, and how long a response may take.
MANAGER_CHECK_INTERVAL_S = 2.0
MANAGER_CHECK_TIMEOUT_S = 5.0
# Seconds allowed for the Manager and helper threads to stop.
TEARDOWN_TIMEOUT_S = 3.0


class StartupError(RuntimeError):
    """Raised when the server cannot start; the message names what to change."""


class Runtime:
    """The pool, the Manager, the store, the event hub and the job service of one serving process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = DataLayout(settings.data_dir)
        self.kinds: dict[str, JobKind] = {}
        self.manager: SyncManager | None = None
        self.store: SessionStore | None = None
        self.hub = EventHub(settings.event_backlog)
        self.metrics = Metrics()
        self.metrics.watch(self)
        self.pool: WorkerPool | None = None
        self.jobs: JobService | None = None
        self.journal: Journal | None = None
        self.stopping = asyncio.Event()
        self.ready = False
        self._lock: FileLock | None = None
        self._pump: EventPump | None = None
        self._events: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self._manager_watch: asyncio.Task[None] | None = None
        self._lag_sampler: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._pending_removals: set[Path] = set()
        self._finishing: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if multiprocessing.current_process().daemon:
            raise StartupError(DAEMONIC_MESSAGE)
        started = time.monotonic()
        await asyncio.to_thread(self._lock_data_dir)
        try:
            contents = await asyncio.to_thread(self._open_journal)
            await self._start_processes(contents)
        except BaseException:
            await self._teardown()
            raise
        self._sweeper = asyncio.create_task(self._sweep_sessions(), name="offload-session-sweeper")
        self._manager_watch = asyncio.create_task(self._watch_manager(), name="offload-manager-watch")
        if self.settings.loop_lag_interval_s > 0:
            self._lag_sampler = asyncio.create_task(self.metrics.sample_loop_lag(self.settings.loop_lag_interval_s),
                                                    name="offload-loop-lag-sampler")
        self.ready = True
        logger.info("ready in %.2f s: %d workers (%s), data directory %s, job kinds %s",
                    time.monotonic() - started, self.settings.workers, self.settings.start_method,
                    self.layout.root, ", ".join(self.kinds))

    def _lock_data_dir(self) -> None:
        root = str(self.layout.root)
        try:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.layout.lock_path)
            lock.acquire(timeout=0)
        except Timeout:
            raise StartupError(
                f"data directory {root!r} is in use by another Offload server; stop it, or give this one "
                f"another {option_names('data_dir')}. Several Hypercorn workers cannot share one data "
                "directory: run one serving process, the worker pool gives the parallelism."
            ) from None
        except OSError as error:
            raise StartupError(f"cannot use data directory {root!r}: {error.strerror or error}; give "
                               f"{option_names('data_dir')} a writable directory") from None
        self._lock = lock

    def _open_journal(self) -> JournalContents:
        """Read the journal, drop expired sessions and unknown directories, interrupt unfinished jobs."""
        journal = self.journal = Journal(self.layout.journal_path)
        try:
            contents = journal.open()
        except sqlite3.Error as error:
            raise StartupError(f"cannot read the journal {str(self.layout.journal_path)!r}: {error}; move it "
                               "away to start with an empty one") from None

        now = time.time()
        live = {row["session_id"] for row in contents.sessions if row["last_seen"] + row["idle_s"] > now}
        for row in contents.sessions:
            if row["session_id"] not in live:
                journal.delete_session(row["session_id"])
        contents.sessions = [row for row in contents.sessions if row["session_id"] in live]
        contents.files = [record for record in contents.files if record["session_id"] in live]
        contents.jobs = [record for record in contents.jobs if record["session_id"] in live]

        interrupted = 0
        for index, record in enumerate(contents.jobs):
            if record["state"] in (QUEUED, RUNNING):
                record = {**record, "state": INTERRUPTED, "finished_at": now, "error": {
                    "type": "Interrupted", "message": f"the server stopped while the job was {record['state']}"}}
                contents.jobs[index] = record
                journal.put_job(record)
                interrupted += 1
                # Whatever the job wrote before it was cut off is incomplete.
                shutil.rmtree(self.layout.job_dir(record["session_id"], record["job_id"]), ignore_errors=True)

        known = {record["file_id"] for record in contents.files} | {record["job_id"] for record in contents.jobs}
        removed = self._remove_unknown(live, known)
        logger.info("journal: restored %d sessions, %d files and %d jobs (%d interrupted); removed %d "
                    "expired or unknown files and directories", len(contents.sessions), len(contents.files),
                    len(contents.jobs), interrupted, removed)
        return contents

    def _remove_unknown(self, sessions: set[str], known: set[str]) -> int:
        """Delete what the journal does not list: a server killed mid-upload or mid-delete leaves such."""
        removed = 0
        root = self.layout.sessions_dir
        for session_dir in root.iterdir() if root.is_dir() else []:
            if session_dir.name not in sessions:
                shutil.rmtree(session_dir, ignore_errors=True)
                removed += 1
                continue
            for folder in (session_dir / "files", session_dir / "jobs"):
                for path in folder.iterdir() if folder.is_dir() else []:
                    if path.name not in known:
                        _remove(path)
                        removed += 1
        return removed

    async def _start_processes(self, contents: JournalContents) -> None:
        try:
            self.kinds = discover_kinds(self.settings.extra_kinds)
        except KindError as error:
            raise StartupError(f"{error}. A module given to {option_names('extra_kinds')} must be importable "
                               f"from the working directory {os.getcwd()!r} or from PYTHONPATH") from None
        try:
            check_capped_params(self.kinds.values())
        except KindError as error:
            raise StartupError(str(error)) from None
        context = multiprocessing.get_context(self.settings.start_method)
        manager = SyncManager(ctx=context)
        await asyncio.to_thread(_start_manager, manager)
        self.manager = manager
        assert self.journal is not None
        self.store = await asyncio.to_thread(SessionStore, self.manager, self.journal)
        self.store.restore(contents.sessions, contents.files, contents.jobs)
        self._events = await asyncio.to_thread(self.manager.Queue)
        self.store.start()
        self.journal.start()

        loop = asyncio.get_running_loop()
        self.pool = WorkerPool(self.settings.workers, context, self.settings.extra_kinds,
                               (self._events, self.store.cancel_flags, self.settings.log_level,
                                self.settings.log_format))
        self.jobs = JobService(self.store, self.hub, self.pool, self.kinds, self.layout, self.settings,
                               self.metrics)
        self._pump = EventPump(self._events, loop, self.jobs.handle_event, self._manager_lost)
        self._pump.start()
        await self.pool.start()
        self.jobs.start()

    async def _watch_manager(self) -> None:
        """Declare the Manager lost if it stops responding, and kill it so nothing waits on it."""
        while True:
            await asyncio.sleep(MANAGER_CHECK_INTERVAL_S)
            if not self.ready:
                return
            try:
                await _call_in_daemon_thread(self._events.qsize, MANAGER_CHECK_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.error("manager process pid %s did not respond within %.0f s; killing it", self._manager_pid(),
                             MANAGER_CHECK_TIMEOUT_S)
                self._kill_manager()
                self._manager_lost()
                return
            except (OSError, EOFError):
                # The event pump reports a Manager that is gone.
                return

    def _manager_process(self) -> multiprocessing.process.BaseProcess | None:
        # SyncManager has no public accessor for its process.
        return getattr(self.manager, "_process", None)

    def _manager_pid(self) -> int | None:
        process = self._manager_process()
        return process.pid if process is not None else None

    def _kill_manager(self) -> None:
        # Killing it makes every blocked proxy call fail at once instead of waiting forever.
        process = self._manager_process()
        if process is not None and process.is_alive():
            process.kill()

    def _manager_lost(self) -> None:
        self.ready = False
        if self.jobs is not None:
            self.jobs.events_lost = True

    def begin_shutdown(self) -> None:
        """Stop accepting uploads and jobs; safe to call more than once."""
        if self.stopping.is_set():
            return
        logger.info("shutting down: no new uploads or jobs")
        self.stopping.set()
        self.ready = False
        if self.jobs is not None:
            self.jobs.accepting = False
            self.jobs.stopping = True

    async def finish_jobs(self) -> None:
        """Interrupt queued jobs, give running ones their grace period, stop the workers, close websockets.

        Websockets close with 1001 only after every job's final state was published, so clients that
        watch a job see how it ended. Safe to call more than once.
        """
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish_jobs())
        await asyncio.shield(self._finishing)

    async def _finish_jobs(self) -> None:
        self.begin_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._manager_watch is not None:
            self._manager_watch.cancel()
        if self._lag_sampler is not None:
            self._lag_sampler.cancel()
        if self.jobs is not None:
            await self.jobs.stop(self.settings.job_grace_s)
        if self.pool is not None:
            await self.pool.stop()
        if self.jobs is not None:
            await self.jobs.wait_finished(TEARDOWN_TIMEOUT_S)
        self.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")

    async def stop(self) -> None:
        """Finish the jobs, then stop the Manager and the helper threads and release the data directory."""
        await self.finish_jobs()
        await self._teardown()
        logger.info("stopped")

    async def _teardown(self) -> None:
        # The pool steps repeat finish_jobs for a start-up that failed halfway; both are idempotent.
        if self.pool is not None:
            await self.pool.stop()
        if self.jobs is not None:
            await self.jobs.wait_finished(TEARDOWN_TIMEOUT_S)
        if self._pump is not None and self._events is not None and self._pump.is_alive():
            await self._call_blocking(self._events.put, None)
            await asyncio.to_thread(self._pump.join, TEARDOWN_TIMEOUT_S)
        if self.store is not None:
            await asyncio.to_thread(self.store.stop, TEARDOWN_TIMEOUT_S)
        if self.journal is not None:
            await asyncio.to_thread(self.journal.stop, TEARDOWN_TIMEOUT_S)
        if self.manager is not None:
            await self._call_blocking(self.manager.shutdown)
        if self._lock is not None:
            self._lock.release()

    async def _call_blocking(self, function: Any, *args: Any) -> None:
        try:
            await _call_in_daemon_thread(lambda: function(*args), TEARDOWN_TIMEOUT_S)
        except (asyncio.TimeoutError, OSError, EOFError) as error:
            logger.warning("%s failed during shutdown: %s", getattr(function, "__name__", function), error)

    # Sessions

    def delete_session(self, session_id: str) -> None:
        """Forget a session at once; cancel its jobs and remove its files in the background."""
        assert self.store is not None and self.jobs is not None
        session = self.store.sessions.get(session_id)
        if session is None:
            return
        running = self.jobs.cancel_session(session)
        self.store.remove_session(session_id)
        self.hub.close_session(session_id, CLOSE_NORMAL, "session ended")
        self.hub.drop_session(session_id)
        task = asyncio.create_task(self._remove_session_files(session_id, running))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _remove_session_files(self, session_id: str, running: list[asyncio.Task[None]]) -> None:
        # Windows cannot delete a file a job still has open, so let the cancelled jobs end first.
        if running:
            await asyncio.wait(running, timeout=self.settings.job_grace_s)
        # Files go only after the journal forgot the session, so a crash leaves no record without files.
        assert self.store is not None
        await self.store.journal.committed()
        await self.remove_path(self.layout.session_dir(session_id))

    async def remove_path(self, path: Path) -> None:
        """Delete a file or directory tree; if that fails, retry it on every session sweep."""
        try:
            await asyncio.to_thread(_remove, path)
        except OSError as error:
            # Windows cannot delete a file that a download or a job still has open.
            logger.warning("could not remove %s (%s); retrying later", path, error)
            self._pending_removals.add(path)
        else:
            self._pending_removals.discard(path)

    async def _sweep_sessions(self) -> None:
        interval = min(60.0, self.settings.session_idle_s / 4)
        while True:
            await asyncio.sleep(interval)
            for path in list(self._pending_removals):
                await self.remove_path(path)
            assert self.store is not None
            for session_id in self.store.expired_sessions(time.time()):
                logger.info("session expired after %.0f s idle", self.settings.session_idle_s,
                            extra=log_ids(session_id))
                self.delete_session(session_id)


async def _call_in_daemon_thread(function: Callable[[], Any], timeout: float) -> Any:
    """Call ``function`` in a new daemon thread; a call that never returns cannot hold up the exit."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        # The caller may have given up and cancelled the future already.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            setter(value)

    def run() -> None:
        try:
            result = function()
        except BaseException as error:
            settle(future.set_exception, error)
        else:
            settle(future.set_result, result)

    threading.Thread(target=run, name="offload-manager-check", daemon=True).start()
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout)


def _start_manager(manager: SyncManager) -> None:
    with sigint_blocked():
        manager.start(init_manager)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
