"""The layout of the data directory. Every path component below it is a generated id."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DataLayout:
    """``ROOT/sessions/SID/files/FID`` for uploads and ``ROOT/sessions/SID/jobs/JID/`` for job outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._sessions_dir = self.root / "sessions"

    @property
    def lock_path(self) -> Path:
        return self.root / "offload.lock"

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.sqlite3"

    @property
    def sessions_dir(self) -> Path:
        return self._sessions_dir

    # One joinpath call per path: each "/" builds a Path, and these run for every job.

    def session_dir(self, session_id: str) -> Path:
        return self._sessions_dir.joinpath(session_id)

    def files_dir(self, session_id: str) -> Path:
        return self._sessions_dir.joinpath(session_id, "files")

    def file_path(self, session_id: str, file_id: str) -> Path:
        return self._sessions_dir.joinpath(session_id, "files", file_id)

    def job_dir(self, session_id: str, job_id: str) -> Path:
        return self._sessions_dir.joinpath(session_id, "jobs", job_id)


def list_outputs(directory: Path) -> list[dict[str, Any]]:
    """Describe the finished output files of a job; blocking, so call it off the event loop."""
    if not directory.is_dir():
        return []
    return [{"name": path.name, "size": path.stat().st_size}
            for path in sorted(directory.iterdir())
            if path.is_file() and not path.name.endswith(".part")]
