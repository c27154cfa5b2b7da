"""Job kinds used only by tests; the server loads them with ``--extra-kinds tests.kinds``."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from app.workers.context import JobContext
from app.workers.registry import JobKind


class SpinParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=1.0, ge=0, le=600)
    cooperative: bool = Field(default=True, description="check the cancel flag while spinning")


def spin(context: JobContext, inputs: list[Path], params: SpinParams) -> dict[str, float]:
    """Keep a CPU busy for ``seconds``, reporting progress every 10 ms."""
    started = time.monotonic()
    steps = 0
    while (elapsed := time.monotonic() - started) < params.seconds:
        deadline = time.monotonic() + 0.01
        while time.monotonic() < deadline:
            pass
        steps += 1
        context.progress(int(elapsed * 1000), int(params.seconds * 1000), "ms")
        if params.cooperative:
            context.check_cancelled()
    return {"seconds": params.seconds, "steps": steps}


SPIN = JobKind(name="spin", function=spin, params=SpinParams,
               description="Busy-loop for a number of seconds (tests only).", min_inputs=0, max_inputs=None)


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = "broken on purpose"


def fail(context: JobContext, inputs: list[Path], params: FailParams) -> None:
    context.log("about to fail")
    raise ValueError(params.message)


FAIL = JobKind(name="fail", function=fail, params=FailParams,
               description="Raise ValueError (tests only).", min_inputs=0, max_inputs=None)

KINDS = [SPIN, FAIL]
