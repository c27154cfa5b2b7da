"""What one run of ``python -m bench`` measures and with how much work, and the servers it shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.servers import ServerProcess


@dataclass(frozen=True)
class Plan:
    """Sizes of one run. ``repeats`` runs each benchmark that often and reports the medians."""

    mode: str
    workers: int
    repeats: int
    trivial_jobs: int
    concurrency: int
    burn_jobs: int
    burn_ms: float
    upload_mib: int
    memory_upload_mib: int
    progress_jobs: int
    ws_clients: int
    hash_mib: int
    csv_mib: int
    image_rounds: int
    startup_runs: int
    with_celery: bool

    @property
    def judged(self) -> bool:
        """Whether targets are judged: not in quick mode, whose sizes are too small to mean anything."""
        return self.mode != "quick"


def make_plan(mode: str, workers: int, with_celery: bool) -> Plan:
    if mode == "quick":
        return Plan(mode, workers, repeats=1, trivial_jobs=200, concurrency=32, burn_jobs=100, burn_ms=10.0,
                    upload_mib=32, memory_upload_mib=128, progress_jobs=5, ws_clients=100, hash_mib=32,
                    csv_mib=4, image_rounds=1, startup_runs=1, with_celery=with_celery)
    repeats = 3 if mode == "full" else 1
    return Plan(mode, workers, repeats=repeats, trivial_jobs=3000, concurrency=32, burn_jobs=1000, burn_ms=10.0,
                upload_mib=256, memory_upload_mib=2048, progress_jobs=50, ws_clients=1000, hash_mib=512,
                csv_mib=32, image_rounds=5, startup_runs=3, with_celery=with_celery)


@dataclass
class Servers:
    """The Offload server and the bare upload server that most benchmarks share, and a scratch directory."""

    offload: ServerProcess
    bare: ServerProcess
    directory: Path
