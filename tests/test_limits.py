"""Upload limits: flow control under a slow disk, idle bodies, and the per-session file and byte limits."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.servers import PeakMemory

from .conftest import Api, Server, start_server, stored_files

MiB = 1024 * 1024


def raw_request(server: Server, head: str, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(head.encode("latin-1") + b"\r\n" + body)
    return sock


def read_status(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """Read one response from ``sock``; return its status code and everything received."""
    sock.settimeout(timeout)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        if length and len(body) >= int(length.group(1)):
            break
    return int(received.split(b" ", 2)[1]), received


def repeated(total: int, block: bytes) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = block[:total - sent]
        sent += len(piece)
        yield piece


def test_slow_disk_keeps_memory_flat(server_factory: Any) -> None:
    total = 2 * 1024 * MiB
    # 5 ms before each 1 MiB write caps the disk at about 200 MiB/s, slower than loopback, so
    # without flow control the body would pile up in the server's memory.
    server: Server = server_factory("--max-upload-bytes", "3GiB", "--upload-write-delay-s", "0.005")
    api = Api(server)
    block = bytes(range(256)) * (4 * MiB // 256)

    with PeakMemory(server.process.pid) as memory:
        response = api.client.put(f"{api.prefix}/files/big.bin", content=repeated(total, block),
                                  headers={"Content-Length": str(total)}, timeout=600)
    assert response.status_code == 201, response.text
    assert response.json()["size"] == total
    print(f"2 GiB upload with slowed writes: server RSS {memory.baseline / MiB:.0f} MiB before, "
          f"peak growth {memory.growth / MiB:.1f} MiB")
    assert memory.growth < 64 * MiB

    response = api.client.delete(f"{api.prefix}/files/{response.json()['file_id']}")
    assert response.status_code == 204


@pytest.fixture(name="idle_server", scope="module")
def _idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("idle"), "--upload-idle-s", "1")
    yield server
    server.stop()


@pytest.mark.parametrize("route", ["raw", "multipart"])
def test_stalled_body_gets_408(idle_server: Server, route: str) -> None:
    api = Api(idle_server)
    before = stored_files(idle_server)
    if route == "raw":
        head = (f"PUT {api.prefix}/files/stalled.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {api.token}\r\nContent-Length: 100000\r\n")
        body = b"x" * 1000
    else:
        head = (f"POST {api.prefix}/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {api.token}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 100000\r\n")
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.bin"\r\n\r\n' + b"x" * 1000

    started = time.monotonic()
    sock = raw_request(idle_server, head, body)
    with sock:
        status, received = read_status(sock, timeout=30)
    elapsed = time.monotonic() - started

    assert status == 408, received
    assert b"--upload-idle-s" in received
    assert elapsed >= 1.0
    assert stored_files(idle_server) == before
    assert api.client.get(f"{api.prefix}/files").json()["files"] == []
    assert api.client.get("/readyz").status_code == 200


def test_slow_but_steady_body_is_stored(idle_server: Server) -> None:
    api = Api(idle_server)

    def trickle() -> Iterator[bytes]:
        for _ in range(4):
            time.sleep(0.5)
            yield b"y" * 100

    response = api.client.put(f"{api.prefix}/files/slow.bin", content=trickle())
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 400


@pytest.fixture(name="quota_server", scope="module")
def _quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("quota"), "--max-files-per-session", "3",
                          "--max-session-bytes", "1000")
    yield server
    server.stop()


def put(api: Api, name: str, content: bytes | Iterator[bytes]) -> httpx.Response:
    return api.client.put(f"{api.prefix}/files/{name}", content=content)


def test_files_per_session_at_limit(quota_server: Server) -> None:
    api = Api(quota_server)
    for index in range(3):
        assert put(api, f"f{index}.txt", b"a").status_code == 201

    response = put(api, "f3.txt", b"a")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_files"
    assert "--max-files-per-session" in response.json()["error"]["message"]

    multipart = api.client.post(f"{api.prefix}/files", files={"file": ("f4.txt", b"a")})
    assert multipart.status_code == 413

    first = api.client.get(f"{api.prefix}/files").json()["files"][0]
    assert api.client.delete(f"{api.prefix}/files/{first['file_id']}").status_code == 204
    assert put(api, "f5.txt", b"a").status_code == 201


def test_other_session_has_its_own_quota(quota_server: Server) -> None:
    full = Api(quota_server)
    assert put(full, "a.bin", b"a" * 1000).status_code == 201
    other = Api(quota_server)
    assert put(other, "b.bin", b"b" * 1000).status_code == 201


@pytest.mark.parametrize("framing", ["content-length", "chunked", "multipart"])
def test_session_bytes_at_limit(quota_server: Server, framing: str) -> None:
    api = Api(quota_server)
    assert put(api, "first.bin", b"a" * 600).status_code == 201
    before = stored_files(quota_server)

    def send(size: int) -> httpx.Response:
        data = b"b" * size
        if framing == "multipart":
            return api.client.post(f"{api.prefix}/files", files={"file": ("next.bin", data)})
        return put(api, "next.bin", data if framing == "content-length" else iter([data[:200], data[200:]]))

    over = send(401)
    assert over.status_code == 413, over.text
    assert over.json()["error"]["code"] in {"session_full", "too_large"}
    assert stored_files(quota_server) == before

    exact = send(400)
    assert exact.status_code == 201, exact.text
    assert sum(item["size"] for item in api.client.get(f"{api.prefix}/files").json()["files"]) == 1000


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_parallel_uploads_share_session_bytes(quota_server: Server, framing: str) -> None:
    api = Api(quota_server)
    headers = {"Content-Length": "600"} if framing == "content-length" else {}

    def slow() -> Iterator[bytes]:
        for _ in range(6):
            time.sleep(0.05)
            yield b"z" * 100

    def upload() -> None:
        response = api.client.put(f"{api.prefix}/files/p.bin", content=slow(), headers=headers)
        results.append(response.status_code)

    results: list[int] = []
    threads = [threading.Thread(target=upload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stored = api.client.get(f"{api.prefix}/files").json()["files"]
    assert sum(item["size"] for item in stored) <= 1000
    if framing == "content-length":
        # The declared length is reserved up front, so exactly one of the two fits.
        assert sorted(results) == [201, 413]
    else:
        # Without a declared length both may hit the limit at the same chunk; neither may pass it.
        assert results.count(201) <= 1
        assert 413 in results


def test_tiny_chunks_keep_memory_flat(server: Server) -> None:
    """A body sent as 1-byte chunks is stored whole, without a Python object per chunk on the server."""
    api = Api(server)
    count = 250_000
    body = b"1\r\nx\r\n" * count + b"0\r\n\r\n"
    head = (f"PUT {api.prefix}/files/tiny.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {api.token}\r\nTransfer-Encoding: chunked\r\n")
    with PeakMemory(server.process.pid) as memory:
        sock = raw_request(server, head, body)
        status, received = read_status(sock, timeout=60)
        sock.close()

    assert status == 201, received
    record = api.client.get(f"{api.prefix}/files").json()["files"][-1]
    assert record["size"] == count
    assert record["sha256"] == hashlib.sha256(b"x" * count).hexdigest()
    assert memory.growth < 8 * MiB, f"server grew by {memory.growth / MiB:.1f} MiB"
