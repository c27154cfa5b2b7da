"""Flow control for request bodies: the server reads a body from the network only as fast as it is consumed.

Quart appends every ASGI body message to the request's buffer as soon as it arrives (Quart 0.22), so
a client faster than the disk grows that buffer without bound. Here the task that receives messages
waits while the buffer contains ``BODY_BUFFER_BYTES`` that the handler has not read yet. Hypercorn's
queue of received messages is bounded (``max_app_queue_size``), so once it is full Hypercorn stops
reading the socket and TCP slows the client down.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator
from typing import Any

from hypercorn.typing import ASGIReceiveCallable
from quart.asgi import ASGIHTTPConnection
from quart.wrappers import Body, Request
from werkzeug.exceptions import RequestEntityTooLarge

# Unread body bytes buffered per request before the server stops receiving.
BODY_BUFFER_BYTES = 1024 * 1024
# Messages smaller than this are appended to the previous small one, so a client that sends a body
# in 1-byte chunks does not make the server keep a Python object per byte.
MERGE_BELOW_BYTES = 64 * 1024


def append_chunk(chunks: deque[bytes | bytearray] | list[bytes | bytearray], data: bytes) -> None:
    """Append ``data`` to ``chunks``, or extend the last chunk with it when both are small."""
    if len(data) >= MERGE_BELOW_BYTES:
        chunks.append(data)
    elif chunks and isinstance(chunks[-1], bytearray) and len(chunks[-1]) < MERGE_BELOW_BYTES:
        chunks[-1] += data
    else:
        chunks.append(bytearray(data))


class FlowControlledBody(Body):
    """A request body whose receiver pauses while ``BODY_BUFFER_BYTES`` wait to be read.

    It keeps the received messages as they arrived instead of appending them to Quart's bytearray,
    and iteration yields them one at a time, so reading a body as a stream copies nothing. Small
    messages are merged (``append_chunk``), which copies only those. Awaiting the whole body turns
    flow control off, because that reader takes nothing until the end.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._chunks: deque[bytes | bytearray] = deque()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._whole = False

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return
        append_chunk(self._chunks, data)
        self._buffered += len(data)
        self._has_data.set()
        if self._max_content_length is not None and self._buffered > self._max_content_length:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()
        if self._buffered >= BODY_BUFFER_BYTES and not self._whole:
            self._room.clear()

    async def __anext__(self) -> bytes:
        if self._must_raise is not None:
            raise self._must_raise

        if not self._chunks and not self._complete.is_set():
            self._has_data.clear()
            await self._has_data.wait()
        if not self._chunks:
            raise StopAsyncIteration()

        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < BODY_BUFFER_BYTES:
            self._room.set()
        # A merged chunk is a bytearray of at most about 64 KiB, and readers get bytes, as from Quart.
        return bytes(chunk) if isinstance(chunk, bytearray) else chunk

    def __await__(self) -> Generator[Any, None, Any]:
        self._whole = True
        self._room.set()
        if self._must_raise is not None:
            raise self._must_raise

        yield from self._complete.wait().__await__()

        if self._must_raise is not None:
            raise self._must_raise
        return b"".join(self._chunks)

    def clear(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        self._room.set()

    async def wait_for_room(self) -> None:
        await self._room.wait()


class FlowControlledRequest(Request):
    body_class = FlowControlledBody


class FlowControlledConnection(ASGIHTTPConnection):
    """Quart's HTTP connection, but it receives the next body message only when the buffer has room."""

    async def handle_messages(self, request: Request, receive: ASGIReceiveCallable) -> None:
        body = request.body
        while True:
            if isinstance(body, FlowControlledBody):
                await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                return
