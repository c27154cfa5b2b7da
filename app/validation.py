"""Validation of job requests: the request body and each kind's parameters, with readable errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import quoted


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
    """Turn a pydantic error into one line that names each invalid field and the value sent."""
    messages = []
    for item in error.errors():
        field = prefix + ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            message = f"{field}: unknown field; use one of {sorted(model.model_fields)}"
        elif item["type"] == "model_type":
            message = f"{field or 'body'}: expected a JSON object"
        else:
            message = f"{field or 'body'}: {item['msg']}"
            if item["type"] != "missing" and not isinstance(item.get("input"), (dict, list)):
                message += f" (got {quoted(item['input'])})"
        messages.append(message)
    return "; ".join(messages)
