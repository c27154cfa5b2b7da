"""The web page at ``/``: static HTML, CSS and JavaScript shipped in ``app/static``, no build step."""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, send_file

from .errors import not_found
from .openapi import documented, text_reply

page = Blueprint("page", __name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Set explicitly, because on Windows mimetypes reads the registry, which may map .js to text/plain,
# and a script of that type is blocked under nosniff. Quart adds "; charset=utf-8" to text types.
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# Only the page's own files, scripts and styles are allowed. Chromium 156 matches ws: URLs of the
# page's host and port against 'self' in connect-src, as CSP Level 3 specifies.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@page.get("/")
@documented(200, None, session=False, responses=text_reply("text/html", "the web page"))
async def index() -> Response:
    return await _asset("index.html")


@page.get("/static/<name>")
@documented(200, None, 404, session=False, responses=text_reply("*/*", "a script, style sheet or image of the page"))
async def static_file(name: str) -> Response:
    return await _asset(name)


async def _asset(name: str) -> Response:
    path = STATIC_DIR / name
    content_type = CONTENT_TYPES.get(path.suffix)
    # A name with a separator or ".." never matches a file directly inside STATIC_DIR.
    if content_type is None or path.parent != STATIC_DIR or not path.is_file():
        raise not_found("page file", name)
    response = await send_file(path, mimetype=content_type, conditional=True)
    # Revalidate on every load, so a browser never runs an old script against a new server.
    response.headers["Cache-Control"] = "no-cache"
    del response.headers["Expires"]
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
