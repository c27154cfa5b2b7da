"""Server subprocesses for benchmarks: start on a free loopback port, wait until ready, stop cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
PROBLEM_MARKERS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")


class ServerError(RuntimeError):
    """Raised when a server subprocess exits early or does not become ready."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A server subprocess whose stdout and stderr both go to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def problem_lines(self) -> list[str]:
        """Return the log lines at WARNING level or above, and traceback headers."""
        return [line for line in self.log().splitlines() if any(marker in line for marker in PROBLEM_MARKERS)]


def start_server(name: str, arguments: list[str], port: int, log_path: Path) -> ServerProcess:
    """Start ``python ARGUMENTS`` in the repository root, so spawned workers can import ``bench``."""
    # A process group of its own keeps a terminal's Ctrl+C away from the server, so the
    # benchmark decides when it stops.
    extra: dict[str, Any] = {}
    if sys.platform == "win32":
        extra["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        extra["start_new_session"] = True
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, *arguments], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   **extra)
    return ServerProcess(name, process, port, log_path)


def wait_ready(server: ServerProcess, method: str, path: str, status: int) -> None:
    """Poll ``METHOD path`` until it returns ``status``. Raise ServerError on exit or after 60 s."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"{server.name} server exited with code {server.process.returncode} "
                              f"before it was ready; its log ends:\n{server.log_tail()}")
        try:
            if httpx.request(method, server.url + path, timeout=1).status_code == status:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServerError(f"{server.name} server did not return {status} for {method} {path} within "
                      f"{STARTUP_TIMEOUT_S:.0f} s; its log ends:\n{server.log_tail()}")


def stop_server(server: ServerProcess) -> int | None:
    """Ask the server to shut down as a service manager would. Return its exit code, or None if killed.

    It gets SIGTERM on POSIX and CTRL_BREAK_EVENT on Windows, and is killed after 15 s.
    """
    if server.process.poll() is None:
        if sys.platform == "win32":
            server.process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        return None


class PeakMemory:
    """Samples a process's resident memory every 20 ms in a thread and keeps the highest value.

    Used by the benchmarks and by the upload memory tests.
    """

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)
