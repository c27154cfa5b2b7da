"""File transfers of the ``offload run`` client: uploads streamed from disk, outputs streamed to disk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import httpx

from ..names import disk_name
from .models import EXIT_CONNECTION, EXIT_USAGE, ClientError, JobRun, RunView, Session, check_response

TRANSFER_CHUNK_BYTES = 1024 * 1024
# Numbered names tried when an output file name is taken: ``profile-1.json`` to ``profile-999.json``.
MAX_NAME_SUFFIX = 999


async def upload(http: httpx.AsyncClient, session: Session, path: Path, view: RunView) -> str:
    """Stream one file to the server as a raw PUT body, and return its file id."""
    size = path.stat().st_size
    handle = view.upload_started(path.name, size)
    chunks = _file_chunks(path, size, lambda count: view.upload_advanced(handle, count))
    # With an explicit Content-Length, httpx sends the body as is, not chunked, and the server can
    # reject a file over its size limit before reading it.
    url = f"{session.prefix}/files/{quote(path.name, safe='')}"
    try:
        response = await http.put(url, content=chunks, headers={"Content-Length": str(size)})
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as error:
        raise await _explain_upload_error(http, path, size, error) from None
    return str(check_response(response, f"uploading {path} failed")["file_id"])


async def _explain_upload_error(http: httpx.AsyncClient, path: Path, size: int, error: Exception) -> ClientError:
    """Describe a connection that broke during an upload.

    A server that rejects a body before reading it (413) closes the connection while the client
    still sends, and the reset often destroys the response before httpx can read it.
    """
    try:
        alive = (await http.get("/healthz")).is_success
    except httpx.HTTPError:
        alive = False
    if alive:
        return ClientError(f"the server closed the connection while {path} ({size} bytes) was uploading; the file "
                           "may be over the server's upload limit (its --max-upload-bytes)", EXIT_CONNECTION)
    return ClientError(f"the connection to the server broke while {path} was uploading: "
                       f"{str(error) or type(error).__name__}", EXIT_CONNECTION)


async def _file_chunks(path: Path, size: int, advance: Callable[[int], None]) -> AsyncIterator[bytes]:
    remaining = size
    with path.open("rb") as file:
        while remaining:
            chunk = await asyncio.to_thread(file.read, min(TRANSFER_CHUNK_BYTES, remaining))
            if not chunk:
                raise ClientError(f"{path} got shorter while it was uploaded; run the command again", EXIT_USAGE)
            remaining -= len(chunk)
            advance(len(chunk))
            yield chunk


async def download_outputs(http: httpx.AsyncClient, session: Session, run: JobRun, directory: Path) -> list[Path]:
    assert run.record is not None and run.job_id is not None
    if run.record["outputs"]:
        directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for output in run.record["outputs"]:
        name = _safe_name(output["name"])
        url = f"{session.prefix}/jobs/{run.job_id}/outputs/{quote(name, safe='')}"
        path, file = _create_unique(directory, _local_name(run, name))
        try:
            with file:
                async with http.stream("GET", url) as response:
                    if not response.is_success:
                        await response.aread()
                        check_response(response, f"downloading output {name!r} of job {run.job_id} failed")
                    async for chunk in response.aiter_bytes(TRANSFER_CHUNK_BYTES):
                        file.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def _safe_name(name: str) -> str:
    """Keep an output name from the server inside the output directory."""
    base = Path(name.replace("\\", "/")).name
    if base in ("", ".", ".."):
        raise ClientError(f"the server named an output {name!r}, which is not a file name", EXIT_CONNECTION)
    return base


def _local_name(run: JobRun, output_name: str) -> str:
    """Name an output after its job's input, so the jobs of several files do not collide:
    ``weather.csv`` and ``profile.json`` give ``weather.profile.json``."""
    name = output_name if len(run.files) != 1 else f"{run.files[0].stem}.{output_name}"
    # An input "aux.csv" would make "aux.profile.json", a device name on Windows.
    return disk_name(name)


def _create_unique(directory: Path, name: str) -> tuple[Path, BinaryIO]:
    """Create ``name`` in ``directory``, or ``STEM-1.SUFFIX``, ``STEM-2.SUFFIX``... if it exists.

    Exclusive creation never replaces a file, also one that appears while the client runs.
    """
    candidate = Path(name)
    for number in range(MAX_NAME_SUFFIX + 1):
        if number:
            candidate = Path(f"{Path(name).stem}-{number}{Path(name).suffix}")
        path = directory / candidate
        try:
            return path, path.open("xb")
        except FileExistsError:
            continue
    raise ClientError(f"{directory / name} and {MAX_NAME_SUFFIX} numbered variants exist; choose another "
                      "--output-dir", EXIT_USAGE)
