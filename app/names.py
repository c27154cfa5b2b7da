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

# Characters that Windows rejects in file names; "/" and "\\" are removed earlier, with the path.
_WINDOWS_FORBIDDEN_RE = re.compile(r'[<>:"|?*]')
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)),
                               *(f"LPT{n}" for n in range(1, 10))})

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
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


def output_file_name(name: str) -> str:
    """Turn a user's file name into an output file name that is valid on Windows, macOS and Linux.

    Characters Windows forbids become ``_``, trailing dots and spaces go, a reserved device name such
    as ``CON.txt`` gets a leading ``_``, and the name is cut to 240 UTF-8 bytes, keeping its suffix.
    """
    name = _WINDOWS_FORBIDDEN_RE.sub("_", clean_name(name)).rstrip(". ")
    if name.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        name = "_" + name
    return _truncate(name or DEFAULT_NAME, MAX_OUTPUT_NAME_BYTES)


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
