"""Hostile requests outside uploads: huge resume numbers, huge messages, echoed input, odd parameters."""

from __future__ import annotations

import httpx
import pytest
import websockets

from .conftest import DATA, Api, Server

HUGE_NUMBER = "9" * 5000


def test_huge_resume_number_is_400(api: Api, server: Server) -> None:
    job = api.start("hash", [api.upload(DATA / "zipcodes.csv")["file_id"]])
    for path, headers in ((f"{api.prefix}/events", {"Last-Event-ID": HUGE_NUMBER}),
                          (f"{api.prefix}/jobs/{job['job_id']}/events?after={HUGE_NUMBER}", {})):
        response = api.client.get(path, headers=headers)
        assert response.status_code == 400, response.text
        assert "invalid sequence number" in response.json()["error"]["message"]
    assert "unhandled error" not in server.log()


async def test_huge_resume_number_on_websocket_is_400(api: Api) -> None:
    with pytest.raises(websockets.InvalidStatus) as error:
        async with websockets.connect(api.ws_url(after=HUGE_NUMBER)):
            pass
    assert error.value.response.status_code == 400


async def test_large_websocket_message_closes_connection(api: Api) -> None:
    async with websockets.connect(api.ws_url(), max_size=None) as ws:
        await ws.recv()
        await ws.send(b"x" * (65 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


def test_echoed_input_is_shortened(api: Api) -> None:
    file_id = api.upload(DATA / "zipcodes.csv")["file_id"]
    response = api.client.post(f"{api.prefix}/jobs", json={
        "kind": "hash", "inputs": [file_id], "params": {"k" * 900_000: 1, **{f"x{i}": i for i in range(50)}}})
    assert response.status_code == 400
    assert len(response.content) < 10_000
    assert "more errors" in response.json()["error"]["message"]


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("csv-profile", {"encoding": "rot13"}, "encoding"),
    ("csv-profile", {"encoding": "undefined"}, "encoding"),
    ("csv-profile", {"delimiter": "\n"}, "delimiter"),
    ("csv-profile", {"delimiter": '"'}, "delimiter"),
    ("compress", {"level": True}, "level"),
])
def test_unusable_params_rejected(api: Api, kind: str, params: dict[str, object], field: str) -> None:
    file_id = api.upload(DATA / "zipcodes.csv")["file_id"]
    response = api.client.post(f"{api.prefix}/jobs", json={"kind": kind, "inputs": [file_id], "params": params})
    assert response.status_code == 400, response.text
    assert f"params.{field}" in response.json()["error"]["message"]


def test_download_is_never_sniffed(api: Api) -> None:
    response = api.client.put(f"{api.prefix}/files/page.html", content=b"<script>alert(1)</script>",
                              headers={"Content-Type": "text/html"})
    download = api.client.get(f"{api.prefix}/files/{response.json()['file_id']}/content")
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in download.headers["content-security-policy"]
    assert download.headers["content-disposition"].startswith("attachment")


def test_readyz_after_hostile_requests(server: Server) -> None:
    assert httpx.get(f"{server.url}/readyz").status_code == 200
