"""A fix applied to Hypercorn when serving starts, for a defect in the version this project uses.

Hypercorn 0.18's ``WebsocketBuffer`` writes each incoming frame into its buffer before it compares
the length with ``websocket_max_message_size``. After the first message that is too large it has
sent a close frame, but it keeps reading, so every further frame the client sends is appended and
the buffer grows without bound until the client closes.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import ws_stream


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
