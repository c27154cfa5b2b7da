"""Trivial-job throughput and latency through the HTTP API, and upload speed and memory.

Trivial jobs: concurrent clients submit ``noop`` jobs through the HTTP API of a real Offload server
and wait for each job's final ``state`` event on the session's websocket. The baseline runs the
same ``noop`` function with the same concurrency through ``loop.run_in_executor`` on a bare spawn
``ProcessPoolExecutor`` with as many workers. So the difference is Offload's cost per job: HTTP,
validation, job records, the Manager, the journal and the websocket. With ``--with-celery`` the
same Offload figure is also compared with Celery (bench/celery_baseline.py).

Uploads: one body, streamed in 1 MiB chunks, is sent by ``PUT`` to Offload, which hashes it and
writes it to disk, and to ``bench.bare_upload``, a Quart app on Hypercorn that only reads it.
Memory growth is the serving process's peak resident memory during one large upload minus its
resident memory before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import statistics
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.workers.context import JobContext
from bench import celery_baseline
from bench.client import (
    MAX_CLIENTS_PER_SESSION, NOOP_JOB, BenchmarkError, LoopResult, check_status, create_session, open_session,
    run_closed_loop, submit_and_wait)
from bench.kinds import NoopParams, noop
from bench.plan import Plan, Servers
from bench.report import Figure, Skipped, at_least, at_most, below, ratio_at_least
from bench.servers import PeakMemory, ServerProcess, free_port, start_server, stop_server, wait_ready

MiB = 1024 * 1024
UPLOAD_RUNS = 3
UPLOAD_TIMEOUT_S = 600.0
TARGET_JOBS_PER_S = 1000.0
TARGET_P50_MS = 3.0
TARGET_CELERY_RATIO = 2.0
TARGET_UPLOAD_RATIO = 0.9
TARGET_MEMORY_MIB = 64.0


# Trivial jobs


def warm_up_calls(workers: int, concurrency: int) -> int:
    """Return the untimed calls made before each timed loop: enough to open every connection."""
    return 2 * max(concurrency, workers)


async def measure_offload_jobs(base_url: str, workers: int, jobs: int, concurrency: int) -> LoopResult:
    if concurrency > MAX_CLIENTS_PER_SESSION:
        raise BenchmarkError(f"invalid concurrency {concurrency}: use at most {MAX_CLIENTS_PER_SESSION}")
    async with open_session(base_url) as session:
        async def call(index: int) -> None:
            await submit_and_wait(session, NOOP_JOB)

        await run_closed_loop(call, warm_up_calls(workers, concurrency), concurrency)
        return await run_closed_loop(call, jobs, concurrency)


def call_noop() -> dict[str, int]:
    """Run the noop kind's function in a bare pool worker: no events, no job record, no Manager."""
    context = JobContext("bare", "bare", Path(), events=None, cancel_flags=None)
    return noop(context, [], NoopParams())


def worker_pid() -> int:
    return os.getpid()


async def start_bare_pool(workers: int) -> ProcessPoolExecutor:
    """Start a spawn pool with every worker up, so no timed call pays a process start."""
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    # The executor starts a process per submitted call while none is idle, so submitting one
    # call per worker at once starts them all.
    await asyncio.gather(*(loop.run_in_executor(pool, worker_pid) for _ in range(workers)))
    return pool


async def measure_bare_jobs(pool: ProcessPoolExecutor, workers: int, jobs: int, concurrency: int) -> LoopResult:
    loop = asyncio.get_running_loop()

    async def call(index: int) -> None:
        await loop.run_in_executor(pool, call_noop)

    await run_closed_loop(call, warm_up_calls(workers, concurrency), concurrency)
    return await run_closed_loop(call, jobs, concurrency)


async def measure_bare_api_jobs(plan: Plan, directory: Path) -> LoopResult:
    """Run the trivial jobs against ``bench.bare_api``: the same HTTP and websocket traffic, no job machinery."""
    port = free_port()
    server = start_server("bare API", ["-m", "bench.bare_api", str(port)], port, directory / "bare_api.log")
    try:
        await asyncio.to_thread(wait_ready, server, "POST", "/api/sessions", 201)
        return await measure_offload_jobs(server.url, plan.workers, plan.trivial_jobs, plan.concurrency)
    finally:
        await asyncio.to_thread(stop_server, server)


async def run_trivial_jobs(plan: Plan, servers: Servers) -> tuple[list[Figure], list[Skipped]]:
    url = servers.offload.url
    single_jobs = max(plan.trivial_jobs // 5, 50)
    many = await measure_offload_jobs(url, plan.workers, plan.trivial_jobs, plan.concurrency)
    one = await measure_offload_jobs(url, plan.workers, single_jobs, 1)
    pool = await start_bare_pool(plan.workers)
    try:
        bare_many = await measure_bare_jobs(pool, plan.workers, plan.trivial_jobs, plan.concurrency)
        bare_one = await measure_bare_jobs(pool, plan.workers, single_jobs, 1)
    finally:
        await asyncio.to_thread(pool.shutdown)
    bare_api = await measure_bare_api_jobs(plan, servers.directory)

    clients = f"{plan.concurrency} clients"
    figures = [
        Figure(f"trivial jobs, {clients}", "jobs/s", many.per_second, bare_many.per_second, "bare pool",
               at_least(TARGET_JOBS_PER_S)),
        Figure(f"trivial job p50, {clients}", "ms", many.p50_ms, bare_many.p50_ms, "bare pool",
               at_most(TARGET_P50_MS)),
        Figure("trivial job p50, 1 client", "ms", one.p50_ms, bare_one.p50_ms, "bare pool", at_most(TARGET_P50_MS)),
        # No target: this shows how much of the cost per job the framework alone takes.
        Figure(f"trivial jobs vs the same HTTP and websocket traffic, {clients}", "jobs/s", many.per_second,
               bare_api.per_second, "bare Quart API"),
    ]
    skipped: list[Skipped] = []
    celery = await asyncio.to_thread(celery_baseline.measure, plan, servers.directory)
    if isinstance(celery, str):
        skipped.append(Skipped("trivial jobs vs Celery", celery))
    else:
        figures.append(Figure(f"trivial jobs vs Celery, {clients}", "jobs/s", many.per_second, celery,
                              "Celery 5 + Redis", ratio_at_least(TARGET_CELERY_RATIO)))
    return figures, skipped


# Uploads


@dataclass(frozen=True)
class UploadBody:
    """``count`` copies of one random 1 MiB chunk, yielded while sending so the body is never whole in memory."""

    chunk: bytes
    count: int

    @classmethod
    def random(cls, mib: int) -> UploadBody:
        return cls(os.urandom(MiB), mib)

    @property
    def size(self) -> int:
        return len(self.chunk) * self.count

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for _ in range(self.count):
            digest.update(self.chunk)
        return digest.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            yield self.chunk


async def timed_put(client: httpx.AsyncClient, path: str, body: UploadBody) -> tuple[float, dict[str, Any]]:
    """PUT the body with a Content-Length. Return the seconds until the 201 response, and its JSON."""
    headers = {"Content-Length": str(body.size), "Content-Type": "application/octet-stream"}
    started = time.perf_counter()
    response = await client.put(path, content=body.chunks(), headers=headers)
    elapsed = time.perf_counter() - started
    check_status(response, 201)
    return elapsed, response.json()


async def upload_to_offload(client: httpx.AsyncClient, session_id: str, body: UploadBody,
                            sha256: str | None) -> float:
    """Upload to Offload, check the size and, if given, the SHA-256, then delete the file. Return MiB/s."""
    elapsed, record = await timed_put(client, f"/api/sessions/{session_id}/files/bench.bin", body)
    if record["size"] != body.size or (sha256 is not None and record["sha256"] != sha256):
        raise BenchmarkError(f"Offload stored {record['size']} bytes with SHA-256 {record['sha256']}, "
                             f"expected {body.size} bytes with SHA-256 {sha256}")
    check_status(await client.delete(f"/api/sessions/{session_id}/files/{record['file_id']}"), 204)
    return body.count / elapsed


async def upload_to_bare(client: httpx.AsyncClient, body: UploadBody) -> float:
    elapsed, reply = await timed_put(client, "/upload/bench.bin", body)
    if reply["size"] != body.size:
        raise BenchmarkError(f"bare server read {reply['size']} bytes, expected {body.size}")
    return body.count / elapsed


async def measure_memory(server: ServerProcess, upload: Any) -> float:
    """Run ``upload()`` and return the server's peak memory growth in MiB."""
    with PeakMemory(server.process.pid) as memory:
        await upload()
    return memory.growth / MiB


async def run_uploads(plan: Plan, servers: Servers) -> tuple[list[Figure], list[Skipped]]:
    body = await asyncio.to_thread(UploadBody.random, plan.upload_mib)
    sha256 = await asyncio.to_thread(body.sha256)
    offload_speeds: list[float] = []
    bare_speeds: list[float] = []
    async with (httpx.AsyncClient(base_url=servers.offload.url, timeout=UPLOAD_TIMEOUT_S) as offload,
                httpx.AsyncClient(base_url=servers.bare.url, timeout=UPLOAD_TIMEOUT_S) as bare):
        session_id, _ = await create_session(offload)
        # Alternating the servers spreads slow drift, such as page cache writeback, over both.
        for _ in range(UPLOAD_RUNS):
            offload_speeds.append(await upload_to_offload(offload, session_id, body, sha256))
            bare_speeds.append(await upload_to_bare(bare, body))

        big = UploadBody(body.chunk, plan.memory_upload_mib)
        offload_growth = await measure_memory(servers.offload,
                                              lambda: upload_to_offload(offload, session_id, big, None))
        bare_growth = await measure_memory(servers.bare, lambda: upload_to_bare(bare, big))
        check_status(await offload.delete(f"/api/sessions/{session_id}"), 204)

    size = f"{plan.memory_upload_mib:,} MiB" if plan.memory_upload_mib < 1024 else f"{plan.memory_upload_mib // 1024} GiB"
    figures = [
        Figure(f"upload, {plan.upload_mib} MiB", "MiB/s", statistics.median(offload_speeds),
               statistics.median(bare_speeds), "bare Quart route", ratio_at_least(TARGET_UPLOAD_RATIO)),
        # Growth may be 0 on either side, so the ratio can be n/a; the target is on the value.
        Figure(f"server memory growth, {size} upload", "MiB", offload_growth, bare_growth, "bare Quart route",
               below(TARGET_MEMORY_MIB)),
    ]
    return figures, []
