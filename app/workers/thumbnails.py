"""The ``image-thumbnails`` job kind: resized copies of one image, oriented by EXIF and without metadata."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from .context import JobContext, atomic_output
from .registry import JobKind

MAX_SIZES = 10
MAX_EDGE = 4096
SIZE_RE = re.compile(r"([1-9][0-9]*)(?:x([1-9][0-9]*))?")

FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png"), "webp": ("WEBP", ".webp")}
# Modes each output format can store as they are; other modes are converted first.
FORMAT_MODES = {"jpeg": {"L", "RGB"}, "png": {"L", "LA", "RGB", "RGBA"}, "webp": {"RGB", "RGBA"}}
# Background that transparent pixels get in a format without transparency.
BACKGROUND = (255, 255, 255)
SRGB = ImageCms.createProfile("sRGB")

Format = Literal["jpeg", "png", "webp"]


class InvalidImage(ValueError):
    """Raised when the input is not an image Pillow can read, or is truncated or corrupt."""


class ImageTooLarge(ValueError):
    """Raised when the input has more pixels than its limit, as a decompression bomb would."""


class ThumbnailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sizes: list[StrictInt | StrictStr] = Field(
        default=[256], min_length=1, max_length=MAX_SIZES,
        description=f"up to {MAX_SIZES} sizes, each a maximum edge length such as 256 or a box such as "
        f"\"320x200\"; edges are 1 to {MAX_EDGE} pixels, and images are never enlarged",
    )
    format: Format = Field(default="jpeg", description="output format: jpeg, png or webp")
    quality: int = Field(default=85, ge=1, le=100, description="JPEG and WebP quality; PNG ignores it")
    max_pixels: int | None = Field(
        default=None, ge=1,
        description="fail for an image with more pixels than this; the server's --max-image-pixels when "
        "omitted, and never above it",
    )

    @field_validator("format", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("sizes")
    @classmethod
    def _valid_sizes(cls, sizes: list[int | str]) -> list[int | str]:
        labels = [size_label(size) for size in sizes]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate size in {sizes!r}")
        return sizes


def parse_size(size: int | str) -> tuple[int, int]:
    """Return the box of a size: 256 or "256" gives (256, 256), "320x200" gives (320, 200)."""
    match = SIZE_RE.fullmatch(size.strip().lower()) if isinstance(size, str) else None
    if isinstance(size, int):
        box = (size, size)
    elif match is not None:
        width = int(match.group(1))
        box = (width, int(match.group(2) or width))
    else:
        raise ValueError(f"invalid size {size!r}: use a number such as 256 or a box such as \"320x200\"")
    if not all(1 <= edge <= MAX_EDGE for edge in box):
        raise ValueError(f"invalid size {size!r}: each edge must be 1 to {MAX_EDGE} pixels")
    return box


# Leaves room for "-4096x4096", the longest size tag, and a suffix within an output name's 240 bytes.
MAX_STEM_BYTES = 200


def size_label(size: int | str) -> str:
    """Name a size in output file names: "256" for a maximum edge, "320x200" for a box."""
    width, height = parse_size(size)
    return str(width) if isinstance(size, int) or "x" not in size.lower() else f"{width}x{height}"


def make_thumbnails(context: JobContext, inputs: list[Path], params: ThumbnailParams) -> dict[str, Any]:
    path = inputs[0]
    name = context.input_names[0] if context.input_names else path.name
    if params.max_pixels is None:
        raise ValueError("max_pixels must be set; the server sets it from --max-image-pixels")
    total = len(params.sizes) + 1
    pillow_format, suffix = FORMATS[params.format]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    # Output names are cut to fit the file system; cutting the stem here keeps the size tags that
    # tell the thumbnails apart.
    stem = stem.encode()[:MAX_STEM_BYTES].decode(errors="ignore")

    image, source = _load(path, name, params.max_pixels)
    context.progress(1, total, "images", "decoded")
    context.check_cancelled()

    thumbnails = []
    for done, size in enumerate(params.sizes, start=2):
        thumbnail = _fit(image, parse_size(size))
        output = context.output_path(f"{stem}-{size_label(size)}{suffix}")
        with atomic_output(output) as file:
            _prepare(thumbnail, params.format).save(file, pillow_format, **_save_options(params))
        thumbnails.append({"name": output.name, "width": thumbnail.width, "height": thumbnail.height,
                           "bytes": output.stat().st_size})
        context.progress(done, total, "images")
        context.check_cancelled()

    return {"source": source, "format": params.format, "thumbnails": thumbnails}


def _load(path: Path, name: str, max_pixels: int) -> tuple[Image.Image, dict[str, Any]]:
    """Decode the image, apply its EXIF orientation and convert it to sRGB and a mode fit for resizing."""
    with _pixel_limit(name, max_pixels), Image.open(path) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise InvalidImage(f"{name!r} is truncated or corrupt ({error}); upload the whole file again") from None
        oriented = ImageOps.exif_transpose(image)
        source = {"format": image.format, "mode": image.mode, "width": oriented.width, "height": oriented.height}
        return _normalise(oriented), source


@contextmanager
def _pixel_limit(name: str, max_pixels: int) -> Iterator[None]:
    """Make Pillow reject images over ``max_pixels``, and turn its errors into clear ones.

    Pillow warns past ``Image.MAX_IMAGE_PIXELS`` and raises past twice that; the warning becomes an
    error here. The setting is global, but a worker runs one job at a time.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        count = f"has {pixels.group(1)} pixels, " if pixels else ""
        raise ImageTooLarge(
            f"{name!r} {count}more than the limit of {max_pixels}, so it may be a decompression bomb; set "
            "params.max_pixels higher, up to the server's --max-image-pixels (OFFLOAD_MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{name!r} is not an image in a format Pillow can read, such as JPEG, PNG, WebP, "
                           "GIF, TIFF or BMP") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _normalise(image: Image.Image) -> Image.Image:
    """Convert the image to sRGB and to mode L, LA, RGB or RGBA, and drop its metadata."""
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "RGBA", "CMYK"):
        image = _to_srgb(image, profile)

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow clips 16-bit samples to 255 when it converts to L, so they are scaled first.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode in ("1", "F"):
        image = image.convert("L")
    elif image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    image.info = {}
    return image


def _to_srgb(image: Image.Image, profile: bytes) -> Image.Image:
    # Outputs carry no ICC profile, so colours are converted to sRGB, which viewers assume without one.
    mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        converted = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), SRGB,
                                              outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        # A damaged profile, or one for another colour space: the values are kept as they are.
        return image
    return converted if converted is not None else image


def _fit(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """Scale the image down to fit ``box``, keeping its aspect ratio; never enlarge it."""
    scale = min(box[0] / image.width, box[1] / image.height, 1.0)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _prepare(image: Image.Image, output_format: str) -> Image.Image:
    """Convert to a mode the format stores, putting transparent pixels on white where it has no alpha."""
    modes = FORMAT_MODES[output_format]
    if image.mode in modes:
        return image
    if image.mode in ("LA", "RGBA") and not modes & {"LA", "RGBA"}:
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return background.convert("L") if image.mode == "LA" else background
    return image.convert("RGBA" if "A" in image.mode else "RGB")


def _save_options(params: ThumbnailParams) -> dict[str, Any]:
    # No exif, icc_profile or pnginfo is passed, so Pillow writes none.
    if params.format == "jpeg":
        return {"quality": params.quality, "optimize": True}
    if params.format == "webp":
        return {"quality": params.quality, "method": 4}
    return {"optimize": True}


KIND = JobKind(
    name="image-thumbnails",
    function=make_thumbnails,
    params=ThumbnailParams,
    description="Make thumbnails of one image at several sizes, as JPEG, PNG or WebP, oriented by EXIF "
    "and without metadata; rejects decompression bombs.",
    capped_params={"max_pixels": "max_image_pixels"},
)
