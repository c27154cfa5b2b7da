"""Upload real files, run both built-in kinds, watch them over websockets and check the results."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import websockets

from .conftest import DATA, Server

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "interrupted"}
ALGORITHMS = ["sha256", "sha1", "md5", "blake2b", "sha3_256"]


def expected_profile(path: Path) -> tuple[int, dict[str, int]]:
    """Count data rows and empty cells per column with the csv module, independently of the server."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader)
        nulls = dict.fromkeys(header, 0)
        rows = 0
        for row in reader:
            rows += 1
            for name, cell in zip(header, row):
                nulls[name] += not cell.strip()
    return rows, nulls


def expected_digests(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    return {name: hashlib.new(name, data).hexdigest() for name in ALGORITHMS}


async def create_session(client: httpx.AsyncClient) -> tuple[str, str]:
    response = await client.post("/api/sessions")
    assert response.status_code == 201
    body = response.json()
    client.headers["Authorization"] = f"Bearer {body['token']}"
    return body["session_id"], body["token"]


async def upload_both(client: httpx.AsyncClient, session_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = await client.put(f"/api/sessions/{session_id}/files/zipcodes.csv",
                           content=(DATA / "zipcodes.csv").read_bytes())
    assert raw.status_code == 201, raw.text
    form = await client.post(f"/api/sessions/{session_id}/files",
                             files={"file": ("birdstrikes.csv", (DATA / "birdstrikes.csv").read_bytes(), "text/csv")})
    assert form.status_code == 201, form.text
    return raw.json(), form.json()["files"][0]


async def collect_until_done(ws: Any, job_ids: set[str]) -> list[dict[str, Any]]:
    events = []
    finished: set[str] = set()
    while finished != job_ids:
        event = json.loads(await asyncio.wait_for(ws.recv(), 60))
        events.append(event)
        if event["type"] == "state" and event["state"] in TERMINAL:
            finished.add(event["job_id"])
    return events


async def test_profile_and_hash_real_files(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        session_id, token = await create_session(client)
        zipcodes, birdstrikes = await upload_both(client, session_id)

        for record, name in ((zipcodes, "zipcodes.csv"), (birdstrikes, "birdstrikes.csv")):
            data = (DATA / name).read_bytes()
            assert record["name"] == name
            assert record["size"] == len(data)
            assert record["sha256"] == hashlib.sha256(data).hexdigest()

        ws_url = f"{server.ws_url}/api/sessions/{session_id}/ws?token={token}"
        async with websockets.connect(ws_url) as ws:
            snapshot = json.loads(await ws.recv())
            assert snapshot["type"] == "snapshot"
            assert snapshot["jobs"] == []

            jobs: dict[str, tuple[str, str]] = {}
            for file_record, name in ((zipcodes, "zipcodes.csv"), (birdstrikes, "birdstrikes.csv")):
                for kind, params in (("csv-profile", {}), ("hash", {"algorithms": ALGORITHMS})):
                    response = await client.post(f"/api/sessions/{session_id}/jobs", json={
                        "kind": kind, "inputs": [file_record["file_id"]], "params": params})
                    assert response.status_code == 202, response.text
                    jobs[response.json()["job_id"]] = (kind, name)
            events = await collect_until_done(ws, set(jobs))

        seqs = [event["seq"] for event in events]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)

        for job_id, (kind, name) in jobs.items():
            own = [event for event in events if event["job_id"] == job_id]
            done = [event["progress"]["done"] for event in own if event["type"] == "progress"]
            # A fast job's unsent steps merge into the newest, so only the order and the end are certain.
            assert done, f"{kind} on {name}: no progress"
            assert done == sorted(done), f"{kind} on {name}: progress went back: {done}"
            if kind == "hash":
                assert done[-1] == (DATA / name).stat().st_size
            assert own[-1]["type"] == "state"
            assert own[-1]["state"] == "succeeded", own[-1]

            record = (await client.get(f"/api/sessions/{session_id}/jobs/{job_id}")).json()
            assert record["state"] == "succeeded"
            assert record["attempts"] == 1
            if kind == "hash":
                check_hash(record, DATA / name)
            else:
                await check_profile(client, session_id, record, DATA / name)


def check_hash(record: dict[str, Any], path: Path) -> None:
    assert record["result"]["size"] == path.stat().st_size
    assert record["result"]["digests"] == expected_digests(path)


async def check_profile(client: httpx.AsyncClient, session_id: str, record: dict[str, Any], path: Path) -> None:
    rows, nulls = expected_profile(path)
    result = record["result"]
    assert result["rows"] == rows
    assert result["encoding"] == "utf-8"
    assert result["delimiter"] == ","
    assert {column["name"]: column["nulls"] for column in result["columns"]} == nulls

    assert record["outputs"] == [{"name": "profile.json", "size": record["outputs"][0]["size"]}]
    output = await client.get(f"/api/sessions/{session_id}/jobs/{record['job_id']}/outputs/profile.json")
    assert output.status_code == 200
    assert output.json() == result


async def test_zip_codes_stay_strings(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        session_id, _ = await create_session(client)
        zipcodes, birdstrikes = await upload_both(client, session_id)
        profiles = {}
        for file_record in (zipcodes, birdstrikes):
            response = await client.post(f"/api/sessions/{session_id}/jobs",
                                         json={"kind": "csv-profile", "inputs": [file_record["file_id"]]})
            profiles[file_record["name"]] = response.json()["job_id"]
        results = {}
        for name, job_id in profiles.items():
            results[name] = await wait_result(client, session_id, job_id)

    zip_code = results["zipcodes.csv"]["columns"][0]
    assert results["zipcodes.csv"]["rows"] == 42049
    assert zip_code["name"] == "zip_code"
    assert zip_code["type"] == "string"
    assert zip_code["distinct"] == 42049
    assert zip_code["top"][0]["value"] == "00501"

    speed = next(column for column in results["birdstrikes.csv"]["columns"]
                 if column["name"] == "Speed IAS in knots")
    # Empty cells are nulls: they neither count as zero nor pull the minimum or the mean down.
    assert speed["type"] == "integer"
    assert speed["nulls"] == expected_profile(DATA / "birdstrikes.csv")[1]["Speed IAS in knots"]
    assert speed["nulls"] > 0
    values = [int(row["Speed IAS in knots"]) for row in
              csv.DictReader((DATA / "birdstrikes.csv").open(newline="", encoding="utf-8"))
              if row["Speed IAS in knots"].strip()]
    assert speed["min"] == min(values)
    assert abs(speed["mean"] - sum(values) / len(values)) < 1e-9


async def wait_result(client: httpx.AsyncClient, session_id: str, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        record = (await client.get(f"/api/sessions/{session_id}/jobs/{job_id}")).json()
        if record["state"] in TERMINAL:
            assert record["state"] == "succeeded", record
            return record["result"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_late_websocket_gets_final_snapshot(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        session_id, token = await create_session(client)
        _, birdstrikes = await upload_both(client, session_id)
        response = await client.post(f"/api/sessions/{session_id}/jobs",
                                     json={"kind": "hash", "inputs": [birdstrikes["file_id"]]})
        job_id = response.json()["job_id"]
        await wait_result(client, session_id, job_id)

    url = f"{server.ws_url}/api/sessions/{session_id}/jobs/{job_id}/ws?token={token}"
    async with websockets.connect(url) as ws:
        messages = [json.loads(message) async for message in ws]
        close_code = ws.close_code
    assert len(messages) == 1
    assert messages[0]["type"] == "snapshot"
    assert [job["state"] for job in messages[0]["jobs"]] == ["succeeded"]
    assert messages[0]["jobs"][0]["result"]["size"] == (DATA / "birdstrikes.csv").stat().st_size
    # The job stream closes normally once the job is over.
    assert close_code == 1000


async def test_websocket_declines_compression(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        session_id, token = await create_session(client)
    url = f"{server.ws_url}/api/sessions/{session_id}/ws?token={token}"
    # The websockets client offers permessage-deflate by default, as browsers do.
    async with websockets.connect(url) as ws:
        offered = ws.request.headers.get("Sec-WebSocket-Extensions")
        accepted = ws.response.headers.get("Sec-WebSocket-Extensions")
        snapshot = json.loads(await ws.recv())
    assert offered is not None and "permessage-deflate" in offered
    assert accepted is None
    assert snapshot["type"] == "snapshot"


async def test_reconnect_after_seq_gets_newer_events(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        session_id, token = await create_session(client)
        zipcodes, _ = await upload_both(client, session_id)
        url = f"{server.ws_url}/api/sessions/{session_id}/ws?token={token}"
        async with websockets.connect(url) as ws:
            await ws.recv()
            response = await client.post(f"/api/sessions/{session_id}/jobs",
                                         json={"kind": "csv-profile", "inputs": [zipcodes["file_id"]]})
            job_id = response.json()["job_id"]
            everything = await collect_until_done(ws, {job_id})

    middle = everything[len(everything) // 2]["seq"]
    newer = [event for event in everything if event["seq"] > middle]
    async with websockets.connect(f"{url}&after={middle}") as ws:
        replayed = await collect_until_done(ws, {job_id})
        # Nothing else is pending: the next receive times out.
        try:
            extra = await asyncio.wait_for(ws.recv(), 0.5)
        except asyncio.TimeoutError:
            extra = None
    assert extra is None
    check_replay(replayed, newer, middle)

    job_url = f"{server.ws_url}/api/sessions/{session_id}/jobs/{job_id}/ws?token={token}&after={middle}"
    async with websockets.connect(job_url) as ws:
        job_replay = [json.loads(message) async for message in ws]
    check_replay(job_replay, newer, middle)


def check_replay(replayed: list[dict[str, Any]], newer: list[dict[str, Any]], after: int) -> None:
    """Compare a replay with the live events after the same seq.

    Either side may have merged unsent progress into a later event, so progress is compared by its
    last value and by the events both sides have.
    """
    assert all(event["type"] != "snapshot" for event in replayed)
    seqs = [event["seq"] for event in replayed]
    assert seqs == sorted(set(seqs))
    assert all(seq > after for seq in seqs)

    def without_progress(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [event for event in events if event["type"] != "progress"]

    assert without_progress(replayed) == without_progress(newer)
    live = {event["seq"]: event for event in newer}
    for event in replayed:
        if event["seq"] in live:
            assert event == live[event["seq"]]
    last_progress = [event for event in newer if event["type"] == "progress"][-1:]
    assert [event for event in replayed if event["type"] == "progress"][-1:] == last_progress


async def test_long_job_streams_steady_progress(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        session_id, token = await create_session(client)
        response = await client.post(f"/api/sessions/{session_id}/jobs",
                                     json={"kind": "spin", "inputs": [], "params": {"seconds": 1.5}})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]

        ws_url = f"{server.ws_url}/api/sessions/{session_id}/jobs/{job_id}/ws?token={token}"
        async with websockets.connect(ws_url) as ws:
            events = await collect_until_done(ws, {job_id})

    done = [event["progress"]["done"] for event in events if event["type"] == "progress"]
    # Reports are sent at most every 50 ms, so a reading client sees many of them over 1.5 s.
    assert len(set(done)) >= 5, done
    assert done == sorted(done)
    assert events[-1]["state"] == "succeeded"
