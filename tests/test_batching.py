"""BatchWriter: ordered batches, gathering with a delay, and barriers whose waiter gave up."""

from __future__ import annotations

import threading
from typing import Any

from app.batching import BatchWriter


def test_cancelled_barrier_keeps_thread() -> None:
    gate = threading.Event()
    applied: list[Any] = []

    def apply(batch: list[Any]) -> None:
        gate.wait(5)
        applied.extend(batch)

    writer = BatchWriter("test-writer", apply)
    writer.start()
    writer.put("first")
    # A waiter that stops waiting, as a request cancelled during shutdown does, cancels its future.
    abandoned = writer.barrier()
    assert abandoned.cancel()
    gate.set()

    writer.put("second")
    writer.barrier().result(timeout=5)
    assert applied == ["first", "second"]
    assert writer.stop(5)


def test_delay_gathers_burst_into_one_batch() -> None:
    batches: list[list[Any]] = []
    writer = BatchWriter("test-writer", batches.append, delay_s=0.2)
    writer.start()
    for index in range(50):
        writer.put(index)
    writer.barrier().result(timeout=5)
    assert writer.stop(5)

    # Stopping hands over one more, empty, batch.
    filled = [batch for batch in batches if batch]
    assert [item for batch in filled for item in batch] == list(range(50))
    assert len(filled) == 1
