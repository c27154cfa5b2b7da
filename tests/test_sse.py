"""Server-Sent Events streams: order, resuming, access rules, keep-alives, slow clients and shutdown."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from .conftest import Api, Server, subscribers, wait_no_subscribers

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "interrupted"}


def read_events(api: Api, path: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Read a stream to its end; return each event's JSON with its SSE ``id`` and ``event`` fields."""
    events = []
    with connect_sse(api.client, "GET", f"{api.prefix}{path}", timeout=30, **kwargs) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            events.append({**json.loads(sse.data), "sse_id": sse.id, "sse_event": sse.event})
    return events


def test_job_stream_snapshot_then_events_to_end(api: Api) -> None:
    job = api.start("spin", [], seconds=1)
    events = read_events(api, f"/jobs/{job['job_id']}/events")

    assert events[0]["type"] == "snapshot"
    assert [record["job_id"] for record in events[0]["jobs"]] == [job["job_id"]]
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(set(seqs))
    for event in events:
        assert event["sse_id"] == str(event["seq"])
        assert event["sse_event"] == event["type"]
        assert event["job_id"] == job["job_id"]
    assert events[-1]["type"] == "state"
    assert events[-1]["state"] == "succeeded"
    assert events[-2]["type"] == "result"
    assert any(event["type"] == "progress" for event in events)


def test_last_event_id_resumes_after_it(api: Api) -> None:
    job = api.start("spin", [], seconds=0.5)
    first = read_events(api, f"/jobs/{job['job_id']}/events")
    last = first[-1]["seq"]
    middle = first[len(first) // 2]["seq"]

    resumed = read_events(api, f"/jobs/{job['job_id']}/events", headers={"Last-Event-ID": str(middle)})
    assert [event["seq"] for event in resumed] == list(range(middle + 1, last + 1))
    assert resumed[-1]["state"] == "succeeded"

    # ?after works too, and a Last-Event-ID sent on reconnect wins over the ?after kept in the URL.
    by_query = read_events(api, f"/jobs/{job['job_id']}/events", params={"after": middle})
    assert [event["seq"] for event in by_query] == list(range(middle + 1, last + 1))
    both = read_events(api, f"/jobs/{job['job_id']}/events", params={"after": 0},
                       headers={"Last-Event-ID": str(last - 1)})
    assert [event["seq"] for event in both] == [last]


def test_reconnect_after_final_event_is_204(api: Api) -> None:
    job = api.start("spin", [], seconds=0)
    events = read_events(api, f"/jobs/{job['job_id']}/events")
    response = api.client.get(f"{api.prefix}/jobs/{job['job_id']}/events",
                              headers={"Last-Event-ID": str(events[-1]["seq"])})
    assert response.status_code == 204
    assert response.content == b""


def test_finished_job_without_resume_gets_snapshot(api: Api) -> None:
    job = api.start("spin", [], seconds=0)
    api.wait_job(job["job_id"])
    events = read_events(api, f"/jobs/{job['job_id']}/events")
    assert [event["type"] for event in events] == ["snapshot"]
    assert events[0]["jobs"][0]["state"] == "succeeded"


def test_session_stream_sees_every_job(api: Api) -> None:
    jobs = [api.start("spin", [], seconds=0) for _ in range(2)]
    for job in jobs:
        api.wait_job(job["job_id"])
    with connect_sse(api.client, "GET", f"{api.prefix}/events", params={"after": 0}, timeout=30) as source:
        finished = set()
        for sse in source.iter_sse():
            event = json.loads(sse.data)
            if event["type"] == "state" and event["state"] in TERMINAL:
                finished.add(event["job_id"])
            if finished == {job["job_id"] for job in jobs}:
                break
    assert finished == {job["job_id"] for job in jobs}


def test_events_token_rules(api: Api, server: Server) -> None:
    other = Api(server)
    job = api.start("spin", [], seconds=0)
    other_job = other.start("spin", [], seconds=0)
    path = f"{api.prefix}/jobs/{job['job_id']}/events"
    bare = httpx.Client(base_url=server.url, timeout=30)

    assert bare.get(path).status_code == 401
    assert bare.get(path, headers={"Authorization": f"Bearer {other.token}"}).status_code == 401
    assert bare.get(path, params={"token": other.token}).status_code == 401
    assert bare.get("/api/sessions/no-such-session/events", params={"token": api.token}).status_code == 404
    foreign_job = bare.get(f"{api.prefix}/jobs/{other_job['job_id']}/events", params={"token": api.token})
    assert foreign_job.status_code == 404
    assert foreign_job.json()["error"]["code"] == "not_found"

    # EventSource cannot send headers, so the token query parameter must work.
    with connect_sse(bare, "GET", path, params={"token": api.token}) as source:
        assert source.response.status_code == 200
        assert next(source.iter_sse()).event == "snapshot"
    bare.close()


@pytest.mark.parametrize(("headers", "params", "named"), [
    ({"Last-Event-ID": "seven"}, {}, "Last-Event-ID"),
    ({}, {"after": "-1"}, "after"),
])
def test_invalid_resume_point_is_400(api: Api, headers: dict[str, str], params: dict[str, str],
                                     named: str) -> None:
    response = api.client.get(f"{api.prefix}/events", headers=headers, params=params)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"{named}: invalid sequence number")


def test_disconnect_unsubscribes(server_factory: Any) -> None:
    server = server_factory()
    api = Api(server)
    job = api.start("spin", [], seconds=3)
    for path in ("/events", f"/jobs/{job['job_id']}/events"):
        with connect_sse(api.client, "GET", f"{api.prefix}{path}") as source:
            # Dropping an httpx line iterator closes its connection, so this one is kept.
            events = source.iter_sse()
            assert next(events).event == "snapshot"
            assert subscribers(server) == 1
        assert wait_no_subscribers(server) == 0
    assert api.wait_job(job["job_id"])["state"] == "succeeded"


def test_keep_alive_comment_on_idle_stream(server_factory: Any) -> None:
    server = server_factory("--sse-keep-alive-s", "0.2")
    api = Api(server)
    comments = 0
    with api.client.stream("GET", f"{api.prefix}/events") as response:
        for line in response.iter_lines():
            if line.startswith(":"):
                comments += 1
            if comments == 2:
                break
    assert comments == 2


def test_stalled_client_is_dropped(server_factory: Any) -> None:
    server = server_factory("--ws-send-queue", "50")
    api = Api(server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {api.prefix}/events?token={api.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    try:
        deadline = time.monotonic() + 10
        while subscribers(server) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subscribers(server) == 1
        # Each failed job's state event carries its long error message, so the socket buffers fill.
        jobs = [api.start("fail", [], message="x" * 100_000) for _ in range(100)]
        for job in jobs:
            api.wait_job(job["job_id"])
        assert wait_no_subscribers(server) == 0
        assert "event stream client fell more than 50 events behind" in server.log()

        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 8
    finally:
        sock.close()


def test_shutdown_ends_open_streams(server_factory: Any) -> None:
    server = server_factory()
    api = Api(server)
    job = api.start("spin", [], seconds=60)
    api.wait_job(job["job_id"], states=frozenset({"running"}))
    codes: list[int] = []
    stopper = threading.Thread(target=lambda: codes.append(server.stop()))
    events = []
    with connect_sse(api.client, "GET", f"{api.prefix}/jobs/{job['job_id']}/events") as source:
        for sse in source.iter_sse():
            events.append(json.loads(sse.data))
            if len(events) == 1:
                stopper.start()
    stopper.join(30)
    assert codes == [0]
    # The stream ended on its own, after the job's final state.
    assert events[-1]["type"] == "state"
    assert events[-1]["state"] == "interrupted"


def test_deleting_session_ends_its_stream(api: Api) -> None:
    with connect_sse(api.client, "GET", f"{api.prefix}/events") as source:
        events = source.iter_sse()
        assert next(events).event == "snapshot"
        assert api.client.delete(api.prefix).status_code == 204
        # The stream ends by itself; a hang here fails on the client's read timeout.
        assert [(sse.event, sse.data) for sse in events] == []
    response = api.client.get(f"{api.prefix}/events")
    assert response.status_code == 404
