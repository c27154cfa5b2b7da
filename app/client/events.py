"""The session's event stream, followed over a websocket that reconnects with ``?after=SEQ``."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .models import EXIT_CONNECTION, ClientError, JobRun, Record, RunView

# Seconds the client keeps reconnecting to a dropped event stream, long enough for a server restart.
# The delay between attempts doubles from the first value up to the second.
RECONNECT_WINDOW_S = 60.0
RECONNECT_DELAYS_S = (0.5, 5.0)


class JobTracker:
    """The runs' latest job records, kept up to date from the session's event stream."""

    def __init__(self, runs: list[JobRun], view: RunView) -> None:
        self.runs = runs
        self.view = view
        self.finished = asyncio.Event()
        self._by_id: dict[str, JobRun] = {}
        # Records and log lines of jobs whose events arrived before the request that created them returned.
        self._early: dict[str, Record] = {}
        self._early_logs: dict[str, list[tuple[str, str]]] = {}

    def add(self, run: JobRun, record: Record) -> None:
        run.job_id = record["job_id"]
        # An event that arrived first is at least as new as the response.
        run.record = self._early.pop(run.job_id, record)
        self._by_id[run.job_id] = run
        self.view.job_added(run)
        for level, message in self._early_logs.pop(run.job_id, []):
            self.view.job_log(run, level, message)
        self._check_finished()

    def handle(self, event: Record) -> None:
        kind = event["type"]
        if kind == "snapshot":
            for record in event["jobs"]:
                self._update(record)
        elif kind == "state":
            self._update(event["job"])
        elif kind == "progress":
            self._update_progress(event["job_id"], event["progress"])
        elif kind == "log":
            self._log(event["job_id"], event["level"], event["message"])

    def _update(self, record: Record) -> None:
        run = self._by_id.get(record["job_id"])
        if run is None:
            self._early[record["job_id"]] = record
            return
        run.record = record
        self.view.job_updated(run)
        self._check_finished()

    def _log(self, job_id: str, level: str, message: str) -> None:
        run = self._by_id.get(job_id)
        if run is None:
            self._early_logs.setdefault(job_id, []).append((level, message))
        else:
            self.view.job_log(run, level, message)

    def _update_progress(self, job_id: str, progress: Record) -> None:
        run = self._by_id.get(job_id)
        if run is None or run.record is None or run.finished:
            return
        run.record = {**run.record, "progress": progress}
        self.view.job_updated(run)

    def _check_finished(self) -> None:
        if len(self._by_id) == len(self.runs) and all(run.finished for run in self.runs):
            self.finished.set()


def websocket_url(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url.removeprefix("https://")
    return "ws://" + base_url.removeprefix("http://")


async def follow_events(url: str, tracker: JobTracker, trust_env: bool) -> None:
    """Feed the session's events to ``tracker``, reconnecting with ``?after=SEQ`` when the stream drops."""
    loop = asyncio.get_running_loop()
    after: int | None = None
    failures = 0
    dropped_at = 0.0
    while True:
        target = url if after is None else f"{url}&after={after}"
        try:
            async with connect(target, max_size=None, proxy=True if trust_env else None) as stream:
                async for message in stream:
                    event = json.loads(message)
                    after = event["seq"]
                    failures = 0
                    tracker.handle(event)
            if stream.close_reason == "session ended":
                raise ClientError("the server ended the session before its jobs finished", EXIT_CONNECTION)
            problem = f"closed with code {stream.close_code}"
        except InvalidStatus as error:
            if error.response.status_code in (401, 404):
                raise ClientError("the session is gone from the server: it expired or the server lost it",
                                  EXIT_CONNECTION) from None
            problem = f"was refused with HTTP {error.response.status_code}"
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as error:
            problem = f"failed: {str(error) or type(error).__name__}"

        if failures == 0:
            dropped_at = loop.time()
        failures += 1
        if loop.time() - dropped_at > RECONNECT_WINDOW_S:
            raise ClientError(f"the event stream {problem}, and reconnecting failed for {RECONNECT_WINDOW_S:.0f} s; "
                              "the jobs may still run on the server", EXIT_CONNECTION)
        delay = min(RECONNECT_DELAYS_S[0] * 2 ** (failures - 1), RECONNECT_DELAYS_S[1])
        tracker.view.status(f"the event stream {problem}; reconnecting in {delay:g} s")
        await asyncio.sleep(delay)
