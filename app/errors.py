"""API errors: every failure leaves as ``{"error": {"code", "message"}}`` with the usual status."""

from __future__ import annotations

import logging

from quart import Quart, Response, has_request_context, jsonify, request, websocket
from werkzeug.exceptions import HTTPException

from .logs import log_ids

logger = logging.getLogger(__name__)


# Characters of a client-supplied value quoted in a message, so large inputs cannot flood the log.
MAX_QUOTED_CHARS = 80


def quoted(value: object) -> str:
    """Return ``repr(value)``, shortened to about 80 characters."""
    text = repr(value)
    if len(text) > MAX_QUOTED_CHARS:
        text = f"{text[:MAX_QUOTED_CHARS]}... ({len(text)} characters)"
    return text


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def not_found(resource: str, value: str) -> ApiError:
    return ApiError(404, "not_found", f"{resource} {quoted(value)} not found")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        # The path names the session and the file or job; the token is never part of it.
        logger.info("%s -> %d %s: %s", _where(), error.status, error.code, error.message, extra=_path_ids())
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        return error_response(error.code or 500, code, error.description or error.name)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        logger.error("unhandled error on %s", _where(), exc_info=error, extra=_path_ids())
        return error_response(500, "internal_error", "internal server error; the server log has the details")


def _path_ids() -> dict[str, str]:
    """Return the session, job and file ids named in the matched route's path."""
    connection = request if has_request_context() else websocket
    values = connection.view_args or {}
    return log_ids(values.get("session_id"), values.get("job_id"), values.get("file_id"))


def _where() -> str:
    if has_request_context():
        return f"{request.method} {request.path}"
    return f"websocket {websocket.path}"
