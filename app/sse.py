"""Server-Sent Events streams: the websocket streams' events as ``text/event-stream``.

Each event goes out as ``id: SEQ``, ``event: TYPE`` and ``data: JSON`` lines, the JSON being the
websocket message. ``EventSource`` resumes by sending the last ``id`` as the ``Last-Event-ID``
header, and a reconnect then gets only the newer events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, request

from .eventstream import TOO_SLOW, EventStream, guard_deadline, job_finished, parse_after
from .events import Event, event_text
from .openapi import EVENT_STREAM_PARAMETERS, documented, event_stream_reply
from .routes import authenticate, ready_runtime

sse = Blueprint("sse", __name__)

# A comment line alone: a blank line after it would make some clients dispatch an empty event.
KEEP_ALIVE = b": keep-alive\n"


@sse.get("/api/sessions/<session_id>/events")
@documented(200, None, 400, 401, 404, 503, responses=event_stream_reply(job=False),
            parameters=EVENT_STREAM_PARAMETERS)
async def session_events(session_id: str) -> Response:
    return _respond(session_id, None)


@sse.get("/api/sessions/<session_id>/jobs/<job_id>/events")
@documented(200, None, 400, 401, 404, 503, responses=event_stream_reply(), parameters=EVENT_STREAM_PARAMETERS)
async def job_events(session_id: str, job_id: str) -> Response:
    return _respond(session_id, job_id)


def _respond(session_id: str, job_id: str | None) -> Response:
    runtime = ready_runtime()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None
    if job_id is not None:
        runtime.jobs.get(session, job_id)
    after = _after()

    # A reconnect after the job's final event has nothing left to send. 204 is the one status that
    # makes EventSource stop reconnecting.
    if (job_id is not None and after is not None and job_finished(runtime, job_id)
            and runtime.hub.events_after(session_id, after, job_id) == []):
        return Response(status=204)

    stream = EventStream(runtime, session_id, job_id, after, runtime.settings.sse_keep_alive_s)
    response = Response(_body(stream), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    # nginx buffers proxied responses unless this header turns buffering off.
    response.headers["X-Accel-Buffering"] = "no"
    # Quart ends a response after RESPONSE_TIMEOUT (60 s by default); a stream may run for hours.
    response.timeout = None
    return response


def _after() -> int | None:
    """Read the resume point: ``Last-Event-ID`` wins over ``?after``, which a reconnect repeats unchanged."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        return parse_after(header, "Last-Event-ID")
    return parse_after(request.args.get("after"), "after")


class TaskDeadline:
    """A send guard that cancels a whole task at its deadline.

    Quart sends each chunk of a streamed body after the body's generator suspends (Quart 0.22,
    ``ASGIHTTPConnection._send_response``), so the generator cannot interrupt a send that stalls.
    Cancelling the request task ends it, and Quart then closes the generator.
    """

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False

    def reschedule(self, when: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()


async def _body(stream: EventStream) -> AsyncIterator[bytes]:
    """Yield the stream's events; a client disconnect cancels the request task, which closes this."""
    task = asyncio.current_task()
    assert task is not None
    guard = TaskDeadline(task)
    subscriber = stream.subscriber
    try:
        async with contextlib.aclosing(stream.batches()) as batches:
            async for batch in batches:
                guard.reschedule(guard_deadline(subscriber))
                subscriber.send_guard = guard
                try:
                    yield _encode(batch) if batch else KEEP_ALIVE
                finally:
                    subscriber.send_guard = None
                    guard.reschedule(None)
        if stream.end is TOO_SLOW:
            stream.log_dropped("event stream")
    finally:
        if guard.expired:
            stream.log_dropped("event stream")


def _encode(events: list[Event]) -> bytes:
    lines = []
    for event in events:
        data = event_text(event)
        lines.append(f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n")
    return "".join(lines).encode()
