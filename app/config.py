"""Server settings: defaults, ``OFFLOAD_*`` environment variables and command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .logs import LOG_FORMATS

ENV_PREFIX = "OFFLOAD_"

# ProcessPoolExecutor rejects more than 61 workers on Windows, because
# WaitForMultipleObjects accepts at most 64 handles.
MAX_WINDOWS_WORKERS = 61

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
               "kib": KiB, "mib": MiB, "gib": GiB}
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


# Pillow's own default for Image.MAX_IMAGE_PIXELS (Pillow 10 to 13): 1 GiB / 4 / 3, about 89.5 million.
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3

# Seconds a shutdown needs beyond the jobs' grace period to stop the workers, the open connections
# and the Manager.
SHUTDOWN_MARGIN_S = 3.0


def option_names(name: str) -> str:
    """Name a setting as users write it: ``--max-upload-bytes (OFFLOAD_MAX_UPLOAD_BYTES)``."""
    return f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()})"


class SettingsError(ValueError):
    """Raised when a flag or environment variable has an invalid value."""


def parse_size(text: str) -> int:
    """Parse a byte count such as ``1048576``, ``512MiB`` or ``2GB``."""
    match = _SIZE_PATTERN.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise SettingsError(
            f"invalid size {text!r}: use a whole number of bytes, optionally with one of "
            "KB, MB, GB, KiB, MiB, GiB"
        )
    return int(match.group(1)) * _SIZE_UNITS[unit]


def default_pool_size() -> int:
    count = os.cpu_count() or 1
    if sys.platform == "win32":
        count = min(count, MAX_WINDOWS_WORKERS)
    return count


def _option(help: str, kind: str = "", choices: Sequence[str] | None = None) -> dict[str, Any]:
    return {"help": help, "kind": kind, "choices": choices}


def _default(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


@dataclass(frozen=True)
class Settings:
    """Everything the server can be configured with; each field is a flag and an environment variable."""

    host: str = field(default="127.0.0.1", metadata=_option("address to listen on"))
    port: int = field(default=8000, metadata=_option("TCP port to listen on"))
    workers: int = field(
        default_factory=default_pool_size,
        metadata=_option("worker processes in the job pool; the CPU count by default, at most 61 on Windows"),
    )
    data_dir: Path = field(
        default=Path("offload-data"),
        metadata=_option("directory for uploads, job outputs and the lock file; created if missing"),
    )
    start_method: str = field(
        default="spawn",
        metadata=_option("how worker processes start", choices=("spawn", "forkserver", "fork")),
    )
    max_upload_bytes: int = field(
        default=1 * GiB,
        metadata=_option("maximum size of one uploaded file, in bytes (suffixes KB, MB, GB, KiB, MiB, GiB)",
                         kind="size"),
    )
    max_files_per_session: int = field(
        default=1000, metadata=_option("files one session may store; more uploads get 413")
    )
    max_session_bytes: int = field(
        default=10 * GiB,
        metadata=_option("bytes of uploaded files one session may store; more uploads get 413", kind="size"),
    )
    upload_idle_s: float = field(
        default=60.0,
        metadata=_option("seconds an upload body may stop arriving before it is dropped with 408"),
    )
    upload_write_delay_s: float = field(
        default=0.0,
        metadata=_option("testing aid: seconds to sleep before each disk write of an upload, to act as a "
                         "slow disk; keep 0 in production"),
    )
    cors_origins: tuple[str, ...] = field(
        default=(),
        metadata=_option("comma-separated origins (scheme://host:port) whose pages may call the API and open "
                         "websockets; * allows any; empty turns CORS off", kind="list"),
    )
    max_queued_jobs_per_session: int = field(
        default=100, metadata=_option("queued jobs one session may have before new jobs get 429")
    )
    max_queued_jobs: int = field(
        default=1000, metadata=_option("queued jobs over all sessions before new jobs get 429")
    )
    session_idle_s: float = field(
        default=3600.0,
        metadata=_option("seconds a session may go unused before it expires and its files are deleted"),
    )
    ws_send_queue: int = field(
        default=1000,
        metadata=_option("events a websocket or event-stream client may fall behind by before it is "
                         "disconnected; progress events are merged first"),
    )
    sse_keep_alive_s: float = field(
        default=15.0,
        metadata=_option("seconds without events after which an event stream sends a comment line, so "
                         "proxies do not close it as idle"),
    )
    event_backlog: int = field(
        default=10000,
        metadata=_option("events kept per session for clients that reconnect with ?after=SEQ"),
    )
    job_timeout_s: float = field(
        default=3600.0,
        metadata=_option("seconds a job may run when neither its request nor its kind sets a limit"),
    )
    max_job_timeout_s: float = field(
        default=86400.0,
        metadata=_option("largest time limit in seconds a job may have; longer requests get 400"),
    )
    cancel_grace_s: float = field(
        default=2.0,
        metadata=_option("seconds a cancelled or timed-out job has to stop by itself before its worker "
                         "is killed"),
    )
    crash_retries: int = field(
        default=1,
        metadata=_option("times a job that kills its worker is run again before it fails"),
    )
    max_jobs_per_worker: int = field(
        default=0,
        metadata=_option("jobs a worker runs before it is replaced; 0 for no limit"),
    )
    max_worker_rss_bytes: int = field(
        default=0,
        metadata=_option("resident memory in bytes past which a worker is killed during a job or "
                         "replaced after one; 0 for no limit", kind="size"),
    )
    job_grace_s: float = field(
        default=3.0,
        metadata=_option("seconds running jobs may go on after a shutdown signal before their workers "
                         "are terminated"),
    )
    shutdown_timeout_s: float = field(
        default=10.0,
        metadata=_option("seconds from a shutdown signal to a forced exit, whatever is still running"),
    )
    max_decompressed_bytes: int = field(
        default=10 * GiB,
        metadata=_option("largest output in bytes a decompress job may write before it fails; a job may set "
                         "a lower limit (suffixes KB, MB, GB, KiB, MiB, GiB)", kind="size"),
    )
    max_decompression_ratio: float = field(
        default=1000.0,
        metadata=_option("largest ratio of output to input bytes a decompress job may reach before it fails; "
                         "a job may set a lower one"),
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata=_option("largest image, in pixels (width times height), an image job opens; larger ones "
                         "fail as possible decompression bombs, and a job may set a lower limit"),
    )
    log_level: str = field(
        default="INFO",
        metadata=_option("logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    log_format: str = field(
        default="text",
        metadata=_option("log line format: text for people, json for one JSON object per line",
                         choices=LOG_FORMATS),
    )
    extra_kinds: tuple[str, ...] = field(
        default=(),
        metadata=_option("comma-separated importable modules that define more job kinds", kind="list"),
    )
    loop_lag_interval_s: float = field(
        default=0.0,
        metadata=_option("seconds between samples of the event loop's lag, reported as "
                         "offload_event_loop_lag_seconds in /metrics; 0 turns the sampler off"),
    )

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"invalid {option_names('port')} {self.port!r}: use 0 to 65535")
        if self.workers < 1:
            raise SettingsError(f"invalid {option_names('workers')} {self.workers!r}: use at least 1")
        if sys.platform == "win32" and self.workers > MAX_WINDOWS_WORKERS:
            raise SettingsError(f"invalid {option_names('workers')} {self.workers!r}: Windows allows at most "
                                f"{MAX_WINDOWS_WORKERS}")
        available = multiprocessing.get_all_start_methods()
        if self.start_method not in available:
            raise SettingsError(f"invalid {option_names('start_method')} {self.start_method!r}: this platform "
                                f"has {', '.join(available)}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"invalid {option_names('log_format')} {self.log_format!r}: use one of "
                                f"{', '.join(LOG_FORMATS)}")
        for name in ("max_upload_bytes", "max_files_per_session", "max_session_bytes",
                     "max_queued_jobs_per_session", "max_queued_jobs", "ws_send_queue", "event_backlog",
                     "max_decompressed_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise SettingsError(f"invalid {option_names(name)} {getattr(self, name)!r}: use at least 1")
        for name in ("crash_retries", "max_jobs_per_worker", "max_worker_rss_bytes"):
            if getattr(self, name) < 0:
                raise SettingsError(f"invalid {option_names(name)} {getattr(self, name)!r}: use 0 or more")
        if not math.isfinite(self.max_decompression_ratio) or self.max_decompression_ratio < 1:
            raise SettingsError(f"invalid {option_names('max_decompression_ratio')} "
                                f"{self.max_decompression_ratio!r}: use a finite number of at least 1")
        if self.job_timeout_s > self.max_job_timeout_s:
            raise SettingsError(f"invalid {option_names('job_timeout_s')} {self.job_timeout_s!r}: use at most "
                                f"{option_names('max_job_timeout_s')} ({self.max_job_timeout_s!r})")
        for name in ("session_idle_s", "job_grace_s", "shutdown_timeout_s", "job_timeout_s", "max_job_timeout_s",
                     "cancel_grace_s", "upload_idle_s", "sse_keep_alive_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise SettingsError(f"invalid {option_names(name)} {getattr(self, name)!r}: use a finite positive number")
        for name in ("upload_write_delay_s", "loop_lag_interval_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise SettingsError(f"invalid {option_names(name)} {getattr(self, name)!r}: "
                                    "use 0 or a finite positive number")
        for origin in self.cors_origins:
            if origin != "*" and not _is_origin(origin):
                raise SettingsError(f"invalid {option_names('cors_origins')} entry {origin!r}: use "
                                    "scheme://host[:port] with no path, or *")
        if self.shutdown_timeout_s < self.job_grace_s + SHUTDOWN_MARGIN_S:
            raise SettingsError(
                f"invalid {option_names('shutdown_timeout_s')} {self.shutdown_timeout_s!r}: use at least "
                f"{option_names('job_grace_s')} ({self.job_grace_s!r}) + {SHUTDOWN_MARGIN_S} s, so running "
                "jobs get their grace period and the server still has time to stop its processes"
            )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _is_origin(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.path and not parts.query


def _convert(spec: dataclasses.Field[Any], text: str) -> Any:
    kind = spec.metadata["kind"]
    if kind == "size":
        return parse_size(text)
    if kind == "list":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    target = typing.get_type_hints(Settings)[spec.name]
    if target is Path:
        return Path(text)
    if target is str:
        return text
    try:
        return target(text)
    except ValueError:
        expected = "a whole number" if target is int else "a number"
        raise SettingsError(f"invalid {option_names(spec.name)} {text!r}: expected {expected}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults are applied later so the environment can fill them."""
    for spec in dataclasses.fields(Settings):
        flag = "--" + spec.name.replace("_", "-")
        env = ENV_PREFIX + spec.name.upper()
        default = _default(spec)
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{spec.metadata['help']} [default: {'none' if shown in ('', None) else shown}; env {env}]"
        choices = spec.metadata["choices"]
        if choices:
            # Choices are matched without regard to case, so --log-level debug works like the variable.
            parser.add_argument(flag, dest=spec.name, default=None, choices=choices, help=help_text,
                                type=_case_insensitive(choices))
        else:
            parser.add_argument(flag, dest=spec.name, default=None, metavar=spec.name.upper(), help=help_text)


def _case_insensitive(choices: Sequence[str]) -> Any:
    def convert(text: str) -> str:
        return next((choice for choice in choices if choice.lower() == text.lower()), text)

    return convert


def settings_from(arguments: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from parsed flags first, then ``OFFLOAD_*`` variables, then defaults."""
    arguments = arguments or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(Settings):
        text = arguments.get(spec.name)
        if text is None:
            text = environ.get(ENV_PREFIX + spec.name.upper())
        if text is None:
            continue
        values[spec.name] = _convert(spec, str(text))
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
        choices = _FIELD_CHOICES["log_level"]
        if values["log_level"] not in choices:
            raise SettingsError(f"invalid {option_names('log_level')} {values['log_level']!r}: use one of "
                                f"{', '.join(choices)}")
    if "log_format" in values:
        values["log_format"] = values["log_format"].lower()
    return Settings(**values)


_FIELD_CHOICES = {spec.name: spec.metadata["choices"] for spec in dataclasses.fields(Settings)}
