"""FlowControlledBody: messages kept as received, small ones merged, flow control by unread bytes."""

from __future__ import annotations

import asyncio

import pytest

from app.flow import BODY_BUFFER_BYTES, MERGE_BELOW_BYTES, FlowControlledBody


async def read_all(body: FlowControlledBody) -> list[bytes]:
    return [chunk async for chunk in body]


async def test_small_messages_merged() -> None:
    body = FlowControlledBody(None, None)
    for _ in range(100_000):
        body.append(b"x")
    large = b"y" * MERGE_BELOW_BYTES
    body.append(large)
    body.append(b"z")
    body.set_complete()

    chunks = await read_all(body)
    assert b"".join(chunks) == b"x" * 100_000 + large + b"z"
    # 100,000 bytes in merged pieces of about 64 KiB, the large message as it came, then the tail.
    assert len(chunks) <= 4
    assert chunks[-2] is large
    assert all(type(chunk) is bytes for chunk in chunks)


async def test_room_follows_unread_bytes() -> None:
    body = FlowControlledBody(None, None)
    body.append(b"a" * BODY_BUFFER_BYTES)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(body.wait_for_room(), 0.05)

    first = await body.__anext__()
    assert len(first) == BODY_BUFFER_BYTES
    await asyncio.wait_for(body.wait_for_room(), 1)
