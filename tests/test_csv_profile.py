"""The csv-profile kind on real files and on variants of them: BOM, semicolons, Latin-1 and cp1252."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from app.workers.context import JobContext
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
