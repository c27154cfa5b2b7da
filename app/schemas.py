"""Pydantic models of the API's request and response bodies, for the OpenAPI document.

The routes build plain dicts. These models describe them, and the schema tests check every
response against the document built from them, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, such as not_found or too_large")
    message: str = Field(description="what was wrong with which value, and what to do instead")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    workers: int | None = None
    idle_workers: int | None = None
    worker_restarts: int | None = None
    queued: int | None = None
    running: int | None = None
    subscribers: int | None = None


class SessionCreated(BaseModel):
    session_id: str
    token: str = Field(description="send as Authorization: Bearer TOKEN, or ?token=TOKEN on websockets")
    created_at: float = Field(description="Unix time in seconds")
    expires_at: float = Field(description="Unix time in seconds; every authenticated request moves it on")


class FileRecord(BaseModel):
    file_id: str
    name: str = Field(description="the name sent, cleaned; metadata only, never a path on the server")
    size: int = Field(description="bytes")
    sha256: str
    content_type: str
    created_at: float


class FileList(BaseModel):
    files: list[FileRecord]


class Progress(BaseModel):
    done: int | float
    total: int | float | None
    unit: str
    message: str


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="the job's exception type, or WorkerCrashed, MemoryLimitExceeded, TimedOut, "
                                  "Interrupted or InternalError")
    message: str


class OutputFile(BaseModel):
    name: str
    size: int


class JobRecord(BaseModel):
    job_id: str
    kind: str
    state: JobState
    inputs: list[str]
    params: dict[str, Any]
    timeout_s: float
    progress: Progress
    result: Any = Field(description="the kind's JSON result once succeeded, else null")
    error: JobError | None
    outputs: list[OutputFile]
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None


class JobList(BaseModel):
    jobs: list[JobRecord]


class KindInputs(BaseModel):
    min: int
    max: int | None


class KindDescription(BaseModel):
    name: str
    description: str
    inputs: KindInputs
    timeout_s: float | None
    params: dict[str, Any] = Field(description="JSON Schema of the kind's parameters, with defaults")
    caps: dict[str, Any] = Field(description="server maximums of capped parameters, which a job may only lower")


class KindList(BaseModel):
    kinds: list[KindDescription]
