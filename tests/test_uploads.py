"""Uploads: streamed raw and multipart bodies, the size limit at its edge, and downloads."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from .conftest import DATA, Api, Server, start_server, stored_files

LIMIT = 64 * 1024


@pytest.fixture(name="small_server", scope="module")
def _small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("small"), "--max-upload-bytes", str(LIMIT))
    yield server
    server.stop()


@pytest.fixture(name="small_api")
def _small_api(small_server: Server) -> Iterator[Api]:
    api = Api(small_server)
    yield api
    api.client.close()


def chunked(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_upload_at_limit_is_stored(small_api: Api) -> None:
    data = bytes(range(256)) * (LIMIT // 256)
    assert len(data) == LIMIT
    response = small_api.client.put(f"{small_api.prefix}/files/edge.bin", content=data)
    assert response.status_code == 201, response.text
    assert response.json()["size"] == LIMIT
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_over_limit_rejected(small_api: Api, small_server: Server, framing: str) -> None:
    before = stored_files(small_server)
    data = b"x" * (LIMIT + 1)
    content = data if framing == "content-length" else chunked(data)
    response = small_api.client.put(f"{small_api.prefix}/files/over.bin", content=content)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert str(LIMIT) in response.json()["error"]["message"]
    assert stored_files(small_server) == before
    assert small_api.client.get(f"{small_api.prefix}/files").json()["files"] == []


def test_multipart_over_limit_rejected(small_api: Api, small_server: Server) -> None:
    before = stored_files(small_server)
    files = [("file", ("ok.bin", b"a" * 10)), ("file", ("big.bin", b"b" * (LIMIT + 1)))]
    response = small_api.client.post(f"{small_api.prefix}/files", files=files)
    assert response.status_code == 413, response.text
    # The first, valid part of the rejected request is removed too.
    assert stored_files(small_server) == before
    assert small_api.client.get(f"{small_api.prefix}/files").json()["files"] == []


def test_multipart_several_files(api: Api) -> None:
    names = ["airports.csv", "seattle-weather.csv"]
    files = [("file", (name, (DATA / name).read_bytes(), "text/csv")) for name in names]
    response = api.client.post(f"{api.prefix}/files", files=files)
    assert response.status_code == 201, response.text
    records = response.json()["files"]
    assert [record["name"] for record in records] == names
    for record, name in zip(records, names):
        assert record["sha256"] == hashlib.sha256((DATA / name).read_bytes()).hexdigest()
        assert record["content_type"] == "text/csv"
    listed = api.client.get(f"{api.prefix}/files").json()["files"]
    assert [record["file_id"] for record in listed] == [record["file_id"] for record in records]


@pytest.mark.parametrize("content_type", ["multipart/form-data", "application/json", "text/plain"])
def test_multipart_bad_content_type(api: Api, content_type: str) -> None:
    response = api.client.post(f"{api.prefix}/files", content=b"--x\r\n", headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_multipart_truncated_body(api: Api, server: Server) -> None:
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n"
            b"partial data without the closing boundary")
    before = stored_files(server)
    response = api.client.post(f"{api.prefix}/files", content=body,
                               headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 400, response.text
    assert stored_files(server) == before


def test_download_round_trip(api: Api) -> None:
    record = api.upload(DATA / "seattle-weather.csv", name="Погода.csv")
    response = api.client.get(f"{api.prefix}/files/{record['file_id']}/content")
    assert response.status_code == 200
    assert response.content == (DATA / "seattle-weather.csv").read_bytes()
    disposition = response.headers["content-disposition"]
    assert "filename*=UTF-8''%D0%9F%D0%BE%D0%B3%D0%BE%D0%B4%D0%B0.csv" in disposition
    assert 'filename="' in disposition


def test_upload_name_is_never_a_path(api: Api, server: Server) -> None:
    record = api.upload(DATA / "seattle-weather.csv", name="..%2F..%2Fescape.csv")
    assert record["name"] == "escape.csv"
    for path in stored_files(server):
        assert server.data_dir.resolve() in path.resolve().parents
    assert not (server.data_dir.parent / "escape.csv").exists()


def test_bidi_override_removed_from_name(api: Api) -> None:
    record = api.upload(DATA / "seattle-weather.csv", name="%E2%80%AEvsc.exe")
    assert record["name"] == "vsc.exe"


def test_delete_file(api: Api) -> None:
    record = api.upload(DATA / "seattle-weather.csv")
    assert api.client.delete(f"{api.prefix}/files/{record['file_id']}").status_code == 204
    assert api.client.get(f"{api.prefix}/files/{record['file_id']}/content").status_code == 404
    assert api.client.delete(f"{api.prefix}/files/{record['file_id']}").status_code == 404


def test_delete_session_removes_files(server: Server) -> None:
    api = Api(server)
    api.upload(DATA / "seattle-weather.csv")
    session_dir = server.data_dir / "sessions" / api.session_id
    assert session_dir.is_dir()
    assert api.client.delete(api.prefix).status_code == 204
    assert api.client.get(f"{api.prefix}/files").status_code == 404
    deadline = time.monotonic() + 10
    while session_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not session_dir.exists()


@pytest.mark.parametrize("parts", [1, 2])
def test_multipart_over_limit_leaves_no_partial(small_api: Api, small_server: Server, parts: int) -> None:
    """The part that crosses the limit is removed too, whether it is the first part or a later one."""
    before = stored_files(small_server)
    files = [("file", (f"small{index}.bin", b"s" * 10)) for index in range(parts - 1)]
    files.append(("file", ("big.bin", b"b" * (LIMIT * 2))))
    response = small_api.client.post(f"{small_api.prefix}/files", files=files)
    assert response.status_code == 413
    assert stored_files(small_server) == before


def test_multipart_header_and_excess_in_one_chunk(server_factory: object) -> None:
    """A part whose header and excess bytes arrive in one chunk is removed too, as curl sends them."""
    tiny = server_factory("--max-upload-bytes", "1000")
    api = Api(tiny)
    before = stored_files(tiny)
    response = api.client.post(f"{api.prefix}/files", files=[("file", ("data.csv", (DATA / "airports.csv").read_bytes()))])
    assert response.status_code == 413
    assert stored_files(tiny) == before


def test_upload_into_deleted_session_is_404(server: Server) -> None:
    api = Api(server)
    other = Api(server, (api.session_id, api.token))

    def slow_body() -> Iterator[bytes]:
        for index in range(100):
            if index == 5:
                assert other.client.delete(api.prefix).status_code == 204
            yield b"x" * 65536
            time.sleep(0.01)

    response = api.client.put(f"{api.prefix}/files/late.bin", content=slow_body())
    assert response.status_code == 404
    assert "Traceback" not in server.log()
    assert not (server.data_dir / "sessions" / api.session_id).exists()
