"""``Journal``: a SQLite record of sessions, files and job states, so a restart loses nothing.

The database lives in the data directory in WAL mode. The event loop never touches it: writes go
to a queue that one thread applies in batched transactions, and the whole journal is read once, in
a thread, at start-up. A write that the thread has committed survives the server being killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batching import BatchWriter

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    token_digest BLOB NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    idle_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_session ON files (session_id);
CREATE INDEX IF NOT EXISTS jobs_by_session ON jobs (session_id);
"""

@dataclass
class JournalContents:
    """Everything the journal held at start-up, oldest first."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)


class Journal:
    """Sessions, files and job records in ``DATA_DIR/journal.sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._writer = BatchWriter("offload-journal", self._commit)
        self._failures = 0

    def open(self) -> JournalContents:
        """Open or create the database and read it; blocking, so call it off the event loop."""
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses no committed transaction when the process dies, only on power loss.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(SCHEMA)
        self._connection = connection

        contents = JournalContents()
        for row in connection.execute("SELECT session_id, token_digest, created_at, last_seen, idle_s "
                                      "FROM sessions ORDER BY created_at"):
            contents.sessions.append(dict(zip(("session_id", "token_digest", "created_at", "last_seen",
                                               "idle_s"), row)))
        contents.files = [json.loads(row[0]) for row in connection.execute("SELECT record FROM files ORDER BY rowid")]
        contents.jobs = [json.loads(row[0]) for row in connection.execute("SELECT record FROM jobs ORDER BY rowid")]
        return contents

    def start(self) -> None:
        self._writer.start()

    async def committed(self) -> None:
        """Wait until every write queued so far is committed; call it before replying that a write succeeded."""
        await asyncio.wrap_future(self._writer.barrier())

    def stop(self, timeout: float) -> None:
        """Commit the queued writes and close the database; blocks, so call it off the event loop."""
        if self._writer.stop(timeout) and self._connection is not None:
            self._connection.close()
            self._connection = None

    # Writes, queued from the event loop

    def put_session(self, row: dict[str, Any]) -> None:
        self._writer.put(("session", row["session_id"], row))

    def delete_session(self, session_id: str) -> None:
        self._writer.put(("delete_session", session_id, None))

    def put_file(self, record: dict[str, Any]) -> None:
        self._writer.put(("file", record["file_id"], record))

    def delete_file(self, file_id: str) -> None:
        self._writer.put(("delete_file", file_id, None))

    def put_job(self, record: dict[str, Any]) -> None:
        self._writer.put(("job", record["job_id"], record))

    # Writer thread

    def _commit(self, batch: list[tuple[str, str, Any]]) -> None:
        if not batch or self._connection is None:
            return
        # Within a batch only the last write to a record counts; deletions keep their order.
        latest: dict[tuple[str, str], Any] = {}
        for kind, key, value in batch:
            latest.pop((kind, key), None)
            latest[(kind, key)] = value
        try:
            with self._connection:
                self._connection.execute("BEGIN")
                for (kind, key), value in latest.items():
                    self._apply(kind, key, value)
        except (sqlite3.Error, TypeError, ValueError) as error:
            self._failures += 1
            # Log the first failure and then every hundredth, so a full disk does not flood the log.
            if self._failures == 1 or self._failures % 100 == 0:
                logger.error("journal write failed (%d failures so far): %s", self._failures, error)

    def _apply(self, kind: str, key: str, value: Any) -> None:
        assert self._connection is not None
        execute = self._connection.execute
        if kind == "session":
            execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)",
                    (key, value["token_digest"], value["created_at"], value["last_seen"], value["idle_s"]))
        elif kind == "delete_session":
            execute("DELETE FROM sessions WHERE session_id = ?", (key,))
            execute("DELETE FROM files WHERE session_id = ?", (key,))
            execute("DELETE FROM jobs WHERE session_id = ?", (key,))
        elif kind == "file":
            execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (key, value["session_id"], json.dumps(value)))
        elif kind == "delete_file":
            execute("DELETE FROM files WHERE file_id = ?", (key,))
        elif kind == "job":
            execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", (key, value["session_id"], json.dumps(value)))
