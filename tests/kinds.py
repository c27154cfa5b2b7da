"""Job kinds used only by tests; the server loads them with ``--extra-kinds tests.kinds``."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

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
        context.progress(int(elapsed * 1000), int(params.seconds * 1000), "ms", f"pid {os.getpid()}")
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


class ExitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: int = 3


def exit_worker(context: JobContext, inputs: list[Path], params: ExitParams) -> None:
    """End the worker process at once, as a crashing C extension or a stray os._exit would."""
    os._exit(params.code)


def segfault(context: JobContext, inputs: list[Path], params: BaseModel) -> None:
    """Crash the interpreter with a segmentation fault by reading address 0."""
    ctypes.string_at(0)


class HogParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_bytes: int = Field(default=8 * 1024 * 1024 * 1024, gt=0)


def hog(context: JobContext, inputs: list[Path], params: HogParams) -> dict[str, int]:
    """Allocate and touch memory step by step until killed, or until ``max_bytes``."""
    blocks = []
    while len(blocks) * params.step_bytes < params.max_bytes:
        blocks.append(bytearray(b"x" * params.step_bytes))
        context.progress(len(blocks) * params.step_bytes, params.max_bytes, "bytes", f"pid {os.getpid()}")
        time.sleep(0.05)
    return {"allocated": len(blocks) * params.step_bytes}


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


EXIT = JobKind(name="exit", function=exit_worker, params=ExitParams,
               description="End the worker with os._exit (tests only).", min_inputs=0, max_inputs=None)
SEGFAULT = JobKind(name="segfault", function=segfault, params=NoParams,
                   description="Crash the worker with a segmentation fault (tests only).", min_inputs=0,
                   max_inputs=None)
HOG = JobKind(name="hog", function=hog, params=HogParams,
              description="Allocate memory until killed (tests only).", min_inputs=0, max_inputs=None)
KINDS = [SPIN, FAIL, EXIT, SEGFAULT, HOG]


def not_json(context: JobContext, inputs: list[Path], params: NoParams) -> dict[str, object]:
    return {"values": {1, 2, 3}}


NOT_JSON = JobKind(name="not-json", function=not_json, params=NoParams,
                   description="Return a result that JSON cannot encode (tests only).", min_inputs=0, max_inputs=None)
KINDS.append(NOT_JSON)


def exit_after_result(context: JobContext, inputs: list[Path], params: NoParams) -> dict[str, int]:
    """Return, and end the worker process right after it has sent this job's result to the server."""
    import concurrent.futures.process as executor_module

    send_result = executor_module._sendback_result

    def send_then_exit(*args: Any, **kwargs: Any) -> None:
        # CPython 3.11's worker loop sends each result through this private function.
        send_result(*args, **kwargs)
        os._exit(7)

    executor_module._sendback_result = send_then_exit
    return {"pid": os.getpid()}


EXIT_AFTER_RESULT = JobKind(name="exit-after-result", function=exit_after_result, params=NoParams,
                            description="Return, then end the worker process (tests only).", min_inputs=0,
                            max_inputs=None)
KINDS.append(EXIT_AFTER_RESULT)
