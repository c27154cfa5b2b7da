"""``BatchWriter``: one thread that applies queued writes in batches, for work that must leave the loop."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

logger = logging.getLogger(__name__)

_STOP = object()


class _Barrier:
    def __init__(self) -> None:
        self.future: Future[None] = Future()


class BatchWriter:
    """Queue items from any thread; one daemon thread hands everything queued so far to ``apply``.

    ``apply`` receives the items in the order they were queued, so it can let a later write to the
    same key replace an earlier one. It runs only in the writer thread. With ``delay_s`` the thread
    waits that long after the first item of a batch, so that a burst becomes one batch and wakes the
    thread once.
    """

    def __init__(self, name: str, apply: Callable[[list[Any]], None], delay_s: float = 0.0) -> None:
        self._apply = apply
        self._delay_s = delay_s
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Any) -> None:
        self._items.put(item)

    def barrier(self) -> Future[None]:
        """Return a future that is done once everything queued before this call has been applied."""
        barrier = _Barrier()
        if not self._thread.is_alive():
            barrier.future.set_result(None)
        else:
            self._items.put(barrier)
        return barrier.future

    def stop(self, timeout: float) -> bool:
        """Apply what is queued, then end the thread; return whether it ended within ``timeout`` s."""
        if not self._thread.is_alive():
            return True
        self._items.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = [self._items.get()]
            if self._delay_s > 0 and batch[0] is not _STOP:
                time.sleep(self._delay_s)
            while True:
                try:
                    batch.append(self._items.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            barriers = [item for item in batch if isinstance(item, _Barrier)]
            try:
                self._apply([item for item in batch if item is not _STOP and not isinstance(item, _Barrier)])
            except Exception:
                # A bad item must not end the thread, or every later write would be lost silently.
                logger.exception("%s failed to apply %d queued writes", self._thread.name, len(batch))
            for barrier in barriers:
                # A waiter that gave up has cancelled its barrier, and that must not end the thread.
                with contextlib.suppress(InvalidStateError):
                    barrier.future.set_result(None)
            if stop:
                return
