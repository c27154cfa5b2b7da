"""Run the app's start-up in a daemonic spawned process, as Hypercorn's command line does.

Usage: ``python -m tests.daemonic DATA_DIR``; prints the child's exit code.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from pathlib import Path


def start_app(data_dir: str) -> None:
    from app.config import Settings
    from app.factory import create_app

    app = create_app(Settings(data_dir=Path(data_dir), workers=1))
    asyncio.run(app.startup())


if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=start_app, args=(sys.argv[1],), daemon=True)
    process.start()
    process.join(60)
    print("exitcode", process.exitcode)
