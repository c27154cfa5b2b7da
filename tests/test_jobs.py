"""Job lifecycle: failures, cancellation, queue limits and websocket clients that leave."""

from __future__ import annotations

import asyncio
import json
import os
import time

import psutil
import pytest
import websockets
from websockets.protocol import State

from .conftest import Api, Server, open_silent_websocket, subscribers, wait_no_subscribers


def test_raising_job_fails_with_type_and_message(api: Api, server: Server) -> None:
    job = api.start("fail", [], message="no such column 'price'")
    record = api.wait_job(job["job_id"])
    assert record["state"] == "failed"
    assert record["error"] == {"type": "ValueError", "message": "no such column 'price'"}
    assert record["finished_at"] >= record["started_at"] >= record["created_at"]
    # The traceback goes to the server log, with the ids.
    log = server.log()
    assert f"job={job['job_id']} failed" in log
    assert "Traceback" in log
    # The pool keeps serving.
    assert api.wait_job(api.start("spin", [], seconds=0)["job_id"])["state"] == "succeeded"


def test_cancel_queued_job_never_starts(server_factory: object) -> None:
    server = server_factory("--workers", "1")
    api = Api(server)
    running = api.start("spin", [], seconds=30)
    queued = api.start("spin", [], seconds=0)
    api.wait_job(running["job_id"], states=frozenset({"running"}))

    response = api.client.post(f"{api.prefix}/jobs/{queued['job_id']}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    record = api.job(queued["job_id"])
    assert record["state"] == "cancelled"
    assert record["started_at"] is None
    assert record["attempts"] == 0

    again = api.client.post(f"{api.prefix}/jobs/{queued['job_id']}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["error"]["message"]

    api.client.post(f"{api.prefix}/jobs/{running['job_id']}/cancel")
    assert api.wait_job(running["job_id"])["state"] == "cancelled"


def test_cancel_running_job_that_checks_flag(api: Api) -> None:
    job = api.start("spin", [], seconds=60)
    api.wait_job(job["job_id"], states=frozenset({"running"}))
    started = time.monotonic()
    assert api.client.post(f"{api.prefix}/jobs/{job['job_id']}/cancel").status_code == 202
    record = api.wait_job(job["job_id"], timeout=10)
    assert record["state"] == "cancelled"
    assert time.monotonic() - started < 5


def test_queue_limit_per_session(server_factory: object) -> None:
    server = server_factory("--workers", "1", "--max-queued-jobs-per-session", "2")
    api = Api(server)
    blocker = api.start("spin", [], seconds=30)
    api.wait_job(blocker["job_id"], states=frozenset({"running"}))
    queued = api.start("spin", [], seconds=0)
    api.start("spin", [], seconds=0)

    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": []})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert "--max-queued-jobs-per-session" in response.json()["error"]["message"]

    # A cancelled queued job gives its place back.
    assert api.client.post(f"{api.prefix}/jobs/{queued['job_id']}/cancel").status_code == 202
    assert api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": []}).status_code == 202
    assert api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": []}).status_code == 429

    # Another session still has room, below the server-wide limit.
    other = Api(server)
    assert other.client.post(f"{other.prefix}/jobs", json={"kind": "spin", "inputs": []}).status_code == 202


def test_queue_limit_total(server_factory: object) -> None:
    server = server_factory("--workers", "1", "--max-queued-jobs", "1")
    first, second = Api(server), Api(server)
    blocker = first.start("spin", [], seconds=30)
    first.wait_job(blocker["job_id"], states=frozenset({"running"}))
    first.start("spin", [], seconds=0)
    response = second.client.post(f"{second.prefix}/jobs", json={"kind": "spin", "inputs": []})
    assert response.status_code == 429
    assert "--max-queued-jobs " in response.json()["error"]["message"]


async def test_disconnect_leaves_no_subscriber(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    job = api.start("spin", [], seconds=2)
    for path in ("/ws", f"/jobs/{job['job_id']}/ws"):
        async with websockets.connect(api.ws_url(path)) as ws:
            await asyncio.wait_for(ws.recv(), 10)
            assert subscribers(server) == 1
    assert wait_no_subscribers(server, timeout=5) == 0
    # The job runs on without anyone watching.
    assert api.wait_job(job["job_id"])["state"] == "succeeded"


async def test_job_log_lines_reach_websocket(api: Api) -> None:
    async with websockets.connect(api.ws_url()) as ws:
        await ws.recv()
        job = api.start("fail", [])
        events = []
        while not events or events[-1]["type"] != "state" or events[-1]["state"] == "running" \
                or events[-1]["state"] == "queued":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    logs = [event for event in events if event["type"] == "log"]
    assert [(event["job_id"], event["message"]) for event in logs] == [(job["job_id"], "about to fail")]
    assert events[-1]["state"] == "failed"


def test_short_jobs_finish_without_waiting(api: Api, server: Server) -> None:
    """A job's result may arrive before its last events; the server must not stall on that race."""
    started = time.monotonic()
    for _ in range(20):
        job = api.start("spin", [], seconds=0)
        assert api.wait_job(job["job_id"])["state"] == "succeeded"
    assert "last events did not arrive" not in server.log()
    # Each stall would cost 2 s, so 20 jobs with even one stall take longer than this.
    assert time.monotonic() - started < 10


def test_stalled_websocket_client_is_dropped(server_factory: object) -> None:
    server = server_factory("--ws-send-queue", "50")
    api = Api(server)
    sock = open_silent_websocket(server, f"{api.prefix}/ws?token={api.token}")
    try:
        assert subscribers(server) == 1
        # Each job's events carry its 100 kB message, so the socket buffers fill and sends stall.
        jobs = [api.start("fail", [], message="x" * 100_000) for _ in range(60)]
        for job in jobs:
            api.wait_job(job["job_id"])
        assert wait_no_subscribers(server) == 0
        assert "stopped reading; disconnected" in server.log()

        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 8
    finally:
        sock.close()


async def test_deleting_session_closes_its_websockets(api: Api) -> None:
    async with websockets.connect(api.ws_url()) as ws:
        await ws.recv()
        assert api.client.delete(api.prefix).status_code == 204
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1000
    assert ws.close_reason == "session ended"


async def test_client_messages_do_not_grow_memory(api: Api, server: Server) -> None:
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    # 200 MiB in messages just under the server's 64 KiB limit, which it reads and drops.
    message = os.urandom(60 * 1024)
    async with websockets.connect(api.ws_url(), max_size=None) as ws:
        await ws.recv()
        for _ in range(3500):
            await ws.send(message)
        await ws.ping()
        await asyncio.sleep(0.5)
        growth = process.memory_info().rss - before
        still_open = ws.state is State.OPEN
    assert still_open
    assert growth < 64 * 1024 * 1024, f"server grew by {growth / 1024 / 1024:.0f} MiB"


def test_result_that_is_not_json_fails_the_job(api: Api, server: Server) -> None:
    record = api.wait_job(api.start("not-json", [])["job_id"])
    assert record["state"] == "failed"
    assert record["error"]["type"] == "TypeError"
    assert "not JSON" in record["error"]["message"]
    # The journal keeps working afterwards.
    assert api.wait_job(api.start("spin", [], seconds=0)["job_id"])["state"] == "succeeded"
    assert "Exception in thread" not in server.log()
