"""Shared fixtures: a real kvservice (store + HTTP app + cheroot server) on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from kvservice.http_api import create_app
from kvservice.server import Server, ServerSettings
from kvservice.store import Store

StartKV = Callable[..., str]


@pytest.fixture(scope="session")
def background_stops() -> Iterator[list[threading.Thread]]:
    """Stopping a cheroot server waits up to 0.5 s for its selector loop; do it off the test's
    critical path and wait for all of them once, at the end of the session."""
    stops: list[threading.Thread] = []
    yield stops
    for stop in stops:
        stop.join()


@pytest.fixture
def start_kv(background_stops: list[threading.Thread]) -> Iterator[StartKV]:
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
        stop = threading.Thread(target=server.stop)
        stop.start()
        background_stops.append(stop)


@pytest.fixture
def kv_url(start_kv: StartKV) -> str:
    """The base URL of a kvservice with default store settings."""
    return start_kv()
