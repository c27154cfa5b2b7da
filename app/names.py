"""User file names: cleaned for display, encoded for ``Content-Disposition``, and made safe for outputs.

The user's name is only metadata. Stored files are named by generated ids, so no name sent by a
client ever becomes a path on the server. Job outputs may carry a name derived from it, made safe
as one file name on every platform by ``output_file_name``.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_NAME_BYTES = 255
DEFAULT_NAME = "upload"
# Room is left for the ".part" suffix a job gives a file while it writes it.
MAX_OUTPUT_NAME_BYTES = 240

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_WINDOWS_FORBIDDEN_RE = re.compile(r'[<>:"/\\|?*]')
# Windows opens these devices whatever the extension: "nul.txt" is NUL. The superscript digits count too.
_WINDOWS_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{prefix}{digit}" for prefix in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"]
)
# Bidirectional controls can make "exe.txt" display as "txt.exe".
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_name(name: str) -> str:
    """Return the base name of ``name`` in NFC, without control characters, at most 255 UTF-8 bytes.

    Control characters include the bidirectional overrides, which can disguise an extension.

    ``../x``, ``..\\x``, ``/etc/x`` and ``C:\\x`` all become ``x``; an empty result becomes ``upload``.
    """
    name = unicodedata.normalize("NFC", name)
    name = "".join(char for char in name if unicodedata.category(char) != "Cc" and char not in _BIDI_CONTROLS)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _DRIVE_RE.sub("", name).strip()
    if name in ("", ".", ".."):
        return DEFAULT_NAME
    return _truncate(name, MAX_NAME_BYTES)


def disk_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Return ``clean_name(name)`` made safe as a file name on Windows, macOS and Linux.

    Job outputs and downloads of the command-line client are named after user files. So their names
    must never be a Windows device name (``CON``, ``nul.txt``, ``COM1.log``), contain a character
    Windows rejects, or end in a dot or space, which Windows silently drops. The result is cut to
    ``max_bytes`` UTF-8 bytes, keeping its suffix.
    """
    # Cut first, so that the cut cannot leave a trailing space or uncover a device name. One byte is
    # kept free for the "_" prefix.
    name = _truncate(_WINDOWS_FORBIDDEN_RE.sub("_", clean_name(name)), max_bytes - 1)
    name = name.rstrip(". ") or DEFAULT_NAME
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICE_NAMES:
        name = "_" + name
    return name


def _truncate(name: str, limit: int) -> str:
    if len(name.encode()) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, suffix = name, ""
    suffix = dot + suffix if stem else ""
    room = limit - len(suffix.encode())
    stem = stem.encode()[:room].decode(errors="ignore")
    return stem + suffix


def content_disposition(name: str) -> str:
    """Build an ``attachment`` header value with an ASCII ``filename`` and a UTF-8 ``filename*`` (RFC 6266)."""
    # Accents decompose and drop ("é" -> "e"); other non-ASCII letters become "_".
    decomposed = "".join(char for char in unicodedata.normalize("NFKD", name) if not unicodedata.combining(char))
    fallback = re.sub(r'[^\x20-\x7e]|["\\;]', "_", decomposed).strip() or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
