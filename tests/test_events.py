"""EventHub numbering and backlog, and Subscriber merging for slow clients."""

from __future__ import annotations

import asyncio
import json

from app.events import EventHub, Subscriber, event_text


def progress(job_id: str, done: int) -> dict[str, object]:
    return {"job_id": job_id, "type": "progress", "progress": {"done": done}}


def state(job_id: str, value: str) -> dict[str, object]:
    return {"job_id": job_id, "type": "state", "state": value}


async def test_unsent_progress_is_merged_latest_wins() -> None:
    hub = EventHub(backlog=100)
    subscriber = Subscriber("s", None, limit=100)
    hub.subscribe(subscriber)
    hub.publish("s", state("a", "running"))
    for done in range(1, 6):
        hub.publish("s", progress("a", done))
        hub.publish("s", progress("b", done * 10))
    hub.publish("s", state("a", "succeeded"))

    batch = await subscriber.next_batch()
    assert [(event["type"], event["job_id"]) for event in batch] == [
        ("state", "a"), ("progress", "a"), ("progress", "b"), ("state", "a")]
    assert batch[1]["progress"] == {"done": 5}
    assert batch[2]["progress"] == {"done": 50}
    seqs = [event["seq"] for event in batch]
    assert seqs == sorted(seqs)


async def test_published_event_encoded_once() -> None:
    hub = EventHub(backlog=100)
    first = Subscriber("s", None, limit=100)
    second = Subscriber("s", None, limit=100)
    hub.subscribe(first)
    hub.subscribe(second)
    hub.publish("s", state("a", "running"))

    [seen_first] = await first.next_batch()
    [seen_second] = await second.next_batch()
    text = event_text(seen_first)
    assert json.loads(text) == {"seq": 1, "job_id": "a", "type": "state", "state": "running"}
    # Both clients send the very same string, encoded once.
    assert event_text(seen_second) is text
    snapshot = {"seq": 1, "type": "snapshot", "jobs": []}
    assert event_text(snapshot) == json.dumps(snapshot)


async def test_job_subscriber_sees_only_its_job() -> None:
    hub = EventHub(backlog=100)
    subscriber = Subscriber("s", "a", limit=100)
    hub.subscribe(subscriber)
    hub.publish("s", state("b", "running"))
    hub.publish("s", state("a", "running"))
    batch = await subscriber.next_batch()
    assert [event["job_id"] for event in batch] == ["a"]


def test_overflow_marks_slow_subscriber() -> None:
    hub = EventHub(backlog=100)
    subscriber = Subscriber("s", None, limit=3)
    hub.subscribe(subscriber)
    for index in range(3):
        hub.publish("s", state(f"job{index}", "running"))
    assert not subscriber.overflowed
    hub.publish("s", state("job3", "running"))
    assert subscriber.overflowed


def test_events_after_and_backlog_gap() -> None:
    hub = EventHub(backlog=5)
    for index in range(8):
        hub.publish("s", state(f"job{index}", "running"))
    assert hub.last_seq("s") == 8
    assert [event["seq"] for event in hub.events_after("s", 5, None)] == [6, 7, 8]
    assert hub.events_after("s", 8, None) == []
    # Events 1 to 3 fell out of the backlog, so a client that saw only seq 1 needs a snapshot.
    assert hub.events_after("s", 1, None) is None
    assert hub.events_after("s", 3, None) is not None


async def test_close_wakes_subscriber() -> None:
    hub = EventHub(backlog=5)
    subscriber = Subscriber("s", None, limit=10)
    hub.subscribe(subscriber)
    waiter = asyncio.create_task(subscriber.next_batch())
    await asyncio.sleep(0)
    hub.close_all(1001, "bye")
    assert await asyncio.wait_for(waiter, 1) == []
    assert subscriber.closed
    hub.unsubscribe(subscriber)
    assert hub.subscriber_count == 0
