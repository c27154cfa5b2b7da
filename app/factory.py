"""The application factory. Building the app starts nothing; ``before_serving`` does."""

from __future__ import annotations

import logging
from types import TracebackType

from quart import Quart

from .config import Settings, settings_from
from .cors import install_cors, set_allowed_origins
from .errors import install_error_handlers
from .flow import FlowControlledConnection, FlowControlledRequest
from .logs import configure_logging
from .openapi import install_openapi
from .page import page
from .patches import bound_websocket_buffers, decline_websocket_compression, enlarge_socket_reads
from .routes import FileNameConverter, api
from .runtime import Runtime, StartupError
from .sse import sse
from .streams import streams

logger = logging.getLogger("offload")


class OffloadApp(Quart):
    """Quart with flow-controlled request bodies; a ``StartupError`` is logged as its message alone."""

    asgi_http_class = FlowControlledConnection
    request_class = FlowControlledRequest

    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        error = exception_info[1]
        if isinstance(error, StartupError):
            logger.critical("cannot start: %s", error)
            return
        super().log_exception(exception_info)


def create_app(settings: Settings | None = None) -> Quart:
    """Build the Quart app; without ``settings`` it reads ``OFFLOAD_*`` variables when serving starts."""
    # The page blueprint serves the static files; Quart's own static route would look in the working directory.
    app = OffloadApp("offload", static_folder=None)
    # Uploads enforce their own limit while streaming; JSON bodies are capped in read_json.
    app.config["MAX_CONTENT_LENGTH"] = None
    install_error_handlers(app)
    app.url_map.converters["filename"] = FileNameConverter
    app.register_blueprint(api)
    app.register_blueprint(streams)
    app.register_blueprint(sse)
    app.register_blueprint(page)
    install_openapi(app)
    install_cors(app)

    @app.before_serving
    async def start_runtime() -> None:
        runtime = Runtime(settings or settings_from())
        if not logging.getLogger().handlers:
            # Launched by the hypercorn command, which sets up only its own loggers.
            configure_logging(runtime.settings.log_level, runtime.settings.log_format)
        app.extensions["offload"] = runtime
        set_allowed_origins(app, runtime.settings.cors_origins)
        bound_websocket_buffers()
        decline_websocket_compression()
        enlarge_socket_reads()
        await runtime.start()

    @app.after_serving
    async def stop_runtime() -> None:
        runtime = app.extensions.get("offload")
        if runtime is not None:
            await runtime.stop()

    return app
