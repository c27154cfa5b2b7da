"""Built-in job kinds against their kernels run directly in one process, on the same files.

* ``hash`` (sha256) against ``hashlib.file_digest`` over the same file, in MiB/s.
* ``csv-profile`` against one ``csv.reader`` pass that only counts rows, in rows/s. The file is
  tests/data/zipcodes.csv with its rows repeated up to the planned size.
* ``image-thumbnails`` (JPEG, two sizes) against Pillow called directly, in images/s over the PNG
  and JPEG files in tests/data. Both open the image, apply its EXIF orientation, convert it to
  sRGB when it has an ICC profile (two of the three have one), resize it with Lanczos and the same
  reducing gap, and save JPEG with the same quality.

Offload's time is from the job's POST to its final state event on the websocket, so it includes
the API, the journal and the event path; the input is uploaded before the clock starts.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageCms, ImageOps

from bench.client import OffloadSession, open_session, submit_and_wait, upload_file
from bench.plan import Plan, Servers
from bench.report import Figure, Skipped, ratio_at_least

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MiB = 1024 * 1024
IMAGES = ("astronaut.png", "coffee.png", "rocket.jpg")
THUMBNAIL_SIZES = (128, 512)
JPEG_QUALITY = 85
SRGB = ImageCms.createProfile("sRGB")
TARGET_HASH_RATIO = 0.9
TARGET_CSV_RATIO = 0.5
TARGET_THUMBNAIL_RATIO = 0.8


def make_hash_input(path: Path, mib: int) -> None:
    chunk = (bytes(range(256)) * 4096)[:MiB]
    with path.open("wb") as file:
        for index in range(mib):
            file.write(chunk[index % 256:] + chunk[:index % 256])


def make_csv_input(path: Path, mib: int) -> int:
    """Write zipcodes.csv's header and then its rows repeatedly, to about ``mib`` MiB; return the data rows."""
    lines = (DATA / "zipcodes.csv").read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    block = b"".join(rows)
    copies = max(1, mib * MiB // len(block))
    with path.open("wb") as file:
        file.write(header)
        for _ in range(copies):
            file.write(block)
    return copies * len(rows)


def hashlib_digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def csv_reader_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as file:
        return sum(1 for _ in csv.reader(file)) - 1


def pillow_thumbnails(path: Path, output_dir: Path) -> None:
    with Image.open(path) as image:
        image.load()
        profile = image.info.get("icc_profile")
        oriented = ImageOps.exif_transpose(image)
    if profile and oriented.mode in ("RGB", "RGBA", "CMYK"):
        # The kind converts images with an ICC profile to sRGB, so the baseline does that pixel work too.
        oriented = ImageCms.profileToProfile(oriented, ImageCms.ImageCmsProfile(io.BytesIO(profile)), SRGB,
                                             outputMode="RGB")
    if oriented.mode not in ("L", "RGB"):
        oriented = oriented.convert("RGB")
    for edge in THUMBNAIL_SIZES:
        scale = min(edge / oriented.width, edge / oriented.height, 1.0)
        size = (max(1, round(oriented.width * scale)), max(1, round(oriented.height * scale)))
        thumbnail = oriented.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        thumbnail.save(output_dir / f"{path.stem}-{edge}.jpg", "JPEG", quality=JPEG_QUALITY, optimize=True)


async def upload_path(session: OffloadSession, path: Path) -> str:
    async def chunks() -> Any:
        with path.open("rb") as file:
            while chunk := file.read(MiB):
                yield chunk

    record = await upload_file(session, path.name, chunks(), path.stat().st_size)
    return record["file_id"]


async def timed_job(session: OffloadSession, kind: str, file_id: str, params: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    event = await submit_and_wait(session, {"kind": kind, "inputs": [file_id], "params": params})
    return time.perf_counter() - started, event["job"]["result"]


async def timed_call(function: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await asyncio.to_thread(function, *args)
    return time.perf_counter() - started, result


async def run_kernels(plan: Plan, servers: Servers) -> tuple[list[Figure], list[Skipped]]:
    with tempfile.TemporaryDirectory(dir=servers.directory) as scratch:
        directory = Path(scratch)
        hash_path = directory / "hash.bin"
        csv_path = directory / "zipcodes-repeated.csv"
        await asyncio.to_thread(make_hash_input, hash_path, plan.hash_mib)
        rows = await asyncio.to_thread(make_csv_input, csv_path, plan.csv_mib)

        async with open_session(servers.offload.url) as session:
            hash_id = await upload_path(session, hash_path)
            csv_id = await upload_path(session, csv_path)
            image_ids = [await upload_path(session, DATA / name) for name in IMAGES]

            hash_s, result = await timed_job(session, "hash", hash_id, {"algorithms": ["sha256"]})
            bare_hash_s, digest = await timed_call(hashlib_digest, hash_path)
            if result["digests"]["sha256"] != digest:
                raise RuntimeError(f"hash job returned {result['digests']['sha256']}, hashlib {digest}")

            csv_s, report = await timed_job(session, "csv-profile", csv_id, {})
            bare_csv_s, bare_rows = await timed_call(csv_reader_rows, csv_path)
            if bare_rows != rows:
                raise RuntimeError(f"csv.reader read {bare_rows} rows, expected {rows}")

            params = {"sizes": list(THUMBNAIL_SIZES), "format": "jpeg", "quality": JPEG_QUALITY}
            thumbnails_s = 0.0
            bare_thumbnails_s = 0.0
            output_dir = directory / "thumbnails"
            output_dir.mkdir()
            for _ in range(plan.image_rounds):
                for name, file_id in zip(IMAGES, image_ids):
                    thumbnails_s += (await timed_job(session, "image-thumbnails", file_id, params))[0]
                    bare_thumbnails_s += (await timed_call(pillow_thumbnails, DATA / name, output_dir))[0]

    images = plan.image_rounds * len(IMAGES)
    return [
        Figure(f"hash sha256, {plan.hash_mib} MiB", "MiB/s", plan.hash_mib / hash_s, plan.hash_mib / bare_hash_s,
               "hashlib", ratio_at_least(TARGET_HASH_RATIO)),
        Figure(f"csv-profile, {rows:,} rows", "rows/s", rows / csv_s, rows / bare_csv_s, "csv.reader pass",
               ratio_at_least(TARGET_CSV_RATIO)),
        Figure(f"image-thumbnails, {len(THUMBNAIL_SIZES)} JPEG sizes", "images/s", images / thumbnails_s,
               images / bare_thumbnails_s, "Pillow directly", ratio_at_least(TARGET_THUMBNAIL_RATIO)),
    ], []
