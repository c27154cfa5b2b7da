"""HTTP and websocket client helpers shared by the benchmarks: sessions, jobs and closed loops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted"})
NOOP_JOB = {"kind": "noop", "inputs": [], "params": {}}
# Each session may have 100 queued jobs by default (setting max_queued_jobs_per_session), and
# each client has at most one job queued, so 50 clients per session stay clear of 429.
MAX_CLIENTS_PER_SESSION = 50
JOB_TIMEOUT_S = 120.0

Event = dict[str, Any]


class BenchmarkError(RuntimeError):
    """Raised when a server rejects a request or a job does not succeed."""


def check_status(response: httpx.Response, expected: int) -> None:
    if response.status_code != expected:
        raise BenchmarkError(f"{response.request.method} {response.request.url.path} returned "
                             f"{response.status_code}, expected {expected}: {response.text[:500]}")


def ws_url(base_url: str, path: str) -> str:
    return base_url.replace("http://", "ws://", 1) + path


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


# Offload sessions and jobs


class JobWatcher:
    """Final state events of a session's jobs, read from the session websocket.

    A job may end before its POST returns, so the reader or the submitter, whichever gets the job
    id first, creates its future. ``on_event`` sees every event as it arrives, for benchmarks that
    time progress.
    """

    def __init__(self, on_event: Callable[[Event], None] | None = None) -> None:
        self._futures: dict[str, asyncio.Future[Event]] = {}
        self._error: BenchmarkError | None = None
        self._on_event = on_event

    def _future(self, job_id: str) -> asyncio.Future[Event]:
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
                if self._on_event is not None:
                    self._on_event(event)
                if event["type"] == "state" and event["state"] in TERMINAL_STATES:
                    future = self._future(event["job_id"])
                    if not future.done():
                        future.set_result(event)
        except ConnectionClosed as error:
            self._fail(BenchmarkError(f"session websocket closed: {error}"))
            return
        self._fail(BenchmarkError("session websocket closed by the server"))

    def _fail(self, error: BenchmarkError) -> None:
        self._error = error
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)

    async def wait(self, job_id: str) -> Event:
        """Wait for the job's final state event and return it. Raise BenchmarkError after 120 s."""
        try:
            return await asyncio.wait_for(self._future(job_id), JOB_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise BenchmarkError(f"job {job_id} sent no final state event within {JOB_TIMEOUT_S:.0f} s") from None
        finally:
            self._futures.pop(job_id, None)


class JobPoster:
    """``POST`` of JSON bodies to one path over reused HTTP/1.1 keep-alive connections.

    httpx used about 1.5 ms of CPU per request here, as much as the server spends on a whole job, and
    the client shares the machine's CPUs with the server and its workers. Writing the request and
    reading a response with a Content-Length directly on an asyncio stream costs a small fraction of
    that, so the benchmark measures the server more than its own client. Only the job routes use it,
    and they always reply with a Content-Length (Quart sets it on JSON replies).
    """

    def __init__(self, base_url: str, path: str, token: str) -> None:
        address = httpx.URL(base_url)
        self._host = address.host
        self._port = address.port or 80
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {address.host}:{self._port}\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n").encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: list[asyncio.StreamWriter] = []

    async def post(self, payload: Any) -> tuple[int, Any]:
        """Send ``payload`` as JSON and return the response's status code and decoded JSON body."""
        body = json.dumps(payload).encode()
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        reused = bool(self._idle)
        reader, writer = self._idle.pop() if reused else await self._connect()
        try:
            head = await self._exchange(reader, writer, request)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            # Hypercorn closes a keep-alive connection after 5 s idle (keep_alive_timeout), before it
            # reads the next request, so the request is sent again on a new connection.
            writer.close()
            reader, writer = await self._connect()
            head = await self._exchange(reader, writer, request)
        status = int(head[9:12])
        length = _content_length(head)
        reply = json.loads(await reader.readexactly(length)) if length else None
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, reply

    @staticmethod
    async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
        """Send a request and return the response's status line and headers."""
        writer.write(request)
        return await reader.readuntil(b"\r\n\r\n")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        self._open.append(writer)
        return reader, writer

    async def aclose(self) -> None:
        for writer in self._open:
            writer.close()
        for writer in self._open:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._open.clear()
        self._idle.clear()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise BenchmarkError(f"response without Content-Length: {head[:200]!r}")


@dataclass
class OffloadSession:
    session_id: str
    token: str
    client: httpx.AsyncClient
    watcher: JobWatcher
    jobs: JobPoster


async def create_session(client: httpx.AsyncClient) -> tuple[str, str]:
    """Create a session and return its id and token. Later requests of ``client`` send the token."""
    response = await client.post("/api/sessions")
    check_status(response, 201)
    body = response.json()
    client.headers["Authorization"] = f"Bearer {body['token']}"
    return body["session_id"], body["token"]


@asynccontextmanager
async def open_session(base_url: str, connections: int = MAX_CLIENTS_PER_SESSION,
                       on_event: Callable[[Event], None] | None = None) -> AsyncIterator[OffloadSession]:
    """Create a session with its websocket open; delete the session on exit."""
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=JOB_TIMEOUT_S) as client:
        session_id, token = await create_session(client)
        url = ws_url(base_url, f"/api/sessions/{session_id}/ws?token={token}")
        # The server declines compression anyway, and not offering it saves the client's share of the work.
        async with connect(url, compression=None) as connection:
            first = json.loads(await connection.recv())
            if first.get("type") != "snapshot":
                raise BenchmarkError(f"session websocket sent {first.get('type')!r} first, expected 'snapshot'")

            watcher = JobWatcher(on_event)
            reader = asyncio.create_task(watcher.read(connection))
            jobs = JobPoster(base_url, f"/api/sessions/{session_id}/jobs", token)
            try:
                yield OffloadSession(session_id, token, client, watcher, jobs)
            finally:
                reader.cancel()
                await jobs.aclose()
        check_status(await client.delete(f"/api/sessions/{session_id}"), 204)


async def submit_and_wait(session: OffloadSession, job: dict[str, Any]) -> Event:
    """Start a job, wait for its final state and return that event; raise unless it succeeded."""
    status, reply = await session.jobs.post(job)
    if status != 202:
        raise BenchmarkError(f"POST /api/sessions/{session.session_id}/jobs returned {status}, expected 202: "
                             f"{str(reply)[:500]}")
    job_id = reply["job_id"]
    event = await session.watcher.wait(job_id)
    if event["state"] != "succeeded":
        raise BenchmarkError(f"{job['kind']} job {job_id} ended {event['state']}, expected succeeded: "
                             f"{event['job'].get('error')}")
    return event


async def upload_file(session: OffloadSession, name: str, content: bytes | AsyncIterator[bytes],
                      size: int) -> dict[str, Any]:
    """PUT a file into the session and return its record."""
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    response = await session.client.put(f"/api/sessions/{session.session_id}/files/{name}", content=content,
                                        headers=headers)
    check_status(response, 201)
    return response.json()
