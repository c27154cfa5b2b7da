"""Entry point: ``python -m app.main`` serves, and ``hypercorn app.main:app`` finds ``app`` here.

Spawned workers re-import this module as ``__mp_main__``; building the app object starts nothing,
so that import is safe.
"""

from __future__ import annotations

import sys

from .factory import create_app

app = create_app()


def main(argv: list[str] | None = None) -> int:
    from .cli import serve_command

    return serve_command(argv)


if __name__ == "__main__":
    sys.exit(main())
