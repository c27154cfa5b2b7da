"""The ``offload run`` client and ``offload kinds``, run as real commands against real servers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .conftest import DATA, ROOT, Server, alive, free_port, stored_files, wait_gone, wait_ready

WEATHER = DATA / "seattle-weather.csv"
COMMAND_TIMEOUT_S = 120.0


def run_cli(*args: str, temp_dir: Path | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app.cli ARGS`` to completion; ``temp_dir`` becomes its temporary directory."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, env=_environment(temp_dir),
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def _environment(temp_dir: Path | None) -> dict[str, str]:
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        environ.update(TMPDIR=str(temp_dir), TEMP=str(temp_dir), TMP=str(temp_dir))
    return environ


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Descendants:
    """Record every descendant process of a running command, polling in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {}
        self.command_lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                if child.pid in self.seen:
                    continue
                self.seen[child.pid] = child
                try:
                    self.command_lines.append(" ".join(child.cmdline()))
                except psutil.Error:
                    pass
            time.sleep(0.02)

    def stop(self) -> list[psutil.Process]:
        self._stop.set()
        self._thread.join()
        return list(self.seen.values())


def servers_using(temp_dir: Path) -> list[psutil.Process]:
    """Find ``app.main`` processes whose data directory is under ``temp_dir``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "app.main" in cmdline and any(str(temp_dir) in part for part in cmdline):
            found.append(process)
    return alive(found)


def parse_document(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"stdout is not JSON:\n{result.stdout}\nstderr:\n{result.stderr}") from None


# A local server for the command


def test_local_run_prints_sha256(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "run", str(WEATHER), "--kind", "hash"],
                               cwd=ROOT, env=_environment(temp_dir), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    descendants = Descendants(process.pid)
    stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
    children = descendants.stop()

    assert process.returncode == 0, stderr
    assert sha256_of(WEATHER) in stdout
    assert "seattle-weather.csv: hash succeeded" in stdout
    assert "1 of 1 jobs succeeded" in stderr
    # The server, its Manager and its workers were all seen, and none outlives the command.
    assert any("-m app.main" in line for line in descendants.command_lines), descendants.command_lines
    assert len(children) >= 3, descendants.command_lines
    assert wait_gone(children, timeout=10) == []
    assert servers_using(temp_dir) == []
    assert list(temp_dir.iterdir()) == []


def test_local_run_with_extra_kinds(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    result = run_cli("run", "--kind", "fail", "--param", "message=no luck", "--extra-kinds", "tests.kinds", "--json",
                     temp_dir=temp_dir)

    assert result.returncode == 1, result.stderr
    document = parse_document(result)
    assert document["ok"] is False
    [job] = document["jobs"]
    assert job["state"] == "failed"
    assert job["error"]["type"] == "ValueError"
    assert job["error"]["message"] == "no luck"
    assert servers_using(temp_dir) == []
    assert list(temp_dir.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT; Windows Ctrl+C goes to a whole console")
def test_ctrl_c_stops_local_server(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--kind", "spin", "--param", "seconds=600", "--extra-kinds",
         "tests.kinds"], cwd=ROOT, env=_environment(temp_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    descendants = Descendants(process.pid)
    try:
        _wait_local_job_running(process, temp_dir)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    children = descendants.stop()

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert wait_gone(children, timeout=10) == []
    assert servers_using(temp_dir) == []
    assert list(temp_dir.iterdir()) == []


def _wait_local_job_running(process: subprocess.Popen[str], temp_dir: Path) -> None:
    """Wait until the command's local server runs a job, reading the server's port from its command line."""
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for server in servers_using(temp_dir):
            cmdline = server.cmdline()
            port = cmdline[cmdline.index("--port") + 1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("running") == 1:
                    return
            except (httpx.TransportError, ValueError):
                pass
        time.sleep(0.1)
    raise AssertionError(f"no job running within {COMMAND_TIMEOUT_S} s")


# Against a running server


def test_json_output_has_digest(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--server", server.url, "--json")

    assert result.returncode == 0, result.stderr
    document = parse_document(result)
    assert document["ok"] is True
    assert document["error"] is None
    [job] = document["jobs"]
    assert job["kind"] == "hash"
    assert job["file"] == str(WEATHER)
    assert job["state"] == "succeeded"
    assert job["result"]["digests"] == {"sha256": sha256_of(WEATHER)}
    assert job["result"]["size"] == WEATHER.stat().st_size
    assert job["outputs"] == []
    # Without --json the command shows progress bars on stderr; here stderr stays empty.
    assert result.stderr == ""


def test_session_deleted_after_run(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--server", server.url)

    assert result.returncode == 0, result.stderr
    assert stored_files(server) == []
    log = server.log()
    assert log.count(" created") == log.count(" deleted"), log


def test_one_job_per_file(server: Server) -> None:
    files = [DATA / "airports.csv", WEATHER]
    result = run_cli("run", *map(str, files), "--kind", "hash", "--server", server.url, "--json")

    assert result.returncode == 0, result.stderr
    jobs = parse_document(result)["jobs"]
    assert [job["file"] for job in jobs] == [str(path) for path in files]
    assert [job["result"]["digests"]["sha256"] for job in jobs] == [sha256_of(path) for path in files]
    assert len({job["job_id"] for job in jobs}) == 2


def test_single_job_gets_every_file(server: Server) -> None:
    files = [DATA / "airports.csv", WEATHER]
    result = run_cli("run", *map(str, files), "--kind", "spin", "--param", "seconds=0", "--single-job",
                     "--server", server.url, "--json")

    assert result.returncode == 0, result.stderr
    [job] = parse_document(result)["jobs"]
    assert job["file"] is None
    assert job["files"] == [str(path) for path in files]
    assert job["state"] == "succeeded"


def test_single_job_over_input_limit_rejected(server: Server) -> None:
    result = run_cli("run", str(WEATHER), str(WEATHER), "--kind", "hash", "--single-job", "--server", server.url)

    assert result.returncode == 2
    assert "kind 'hash' takes 1 input file per job, and this job would get 2" in result.stderr


def test_no_file_for_kind_with_inputs_rejected(server: Server) -> None:
    result = run_cli("run", "--kind", "hash", "--server", server.url)

    assert result.returncode == 2
    assert "kind 'hash' takes 1 input file per job, and this job would get 0\n" in result.stderr


def test_outputs_saved_without_overwriting(server: Server, tmp_path: Path) -> None:
    output_dir = tmp_path / "reports"
    output_dir.mkdir()
    existing = output_dir / "seattle-weather.profile.json"
    existing.write_text("keep me", encoding="utf-8")

    result = run_cli("run", str(WEATHER), "--kind", "csv-profile", "--server", server.url, "--output-dir",
                     str(output_dir), "--json")

    assert result.returncode == 0, result.stderr
    [job] = parse_document(result)["jobs"]
    saved = output_dir / "seattle-weather.profile-1.json"
    assert job["outputs"] == [str(saved)]
    assert json.loads(saved.read_text(encoding="utf-8")) == job["result"]
    assert existing.read_text(encoding="utf-8") == "keep me"


def test_output_dir_created(server: Server, tmp_path: Path) -> None:
    output_dir = tmp_path / "new" / "reports"
    result = run_cli("run", str(WEATHER), "--kind", "csv-profile", "--server", server.url, "--output-dir",
                     str(output_dir))

    assert result.returncode == 0, result.stderr
    saved = output_dir / "seattle-weather.profile.json"
    assert f"saved {saved}" in result.stdout
    assert json.loads(saved.read_text(encoding="utf-8"))["rows"] == 1461


def test_failed_job_exits_1(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "fail", "--server", server.url)

    assert result.returncode == 1
    assert "seattle-weather.csv: fail failed: ValueError: broken on purpose" in result.stdout
    assert "1 of 1 jobs did not succeed: seattle-weather.csv (failed)" in result.stderr
    assert "about to fail" in result.stderr


def test_one_failed_job_exits_1(server: Server, tmp_path: Path) -> None:
    # A field over the csv module's limit of 131,072 characters fails the csv-profile job.
    broken = tmp_path / "long-field.csv"
    broken.write_text("a,b\n" + "x" * 200_000 + ",1\n", encoding="utf-8")
    result = run_cli("run", str(WEATHER), str(broken), "--kind", "csv-profile", "--server", server.url,
                     "--output-dir", str(tmp_path / "out"), "--json")

    assert result.returncode == 1
    jobs = parse_document(result)["jobs"]
    assert [job["state"] for job in jobs] == ["succeeded", "failed"]
    assert jobs[0]["outputs"] == [str(tmp_path / "out" / "seattle-weather.profile.json")]
    assert jobs[1]["outputs"] == []


# Parameters


def test_params_parsed_as_json_or_text(server: Server) -> None:
    single = run_cli("run", str(WEATHER), "--kind", "hash", "--param", "algorithms=md5", "--server", server.url,
                     "--json")
    repeated = run_cli("run", str(WEATHER), "--kind", "hash", "--param", "algorithms=md5", "--param",
                       "algorithms=sha1", "--server", server.url, "--json")
    listed = run_cli("run", str(WEATHER), "--kind", "hash", "--param", 'algorithms=["sha1", "md5"]', "--server",
                     server.url, "--json")

    content = WEATHER.read_bytes()
    md5, sha1 = hashlib.md5(content).hexdigest(), hashlib.sha1(content).hexdigest()
    assert parse_document(single)["jobs"][0]["result"]["digests"] == {"md5": md5}
    assert parse_document(repeated)["jobs"][0]["result"]["digests"] == {"md5": md5, "sha1": sha1}
    assert parse_document(listed)["jobs"][0]["result"]["digests"] == {"sha1": sha1, "md5": md5}


def test_number_and_text_params(server: Server, tmp_path: Path) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "csv-profile", "--param", "top=1", "--param", "delimiter=,",
                     "--param", "header=true", "--server", server.url, "--output-dir", str(tmp_path), "--json")

    assert result.returncode == 0, result.stderr
    report = parse_document(result)["jobs"][0]["result"]
    assert report["delimiter"] == ","
    assert all(len(column["top"]) == 1 for column in report["columns"])
    # A string parameter keeps a value that would parse as a number.
    failed = run_cli("run", str(WEATHER), "--kind", "fail", "--param", "message=404", "--server", server.url,
                     "--json")
    assert parse_document(failed)["jobs"][0]["error"]["message"] == "404"


def test_unknown_param_rejected(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--param", "bogus=1", "--server", server.url)

    assert result.returncode == 2
    assert "params.bogus: unknown field; use one of ['algorithms']" in result.stderr
    assert stored_files(server) == []


def test_invalid_param_value_rejected(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "csv-profile", "--param", "top=500", "--server", server.url)

    assert result.returncode == 2
    assert "params.top" in result.stderr
    assert "500" in result.stderr


def test_param_without_value_rejected(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--param", "algorithms", "--server", server.url)

    assert result.returncode == 2
    assert "invalid --param 'algorithms': use NAME=VALUE" in result.stderr


def test_unknown_kind_rejected(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "nope", "--server", server.url)

    assert result.returncode == 2
    assert "unknown job kind 'nope'; use one of " in result.stderr
    assert "csv-profile" in result.stderr
    assert result.stdout == ""


def test_local_run_unknown_kind(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    result = run_cli("run", str(WEATHER), "--kind", "nope", "--json", temp_dir=temp_dir)

    assert result.returncode == 2
    document = parse_document(result)
    assert document["ok"] is False
    assert "unknown job kind 'nope'" in document["error"]
    assert document["jobs"][0]["state"] == "not started"
    assert list(temp_dir.iterdir()) == []


# Usage and connection errors


def test_missing_file_rejected(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path / "absent.csv"), "--kind", "hash", temp_dir=tmp_path / "tmp")

    assert result.returncode == 2
    assert f"input file {str(tmp_path / 'absent.csv')!r} not found" in result.stderr
    # The check comes before a local server would start.
    assert list((tmp_path / "tmp").iterdir()) == []


def test_unreachable_server_exits_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--server", url)

    assert result.returncode == 3
    assert f"cannot reach the server at {url}" in result.stderr


def test_invalid_server_url_rejected() -> None:
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--server", "127.0.0.1:8000")

    assert result.returncode == 2
    assert "invalid --server '127.0.0.1:8000': use a URL such as http://127.0.0.1:8000" in result.stderr


def test_extra_kinds_with_server_rejected(server: Server) -> None:
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--server", server.url, "--extra-kinds", "tests.kinds")

    assert result.returncode == 2
    assert "--extra-kinds applies to the local server only" in result.stderr


def test_output_dir_file_rejected(server: Server, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = run_cli("run", str(WEATHER), "--kind", "hash", "--server", server.url, "--output-dir", str(blocker))

    assert result.returncode == 2
    assert "invalid --output-dir" in result.stderr


def test_upload_over_server_limit_named(server_factory: Any, tmp_path: Path) -> None:
    small = server_factory("--max-upload-bytes", "1000")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 5_000_000)

    for path in (WEATHER, big):
        result = run_cli("run", str(path), "--kind", "hash", "--server", small.url)
        # The server's 413 for a body it did not read can be lost to the connection reset. Then the
        # client can only suspect the limit, but its message names the setting all the same.
        assert result.returncode in (2, 3), result.stderr
        assert "--max-upload-bytes" in result.stderr


def test_reconnects_after_server_restart(server_factory: Any) -> None:
    first = server_factory("--workers", "1")
    command = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "--kind", "spin", "--param", "seconds=600", "--server", first.url,
         "--json"], cwd=ROOT, env=_environment(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_running(first)
        children = first.child_processes()
        first.process.kill()
        first.process.wait(10)
        assert wait_gone(children, timeout=10) == []
        # The restarted server marks the job interrupted; the client finds out through a reconnect.
        second = server_factory("--port", str(first.port), "--workers", "1", "--data-dir", str(first.data_dir),
                                wait=False)
        second.port = first.port
        wait_ready(second)
        stdout, stderr = command.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        command.kill()

    assert command.returncode == 1, stderr
    [job] = json.loads(stdout)["jobs"]
    assert job["state"] == "interrupted"
    assert job["error"]["type"] == "Interrupted"


def _wait_running(server: Server) -> None:
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    while time.monotonic() < deadline:
        if httpx.get(server.url + "/readyz", timeout=5).json().get("running") == 1:
            return
        time.sleep(0.1)
    raise AssertionError(f"no job running within {COMMAND_TIMEOUT_S} s")


# offload kinds


def test_kinds_lists_parameters() -> None:
    result = run_cli("kinds")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("csv-profile: ") for line in lines)
    assert "  takes 1 input file" in lines
    assert ("  --param algorithms=... (list of sha256|sha1|md5|blake2b|sha3_256, at least 1 item; "
            'default ["sha256"]): digests to compute, each at most once') in lines
    assert "  --param top=... (integer 0 to 100; default 5): most frequent values reported per column" in lines
    assert any(line.startswith("  --param delimiter=... (string of exactly 1 character or null; default null)")
               for line in lines)


def test_kinds_with_extra_kinds_and_json() -> None:
    listed = run_cli("kinds", "--extra-kinds", "tests.kinds")
    described = run_cli("kinds", "--json")

    assert "  takes 0 or more input files" in listed.stdout.splitlines()
    assert "  --param step_bytes=... (integer > 0; default 52428800)" in listed.stdout.splitlines()
    assert [kind["name"] for kind in json.loads(described.stdout)] == [
        "compress", "csv-profile", "decompress", "hash", "image-thumbnails"]
