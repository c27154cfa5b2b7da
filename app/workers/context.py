"""The ``JobContext`` a job receives in its worker process: progress, cancellation, logs, output directory."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, BinaryIO

from ..names import MAX_OUTPUT_NAME_BYTES, disk_name

from ..logs import log_ids

logger = logging.getLogger(__name__)

# A job may call progress() on every chunk. At most one event per interval is sent, plus one per
# tenth of the total, so a short job still shows steps and a long one sends a steady trickle.
PROGRESS_INTERVAL_S = 0.05
PROGRESS_STEP = 0.1
# Reading the cancel flag is a Manager round trip (about 30 µs), so it is read at most this often.
CANCEL_POLL_INTERVAL_S = 0.05


# The server lists only finished outputs: it skips names with this suffix.
PARTIAL_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` under a ".part" name, and rename it when the block succeeds or delete it when it raises.

    So a job that fails, is cancelled or is stopped at a limit leaves no partial output behind.
    """
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with partial.open("wb") as file:
            yield file
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled`` once the job was asked to stop."""


class JobContext:
    """The interface of a running job: progress reports, the cancel flag, logs and its output directory.

    ``events`` is a Manager queue proxy and ``cancel_flags`` a Manager dict proxy; both pickle under spawn.
    ``input_names`` are the names the user gave the input files, in the order of the input paths; the
    paths themselves are named by file ids.
    """

    def __init__(
        self,
        job_id: str,
        session_id: str,
        output_dir: Path,
        events: queue.Queue[dict[str, Any]] | None,
        cancel_flags: MutableMapping[str, bool] | None,
        input_names: list[str] | None = None,
    ) -> None:
        self.job_id = job_id
        self.session_id = session_id
        self.output_dir = output_dir
        self.input_names = list(input_names or [])
        self._events = events
        self._cancel_flags = cancel_flags
        self._last_sent_at = float("-inf")
        self._last_sent: tuple[int, int | None, str, str] | None = None
        self._cancel_checked_at = float("-inf")
        self._cancelled = False
        # Events this job put on the queue; the runner sends the end marker only after some.
        self.events_sent = 0

    def output_path(self, name: str) -> Path:
        """Return the path of an output file called ``name``, made a valid file name on every platform."""
        return self.output_dir / disk_name(name, MAX_OUTPUT_NAME_BYTES)

    def progress(self, done: int, total: int | None = None, unit: str = "bytes", message: str = "") -> None:
        """Report progress; cheap to call on every chunk because reports are throttled."""
        current = (done, total, unit, message)
        if current == self._last_sent:
            return

        now = time.monotonic()
        finished = total is not None and done >= total
        stepped = False
        if total and self._last_sent is not None:
            stepped = (done - self._last_sent[0]) / total >= PROGRESS_STEP
        if not (finished or stepped or now - self._last_sent_at >= PROGRESS_INTERVAL_S):
            return

        self._last_sent_at = now
        self._last_sent = current
        self._send({"type": "progress",
                    "progress": {"done": done, "total": total, "unit": unit, "message": message}})

    def cancelled(self) -> bool:
        """Return whether the job was asked to stop, reading the shared flag at most every 50 ms."""
        if self._cancelled or self._cancel_flags is None:
            return self._cancelled

        now = time.monotonic()
        if now - self._cancel_checked_at >= CANCEL_POLL_INTERVAL_S:
            self._cancel_checked_at = now
            try:
                self._cancelled = bool(self._cancel_flags.get(self.job_id, False))
            except (OSError, EOFError):
                # The Manager is gone, so no cancel request can reach this job any more.
                self._cancel_flags = None
        return self._cancelled

    def check_cancelled(self) -> None:
        """Raise ``JobCancelled`` if the job was asked to stop; call it between chunks."""
        if self.cancelled():
            raise JobCancelled(self.job_id)

    def log(self, message: str, level: str = "info") -> None:
        """Send a log line to the job's event stream and to the worker's own log."""
        logger.log(logging.getLevelName(level.upper()), "%s", message,
                   extra=log_ids(self.session_id, self.job_id))
        self._send({"type": "log", "level": level, "message": message})

    def send_event(self, event: dict[str, Any]) -> None:
        """Send a raw event; used by the runner for lifecycle markers."""
        self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        if self._events is None:
            return

        event["job_id"] = self.job_id
        event["session_id"] = self.session_id
        event["sent_at"] = time.time()
        try:
            self._events.put(event)
            self.events_sent += 1
        except (OSError, EOFError):
            # Progress is best effort: without the Manager the job still runs to its result.
            self._events = None
