"""Run the app on Hypercorn with one serving process, and shut down on SIGINT, SIGTERM or SIGBREAK."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError
from quart import Quart

from .config import Settings, option_names
from .factory import create_app
from .logs import configure_logging
from .runtime import Runtime

logger = logging.getLogger("offload")

# Seconds Hypercorn waits for open connections after the listeners close. Websockets are closed
# before that, so only uploads and downloads still running use it.
CONNECTION_GRACE_S = 2.0
# Largest websocket message a client may send; a larger one closes the connection with 1009.
WEBSOCKET_MAX_MESSAGE_BYTES = 64 * 1024
# Windows delivers CTRL_BREAK_EVENT as SIGBREAK; CTRL_C_EVENT arrives as SIGINT.
SHUTDOWN_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK")
                         if hasattr(signal, name))


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = CONNECTION_GRACE_S
    # Clients have nothing to send on the event websockets, and the server drops what they send. With
    # the default of 16 MiB per message, a few connections grew the server by hundreds of MiB.
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    config.accesslog = None
    # A Logger instance makes Hypercorn log through the root handler instead of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    # Starting the Manager and every worker under spawn can take a while on a slow machine.
    config.startup_timeout = 120
    config.shutdown_timeout = settings.job_grace_s + 10
    return config


def run_server(settings: Settings) -> int:
    """Serve until a shutdown signal; return the process exit status."""
    configure_logging(settings.log_level, settings.log_format)
    config = hypercorn_config(settings)
    try:
        # Hypercorn binds only after the app started its pool; trying first fails fast and cheaply.
        _check_bind(config)
        asyncio.run(_serve(create_app(settings), settings, config))
    except LifespanFailureError:
        # The app logged why it could not start.
        return 1
    except OSError as error:
        logger.critical("cannot listen on %s:%s: %s; choose another %s, or stop the program using it",
                        settings.host, settings.port, error.strerror or error, option_names("port"))
        return 1
    return 0


def _check_bind(config: Config) -> None:
    sockets = config.create_sockets()
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


async def _serve(app: Quart, settings: Settings, config: Config) -> None:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    finishing: list[asyncio.Task[None]] = []

    def on_signal(number: int) -> None:
        if finishing:
            logger.warning("received %s again; already shutting down", signal.Signals(number).name)
            return
        logger.info("received %s; shutting down within %.0f s", signal.Signals(number).name,
                    settings.shutdown_timeout_s)
        _start_watchdog(settings.shutdown_timeout_s)
        finishing.append(loop.create_task(_finish_then_stop(app, shutdown)))

    for number in SHUTDOWN_SIGNALS:
        try:
            loop.add_signal_handler(number, on_signal, number)
        except NotImplementedError:
            # Windows event loops have no add_signal_handler; the handler then runs between
            # bytecodes of the main thread and must hand over to the loop.
            signal.signal(number, _thread_safe_handler(loop, on_signal))

    try:
        await serve(app, config, shutdown_trigger=shutdown.wait)
    except OSError:
        # Binding failed after start-up, so Hypercorn skips the lifespan shutdown.
        runtime: Runtime | None = app.extensions.get("offload")
        if runtime is not None:
            await runtime.stop()
        raise


async def _finish_then_stop(app: Quart, shutdown: asyncio.Event) -> None:
    """Let jobs end and websockets see their final states, then stop Hypercorn."""
    runtime: Runtime | None = app.extensions.get("offload")
    try:
        if runtime is not None:
            await runtime.finish_jobs()
    finally:
        shutdown.set()


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
