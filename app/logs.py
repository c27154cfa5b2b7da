"""Log output for the server and its worker processes: text for people, or one JSON object per line.

A line about a session, a job or a file carries their ids as ``extra`` fields (see ``log_ids``).
The text format puts them before the message as ``session=... job=... file=...``; the JSON
format has them as ``session_id``, ``job_id`` and ``file_id``.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
# Record attributes set through ``extra``, and their labels in the text format.
ID_FIELDS = (("session_id", "session"), ("job_id", "job"), ("file_id", "file"))


def log_ids(session_id: str | None = None, job_id: str | None = None,
            file_id: str | None = None) -> dict[str, str]:
    """Return the ``extra`` fields that name what a log line is about; ``None`` values are left out."""
    values = {"session_id": session_id, "job_id": job_id, "file_id": file_id}
    return {name: value for name, value in values.items() if value is not None}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: session=... job=... MESSAGE``, with only the ids the line has."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(log_ids)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.log_ids = "".join(f"{label}={getattr(record, name)} " for name, label in ID_FIELDS
                                 if getattr(record, name, None) is not None)
        return super().format(record)


def json_formatter() -> logging.Formatter:
    """Return a formatter of one JSON object per line: time (UTC, ISO 8601), level, logger, message, ids."""
    return JsonFormatter(["levelname", "name", "message"], rename_fields={"levelname": "level", "name": "logger"},
                         timestamp="time")


def configure_logging(level: str, log_format: str) -> None:
    """Send every log line to stderr in ``log_format``; the server and each worker call this once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    # force replaces handlers a forked worker inherited, so each process has exactly one.
    logging.basicConfig(level=level, handlers=[handler], force=True)
