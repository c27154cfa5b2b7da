"""Session isolation: every route of the OpenAPI document, and every stream, with foreign tokens and ids."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from .conftest import DATA, Api, Server


@dataclass
class Victim:
    """A session with a file, a finished job with an output, and the secrets none of that may leak."""

    api: Api
    file: dict[str, Any]
    job: dict[str, Any]
    output: str

    @property
    def ids(self) -> dict[str, str]:
        return {"session_id": self.api.session_id, "file_id": self.file["file_id"], "job_id": self.job["job_id"],
                "name": self.output}

    def secrets(self) -> list[str]:
        return [self.api.token, self.file["sha256"], self.file["name"], str(self.job["result"]["rows"])]

    def state(self) -> tuple[Any, ...]:
        files = self.api.client.get(f"{self.api.prefix}/files").json()["files"]
        jobs = self.api.client.get(f"{self.api.prefix}/jobs").json()["jobs"]
        content = self.api.client.get(f"{self.api.prefix}/files/{self.file['file_id']}/content").content
        return files, [(job["job_id"], job["state"]) for job in jobs], content


def wait_finished(api: Api, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = api.client.get(f"{api.prefix}/jobs/{job_id}").json()
        if record["state"] not in ("queued", "running"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(name="victim", scope="module")
def _victim(server: Server) -> Iterator[Victim]:
    api = Api(server)
    file = api.upload(DATA / "zipcodes.csv", name="secret-zipcodes.csv")
    job = wait_finished(api, api.start("csv-profile", [file["file_id"]])["job_id"])
    assert job["state"] == "succeeded", job
    yield Victim(api, file, job, job["outputs"][0]["name"])
    api.client.close()


@pytest.fixture(name="intruder", scope="module")
def _intruder(server: Server) -> Iterator[Api]:
    api = Api(server)
    api.upload(DATA / "zipcodes.csv", name="own.csv")
    yield api
    api.client.close()


def session_operations(server: Server) -> list[tuple[str, str]]:
    document = httpx.get(f"{server.url}/openapi.json").json()
    operations = [(method.upper(), path) for path, methods in document["paths"].items() for method in methods
                  if "{session_id}" in path]
    assert len(operations) >= 11, operations
    return operations


def foreign_ids(method: str, path: str) -> set[str]:
    """Return the ids in ``path`` besides the session's; the name of an upload is new, not an id."""
    ids = set(re.findall(r"{(\w+)}", path)) - {"session_id"}
    if method == "PUT" and "/files/" in path:
        ids.discard("name")
    return ids


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda match: ids[match.group(1)], path)


def send(client: httpx.Client, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    if method in ("POST", "PUT"):
        if url.endswith("/jobs"):
            return client.request(method, url, headers=headers, json={"kind": "hash", "inputs": []})
        if url.endswith("/files"):
            return client.request(method, url, headers=headers, files={"file": ("x.txt", b"intruder")})
        return client.request(method, url, headers=headers, content=b"intruder")
    return client.request(method, url, headers=headers)


# (case, whose session id, whose other ids, which token, expected status)
CASES = [
    ("no token", "victim", "victim", None, 401),
    ("wrong token", "victim", "victim", "garbage", 401),
    ("other session's token", "victim", "victim", "intruder", 401),
    ("own session, foreign ids", "intruder", "victim", "intruder", 404),
    ("unknown session", "unknown", "victim", "intruder", 404),
]


@pytest.mark.parametrize(("case", "session_owner", "ids_owner", "token_owner", "status"), CASES,
                         ids=[row[0] for row in CASES])
def test_foreign_access_rejected_on_every_route(server: Server, victim: Victim, intruder: Api, case: str,
                                                session_owner: str, ids_owner: str, token_owner: str | None,
                                                status: int) -> None:
    before = victim.state()
    tokens = {"intruder": intruder.token, "garbage": "x" * 43, None: None}
    sessions = {"victim": victim.api.session_id, "intruder": intruder.session_id, "unknown": "A" * 22}
    ids = {**victim.ids, "session_id": sessions[session_owner]}
    token = tokens[token_owner]
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    checked = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in session_operations(server):
            if session_owner == "intruder" and not foreign_ids(method, path):
                # Without an id of another session, the route acts on the intruder's own session.
                continue
            response = send(client, method, fill(path, ids), headers)
            checked.append((method, path, response.status_code))
            assert response.status_code == status, (case, method, path, response.text)
            for secret in victim.secrets():
                assert secret not in response.text, (case, method, path, secret)

    assert checked
    assert victim.state() == before


def test_token_in_query_of_other_session_rejected(server: Server, victim: Victim, intruder: Api) -> None:
    response = httpx.get(f"{server.url}{victim.api.prefix}/files", params={"token": intruder.token})
    assert response.status_code == 401


def test_intruder_lists_only_own_files(victim: Victim, intruder: Api) -> None:
    files = intruder.client.get(f"{intruder.prefix}/files").json()["files"]
    assert [item["name"] for item in files] == ["own.csv"]
    assert intruder.client.get(f"{intruder.prefix}/jobs").json()["jobs"] == []


@pytest.mark.parametrize("path", ["/ws", "/jobs/{job_id}/ws"])
async def test_foreign_websocket_rejected(server: Server, victim: Victim, intruder: Api, path: str) -> None:
    victim_path = victim.api.prefix + fill(path, victim.ids)
    with pytest.raises(websockets.InvalidStatus) as other_token:
        async with websockets.connect(f"{server.ws_url}{victim_path}?token={intruder.token}"):
            pass
    assert other_token.value.response.status_code == 401

    with pytest.raises(websockets.InvalidStatus) as no_token:
        async with websockets.connect(f"{server.ws_url}{victim_path}"):
            pass
    assert no_token.value.response.status_code == 401

    if "{job_id}" in path:
        own_session_path = intruder.prefix + fill(path, victim.ids)
        with pytest.raises(websockets.InvalidStatus) as foreign_job:
            async with websockets.connect(f"{server.ws_url}{own_session_path}?token={intruder.token}"):
                pass
        assert foreign_job.value.response.status_code == 404
        assert victim.file["sha256"].encode() not in (foreign_job.value.response.body or b"")
