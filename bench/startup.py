"""Start-up: time from process start to /readyz 200, and whether the first job pays a worker start.

Each run starts a new Offload server on an empty data directory and polls /readyz every 10 ms. The
baseline is ``bench.bare_upload``, a Quart app on Hypercorn with no pool or Manager, timed from
process start to its first 201. Then one client submits a ``noop`` job and 20 more, one at a time:
a worker started on demand under spawn costs hundreds of milliseconds, so the first job's latency
next to the median of the others shows whether the pool was warm.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx

from bench.client import NOOP_JOB, open_session, submit_and_wait
from bench.plan import Plan, Servers
from bench.report import Figure, Skipped, at_most, at_most_above_baseline
from bench.servers import ServerError, ServerProcess, free_port, start_server, stop_server

POLL_INTERVAL_S = 0.01
READY_TIMEOUT_S = 60.0
LATER_JOBS = 20
TARGET_READY_S = 1.0
# A spawned worker imports the app and the job kinds before it runs anything, which takes several
# hundred milliseconds here, so a first job within 50 ms of the others did not pay for one.
TARGET_FIRST_JOB_EXCESS_MS = 50.0


def offload_arguments(port: int, data_dir: Path, workers: int, *extra: str) -> list[str]:
    return ["-m", "app.main", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
            "--workers", str(workers), "--extra-kinds", "bench.kinds", *extra]


def time_until(server: ServerProcess, started: float, method: str, path: str, status: int) -> float:
    """Poll until ``METHOD path`` returns ``status``; return the seconds since ``started``."""
    deadline = started + READY_TIMEOUT_S
    with httpx.Client(base_url=server.url, timeout=1) as client:
        while time.perf_counter() < deadline:
            if server.process.poll() is not None:
                raise ServerError(f"{server.name} server exited with code {server.process.returncode}; "
                                  f"its log ends:\n{server.log_tail()}")
            try:
                if client.request(method, path).status_code == status:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(POLL_INTERVAL_S)
    raise ServerError(f"{server.name} server was not ready within {READY_TIMEOUT_S:.0f} s")


async def first_and_later_jobs(base_url: str) -> tuple[float, float]:
    """Return the first noop job's latency and the median of the next ones, in ms."""
    async with open_session(base_url) as session:
        latencies = []
        for _ in range(1 + LATER_JOBS):
            started = time.perf_counter()
            await submit_and_wait(session, NOOP_JOB)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies[0], statistics.median(latencies[1:])


async def one_run(plan: Plan, directory: Path, index: int) -> tuple[float, float, float, float]:
    port = free_port()
    started = time.perf_counter()
    offload = start_server("Offload (start-up)", offload_arguments(port, directory / f"startup-data-{index}",
                                                                   plan.workers),
                           port, directory / f"startup-offload-{index}.log")
    try:
        ready_s = await asyncio.to_thread(time_until, offload, started, "GET", "/readyz", 200)
        first_ms, later_ms = await first_and_later_jobs(offload.url)
    finally:
        await asyncio.to_thread(stop_server, offload)

    port = free_port()
    started = time.perf_counter()
    bare = start_server("bare (start-up)", ["-m", "bench.bare_upload", str(port)], port,
                        directory / f"startup-bare-{index}.log")
    try:
        bare_s = await asyncio.to_thread(time_until, bare, started, "PUT", "/upload/ready", 201)
    finally:
        await asyncio.to_thread(stop_server, bare)
    return ready_s, bare_s, first_ms, later_ms


async def run_startup(plan: Plan, servers: Servers) -> tuple[list[Figure], list[Skipped]]:
    runs = [await one_run(plan, servers.directory, index) for index in range(plan.startup_runs)]
    ready_s, bare_s, first_ms, later_ms = (statistics.median(values) for values in zip(*runs))
    return [
        Figure("start-up to /readyz 200", "s", ready_s, bare_s, "bare Quart app", at_most(TARGET_READY_S)),
        Figure("first job after start-up", "ms", first_ms, later_ms, f"median of next {LATER_JOBS}",
               at_most_above_baseline(TARGET_FIRST_JOB_EXCESS_MS)),
    ], []
