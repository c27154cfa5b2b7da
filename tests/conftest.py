"""Fixtures that start real Offload servers as subprocesses on free loopback ports."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bench.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


@dataclass
class Server:
    """A running ``python -m app.main`` process."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    children: list[psutil.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def child_processes(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> int:
        """Ask the server to shut down as a service manager would, and return its exit code."""
        if self.process.poll() is None:
            if sys.platform == "win32":
                self.process.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"server did not exit within {STOP_TIMEOUT_S} s\n{self.log()}") from None


def start_server(tmp_path: Path, *args: str, wait: bool = True, port: int | None = None) -> Server:
    """Start a server; with the ``port`` and ``tmp_path`` of an earlier one, it reuses that one's data directory."""
    port = port or free_port()
    data_dir = tmp_path / f"data-{port}"
    log_path = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-m", "app.main", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--workers", "2", "--extra-kinds", "tests.kinds", *args]
    # A new process group lets tests send group-wide signals, as a terminal's Ctrl+C does.
    extra: dict[str, Any] = {}
    if sys.platform == "win32":
        extra["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        extra["start_new_session"] = True
    # Appending keeps the log of an earlier server on the same port.
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, **extra)
    server = Server(process, port, data_dir, log_path)
    if wait:
        wait_ready(server)
        server.children = server.child_processes()
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.process.kill()
    raise AssertionError(f"server not ready within {STARTUP_TIMEOUT_S} s\n{server.log()}")


def open_silent_websocket(server: Server, path: str) -> socket.socket:
    """Complete a websocket handshake, then never read again, like a stalled client."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def subscribers(server: Server) -> int:
    """Return the server's open websocket and event-stream subscriptions, from /readyz."""
    return httpx.get(server.url + "/readyz").json()["subscribers"]


def wait_no_subscribers(server: Server, timeout: float = 10.0) -> int:
    """Wait until the server has no subscriptions or ``timeout`` seconds pass; return how many remain."""
    deadline = time.monotonic() + timeout
    while subscribers(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    return subscribers(server)


def stored_files(server: Server) -> list[Path]:
    """List the uploads and job outputs on disk; the lock file and the journal are not among them."""
    sessions = server.data_dir / "sessions"
    return sorted(path for path in sessions.rglob("*") if path.is_file()) if sessions.is_dir() else []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    result = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                result.append(process)
        except psutil.NoSuchProcess:
            pass
    return result


def wait_gone(processes: list[psutil.Process], timeout: float = 5.0) -> list[psutil.Process]:
    """Wait for processes to exit; return those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(processes)


@pytest.fixture(name="server_factory")
def _server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def factory(*args: str, wait: bool = True) -> Server:
        server = start_server(tmp_path, *args, wait=wait)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        if server.process.poll() is None:
            server.stop()


@pytest.fixture(name="server", scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


class Api:
    """An HTTP client bound to one session of a server."""

    def __init__(self, server: Server, session: tuple[str, str] | None = None) -> None:
        """Create a session, or use ``session`` (its id and token), for example after a restart."""
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=30)
        if session is None:
            created = self.client.post("/api/sessions")
            assert created.status_code == 201, created.text
            session = created.json()["session_id"], created.json()["token"]
        self.session_id, self.token = session
        self.client.headers["Authorization"] = f"Bearer {self.token}"

    @property
    def prefix(self) -> str:
        return f"/api/sessions/{self.session_id}"

    def ws_url(self, path: str = "/ws", **query: Any) -> str:
        params = "&".join(f"{key}={value}" for key, value in {"token": self.token, **query}.items())
        return f"{self.server.ws_url}{self.prefix}{path}?{params}"

    def upload(self, path: Path, name: str | None = None) -> dict[str, Any]:
        response = self.client.put(f"{self.prefix}/files/{name or path.name}", content=path.read_bytes())
        assert response.status_code == 201, response.text
        return response.json()

    def start(self, kind: str, inputs: list[str], **params: Any) -> dict[str, Any]:
        response = self.client.post(f"{self.prefix}/jobs", json={"kind": kind, "inputs": inputs, "params": params})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"{self.prefix}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_job(self, job_id: str, timeout: float = 30.0,
                 states: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "timed_out",
                                                     "interrupted"})) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if record["state"] in states:
                return record
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {sorted(states)} within {timeout} s: {self.job(job_id)}")


@pytest.fixture(name="api")
def _api(server: Server) -> Iterator[Api]:
    api = Api(server)
    yield api
    api.client.close()
