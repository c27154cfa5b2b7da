"""Changes applied to Hypercorn when serving starts, for the version this project uses.

Hypercorn 0.18's ``WebsocketBuffer`` writes each incoming frame into its buffer before it compares
the length with ``websocket_max_message_size``. After the first message that is too large it has
sent a close frame, but it keeps reading, so every further frame the client sends is appended and
the buffer grows without bound until the client closes.

Hypercorn 0.18 also accepts every offer of permessage-deflate and has no setting to turn it off.
Events are small JSON objects, so compressing each one for each client costs more CPU than it saves
bytes. It was an eighth of the event loop's time when many small jobs ran.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.extensions import Extension


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
