"""Shared fixtures: a real kvservice (store + HTTP app + cheroot server) on a free loopback port,
and real Redis servers (one, and a three-primary cluster) for the Redis backend."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from kvservice.execution import execution_for
from kvservice.http.app import create_app
from kvservice.http.server import Server, ServerSettings
from kvservice.store import Store
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from tests.support.certificates import Certificates, make_certificates
from tests.support.redis_servers import (
    RedisClusterProcesses,
    RedisProcess,
    running_cluster,
    running_redis,
)
from tests.support.servers import change_feed, http_settings

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
    """Start kvservice servers on a given store, or a MemoryStore with these options, behind
    the store service and with the change feed as kvservice serves it, and custom
    ServerSettings; returns the base URL."""
    servers: list[Server] = []
    feeds = ExitStack()

    def start(
        *, store: Store | None = None, settings: ServerSettings | None = None, **store_options: Any
    ) -> str:
        store = StoreService(store or MemoryStore(**store_options))
        feed = feeds.enter_context(change_feed(store))
        # As kvservice runs it: where requests are served is the execution policy's.
        default = http_settings(threads=8, socket_timeout_s=2.0, execution=execution_for(store))
        server = Server(create_app(store, feed=feed), settings or default)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    feeds.close()  # as kvservice stops: watchers are told first, then the servers drain
    for server in servers:
        stop = threading.Thread(target=server.stop)
        stop.start()
        background_stops.append(stop)


@pytest.fixture
def kv_url(start_kv: StartKV) -> str:
    """The base URL of a kvservice with default store settings."""
    return start_kv()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One redis-server for the session (skipped without one, failed under CI); tests that
    use it flush it first."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """A three-primary Redis Cluster for the session; tests that use it flush it first."""
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA and a server certificate it signed for 127.0.0.1 and localhost."""
    return make_certificates(tmp_path_factory.mktemp("tls"))
