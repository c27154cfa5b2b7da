"""``WorkerPool``: worker processes that run jobs, one job per worker at a time.

Each worker is the single process of its own ``ProcessPoolExecutor``. A crash, a kill for
cancellation, a time limit or a memory limit therefore breaks only the executor of that worker. The
jobs on the other workers go on, and the pool can tell which job a dead worker was running.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

import psutil

from .workers.runner import init_worker, sigint_blocked, warm_up

logger = logging.getLogger(__name__)

# Seconds to wait for a killed worker to exit.
STOP_TIMEOUT_S = 5.0
MAX_RESTART_DELAY_S = 5.0


class Worker:
    """One worker process and the single-process executor that owns it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.executor: ProcessPoolExecutor | None = None
        self.process: multiprocessing.Process | None = None
        self.jobs_run = 0
        self.job_id: str | None = None
        # Why the server killed this worker, if it did: "cancelled", "timed_out", "memory" or "stopping".
        self.kill_reason: str | None = None
        # Shared memory in which the worker process stores the mark of each job it starts, so that a
        # job whose worker died during it is not confused with a job that the worker never took.
        self.started: Any = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def rss(self) -> int:
        """Return the worker's resident memory in bytes, or 0 if it is gone."""
        if self.process is None or self.process.pid is None:
            return 0
        try:
            return psutil.Process(self.process.pid).memory_info().rss
        except psutil.Error:
            return 0

    @property
    def started_mark(self) -> int:
        """The mark of the last job the worker process started, 0 before its first."""
        return int(self.started.value) if self.started is not None else 0

    def kill(self, reason: str) -> None:
        if self.process is not None and self.process.is_alive():
            self.kill_reason = reason
            self.process.kill()


class WorkerPool:
    """A fixed number of workers, each started before it takes a job and replaced when it ends."""

    def __init__(self, size: int, context: BaseContext, extra_modules: tuple[str, ...],
                 initargs: tuple[Any, ...]) -> None:
        self.size = size
        self._context = context
        self._extra_modules = list(extra_modules)
        self._initargs = initargs
        self.workers = [Worker(index) for index in range(size)]
        self._idle: list[Worker] = []
        self.restarts = 0
        self.stopping = False
        # Worker index -> the task that starts its replacement.
        self._replacing: dict[int, asyncio.Task[None]] = {}

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def running(self) -> bool:
        """Whether at least one worker is up or being started, so queued jobs will run."""
        return not self.stopping and (any(worker.executor is not None for worker in self.workers)
                                      or bool(self._replacing))

    async def start(self) -> None:
        """Start every worker and wait until each has imported the job kinds."""
        await asyncio.gather(*(self._start_worker(worker) for worker in self.workers))
        self._idle = list(self.workers)
        logger.info("worker pool started: %d %s workers, pids %s", self.size,
                    self._context.get_start_method(), [worker.pid for worker in self.workers])

    async def _start_worker(self, worker: Worker) -> None:
        # Shared memory may be handed to a child only as it is spawned, as an initializer argument.
        started = self._context.RawValue("Q", 0)
        executor = ProcessPoolExecutor(1, mp_context=self._context, initializer=init_worker,
                                       initargs=(*self._initargs, started))
        loop = asyncio.get_running_loop()
        with sigint_blocked():
            warmed = loop.run_in_executor(executor, warm_up, self._extra_modules)
        try:
            await warmed
        except BaseException:
            await _stop_executor(executor)
            raise
        worker.executor = executor
        worker.started = started
        # Python 3.11 has no public accessor for an executor's processes.
        worker.process = next(iter(executor._processes.values()))
        worker.jobs_run = 0
        worker.job_id = None
        worker.kill_reason = None

    def take_idle(self) -> Worker | None:
        """Return an idle worker for a job, or None if all are busy or being replaced."""
        if self.stopping or not self._idle:
            return None
        return self._idle.pop()

    def run(self, worker: Worker, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        assert worker.executor is not None
        return asyncio.get_running_loop().run_in_executor(worker.executor, function, *args)

    def release(self, worker: Worker) -> None:
        """Give a worker back after a job that ended normally."""
        worker.job_id = None
        if not self.stopping:
            self._idle.append(worker)

    def idle_workers(self) -> list[Worker]:
        return list(self._idle)

    def remove_idle(self, worker: Worker) -> None:
        self._idle.remove(worker)

    async def exit_code(self, worker: Worker) -> int | None:
        """Wait briefly for a dead worker's exit code; negative numbers are signals on POSIX."""
        process = worker.process
        if process is None:
            return None
        await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
        # The executor's management thread reaps the process too, and whichever thread loses that
        # race reads no exit code until the winner has stored it.
        for _ in range(100):
            if process.exitcode is not None:
                return process.exitcode
            await asyncio.sleep(0.01)
        return None

    def replace(self, worker: Worker, on_ready: Callable[[], None]) -> None:
        """Replace a worker in the background; ``on_ready`` runs once the new one is idle."""
        worker.job_id = None
        if self.stopping or worker.index in self._replacing:
            return
        task = asyncio.create_task(self._replace(worker, on_ready), name=f"replace-worker-{worker.index}")
        self._replacing[worker.index] = task
        task.add_done_callback(lambda _: self._replacing.pop(worker.index, None))

    async def _replace(self, worker: Worker, on_ready: Callable[[], None]) -> None:
        old = worker.executor
        worker.executor = None
        if old is not None:
            await _stop_executor(old)
        delay = 0.1
        while not self.stopping:
            try:
                await self._start_worker(worker)
                break
            except Exception as error:
                logger.error("starting worker %d failed (%s: %s); retrying in %.1f s", worker.index,
                             type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
        if self.stopping:
            return
        self.restarts += 1
        logger.info("worker %d replaced: pid %s", worker.index, worker.pid)
        self._idle.append(worker)
        on_ready()

    async def stop(self) -> None:
        """Kill every worker and release the executors without blocking the event loop."""
        self.stopping = True
        self._idle.clear()
        for task in list(self._replacing.values()):
            task.cancel()
        for worker in self.workers:
            worker.kill("stopping")
        executors = [worker.executor for worker in self.workers if worker.executor is not None]
        for worker in self.workers:
            worker.executor = None
        await asyncio.gather(*(_stop_executor(executor) for executor in executors))


async def _stop_executor(executor: ProcessPoolExecutor) -> None:
    """Kill an executor's worker, then shut it down.

    ``shutdown(wait=True)`` would wait for a running job, and ``cancel_futures`` stops only jobs that
    no worker has picked up, so the worker is killed first.
    """
    processes: list[multiprocessing.Process] = list((executor._processes or {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
    try:
        await asyncio.wait_for(asyncio.to_thread(_join_all, processes), STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        logger.error("worker processes %s did not exit within %.1f s",
                     [process.pid for process in processes if process.is_alive()], STOP_TIMEOUT_S)


def _join_all(processes: list[multiprocessing.Process]) -> None:
    for process in processes:
        process.join()


def describe_exit(code: int | None) -> str:
    """Describe a process exit code: ``exit code 3`` or ``signal SIGSEGV (-11)``."""
    if code is None:
        return "an unknown exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name} ({code})"
        except ValueError:
            pass
    return f"exit code {code}"
