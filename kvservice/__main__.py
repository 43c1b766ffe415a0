"""The composition root: config -> store backend -> every enabled transport's server -> run.

A transport is one entry in `TRANSPORTS`: a function from the config, the shared store and
the shared metrics (None with --metrics off) to a server (`lifecycle.Runnable`), or None when
the config leaves it off.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from kvservice.config import Config, load_config
from kvservice.http.app import create_app
from kvservice.http.server import RequestObserver, Server, ServerSettings, write_access_line
from kvservice.lifecycle import Runnable, configure_logging, run_until_signalled
from kvservice.metrics import Metrics
from kvservice.resp.server import RespServer, RespSettings
from kvservice.store import Store, StoreMisconfigured, StoreUnavailable
from kvservice.store.memory import MemoryStore

logger = logging.getLogger("kvservice")


class StartupError(Exception):
    """The configuration cannot be served; the message says why (exit code 2)."""


def memory_store(config: Config) -> Store:
    """The default: everything in this process, with the configured window and budgets."""
    return MemoryStore(
        history_window_ms=round(config.history_window_s * 1000),
        max_bytes=config.max_bytes,
        max_value_bytes=config.max_value_bytes,
    )


def redis_store(config: Config) -> Store:
    """Redis or Redis Cluster at --store, with a connection for each worker thread and RESP's."""
    try:
        from kvservice.store.redis import RedisStore
    except ImportError as error:
        raise StartupError(
            f"--store {config.store.split('://')[0]}:// needs redis-py: "
            "pip install 'kvservice[redis]'"
        ) from error
    logger.info("the memory budget is Redis's maxmemory; --max-bytes does not apply")
    return RedisStore.from_url(
        config.store,
        connections=config.threads + 1,
        timeout_s=config.store_timeout_s,
        history_window_ms=round(config.history_window_s * 1000),
        max_value_bytes=config.max_value_bytes,
    )


STORES: dict[str, Callable[[Config], Store]] = {
    "memory": memory_store,
    "redis": redis_store,
    "rediss": redis_store,
    "redis+cluster": redis_store,
    "rediss+cluster": redis_store,
}
"""Each store backend by the scheme of --store (`memory` has none)."""


def build_store(config: Config) -> Store:
    """The backend --store names; raises StartupError for one that is not known."""
    scheme = "memory" if config.store == "memory" else urlsplit(config.store).scheme
    make = STORES.get(scheme)
    if make is None:
        raise StartupError(
            f"--store: unknown kind {scheme!r}; use memory or "
            + ", ".join(f"{name}://" for name in STORES if name != "memory")
        )
    return make(config)


def check_store(store: Store) -> None:
    """Refuse a store that could lose acknowledged data (StartupError); start, warning, when
    it cannot be reached yet: requests get 503 until it answers."""
    try:
        store.check_ready()
    except StoreMisconfigured as error:
        raise StartupError(str(error)) from error
    except StoreUnavailable as error:
        logger.warning("%s Serving 503 until it answers.", error)


def server_settings(config: Config) -> ServerSettings:
    """The transport's limits. Its body ceiling sits well above the value limit so that
    the app, not the transport, answers a value that is slightly too large."""
    return ServerSettings(
        host=config.host,
        port=config.port,
        threads=config.threads,
        listen_backlog=config.listen_backlog,
        socket_timeout_s=config.socket_timeout_s,
        request_timeout_s=config.request_timeout_s,
        max_connections=config.max_connections,
        max_header_bytes=config.max_header_bytes,
        max_body_bytes=max(64 * 1024, 2 * config.max_value_bytes),
        # A client that asks first is told at once when its value will not fit.
        max_continued_body_bytes=config.max_value_bytes,
    )


def resp_settings(config: Config) -> RespSettings:
    """The RESP transport's limits: one argument may exceed the value limit by a little, so
    that the store, not the parser, answers a value that is slightly too large."""
    assert config.resp_port is not None
    return RespSettings(
        host=config.host,
        port=config.resp_port,
        max_connections=config.resp_max_connections,
        idle_timeout_s=config.resp_idle_timeout_s,
        max_argument_bytes=config.max_value_bytes + 1024,
        max_request_bytes=max(64 * 1024, 2 * (config.max_value_bytes + 1024)),
        listen_backlog=config.listen_backlog,
    )


def http_transport_settings(config: Config, store: Store) -> ServerSettings:
    """The HTTP transport's settings for `store`: one in this process is served on the event
    loop's thread; one that waits on a network, by --threads workers."""
    return dataclasses.replace(server_settings(config), serve_inline=not store.remote)


def http_transport(config: Config, store: Store, metrics: Metrics | None) -> Runnable | None:
    """HTTP on --port, always on; with metrics, it counts requests and serves /_metrics."""
    if metrics is None:
        return Server(create_app(store), http_transport_settings(config, store))
    observers: list[RequestObserver] = [write_access_line, metrics.observe_request]
    server = Server(
        create_app(store, metrics_page=metrics.render),
        http_transport_settings(config, store),
        observers,
    )
    metrics.watch_http(server)
    return server


def resp_transport(config: Config, store: Store, metrics: Metrics | None) -> Runnable | None:
    """The Redis protocol on --resp-port, off unless that is set."""
    if config.resp_port is None:
        return None
    server = RespServer(store, resp_settings(config))
    if metrics is not None:
        metrics.watch_resp(server.figures)
    return server


TRANSPORTS: dict[str, Callable[[Config, Store, Metrics | None], Runnable | None]] = {
    "http": http_transport,
    "resp": resp_transport,
}
"""Every transport by name; each serves the same store."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run kvservice until SIGTERM or SIGINT."""
    config = load_config(argv)
    configure_logging(config.log_level, config.log_format)
    try:
        store = build_store(config)
        check_store(store)
    except (StartupError, ValueError) as error:
        logger.error("cannot start: %s", error)
        return 2
    metrics = Metrics(store) if config.metrics else None
    servers = [make(config, store, metrics) for make in TRANSPORTS.values()]
    return run_until_signalled([server for server in servers if server is not None])


if __name__ == "__main__":
    sys.exit(main())
