"""CORS: off by default, and only the origins named by --cors-origins get access."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import websockets

from app.config import Settings, SettingsError

from .conftest import Api, Server, start_server

ALLOWED = "http://app.example:3000"
OTHER = "http://evil.example"


def preflight(server: Server, path: str, origin: str) -> httpx.Response:
    return httpx.options(f"{server.url}{path}", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


@pytest.fixture(name="cors_server", scope="module")
def _cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("cors"), "--cors-origins", ALLOWED)
    yield server
    server.stop()


def test_cors_off_by_default(server: Server) -> None:
    api = Api(server)
    response = preflight(server, f"{api.prefix}/jobs", ALLOWED)
    assert "access-control-allow-origin" not in response.headers

    response = api.client.get(f"{api.prefix}/files", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_configured_origin_allowed(cors_server: Server) -> None:
    api = Api(cors_server)
    response = preflight(cors_server, f"{api.prefix}/jobs", ALLOWED)
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "POST" in response.headers["access-control-allow-methods"]

    response = api.client.get(f"{api.prefix}/files", headers={"Origin": ALLOWED})
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "content-disposition" in response.headers["access-control-expose-headers"].lower()


def test_other_origin_gets_no_cors_headers(cors_server: Server) -> None:
    api = Api(cors_server)
    response = preflight(cors_server, f"{api.prefix}/jobs", OTHER)
    assert "access-control-allow-origin" not in response.headers

    response = api.client.get(f"{api.prefix}/files", headers={"Origin": OTHER})
    assert "access-control-allow-origin" not in response.headers


async def test_websocket_origin_follows_cors_setting(cors_server: Server, server: Server) -> None:
    allowed_api = Api(cors_server)
    async with websockets.connect(allowed_api.ws_url(), origin=ALLOWED) as ws:
        assert '"snapshot"' in await ws.recv()

    with pytest.raises(websockets.InvalidStatus) as other:
        async with websockets.connect(allowed_api.ws_url(), origin=OTHER):
            pass
    assert other.value.response.status_code == 403

    default_api = Api(server)
    with pytest.raises(websockets.InvalidStatus) as default:
        async with websockets.connect(default_api.ws_url(), origin=ALLOWED):
            pass
    assert default.value.response.status_code == 403

    async with websockets.connect(default_api.ws_url(), origin=server.url) as ws:
        assert '"snapshot"' in await ws.recv()


@pytest.mark.parametrize("origin", ["app.example", "http://app.example/path", "ftp://app.example", ""])
def test_invalid_cors_origin_rejected(origin: str) -> None:
    with pytest.raises(SettingsError, match="--cors-origins"):
        Settings(cors_origins=(origin,))
