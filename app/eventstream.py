"""One client's event stream, shared by the websocket and Server-Sent Events routes.

A stream starts with a ``snapshot`` of the current job records, or with the events missed since
``after`` when the session's backlog still contains them. Then it yields each new batch of events
in ``seq`` order until the job ends, the server closes it, or the client falls too far behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .errors import bad_request, quoted
from .events import CLOSE_SEND_GRACE_S, Event, Subscriber
from .jobs import TERMINAL_STATES, public_job
from .logs import log_ids
from .runtime import CLOSE_NORMAL, CLOSE_TRY_AGAIN_LATER, Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamEnd:
    """The websocket close code and reason that end a stream."""

    code: int
    reason: str


JOB_FINISHED = StreamEnd(CLOSE_NORMAL, "job finished")
TOO_SLOW = StreamEnd(CLOSE_TRY_AGAIN_LATER, "client too slow; reconnect with ?after=SEQ")
# Digits of a sequence number a client may send; 18 digits always fit a 64-bit integer.
MAX_SEQ_DIGITS = 18


def parse_after(text: str | None, name: str) -> int | None:
    """Parse a sequence number from the query or a header; ``name`` is how the client sent it."""
    if text is None:
        return None
    # The length bound also keeps int() from failing: it rejects texts of over 4300 digits.
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_SEQ_DIGITS:
        raise bad_request(f"{name}: invalid sequence number {quoted(text)}; use a whole number from an event's seq")
    return int(text)


def job_finished(runtime: Runtime, job_id: str) -> bool:
    assert runtime.store is not None
    job = runtime.store.jobs.get(job_id)
    return job is None or job["state"] in TERMINAL_STATES


class EventStream:
    """The events one client receives, as batches; ``end`` records why the batches stopped.

    ``idle_s`` makes the stream yield an empty batch after that many seconds without events, so a
    transport can send a keep-alive.
    """

    def __init__(self, runtime: Runtime, session_id: str, job_id: str | None, after: int | None,
                 idle_s: float | None = None) -> None:
        self.runtime = runtime
        self.session_id = session_id
        self.job_id = job_id
        self.after = after
        self.idle_s = idle_s
        self.subscriber = Subscriber(session_id, job_id, runtime.settings.ws_send_queue)
        self.end: StreamEnd | None = None

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Yield the first events, then each batch of new ones; unsubscribe when closed."""
        hub = self.runtime.hub
        subscriber = self.subscriber
        hub.subscribe(subscriber)
        try:
            # Nothing may await between subscribing and reading the backlog, or events would be lost or doubled.
            floor = hub.last_seq(self.session_id)
            first = self._first_events()
            finished = self.job_id is not None and job_finished(self.runtime, self.job_id)
            yield first
            if finished:
                self.end = JOB_FINISHED
                return
            while self.end is None:
                batch = await self._next_batch()
                if subscriber.overflowed:
                    self.end = TOO_SLOW
                    return
                batch = [event for event in batch if event["seq"] > floor]
                yield batch
                self.end = self._end_after(batch)
        finally:
            hub.unsubscribe(subscriber)

    async def _next_batch(self) -> list[Event]:
        try:
            async with asyncio.timeout(self.idle_s):
                return await self.subscriber.next_batch()
        except TimeoutError:
            return []

    def _end_after(self, batch: list[Event]) -> StreamEnd | None:
        if self.job_id is not None and any(_is_final(event) for event in batch):
            return JOB_FINISHED
        # A subscriber is closed only after every event it must see was published, so the batch
        # just sent held the last ones.
        if self.subscriber.closed:
            return StreamEnd(self.subscriber.close_code, self.subscriber.close_reason)
        return None

    def _first_events(self) -> list[Event]:
        runtime = self.runtime
        if self.after is not None:
            missed = runtime.hub.events_after(self.session_id, self.after, self.job_id)
            if missed is not None:
                return missed
        assert runtime.store is not None
        session = runtime.store.sessions.get(self.session_id)
        records = runtime.store.session_jobs(session) if session is not None else []
        jobs = [public_job(job) for job in records if self.job_id is None or job["job_id"] == self.job_id]
        return [{"seq": runtime.hub.last_seq(self.session_id), "job_id": self.job_id, "type": "snapshot",
                 "jobs": jobs}]

    def log_dropped(self, transport: str) -> None:
        logger.warning("%s client fell more than %d events behind or stopped reading; disconnected",
                       transport, self.subscriber.limit,
                       extra=log_ids(self.session_id, self.job_id))


def guard_deadline(subscriber: Subscriber) -> float | None:
    """Return when a send that starts now must give up: soon for a closed subscriber, else never."""
    if subscriber.closed:
        return asyncio.get_running_loop().time() + CLOSE_SEND_GRACE_S
    return None


def _is_final(event: Event) -> bool:
    return event["type"] == "state" and event["state"] in TERMINAL_STATES
