"""The ``compress`` and ``decompress`` job kinds: gzip, bz2, xz and zstd, streamed in chunks.

Neither kind keeps a whole file in memory: each reads and writes ``CHUNK_BYTES`` at a time, and
decompression asks each reader for at most that many bytes, so one small input chunk cannot expand
into gigabytes in memory. ``decompress`` stops at an output size or ratio limit and then deletes its
partial output.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .context import JobContext, atomic_output
from .registry import JobKind

CHUNK_BYTES = 256 * 1024
# Bytes read to detect a format; the longest magic number (xz) has 6.
MAGIC_BYTES = 6
ZSTD_FEED_BYTES = 1024
# Memory an xz decoder may use. Every preset of the xz tool, 9e included, decodes in under 70 MiB.
XZ_MEMORY_LIMIT_BYTES = 128 * 1024 * 1024
# A decompressed output gets this suffix when its input's name has none of the format's suffixes,
# so the output is never named like its input.
UNKNOWN_SUFFIX_OUTPUT = ".out"

Format = Literal["gzip", "bz2", "xz", "zstd"]


class Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """A compression format: its levels, file suffixes, magic number, compressor and stream reader."""

    name: str
    min_level: int
    max_level: int
    default_level: int
    # The first suffix is the one compress adds; decompress strips any of them.
    suffixes: tuple[str, ...]
    magic: bytes
    compressor: Callable[[int, int], Compressor]
    reader: Callable[[BinaryIO], Reader]


def _gzip_compressor(level: int, size: int) -> Compressor:
    # wbits 31 writes a gzip header (with no file name and a zero time stamp) and trailer.
    return zlib.compressobj(level, zlib.DEFLATED, 31)


def _bz2_compressor(level: int, size: int) -> Compressor:
    return bz2.BZ2Compressor(level)


def _xz_compressor(level: int, size: int) -> Compressor:
    return lzma.LZMACompressor(lzma.FORMAT_XZ, preset=level)


def _zstd_compressor(level: int, size: int) -> Compressor:
    # The frame records the input size and a checksum, so a decoder can verify the output.
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return compressor.compressobj(size=size)


def _gzip_reader(source: BinaryIO) -> Reader:
    return gzip.GzipFile(fileobj=source, mode="rb")


class ZstdReader:
    """Read concatenated zstd frames, raising ``ZstdError`` when the input ends inside a frame.

    zstandard's own ``stream_reader`` (0.25) returns no error for a truncated frame, and a
    decompression object returns all the output of its input at once, so the input is fed in
    ``ZSTD_FEED_BYTES`` pieces. A zstd block takes at least 4 bytes and expands to at most 128 KiB,
    so one piece holds at most about 32 MiB of output in memory.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        # The decompressor of the frame being read; None between frames.
        self._frame: Any = None
        self._pending = b""
        self._buffer = bytearray()

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and self._fill():
            pass
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    def close(self) -> None:
        self._buffer.clear()

    def _fill(self) -> bool:
        data = self._pending or self._source.read(ZSTD_FEED_BYTES)
        self._pending = b""
        if not data:
            if self._frame is not None:
                raise zstandard.ZstdError("the input ends inside a zstd frame, so the file is truncated")
            return False

        if self._frame is None:
            self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._buffer += self._frame.decompress(data)
        if self._frame.eof:
            self._pending = self._frame.unused_data
            self._frame = None
        return True


class XzReader:
    """Read concatenated xz streams with a limit on the decoder's memory.

    ``lzma.LZMAFile`` takes no memory limit, so a small file whose header asks for a 1.5 GiB
    dictionary would make the decoder allocate that much. Zero bytes between and after streams
    are stream padding, which the xz format allows.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        # The decoder of the stream being read; None between streams.
        self._decoder: lzma.LZMADecompressor | None = None
        self._pending = b""

    def read(self, size: int) -> bytes:
        while True:
            if self._decoder is None and not self._start_stream():
                return b""
            decoder = self._decoder
            assert decoder is not None
            if decoder.eof:
                self._pending = decoder.unused_data
                self._decoder = None
                continue

            data = b""
            if decoder.needs_input:
                data = self._take_input()
                if not data:
                    raise lzma.LZMAError("the input ends inside an xz stream, so the file is truncated")
            try:
                chunk = decoder.decompress(data, max_length=size)
            except lzma.LZMAError as error:
                # liblzma reports LZMA_MEMLIMIT_ERROR only through this message.
                if "memory usage limit" in str(error).lower():
                    raise DecompressionLimitExceeded(
                        f"the xz stream needs more than {XZ_MEMORY_LIMIT_BYTES // 2**20} MiB of memory to decode "
                        "(its dictionary size), more than any preset of the xz tool; recompress it with a "
                        "standard preset") from None
                raise
            if chunk:
                return chunk

    def close(self) -> None:
        self._decoder = None

    def _take_input(self) -> bytes:
        data = self._pending or self._source.read(CHUNK_BYTES)
        self._pending = b""
        return data

    def _start_stream(self) -> bool:
        while data := self._take_input():
            data = data.lstrip(b"\0")
            if data:
                self._pending = data
                self._decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT_BYTES)
                return True
        return False


CODECS: dict[str, Codec] = {
    "gzip": Codec("gzip", 0, 9, 6, (".gz", ".gzip"), b"\x1f\x8b", _gzip_compressor, _gzip_reader),
    "bz2": Codec("bz2", 1, 9, 9, (".bz2",), b"BZh", _bz2_compressor, bz2.BZ2File),
    "xz": Codec("xz", 0, 9, 6, (".xz",), b"\xfd7zXZ\x00", _xz_compressor, XzReader),
    "zstd": Codec("zstd", 1, 22, 3, (".zst", ".zstd"), b"\x28\xb5\x2f\xfd", _zstd_compressor, ZstdReader),
}
# Single-file shorthands for compressed tar archives: decompressing gives the tar file.
TAR_SUFFIXES = {".tgz": "gzip", ".tbz2": "bz2", ".tbz": "bz2", ".txz": "xz", ".tzst": "zstd"}
LEVELS_HELP = ", ".join(f"{codec.name} {codec.min_level} to {codec.max_level} (default {codec.default_level})"
                        for codec in CODECS.values())

# The errors the standard library and zstandard raise for data that is not valid in a format.
DATA_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


class InvalidCompressedData(ValueError):
    """Raised when a decompress input is corrupt, truncated or in another format."""


class DecompressionLimitExceeded(ValueError):
    """Raised when decompressed output passes its size or ratio limit."""


class CompressParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Format = Field(default="zstd", description="compression format")
    # Strict, so that true is not taken for level 1.
    level: int | None = Field(default=None, strict=True, description=f"compression level: {LEVELS_HELP}")

    @field_validator("level")
    @classmethod
    def _level_in_range(cls, level: int | None, info: ValidationInfo) -> int | None:
        codec = CODECS.get(info.data.get("format", ""))
        if level is None or codec is None:
            return level
        if not codec.min_level <= level <= codec.max_level:
            raise ValueError(f"level {level} is out of range for {codec.name}: use {codec.min_level} "
                             f"to {codec.max_level}")
        return level


class DecompressParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Format | None = Field(default=None, description="compression format; detected from the "
                                  "input's first bytes when omitted")
    max_output_bytes: int | None = Field(
        default=None, ge=1,
        description="fail once the output passes this many bytes; the server's --max-decompressed-bytes "
        "when omitted, and never above it",
    )
    max_ratio: float | None = Field(
        default=None, ge=1, allow_inf_nan=False,
        description="fail once output bytes divided by input bytes pass this; the server's "
        "--max-decompression-ratio when omitted, and never above it",
    )


def compress_file(context: JobContext, inputs: list[Path], params: CompressParams) -> dict[str, Any]:
    path = inputs[0]
    codec = CODECS[params.format]
    level = codec.default_level if params.level is None else params.level
    total = path.stat().st_size
    output = context.output_path(_input_name(context, path) + codec.suffixes[0])

    compressor = codec.compressor(level, total)
    done = 0
    with atomic_output(output) as target, path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            target.write(compressor.compress(chunk))
            done += len(chunk)
            context.progress(done, total, "bytes")
            context.check_cancelled()
        target.write(compressor.flush())

    written = output.stat().st_size
    return {"format": codec.name, "level": level, "output": output.name, "input_bytes": done,
            "output_bytes": written, "ratio": _ratio(done, written)}


def decompress_file(context: JobContext, inputs: list[Path], params: DecompressParams) -> dict[str, Any]:
    path = inputs[0]
    name = _input_name(context, path)
    if params.max_output_bytes is None or params.max_ratio is None:
        raise ValueError("max_output_bytes and max_ratio must be set; the server sets them from its limits")
    codec = _choose_codec(path, name, params.format)
    total = path.stat().st_size
    output = context.output_path(_decompressed_name(name, codec))

    written = 0
    with (atomic_output(output) as target, path.open("rb") as source,
          contextlib.closing(codec.reader(source)) as reader):
        while chunk := _read(reader, codec, name):
            written += len(chunk)
            _check_limits(written, total, params.max_output_bytes, params.max_ratio)
            target.write(chunk)
            context.progress(source.tell(), total, "bytes", f"{written} bytes written")
            context.check_cancelled()

    context.progress(total, total, "bytes", f"{written} bytes written")
    return {"format": codec.name, "output": output.name, "input_bytes": total, "output_bytes": written,
            "ratio": _ratio(written, total)}


def _input_name(context: JobContext, path: Path) -> str:
    return context.input_names[0] if context.input_names else path.name


def _read(reader: Reader, codec: Codec, name: str) -> bytes:
    try:
        return reader.read(CHUNK_BYTES)
    except DATA_ERRORS as error:
        raise InvalidCompressedData(f"{name!r} is not valid {codec.name} data ({error}); check the "
                                    "file, or set params.format") from None


def _check_limits(written: int, total: int, max_bytes: int, max_ratio: float) -> None:
    if written > max_bytes:
        raise DecompressionLimitExceeded(
            f"the output passed the limit of {max_bytes} bytes; set params.max_output_bytes higher, up "
            "to the server's --max-decompressed-bytes (OFFLOAD_MAX_DECOMPRESSED_BYTES), which an "
            "administrator can raise")
    # The output only grows, so once the ratio is past the limit the final ratio is too.
    if total and written / total > max_ratio:
        raise DecompressionLimitExceeded(
            f"the output passed {max_ratio} times the input's {total} bytes; set params.max_ratio higher, "
            "up to the server's --max-decompression-ratio (OFFLOAD_MAX_DECOMPRESSION_RATIO), which an "
            "administrator can raise")


def _choose_codec(path: Path, name: str, requested: str | None) -> Codec:
    """Return the requested codec, or detect it; reject an input whose magic number names another one."""
    with path.open("rb") as file:
        head = file.read(MAGIC_BYTES)
    detected = next((codec for codec in CODECS.values() if head.startswith(codec.magic)), None)

    if requested is None:
        if detected is None:
            raise InvalidCompressedData(f"cannot detect the format of {name!r}: it starts with none of the "
                                        f"magic numbers of {', '.join(CODECS)}; set params.format")
        return detected
    if detected is not None and detected.name != requested:
        raise InvalidCompressedData(f"{name!r} is {detected.name} data, not {requested}; set params.format "
                                    f"to {detected.name!r} or omit it")
    return CODECS[requested]


def _decompressed_name(name: str, codec: Codec) -> str:
    lowered = name.lower()
    for suffix in codec.suffixes:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and TAR_SUFFIXES.get("." + suffix.lower()) == codec.name:
        return stem + ".tar"
    return name + UNKNOWN_SUFFIX_OUTPUT


def _ratio(uncompressed: int, compressed: int) -> float | None:
    return uncompressed / compressed if compressed else None


KINDS = [
    JobKind(
        name="compress",
        function=compress_file,
        params=CompressParams,
        description="Compress one file with gzip, bz2, xz or zstd; the output is the file name plus the "
        "format's suffix.",
    ),
    JobKind(
        name="decompress",
        function=decompress_file,
        params=DecompressParams,
        description="Decompress one gzip, bz2, xz or zstd file, detecting the format; stops at the output "
        "size and ratio limits.",
        capped_params={"max_output_bytes": "max_decompressed_bytes", "max_ratio": "max_decompression_ratio"},
    ),
]
