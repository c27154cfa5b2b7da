"""compress and decompress through a real server: round trips, levels, limits and corrupt input."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard

from .conftest import DATA, Api, Server, stored_files

FORMATS = ["gzip", "bz2", "xz", "zstd"]
LEVELS = {"gzip": (0, 9), "bz2": (1, 9), "xz": (0, 9), "zstd": (1, 22)}
SUFFIXES = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}
DECOMPRESS = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress,
              "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)}
REAL_FILES = sorted(path for path in DATA.iterdir() if path.name != "SOURCES.md")
JOB_TIMEOUT_S = 120.0
SIZE_LIMIT = 10_000_000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(api: Api, job: dict[str, Any], name: str) -> bytes:
    response = api.client.get(f"{api.prefix}/jobs/{job['job_id']}/outputs/{name}")
    assert response.status_code == 200, response.text
    return response.content


def upload_bytes(api: Api, name: str, data: bytes) -> dict[str, Any]:
    response = api.client.put(f"{api.prefix}/files/{name}", content=data)
    assert response.status_code == 201, response.text
    return response.json()


def run(api: Api, kind: str, file_id: str, **params: Any) -> dict[str, Any]:
    return api.wait_job(api.start(kind, [file_id], **params)["job_id"], JOB_TIMEOUT_S)


def job_files(server: Server, api: Api, job: dict[str, Any]) -> list[Path]:
    directory = server.data_dir / "sessions" / api.session_id / "jobs" / job["job_id"]
    return [path for path in stored_files(server) if directory in path.parents]


def post_job(api: Api, kind: str, file_id: str, **params: Any) -> Any:
    return api.client.post(f"{api.prefix}/jobs", json={"kind": kind, "inputs": [file_id], "params": params})


@pytest.mark.parametrize("format", FORMATS)
def test_round_trip_every_real_file(api: Api, format: str) -> None:
    uploads = {path.name: api.upload(path) for path in REAL_FILES}
    compress_jobs = {name: api.start("compress", [record["file_id"]], format=format)
                     for name, record in uploads.items()}

    decompress_jobs = {}
    for name, started in compress_jobs.items():
        job = api.wait_job(started["job_id"], JOB_TIMEOUT_S)
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert result["output"] == name + SUFFIXES[format]
        assert job["outputs"] == [{"name": result["output"], "size": result["output_bytes"]}]
        assert result["input_bytes"] == (DATA / name).stat().st_size
        assert result["ratio"] == result["input_bytes"] / result["output_bytes"]
        compressed = download(api, job, result["output"])
        assert DECOMPRESS[format](compressed) == (DATA / name).read_bytes()
        record = upload_bytes(api, result["output"], compressed)
        decompress_jobs[name] = api.start("decompress", [record["file_id"]])

    for name, started in decompress_jobs.items():
        job = api.wait_job(started["job_id"], JOB_TIMEOUT_S)
        assert job["state"] == "succeeded", job
        assert job["result"]["format"] == format
        assert job["result"]["output"] == name
        assert sha256(download(api, job, name)) == sha256((DATA / name).read_bytes())


@pytest.mark.parametrize("format", FORMATS)
def test_levels_at_their_edges(api: Api, format: str) -> None:
    record = api.upload(DATA / "seattle-weather.csv")
    low, high = LEVELS[format]
    for level in (low, high):
        job = run(api, "compress", record["file_id"], format=format, level=level)
        assert job["state"] == "succeeded", job
        assert job["result"]["level"] == level
        data = download(api, job, job["result"]["output"])
        assert DECOMPRESS[format](data) == (DATA / "seattle-weather.csv").read_bytes()

    for level in (low - 1, high + 1):
        response = post_job(api, "compress", record["file_id"], format=format, level=level)
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "params.level" in message
        assert f"use {low} to {high}" in message


def test_zero_bomb_stops_at_ratio(server: Server, api: Api) -> None:
    compressor = zstandard.ZstdCompressor().compressobj()
    bomb = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(256)) + compressor.flush()
    record = upload_bytes(api, "zeros.zst", bomb)

    job = run(api, "decompress", record["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "DecompressionLimitExceeded"
    assert "1000.0 times" in job["error"]["message"]
    assert "--max-decompression-ratio" in job["error"]["message"]
    assert job["outputs"] == []
    assert job_files(server, api, job) == []


def test_ratio_limit_at_edge(api: Api) -> None:
    original = (DATA / "zipcodes.csv").read_bytes()
    compressed = gzip.compress(original)
    record = upload_bytes(api, "zipcodes.csv.gz", compressed)
    ratio = len(original) / len(compressed)

    job = run(api, "decompress", record["file_id"], max_ratio=ratio)
    assert job["state"] == "succeeded", job
    assert job["result"]["ratio"] == ratio

    job = run(api, "decompress", record["file_id"], max_ratio=ratio - 0.001)
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "DecompressionLimitExceeded"


def test_caps_fill_and_reject(api: Api) -> None:
    record = upload_bytes(api, "a.gz", gzip.compress(b"a"))
    started = api.start("decompress", [record["file_id"]])
    assert started["params"]["max_output_bytes"] == 10 * 1024**3
    assert started["params"]["max_ratio"] == 1000.0

    response = post_job(api, "decompress", record["file_id"], max_ratio=1000.5)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "params.max_ratio: 1000.5 is over the server maximum of 1000.0" in message
    assert "--max-decompression-ratio" in message

    kinds = api.client.get("/api/job-kinds").json()["kinds"]
    caps = next(kind["caps"] for kind in kinds if kind["name"] == "decompress")
    assert caps == {"max_output_bytes": 10 * 1024**3, "max_ratio": 1000.0}


def test_size_limit_at_edge(server_factory: Any) -> None:
    server = server_factory("--max-decompressed-bytes", "10MB", "--max-decompression-ratio", "2")
    api = Api(server)
    # Random bytes do not compress, so each file is about 10 MB of zstd data.
    noise = os.urandom(SIZE_LIMIT + 1)
    exact = upload_bytes(api, "exact.bin.zst", zstandard.ZstdCompressor().compress(noise[:SIZE_LIMIT]))
    over = upload_bytes(api, "over.bin.zst", zstandard.ZstdCompressor().compress(noise))

    job = run(api, "decompress", exact["file_id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["output_bytes"] == SIZE_LIMIT
    assert sha256(download(api, job, "exact.bin")) == sha256(noise[:SIZE_LIMIT])

    job = run(api, "decompress", over["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "DecompressionLimitExceeded"
    assert f"limit of {SIZE_LIMIT} bytes" in job["error"]["message"]
    assert "--max-decompressed-bytes" in job["error"]["message"]
    assert job["outputs"] == []
    assert job_files(server, api, job) == []

    response = post_job(api, "decompress", exact["file_id"], max_output_bytes=SIZE_LIMIT + 1)
    assert response.status_code == 400
    assert "--max-decompressed-bytes" in response.json()["error"]["message"]
    job = run(api, "decompress", exact["file_id"], max_output_bytes=SIZE_LIMIT - 1)
    assert job["state"] == "failed", job
    assert f"limit of {SIZE_LIMIT - 1} bytes" in job["error"]["message"]
    api.client.close()


@pytest.mark.parametrize("format", FORMATS)
def test_truncated_input_fails(server: Server, api: Api, format: str) -> None:
    compressed = download(api, run(api, "compress", api.upload(DATA / "airports.csv")["file_id"], format=format),
                          "airports.csv" + SUFFIXES[format])
    record = upload_bytes(api, "cut" + SUFFIXES[format], compressed[:len(compressed) // 2])

    job = run(api, "decompress", record["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "InvalidCompressedData"
    assert f"is not valid {format} data" in job["error"]["message"]
    assert "Traceback" not in job["error"]["message"]
    assert job_files(server, api, job) == []


def test_unknown_and_wrong_format(api: Api) -> None:
    record = api.upload(DATA / "airports.csv")
    job = run(api, "decompress", record["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "InvalidCompressedData"
    assert "cannot detect the format of 'airports.csv'" in job["error"]["message"]

    job = run(api, "decompress", record["file_id"], format="gzip")
    assert job["state"] == "failed", job
    assert "'airports.csv' is not valid gzip data" in job["error"]["message"]

    record = upload_bytes(api, "data.gz", bz2.compress(b"hello"))
    job = run(api, "decompress", record["file_id"], format="gzip")
    assert job["state"] == "failed", job
    assert "'data.gz' is bz2 data, not gzip" in job["error"]["message"]


def test_output_names(api: Api) -> None:
    cases = {"archive.tgz": ("gzip", "archive.tar"), "notes.txt": ("gzip", "notes.txt.out"),
             "DATA.GZ": ("gzip", "DATA"), "table.csv.zstd": ("zstd", "table.csv")}
    for name, (format, expected) in cases.items():
        data = gzip.compress(b"x") if format == "gzip" else zstandard.ZstdCompressor().compress(b"x")
        job = run(api, "decompress", upload_bytes(api, name, data)["file_id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["output"] == expected


def test_xz_dictionary_bomb_fails(server: Server, api: Api) -> None:
    # A few hundred bytes whose header asks the decoder for a 1.5 GiB dictionary.
    bomb = lzma.compress(b"\0" * 1_000_000, format=lzma.FORMAT_XZ,
                         filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1536 << 20}])
    record = upload_bytes(api, "bomb.xz", bomb)
    job = run(api, "decompress", record["file_id"])

    assert job["state"] == "failed", job
    assert job["error"]["type"] == "DecompressionLimitExceeded"
    assert "MiB of memory" in job["error"]["message"]
    assert job_files(server, api, job) == []


def test_xz_stream_padding_accepted(api: Api) -> None:
    data = b"first stream " * 1000
    padded = lzma.compress(data) + b"\0" * 8 + lzma.compress(b"second") + b"\0" * 4
    record = upload_bytes(api, "padded.xz", padded)
    job = run(api, "decompress", record["file_id"])

    assert job["state"] == "succeeded", job
    assert download(api, job, job["result"]["output"]) == data + b"second"
