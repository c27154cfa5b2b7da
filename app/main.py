"""Entry point: ``python -m app.main`` serves, and ``hypercorn app.main:app`` finds ``app`` here.

Spawned workers and the Manager re-import this module as ``__mp_main__``. They need neither the
app nor Quart, Hypercorn and the routes it imports, which take about 0.2 s to import, so they
skip building it.
"""

from __future__ import annotations

import sys
from typing import Any

app: Any = None
if __name__ != "__mp_main__":
    from .factory import create_app

    app = create_app()


def main(argv: list[str] | None = None) -> int:
    from .cli import serve_command

    return serve_command(argv)


if __name__ == "__main__":
    sys.exit(main())
