"""File names: hostile and foreign names round-trip through upload, list and download."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.names import MAX_NAME_BYTES, clean_name, disk_name

from .conftest import Api, Server, stored_files

# (name as sent, name expected back)
NAMES = [
    ("Погода.csv", "Погода.csv"),
    ("数据文件.csv", "数据文件.csv"),
    ("写真.jpg", "写真.jpg"),
    ("e\u0301te\u0301.txt", "été.txt"),
    ("../x", "x"),
    ("..\\x", "x"),
    ("/etc/x", "x"),
    ("C:\\x", "x"),
    ("a\x01b\x7fc.txt", "abc.txt"),
    ("tab\there.txt", "tabhere.txt"),
    ("CON", "CON"),
    ("nul.txt", "nul.txt"),
    ("COM1.log", "COM1.log"),
    ("aux.tar.gz", "aux.tar.gz"),
    ("LPT9", "LPT9"),
    ("..", "upload"),
    (" ", "upload"),
    ("quote\"semi;colon.txt", "quote\"semi;colon.txt"),
    ("percent%41.txt", "percent%41.txt"),
    # Werkzeug strips a pair of double quotes from a decoded filename*.
    ('"', '"'),
    ('"quoted".txt', '"quoted".txt'),
    ('"both"', '"both"'),
]


def post_named(api: Api, name: str, data: bytes) -> httpx.Response:
    """Upload through multipart with the name in RFC 2231 ``filename*``, so every character survives.

    Clients that put the name in plain ``filename`` percent-encode quotes and controls first, as
    browsers do, so the server never sees those characters there.
    """
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"; '
            + f"filename*=UTF-8''{quote(name, safe='')}".encode() + b"\r\n\r\n" + data + b"\r\n--b--\r\n")
    return api.client.post(f"{api.prefix}/files", content=body,
                           headers={"Content-Type": "multipart/form-data; boundary=b"})


def filename_star(disposition: str) -> str:
    match = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
    assert match, disposition
    return unquote(match.group(1), errors="strict")


def ascii_filename(disposition: str) -> str:
    match = re.search(r'filename="([^"]*)"', disposition)
    assert match, disposition
    return match.group(1)


def check_round_trip(api: Api, server: Server, record: dict[str, object], expected: str, data: bytes) -> None:
    assert record["name"] == expected

    listed = {item["file_id"]: item["name"] for item in api.client.get(f"{api.prefix}/files").json()["files"]}
    assert listed[record["file_id"]] == expected

    response = api.client.get(f"{api.prefix}/files/{record['file_id']}/content")
    assert response.status_code == 200
    assert response.content == data
    disposition = response.headers["content-disposition"]
    assert filename_star(disposition) == expected
    fallback = ascii_filename(disposition)
    assert fallback.isascii()
    assert fallback.strip()

    for path in stored_files(server):
        assert server.data_dir.resolve() in path.resolve().parents
        assert path.name.split(".")[0].upper() not in {"CON", "NUL", "AUX", "COM1", "LPT9"}


@pytest.mark.parametrize(("sent", "expected"), NAMES)
def test_name_round_trips_raw(api: Api, server: Server, sent: str, expected: str) -> None:
    data = sent.encode("utf-8", errors="replace") + b" contents"
    # Encoded dots, because clients resolve a literal ".." in a URL before sending it.
    encoded = quote(sent, safe="").replace(".", "%2E")
    response = api.client.put(f"{api.prefix}/files/{encoded}", content=data)
    assert response.status_code == 201, response.text
    check_round_trip(api, server, response.json(), expected, data)


@pytest.mark.parametrize(("sent", "expected"), NAMES)
def test_name_round_trips_multipart(api: Api, server: Server, sent: str, expected: str) -> None:
    data = b"multipart " + sent.encode("utf-8", errors="replace")
    response = post_named(api, sent, data)
    assert response.status_code == 201, response.text
    check_round_trip(api, server, response.json()["files"][0], expected, data)


def test_empty_multipart_filename_is_stored(api: Api) -> None:
    # Browsers send filename="" for a file input left empty.
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename=""\r\n\r\n\r\n--b--\r\n'
    response = api.client.post(f"{api.prefix}/files", content=body,
                                headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 201, response.text
    assert response.json()["files"][0]["name"] == "upload"
    assert response.json()["files"][0]["size"] == 0


@pytest.mark.parametrize("letter", ["a", "é", "日", "😀"])
def test_long_name_cut_to_255_bytes(api: Api, letter: str) -> None:
    sent = letter * 300 + ".csv"
    response = api.client.put(f"{api.prefix}/files/{quote(sent, safe='')}", content=b"x")
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith(".csv")
    assert set(name[:-4]) == {letter}


@pytest.mark.parametrize(("name", "expected"), [
    ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("COM1.log", "_COM1.log"), ("aux.tar.gz", "_aux.tar.gz"),
    ("LPT9", "_LPT9"), ("con .txt", "_con .txt"), ("what?.txt", "what_.txt"), ("trailing. ", "trailing"),
    ("CONSOLE.txt", "CONSOLE.txt"), ("Погода.csv", "Погода.csv"),
    ("CON" + " " * 300 + "x", "_CON"), ("nul" + " " * 300 + "x.png", "_nul" + " " * 247 + ".png"),
])
def test_disk_name_avoids_windows_traps(name: str, expected: str) -> None:
    assert disk_name(name) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=0, max_size=400))
def test_clean_name_is_always_a_safe_base_name(name: str) -> None:
    cleaned = clean_name(name)
    assert cleaned
    assert unicodedata.is_normalized("NFC", cleaned)
    assert "/" not in cleaned
    assert "\\" not in cleaned
    assert cleaned not in (".", "..")
    assert len(cleaned.encode()) <= MAX_NAME_BYTES
    assert not any(unicodedata.category(char) == "Cc" for char in cleaned)

    on_disk = disk_name(name)
    assert on_disk
    assert not re.search(r'[<>:"/\\|?*]', on_disk)
    assert not on_disk.endswith((".", " "))
    assert len(on_disk.encode()) <= MAX_NAME_BYTES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_fuzzed_names_round_trip(api: Api, server: Server, name: str) -> None:
    response = post_named(api, name, b"fuzz")
    assert response.status_code < 500, response.text
    if response.status_code == 201:
        record = response.json()["files"][0]
        assert record["name"] == clean_name(name)
        download = api.client.get(f"{api.prefix}/files/{record['file_id']}/content")
        assert filename_star(download.headers["content-disposition"]) == record["name"]
        api.client.delete(f"{api.prefix}/files/{record['file_id']}")
