"""Job kinds used only by benchmarks. The server loads them with ``--extra-kinds bench.kinds``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from app.workers.context import JobContext
from app.workers.registry import JobKind


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def noop(context: JobContext, inputs: list[Path], params: NoopParams) -> dict[str, int]:
    return {"ok": 1}


KIND = JobKind(name="noop", function=noop, params=NoopParams,
               description="Return at once (benchmarks only).", min_inputs=0, max_inputs=None)
