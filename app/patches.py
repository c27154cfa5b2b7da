"""Changes applied to Hypercorn when serving starts, for the version this project uses (0.18).

Hypercorn 0.18's ``WebsocketBuffer`` writes each incoming frame into its buffer before it compares
the length with ``websocket_max_message_size``. After the first message that is too large it has
sent a close frame, but it keeps reading, so every further frame the client sends is appended and
the buffer grows without bound until the client closes.

Hypercorn 0.18's asyncio server reads at most 64 KiB from a connection at a time, and each piece
passes through h11, an ASGI message and the request body as Python calls. Reading larger pieces
makes fewer of them for an upload.
"""

from __future__ import annotations

from typing import Any

from hypercorn.asyncio import tcp_server
from hypercorn.protocol import ws_stream

# The selector event loop's socket transport receives at most 256 KiB per recv (CPython 3.11), so
# Hypercorn's stream reader seldom has more than that buffered.
SOCKET_READ_BYTES = 256 * 1024


class BoundedWebsocketBuffer(ws_stream.WebsocketBuffer):
    """A message buffer that counts frames past the limit instead of storing them."""

    def extend(self, event: Any) -> None:
        if self.length + len(event.data) > self.max_length:
            self.length += len(event.data)
            raise ws_stream.FrameTooLargeError()
        super().extend(event)


def bound_websocket_buffers() -> None:
    """Make Hypercorn's websocket streams use ``BoundedWebsocketBuffer``; calling it again does nothing."""
    # NOTE: replaces a module attribute of Hypercorn 0.18; recheck when upgrading Hypercorn.
    ws_stream.WebsocketBuffer = BoundedWebsocketBuffer  # type: ignore[misc]


def enlarge_socket_reads() -> None:
    """Make Hypercorn's asyncio server read up to ``SOCKET_READ_BYTES`` at a time instead of 64 KiB."""
    # NOTE: replaces a module attribute of Hypercorn 0.18; recheck when upgrading Hypercorn.
    tcp_server.MAX_RECV = SOCKET_READ_BYTES
