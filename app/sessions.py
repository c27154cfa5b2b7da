"""``SessionStore``: sessions, files and jobs, kept in Manager dicts that workers can read.

The serving process is the only writer. It keeps a local copy of every record and reads from it,
because a Manager round trip costs about 30 µs and blocks the calling thread. Writes are queued to
one thread that applies them to the Manager dicts in order, so the event loop never waits on the
Manager. A value read from a Manager dict is a copy, so records are always replaced whole.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.managers import SyncManager
from typing import Any

from .batching import BatchWriter
from .journal import Journal

logger = logging.getLogger(__name__)

# Seconds between journal writes of a session's last use; expiry is that much less exact after a restart.
JOURNAL_TOUCH_INTERVAL_S = 30.0

# Seconds the writer thread gathers writes before it applies them to the Manager. Nothing waits on
# these copies except a running job's cancellation flag, which a job polls between chunks anyway, and
# gathering turns a burst of small jobs' state changes into one round trip per dict.
STORE_WRITE_DELAY_S = 0.005

# Sentinel for a key removed from a Manager dict.
_DELETE = object()

Record = dict[str, Any]


# Ids made ahead from one read of the OS random source, because each read is a system call and the
# event loop makes an id for every job and every file. ``deque.popleft`` and ``extend``
# are atomic in CPython, so threads need no lock, and a refill by two threads at once only makes
# more ids. Only the serving process makes ids, so a forked worker's copy of the deque goes unused.
_ids: deque[str] = deque()
IDS_PER_READ = 256
ID_BYTES = 16


def new_id() -> str:
    """Return an unguessable id: 128 random bits, URL-safe."""
    while True:
        try:
            return _ids.popleft()
        except IndexError:
            _ids.extend(_make_ids())


def _make_ids() -> list[str]:
    random = secrets.token_bytes(IDS_PER_READ * ID_BYTES)
    encoded = [base64.urlsafe_b64encode(random[start:start + ID_BYTES])
               for start in range(0, len(random), ID_BYTES)]
    return [text.rstrip(b"=").decode("ascii") for text in encoded]


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass
class Session:
    session_id: str
    token_digest: bytes
    created_at: float
    last_seen: float
    idle_s: float
    file_ids: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    journaled_seen: float = 0.0
    stored_bytes: int = 0
    # Uploads whose bodies are still arriving, counted against the session's limits.
    uploading_files: int = 0
    uploading_bytes: int = 0

    @property
    def expires_at(self) -> float:
        return self.last_seen + self.idle_s

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token_digest, _token_digest(token))

    def public(self) -> Record:
        return {"session_id": self.session_id, "created_at": self.created_at, "expires_at": self.expires_at}

    def journal_row(self) -> Record:
        return {"session_id": self.session_id, "token_digest": self.token_digest, "created_at": self.created_at,
                "last_seen": self.last_seen, "idle_s": self.idle_s}


class SessionStore:
    """Sessions, files and jobs of the server, mirrored into Manager dicts for worker processes."""

    def __init__(self, manager: SyncManager, journal: Journal) -> None:
        self.journal = journal
        self.sessions: dict[str, Session] = {}
        self.files: dict[str, Record] = {}
        self.jobs: dict[str, Record] = {}
        self.shared_sessions = manager.dict()
        self.shared_files = manager.dict()
        self.shared_jobs = manager.dict()
        # Job id -> True once the job was asked to stop; workers poll it through JobContext.
        self.cancel_flags = manager.dict()
        self._writer = BatchWriter("offload-store-writer", self._apply, STORE_WRITE_DELAY_S)
        self.manager_lost = False

    def start(self) -> None:
        self._writer.start()

    def stop(self, timeout: float) -> None:
        """Apply the queued writes, then stop the writer thread; blocks, so call it off the event loop."""
        self._writer.stop(timeout)

    # Sessions

    def create_session(self, idle_s: float) -> tuple[Session, str]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(new_id(), _token_digest(token), now, now, idle_s)
        self.sessions[session.session_id] = session
        self._queue_write(self.shared_sessions, session.session_id, session.public())
        self._journal_session(session)
        return session, token

    def touch(self, session: Session) -> None:
        session.last_seen = time.time()
        if session.last_seen - session.journaled_seen >= JOURNAL_TOUCH_INTERVAL_S:
            self._journal_session(session)

    def _journal_session(self, session: Session) -> None:
        session.journaled_seen = session.last_seen
        self.journal.put_session(session.journal_row())

    def restore(self, sessions: list[Record], files: list[Record], jobs: list[Record]) -> None:
        """Load what the journal kept from an earlier run; records must belong to known sessions."""
        for row in sessions:
            session = Session(row["session_id"], row["token_digest"], row["created_at"], row["last_seen"],
                              row["idle_s"], journaled_seen=row["last_seen"])
            self.sessions[session.session_id] = session
            self._queue_write(self.shared_sessions, session.session_id, session.public())
        for stored in files:
            record = {key: value for key, value in stored.items() if key != "session_id"}
            self.files[record["file_id"]] = record
            session = self.sessions[stored["session_id"]]
            session.file_ids.append(record["file_id"])
            session.stored_bytes += record["size"]
            self._queue_write(self.shared_files, record["file_id"], record)
        for record in jobs:
            self.put_job(record, durable=False)

    def remove_session(self, session_id: str) -> Session | None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        for file_id in session.file_ids:
            self.files.pop(file_id, None)
            self._queue_write(self.shared_files, file_id, _DELETE)
        for job_id in session.job_ids:
            self.jobs.pop(job_id, None)
            # A running job's cancel flag stays until its run ends, so that it can still stop by itself.
            self._queue_write(self.shared_jobs, job_id, _DELETE)
        self._queue_write(self.shared_sessions, session_id, _DELETE)
        self.journal.delete_session(session_id)
        return session

    def expired_sessions(self, now: float) -> list[str]:
        return [sid for sid, session in self.sessions.items() if session.expires_at <= now]

    # Files

    def add_file(self, session: Session, record: Record) -> None:
        self.files[record["file_id"]] = record
        session.file_ids.append(record["file_id"])
        session.stored_bytes += record["size"]
        self._queue_write(self.shared_files, record["file_id"], record)
        self.journal.put_file({**record, "session_id": session.session_id})

    def remove_file(self, session: Session, file_id: str) -> None:
        record = self.files.pop(file_id, None)
        session.file_ids.remove(file_id)
        if record is not None:
            session.stored_bytes -= record["size"]
        self._queue_write(self.shared_files, file_id, _DELETE)
        self.journal.delete_file(file_id)

    def session_files(self, session: Session) -> Iterator[Record]:
        return (self.files[file_id] for file_id in session.file_ids)

    # Jobs

    def put_job(self, record: Record, durable: bool = True) -> None:
        """Store a new or changed job record; the caller passes a whole new dict, never a mutated one.

        ``durable`` writes it to the journal too; progress updates skip that, state changes do not.
        """
        job_id = record["job_id"]
        if job_id not in self.jobs:
            session = self.sessions.get(record["session_id"])
            if session is None:
                # The session was deleted; its jobs are forgotten with it.
                return
            session.job_ids.append(job_id)
        self.jobs[job_id] = record
        self._queue_write(self.shared_jobs, job_id, record)
        if durable:
            self.journal.put_job(record)

    def request_cancel(self, job_id: str) -> None:
        self._queue_write(self.cancel_flags, job_id, True)

    def clear_cancel(self, job_id: str) -> None:
        self._queue_write(self.cancel_flags, job_id, _DELETE)

    def session_jobs(self, session: Session) -> Iterator[Record]:
        return (self.jobs[job_id] for job_id in session.job_ids)

    # Writer thread

    def _queue_write(self, target: Any, key: str, value: Any) -> None:
        self._writer.put((target, key, value))

    def _apply(self, batch: list[tuple[Any, str, Any]]) -> None:
        if self.manager_lost or not batch:
            return

        # The last write to a key wins, so a burst of updates costs one round trip per dict.
        latest: dict[int, tuple[Any, dict[str, Any]]] = {}
        for target, key, value in batch:
            latest.setdefault(id(target), (target, {}))[1][key] = value
        try:
            for target, changes in latest.values():
                updates = {key: value for key, value in changes.items() if value is not _DELETE}
                if updates:
                    target.update(updates)
                for key, value in changes.items():
                    if value is _DELETE:
                        target.pop(key, None)
        except (OSError, EOFError) as error:
            self.manager_lost = True
            logger.error("manager process lost (%s: %s); shared state is no longer updated",
                         type(error).__name__, error)
