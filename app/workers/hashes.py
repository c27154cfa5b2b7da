"""The ``hash`` job kind: several digests of one file in a single pass."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .context import JobContext
from .registry import JobKind

CHUNK_BYTES = 256 * 1024

Algorithm = Literal["sha256", "sha1", "md5", "blake2b", "sha3_256"]


class HashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithms: list[Algorithm] = Field(
        default=["sha256"], min_length=1, description="digests to compute, each at most once"
    )

    @field_validator("algorithms")
    @classmethod
    def _unique(cls, algorithms: list[str]) -> list[str]:
        if len(set(algorithms)) != len(algorithms):
            raise ValueError(f"duplicate algorithm in {algorithms!r}")
        return algorithms


def hash_file(context: JobContext, inputs: list[Path], params: HashParams) -> dict[str, object]:
    path = inputs[0]
    total = path.stat().st_size
    hashers = {name: hashlib.new(name) for name in params.algorithms}
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    done = 0

    with path.open("rb") as file:
        while count := file.readinto(buffer):
            chunk = view[:count]
            for hasher in hashers.values():
                hasher.update(chunk)
            done += count
            context.progress(done, total, "bytes")
            context.check_cancelled()

    context.progress(done, done, "bytes")
    return {"size": done, "digests": {name: hasher.hexdigest() for name, hasher in hashers.items()}}


KIND = JobKind(
    name="hash",
    function=hash_file,
    params=HashParams,
    description="Compute sha256, sha1, md5, blake2b or sha3_256 digests of one file in one pass.",
)
