"""The csv-profile kind on real files and on variants of them: BOM, semicolons, Latin-1 and cp1252."""

from __future__ import annotations

import csv
import io
import queue
import statistics
from pathlib import Path
from typing import Any

import pytest

from app.workers import csv_profile
from app.workers.context import JobCancelled, JobContext
from app.workers.csv_profile import CsvProfileParams, detect_delimiter, detect_encoding, profile_csv

from .conftest import DATA


def profile(path: Path, tmp_path: Path, **params: Any) -> dict[str, Any]:
    context = JobContext("job", "session", tmp_path / "out", None, None)
    context.output_dir.mkdir(exist_ok=True)
    return profile_csv(context, [path], CsvProfileParams(**params))


def column(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in result["columns"] if item["name"] == name)


def test_seattle_weather(tmp_path: Path) -> None:
    result = profile(DATA / "seattle-weather.csv", tmp_path)
    assert result["rows"] == 1461
    assert column(result, "date")["type"] == "date"
    assert column(result, "date")["min"] == "2012-01-01"
    assert column(result, "date")["max"] == "2015-12-31"
    temp_max = column(result, "temp_max")
    values = [float(row["temp_max"]) for row in csv.DictReader((DATA / "seattle-weather.csv").open())]
    assert temp_max["type"] == "float"
    assert temp_max["min"] == min(values)
    assert temp_max["max"] == max(values)
    assert temp_max["mean"] == pytest.approx(sum(values) / len(values))
    mean = sum(values) / len(values)
    stddev = (sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5
    assert temp_max["stddev"] == pytest.approx(stddev)
    assert column(result, "weather")["type"] == "string"
    assert column(result, "weather")["distinct"] == 5
    assert (tmp_path / "out" / "profile.json").is_file()


def test_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "zipcodes.csv").read_bytes())
    result = profile(path, tmp_path)
    assert result["encoding"] == "utf-8-sig"
    # The mark is not part of the first column's name.
    assert result["columns"][0]["name"] == "zip_code"
    assert result["rows"] == 42049


def test_semicolon_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "semicolon.csv"
    rows = list(csv.reader((DATA / "seattle-weather.csv").open(newline="")))
    with path.open("w", newline="") as file:
        csv.writer(file, delimiter=";").writerows(rows)
    result = profile(path, tmp_path)
    assert result["delimiter"] == ";"
    assert [item["name"] for item in result["columns"]] == rows[0]
    assert column(result, "wind")["type"] == "float"


def test_latin1_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    text = "city;country;population\nZürich;Schweiz;421878\nSão Paulo;Brasil;11451245\nMálaga;España;\n"
    path.write_bytes(text.encode("latin-1"))
    result = profile(path, tmp_path)
    assert result["encoding"] == "latin-1"
    assert result["delimiter"] == ";"
    assert [entry["value"] for entry in column(result, "city")["top"]] == ["Zürich", "São Paulo", "Málaga"]
    assert column(result, "population")["nulls"] == 1
    assert column(result, "population")["type"] == "integer"


def test_cp1252_detected_past_sample(tmp_path: Path) -> None:
    """A file whose first 64 KiB are ASCII but which later contains a cp1252 byte is profiled again."""
    path = tmp_path / "late.csv"
    body = (DATA / "airports.csv").read_bytes()
    extra = "".join(f"Z{index:02},Caf\u00e9 \u20ac,Paris,NA,France,48.85,2.35\n" for index in range(10))
    path.write_bytes(body + extra.encode("cp1252"))
    result = profile(path, tmp_path)
    assert result["encoding"] == "cp1252"
    assert result["rows"] == 3386
    assert column(result, "name")["top"][0] == {"value": "Café €", "count": 10}


def test_empty_cells_are_nulls(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("id,score,flag,when\n1,,true,2024-01-02T10:00:00\n2,7.5,,2024-01-03 11:30\n3,0,false,\n")
    result = profile(path, tmp_path)
    score = column(result, "score")
    assert score == {**score, "type": "float", "nulls": 1, "min": 0.0, "max": 7.5, "mean": 3.75}
    assert column(result, "flag")["type"] == "boolean"
    assert column(result, "flag")["nulls"] == 1
    assert column(result, "when")["type"] == "datetime"
    assert column(result, "when")["max"] == "2024-01-03 11:30"


def test_leading_zero_codes_are_strings(tmp_path: Path) -> None:
    path = tmp_path / "fips.csv"
    path.write_text("fips,count\n01001,3\n06037,10\n36061,7\n")
    result = profile(path, tmp_path)
    assert column(result, "fips")["type"] == "string"
    assert column(result, "fips")["top"][0]["value"] == "01001"
    assert column(result, "count")["type"] == "integer"


def test_ragged_rows_counted(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3\n4,5,6\n")
    result = profile(path, tmp_path)
    assert result["ragged_rows"] == 2
    assert column(result, "b")["nulls"] == 1
    assert result["columns"][2]["name"] == "column_3"


def test_distinct_cap_is_reported(tmp_path: Path) -> None:
    result = profile(DATA / "zipcodes.csv", tmp_path, max_distinct=100)
    zip_code = column(result, "zip_code")
    assert zip_code["distinct"] == 100
    assert zip_code["distinct_exact"] is False


def test_detect_encoding_cut_multibyte() -> None:
    sample = "naï".encode()[:-1]
    assert detect_encoding(sample, at_end=False) == "utf-8"
    assert detect_encoding(sample, at_end=True) == "latin-1"


def test_detect_delimiter_tabs_and_pipes() -> None:
    assert detect_delimiter("a\tb\tc\n1\t2\t3\n") == "\t"
    assert detect_delimiter("a|b\n1|2\n") == "|"
    text = io.StringIO()
    csv.writer(text).writerows([["name", "note"], ["x", "a; b; c"], ["y", "d; e"]])
    assert detect_delimiter(text.getvalue()) == ","


def test_unknown_encoding_param(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        profile(DATA / "airports.csv", tmp_path, encoding="klingon")


def test_numbers_past_float_range_are_text(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text("x,y\n1e999,1\n-1e999,2\n5,3\n" + "1" * 400 + ",4\n")
    result = profile(path, tmp_path)
    assert column(result, "x")["type"] == "string"
    assert column(result, "x")["mean"] is None
    assert column(result, "y")["type"] == "integer"


def test_oversized_field_names_the_line(tmp_path: Path) -> None:
    for name, text in (("header.csv", "a" * 200_000 + ",b\n1,2\n"), ("body.csv", "a,b\n1,2\n" + "x" * 200_000 + ",3\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match="line [0-9]+: field larger than field limit"):
            profile(path, tmp_path)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read three rows per chunk, so a few rows cross several chunk boundaries."""
    monkeypatch.setattr(csv_profile, "MIN_CHUNK_ROWS", 3)
    monkeypatch.setattr(csv_profile, "MAX_CHUNK_ROWS", 3)


def test_type_change_after_first_chunk(tmp_path: Path, small_chunks: None) -> None:
    path = tmp_path / "late.csv"
    path.write_text("code,amount\n" + "".join(f"{index},{index}\n" for index in range(10)) + "n/a,2.5\n")
    result = profile(path, tmp_path)
    code = column(result, "code")
    amount = column(result, "amount")
    values = [*range(10), 2.5]
    assert code["type"] == "string"
    assert code["mean"] is None
    assert code["min"] is None
    assert amount["type"] == "float"
    assert amount["min"] == 0.0
    assert amount["max"] == 9.0
    assert amount["mean"] == pytest.approx(statistics.fmean(values), rel=1e-15)
    assert amount["stddev"] == pytest.approx(statistics.stdev(values), rel=1e-15)


def test_ragged_rows_across_chunks(tmp_path: Path, small_chunks: None) -> None:
    path = tmp_path / "ragged.csv"
    lines = ["a,b", "1,2", "3", "4,5", "6,7", "8,9,x", "10,11", "12", "", "13,14,y,z", "15,16,w,v"]
    path.write_text("\n".join(lines) + "\n")
    result = profile(path, tmp_path)
    assert result["rows"] == 9
    assert result["ragged_rows"] == 5
    assert [item["name"] for item in result["columns"]] == ["a", "b", "column_3", "column_4"]
    assert column(result, "b")["nulls"] == 2
    assert column(result, "b")["max"] == 16
    # A column added by a long row starts there: rows before it add no nulls.
    assert column(result, "column_3")["nulls"] == 2
    assert column(result, "column_3")["top"] == [{"value": "x", "count": 1}, {"value": "y", "count": 1},
                                                 {"value": "w", "count": 1}]
    assert column(result, "column_4")["nulls"] == 0
    assert column(result, "column_4")["distinct"] == 2


def test_distinct_cap_inside_chunk(tmp_path: Path) -> None:
    path = tmp_path / "cap.csv"
    path.write_text("n,label\n" + "".join(f"{index},{index}\n" for index in range(1, 100)) + "100,late\n")
    result = profile(path, tmp_path, max_distinct=10, top=3)
    number = column(result, "n")
    assert number["distinct"] == 10
    assert number["distinct_exact"] is False
    assert number["top"] == [{"value": "1", "count": 1}, {"value": "2", "count": 1}, {"value": "3", "count": 1}]
    # Values past the cap are not counted, but they still set the type, range and mean.
    assert number["type"] == "integer"
    assert number["max"] == 100
    assert number["mean"] == pytest.approx(50.5, rel=1e-15)
    assert number["stddev"] == pytest.approx(statistics.stdev(range(1, 101)), rel=1e-15)
    assert column(result, "label")["type"] == "string"


def test_distinct_cap_across_chunks(tmp_path: Path, small_chunks: None) -> None:
    path = tmp_path / "cap.csv"
    path.write_text("v\n" + "".join(f"{value}\n" for value in ["b", "a", "c", "a", "d", "b", "e", "d", "c"]))
    result = profile(path, tmp_path, max_distinct=3)
    value = column(result, "v")
    assert value["distinct"] == 3
    assert value["distinct_exact"] is False
    assert value["top"] == [{"value": "b", "count": 2}, {"value": "a", "count": 2}, {"value": "c", "count": 2}]


def test_padded_values_merge_across_chunks(tmp_path: Path, small_chunks: None) -> None:
    path = tmp_path / "padded.csv"
    path.write_text("v\nb\na\nb\n a\na \n \n")
    result = profile(path, tmp_path)
    value = column(result, "v")
    assert value["nulls"] == 1
    assert value["distinct"] == 2
    # Equal counts keep the order of first appearance.
    assert value["top"] == [{"value": "a", "count": 3}, {"value": "b", "count": 2}]


def test_equal_datetimes_keep_first_text(tmp_path: Path) -> None:
    path = tmp_path / "instants.csv"
    path.write_text("t\n2024-01-01T11:00:00+01:00\n2024-01-01T10:00:00Z\n2024-01-01T10:00:00+00:00\n")
    result = profile(path, tmp_path)
    assert column(result, "t")["type"] == "datetime"
    assert column(result, "t")["min"] == "2024-01-01T11:00:00+01:00"
    assert column(result, "t")["max"] == "2024-01-01T11:00:00+01:00"


def test_sum_past_float_range(tmp_path: Path) -> None:
    path = tmp_path / "large.csv"
    path.write_text("x\n1e308\n1e308\n1.6e308\n")
    result = profile(path, tmp_path)
    assert column(result, "x")["type"] == "float"
    assert column(result, "x")["mean"] == pytest.approx(1.2e308)
    assert column(result, "x")["max"] == 1.6e308


def test_integer_past_int_digit_limit(tmp_path: Path) -> None:
    path = tmp_path / "digits.csv"
    path.write_text("id\n" + "1" * 5000 + "\n")
    result = profile(path, tmp_path)
    assert column(result, "id")["type"] == "string"


def test_cancelled_between_chunks(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    lines = (DATA / "zipcodes.csv").read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"".join(lines[1:]) * 4)
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    cancel_flags: dict[str, bool] = {}

    class CancelAfterFirstChunk(JobContext):
        def progress(self, done: int, total: int | None = None, unit: str = "bytes", message: str = "") -> None:
            super().progress(done, total, unit, message)
            cancel_flags[self.job_id] = True

    context = CancelAfterFirstChunk("job", "session", tmp_path / "out", events, cancel_flags)
    context.output_dir.mkdir()
    with pytest.raises(JobCancelled):
        profile_csv(context, [path], CsvProfileParams())

    progress = [event["progress"] for event in events.queue if event["type"] == "progress"]
    assert progress
    assert progress[-1]["done"] < path.stat().st_size
    assert not (context.output_dir / "profile.json").exists()
