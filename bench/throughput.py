"""Benchmark Offload against bare baselines measured in the same run, on the same machine.

Run it from the repository root as ``python bench/throughput.py`` or ``python -m bench.throughput``;
``--smoke`` makes it a run of a few seconds for CI, with no targets.

It measures:

* Trivial-job throughput and latency. Concurrent clients submit ``noop`` jobs through the HTTP API
  of a real Offload server and wait for each job's terminal ``state`` event on the session's
  websocket. The baseline runs the same ``noop`` function with the same concurrency through
  ``loop.run_in_executor`` on a bare spawn ``ProcessPoolExecutor`` with as many workers. Latency
  is the time from submit to the end event (Offload) or to the result (baseline), so the
  difference is Offload's cost per job: HTTP, validation, job records, Manager events and the
  websocket.
* Upload speed. One body, streamed in 1 MiB chunks, is sent by ``PUT`` to Offload, which hashes it
  and writes it to disk, and to ``bench.bare_upload``, a Quart app on Hypercorn that only reads it.

The ratio is offload / baseline. For jobs/s and MiB/s, 1.0 means Offload is as fast as the bare
baseline and lower is slower. For latency, higher is slower. The client runs in this process on
the same CPUs as the servers, so on a machine with few CPUs it takes CPU time from them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# When run as a script, sys.path starts with bench/ instead of the repository root. Spawned
# workers inherit sys.path, so the root must be in it before any pool starts.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from app.config import default_pool_size  # noqa: E402
from app.workers.context import JobContext  # noqa: E402
from bench.kinds import NoopParams, noop  # noqa: E402
from bench.servers import (  # noqa: E402
    ServerError, ServerProcess, free_port, start_server, stop_server, wait_ready)

MiB = 1024 * 1024
UPLOAD_RUNS = 3
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted"})
NOOP_JOB = {"kind": "noop", "inputs": [], "params": {}}
# Each session may have 100 queued jobs by default (setting max_queued_jobs_per_session), and
# each client has at most one job queued, so 50 clients per session stay clear of 429.
MAX_CLIENTS_PER_SESSION = 50
# The server queues at most 1000 jobs over all sessions by default (setting max_queued_jobs).
MAX_CONCURRENCY = 1000
JOB_TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 300.0


class BenchmarkError(RuntimeError):
    """Raised when a server rejects a request or a job does not succeed."""


# Options


@dataclass(frozen=True)
class Options:
    workers: int
    jobs: int
    concurrency: int
    upload_mib: int
    smoke: bool
    json_path: Path | None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: use a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {value}: use at least 1")
    return value


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python bench/throughput.py",
                                     description="Benchmark Offload against bare baselines in one run.")
    parser.add_argument("--workers", type=positive_int, default=default_pool_size(),
                        help="worker processes for Offload and for the baseline pool "
                             "(default: the CPU count, at most 61 on Windows)")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="trivial jobs to time on each side (default 2000, or 200 with --smoke)")
    parser.add_argument("--concurrency", type=positive_int, default=8,
                        help=f"clients that each keep one job in flight (default 8, at most {MAX_CONCURRENCY})")
    parser.add_argument("--upload-mb", dest="upload_mib", type=positive_int, default=None,
                        help="upload body size in MiB (default 256, or 16 with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="run for a few seconds with small defaults, for CI. No targets are checked.")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, metavar="PATH",
                        help="also write the figures, settings and machine to PATH as JSON")
    arguments = parser.parse_args(argv)

    if arguments.concurrency > MAX_CONCURRENCY:
        parser.error(f"invalid --concurrency {arguments.concurrency}: the server queues at most "
                     f"{MAX_CONCURRENCY} jobs by default")
    if arguments.jobs is None:
        arguments.jobs = 200 if arguments.smoke else 2000
    if arguments.upload_mib is None:
        arguments.upload_mib = 16 if arguments.smoke else 256
    return Options(arguments.workers, arguments.jobs, arguments.concurrency, arguments.upload_mib,
                   arguments.smoke, arguments.json_path)


# Closed-loop driver


@dataclass
class LoopResult:
    """Calls made by a closed loop of clients, with the wall time and each call's latency in seconds."""

    calls: int
    elapsed_s: float
    latencies_s: list[float] = field(repr=False)

    @property
    def per_second(self) -> float:
        return self.calls / self.elapsed_s

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1000


async def run_closed_loop(call: Callable[[int], Awaitable[None]], total: int, concurrency: int) -> LoopResult:
    """Make ``total`` calls from ``concurrency`` clients and time them.

    Each client starts its next call when its previous one ends. ``call`` receives the client's index.
    """
    remaining = total
    latencies: list[float] = []

    async def client(index: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(index) for index in range(min(concurrency, total))))
    return LoopResult(total, time.perf_counter() - started, latencies)


# Offload jobs


class JobWatcher:
    """Terminal states of a session's jobs, read from the session websocket.

    A job may end before its POST returns, so the reader or the submitter, whichever gets the job
    id first, creates its future.
    """

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[str]] = {}
        self._error: BenchmarkError | None = None

    def _future(self, job_id: str) -> asyncio.Future[str]:
        future = self._futures.get(job_id)
        if future is None:
            future = self._futures[job_id] = asyncio.get_running_loop().create_future()
            if self._error is not None:
                future.set_exception(self._error)
        return future

    async def read(self, connection: ClientConnection) -> None:
        try:
            async for message in connection:
                event = json.loads(message)
                if event["type"] == "state" and event["state"] in TERMINAL_STATES:
                    future = self._future(event["job_id"])
                    if not future.done():
                        future.set_result(event["state"])
        except ConnectionClosed as error:
            self._fail(BenchmarkError(f"session websocket closed: {error}"))
            return
        self._fail(BenchmarkError("session websocket closed by the server"))

    def _fail(self, error: BenchmarkError) -> None:
        self._error = error
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)

    async def wait(self, job_id: str) -> str:
        """Wait for the job's terminal state and return it. Raise BenchmarkError after 60 s."""
        try:
            return await asyncio.wait_for(self._future(job_id), JOB_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise BenchmarkError(f"job {job_id} sent no terminal state event within "
                                 f"{JOB_TIMEOUT_S:.0f} s") from None
        finally:
            self._futures.pop(job_id, None)


@dataclass
class OffloadSession:
    session_id: str
    client: httpx.AsyncClient
    watcher: JobWatcher


def check_status(response: httpx.Response, expected: int) -> None:
    if response.status_code != expected:
        raise BenchmarkError(f"{response.request.method} {response.request.url.path} returned "
                             f"{response.status_code}, expected {expected}: {response.text[:500]}")


async def create_session(client: httpx.AsyncClient) -> tuple[str, str]:
    """Create a session and return its id and token. Later requests of ``client`` send the token."""
    response = await client.post("/api/sessions")
    check_status(response, 201)
    body = response.json()
    client.headers["Authorization"] = f"Bearer {body['token']}"
    return body["session_id"], body["token"]


@asynccontextmanager
async def open_session(base_url: str, connections: int) -> AsyncIterator[OffloadSession]:
    """Create a session with its websocket open; delete the session on exit."""
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=JOB_TIMEOUT_S) as client:
        session_id, token = await create_session(client)
        ws_url = f"{base_url.replace('http://', 'ws://', 1)}/api/sessions/{session_id}/ws?token={token}"
        async with connect(ws_url) as connection:
            first = json.loads(await connection.recv())
            if first.get("type") != "snapshot":
                raise BenchmarkError(f"session websocket sent {first.get('type')!r} first, expected 'snapshot'")

            watcher = JobWatcher()
            reader = asyncio.create_task(watcher.read(connection))
            try:
                yield OffloadSession(session_id, client, watcher)
            finally:
                reader.cancel()
        check_status(await client.delete(f"/api/sessions/{session_id}"), 204)


async def submit_and_wait(session: OffloadSession) -> None:
    response = await session.client.post(f"/api/sessions/{session.session_id}/jobs", json=NOOP_JOB)
    check_status(response, 202)
    job_id = response.json()["job_id"]
    state = await session.watcher.wait(job_id)
    if state != "succeeded":
        raise BenchmarkError(f"noop job {job_id} ended {state}, expected succeeded")


async def measure_offload_jobs(base_url: str, options: Options) -> LoopResult:
    session_count = math.ceil(options.concurrency / MAX_CLIENTS_PER_SESSION)
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(open_session(base_url, MAX_CLIENTS_PER_SESSION))
                    for _ in range(session_count)]

        async def call(index: int) -> None:
            await submit_and_wait(sessions[index // MAX_CLIENTS_PER_SESSION])

        await run_closed_loop(call, warm_up_calls(options), options.concurrency)
        return await run_closed_loop(call, options.jobs, options.concurrency)


def warm_up_calls(options: Options) -> int:
    """Return the untimed calls made before each timed loop: enough to open every connection."""
    return 2 * max(options.concurrency, options.workers)


# Baseline jobs


def call_noop() -> dict[str, int]:
    """Run the noop kind's function in a bare pool worker: no events, no job record, no Manager."""
    context = JobContext("bare", "bare", Path(), events=None, cancel_flags=None)
    return noop(context, [], NoopParams())


def worker_pid() -> int:
    return os.getpid()


async def measure_bare_jobs(options: Options) -> LoopResult:
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(options.workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        # The executor starts a process per submitted call while none is idle, so submitting one
        # call per worker at once starts them all before the timed loop.
        await asyncio.gather(*(loop.run_in_executor(pool, worker_pid) for _ in range(options.workers)))

        async def call(index: int) -> None:
            await loop.run_in_executor(pool, call_noop)

        await run_closed_loop(call, warm_up_calls(options), options.concurrency)
        return await run_closed_loop(call, options.jobs, options.concurrency)
    finally:
        await asyncio.to_thread(pool.shutdown)


# Uploads


@dataclass(frozen=True)
class UploadBody:
    """``count`` copies of one random 1 MiB chunk, yielded while sending so the body is never whole in memory."""

    chunk: bytes
    count: int
    sha256: str

    @classmethod
    def random(cls, mib: int) -> UploadBody:
        chunk = os.urandom(MiB)
        digest = hashlib.sha256()
        for _ in range(mib):
            digest.update(chunk)
        return cls(chunk, mib, digest.hexdigest())

    @property
    def size(self) -> int:
        return len(self.chunk) * self.count

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


async def upload_to_offload(client: httpx.AsyncClient, session_id: str, body: UploadBody) -> float:
    """Upload to Offload, check the size and SHA-256, then delete the file. Return MiB/s."""
    elapsed, record = await timed_put(client, f"/api/sessions/{session_id}/files/bench.bin", body)
    if record["size"] != body.size or record["sha256"] != body.sha256:
        raise BenchmarkError(f"Offload stored {record['size']} bytes with SHA-256 {record['sha256']}, "
                             f"expected {body.size} bytes with SHA-256 {body.sha256}")
    check_status(await client.delete(f"/api/sessions/{session_id}/files/{record['file_id']}"), 204)
    return body.count / elapsed


async def upload_to_bare(client: httpx.AsyncClient, body: UploadBody) -> float:
    elapsed, reply = await timed_put(client, "/upload/bench.bin", body)
    if reply["size"] != body.size:
        raise BenchmarkError(f"bare server read {reply['size']} bytes, expected {body.size}")
    return body.count / elapsed


async def measure_uploads(offload_url: str, bare_url: str, mib: int) -> tuple[float, float]:
    """Return the median MiB/s of Offload and of the bare server over 3 uploads each."""
    body = await asyncio.to_thread(UploadBody.random, mib)
    offload_speeds: list[float] = []
    bare_speeds: list[float] = []
    async with (httpx.AsyncClient(base_url=offload_url, timeout=UPLOAD_TIMEOUT_S) as offload,
                httpx.AsyncClient(base_url=bare_url, timeout=UPLOAD_TIMEOUT_S) as bare):
        session_id, _ = await create_session(offload)
        # Alternating the servers spreads slow drift, such as page cache writeback, over both.
        for _ in range(UPLOAD_RUNS):
            offload_speeds.append(await upload_to_offload(offload, session_id, body))
            bare_speeds.append(await upload_to_bare(bare, body))
        check_status(await offload.delete(f"/api/sessions/{session_id}"), 204)
    return statistics.median(offload_speeds), statistics.median(bare_speeds)


# Report


@dataclass(frozen=True)
class Figure:
    name: str
    offload: float
    baseline: float

    @property
    def ratio(self) -> float:
        return self.offload / self.baseline


def format_number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": f"{platform.python_implementation()} {platform.python_version()}"}


def print_report(figures: list[Figure], options: Options) -> None:
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['platform']}, {info['python']}")
    print(f"settings: {options.workers} workers, {options.jobs} jobs, concurrency {options.concurrency}, "
          f"upload {options.upload_mib} MiB x {UPLOAD_RUNS} (median)")
    width = max(len(figure.name) for figure in figures)
    print(f"{'figure':<{width}}  {'offload':>10}  {'baseline':>10}  {'ratio':>7}")
    for figure in figures:
        print(f"{figure.name:<{width}}  {format_number(figure.offload):>10}  "
              f"{format_number(figure.baseline):>10}  {figure.ratio:>7.3g}")


def write_json(path: Path, figures: list[Figure], options: Options, elapsed_s: float) -> None:
    settings = {"workers": options.workers, "jobs": options.jobs, "concurrency": options.concurrency,
                "upload_mib": options.upload_mib, "upload_runs": UPLOAD_RUNS, "smoke": options.smoke}
    document = {
        "machine": machine(),
        "settings": settings,
        "figures": [{**asdict(figure), "ratio": figure.ratio} for figure in figures],
        "elapsed_s": elapsed_s,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# Main


async def measure(offload: ServerProcess, bare: ServerProcess, options: Options) -> list[Figure]:
    offload_jobs = await measure_offload_jobs(offload.url, options)
    bare_jobs = await measure_bare_jobs(options)
    offload_upload, bare_upload = await measure_uploads(offload.url, bare.url, options.upload_mib)
    return [
        Figure("trivial jobs/s", offload_jobs.per_second, bare_jobs.per_second),
        Figure("trivial job p50 latency, ms", offload_jobs.p50_ms, bare_jobs.p50_ms),
        Figure("upload MiB/s", offload_upload, bare_upload),
    ]


def start_servers(directory: Path, options: Options, servers: list[ServerProcess]) -> None:
    """Start Offload and the bare upload server and wait until both are ready.

    Each server goes into ``servers`` as soon as it starts, so the caller can stop it even when
    this raises.
    """
    port = free_port()
    servers.append(start_server("Offload", [
        "-m", "app.main", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(directory / "data"),
        "--workers", str(options.workers), "--extra-kinds", "bench.kinds",
    ], port, directory / "offload.log"))
    port = free_port()
    servers.append(start_server("bare upload", ["-m", "bench.bare_upload", str(port)], port,
                                directory / "bare_upload.log"))

    wait_ready(servers[0], "GET", "/readyz", 200)
    wait_ready(servers[1], "PUT", "/upload/ready", 201)


def stop_servers(servers: list[ServerProcess]) -> tuple[bool, list[str]]:
    """Stop every server. Return whether all exited with code 0, and notes on exits and log problems."""
    clean = True
    notes: list[str] = []
    for server in servers:
        code = stop_server(server)
        if code != 0:
            clean = False
            outcome = "was killed after 15 s" if code is None else f"exited with code {code}"
            notes.append(f"{server.name} server {outcome}; its log ends:\n{server.log_tail()}")
        problems = server.problem_lines()
        if problems:
            notes.append(f"{server.name} server logged {len(problems)} warnings or errors, the first ones:\n"
                         + "\n".join(problems[:10]))
    return clean, notes


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    servers: list[ServerProcess] = []
    figures: list[Figure] = []
    try:
        start_servers(directory, options, servers)
        figures = asyncio.run(measure(servers[0], servers[1], options))
    except (ServerError, BenchmarkError, httpx.HTTPError, OSError) as error:
        print(f"benchmark failed: {type(error).__name__}: {error}", file=sys.stderr)
    finally:
        clean, notes = stop_servers(servers)
        remove_directory(directory)
    elapsed = time.perf_counter() - started

    if figures:
        print_report(figures, options)
        print(f"finished in {elapsed:.1f} s")
    # Printed after the table, so the table stays on top in a terminal.
    for note in notes:
        print(note, file=sys.stderr)
    if not figures:
        return 1

    if options.json_path is not None:
        write_json(options.json_path, figures, options, elapsed)
    return 0 if clean else 1


def remove_directory(directory: Path) -> None:
    try:
        shutil.rmtree(directory)
    except OSError as error:
        print(f"could not remove temporary directory {directory}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
