"""A bare upload server, the baseline for Offload's upload speed: ``python -m bench.bare_upload PORT``.

It serves one route, ``PUT /upload/NAME``, on Quart and Hypercorn like Offload does, but only reads
the body and counts its bytes: no hashing, no disk, no session. It returns 201 with ``{"size": N}``
and stops on SIGINT, SIGTERM or, on Windows, CTRL_BREAK_EVENT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request

# Windows delivers CTRL_BREAK_EVENT as SIGBREAK.
SHUTDOWN_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK")
                         if hasattr(signal, name))

app = Quart("bare_upload")
app.config["MAX_CONTENT_LENGTH"] = None


@app.put("/upload/<path:name>")
async def upload(name: str) -> tuple[dict[str, int], int]:
    size = 0
    async for chunk in request.body:
        size += len(chunk)
    return {"size": size}, 201


async def serve_app(app: Quart, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:PORT with Hypercorn until a shutdown signal."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in SHUTDOWN_SIGNALS:
        try:
            loop.add_signal_handler(number, shutdown.set)
        except NotImplementedError:
            # Windows event loops have no add_signal_handler, so the handler runs in the main thread
            # between bytecodes and must hand over to the loop.
            signal.signal(number, _thread_safe_handler(loop, shutdown))
    await serve(app, config, shutdown_trigger=shutdown.wait)


def _thread_safe_handler(loop: asyncio.AbstractEventLoop, shutdown: asyncio.Event) -> Any:
    def handle(number: int, frame: Any) -> None:
        loop.call_soon_threadsafe(shutdown.set)

    return handle


def serve_command(app: Quart, module: str, argv: list[str] | None) -> int:
    """Run ``python -m MODULE PORT``: serve ``app`` until a shutdown signal; return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1 or not arguments[0].isdigit() or not 0 < int(arguments[0]) <= 65535:
        print(f"usage: python -m {module} PORT (1 to 65535); got {arguments}", file=sys.stderr)
        return 2
    asyncio.run(serve_app(app, int(arguments[0])))
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve_command(app, "bench.bare_upload", argv)


if __name__ == "__main__":
    sys.exit(main())
