"""The journal: restarts, including after SIGKILL, keep finished jobs and interrupt unfinished ones."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest

from .conftest import DATA, Api, Server, alive, wait_gone


def restart(server_factory: object, server: Server, *args: str) -> Server:
    return server_factory("--data-dir", str(server.data_dir), *args)


def reconnect(api: Api, server: Server) -> Api:
    """Use an existing session's id and token against a restarted server."""
    return Api(server, (api.session_id, api.token))


def test_restart_keeps_results_and_files(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    upload = api.upload(DATA / "seattle-weather.csv")
    profile = api.wait_job(api.start("csv-profile", [upload["file_id"]])["job_id"])
    digest = api.wait_job(api.start("hash", [upload["file_id"]])["job_id"])
    assert server.stop() == 0

    server = restart(server_factory, server)
    api = reconnect(api, server)
    assert api.job(profile["job_id"]) == profile
    assert api.job(digest["job_id"]) == digest
    assert api.client.get(f"{api.prefix}/files").json()["files"] == [upload]
    content = api.client.get(f"{api.prefix}/files/{upload['file_id']}/content").content
    assert hashlib.sha256(content).hexdigest() == upload["sha256"]
    output = api.client.get(f"{api.prefix}/jobs/{profile['job_id']}/outputs/profile.json")
    assert output.json() == profile["result"]
    # The restored session keeps working.
    assert api.wait_job(api.start("hash", [upload["file_id"]])["job_id"])["state"] == "succeeded"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX; Windows has TerminateProcess")
def test_restart_after_sigkill(server_factory: object) -> None:
    server = server_factory("--workers", "1")
    api = Api(server)
    upload = api.upload(DATA / "airports.csv")
    finished = api.wait_job(api.start("csv-profile", [upload["file_id"]])["job_id"])
    running = api.start("spin", [], seconds=60)
    queued = api.start("spin", [], seconds=60)
    api.wait_job(running["job_id"], states=frozenset({"running"}))
    children = server.child_processes()

    server.process.kill()
    server.process.wait(10)
    # Workers and the Manager notice that the server is gone and exit by themselves.
    assert wait_gone(children, timeout=10) == [], [process.cmdline() for process in alive(children)]

    server = restart(server_factory, server)
    api = reconnect(api, server)
    assert api.job(finished["job_id"]) == finished
    output = api.client.get(f"{api.prefix}/jobs/{finished['job_id']}/outputs/profile.json")
    assert output.status_code == 200
    assert output.json() == finished["result"]
    for job in (running, queued):
        record = api.job(job["job_id"])
        assert record["state"] == "interrupted", record
        assert record["error"]["type"] == "Interrupted"
    assert "restored 1 sessions, 1 files and 3 jobs (2 interrupted)" in server.log()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses CTRL_BREAK_EVENT")
def test_graceful_stop_journals_interrupted_jobs(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    jobs = [api.start("spin", [], seconds=60) for _ in range(3)]
    api.wait_job(jobs[0]["job_id"], states=frozenset({"running"}))
    assert server.stop() == 0

    server = restart(server_factory, server)
    api = reconnect(api, server)
    assert [api.job(job["job_id"])["state"] for job in jobs] == ["interrupted"] * 3


def test_expired_session_removed_from_journal_and_disk(server_factory: object) -> None:
    server = server_factory("--session-idle-s", "2")
    api = Api(server)
    api.upload(DATA / "seattle-weather.csv")
    session_dir = server.data_dir / "sessions" / api.session_id
    assert session_dir.is_dir()
    deadline = time.monotonic() + 15
    while session_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session_dir.exists()
    assert api.client.get(f"{api.prefix}/files").status_code == 404
    assert server.stop() == 0

    server = restart(server_factory, server)
    assert "restored 0 sessions" in server.log()


def test_session_that_expired_while_down_is_removed(server_factory: object) -> None:
    server = server_factory("--session-idle-s", "3")
    api = Api(server)
    api.upload(DATA / "seattle-weather.csv")
    unknown = server.data_dir / "sessions" / "not-in-the-journal"
    unknown.mkdir()
    assert server.stop() == 0
    time.sleep(3.5)

    server = restart(server_factory, server, "--session-idle-s", "3")
    api = reconnect(api, server)
    assert api.client.get(f"{api.prefix}/files").status_code == 404
    assert not (server.data_dir / "sessions" / api.session_id).exists()
    assert not unknown.exists()


def test_reconnect_with_seq_from_before_restart_gets_snapshot(server_factory: object) -> None:
    import asyncio
    import json

    import websockets

    server = server_factory()
    api = Api(server)
    job = api.wait_job(api.start("spin", [], seconds=0)["job_id"])
    assert server.stop() == 0
    server = restart(server_factory, server)
    api = reconnect(api, server)

    async def first_message() -> dict[str, object]:
        async with websockets.connect(api.ws_url(after=50)) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    message = asyncio.run(first_message())
    assert message["type"] == "snapshot"
    assert [record["job_id"] for record in message["jobs"]] == [job["job_id"]]


def test_corrupt_journal_is_reported(server_factory: object, tmp_path: Path) -> None:
    data_dir = tmp_path / "corrupt"
    data_dir.mkdir()
    (data_dir / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    server = server_factory("--data-dir", str(data_dir), wait=False)
    assert server.process.wait(60) == 1
    assert "cannot read the journal" in server.log()
    assert "move it away" in server.log()


def test_unknown_files_removed_at_start(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    kept = api.upload(DATA / "seattle-weather.csv")
    assert server.stop() == 0
    files = server.data_dir / "sessions" / api.session_id / "files"
    (files / "left-by-a-killed-upload.part").write_bytes(b"x" * 1000)
    (files / "committed-but-never-journalled").write_bytes(b"y" * 1000)
    (server.data_dir / "sessions" / api.session_id / "jobs" / "no-such-job").mkdir(parents=True)

    server = restart(server_factory, server)
    assert sorted(path.name for path in files.iterdir()) == [kept["file_id"]]
    assert not (server.data_dir / "sessions" / api.session_id / "jobs" / "no-such-job").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX; Windows has TerminateProcess")
def test_acknowledged_cancel_survives_sigkill(server_factory: object) -> None:
    server = server_factory("--workers", "1")
    api = Api(server)
    blocker = api.start("spin", [], seconds=60)
    queued = [api.start("spin", [], seconds=60) for _ in range(20)]
    api.wait_job(blocker["job_id"], states=frozenset({"running"}))
    for job in queued:
        assert api.client.post(f"{api.prefix}/jobs/{job['job_id']}/cancel").status_code == 202
    server.process.kill()
    server.process.wait(10)

    server = restart(server_factory, server)
    api = reconnect(api, server)
    assert [api.job(job["job_id"])["state"] for job in queued] == ["cancelled"] * 20
    assert api.job(blocker["job_id"])["state"] == "interrupted"
