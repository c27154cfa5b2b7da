"""``WorkerPool``: the process pool that runs jobs, started eagerly and stopped without blocking the loop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

from .workers.runner import init_worker, sigint_blocked, warm_up

logger = logging.getLogger(__name__)

# Seconds to wait for killed workers to exit.
STOP_TIMEOUT_S = 5.0


class PoolNotRunning(RuntimeError):
    """Raised by ``WorkerPool.submit`` while the pool is stopped or being rebuilt."""


class WorkerPool:
    """A ``ProcessPoolExecutor`` whose workers all start before the first job and ignore SIGINT."""

    def __init__(self, size: int, context: BaseContext, extra_modules: tuple[str, ...],
                 initargs: tuple[Any, ...]) -> None:
        self.size = size
        self._context = context
        self._initargs = initargs
        self._extra_modules = list(extra_modules)
        self._executor: ProcessPoolExecutor | None = None
        self.generation = 0
        self.restarts = 0

    async def start(self) -> None:
        """Build the executor and wait until every worker has imported the job kinds."""
        executor = ProcessPoolExecutor(self.size, mp_context=self._context, initializer=init_worker,
                                       initargs=self._initargs)
        loop = asyncio.get_running_loop()
        # The executor starts one process per submitted call while none is idle, so ``size`` calls
        # submitted together start every worker now rather than on the first jobs.
        with sigint_blocked():
            warm_ups = [loop.run_in_executor(executor, warm_up, self._extra_modules) for _ in range(self.size)]
        try:
            await asyncio.gather(*warm_ups)
        except BaseException:
            await _stop_executor(executor, STOP_TIMEOUT_S)
            raise
        self._executor = executor
        self.generation += 1
        logger.info("worker pool started: %d %s workers, pids %s", self.size,
                    self._context.get_start_method(), sorted(self.pids()))

    def submit(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._executor is None:
            raise PoolNotRunning("worker pool is not running")
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @property
    def running(self) -> bool:
        return self._executor is not None

    def pids(self) -> list[int]:
        if self._executor is None:
            return []
        # Python 3.11 has no public accessor for the worker processes.
        return [process.pid for process in self._executor._processes.values()
                if process.pid is not None]

    async def rebuild(self) -> None:
        """Replace a broken executor; every future of the old one has already failed."""
        await self.stop()
        self.restarts += 1
        await self.start()

    async def stop(self) -> None:
        """Kill the workers and release the executor without blocking the event loop."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await _stop_executor(executor, STOP_TIMEOUT_S)


async def _stop_executor(executor: ProcessPoolExecutor, timeout: float) -> None:
    """Kill an executor's workers, then shut it down.

    ``shutdown(wait=True)`` would wait for running jobs, and ``cancel_futures`` stops only jobs that
    no worker has picked up, so running workers are killed first.
    """
    # Python 3.11 has no public accessor for the worker processes.
    processes: list[multiprocessing.Process] = list((executor._processes or {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
    try:
        await asyncio.wait_for(asyncio.to_thread(_join_all, processes), timeout)
    except asyncio.TimeoutError:
        logger.error("worker processes %s did not exit within %.1f s",
                     [process.pid for process in processes if process.is_alive()], timeout)


def _join_all(processes: list[multiprocessing.Process]) -> None:
    for process in processes:
        process.join()
