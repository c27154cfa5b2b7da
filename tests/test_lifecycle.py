"""Start-up and shutdown: spawn-safe imports, daemonic launches, signals and leftover processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from .conftest import ROOT, Api, alive, free_port, open_silent_websocket, stored_files, wait_gone

LAUNCH_HINT = "python -m app.main"


def test_importing_app_starts_nothing() -> None:
    """Import every module under app/ in a fresh interpreter; no child, thread or Manager may appear."""
    script = textwrap.dedent("""
        import importlib, multiprocessing, pkgutil, threading
        import psutil
        import app
        names = [info.name for info in pkgutil.walk_packages(app.__path__, "app.")]
        for name in names:
            importlib.import_module(name)
        assert "app.main" in names, names
        assert "app.workers.hashes" in names, names
        children = psutil.Process().children(recursive=True)
        assert children == [], children
        assert multiprocessing.active_children() == [], multiprocessing.active_children()
        threads = [thread.name for thread in threading.enumerate()]
        assert threads == ["MainThread"], threads
        print("imported", len(names))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported")


def test_daemonic_process_fails_fast(tmp_path: object) -> None:
    """Run the app's start-up in a daemonic spawned process, as Hypercorn's command line does."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tests.daemonic", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=90)
    assert time.monotonic() - started < 30
    assert "exitcode 1" in result.stdout, result.stdout + result.stderr
    assert "daemonic" in result.stderr
    assert LAUNCH_HINT in result.stderr
    assert "--workers 0" in result.stderr


def test_hypercorn_command_fails_fast(tmp_path: object) -> None:
    """The plain hypercorn command prints how to launch instead and ends without serving."""
    port = free_port()
    env = {**os.environ, "OFFLOAD_DATA_DIR": str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "hypercorn", "app.main:app", "--bind", f"127.0.0.1:{port}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=90, env=env)
    assert time.monotonic() - started < 30
    assert LAUNCH_HINT in result.stderr
    # NOTE: Hypercorn 0.18 exits with status 0 here because its run() overwrites the failed worker's
    # exit code with the result of joining an empty process list (pgjones/hypercorn#269).


def test_hypercorn_workers_zero_serves(tmp_path: object) -> None:
    port = free_port()
    env = {**os.environ, "OFFLOAD_DATA_DIR": str(tmp_path), "OFFLOAD_WORKERS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "hypercorn", "--workers", "0", "app.main:app",
                                "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz").status_code
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM if sys.platform != "win32" else signal.CTRL_BREAK_EVENT)
        process.wait(30)
    # The hypercorn command sets up only its own loggers, so the app sets up the rest.
    assert process.stderr is not None
    assert "ready in" in process.stderr.read().decode(errors="replace")


def test_second_server_on_same_data_dir_refused(server_factory: object) -> None:
    first = server_factory()
    second = server_factory("--data-dir", str(first.data_dir), wait=False)
    assert second.process.wait(60) == 1
    assert "in use by another Offload server" in second.log()
    assert httpx.get(first.url + "/readyz").status_code == 200


def test_help_lists_units() -> None:
    result = subprocess.run([sys.executable, "-m", "app.main", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for expected in ("--max-upload-bytes", "--job-grace-s", "seconds", "bytes", "OFFLOAD_PORT"):
        assert expected in result.stdout


def test_invalid_flag_names_value() -> None:
    result = subprocess.run([sys.executable, "-m", "app.main", "--workers", "zero"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'zero'" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses CTRL_BREAK_EVENT")
@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM to the server"])
def test_signal_with_running_jobs_exits_cleanly(server_factory: object, how: str) -> None:
    """Jobs running, one queued, a websocket open and an upload arriving when the signal comes."""
    server = server_factory()
    api = Api(server)
    jobs = [api.start("spin", [], seconds=60) for _ in range(2)]
    queued = api.start("spin", [], seconds=60)
    for job in jobs:
        api.wait_job(job["job_id"], states=frozenset({"running"}))
    children = server.child_processes()
    # The Manager, the resource tracker on POSIX, and two workers.
    assert len(children) >= 3

    watcher = open_silent_websocket(server, f"{api.prefix}/ws?token={api.token}")
    upload_started = threading.Event()
    uploads: list[int] = []

    def slow_body() -> Iterator[bytes]:
        for _ in range(400):
            upload_started.set()
            yield b"x" * 65536
            time.sleep(0.02)

    def upload() -> None:
        try:
            uploads.append(Api(server, (api.session_id, api.token)).client.put(
                f"{api.prefix}/files/big.bin", content=slow_body()).status_code)
        except httpx.TransportError:
            uploads.append(0)

    uploader = threading.Thread(target=upload)
    uploader.start()
    upload_started.wait(10)

    started = time.monotonic()
    if how.startswith("SIGINT"):
        os.killpg(server.process.pid, signal.SIGINT)
    else:
        server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(10)
    elapsed = time.monotonic() - started
    uploader.join(10)
    watcher.close()

    assert code == 0, server.log()
    assert elapsed < 10
    assert wait_gone(children) == [], [process.cmdline() for process in alive(children)]
    assert uploads in ([503], [0])
    assert stored_files(server) == []
    log = server.log()
    assert "stopped" in log
    for job in jobs:
        assert f"job={job['job_id']} interrupted" in log
    assert "interrupting 1 queued jobs" in log

    restarted = server_factory("--data-dir", str(server.data_dir))
    again = Api(restarted, (api.session_id, api.token))
    for job in [*jobs, queued]:
        assert again.job(job["job_id"])["state"] == "interrupted"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses CTRL_BREAK_EVENT")
async def test_websocket_sees_final_states_then_1001(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    running = [api.start("spin", [], seconds=60) for _ in range(2)]
    queued = api.start("spin", [], seconds=60)
    for job in running:
        api.wait_job(job["job_id"], states=frozenset({"running"}))

    async with websockets.connect(api.ws_url()) as ws:
        await ws.recv()
        server.process.send_signal(signal.SIGTERM)
        events = [json.loads(message) async for message in ws]
        close_code = ws.close_code

    final = {event["job_id"]: event["state"] for event in events if event["type"] == "state"}
    assert final == {job["job_id"]: "interrupted" for job in [*running, queued]}
    assert close_code == 1001
    assert server.process.wait(10) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses CTRL_BREAK_EVENT")
def test_upload_in_progress_at_shutdown_gets_503(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    responses: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        for index in range(200):
            if index == 5:
                server.process.send_signal(signal.SIGTERM)
            yield b"x" * 65536
            time.sleep(0.02)

    def upload() -> None:
        responses.append(api.client.put(f"{api.prefix}/files/big.bin", content=slow_body()))

    thread = threading.Thread(target=upload)
    thread.start()
    thread.join(30)
    assert server.process.wait(15) == 0
    assert responses[0].status_code == 503
    assert responses[0].json()["error"]["code"] == "shutting_down"
    assert stored_files(server) == []
    assert "CancelledError" not in server.log()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses CTRL_BREAK_EVENT")
@pytest.mark.parametrize("children", [1, 3])
def test_ctrl_c_during_startup_is_clean(server_factory: object, children: int) -> None:
    """Ctrl+C while the Manager and the workers start; an interrupt during imports is Python's own."""
    server = server_factory(wait=False)
    deadline = time.monotonic() + 30
    while len(server.child_processes()) < children and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(server.process.pid, signal.SIGINT)
    code = server.process.wait(20)
    log = server.log()
    assert "Traceback" not in log, log
    assert code in (0, 1), log
