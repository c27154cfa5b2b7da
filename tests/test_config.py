"""Settings from flags, ``OFFLOAD_*`` variables and defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.config import GiB, MAX_WINDOWS_WORKERS, Settings, SettingsError, parse_size, settings_from


def test_defaults_serve_on_loopback() -> None:
    settings = settings_from({}, {})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.start_method == "spawn"
    assert settings.data_dir == Path("offload-data")
    assert settings.workers >= 1


def test_flags_win_over_environment() -> None:
    settings = settings_from({"port": "9001"}, {"OFFLOAD_PORT": "9002", "OFFLOAD_WORKERS": "3"})
    assert settings.port == 9001
    assert settings.workers == 3


def test_environment_values_are_converted() -> None:
    settings = settings_from({}, {"OFFLOAD_MAX_UPLOAD_BYTES": "2GiB", "OFFLOAD_JOB_GRACE_S": "0.5",
                                  "OFFLOAD_EXTRA_KINDS": "a.b, c.d", "OFFLOAD_LOG_LEVEL": "debug"})
    assert settings.max_upload_bytes == 2 * GiB
    assert settings.job_grace_s == 0.5
    assert settings.extra_kinds == ("a.b", "c.d")
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("512", 512), ("1KiB", 1024), ("2 MB", 2_000_000),
                                                 ("3gib", 3 * GiB)])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5GB", "10 parsecs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(SettingsError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(("values", "message"), [
    ({"port": "70000"}, "invalid --port (OFFLOAD_PORT) 70000"),
    ({"port": "http"}, "invalid --port (OFFLOAD_PORT) 'http'"),
    ({"workers": "0"}, "invalid --workers (OFFLOAD_WORKERS) 0"),
    ({"start_method": "thread"}, "invalid --start-method (OFFLOAD_START_METHOD) 'thread'"),
    ({"max_upload_bytes": "0"}, "invalid --max-upload-bytes (OFFLOAD_MAX_UPLOAD_BYTES) 0"),
    ({"job_grace_s": "-1"}, "invalid --job-grace-s (OFFLOAD_JOB_GRACE_S) -1.0"),
    ({"log_level": "loud"}, "invalid --log-level (OFFLOAD_LOG_LEVEL) 'LOUD'"),
    ({"job_grace_s": "8", "shutdown_timeout_s": "10"}, "invalid --shutdown-timeout-s"),
    ({"max_decompressed_bytes": "0"}, "invalid --max-decompressed-bytes (OFFLOAD_MAX_DECOMPRESSED_BYTES) 0"),
    ({"max_decompression_ratio": "0.99"}, "invalid --max-decompression-ratio (OFFLOAD_MAX_DECOMPRESSION_RATIO) 0.99"),
    ({"max_decompression_ratio": "inf"}, "invalid --max-decompression-ratio (OFFLOAD_MAX_DECOMPRESSION_RATIO) inf"),
    ({"max_image_pixels": "0"}, "invalid --max-image-pixels (OFFLOAD_MAX_IMAGE_PIXELS) 0"),
])
def test_invalid_values_are_named(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        settings_from(values, {})
    assert str(error.value).startswith(message)


def test_kind_limits_at_edge() -> None:
    settings = settings_from({"max_decompressed_bytes": "1", "max_decompression_ratio": "1",
                              "max_image_pixels": "1"}, {})
    assert (settings.max_decompressed_bytes, settings.max_decompression_ratio, settings.max_image_pixels) == (1, 1, 1)
    assert settings_from({"max_decompressed_bytes": "2GiB"}, {}).max_decompressed_bytes == 2 * 1024**3


def test_grace_and_timeout_at_edge() -> None:
    settings = settings_from({"job_grace_s": "7", "shutdown_timeout_s": "10"}, {})
    assert settings.shutdown_timeout_s - settings.job_grace_s == 3


@pytest.mark.skipif(sys.platform != "win32", reason="the worker cap applies on Windows")
def test_windows_worker_cap() -> None:
    with pytest.raises(SettingsError, match="at most 61"):
        Settings(workers=MAX_WINDOWS_WORKERS + 1)
