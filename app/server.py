"""Run the app on Hypercorn with one serving process, and shut down on SIGINT, SIGTERM or SIGBREAK."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError
from quart import Quart

from .config import Settings
from .factory import create_app
from .runtime import Runtime

logger = logging.getLogger("offload")

# Seconds Hypercorn waits for open connections after the listeners close. Websockets are told to
# close before that, so only uploads and downloads still running use it.
CONNECTION_GRACE_S = 2.0
# Windows delivers CTRL_BREAK_EVENT as SIGBREAK; CTRL_C_EVENT arrives as SIGINT.
SHUTDOWN_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK")
                         if hasattr(signal, name))


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = CONNECTION_GRACE_S
    config.accesslog = None
    # A Logger instance makes Hypercorn log through the root handler instead of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    # Starting the Manager and every worker under spawn can take a while on a slow machine.
    config.startup_timeout = 120
    config.shutdown_timeout = settings.job_grace_s + 10
    return config


def run_server(settings: Settings) -> int:
    """Serve until a shutdown signal; return the process exit status."""
    configure_logging(settings.log_level)
    app = create_app(settings)
    try:
        asyncio.run(_serve(app, settings))
    except LifespanFailureError as error:
        logger.critical("startup failed: %s", error)
        return 1
    except OSError as error:
        logger.critical("cannot listen on %s:%s: %s", settings.host, settings.port, error)
        return 1
    return 0


async def _serve(app: Quart, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()

    def on_signal(number: int) -> None:
        if shutdown.is_set():
            logger.warning("received %s again; already shutting down", signal.Signals(number).name)
            return
        logger.info("received %s; shutting down within %.0f s", signal.Signals(number).name,
                    settings.shutdown_timeout_s)
        runtime: Runtime | None = app.extensions.get("offload")
        if runtime is not None:
            runtime.begin_shutdown()
        _start_watchdog(settings.shutdown_timeout_s)
        shutdown.set()

    for number in SHUTDOWN_SIGNALS:
        try:
            loop.add_signal_handler(number, on_signal, number)
        except NotImplementedError:
            # Windows event loops have no add_signal_handler; the handler then runs between
            # bytecodes of the main thread and must hand over to the loop.
            signal.signal(number, _thread_safe_handler(loop, on_signal))

    await serve(app, hypercorn_config(settings), shutdown_trigger=shutdown.wait)


def _thread_safe_handler(loop: asyncio.AbstractEventLoop, handler: Any) -> Any:
    def handle(number: int, frame: Any) -> None:
        loop.call_soon_threadsafe(handler, number)

    return handle


def _start_watchdog(timeout: float) -> None:
    """Force the exit if the graceful shutdown takes longer than ``timeout`` seconds."""
    def watch() -> None:
        threading.Event().wait(timeout)
        logger.critical("shutdown took longer than %.0f s; killing child processes and exiting", timeout)
        for child in multiprocessing.active_children():
            child.kill()
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="offload-shutdown-watchdog", daemon=True).start()
