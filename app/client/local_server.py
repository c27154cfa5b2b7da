"""A private server for one ``offload run`` command: a ``python -m app.main`` child process on a free
loopback port, with a temporary data directory that is removed when the server stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from ..config import Settings, SettingsError, settings_from

# Starting the Manager and every worker under spawn can take a while on a loaded machine.
READY_TIMEOUT_S = 120.0
# Seconds the client waits beyond the server's --shutdown-timeout-s before it kills the server.
STOP_MARGIN_S = 10.0
POLL_INTERVAL_S = 0.1
# Characters of the server log shown when it fails to start.
LOG_TAIL_CHARS = 4000
# The directory that contains the ``app`` package, so the child imports this very copy of it.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class LocalServerError(RuntimeError):
    """Raised when the local server does not start."""


class LocalServer:
    """Start the server on entry and stop it, its children and its data directory on exit."""

    def __init__(self, extra_kinds: tuple[str, ...] = ()) -> None:
        self.extra_kinds = extra_kinds
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._temp_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._temp_dir is not None
        return self._temp_dir / "server.log"

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until ``/readyz`` returns 200."""
        self._temp_dir = Path(tempfile.mkdtemp(prefix="offload-run-"))
        self.port = _free_port()
        command = [sys.executable, "-m", "app.main", "--host", "127.0.0.1", "--port", str(self.port),
                   "--data-dir", str(self._temp_dir / "data")]
        if self.extra_kinds:
            command += ["--extra-kinds", ",".join(self.extra_kinds)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=PACKAGE_PARENT, env=_child_environment(self.extra_kinds),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            **_own_process_group())
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise LocalServerError(f"the local server exited with status {self.process.returncode} "
                                           f"while starting:\n{self._log_tail()}")
                try:
                    if client.get(self.url + "/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(POLL_INTERVAL_S)
        raise LocalServerError(f"the local server was not ready within {READY_TIMEOUT_S:.0f} s:\n"
                               f"{self._log_tail()}")

    def _log_tail(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-LOG_TAIL_CHARS:].rstrip()

    def stop(self) -> None:
        """Ask the server to shut down, kill whatever remains after the timeout, and remove its files.

        A second Ctrl+C while waiting skips the rest of the graceful shutdown.
        """
        try:
            if self.process is not None:
                self._stop_process(self.process)
        finally:
            if self._temp_dir is not None:
                _remove_tree(self._temp_dir)
                self._temp_dir = None

    def _stop_process(self, process: subprocess.Popen[bytes]) -> None:
        children = _children(process.pid)
        try:
            if process.poll() is None:
                _request_shutdown(process)
                process.wait(_stop_timeout())
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            children = _children(process.pid) or children
            process.kill()
            process.wait()
        finally:
            # The server stops its workers and Manager itself; this only catches what a forced exit left.
            for child in children:
                _kill(child)


def _stop_timeout() -> float:
    """Return how long the server may take to stop: its shutdown timeout, which OFFLOAD_* variables
    may change, plus a margin."""
    try:
        return settings_from({}).shutdown_timeout_s + STOP_MARGIN_S
    except SettingsError:
        # The server would not have started with these variables.
        return Settings().shutdown_timeout_s + STOP_MARGIN_S


def _free_port() -> int:
    # NOTE: another program may take the port between this check and the server's bind; the server
    # then exits with a message that names the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_environment(extra_kinds: tuple[str, ...]) -> dict[str, str]:
    """Return the server's environment. With extra kinds, the working directory joins the import
    path, so their modules import as they would with ``python -m app.main`` run from there."""
    environ = dict(os.environ)
    if extra_kinds:
        paths = [os.getcwd(), *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
        environ["PYTHONPATH"] = os.pathsep.join(paths)
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


def _own_process_group() -> dict[str, Any]:
    """Keep the terminal's Ctrl+C away from the server, so the client decides when it stops."""
    if sys.platform == "win32":
        # CTRL_BREAK_EVENT can only be sent to a process group of its own.
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _request_shutdown(process: subprocess.Popen[bytes]) -> None:
    if sys.platform == "win32":
        process.send_signal(signal.CTRL_BREAK_EVENT)
    else:
        process.send_signal(signal.SIGTERM)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(process: psutil.Process) -> None:
    try:
        process.kill()
    except psutil.NoSuchProcess:
        pass


def _remove_tree(path: Path) -> None:
    # Windows may hold a just-closed file of an exited process open for a moment.
    for _attempt in range(20):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    shutil.rmtree(path, ignore_errors=True)
