"""image-thumbnails through a real server: sizes, formats, EXIF orientation, metadata and bad images."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from .conftest import DATA, Api

JOB_TIMEOUT_S = 60.0
IMAGES = ["astronaut.png", "coffee.png", "rocket.jpg"]
SIZES: list[int | str] = [64, "120x80", "300"]
BOXES = [(64, 64), (120, 80), (300, 300)]
LABELS = ["64", "120x80", "300"]
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
SUFFIXES = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
# EXIF tag 0x0112 (Orientation); 6 means "rotate 90 degrees clockwise to display".
ORIENTATION = 0x0112


def expected_size(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def upload_bytes(api: Api, name: str, data: bytes) -> dict[str, Any]:
    response = api.client.put(f"{api.prefix}/files/{name}", content=data)
    assert response.status_code == 201, response.text
    return response.json()


def run(api: Api, file_id: str, **params: Any) -> dict[str, Any]:
    return api.wait_job(api.start("image-thumbnails", [file_id], **params)["job_id"], JOB_TIMEOUT_S)


def open_output(api: Api, job: dict[str, Any], name: str) -> Image.Image:
    response = api.client.get(f"{api.prefix}/jobs/{job['job_id']}/outputs/{name}")
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def post_job(api: Api, file_id: str, **params: Any) -> Any:
    return api.client.post(f"{api.prefix}/jobs", json={"kind": "image-thumbnails", "inputs": [file_id],
                                                       "params": params})


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int) -> bytes:
    """Build a PNG that declares ``width`` x ``height`` RGB pixels but contains one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * min(width, 100)))) + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("format", ["jpeg", "png", "webp"])
def test_real_images_get_requested_sizes(api: Api, format: str) -> None:
    for name in IMAGES:
        with Image.open(DATA / name) as original:
            width, height = original.size
        job = run(api, api.upload(DATA / name)["file_id"], sizes=SIZES, format=format)
        assert job["state"] == "succeeded", job
        stem = name.rsplit(".", 1)[0]
        thumbnails = job["result"]["thumbnails"]
        assert [item["name"] for item in thumbnails] == [f"{stem}-{label}{SUFFIXES[format]}" for label in LABELS]
        assert sorted(output["name"] for output in job["outputs"]) == sorted(item["name"] for item in thumbnails)

        for item, box in zip(thumbnails, BOXES):
            image = open_output(api, job, item["name"])
            assert image.format == PILLOW_FORMATS[format]
            assert image.size == expected_size(width, height, box)
            assert (item["width"], item["height"]) == image.size
            assert item["bytes"] == next(output["size"] for output in job["outputs"]
                                         if output["name"] == item["name"])
            assert "icc_profile" not in image.info
            assert "exif" not in image.info
            assert not image.getexif()


def test_exif_orientation_applied(api: Api) -> None:
    # A 80x40 landscape image, red on the left half, stored with "rotate 90 degrees clockwise".
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[0x010F] = "Offload test camera"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95, comment=b"a comment")
    record = upload_bytes(api, "sideways.jpg", buffer.getvalue())

    job = run(api, record["file_id"], sizes=[200], format="png")
    assert job["state"] == "succeeded", job
    thumbnail = open_output(api, job, "sideways-200.png")
    assert thumbnail.size == (40, 80)
    # Turned clockwise, the red left half is on top.
    red, green, blue = thumbnail.convert("RGB").getpixel((20, 10))
    assert red > 200
    assert blue < 60
    assert not thumbnail.getexif()
    assert thumbnail.info == {}

    job = run(api, record["file_id"], sizes=[200], format="jpeg")
    thumbnail = open_output(api, job, "sideways-200.jpg")
    assert thumbnail.size == (40, 80)
    assert not thumbnail.getexif()
    assert "comment" not in thumbnail.info


def test_modes_converted(api: Api) -> None:
    transparent = io.BytesIO()
    Image.new("RGBA", (50, 50), (255, 0, 0, 0)).save(transparent, "PNG")
    palette = io.BytesIO()
    Image.new("RGB", (50, 50), (0, 128, 0)).convert("P").save(palette, "PNG")
    deep = Image.new("I;16", (60, 40))
    deep.putdata([index * 27 % 65536 for index in range(60 * 40)])
    sixteen = io.BytesIO()
    deep.save(sixteen, "PNG")

    cases = [("clear.png", transparent, "jpeg", (255, 255, 255)), ("palette.png", palette, "jpeg", None),
             ("deep.png", sixteen, "jpeg", None), ("clear.png", transparent, "webp", None)]
    for name, buffer, format, pixel in cases:
        job = run(api, upload_bytes(api, name, buffer.getvalue())["file_id"], sizes=[20], format=format)
        assert job["state"] == "succeeded", (name, format, job)
        thumbnail = open_output(api, job, job["result"]["thumbnails"][0]["name"])
        if pixel is not None:
            assert thumbnail.convert("RGB").getpixel((5, 5)) == pytest.approx(pixel, abs=2)
        if name == "deep.png":
            # 16-bit samples are scaled to 8 bits, not clipped to white.
            low, high = thumbnail.convert("L").getextrema()
            assert high - low > 100


def test_truncated_jpeg_fails(api: Api) -> None:
    data = (DATA / "rocket.jpg").read_bytes()
    job = run(api, upload_bytes(api, "half.jpg", data[:len(data) // 2])["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "InvalidImage"
    assert "'half.jpg' is truncated or corrupt" in job["error"]["message"]
    assert job["outputs"] == []


def test_decompression_bomb_fails(api: Api) -> None:
    job = run(api, upload_bytes(api, "bomb.png", declared_png(100_000, 100_000))["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "ImageTooLarge"
    message = job["error"]["message"]
    assert "'bomb.png' has 10000000000 pixels, more than the limit of 89478485" in message
    assert "--max-image-pixels" in message


def test_csv_is_not_an_image(api: Api) -> None:
    job = run(api, api.upload(DATA / "airports.csv")["file_id"])
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "InvalidImage"
    assert "'airports.csv' is not an image" in job["error"]["message"]
    assert "/" not in job["error"]["message"]


def test_pixel_limit_at_edge(api: Api) -> None:
    record = api.upload(DATA / "astronaut.png")
    assert run(api, record["file_id"], max_pixels=512 * 512)["state"] == "succeeded"
    job = run(api, record["file_id"], max_pixels=512 * 512 - 1)
    assert job["state"] == "failed", job
    assert job["error"]["type"] == "ImageTooLarge"

    response = post_job(api, record["file_id"], max_pixels=89_478_486)
    assert response.status_code == 400
    assert "--max-image-pixels" in response.json()["error"]["message"]


def test_server_pixel_cap(server_factory: Any) -> None:
    server = server_factory("--max-image-pixels", "262144")
    api = Api(server)
    record = api.upload(DATA / "astronaut.png")
    job = run(api, record["file_id"])
    assert job["state"] == "succeeded", job
    assert job["params"]["max_pixels"] == 262144

    job = run(api, api.upload(DATA / "rocket.jpg")["file_id"])
    assert job["state"] == "failed", job
    assert "'rocket.jpg' has 273280 pixels, more than the limit of 262144" in job["error"]["message"]
    api.client.close()


@pytest.mark.parametrize(("params", "field"), [
    ({"sizes": list(range(1, 12))}, "params.sizes"),
    ({"sizes": [4097]}, "params.sizes"),
    ({"sizes": ["0x10"]}, "params.sizes"),
    ({"sizes": ["big"]}, "params.sizes"),
    ({"sizes": [10, "10"]}, "params.sizes"),
    ({"sizes": []}, "params.sizes"),
    ({"format": "gif"}, "params.format"),
    ({"quality": 0}, "params.quality"),
    ({"quality": 101}, "params.quality"),
])
def test_invalid_params_rejected(api: Api, params: dict[str, Any], field: str) -> None:
    record = api.upload(DATA / "coffee.png")
    response = post_job(api, record["file_id"], **params)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(field)


def test_size_bounds_at_edge(api: Api) -> None:
    record = api.upload(DATA / "coffee.png")
    job = run(api, record["file_id"], sizes=[*range(1, 10), "4096x1"], format="PNG", quality=100)
    assert job["state"] == "succeeded", job
    assert len(job["result"]["thumbnails"]) == 10
    assert job["result"]["thumbnails"][0]["width"] == 1
    assert (job["result"]["thumbnails"][-1]["width"], job["result"]["thumbnails"][-1]["height"]) == (2, 1)


def test_long_name_keeps_outputs_apart(api: Api) -> None:
    record = upload_bytes(api, "x" * 250 + ".jpg", (DATA / "rocket.jpg").read_bytes())
    job = run(api, record["file_id"], sizes=[64, 128, "100x50"])
    assert job["state"] == "succeeded", job

    names = [thumbnail["name"] for thumbnail in job["result"]["thumbnails"]]
    assert len(set(names)) == 3
    assert sorted(output["name"] for output in job["outputs"]) == sorted(names)
    for name in names:
        assert len(name.encode()) <= 240
