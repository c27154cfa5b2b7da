"""The OpenAPI document at ``/openapi.json`` and the docs page at ``/docs``, built by quart-schema.

Routes are documented with the models of ``schemas.py`` through ``documented``. What quart-schema
cannot express from a model (raw and binary bodies, 204 replies, the parameters of each job kind)
is added here, the job kinds from the registry of the running server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Quart
from quart_schema import DataSource, OpenAPIProvider, QuartSchema, document_request, document_response
from quart_schema.extension import security_scheme
from werkzeug.routing import Rule

from .schemas import ErrorBody

T = TypeVar("T", bound=Callable[..., Any])

OPENAPI_EXTRA_ATTRIBUTE = "_offload_openapi_extra"
SESSION_SECURITY = [{"bearer": []}, {"token": []}, {"cookie": []}]
COMPONENT_REF = "#/components/schemas/{model}"
_PATH_PARAMETER_RE = re.compile(r"<(?:[^:<>]*:)?([^<>]+)>")

BINARY = {"schema": {"type": "string", "format": "binary"}}
ERROR_TEXT = {
    400: "invalid input; the message names the field and the allowed values",
    401: "missing or wrong session token",
    404: "unknown id, or an id of another session",
    408: "the upload body stopped arriving",
    409: "conflicting state",
    413: "too large, or a session limit reached",
    429: "too many queued jobs; retry after Retry-After seconds",
    503: "not ready, or shutting down",
}


def documented(status: int, model: type[BaseModel] | None, *errors: int, request: type[BaseModel] | None = None,
               session: bool = True, **extra: Any) -> Callable[[T], T]:
    """Document a route: its success reply, its error replies, its request body and its security.

    ``model`` None means a reply without a body. ``extra`` contains OpenAPI operation fields merged
    in as they are, such as ``requestBody`` for bodies that are not JSON.
    """
    def decorator(function: T) -> T:
        if model is not None:
            function = document_response(model, status)(function)
        else:
            extra.setdefault("responses", {}).setdefault(str(status), {"description": "no content"})
        for error in errors:
            function = document_response(ErrorBody, error)(function)
        if request is not None:
            function = document_request(request, source=DataSource.JSON)(function)
        if session:
            function = security_scheme(SESSION_SECURITY)(function)
        setattr(function, OPENAPI_EXTRA_ATTRIBUTE, extra)
        return function

    return decorator


def raw_body(media_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"required": True, "content": {media_type: BINARY}}


def binary_reply(description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/octet-stream": BINARY}}}


def text_reply(media_type: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}}


EVENT_STREAM_PARAMETERS = [
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "the id of the last event received; only newer events are sent"},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "the seq of the last event received, as with the websockets"},
]


def event_stream_reply(job: bool = True) -> dict[str, Any]:
    if not job:
        return text_reply("text/event-stream", "events as id, event and data lines, until the session ends")
    return {**text_reply("text/event-stream", "events as id, event and data lines, until the job ends"),
            "204": {"description": "the job had already ended for this Last-Event-ID; stop reconnecting"}}


class OffloadOpenAPI(OpenAPIProvider):
    """quart-schema's document, plus the non-JSON bodies and the job kinds of this server."""

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        extra = getattr(self._app.view_functions[rule.endpoint], OPENAPI_EXTRA_ATTRIBUTE, {})
        for operations in paths.values():
            for operation in operations.values():
                _merge_operation(operation, extra)
        # quart-schema 0.25 turns "<a>/x/<conv:b>" into "{b}", because its pattern runs past the
        # first ">", so the path is rebuilt here.
        path = _PATH_PARAMETER_RE.sub(r"{\1}", rule.rule)
        return {path: operations for operations in paths.values()}, components

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        runtime = self._app.extensions.get("offload")
        kinds = runtime.kinds if runtime is not None and runtime.kinds else {}
        if kinds:
            _add_job_kinds(document, kinds)
        return document


def _merge_operation(operation: dict[str, Any], extra: dict[str, Any]) -> None:
    # quart-schema keys responses by int; JSON object keys are strings.
    operation["responses"] = {str(status): response for status, response in operation["responses"].items()}
    for key, value in extra.items():
        if key == "responses":
            operation.setdefault("responses", {}).update(value)
        elif key == "parameters":
            operation.setdefault("parameters", []).extend(value)
        else:
            operation[key] = value
    for status, response in operation.get("responses", {}).items():
        if not response.get("description"):
            response["description"] = ERROR_TEXT.get(int(status), "success")


def _add_job_kinds(document: dict[str, Any], kinds: dict[str, Any]) -> None:
    """Describe a job request as one variant per job kind, each with that kind's parameter model."""
    models = [(kind.params, "validation") for kind in kinds.values()]
    names, definitions = models_json_schema(models, ref_template=COMPONENT_REF)
    schemas = document["components"]["schemas"]
    schemas.update(definitions.get("$defs", {}))

    for operations in document["paths"].values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None or content["schema"].get("title") != "JobRequest":
                continue
            request = content["schema"]
            variants = []
            for kind in kinds.values():
                properties = {**request["properties"],
                              "kind": {"const": kind.name, "description": kind.description},
                              "params": names[(kind.params, "validation")]}
                variants.append({"type": "object", "properties": properties, "required": ["kind"],
                                 "additionalProperties": False, "title": f"JobRequest ({kind.name})"})
            schemas["JobRequest"] = {"oneOf": variants, "description": "a job to start; params depend on kind"}
            content["schema"] = {"$ref": COMPONENT_REF.format(model="JobRequest")}


def install_openapi(app: Quart) -> None:
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "Offload", "version": "0.1.0",
              "description": "Upload files, run CPU-heavy jobs on them in worker processes, watch progress "
                             "live, download results."},
        security_schemes={
            "bearer": {"type": "http", "scheme": "bearer"},
            "token": {"type": "apiKey", "in_": "query", "name": "token"},
            "cookie": {"type": "apiKey", "in_": "cookie", "name": "offload_token"},
        },
        openapi_provider_class=OffloadOpenAPI,
    )
