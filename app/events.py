"""Job events: numbering per session, a backlog for reconnects, and fan-out to subscribers.

Workers put events on a Manager queue. One ``EventPump`` thread in the serving process reads that
queue and hands each event to the event loop, where ``EventHub`` gives it the next sequence number
of its session and pushes it to every subscriber of that session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Event = dict[str, Any]

# Seconds a closed subscriber's client gets to read the last events before it is dropped.
CLOSE_SEND_GRACE_S = 1.0


class PublishedEvent(dict[str, Any]):
    """An event numbered by the hub, which keeps its JSON text after the first client needed it."""

    __slots__ = ("_text",)

    def text(self) -> str:
        try:
            return self._text
        except AttributeError:
            self._text: str = json.dumps(self, allow_nan=False)
            return self._text


def event_text(event: Event) -> str:
    """Return an event as JSON text; a published event is encoded once for all its clients."""
    if isinstance(event, PublishedEvent):
        return event.text()
    return json.dumps(event, allow_nan=False)


class SendGuard(Protocol):
    """A deadline around a send, such as ``asyncio.Timeout``; ``None`` means no deadline."""

    def reschedule(self, when: float | None) -> None: ...


class Subscriber:
    """One client's pending events: ordered, with unsent progress of a job merged so the latest wins."""

    def __init__(self, session_id: str, job_id: str | None, limit: int) -> None:
        self.session_id = session_id
        self.job_id = job_id
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self.close_code = 1000
        self.close_reason = ""
        # The deadline around the sender's current send, so a client that stops reading can be
        # dropped at once when it overflows or the server closes it.
        self.send_guard: SendGuard | None = None
        self._pending: dict[int, Event] = {}
        self._pending_progress: dict[str, int] = {}
        self._wakeup = asyncio.Event()

    def push(self, event: Event) -> None:
        if self.job_id is not None and event["job_id"] != self.job_id:
            return

        if event["type"] == "progress":
            previous = self._pending_progress.pop(event["job_id"], None)
            if previous is not None:
                del self._pending[previous]
            self._pending_progress[event["job_id"]] = event["seq"]
        self._pending[event["seq"]] = event
        if len(self._pending) > self.limit and not self.overflowed:
            self.overflowed = True
            self._interrupt_send()
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        """Tell the client's sender to close the connection after the pending events."""
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self._interrupt_send(CLOSE_SEND_GRACE_S)
        self._wakeup.set()

    def _interrupt_send(self, delay: float = 0.0) -> None:
        if self.send_guard is not None:
            self.send_guard.reschedule(asyncio.get_running_loop().time() + delay)

    async def next_batch(self) -> list[Event]:
        """Wait for pending events and take them all, oldest first; return early once closed."""
        while not self._pending and not self.closed:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = list(self._pending.values())
        self._pending.clear()
        self._pending_progress.clear()
        return batch


class EventHub:
    """Per-session event numbering, backlog and subscribers; used only from the event loop thread."""

    def __init__(self, backlog: int) -> None:
        self._backlog = backlog
        self._logs: dict[str, deque[Event]] = {}
        self._last_seq: dict[str, int] = {}
        self._subscribers: dict[str, set[Subscriber]] = {}

    def publish(self, session_id: str, event: Event) -> Event:
        seq = self._last_seq.get(session_id, 0) + 1
        self._last_seq[session_id] = seq
        event = PublishedEvent(seq=seq, **event)
        log = self._logs.get(session_id)
        if log is None:
            log = self._logs[session_id] = deque(maxlen=self._backlog)
        log.append(event)
        for subscriber in self._subscribers.get(session_id, ()):
            subscriber.push(event)
        return event

    def last_seq(self, session_id: str) -> int:
        return self._last_seq.get(session_id, 0)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(subscriber.session_id, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.session_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[subscriber.session_id]

    def close_all(self, code: int, reason: str) -> None:
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.close(code, reason)

    def close_session(self, session_id: str, code: int, reason: str) -> None:
        for subscriber in self._subscribers.get(session_id, ()):
            subscriber.close(code, reason)

    def events_after(self, session_id: str, after: int, job_id: str | None) -> list[Event] | None:
        """Return the events newer than ``after``, or None if the backlog no longer reaches back that far."""
        log = self._logs.get(session_id, deque())
        if after == self.last_seq(session_id):
            return []
        # A number from before a restart: the server counts from 1 again, so send a snapshot.
        if after > self.last_seq(session_id):
            return None
        if not log or log[0]["seq"] > after + 1:
            return None
        return [event for event in log
                if event["seq"] > after and (job_id is None or event["job_id"] == job_id)]

    def drop_session(self, session_id: str) -> None:
        self._logs.pop(session_id, None)
        self._last_seq.pop(session_id, None)

    @property
    def subscriber_count(self) -> int:
        return sum(len(subscribers) for subscribers in self._subscribers.values())


class EventPump(threading.Thread):
    """Reads worker events from the Manager queue and hands them to the event loop."""

    def __init__(self, events: queue.Queue[Event | None], loop: asyncio.AbstractEventLoop,
                 handle: Callable[[Event], None], on_lost: Callable[[], None]) -> None:
        super().__init__(name="offload-event-pump", daemon=True)
        self._events = events
        self._loop = loop
        self._handle = handle
        self._on_lost = on_lost

    def run(self) -> None:
        while True:
            try:
                event = self._events.get()
            except (OSError, EOFError) as error:
                logger.error("manager process lost (%s: %s); job progress is no longer received",
                             type(error).__name__, error)
                self._call(self._on_lost)
                return
            if event is None:
                return
            self._call(self._handle, event)

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:
            # The loop is closed: the server is exiting.
            pass
