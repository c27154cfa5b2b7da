"""Websocket event streams: every job of a session, or one job.

A stream starts with a ``snapshot`` of the current job records, then sends each event as one JSON
text message, in ``seq`` order. A client that reconnects with ``?after=SEQ`` gets the events it
missed instead of a snapshot, as long as the session's backlog still contains them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, websocket

from .cors import origin_allowed
from .errors import ApiError, bad_request, quoted
from .events import CLOSE_SEND_GRACE_S, Event, Subscriber
from .jobs import TERMINAL_STATES, public_job
from .routes import authenticate, ready_runtime
from .runtime import CLOSE_NORMAL, CLOSE_TRY_AGAIN_LATER, Runtime

logger = logging.getLogger(__name__)

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


def _after() -> int | None:
    text = websocket.args.get("after")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise bad_request(f"after: invalid sequence number {quoted(text)}; use a whole number from an event's seq")
    return int(text)


async def _stream(session_id: str, job_id: str | None) -> None:
    runtime = ready_runtime()
    _check_origin()
    session = authenticate(runtime, session_id)
    assert runtime.jobs is not None and runtime.store is not None
    if job_id is not None:
        runtime.jobs.get(session, job_id)
    after = _after()

    subscriber = Subscriber(session_id, job_id, runtime.settings.ws_send_queue)
    runtime.hub.subscribe(subscriber)
    reader: asyncio.Task[None] | None = None
    try:
        # Nothing may await between subscribing and reading the backlog, or events would be lost or doubled.
        floor = runtime.hub.last_seq(session_id)
        first = _first_events(runtime, session_id, job_id, after)
        finished = job_id is not None and _job_finished(runtime, job_id)
        await websocket.accept()
        reader = asyncio.create_task(_discard_incoming())
        if not await _send_guarded(subscriber, first):
            return
        if finished:
            await websocket.close(CLOSE_NORMAL, "job finished")
        else:
            await _relay(subscriber, floor)
    finally:
        runtime.hub.unsubscribe(subscriber)
        if reader is not None:
            reader.cancel()


async def _discard_incoming() -> None:
    """Read and drop what the client sends, so Quart does not queue it without bound."""
    while True:
        await websocket.receive()


def _first_events(runtime: Runtime, session_id: str, job_id: str | None, after: int | None) -> list[Event]:
    if after is not None:
        missed = runtime.hub.events_after(session_id, after, job_id)
        if missed is not None:
            return missed
    assert runtime.store is not None
    session = runtime.store.sessions[session_id]
    jobs = [public_job(job) for job in runtime.store.session_jobs(session)
            if job_id is None or job["job_id"] == job_id]
    return [{"seq": runtime.hub.last_seq(session_id), "job_id": job_id, "type": "snapshot", "jobs": jobs}]


def _job_finished(runtime: Runtime, job_id: str) -> bool:
    assert runtime.store is not None
    job = runtime.store.jobs.get(job_id)
    return job is None or job["state"] in TERMINAL_STATES


async def _relay(subscriber: Subscriber, floor: int) -> None:
    while True:
        batch = await subscriber.next_batch()
        if subscriber.overflowed:
            await _drop_slow(subscriber)
            return
        batch = [event for event in batch if event["seq"] > floor]
        if not await _send_guarded(subscriber, batch):
            return
        if subscriber.job_id is not None and any(_is_final(event) for event in batch):
            await websocket.close(CLOSE_NORMAL, "job finished")
            return
        # A subscriber is closed only after every event it must see was published, so the batch
        # just sent held the last ones.
        if subscriber.closed:
            await websocket.close(subscriber.close_code, subscriber.close_reason)
            return


async def _send_guarded(subscriber: Subscriber, events: list[Event]) -> bool:
    """Send events unless the client stops reading; return False if the client was dropped."""
    try:
        async with asyncio.timeout(None) as guard:
            subscriber.send_guard = guard
            if subscriber.closed:
                guard.reschedule(asyncio.get_running_loop().time() + CLOSE_SEND_GRACE_S)
            await _send_all(events)
    except TimeoutError:
        await _drop_slow(subscriber)
        return False
    finally:
        subscriber.send_guard = None
    return True


async def _drop_slow(subscriber: Subscriber) -> None:
    logger.warning("session=%s websocket client fell more than %d events behind or stopped reading; "
                   "disconnected", subscriber.session_id, subscriber.limit)
    try:
        async with asyncio.timeout(CLOSE_SEND_GRACE_S):
            await websocket.close(CLOSE_TRY_AGAIN_LATER, "client too slow; reconnect with ?after=SEQ")
    except TimeoutError:
        pass


def _is_final(event: Event) -> bool:
    return event["type"] == "state" and event["state"] in TERMINAL_STATES


async def _send_all(events: list[dict[str, Any]]) -> None:
    for event in events:
        await websocket.send(json.dumps(event, allow_nan=False))
