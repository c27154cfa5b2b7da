"""Changes applied to Hypercorn when serving starts, for the version this project uses (0.18).

Hypercorn 0.18's ``WebsocketBuffer`` writes each incoming frame into its buffer before it compares
the length with ``websocket_max_message_size``. After the first message that is too large it has
sent a close frame, but it keeps reading, so every further frame the client sends is appended and
the buffer grows without bound until the client closes.

Hypercorn 0.18 also accepts every offer of permessage-deflate and has no setting to turn it off.
Events are small JSON objects, so compressing each one for each client costs more CPU than it saves
bytes. It was an eighth of the event loop's time when many small jobs ran.

Hypercorn 0.18's asyncio server reads at most 64 KiB from a connection at a time, and each piece
passes through h11, an ASGI message and the request body as Python calls. Reading larger pieces
makes fewer of them for an upload.
"""

from __future__ import annotations

from typing import Any

from hypercorn.asyncio import tcp_server
from hypercorn.protocol import ws_stream
from wsproto.extensions import Extension

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


class DeclinedPerMessageDeflate(Extension):
    """permessage-deflate as the server's only extension, declining every offer of it."""

    name = "permessage-deflate"

    def offer(self) -> bool:
        # Only a client offers extensions; this one is only ever used by the server.
        return False

    def accept(self, offer: str) -> None:
        return None


def decline_websocket_compression() -> None:
    """Make Hypercorn's websocket handshakes decline permessage-deflate; calling it again does nothing."""
    # NOTE: replaces a module attribute of Hypercorn 0.18, so recheck it when upgrading Hypercorn.
    ws_stream.PerMessageDeflate = DeclinedPerMessageDeflate  # type: ignore[misc]


def enlarge_socket_reads() -> None:
    """Make Hypercorn's asyncio server read up to ``SOCKET_READ_BYTES`` at a time instead of 64 KiB."""
    # NOTE: replaces a module attribute of Hypercorn 0.18; recheck when upgrading Hypercorn.
    tcp_server.MAX_RECV = SOCKET_READ_BYTES
