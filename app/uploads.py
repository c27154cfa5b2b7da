"""Uploads streamed to disk: raw bodies and multipart forms, hashed and size-limited as they arrive.

Quart checks ``MAX_CONTENT_LENGTH`` only against Content-Length and against its current buffer, not
the running total of a body read as a stream (Quart 0.22), so the limit is enforced here, chunk by
chunk, for chunked bodies too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from .config import Settings, option_names
from .errors import ApiError, bad_request, quoted
from .flow import append_chunk
from .sessions import Session

# Bytes gathered before one write; each write is a hop to a worker thread, so small network
# chunks are batched.
WRITE_BATCH_BYTES = 1024 * 1024
# Pieces fed to the multipart parser, so a large buffered chunk never sits whole in its buffer.
PARSER_FEED_BYTES = 64 * 1024
# Memory the multipart parser may hold for part headers and non-file fields.
MAX_FORM_MEMORY_BYTES = 256 * 1024
MAX_FORM_PARTS = 1000
FILE_FIELD = "file"
# How much of a rejected body is read and dropped before the error response, at most.
DRAIN_MAX_BYTES = 16 * 1024 * 1024
DRAIN_TIMEOUT_S = 2.0


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


class UploadQuota:
    """One request's share of its session's limits: file size, files stored and bytes stored.

    Bodies still arriving count against the session limits too, so parallel uploads cannot pass them
    together. ``release`` gives back what the request reserved, once its files are registered or removed.
    """

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.max_file_bytes = settings.max_upload_bytes
        self.max_files = settings.max_files_per_session
        self.max_bytes = settings.max_session_bytes
        self._files = 0
        self._bytes = 0
        self._prepaid = 0

    def reserve_length(self, content_length: int | None) -> None:
        """Reserve a raw body's declared length, or reject it before any of it is read.

        Reserving first means that of two parallel uploads that cannot both fit, the later one fails at
        once instead of both failing halfway.
        """
        if content_length is None:
            return
        if content_length > self.max_file_bytes:
            raise too_large(self.max_file_bytes)
        self._check_session_bytes(content_length)
        self.session.uploading_bytes += content_length
        self._bytes += content_length
        self._prepaid = content_length

    def start_file(self) -> None:
        session = self.session
        if len(session.file_ids) + session.uploading_files >= self.max_files:
            raise ApiError(413, "too_many_files",
                           f"session {session.session_id!r} already has {self.max_files} files "
                           f"({option_names('max_files_per_session')}); delete some first")
        session.uploading_files += 1
        self._files += 1

    def charge(self, file_bytes: int, count: int) -> None:
        """Count ``count`` more bytes of a file that now has ``file_bytes``."""
        if file_bytes > self.max_file_bytes:
            raise too_large(self.max_file_bytes)
        if file_bytes <= self._prepaid:
            return
        count = min(count, file_bytes - self._prepaid)
        self._check_session_bytes(count)
        self.session.uploading_bytes += count
        self._bytes += count

    def release(self) -> None:
        self.session.uploading_files -= self._files
        self.session.uploading_bytes -= self._bytes
        self._files = self._bytes = self._prepaid = 0

    def _check_session_bytes(self, count: int) -> None:
        session = self.session
        if session.stored_bytes + session.uploading_bytes + count > self.max_bytes:
            raise ApiError(413, "session_full",
                           f"session {session.session_id!r} would exceed {self.max_bytes} stored bytes "
                           f"({option_names('max_session_bytes')}); delete files first")


async def receive_chunks(body: AsyncIterable[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """Yield a request body's chunks; raise 408 when none arrives for ``idle_s`` seconds."""
    chunks = aiter(body)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, "upload_timeout",
                           f"upload body stopped arriving for {idle_s:g} s ({option_names('upload_idle_s')}); "
                           "send it again") from None
        yield chunk


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

    def write(self, chunks: list[bytes | bytearray]) -> None:
        # CPython 3.11 releases the GIL while it joins 1 MiB or more of bytes objects, hashes more
        # than 2 KiB or writes to a file, so the event loop runs meanwhile. A bytearray in the batch,
        # from merged small messages, keeps the GIL held during the join.
        data = b"".join(chunks)
        self._hash.update(data)
        self._file.write(data)
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


@asynccontextmanager
async def drained_on_rejection(body: AsyncIterable[bytes]) -> AsyncIterator[None]:
    """Read and drop the rest of a rejected body, within bounds, before the error response goes out.

    A client still sending when the server responds and closes may get a connection reset instead of
    the response, so the server reads on for a little while to let the client see the reason.
    """
    try:
        yield
    except ApiError as error:
        # A stalled body has nothing more to read, and a stopping server has no time for it.
        if 400 <= error.status < 500 and error.status != 408:
            await _drain(body)
        raise


async def _drain(body: AsyncIterable[bytes]) -> None:
    dropped = 0
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for chunk in body:
                dropped += len(chunk)
                if dropped > DRAIN_MAX_BYTES:
                    return
    except TimeoutError:
        return


@dataclass
class UploadContext:
    """What every upload of one request shares: its quota, the shutdown event and the timing settings.

    ``stopping`` is the server's shutdown event: an upload still arriving then ends with 503.
    """

    quota: UploadQuota
    stopping: asyncio.Event
    idle_s: float
    write_delay_s: float = 0.0


class BatchedWriter:
    """Collects chunks and writes them to a ``FileSink`` in batches, off the event loop.

    A batch is a list of the received chunks, joined in the worker thread, so the event loop
    thread does not copy them.
    """

    def __init__(self, sink: FileSink, context: UploadContext) -> None:
        self.sink = sink
        self.context = context
        self.received = 0
        self._batch: list[bytes | bytearray] = []
        self._batch_bytes = 0

    async def write(self, chunk: bytes) -> None:
        self.context.quota.charge(self.received + len(chunk), len(chunk))
        self.received += len(chunk)
        if self.context.stopping.is_set():
            raise shutting_down()

        append_chunk(self._batch, chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= WRITE_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            if self.context.write_delay_s:
                await asyncio.sleep(self.context.write_delay_s)
            await asyncio.to_thread(self.sink.write, batch)

    async def commit(self) -> str:
        await self.flush()
        return await asyncio.to_thread(self.sink.commit)

    async def discard(self) -> None:
        self._batch, self._batch_bytes = [], 0
        await asyncio.to_thread(self.sink.discard)


async def store_body(body: AsyncIterable[bytes], path: Path, context: UploadContext) -> tuple[int, str]:
    """Stream a raw request body to ``path``; return its size and SHA-256 hex digest."""
    context.quota.start_file()
    writer = BatchedWriter(await asyncio.to_thread(FileSink, path), context)
    try:
        async for chunk in receive_chunks(body, context.idle_s):
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
                          context: UploadContext) -> list[StoredUpload]:
    """Stream every ``file`` part of a multipart body to a new path; return what was stored.

    ``new_path`` returns a fresh path for each file part. On any error every file of the request,
    finished or partial, is removed.
    """
    form = _MultipartForm(MultipartDecoder(boundary, MAX_FORM_MEMORY_BYTES, max_parts=MAX_FORM_PARTS),
                          new_path, context)
    try:
        async for piece in _pieces(receive_chunks(body, context.idle_s)):
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

    def __init__(self, decoder: MultipartDecoder, new_path: Callable[[], Path], context: UploadContext) -> None:
        self.decoder = decoder
        self.new_path = new_path
        self.context = context
        self.stored: list[StoredUpload] = []
        self.current: tuple[BatchedWriter, str, str] | None = None

    async def drain(self) -> None:
        """Handle every event the parser has ready."""
        while True:
            event = self.decoder.next_event()
            if isinstance(event, (NeedData, Epilogue)):
                return
            if isinstance(event, File) and event.name == FILE_FIELD:
                self.context.quota.start_file()
                sink = await asyncio.to_thread(FileSink, self.new_path())
                self.current = (BatchedWriter(sink, self.context), _part_filename(event),
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


# An RFC 5987 extended value: charset, an optional language, then percent-encoded bytes.
_EXTENDED_FILENAME_RE = re.compile(r"""filename\*\s*=\s*([A-Za-z0-9!#$%&+^_`{}~-]+)'[^']*'([^;\s]*)""")


def _part_filename(event: File) -> str:
    """Return a file part's name, taking ``filename*`` as it is encoded.

    Werkzeug 3.1 strips a pair of double quotes from a decoded ``filename*``, so a file named
    ``"a"`` became ``a`` and one named ``"`` lost its name. The extended value is never quoted.
    """
    disposition = event.headers.get("content-disposition", "")
    match = _EXTENDED_FILENAME_RE.search(disposition)
    if match is None:
        return event.filename
    try:
        return unquote(match.group(2), encoding=match.group(1), errors="strict")
    except (LookupError, UnicodeDecodeError):
        return event.filename


def _part_type(headers: Headers) -> str:
    return headers.get("content-type", "application/octet-stream")
