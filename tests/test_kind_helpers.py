"""Helpers that job kinds share: output file names, atomic outputs and capped parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from app.config import Settings
from app.errors import ApiError
from app.names import MAX_OUTPUT_NAME_BYTES, disk_name
from app.validation import apply_caps, check_capped_params
from app.workers.context import JobContext, atomic_output
from app.workers.registry import JobKind, KindError, builtin_modules, discover_kinds


class CappedParams(BaseModel):
    limit: int | None = None
    fixed: int = 5


def capped(context: JobContext, inputs: list[Path], params: CappedParams) -> None:
    return None


@pytest.mark.parametrize(("name", "expected"), [
    ("report.csv.gz", "report.csv.gz"),
    ("con.txt", "_con.txt"),
    ("LPT1", "_LPT1"),
    ('a<b>c:d"e|f?g*h.csv', "a_b_c_d_e_f_g_h.csv"),
    ("notes. ", "notes"),
    ("..", "upload"),
    ("dir/sub\\name.png", "name.png"),
])
def test_output_name_is_disk_safe(name: str, expected: str) -> None:
    assert disk_name(name, MAX_OUTPUT_NAME_BYTES) == expected


def test_output_file_name_keeps_suffix() -> None:
    name = disk_name("é" * 200 + ".csv.zst", MAX_OUTPUT_NAME_BYTES)
    assert len(name.encode()) <= 240
    assert name.endswith(".zst")


def test_atomic_output_removes_partial(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as file:
            file.write(b"partial")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []

    with atomic_output(target) as file:
        file.write(b"whole")
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"]
    assert target.read_bytes() == b"whole"


def test_caps_filled_and_bounded() -> None:
    kind = JobKind("capped", capped, CappedParams, "test", capped_params={"limit": "max_image_pixels"})
    settings = Settings(max_image_pixels=100)
    assert apply_caps(kind, CappedParams(), settings).limit == 100
    assert apply_caps(kind, CappedParams(limit=100), settings).limit == 100
    assert apply_caps(kind, CappedParams(limit=1), settings).limit == 1
    with pytest.raises(ApiError, match="params.limit: 101 is over the server maximum of 100"):
        apply_caps(kind, CappedParams(limit=101), settings)


@pytest.mark.parametrize(("caps", "message"), [
    ({"missing": "max_image_pixels"}, "'missing' is missing from CappedParams"),
    ({"fixed": "max_image_pixels"}, "'fixed' must default to None"),
    ({"limit": "no_such_setting"}, "unknown server setting 'no_such_setting'"),
])
def test_invalid_caps_rejected(caps: dict[str, str], message: str) -> None:
    kind = JobKind("capped", capped, CappedParams, "test", capped_params=caps)
    with pytest.raises(KindError, match=message):
        check_capped_params([kind])


def test_builtin_kinds_all_load() -> None:
    kinds = discover_kinds()
    assert {"compress", "csv-profile", "decompress", "hash", "image-thumbnails"} <= set(kinds)
    assert not [name for name in builtin_modules() if name.rpartition(".")[2].startswith("_")]
