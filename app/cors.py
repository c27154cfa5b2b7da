"""Cross-origin access: off unless ``--cors-origins`` names the sites whose pages may call the API.

quart-cors adds the CORS headers to HTTP responses. It reads the allowed origins from the app's
config on each request, so they are set when serving starts, once the settings are known.
Websocket handshakes are checked by the stream routes instead, because quart-cors would also
reject a same-site page when no origin is configured.
"""

from __future__ import annotations

from collections.abc import Iterable

from quart import Quart, current_app
from quart_cors import cors, cors_exempt

ORIGINS_KEY = "QUART_CORS_ALLOW_ORIGIN"


def install_cors(app: Quart) -> None:
    """Add CORS headers to HTTP routes for the configured origins; call it after the routes exist."""
    app.config[ORIGINS_KEY] = []
    cors(
        app,
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        expose_headers=["Content-Disposition", "Retry-After"],
        max_age=600,
    )
    for rule in app.url_map.iter_rules():
        if rule.websocket:
            cors_exempt(app.view_functions[rule.endpoint])


def set_allowed_origins(app: Quart, origins: Iterable[str]) -> None:
    app.config[ORIGINS_KEY] = list(origins)


def origin_allowed(origin: str) -> bool:
    """Return whether ``--cors-origins`` lets pages of ``origin`` open websockets."""
    allowed = current_app.config.get(ORIGINS_KEY, [])
    return "*" in allowed or origin.rstrip("/").lower() in {item.rstrip("/").lower() for item in allowed}
