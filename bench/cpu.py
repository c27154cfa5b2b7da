"""10 ms CPU jobs: throughput with the pool saturated, and the serving process's event-loop lag meanwhile.

Clients keep four jobs per worker in flight, so the pool never waits for a job. Each ``burn`` job
uses 10 ms of CPU time. The baseline runs the same function through a bare spawn
``ProcessPoolExecutor`` with as many workers. The Offload server samples its loop's lag with the
``--loop-lag-interval-s`` sampler and reports it in /metrics; the baseline's lag is sampled the same
way in the benchmark's own loop, which drives the bare pool. Both p99s are read from the same
histogram buckets, interpolated as Prometheus' histogram_quantile does.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import LAG_BUCKETS
from app.workers.context import JobContext
from bench.client import LoopResult, open_session, run_closed_loop, submit_and_wait
from bench.kinds import BurnParams, burn
from bench.plan import Plan, Servers
from bench.report import Figure, Skipped, at_least, at_most
from bench.throughput import start_bare_pool

LAG_INTERVAL_S = 0.01
LAG_METRIC = "offload_event_loop_lag_seconds"
JOBS_IN_FLIGHT_PER_WORKER = 4
TARGET_SHARE_OF_CORES = 0.95
TARGET_LAG_P99_MS = 10.0


def call_burn(ms: float) -> dict[str, int]:
    context = JobContext("bare", "bare", Path(), events=None, cancel_flags=None)
    return burn(context, [], BurnParams(ms=ms))


async def lag_buckets(client: httpx.AsyncClient) -> list[float]:
    """Return the cumulative counts of the server's lag histogram, one per bucket of LAG_BUCKETS."""
    response = await client.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        if family.name == LAG_METRIC:
            counts = {sample.labels["le"]: sample.value for sample in family.samples
                      if sample.name.endswith("_bucket")}
            return [counts[_label(bound)] for bound in LAG_BUCKETS]
    raise RuntimeError(f"/metrics has no {LAG_METRIC}; start the server with --loop-lag-interval-s")


def _label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)


def quantile(q: float, cumulative: list[float]) -> float:
    """Return the q-quantile in seconds from cumulative bucket counts, interpolating within a bucket."""
    total = cumulative[-1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(LAG_BUCKETS, cumulative):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_bound, lower_count = bound, count
    return lower_bound


class LagSampler:
    """The server's sampler, in the benchmark's own loop, counting into the same buckets."""

    def __init__(self) -> None:
        self.counts = [0.0] * len(LAG_BUCKETS)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_INTERVAL_S
            await asyncio.sleep(LAG_INTERVAL_S)
            lag = max(loop.time() - expected, 0.0)
            for index, bound in enumerate(LAG_BUCKETS):
                if lag <= bound:
                    self.counts[index] += 1

    def __enter__(self) -> LagSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def measure_offload(plan: Plan, base_url: str, concurrency: int) -> tuple[LoopResult, float]:
    job = {"kind": "burn", "inputs": [], "params": {"ms": plan.burn_ms}}
    async with open_session(base_url) as session, httpx.AsyncClient(base_url=base_url) as metrics:
        async def call(index: int) -> None:
            await submit_and_wait(session, job)

        await run_closed_loop(call, 2 * concurrency, concurrency)
        before = await lag_buckets(metrics)
        result = await run_closed_loop(call, plan.burn_jobs, concurrency)
        after = await lag_buckets(metrics)
    return result, quantile(0.99, [a - b for a, b in zip(after, before)])


async def measure_bare(plan: Plan, concurrency: int) -> tuple[LoopResult, float]:
    loop = asyncio.get_running_loop()
    pool: ProcessPoolExecutor = await start_bare_pool(plan.workers)
    try:
        async def call(index: int) -> None:
            await loop.run_in_executor(pool, call_burn, plan.burn_ms)

        await run_closed_loop(call, 2 * concurrency, concurrency)
        with LagSampler() as sampler:
            result = await run_closed_loop(call, plan.burn_jobs, concurrency)
        return result, quantile(0.99, sampler.counts)
    finally:
        await asyncio.to_thread(pool.shutdown)


async def run_cpu_jobs(plan: Plan, servers: Servers) -> tuple[list[Figure], list[Skipped]]:
    concurrency = JOBS_IN_FLIGHT_PER_WORKER * plan.workers
    offload, offload_lag = await measure_offload(plan, servers.offload.url, concurrency)
    bare, bare_lag = await measure_bare(plan, concurrency)
    cores = os.cpu_count() or 1
    target = TARGET_SHARE_OF_CORES * cores * 1000 / plan.burn_ms
    ms = f"{plan.burn_ms:g} ms"
    return [
        Figure(f"{ms} CPU jobs, {concurrency} in flight", "jobs/s", offload.per_second, bare.per_second,
               "bare pool", at_least(target)),
        Figure(f"loop lag p99 during {ms} jobs", "ms", offload_lag * 1000, bare_lag * 1000,
               "bare pool's loop", at_most(TARGET_LAG_P99_MS)),
    ], []
