"""Websocket event streams: every job of a session, or one job.

A stream starts with a ``snapshot`` of the current job records, then sends each event as one JSON
text message, in ``seq`` order. A client that reconnects with ``?after=SEQ`` gets the events it
missed instead of a snapshot, as long as the session's backlog still contains them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, websocket

from .cors import origin_allowed
from .errors import ApiError, quoted
from .events import CLOSE_SEND_GRACE_S, Event, Subscriber, event_text
from .eventstream import TOO_SLOW, EventStream, guard_deadline, parse_after
from .routes import authenticate, ready_runtime

streams = Blueprint("streams", __name__)


@streams.websocket("/api/sessions/<session_id>/ws")
async def session_stream(session_id: str) -> None:
    await _stream(session_id, None)


@streams.websocket("/api/sessions/<session_id>/jobs/<job_id>/ws")
async def job_stream(session_id: str, job_id: str) -> None:
    await _stream(session_id, job_id)


def _check_origin() -> None:
    """Reject a handshake whose Origin is another site; clients that send no Origin are not browsers."""
    origin = websocket.headers.get("Origin")
    if origin is None or origin_allowed(origin):
        return
    if urlsplit(origin).netloc.lower() != websocket.host.lower():
        raise ApiError(403, "forbidden_origin", f"websocket Origin {quoted(origin)} does not match host "
                       f"{quoted(websocket.host)}")


async def _stream(session_id: str, job_id: str | None) -> None:
    runtime = ready_runtime()
    _check_origin()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    if job_id is not None:
        runtime.jobs.get(session, job_id)
    after = parse_after(websocket.args.get("after"), "after")

    await websocket.accept()
    stream = EventStream(runtime, session_id, job_id, after)
    reader = asyncio.create_task(_discard_incoming())
    try:
        async with contextlib.aclosing(stream.batches()) as batches:
            async for batch in batches:
                if not await _send_guarded(stream.subscriber, batch):
                    stream.log_dropped("websocket")
                    await _close_slow()
                    return
        if stream.end is TOO_SLOW:
            stream.log_dropped("websocket")
            await _close_slow()
        elif stream.end is not None:
            await websocket.close(stream.end.code, stream.end.reason)
    finally:
        reader.cancel()


async def _discard_incoming() -> None:
    """Read and drop what the client sends, so Quart does not queue it without bound."""
    while True:
        await websocket.receive()


async def _send_guarded(subscriber: Subscriber, events: list[Event]) -> bool:
    """Send events unless the client stops reading; return False if the send was given up."""
    try:
        async with asyncio.timeout(guard_deadline(subscriber)) as guard:
            subscriber.send_guard = guard
            await _send_all(events)
    except TimeoutError:
        return False
    finally:
        subscriber.send_guard = None
    return True


async def _close_slow() -> None:
    try:
        async with asyncio.timeout(CLOSE_SEND_GRACE_S):
            await websocket.close(TOO_SLOW.code, TOO_SLOW.reason)
    except TimeoutError:
        pass


async def _send_all(events: list[dict[str, Any]]) -> None:
    for event in events:
        await websocket.send(event_text(event))
