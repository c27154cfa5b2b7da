"""Validation of job requests: the request body and each kind's parameters, with readable errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Settings, option_names
from .errors import bad_request, not_found, quoted
from .sessions import Session
from .workers.registry import JobKind, KindError


MAX_REPORTED_ERRORS = 10
# Characters of a field name or a pydantic message quoted in an error; both can echo client input.
MAX_TEXT_CHARS = 200


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(max_length=100, description="job kind, one of GET /api/job-kinds")
    inputs: list[str] = Field(default_factory=list, description="file ids of this session")
    params: dict[str, Any] = Field(default_factory=dict, description="parameters of the kind")
    # Strict, so that true or "10" is not taken for a number of seconds.
    timeout_s: float | None = Field(default=None, gt=0, strict=True, allow_inf_nan=False,
                                    description="time limit in seconds; the kind's default when omitted, at most "
                                    "the server maximum")


def describe_validation_error(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Turn a pydantic error into one line that names each invalid field and the value sent.

    Field names and pydantic's messages may contain what the client sent, so both are shortened,
    and only the first ``MAX_REPORTED_ERRORS`` errors are described.
    """
    messages = []
    errors = error.errors()
    for item in errors[:MAX_REPORTED_ERRORS]:
        field = _shorten(prefix + ".".join(str(part) for part in item["loc"]))
        if item["type"] == "extra_forbidden":
            message = f"{field}: unknown field; use one of {sorted(model.model_fields)}"
        elif item["type"] == "model_type":
            message = f"{field or 'body'}: expected a JSON object"
        else:
            message = f"{field or 'body'}: {_shorten(item['msg'])}"
            if item["type"] != "missing" and not isinstance(item.get("input"), (dict, list)):
                message += f" (got {quoted(item['input'])})"
        messages.append(message)
    if len(errors) > MAX_REPORTED_ERRORS:
        messages.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more errors")
    return "; ".join(messages)


def _shorten(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return f"{text[:MAX_TEXT_CHARS]}... ({len(text)} characters)"


def check_inputs(session: Session, kind: JobKind, inputs: list[str]) -> None:
    """Check the number of input files for the kind, and that each is a file of the session."""
    count = len(inputs)
    if count < kind.min_inputs or (kind.max_inputs is not None and count > kind.max_inputs):
        if kind.max_inputs == kind.min_inputs:
            expected = f"exactly {kind.min_inputs}"
        elif kind.max_inputs is None:
            expected = f"at least {kind.min_inputs}"
        else:
            expected = f"{kind.min_inputs} to {kind.max_inputs}"
        raise bad_request(f"inputs: kind {kind.name!r} takes {expected} input file(s), got {count}; "
                          "start one job per file")
    for file_id in inputs:
        if file_id not in session.file_ids:
            raise not_found("file", file_id)


def job_timeout(kind: JobKind, requested: float | None, settings: Settings) -> float:
    """Return a job's time limit in seconds: the request's, else the kind's, else the server default."""
    maximum = settings.max_job_timeout_s
    if requested is not None and requested > maximum:
        raise bad_request(f"timeout_s: {requested!r} is over the server maximum of {maximum} s "
                          f"({option_names('max_job_timeout_s')})")
    return min(requested or kind.timeout_s or settings.job_timeout_s, maximum)


def check_capped_params(kinds: Iterable[JobKind]) -> None:
    """Raise ``KindError`` for a capped parameter that is missing, has a default, or names no setting."""
    settings = {spec.name for spec in dataclasses.fields(Settings)}
    for kind in kinds:
        for name, setting in kind.capped_params.items():
            field = kind.params.model_fields.get(name)
            if field is None:
                raise KindError(f"job kind {kind.name!r}: capped parameter {name!r} is missing from "
                                f"{kind.params.__name__}")
            if field.default is not None:
                raise KindError(f"job kind {kind.name!r}: capped parameter {name!r} must default to None, "
                                "so the server can fill it")
            if setting not in settings:
                raise KindError(f"job kind {kind.name!r}: capped parameter {name!r} names the unknown server "
                                f"setting {setting!r}")


def param_caps(kind: JobKind, settings: Settings) -> dict[str, Any]:
    """Return the server's values of the kind's capped parameters, by parameter name."""
    return {name: getattr(settings, setting) for name, setting in kind.capped_params.items()}


def apply_caps(kind: JobKind, params: BaseModel, settings: Settings) -> BaseModel:
    """Fill omitted capped parameters with the server's values; reject a value above one with 400."""
    filled: dict[str, Any] = {}
    for name, cap in param_caps(kind, settings).items():
        value = getattr(params, name)
        if value is None:
            filled[name] = cap
        elif value > cap:
            raise bad_request(f"params.{name}: {value!r} is over the server maximum of {cap!r} "
                              f"({option_names(kind.capped_params[name])}); use at most that, or omit it")
    return params.model_copy(update=filled)
