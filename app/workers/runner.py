"""Entry points that run inside pool worker processes.

Only module-level functions and plain data cross the process boundary, so every function here
takes ids, paths, dicts and Manager proxies.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import traceback
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from ..layout import list_outputs
from ..logs import configure_logging
from .context import JobCancelled, JobContext
from .registry import builtin_modules, find_kind, load_kinds

# Manager proxies handed to each worker once, at start-up. Unpickling a proxy opens a connection
# to the Manager and registers a reference there, which is too slow to repeat for every job.
_events: queue.Queue[dict[str, Any]] | None = None
_cancel_flags: MutableMapping[str, bool] | None = None
# Shared memory where this worker stores the ``mark`` of each job as it starts it.
_started: Any = None

# A job's error message and traceback are stored and logged; past these sizes they are cut.
MAX_ERROR_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 20000

# Signals a terminal, a console or a service manager may send to a whole process group. The server
# alone decides when its children stop: in a worker, a ``KeyboardInterrupt`` would travel back to the
# server as the job's exception, and the Manager must outlive the server's graceful shutdown.
GROUP_SIGNALS = ("SIGINT", "SIGBREAK")


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the calling thread while it spawns children, on POSIX.

    A spawned child inherits the blocked mask, so a terminal's Ctrl+C during start-up cannot raise
    ``KeyboardInterrupt`` in it before its initializer ignores SIGINT. The server loses nothing:
    the kernel delivers the signal to one of its threads that does not block it.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # Starting the resource tracker unblocks SIGINT in the calling thread afterwards (CPython 3.11,
    # multiprocessing/resource_tracker.py), so it must already run before SIGINT is blocked.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def init_manager() -> None:
    """Manager initializer: ignore group signals and SIGTERM, and exit when the server is gone."""
    _ignore_signals((*GROUP_SIGNALS, "SIGTERM"))
    _watch_parent()


def _ignore_signals(names: tuple[str, ...]) -> None:
    for name in names:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _watch_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="offload-parent-watch",
                         daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    # The server died without stopping this process, for example from SIGKILL.
    os._exit(1)


def init_worker(events: queue.Queue[dict[str, Any]] | None,
                cancel_flags: MutableMapping[str, bool] | None, log_level: str, log_format: str,
                started: Any = None) -> None:
    """Pool initializer: ignore group signals, watch the server, log like it, and keep the Manager proxies.

    Workers keep the default SIGTERM action, because ProcessPoolExecutor stops the remaining workers
    of a broken pool with ``terminate()`` and then joins them.
    """
    global _events, _cancel_flags, _started
    _ignore_signals(GROUP_SIGNALS)
    _watch_parent()
    configure_logging(log_level, log_format)
    _events = events
    _cancel_flags = cancel_flags
    _started = started


def warm_up(extra_modules: list[str]) -> int:
    """Import every job kind module so the first real job pays no import cost; return the pid."""
    for module_name in [*builtin_modules(), *extra_modules]:
        load_kinds(module_name)
    return os.getpid()


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return its outcome: ``{"status": ..., "result" | "error": ...}``.

    ``spec`` contains ``job_id``, ``session_id``, ``mark`` (a number the server never gives twice),
    ``module``, ``kind``, ``params``, ``inputs`` (paths), ``input_names`` (the user's file names) and
    ``output_dir``. The outcome also lists the job's finished ``outputs`` and records whether it
    ``sent_events``. A job that sent events sends
    ``{"type": "end"}`` last, so the server can tell that every progress event of this job has
    arrived before it publishes the final state. A job that sent none skips the marker, which
    would cost a round trip to the Manager for nothing.
    """
    if _started is not None:
        _started.value = spec["mark"]
    output_dir = Path(spec["output_dir"])
    context = JobContext(spec["job_id"], spec["session_id"], output_dir, _events, _cancel_flags,
                         spec.get("input_names"))
    try:
        outcome = _execute(context, spec)
        # Listed here rather than in the server, which would need a thread for the blocking calls.
        outcome["outputs"] = list_outputs(output_dir)
        outcome["sent_events"] = context.events_sent > 0
        return outcome
    finally:
        if context.events_sent:
            context.send_event({"type": "end"})

def _execute(context: JobContext, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        if context.cancelled():
            return {"status": "cancelled"}
        kind = find_kind(spec["module"], spec["kind"])
        params = kind.params.model_validate(spec["params"])
        context.output_dir.mkdir(parents=True, exist_ok=True)
        inputs = [Path(path) for path in spec["inputs"]]
        result = kind.function(context, inputs, params)
        _check_json(result)
    except JobCancelled:
        return {"status": "cancelled"}
    except Exception as error:
        return {
            "status": "failed",
            "error": {"type": type(error).__name__, "message": _shorten(str(error), MAX_ERROR_MESSAGE_CHARS)},
            "traceback": _shorten(traceback.format_exc(), MAX_TRACEBACK_CHARS),
        }
    return {"status": "succeeded", "result": result}


def _check_json(result: Any) -> None:
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"the job returned a result that is not JSON: {error}") from None


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
