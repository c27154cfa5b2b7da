"""HTTP routes of the API: sessions, files, job kinds, jobs, outputs and health."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from pathlib import Path
from typing import Any

from quart import Blueprint, Response, current_app, has_request_context, request, websocket
from quart.wrappers.response import FileBody

from .errors import ApiError, bad_request, not_found
from .jobs import TERMINAL_STATES, public_job
from .names import clean_name, content_disposition
from .runtime import Runtime
from .sessions import Record, Session, new_id
from .uploads import multipart_boundary, store_body, store_multipart, too_large
from .validation import param_caps

api = Blueprint("api", __name__)

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
async def healthz() -> Response:
    return json_response({"status": "ok"})


@api.get("/readyz")
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


# Sessions


@api.post("/api/sessions")
async def create_session() -> Response:
    runtime = ready_runtime()
    assert runtime.store is not None
    session, token = runtime.store.create_session(runtime.settings.session_idle_s)
    await runtime.store.journal.committed()
    current_app.logger.info("session=%s created", session.session_id)
    response = json_response({**session.public(), "token": token}, 201)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict",
                        path=f"/api/sessions/{session.session_id}")
    return response


@api.delete("/api/sessions/<session_id>")
async def delete_session(session_id: str) -> Response:
    runtime = ready_runtime()
    authenticate(runtime, session_id)
    runtime.delete_session(session_id)
    await runtime.store.journal.committed()
    current_app.logger.info("session=%s deleted", session_id)
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


@api.put("/api/sessions/<session_id>/files/<path:name>")
async def put_file(session_id: str, name: str) -> tuple[Response, int]:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.store is not None
    limit = runtime.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)

    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("multipart/form-data"):
        raise bad_request("PUT takes the file itself as the body; send multipart/form-data with "
                          f"POST /api/sessions/{session_id}/files instead")
    name = clean_name(name)
    file_id = new_id()
    directory = runtime.layout.files_dir(session_id)
    await _make_dir(directory)
    try:
        size, sha256 = await store_body(request.body, directory / file_id, limit, runtime.stopping)
    except FileNotFoundError:
        # The session was deleted, and its directory with it, while the body arrived.
        raise not_found("session", session_id) from None
    # curl --data-binary sends this type by default; it never describes a stored file.
    if not content_type or content_type == "application/x-www-form-urlencoded":
        content_type = _guess_type(name)
    record = _file_record(file_id, name, size, sha256, content_type)
    return await _register_upload(runtime, session, record), 201


@api.post("/api/sessions/<session_id>/files")
async def post_files(session_id: str) -> tuple[Response, int]:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    boundary = multipart_boundary(request.headers.get("Content-Type", ""))
    directory = runtime.layout.files_dir(session_id)
    await _make_dir(directory)

    try:
        uploads = await store_multipart(request.body, boundary, lambda: directory / new_id(),
                                        runtime.settings.max_upload_bytes, runtime.stopping)
    except FileNotFoundError:
        # The session was deleted, and its directory with it, while the body arrived.
        raise not_found("session", session_id) from None
    records = []
    for upload in uploads:
        name = clean_name(upload.name)
        content_type = upload.content_type
        if content_type == "application/octet-stream":
            content_type = _guess_type(name)
        record = _file_record(upload.path.name, name, upload.size, upload.sha256, content_type)
        records.append(await _register_upload(runtime, session, record))
    return json_response({"files": records}), 201


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
    current_app.logger.info("session=%s file=%s stored: %d bytes", session.session_id, record["file_id"],
                            record["size"])
    return record


@api.get("/api/sessions/<session_id>/files")
async def list_files(session_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.store is not None
    return json_response({"files": list(runtime.store.session_files(session))})


@api.get("/api/sessions/<session_id>/files/<file_id>/content")
async def download_file(session_id: str, file_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    record = _own_file(runtime, session, file_id)
    path = runtime.layout.file_path(session_id, file_id)
    return _stream_file(path, record["name"], record["content_type"])


@api.delete("/api/sessions/<session_id>/files/<file_id>")
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
    return response


# Jobs


@api.get("/api/job-kinds")
async def job_kinds() -> Response:
    runtime = ready_runtime()
    return json_response({"kinds": [kind.describe(param_caps(kind, runtime.settings))
                                     for kind in runtime.kinds.values()]})


@api.post("/api/sessions/<session_id>/jobs")
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
async def list_jobs(session_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.store is not None
    return json_response({"jobs": [public_job(job) for job in runtime.store.session_jobs(session)]})


@api.get("/api/sessions/<session_id>/jobs/<job_id>")
async def get_job(session_id: str, job_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    return json_response(public_job(runtime.jobs.get(session, job_id)))


@api.post("/api/sessions/<session_id>/jobs/<job_id>/cancel")
async def cancel_job(session_id: str, job_id: str) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    record = runtime.jobs.cancel(session, job_id)
    await runtime.store.journal.committed()
    return json_response(public_job(record), 202)


@api.get("/api/sessions/<session_id>/jobs/<job_id>/outputs/<name>")
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
