"""Soak test: a real Offload server under steady load, with worker kills and dropped websockets.

Run it from the repository root as ``python bench/soak.py [--seconds N]`` or ``python -m bench.soak``
(default 600 s). For that long, at the same time:

* 16 clients in 4 sessions each keep one job in flight: mostly ``noop``, 10% ``spin`` of 0.05-0.3 s;
* every 2 s one of the 2 pool workers is killed, one running a ``spin`` job when there is one;
* websocket clients drop their connection without a close handshake at random moments, and most
  reconnect with ``?after=SEQ``;
* ``/readyz`` is polled every 50 ms.

Then it stops submitting, waits up to 60 s for every job to end, and prints one table. A job whose
worker was killed on both of its attempts fails with ``WorkerCrashed``: "failed with cause". Any
other job that did not succeed is "failed without cause", and a job still not terminal is "lost".
A seq gap is an event missing from a stream. The server merges a slow client's unsent progress
events, so each skip is checked against the backlog, and a skip of only progress events counts as
merged. The exit status is 1 if a job was lost or failed without cause, a stream had a gap or a
duplicate, a request failed, or the server did not stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# When run as a script, sys.path starts with bench/ instead of the repository root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402

from bench.servers import (  # noqa: E402
    ServerError, ServerProcess, free_port, start_server, stop_server, wait_ready)

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted"})
SESSIONS = 4
CLIENTS_PER_SESSION = 4
DROPPERS_PER_SESSION = 2
SPIN_SHARE = 0.1
RESUME_SHARE = 0.75
KILL_INTERVAL_S = 2.0
READYZ_INTERVAL_S = 0.05
REQUEST_TIMEOUT_S = 30.0
JOB_WAIT_S = 30.0
DRAIN_TIMEOUT_S = 60.0
# With the server's default --crash-retries 1, a job fails once its worker died on 2 attempts.
KILLED_TWICE_ATTEMPTS = 2
# Loop bounds far above what a 600 s run reaches, so the run's deadline ends the loops first.
MAX_ITERATIONS = 1_000_000
# Log lines that the kills cause. They report that a job's worker died, or an idle or starting one.
EXPECTED_LOG_MARKERS = ("killed its worker", "replacing it", "failed (BrokenProcessPool", "queued again")
PID_MESSAGE = re.compile(r"pid (\d+)")


@dataclass
class Stats:
    """Counters and findings of one run, shared by every task."""

    submitted: int = 0
    rejected_429: int = 0
    request_errors: int = 0
    kills: list[tuple[float, int, str | None]] = field(default_factory=list)  # (monotonic s, pid, spin job id)
    ws_drops: int = 0
    ws_resumes: int = 0
    seq_gaps: int = 0
    seq_duplicates: int = 0
    progress_merges: int = 0
    readyz_max_down_s: float = 0.0
    readyz_max_latency_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)


@dataclass
class Session:
    """An API session: its client, the jobs submitted in it, and those its streams reported ended."""

    session_id: str
    token: str
    client: httpx.AsyncClient
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> kind
    ended: set[str] = field(default_factory=set)
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    running_spins: set[str] = field(default_factory=set)
    audits: set[asyncio.Task[None]] = field(default_factory=set)

    def mark_ended(self, job_id: str) -> None:
        self.ended.add(job_id)
        waiter = self.waiters.pop(job_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def open_ws(session: Session, after: int | None) -> ClientConnection:
    url = f"{session.client.base_url}/api/sessions/{session.session_id}/ws?token={session.token}"
    url = url.replace("http://", "ws://", 1) + ("" if after is None else f"&after={after}")
    # A snapshot contains every job record of the session, so it outgrows the 1 MiB default.
    return await connect(url, max_size=None, open_timeout=REQUEST_TIMEOUT_S, close_timeout=2)


# Websocket streams


async def follow(connection: ClientConnection, session: Session, stats: Stats, last_seq: int | None,
                 seconds: float | None) -> int | None:
    """Read events for ``seconds`` or until the server closes, checking each seq. Return the last seq read."""
    try:
        async with asyncio.timeout(seconds):
            async for message in connection:
                event = json.loads(message)
                if event["type"] == "snapshot":
                    if last_seq is not None:
                        stats.seq_gaps += 1
                        stats.note(f"session {session.session_id}: resume after {last_seq} sent a snapshot")
                    for job in event["jobs"]:
                        if job["state"] in TERMINAL_STATES:
                            session.mark_ended(job["job_id"])
                    last_seq = event["seq"]
                    continue

                seq = event["seq"]
                if last_seq is not None and seq <= last_seq:
                    stats.seq_duplicates += 1
                    stats.note(f"session {session.session_id}: seq {seq} arrived after seq {last_seq}")
                    continue
                if last_seq is not None and seq > last_seq + 1:
                    audit = asyncio.create_task(audit_skip(session, stats, last_seq, seq))
                    session.audits.add(audit)
                    audit.add_done_callback(session.audits.discard)
                last_seq = seq
                if event["type"] == "state" and event["state"] in TERMINAL_STATES:
                    session.mark_ended(event["job_id"])
    except (TimeoutError, ConnectionClosed):
        pass
    return last_seq


async def audit_skip(session: Session, stats: Stats, last_seq: int, seq: int) -> None:
    """Classify a seq skip by reading the backlog. A skip of only progress events is a merge, else a gap."""
    missing = set(range(last_seq + 1, seq))
    lost: list[str] = []
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            async with await open_ws(session, last_seq) as connection:
                while missing:
                    event = json.loads(await connection.recv())
                    if event["type"] == "snapshot" or event["seq"] >= seq:
                        break
                    missing.discard(event["seq"])
                    if event["type"] != "progress":
                        lost.append(f"{event['seq']} ({event['type']})")
    except TimeoutError:
        lost.append(f"backlog read timed out after {REQUEST_TIMEOUT_S:.0f} s")
    except (OSError, ConnectionClosed, InvalidHandshake) as error:
        lost.append(f"backlog read failed: {error!r}")
    if missing and not lost:
        lost.append(f"{sorted(missing)[:5]} not in the backlog")

    if lost:
        stats.seq_gaps += 1
        stats.note(f"session {session.session_id}: seq jumped {last_seq} -> {seq}, missing {lost[:5]}")
    else:
        stats.progress_merges += 1


async def track(session: Session, stats: Stats) -> None:
    """Keep one connection open to learn when jobs end, and reconnect with ?after=SEQ whenever it closes."""
    last_seq: int | None = None
    for _ in range(MAX_ITERATIONS):
        try:
            async with await open_ws(session, last_seq) as connection:
                last_seq = await follow(connection, session, stats, last_seq, None)
        except (OSError, InvalidHandshake) as error:
            stats.request_errors += 1
            stats.note(f"session {session.session_id}: websocket connect failed: {error!r}")
            await asyncio.sleep(0.5)


async def drop_repeatedly(session: Session, stats: Stats, rng: random.Random) -> None:
    """Connect, read for 0.2-2 s, drop the TCP connection, and reconnect, mostly with ?after=SEQ."""
    last_seq: int | None = None
    for _ in range(MAX_ITERATIONS):
        if last_seq is not None and rng.random() < RESUME_SHARE:
            stats.ws_resumes += 1
        else:
            last_seq = None
        try:
            connection = await open_ws(session, last_seq)
        except (OSError, InvalidHandshake) as error:
            stats.request_errors += 1
            stats.note(f"session {session.session_id}: websocket connect failed: {error!r}")
            await asyncio.sleep(0.5)
            continue

        try:
            last_seq = await follow(connection, session, stats, last_seq, rng.uniform(0.2, 2.0))
        finally:
            drop(connection, reset=rng.random() < 0.5)
        stats.ws_drops += 1
        await asyncio.sleep(rng.uniform(0.0, 0.3))


def drop(connection: ClientConnection, reset: bool) -> None:
    """Close the TCP connection without a websocket close handshake, with RST instead of FIN if ``reset``."""
    sock = connection.transport.get_extra_info("socket")
    if reset and sock is not None:
        # A zero SO_LINGER timeout makes close() send RST. struct linger is two C ints on POSIX and
        # two u_shorts on Windows.
        linger = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    connection.transport.abort()


# Jobs


async def submit_repeatedly(session: Session, stats: Stats, stop: asyncio.Event, rng: random.Random) -> None:
    """Keep one job in flight until ``stop`` is set, waiting out 429 responses."""
    path = f"/api/sessions/{session.session_id}/jobs"
    for _ in range(MAX_ITERATIONS):
        if stop.is_set():
            return
        if rng.random() < SPIN_SHARE:
            kind, params = "spin", {"seconds": round(rng.uniform(0.05, 0.3), 3)}
        else:
            kind, params = "noop", {}
        try:
            response: httpx.Response | None = await session.client.post(
                path, json={"kind": kind, "inputs": [], "params": params})
        except httpx.HTTPError as error:
            response = None
            stats.note(f"POST {path} failed: {error!r}")
        if response is not None and response.status_code == 429:
            stats.rejected_429 += 1
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        if response is None or response.status_code != 202:
            stats.request_errors += 1
            if response is not None:
                stats.note(f"POST {path} returned {response.status_code}: {response.text[:200]}")
            await asyncio.sleep(0.5)
            continue

        job_id: str = response.json()["job_id"]
        session.jobs[job_id] = kind
        stats.submitted += 1
        await wait_job(session, job_id, kind == "spin")


async def wait_job(session: Session, job_id: str, spin: bool) -> None:
    """Wait up to 30 s for the session stream to report the job's end."""
    if spin:
        session.running_spins.add(job_id)
    if job_id not in session.ended:
        waiter = session.waiters[job_id] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(waiter, JOB_WAIT_S)
        except TimeoutError:
            # The final check reads the job list, so a job whose end was missed here still counts.
            session.waiters.pop(job_id, None)
    session.running_spins.discard(job_id)


# Worker kills and /readyz


def spawned_children(server_pid: int) -> list[psutil.Process]:
    """Return the server's children started by multiprocessing's spawn, oldest first."""
    spawned: list[tuple[float, psutil.Process]] = []
    for child in psutil.Process(server_pid).children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                spawned.append((child.create_time(), child))
        except psutil.Error:
            pass
    return [child for _, child in sorted(spawned, key=lambda item: item[0])]


async def spin_worker_pids(sessions: list[Session]) -> dict[int, tuple[str, int]]:
    """Map worker pids to the running ``spin`` job that reports each in its progress message, and its attempt."""
    async def read(session: Session, job_id: str) -> tuple[int, tuple[str, int]] | None:
        try:
            response = await session.client.get(f"/api/sessions/{session.session_id}/jobs/{job_id}")
        except httpx.HTTPError:
            return None
        record = response.json() if response.status_code == 200 else {}
        match = PID_MESSAGE.fullmatch((record.get("progress") or {}).get("message") or "")
        if record.get("state") != "running" or match is None:
            return None
        return int(match.group(1)), (job_id, record["attempts"])

    found = await asyncio.gather(*(read(session, job_id) for session in sessions
                                   for job_id in list(session.running_spins)))
    return dict(item for item in found if item is not None)


async def kill_repeatedly(server_pid: int, sessions: list[Session], stats: Stats, stop: asyncio.Event,
                          rng: random.Random) -> None:
    """Kill one pool worker every 2 s, preferring one that runs a retried ``spin`` job, then any ``spin`` job."""
    # The server starts the Manager before the pool, so it is the oldest spawned child.
    manager_pid = spawned_children(server_pid)[0].pid
    for _ in range(MAX_ITERATIONS):
        try:
            await asyncio.wait_for(stop.wait(), KILL_INTERVAL_S)
            return
        except TimeoutError:
            pass
        workers = [child for child in spawned_children(server_pid) if child.pid != manager_pid]
        spin_pids = await spin_worker_pids(sessions)
        spinning = [worker for worker in workers if worker.pid in spin_pids]
        # Killing a retried job's worker again fails the job, and the final check must accept that.
        retried = [worker for worker in spinning if spin_pids[worker.pid][1] >= KILLED_TWICE_ATTEMPTS]
        candidates = retried or spinning or workers
        if not candidates:
            stats.note(f"no pool worker was alive at {time.monotonic():.1f} s")
            continue

        target = rng.choice(candidates)
        try:
            target.kill()
        except psutil.NoSuchProcess:
            continue
        job_id = spin_pids[target.pid][0] if target.pid in spin_pids else None
        stats.kills.append((time.monotonic(), target.pid, job_id))


async def poll_readyz(base_url: str, stats: Stats, stop: asyncio.Event) -> None:
    """Record the longest stretch in which ``/readyz`` returned no 200 within 1 s, and the slowest response."""
    down_since: float | None = None
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        for _ in range(MAX_ITERATIONS):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                ready = (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                ready = False
            finished = time.monotonic()
            stats.readyz_max_latency_s = max(stats.readyz_max_latency_s, finished - started)

            if ready:
                down_since = None
            else:
                down_since = started if down_since is None else down_since
                stats.readyz_max_down_s = max(stats.readyz_max_down_s, finished - down_since)
            await asyncio.sleep(max(0.0, READYZ_INTERVAL_S - (finished - started)))


# The run


async def create_session(base_url: str) -> Session:
    client = httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
    response = await client.post("/api/sessions")
    response.raise_for_status()
    body = response.json()
    client.headers["Authorization"] = f"Bearer {body['token']}"
    return Session(body["session_id"], body["token"], client)


async def final_records(sessions: list[Session]) -> dict[str, dict[str, Any]]:
    """Read every session's job list until all submitted jobs are terminal, for up to 60 s."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    records: dict[str, dict[str, Any]] = {}
    for _ in range(int(DRAIN_TIMEOUT_S)):
        for session in sessions:
            response = await session.client.get(f"/api/sessions/{session.session_id}/jobs")
            response.raise_for_status()
            records.update((job["job_id"], job) for job in response.json()["jobs"])
        unfinished = [job_id for session in sessions for job_id in session.jobs
                      if records.get(job_id, {}).get("state") not in TERMINAL_STATES]
        if not unfinished or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    return records


async def idle_readyz(client: httpx.AsyncClient) -> dict[str, Any]:
    """Return ``/readyz`` once every worker is idle, or after 10 s, so it counts the last replacements."""
    for _ in range(100):
        readyz: dict[str, Any] = (await client.get("/readyz")).json()
        if readyz.get("idle_workers") == readyz.get("workers"):
            break
        await asyncio.sleep(0.1)
    return readyz


def count_outcomes(sessions: list[Session], records: dict[str, dict[str, Any]], stats: Stats) -> dict[str, int]:
    counts = {"succeeded": 0, "failed with cause": 0, "lost": 0, "failed without cause": 0}
    for session in sessions:
        for job_id, kind in session.jobs.items():
            record = records.get(job_id, {"state": "missing"})
            error = record.get("error") or {}
            if record["state"] not in TERMINAL_STATES:
                outcome = "lost"
            elif record["state"] == "succeeded":
                outcome = "succeeded"
            elif (record["state"] == "failed" and error.get("type") == "WorkerCrashed"
                  and record.get("attempts") == KILLED_TWICE_ATTEMPTS):
                outcome = "failed with cause"
            else:
                outcome = "failed without cause"
            counts[outcome] += 1
            if outcome in ("lost", "failed without cause"):
                stats.note(f"{kind} job {job_id} {outcome}: state {record['state']}, "
                           f"attempts {record.get('attempts')}, error {error}")
    return counts


async def soak(server: ServerProcess, seconds: float, stats: Stats) -> dict[str, Any]:
    """Run the load for ``seconds``, then wait for the jobs to end. Return the rows of the result table."""
    rng = random.Random()
    server_pid = server.process.pid
    rss_start = psutil.Process(server_pid).memory_info().rss
    sessions = [await create_session(server.url) for _ in range(SESSIONS)]
    stop = asyncio.Event()
    started = time.monotonic()

    streams = [asyncio.create_task(track(session, stats)) for session in sessions]
    streams += [asyncio.create_task(drop_repeatedly(session, stats, random.Random(rng.random())))
                for session in sessions for _ in range(DROPPERS_PER_SESSION)]
    load = [asyncio.create_task(submit_repeatedly(session, stats, stop, random.Random(rng.random())))
            for session in sessions for _ in range(CLIENTS_PER_SESSION)]
    load.append(asyncio.create_task(kill_repeatedly(server_pid, sessions, stats, stop, rng)))
    load.append(asyncio.create_task(poll_readyz(server.url, stats, stop)))

    await asyncio.sleep(seconds)
    stop.set()
    # An error in any of these tasks is a bug in this script, not a finding, so gather re-raises it.
    await asyncio.wait_for(asyncio.gather(*load), JOB_WAIT_S + REQUEST_TIMEOUT_S)
    elapsed = time.monotonic() - started
    records = await final_records(sessions)
    readyz = await idle_readyz(sessions[0].client)
    rss_end = psutil.Process(server_pid).memory_info().rss

    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    audits = [task for session in sessions for task in session.audits]
    if audits:
        await asyncio.wait(audits, timeout=REQUEST_TIMEOUT_S)
    for session in sessions:
        await session.client.aclose()

    counts = count_outcomes(sessions, records, stats)
    checks = {"jobs lost": counts["lost"], "jobs failed without cause": counts["failed without cause"],
              "seq gaps": stats.seq_gaps, "seq duplicates": stats.seq_duplicates,
              "request errors": stats.request_errors}
    stats.failures += [f"{count} {name}" for name, count in checks.items() if count]
    spin_kills = sum(1 for _, _, job_id in stats.kills if job_id is not None)
    return {
        "seconds run": f"{elapsed:.1f}",
        "jobs submitted": stats.submitted,
        "succeeded": counts["succeeded"],
        "failed with cause (killed twice)": counts["failed with cause"],
        "lost": counts["lost"],
        "failed without cause": counts["failed without cause"],
        "workers killed (running spin)": f"{len(stats.kills)} ({spin_kills})",
        "worker restarts (/readyz)": readyz.get("worker_restarts"),
        "429 responses": stats.rejected_429,
        "request errors": stats.request_errors,
        "websocket drops / resumes with ?after": f"{stats.ws_drops} / {stats.ws_resumes}",
        "seq gaps / duplicates": f"{stats.seq_gaps} / {stats.seq_duplicates}",
        "seq skips of merged progress": stats.progress_merges,
        "longest /readyz non-200, ms": f"{stats.readyz_max_down_s * 1000:.0f}",
        "slowest /readyz, ms": f"{stats.readyz_max_latency_s * 1000:.0f}",
        "server RSS start -> end, MiB": f"{rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f}",
    }


# Main


def stop_and_reap(server: ServerProcess, stats: Stats) -> None:
    """Stop the server, then kill any of its children still alive 5 s later."""
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    exit_code = stop_server(server)
    if exit_code != 0:
        stats.failures.append("server killed after 15 s" if exit_code is None else f"server exit code {exit_code}")

    # The children watch the server and exit with it, so one still alive is a leak.
    _, leftovers = psutil.wait_procs(children, timeout=5)
    for process in leftovers:
        process.kill()
    if leftovers:
        stats.failures.append(f"{len(leftovers)} server children outlived it: pids {[p.pid for p in leftovers]}")


def print_log_problems(lines: list[str]) -> None:
    """Print the count of WARNING and ERROR lines, and the first distinct unexpected ones."""
    unexpected = [line for line in lines if not any(marker in line for marker in EXPECTED_LOG_MARKERS)]
    print(f"server log: {len(lines)} warning/error lines, {len(lines) - len(unexpected)} of them "
          "expected after worker kills")
    distinct: dict[str, str] = {}
    for line in unexpected:
        # Drop the timestamp, then replace ids and numbers so repeats of one message collapse.
        shape = re.sub(r"[0-9a-f]{32}|\d+(\.\d+)?", "N", line.split(" ", 2)[-1])
        distinct.setdefault(shape, line)
    for line in list(distinct.values())[:5]:
        print(f"  {line[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="seconds of load before the final checks (default 600)")
    seconds = parser.parse_args(argv).seconds
    if not seconds > 0:
        parser.error(f"invalid --seconds {seconds}: use a number above 0")

    directory = Path(tempfile.mkdtemp(prefix="offload-soak-"))
    port = free_port()
    server = start_server("Offload", [
        "-m", "app.main", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(directory / "data"),
        "--workers", "2", "--extra-kinds", "bench.kinds,tests.kinds",
    ], port, directory / "offload.log")
    table: dict[str, Any] = {}
    stats = Stats()
    try:
        wait_ready(server, "GET", "/readyz", 200)
        table = asyncio.run(soak(server, seconds, stats))
    except (ServerError, httpx.HTTPError, OSError, psutil.Error) as error:
        stats.failures.append(f"the run stopped early: {type(error).__name__}: {error}")
    finally:
        stop_and_reap(server, stats)
        problems = server.problem_lines()
        shutil.rmtree(directory, ignore_errors=True)

    table["machine"] = (f"{os.cpu_count()} CPUs, {platform.platform()}, "
                        f"{platform.python_implementation()} {platform.python_version()}")
    table["result"] = "FAILED: " + "; ".join(stats.failures) if stats.failures else "passed"
    width = max(len(label) for label in table)
    for label, value in table.items():
        print(f"{label:<{width}}  {value}")
    print_log_problems(problems)
    for note in stats.notes:
        print(f"note: {note}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
