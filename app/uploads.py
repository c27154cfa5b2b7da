"""Uploads streamed to disk: raw bodies and multipart forms, hashed and size-limited as they arrive.

Quart checks ``MAX_CONTENT_LENGTH`` only against Content-Length and against its current buffer, not
the running total of a body read as a stream (Quart 0.22), so the limit is enforced here, chunk by
chunk, for chunked bodies too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from .config import option_names
from .errors import ApiError, bad_request, quoted

# Bytes gathered before one write; each write is a hop to a worker thread, so small network
# chunks are batched.
WRITE_BATCH_BYTES = 1024 * 1024
# Pieces fed to the multipart parser, so a large buffered chunk never sits whole in its buffer.
PARSER_FEED_BYTES = 64 * 1024
# Memory the multipart parser may hold for part headers and non-file fields.
MAX_FORM_MEMORY_BYTES = 256 * 1024
MAX_FORM_PARTS = 1000
FILE_FIELD = "file"


@dataclass
class StoredUpload:
    path: Path
    name: str
    content_type: str
    size: int
    sha256: str


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large",
                    f"upload exceeds the maximum file size of {limit} bytes ({option_names('max_upload_bytes')})")


class FileSink:
    """A file being written under a temporary name, with its running size and SHA-256.

    Its methods block, so the event loop calls them in a worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".part")
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = self.partial.open("wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self) -> str:
        self._file.close()
        os.replace(self.partial, self.path)
        return self._hash.hexdigest()

    def discard(self) -> None:
        # Windows cannot delete an open file, so close before unlinking.
        self._file.close()
        self.partial.unlink(missing_ok=True)


def shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "server is shutting down; upload again once it is back")


class BatchedWriter:
    """Collects chunks and writes them to a ``FileSink`` in batches, off the event loop.

    ``stopping`` is the server's shutdown event: an upload still arriving then ends with 503.
    """

    def __init__(self, sink: FileSink, limit: int, stopping: asyncio.Event) -> None:
        self.sink = sink
        self.limit = limit
        self.stopping = stopping
        self.received = 0
        self._batch = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise too_large(self.limit)
        if self.stopping.is_set():
            raise shutting_down()
        self._batch += chunk
        if len(self._batch) >= WRITE_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._batch:
            batch, self._batch = bytes(self._batch), bytearray()
            await asyncio.to_thread(self.sink.write, batch)

    async def commit(self) -> str:
        await self.flush()
        return await asyncio.to_thread(self.sink.commit)

    async def discard(self) -> None:
        self._batch = bytearray()
        await asyncio.to_thread(self.sink.discard)


async def store_body(body: AsyncIterable[bytes], path: Path, limit: int,
                     stopping: asyncio.Event) -> tuple[int, str]:
    """Stream a raw request body to ``path``; return its size and SHA-256 hex digest."""
    writer = BatchedWriter(await asyncio.to_thread(FileSink, path), limit, stopping)
    try:
        async for chunk in body:
            await writer.write(chunk)
        digest = await writer.commit()
    except BaseException:
        await asyncio.shield(writer.discard())
        raise
    return writer.received, digest


def multipart_boundary(content_type: str) -> bytes:
    mimetype, options = parse_options_header(content_type)
    if mimetype != "multipart/form-data":
        raise bad_request(f"invalid Content-Type {quoted(content_type)}: use multipart/form-data with a "
                          f"{FILE_FIELD!r} field, or PUT the raw body to /files/NAME")
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise bad_request("invalid multipart Content-Type: missing boundary or longer than 70 characters")
    return boundary.encode("latin-1", errors="replace")


async def store_multipart(body: AsyncIterable[bytes], boundary: bytes, new_path: Callable[[], Path],
                          limit: int, stopping: asyncio.Event) -> list[StoredUpload]:
    """Stream every ``file`` part of a multipart body to a new path; return what was stored.

    ``new_path`` returns a fresh path for each file part. On any error every file of the request,
    finished or partial, is removed.
    """
    form = _MultipartForm(MultipartDecoder(boundary, MAX_FORM_MEMORY_BYTES, max_parts=MAX_FORM_PARTS),
                          new_path, limit, stopping)
    try:
        async for piece in _pieces(body):
            form.decoder.receive_data(piece)
            await form.drain()
        form.decoder.receive_data(None)
        await form.drain()
    except RequestEntityTooLarge:
        await form.discard()
        raise ApiError(413, "too_large", f"multipart headers or fields exceed {MAX_FORM_MEMORY_BYTES} "
                       f"bytes or {MAX_FORM_PARTS} parts") from None
    except ValueError as error:
        await form.discard()
        raise bad_request(f"invalid multipart body: {error}") from None
    except BaseException:
        await form.discard()
        raise

    if not form.stored:
        raise bad_request(f"multipart body has no {FILE_FIELD!r} part with a filename")
    return form.stored


async def _pieces(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in body:
        for start in range(0, len(chunk), PARSER_FEED_BYTES):
            yield chunk[start:start + PARSER_FEED_BYTES]


class _MultipartForm:
    """The files of one multipart request: those stored so far and the one being written."""

    def __init__(self, decoder: MultipartDecoder, new_path: Callable[[], Path], limit: int,
                 stopping: asyncio.Event) -> None:
        self.decoder = decoder
        self.new_path = new_path
        self.limit = limit
        self.stopping = stopping
        self.stored: list[StoredUpload] = []
        self.current: tuple[BatchedWriter, str, str] | None = None

    async def drain(self) -> None:
        """Handle every event the parser has ready."""
        while True:
            event = self.decoder.next_event()
            if isinstance(event, (NeedData, Epilogue)):
                return
            if isinstance(event, File) and event.name == FILE_FIELD:
                sink = await asyncio.to_thread(FileSink, self.new_path())
                self.current = (BatchedWriter(sink, self.limit, self.stopping), event.filename,
                                _part_type(event.headers))
            elif isinstance(event, Field) and event.name == FILE_FIELD:
                raise ValueError(f"part {FILE_FIELD!r} has no filename; send it as a file")
            elif isinstance(event, Data) and self.current is not None:
                await self._write(event)

    async def _write(self, event: Data) -> None:
        assert self.current is not None
        writer, name, content_type = self.current
        await writer.write(event.data)
        if not event.more_data:
            digest = await writer.commit()
            self.stored.append(StoredUpload(writer.sink.path, name, content_type, writer.received, digest))
            self.current = None

    async def discard(self) -> None:
        if self.current is not None:
            await asyncio.shield(self.current[0].discard())
            self.current = None
        for upload in self.stored:
            await asyncio.to_thread(upload.path.unlink, missing_ok=True)


def _part_type(headers: Headers) -> str:
    return headers.get("content-type", "application/octet-stream")
