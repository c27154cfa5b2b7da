"""Tokens, session isolation, websocket origins and request validation."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
import websockets

from .conftest import DATA, Api, Server


@pytest.fixture(name="other")
def _other(server: Server) -> Api:
    return Api(server)


def test_missing_token_is_401(api: Api) -> None:
    del api.client.headers["Authorization"]
    api.client.cookies.clear()
    response = api.client.get(f"{api.prefix}/files")
    assert response.status_code == 401
    assert "Bearer" in response.json()["error"]["message"]


def test_cookie_token_is_accepted(api: Api) -> None:
    del api.client.headers["Authorization"]
    assert api.client.get(f"{api.prefix}/files").status_code == 200


def test_wrong_token_is_401(api: Api, other: Api) -> None:
    api.client.cookies.clear()
    response = api.client.get(f"{api.prefix}/jobs", headers={"Authorization": f"Bearer {other.token}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_unknown_session_is_404(api: Api) -> None:
    response = api.client.get("/api/sessions/no-such-session/files")
    assert response.status_code == 404


def test_other_sessions_ids_are_404(api: Api, other: Api) -> None:
    file_record = other.upload(DATA / "seattle-weather.csv")
    job = other.start("hash", [file_record["file_id"]])
    other.wait_job(job["job_id"])

    paths = [
        ("GET", f"{api.prefix}/jobs/{job['job_id']}"),
        ("POST", f"{api.prefix}/jobs/{job['job_id']}/cancel"),
        ("GET", f"{api.prefix}/files/{file_record['file_id']}/content"),
        ("DELETE", f"{api.prefix}/files/{file_record['file_id']}"),
    ]
    for method, path in paths:
        response = api.client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert file_record["sha256"] not in response.text

    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "hash", "inputs": [file_record["file_id"]]})
    assert response.status_code == 404
    # The other session's data is untouched.
    assert other.job(job["job_id"])["state"] == "succeeded"


def test_unknown_kind_is_400_naming_it(api: Api) -> None:
    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "sha-everything", "inputs": []})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "'sha-everything'" in message
    assert "csv-profile" in message
    assert "hash" in message


@pytest.mark.parametrize(("params", "named"), [
    ({"algorithms": ["sha512"]}, "params.algorithms.0"),
    ({"algorithms": []}, "params.algorithms"),
    ({"algorithms": ["md5", "md5"]}, "params.algorithms"),
    ({"colour": "red"}, "params.colour"),
])
def test_invalid_param_is_400_naming_it(api: Api, params: dict[str, object], named: str) -> None:
    file_record = api.upload(DATA / "seattle-weather.csv")
    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "hash", "inputs": [file_record["file_id"]],
                                                           "params": params})
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]["message"]


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"kind": 3}', b'{"kind": "hash", "inputs": "x"}'])
def test_malformed_job_body_is_400(api: Api, body: bytes) -> None:
    response = api.client.post(f"{api.prefix}/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text


def test_too_many_inputs_is_400(api: Api) -> None:
    first = api.upload(DATA / "seattle-weather.csv")
    second = api.upload(DATA / "airports.csv")
    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "hash",
                                                           "inputs": [first["file_id"], second["file_id"]]})
    assert response.status_code == 400
    assert "inputs" in response.json()["error"]["message"]


async def test_websocket_token_and_origin(api: Api, other: Api) -> None:
    url = api.ws_url()
    with pytest.raises(websockets.InvalidStatus) as wrong_token:
        async with websockets.connect(url.replace(api.token, other.token)):
            pass
    assert wrong_token.value.response.status_code == 401

    with pytest.raises(websockets.InvalidStatus) as foreign:
        async with websockets.connect(url, origin="http://evil.example"):
            pass
    assert foreign.value.response.status_code == 403

    async with websockets.connect(url, origin=api.server.url) as ws:
        snapshot = await asyncio.wait_for(ws.recv(), 10)
    assert '"snapshot"' in snapshot


async def test_websocket_other_sessions_job_is_404(api: Api, other: Api) -> None:
    job = other.start("spin", [], seconds=0)
    with pytest.raises(websockets.InvalidStatus) as error:
        async with websockets.connect(api.ws_url(f"/jobs/{job['job_id']}/ws")):
            pass
    assert error.value.response.status_code == 404


async def test_websocket_invalid_after_is_400(api: Api) -> None:
    with pytest.raises(websockets.InvalidStatus) as error:
        async with websockets.connect(api.ws_url(after="-1")):
            pass
    assert error.value.response.status_code == 400


def test_unknown_param_lists_valid_ones(api: Api) -> None:
    file_record = api.upload(DATA / "seattle-weather.csv")
    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "csv-profile", "inputs": [file_record["file_id"]],
                                                           "params": {"delimeter": ";"}})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "params.delimeter: unknown field" in message
    assert "'delimiter'" in message


def test_put_multipart_is_400(api: Api) -> None:
    response = api.client.put(f"{api.prefix}/files/data.csv", files={"file": ("data.csv", b"a,b\n")})
    assert response.status_code == 400
    assert "POST" in response.json()["error"]["message"]


def test_put_form_type_is_replaced_by_guess(api: Api) -> None:
    response = api.client.put(f"{api.prefix}/files/data.csv", content=b"a,b\n1,2\n",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201
    assert response.json()["content_type"] == "text/csv"


def test_deeply_nested_json_is_400(api: Api) -> None:
    response = api.client.post(f"{api.prefix}/jobs", content=b"[" * 100_000 + b"]" * 100_000,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "nested" in response.json()["error"]["message"]


@pytest.mark.parametrize("after", ["\u00b2", "\u0661\u0662", "1.5", "x"])
async def test_websocket_non_ascii_after_is_400(api: Api, after: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as error:
        async with websockets.connect(api.ws_url(after=quote(after))):
            pass
    assert error.value.response.status_code == 400


def test_large_inputs_are_shortened_in_log(api: Api, server: Server) -> None:
    before = len(server.log())
    for _ in range(5):
        response = api.client.post(f"{api.prefix}/jobs", json={"kind": "k" * 1_000_000, "inputs": []})
        assert response.status_code == 400
        assert len(response.text) < 1000
    job = api.start("fail", [], message="m" * 1_000_000)
    record = api.wait_job(job["job_id"])
    assert record["state"] == "failed"
    assert len(record["error"]["message"]) < 3000
    assert len(server.log()) - before < 100_000
