"""The Celery baseline for trivial jobs: Celery 5 with a local Redis as broker and result backend.

It runs only when Celery and the redis client can be imported (``--with-celery`` installs both
with pip) and Debian's ``/usr/bin/redis-server`` exists. The benchmark starts Redis on a free
loopback port and a prefork Celery worker with as many processes as Offload has workers, and
stops both afterwards by their process ids. Each client thread has its own Celery app, so no
connection is shared between threads, and keeps one ``noop`` task in flight with ``delay().get()``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bench.plan import Plan
from bench.servers import ROOT, free_port

REDIS_SERVER = Path("/usr/bin/redis-server")
STOP_TIMEOUT_S = 15.0
TASK_TIMEOUT_S = 60.0


def install() -> str | None:
    """Install celery and redis with pip when missing; return why that failed, or None."""
    if _importable():
        return None
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "celery>=5,<6",
               "redis"]
    print("installing celery and redis with pip for the Celery baseline", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return f"pip install celery redis failed: {result.stderr.strip()[-500:]}"
    importlib.invalidate_caches()
    return None


def _importable() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("celery", "redis"))


def unavailable_reason(plan: Plan) -> str | None:
    """Return why the Celery baseline cannot run here, or None if it can."""
    if not REDIS_SERVER.exists():
        return f"{REDIS_SERVER} not found (Debian: apt-get install redis-server)"
    if plan.with_celery:
        return install()
    if not _importable():
        return "celery or redis is not installed; run with --with-celery to install both with pip"
    return None


def measure(plan: Plan, directory: Path) -> float | str:
    """Return Celery's trivial tasks per second at the plan's concurrency, or why it was skipped."""
    reason = unavailable_reason(plan)
    if reason is not None:
        return reason
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    environment = {**os.environ, "BENCH_CELERY_BROKER": broker, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_start([str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(directory)], directory / "redis.log",
                                environment))
        processes.append(_start([sys.executable, "-m", "celery", "-A", "bench.celery_tasks", "worker", "--pool",
                                 "prefork", "--concurrency", str(plan.workers), "--loglevel", "WARNING",
                                 "--without-heartbeat", "--without-gossip", "--without-mingle"],
                                directory / "celery.log", environment))
        return _run_clients(plan, broker)
    except Exception as error:
        # Celery raises its own exception types, and an optional baseline must not take the
        # Offload figures of the same benchmark down with it.
        return f"Celery baseline failed: {type(error).__name__}: {error}; {_log_tail(directory / 'celery.log')}"
    finally:
        for process in reversed(processes):
            _stop(process)


def _log_tail(path: Path, lines: int = 10) -> str:
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return f"{path.name} could not be read"
    return f"{path.name} ends:\n" + "\n".join(tail)


def _start(command: list[str], log_path: Path, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started here and every child it has, by pid: SIGTERM, then SIGKILL after 15 s."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _, alive = psutil.wait_procs(children, timeout=STOP_TIMEOUT_S)
    for child in alive:
        child.kill()


def _run_clients(plan: Plan, broker: str) -> float:
    from bench import celery_tasks

    def client(count: int) -> None:
        app = celery_tasks.make_app()
        app.conf.broker_url = broker
        app.conf.result_backend = broker
        task = app.signature("bench.noop")
        for _ in range(count):
            task.apply_async().get(timeout=TASK_TIMEOUT_S)

    # The first task waits in the queue until the worker is up.
    client(1)

    concurrency = plan.concurrency
    per_client = max(plan.trivial_jobs // concurrency, 1)
    with ThreadPoolExecutor(concurrency) as threads:
        list(threads.map(client, [2] * concurrency))
        started = time.perf_counter()
        list(threads.map(client, [per_client] * concurrency))
        elapsed = time.perf_counter() - started
    return per_client * concurrency / elapsed
