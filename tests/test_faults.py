"""Faults: crashing and killed workers, stubborn jobs, time limits, worker recycling, memory limits."""

from __future__ import annotations

import re
import signal
import sys
import time

import httpx
import psutil
import pytest

from .conftest import Api, Server, wait_gone

SEGFAULT_CODE = -signal.SIGSEGV if sys.platform != "win32" else 0xC0000005
KILLED_CODE = -signal.SIGKILL if sys.platform != "win32" else 1


def readyz(server: Server) -> dict[str, object]:
    return httpx.get(server.url + "/readyz").json()


def worker_pid(api: Api, job_id: str, other_than: int | None = None) -> int:
    """Read the worker pid that the test kinds put in their progress message."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        record = api.job(job_id)
        match = re.fullmatch(r"pid (\d+)", record["progress"]["message"] or "")
        if record["state"] == "running" and match and int(match.group(1)) != other_than:
            return int(match.group(1))
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} reported no worker pid: {api.job(job_id)}")


@pytest.mark.parametrize(("kind", "params", "exit_code"), [
    ("exit", {"code": 3}, 3),
    ("segfault", {}, SEGFAULT_CODE),
])
def test_crash_fails_only_its_own_job(api: Api, server: Server, kind: str, params: dict[str, int],
                                      exit_code: int) -> None:
    jobs = [api.start("spin", [], seconds=0.3) for _ in range(4)]
    crasher = api.start(kind, [], **params)
    jobs += [api.start("spin", [], seconds=0.3) for _ in range(3)]

    record = api.wait_job(crasher["job_id"])
    assert record["state"] == "failed"
    assert record["error"]["type"] == "WorkerCrashed"
    assert record["error"]["exit_code"] == exit_code
    assert record["attempts"] == 2
    for job in jobs:
        other = api.wait_job(job["job_id"])
        assert other["state"] == "succeeded", other
        assert other["attempts"] == 1
    assert api.wait_job(api.start("spin", [], seconds=0)["job_id"])["state"] == "succeeded"
    log = server.log()
    assert f"job={crasher['job_id']} killed its worker" in log
    assert "retrying (attempt 2 of 2)" in log


def test_worker_killed_from_outside(api: Api) -> None:
    victim = api.start("spin", [], seconds=60)
    bystander = api.start("spin", [], seconds=3)
    pid = worker_pid(api, victim["job_id"])
    bystander_pid = worker_pid(api, bystander["job_id"])
    psutil.Process(pid).kill()

    # The first death is retried on a new worker; the second one fails the job.
    second_pid = worker_pid(api, victim["job_id"], other_than=pid)
    assert api.job(victim["job_id"])["attempts"] == 2
    psutil.Process(second_pid).kill()
    record = api.wait_job(victim["job_id"])
    assert record["state"] == "failed"
    assert record["error"]["exit_code"] == KILLED_CODE

    other = api.wait_job(bystander["job_id"])
    assert other["state"] == "succeeded"
    assert other["attempts"] == 1
    assert psutil.pid_exists(bystander_pid)


def test_cancel_job_that_ignores_flag(server_factory: object) -> None:
    server = server_factory("--cancel-grace-s", "1")
    api = Api(server)
    job = api.start("spin", [], seconds=120, cooperative=False)
    pid = worker_pid(api, job["job_id"])
    started = time.monotonic()
    assert api.client.post(f"{api.prefix}/jobs/{job['job_id']}/cancel").status_code == 202
    record = api.wait_job(job["job_id"], timeout=10)
    assert record["state"] == "cancelled"
    assert time.monotonic() - started < 1 + 2
    # The worker is gone, so its CPU is free.
    assert wait_gone([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=5) == []
    assert api.wait_job(api.start("spin", [], seconds=0)["job_id"])["state"] == "succeeded"


def test_time_limit_kills_looping_job(server_factory: object) -> None:
    server = server_factory("--cancel-grace-s", "1")
    api = Api(server)
    response = api.client.post(f"{api.prefix}/jobs", json={
        "kind": "spin", "inputs": [], "params": {"seconds": 120, "cooperative": False}, "timeout_s": 1})
    assert response.status_code == 202
    assert response.json()["timeout_s"] == 1
    record = api.wait_job(response.json()["job_id"], timeout=15)
    assert record["state"] == "timed_out"
    assert record["error"]["type"] == "TimedOut"
    assert record["finished_at"] - record["started_at"] < 1 + 1 + 2
    assert api.wait_job(api.start("spin", [], seconds=0)["job_id"])["state"] == "succeeded"


def test_time_limit_cooperative_job_stops_itself(api: Api, server: Server) -> None:
    response = api.client.post(f"{api.prefix}/jobs", json={
        "kind": "spin", "inputs": [], "params": {"seconds": 120}, "timeout_s": 0.5})
    record = api.wait_job(response.json()["job_id"], timeout=15)
    assert record["state"] == "timed_out"
    assert f"job={record['job_id']} still running" not in server.log()


def test_time_limit_above_maximum_is_400(server_factory: object) -> None:
    server = server_factory("--max-job-timeout-s", "60", "--job-timeout-s", "30")
    api = Api(server)
    at_limit = api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": [], "timeout_s": 60})
    assert at_limit.status_code == 202
    over = api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": [], "timeout_s": 60.5})
    assert over.status_code == 400
    assert "--max-job-timeout-s" in over.json()["error"]["message"]
    default = api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": []})
    assert default.json()["timeout_s"] == 30


def test_recycled_workers_finish_every_job(server_factory: object) -> None:
    server = server_factory("--max-jobs-per-worker", "2")
    api = Api(server)
    jobs = [api.start("spin", [], seconds=0) for _ in range(50)]
    for job in jobs:
        assert api.wait_job(job["job_id"], timeout=120)["state"] == "succeeded"
    # 50 jobs at 2 per worker take 25 workers: the first two and at least 23 replacements.
    assert readyz(server)["worker_restarts"] >= 23


def test_memory_limit_kills_hog(server_factory: object) -> None:
    server = server_factory("--max-worker-rss-bytes", "300MiB")
    api = Api(server)
    job = api.start("hog", [], step_bytes=20 * 1024 * 1024)
    record = api.wait_job(job["job_id"], timeout=60)
    assert record["state"] == "failed"
    assert record["error"]["type"] == "MemoryLimitExceeded"
    assert "--max-worker-rss-bytes" in record["error"]["message"]
    assert api.wait_job(api.start("spin", [], seconds=0)["job_id"])["state"] == "succeeded"


def spawned_children(server: Server) -> dict[int, psutil.Process]:
    children = {}
    for process in server.child_processes():
        try:
            command = " ".join(process.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            # A worker killed a moment ago may not be reaped yet; it is no longer one of the pool's.
            continue
        if "spawn_main" in command:
            children[process.pid] = process
    return children


def manager_process(server: Server) -> psutil.Process:
    """Return the Manager: the server spawns it before any worker."""
    return min(spawned_children(server).values(), key=lambda process: process.create_time())


def wait_not_ready(server: Server, timeout: float) -> int:
    """Poll /readyz until it is no longer 200 or ``timeout`` seconds pass; return the last status."""
    deadline = time.monotonic() + timeout
    while httpx.get(server.url + "/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return httpx.get(server.url + "/readyz").status_code


def test_idle_worker_death_does_not_fail_next_job(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    newest = max(spawned_children(server).values(), key=lambda process: process.create_time())
    newest.kill()
    time.sleep(1)
    record = api.wait_job(api.start("spin", [], seconds=0)["job_id"])
    assert record["state"] == "succeeded", record
    assert record["attempts"] == 1


def test_job_behind_dying_worker_not_blamed(server_factory: object) -> None:
    # One worker and no retries: a job blamed for a crash it never ran into would fail for good.
    server = server_factory("--workers", "1", "--crash-retries", "0")
    api = Api(server)
    for _ in range(5):
        first = api.start("exit-after-result", [])
        second = api.start("spin", [], seconds=0)
        assert api.wait_job(first["job_id"])["state"] == "succeeded"
        record = api.wait_job(second["job_id"])
        assert record["state"] == "succeeded", record
        assert record["attempts"] == 1
        # The replacement worker starts before the next round.
        api.wait_job(api.start("spin", [], seconds=0)["job_id"])

    assert "queued again" in server.log()
    assert "on every attempt" not in server.log()


def test_pool_recovers_when_new_workers_die(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    manager = manager_process(server)
    job = api.start("spin", [], seconds=60)
    worker_pid(api, job["job_id"])

    # Kill every worker for 3 s, including the ones each replacement starts.
    deadline = time.monotonic() + 3
    killed = 0
    while time.monotonic() < deadline:
        for pid, process in spawned_children(server).items():
            if pid != manager.pid:
                try:
                    process.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.02)
    assert killed > 2

    if api.job(job["job_id"])["state"] not in ("failed", "succeeded"):
        api.client.post(f"{api.prefix}/jobs/{job['job_id']}/cancel")
    record = api.wait_job(api.start("spin", [], seconds=0)["job_id"], timeout=30)
    assert record["state"] == "succeeded", server.log()[-3000:]
    assert readyz(server)["ready"] is True
    assert "Task exception was never retrieved" not in server.log()


def test_lost_manager_gives_503_and_clean_exit(server_factory: object) -> None:
    server = server_factory()
    api = Api(server)
    manager = manager_process(server)
    children = server.child_processes()
    manager.kill()

    assert wait_not_ready(server, 10) == 503
    started = time.monotonic()
    response = api.client.post(f"{api.prefix}/jobs", json={"kind": "spin", "inputs": []})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    assert time.monotonic() - started < 2
    assert httpx.get(server.url + "/healthz").status_code == 200

    time.sleep(1)
    assert server.log().count("manager process lost") <= 2
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    assert wait_gone(children) == []


@pytest.mark.parametrize("how", ["cancel", "time limit"])
def test_worker_death_during_grace_keeps_the_reason(server_factory: object, how: str) -> None:
    """A job asked to stop ends as asked, even if its worker dies before the grace period is over."""
    server = server_factory("--cancel-grace-s", "5")
    api = Api(server)
    response = api.client.post(f"{api.prefix}/jobs", json={
        "kind": "spin", "inputs": [], "params": {"seconds": 60, "cooperative": False},
        "timeout_s": 1 if how == "time limit" else 60})
    job = response.json()
    pid = worker_pid(api, job["job_id"])
    if how == "cancel":
        api.client.post(f"{api.prefix}/jobs/{job['job_id']}/cancel")
    else:
        time.sleep(1.5)
    psutil.Process(pid).kill()
    record = api.wait_job(job["job_id"], timeout=10)
    assert record["state"] == ("cancelled" if how == "cancel" else "timed_out")
    assert record["attempts"] == 1


def test_deleting_session_lets_cooperative_job_stop(api: Api, server: Server) -> None:
    job = api.start("spin", [], seconds=60)
    worker_pid(api, job["job_id"])
    restarts = readyz(server)["worker_restarts"]
    assert api.client.delete(api.prefix).status_code == 204
    deadline = time.monotonic() + 10
    while readyz(server)["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readyz(server)["running"] == 0
    assert readyz(server)["worker_restarts"] == restarts
    assert f"job={job['job_id']} still running" not in server.log()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_hung_manager_is_detected(server_factory: object) -> None:
    server = server_factory()
    manager = manager_process(server)
    children = server.child_processes()
    manager.suspend()

    assert wait_not_ready(server, 15) == 503
    assert "did not respond" in server.log()
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    assert wait_gone(children) == []
