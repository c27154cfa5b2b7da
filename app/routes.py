"""HTTP routes of the API: sessions, files, job kinds, jobs, outputs and health."""

from __future__ import annotations

import asyncio
import functools
import json
import mimetypes
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from quart import Blueprint, Response, current_app, has_request_context, request, websocket
from quart.wrappers.response import FileBody
from quart_schema import document_response
from werkzeug.routing import PathConverter

from .errors import ApiError, bad_request, not_found
from .jobs import TERMINAL_STATES, public_job
from .logs import log_ids
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .names import clean_name, content_disposition
from .openapi import binary_reply, documented, raw_body, text_reply
from .runtime import Runtime
from .schemas import (FileList, FileRecord, Health, JobList, JobRecord, KindList, Readiness,
                      SessionCreated)
from .sessions import Record, Session, new_id
from .uploads import (UploadContext, UploadQuota, drained_on_rejection, multipart_boundary, store_body,
                      store_multipart)
from .validation import JobRequest, param_caps

api = Blueprint("api", __name__)

MULTIPART_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                            "description": "one part per file, each with a filename"}}}}}}

P = ParamSpec("P")
T = TypeVar("T")


class FileNameConverter(PathConverter):
    """A path segment and everything after it, also when it starts with "/" (``/etc/x`` sent encoded)."""

    # "." would stop at a line break, which a decoded name may contain.
    regex = r"[\s\S]+"
    # Werkzeug treats a converter whose regex has no "/" as matching one segment only.
    part_isolating = False

TOKEN_COOKIE = "offload_token"
MAX_JSON_BYTES = 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 256 * 1024


def get_runtime() -> Runtime:
    return current_app.extensions["offload"]


def ready_runtime() -> Runtime:
    runtime = get_runtime()
    if runtime.stopping.is_set():
        raise ApiError(503, "shutting_down", "server is shutting down; retry against the restarted server")
    if not runtime.ready:
        raise ApiError(503, "not_ready", "server is not ready: it is starting or lost its Manager process")
    return runtime


def request_token() -> str | None:
    """Read the token from the Authorization header, the ``token`` query parameter or the cookie."""
    connection = request if has_request_context() else websocket
    scheme, _, value = connection.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.args.get("token") or connection.cookies.get(TOKEN_COOKIE)


def authenticate(runtime: Runtime, session_id: str) -> Session:
    """Return the session if the request carries its token: 401 without a valid token, 404 if unknown."""
    assert runtime.store is not None
    token = request_token()
    if token is None:
        raise ApiError(401, "unauthorized",
                       "missing session token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN")
    session = runtime.store.sessions.get(session_id)
    if session is None:
        raise not_found("session", session_id)
    if not session.token_matches(token):
        raise ApiError(401, "unauthorized", "invalid token for this session")
    runtime.store.touch(session)
    return session


def json_response(data: Any, status: int = 200) -> Response:
    # NaN and Infinity are not JSON; refusing them here turns a bug into a logged error.
    return Response(json.dumps(data, allow_nan=False), status=status, mimetype="application/json")


async def read_json() -> Any:
    """Read a JSON body of at most 1 MiB, also when it arrives chunked."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise ApiError(413, "too_large", f"JSON body over {MAX_JSON_BYTES} bytes")
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"JSON body over {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data or b"{}")
    except ValueError as error:
        raise bad_request(f"invalid JSON body: {error}") from None
    except RecursionError:
        raise bad_request("invalid JSON body: nested too deeply") from None


# Health


@api.get("/healthz")
@documented(200, Health, session=False)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@api.get("/readyz")
@documented(200, Readiness, session=False)
@document_response(Readiness, 503)
async def readyz() -> Response:
    runtime = get_runtime()
    pool_running = runtime.pool is not None and runtime.pool.running
    body: dict[str, Any] = {"ready": runtime.ready and pool_running and not runtime.stopping.is_set()}
    if runtime.pool is not None and runtime.jobs is not None:
        body.update(workers=runtime.pool.size, idle_workers=runtime.pool.idle_count,
                    worker_restarts=runtime.pool.restarts,
                    queued=runtime.jobs.queued_count, running=runtime.jobs.running_count,
                    subscribers=runtime.hub.subscriber_count)
    return json_response(body, 200 if body["ready"] else 503)


@api.get("/metrics")
@documented(200, None, session=False, responses=text_reply(METRICS_CONTENT_TYPE, "Prometheus text format"))
async def metrics() -> Response:
    # No token: the metrics name no session, file or job. Block the path at a reverse proxy to hide it.
    return Response(get_runtime().metrics.render(), content_type=METRICS_CONTENT_TYPE)


# Sessions


@api.post("/api/sessions")
@documented(201, SessionCreated, 503, session=False)
async def create_session() -> Response:
    runtime = ready_runtime()
    assert runtime.store is not None
    session, token = runtime.store.create_session(runtime.settings.session_idle_s)
    await runtime.store.journal.committed()
    current_app.logger.info("session created", extra=log_ids(session.session_id))
    response = json_response({**session.public(), "token": token}, 201)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict",
                        path=f"/api/sessions/{session.session_id}")
    return response


@api.delete("/api/sessions/<session_id>")
@documented(204, None, 401, 404, 503)
async def delete_session(session_id: str) -> Response:
    runtime = ready_runtime()
    authenticate(runtime, session_id)
    runtime.delete_session(session_id)
    await runtime.store.journal.committed()
    current_app.logger.info("session deleted", extra=log_ids(session_id))
    return Response(status=204)


# Files


def _file_record(file_id: str, name: str, size: int, sha256: str, content_type: str) -> Record:
    return {"file_id": file_id, "name": name, "size": size, "sha256": sha256,
            "content_type": content_type, "created_at": time.time()}


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _own_file(runtime: Runtime, session: Session, file_id: str) -> Record:
    assert runtime.store is not None
    if file_id not in session.file_ids:
        raise not_found("file", file_id)
    return runtime.store.files[file_id]


def drains_rejected_body(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Wrap an upload route so a rejected body is read and dropped, within bounds, before the error."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        async with drained_on_rejection(request.body):
            return await handler(*args, **kwargs)

    return wrapper


@api.put("/api/sessions/<session_id>/files/<filename:name>")
@documented(201, FileRecord, 400, 401, 404, 408, 413, 503, requestBody=raw_body())
@drains_rejected_body
async def put_file(session_id: str, name: str) -> tuple[Response, int]:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    context = _upload_context(runtime, session)
    context.quota.reserve_length(request.content_length)

    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("multipart/form-data"):
        raise bad_request("PUT takes the file itself as the body; send multipart/form-data with "
                          f"POST /api/sessions/{session_id}/files instead")
    name = clean_name(name)
    file_id = new_id()
    directory = runtime.layout.files_dir(session_id)
    await _make_dir(directory)
    try:
        size, sha256 = await store_body(request.body, directory / file_id, context)
        # curl --data-binary sends this type by default; it never describes a stored file.
        if not content_type or content_type == "application/x-www-form-urlencoded":
            content_type = _guess_type(name)
        record = _file_record(file_id, name, size, sha256, content_type)
        return json_response(await _register_upload(runtime, session, record)), 201
    except FileNotFoundError:
        # The session was deleted, and its directory with it, while the body arrived.
        raise not_found("session", session_id) from None
    finally:
        context.quota.release()


@api.post("/api/sessions/<session_id>/files")
@documented(201, FileList, 400, 401, 404, 408, 413, 503, requestBody=MULTIPART_BODY)
@drains_rejected_body
async def post_files(session_id: str) -> tuple[Response, int]:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    boundary = multipart_boundary(request.headers.get("Content-Type", ""))
    # Content-Length is not checked here: it counts part headers, and several files may share it.
    context = _upload_context(runtime, session)
    directory = runtime.layout.files_dir(session_id)
    await _make_dir(directory)

    try:
        uploads = await store_multipart(request.body, boundary, lambda: directory / new_id(), context)
        records = []
        for upload in uploads:
            name = clean_name(upload.name)
            content_type = upload.content_type
            if content_type == "application/octet-stream":
                content_type = _guess_type(name)
            record = _file_record(upload.path.name, name, upload.size, upload.sha256, content_type)
            records.append(await _register_upload(runtime, session, record))
        return json_response({"files": records}), 201
    except FileNotFoundError:
        # The session was deleted, and its directory with it, while the body arrived.
        raise not_found("session", session_id) from None
    finally:
        context.quota.release()


def _upload_context(runtime: Runtime, session: Session) -> UploadContext:
    settings = runtime.settings
    return UploadContext(UploadQuota(session, settings), runtime.stopping, settings.upload_idle_s,
                         settings.upload_write_delay_s)


async def _make_dir(directory: Path) -> None:
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)


async def _register_upload(runtime: Runtime, session: Session, record: Record) -> Record:
    assert runtime.store is not None
    if session.session_id not in runtime.store.sessions:
        # The session was deleted or expired while the body streamed in.
        await runtime.remove_path(runtime.layout.file_path(session.session_id, record["file_id"]))
        raise not_found("session", session.session_id)
    runtime.store.add_file(session, record)
    await runtime.store.journal.committed()
    runtime.metrics.upload_stored(record["size"])
    current_app.logger.info("file stored: %d bytes", record["size"],
                            extra=log_ids(session.session_id, file_id=record["file_id"]))
    return record


@api.get("/api/sessions/<session_id>/files")
@documented(200, FileList, 401, 404, 503)
async def list_files(session_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.store is not None
    return json_response({"files": list(runtime.store.session_files(session))})


@api.get("/api/sessions/<session_id>/files/<file_id>/content")
@documented(200, None, 401, 404, 503, responses=binary_reply("the file, streamed"))
async def download_file(session_id: str, file_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    record = _own_file(runtime, session, file_id)
    path = runtime.layout.file_path(session_id, file_id)
    return _stream_file(path, record["name"], record["content_type"])


@api.delete("/api/sessions/<session_id>/files/<file_id>")
@documented(204, None, 401, 404, 409, 503)
async def delete_file(session_id: str, file_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    _own_file(runtime, session, file_id)
    assert runtime.store is not None
    for job in runtime.store.session_jobs(session):
        if file_id in job["inputs"] and job["state"] not in TERMINAL_STATES:
            raise ApiError(409, "conflict", f"file {file_id!r} is an input of unfinished job {job['job_id']!r}")
    runtime.store.remove_file(session, file_id)
    # The file goes only once the journal forgot it, so a crash never leaves a record without a file.
    await runtime.store.journal.committed()
    await runtime.remove_path(runtime.layout.file_path(session_id, file_id))
    return Response(status=204)


def _stream_file(path: Path, name: str, content_type: str) -> Response:
    if not path.is_file():
        raise not_found("file", name)
    response = Response(FileBody(path, buffer_size=DOWNLOAD_CHUNK_BYTES), mimetype=content_type)
    response.content_length = path.stat().st_size
    response.headers["Content-Disposition"] = content_disposition(name)
    # The content type is the uploader's; a browser must not sniff or run what it names.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


# Jobs


@api.get("/api/job-kinds")
@documented(200, KindList, 503, session=False)
async def job_kinds() -> Response:
    runtime = ready_runtime()
    return json_response({"kinds": [kind.describe(param_caps(kind, runtime.settings))
                                     for kind in runtime.kinds.values()]})


@api.post("/api/sessions/<session_id>/jobs")
@documented(202, JobRecord, 400, 401, 404, 413, 429, 503, request=JobRequest)
async def create_job(session_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    payload = await read_json()
    # The session may have been deleted or expired while the body arrived.
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    record = runtime.jobs.create(session, payload)
    await runtime.store.journal.committed()
    return json_response(public_job(record), 202)


@api.get("/api/sessions/<session_id>/jobs")
@documented(200, JobList, 401, 404, 503)
async def list_jobs(session_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.store is not None
    return json_response({"jobs": [public_job(job) for job in runtime.store.session_jobs(session)]})


@api.get("/api/sessions/<session_id>/jobs/<job_id>")
@documented(200, JobRecord, 401, 404, 503)
async def get_job(session_id: str, job_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    return json_response(public_job(runtime.jobs.get(session, job_id)))


@api.post("/api/sessions/<session_id>/jobs/<job_id>/cancel")
@documented(202, JobRecord, 401, 404, 409, 503)
async def cancel_job(session_id: str, job_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    record = runtime.jobs.cancel(session, job_id)
    await runtime.store.journal.committed()
    return json_response(public_job(record), 202)


@api.get("/api/sessions/<session_id>/jobs/<job_id>/outputs/<name>")
@documented(200, None, 401, 404, 503, responses=binary_reply("the output file, streamed"))
async def download_output(session_id: str, job_id: str, name: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    job = runtime.jobs.get(session, job_id)
    # Only names listed in the job record are served, so ``name`` can never walk out of the directory.
    if name not in {output["name"] for output in job["outputs"]}:
        raise not_found("output", name)
    path = runtime.layout.job_dir(session_id, job_id) / name
    return _stream_file(path, name, _guess_type(name))
