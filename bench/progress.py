"""Progress events from a worker to websocket clients: latency, and fan-out to many clients of one session.

Latency: ``stamp`` jobs, one at a time, report progress ten times with the wall-clock time of each
report as the message; the client subtracts it from the time it receives the event. The baseline
sends the same stamps from a spawned process through a ``multiprocessing`` queue to a thread of
the benchmark process, the bare cost of crossing a process boundary.

Fan-out: many websocket clients follow one session while one ``stamp`` job runs. Each must see the
job's last progress (10 of 10) and its final state. The time from the job's ``finished_at`` to
the last client's receipt of the final state is compared with the same time for one client.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import time
from typing import Any

from websockets.asyncio.client import connect

from bench.client import TERMINAL_STATES, BenchmarkError, open_session, submit_and_wait, ws_url
from bench.plan import Plan, Servers
from bench.report import Figure, Skipped, at_most, ratio_at_least

STAMP_JOB = {"kind": "stamp", "inputs": [], "params": {"reports": 10, "interval_ms": 5}}
REPORTS = 10
TARGET_P50_MS = 2.0
TARGET_P99_MS = 20.0
CONNECT_BATCH = 50
FAN_OUT_TIMEOUT_S = 120.0


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def measure_offload_latency(plan: Plan, base_url: str) -> tuple[list[float], list[float]]:
    """Return the progress latencies in ms, and each job's finished_at-to-final-state time in ms."""
    latencies: list[float] = []
    deliveries: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        now = time.time()
        if event["type"] == "progress" and event["progress"]["unit"] == "reports":
            latencies.append((now - float(event["progress"]["message"])) * 1000)
        elif event["type"] == "state" and event["state"] in TERMINAL_STATES:
            deliveries.append((now - event["job"]["finished_at"]) * 1000)

    async with open_session(base_url, on_event=on_event) as session:
        await submit_and_wait(session, STAMP_JOB)
        latencies.clear()
        deliveries.clear()
        for _ in range(plan.progress_jobs):
            await submit_and_wait(session, STAMP_JOB)
    return latencies, deliveries


def send_stamps(queue: Any, count: int, interval_s: float) -> None:
    for _ in range(count):
        time.sleep(interval_s)
        queue.put(time.time())
    queue.put(None)


def receive_stamps(queue: Any) -> list[float]:
    latencies = []
    while (stamp := queue.get()) is not None:
        latencies.append((time.time() - stamp) * 1000)
    return latencies


async def measure_bare_latency(plan: Plan) -> list[float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    sender = context.Process(target=send_stamps, args=(queue, plan.progress_jobs * REPORTS, 0.005))
    sender.start()
    try:
        latencies = await asyncio.to_thread(receive_stamps, queue)
    finally:
        await asyncio.to_thread(sender.join)
    # The first stamp includes the sender's start-up.
    return latencies[1:]


class Follower:
    """One websocket client of a session that records the last progress and the final state it saw."""

    def __init__(self) -> None:
        self.last_done: int | None = None
        self.final_state: str | None = None
        self.final_at: float | None = None
        self.finished_at: float | None = None

    async def follow(self, url: str, connected: asyncio.Event, ready: list[int]) -> None:
        async with connect(url, open_timeout=60) as connection:
            first = json.loads(await connection.recv())
            if first.get("type") != "snapshot":
                raise BenchmarkError(f"websocket sent {first.get('type')!r} first, expected 'snapshot'")
            ready.append(1)
            connected.set()
            async for message in connection:
                event = json.loads(message)
                if event["type"] == "progress":
                    self.last_done = event["progress"]["done"]
                elif event["type"] == "state" and event["state"] in TERMINAL_STATES:
                    self.final_at = time.time()
                    self.final_state = event["state"]
                    self.finished_at = event["job"]["finished_at"]
                    return


async def measure_fan_out(plan: Plan, base_url: str) -> tuple[int, float]:
    """Return how many of the clients saw the final progress and state, and the ms to the last one."""
    followers = [Follower() for _ in range(plan.ws_clients)]
    async with open_session(base_url) as session:
        url = ws_url(base_url, f"/api/sessions/{session.session_id}/ws?token={session.token}")
        ready: list[int] = []
        tasks: list[asyncio.Task[None]] = []
        for start in range(0, len(followers), CONNECT_BATCH):
            batch = followers[start:start + CONNECT_BATCH]
            events = [asyncio.Event() for _ in batch]
            tasks += [asyncio.create_task(follower.follow(url, event, ready))
                      for follower, event in zip(batch, events)]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), FAN_OUT_TIMEOUT_S)
        try:
            await submit_and_wait(session, STAMP_JOB)
            await asyncio.wait_for(asyncio.gather(*tasks), FAN_OUT_TIMEOUT_S)
        finally:
            for task in tasks:
                task.cancel()
    current = sum(1 for follower in followers
                  if follower.final_state == "succeeded" and follower.last_done == REPORTS)
    last = max(((follower.final_at - follower.finished_at) * 1000 for follower in followers
                if follower.final_at is not None and follower.finished_at is not None), default=float("nan"))
    return current, last


async def run_progress(plan: Plan, servers: Servers) -> tuple[list[Figure], list[Skipped]]:
    latencies, deliveries = await measure_offload_latency(plan, servers.offload.url)
    bare = await measure_bare_latency(plan)
    current, last_ms = await measure_fan_out(plan, servers.offload.url)
    clients = f"{plan.ws_clients:,} websocket clients"
    return [
        Figure("progress latency p50", "ms", statistics.median(latencies), statistics.median(bare),
               "mp.Queue to a thread", at_most(TARGET_P50_MS)),
        Figure("progress latency p99", "ms", percentile(latencies, 0.99), percentile(bare, 0.99),
               "mp.Queue to a thread", at_most(TARGET_P99_MS)),
        Figure(f"{clients} current after a job", "clients", current, plan.ws_clients, "all",
               ratio_at_least(1.0)),
        Figure(f"final state to the last of {clients}", "ms", last_ms, statistics.median(deliveries),
               "1 client, median"),
    ], []
