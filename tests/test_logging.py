"""Log formats: JSON lines with the session and job ids, and the same ids in the text format."""

from __future__ import annotations

import json
from typing import Any

from .conftest import DATA, Api


def test_json_log_lines_carry_ids(server_factory: Any) -> None:
    server = server_factory("--log-format", "json")
    api = Api(server)
    file_record = api.upload(DATA / "seattle-weather.csv")
    hashed = api.start("hash", [file_record["file_id"]])
    failing = api.start("fail", [], message="no such column")
    for job in (hashed, failing):
        api.wait_job(job["job_id"])
    assert server.stop() == 0

    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    for job in (hashed, failing):
        about_job = [line for line in lines if job["job_id"] in json.dumps(line)]
        assert len(about_job) >= 2, about_job
        for line in about_job:
            assert line.get("job_id") == job["job_id"], line
            assert line.get("session_id") == api.session_id, line

    # The job's own log line comes from its worker process, in the same format.
    worker_lines = [line for line in lines if line["logger"] == "app.workers.context"]
    assert [line["message"] for line in worker_lines] == ["about to fail"]
    assert worker_lines[0]["job_id"] == failing["job_id"]
    failed = [line for line in lines if line.get("job_id") == failing["job_id"] and line["level"] == "WARNING"]
    assert failed[0]["message"].startswith("failed after")
    assert "ValueError: no such column" in failed[0]["message"]
    stored = [line for line in lines if line.get("file_id") == file_record["file_id"]]
    assert stored[0]["session_id"] == api.session_id


def test_text_log_lines_carry_ids(server_factory: Any) -> None:
    server = server_factory("--log-format", "text")
    api = Api(server)
    job = api.start("fail", [])
    api.wait_job(job["job_id"])
    ids = f"session={api.session_id} job={job['job_id']}"
    log = server.log()
    assert f"INFO app.jobs: {ids} queued: kind fail" in log
    assert f"INFO app.workers.context: {ids} about to fail" in log
    assert f"WARNING app.jobs: {ids} failed after" in log
    for line in log.splitlines():
        if job["job_id"] in line and not line.startswith(" "):
            assert ids in line, line
