"""Shared fixtures: a real kvservice (store + HTTP app + cheroot server) on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kvservice.http_api import create_app
from kvservice.server import Server, ServerSettings
from kvservice.store import Store

StartKV = Callable[..., str]


@pytest.fixture
def start_kv() -> Iterator[StartKV]:
    """Start kvservice servers with custom Store/ServerSettings arguments; returns the base URL."""
    servers: list[Server] = []

    def start(*, settings: ServerSettings | None = None, **store_options: object) -> str:
        server = Server(
            create_app(Store(**store_options)),  # type: ignore[arg-type]
            settings or ServerSettings(port=0, threads=8, socket_timeout_s=2.0),
        )
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def kv_url(start_kv: StartKV) -> str:
    """The base URL of a kvservice with default store settings."""
    return start_kv()
