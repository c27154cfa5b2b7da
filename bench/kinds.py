"""Job kinds used only by benchmarks. The server loads them with ``--extra-kinds bench.kinds``."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from app.workers.context import JobContext
from app.workers.registry import JobKind


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def noop(context: JobContext, inputs: list[Path], params: NoopParams) -> dict[str, int]:
    return {"ok": 1}


KIND = JobKind(name="noop", function=noop, params=NoopParams,
               description="Return at once (benchmarks only).", min_inputs=0, max_inputs=None)


class BurnParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ms: float = Field(default=10.0, ge=0, le=10_000, description="CPU time to use, in milliseconds")


def burn(context: JobContext, inputs: list[Path], params: BurnParams) -> dict[str, int]:
    """Busy-loop until the process has used ``ms`` milliseconds of CPU time.

    CPU time rather than wall time, so a worker that shares its core with the server takes longer
    and the throughput shows it.
    """
    deadline = time.process_time() + params.ms / 1000
    loops = 0
    while time.process_time() < deadline:
        loops += 1
    return {"loops": loops}


BURN = JobKind(name="burn", function=burn, params=BurnParams,
               description="Use a number of milliseconds of CPU time (benchmarks only).",
               min_inputs=0, max_inputs=None)


class StampParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reports: int = Field(default=10, ge=1, le=10, description="progress reports, each a tenth of the total")
    interval_ms: float = Field(default=5.0, ge=0, le=1000, description="sleep between reports, in milliseconds")


def stamp(context: JobContext, inputs: list[Path], params: StampParams) -> dict[str, int]:
    """Report progress ``reports`` times with the wall-clock time of each report as its message.

    Each report advances a tenth of the total of 10, so the worker's progress throttle lets every
    one through. A client subtracts the stamp from the time it receives the event.
    """
    for done in range(1, params.reports + 1):
        time.sleep(params.interval_ms / 1000)
        context.progress(done, 10, "reports", repr(time.time()))
    return {"reports": params.reports}


STAMP = JobKind(name="stamp", function=stamp, params=StampParams,
                description="Report progress with wall-clock stamps (benchmarks only).",
                min_inputs=0, max_inputs=None)
KINDS = [BURN, STAMP]
