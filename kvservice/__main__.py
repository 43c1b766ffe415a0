"""The composition root: config -> store backend -> every enabled transport's server -> run.

A transport is one entry in `TRANSPORTS`: a function from the config and the shared store
to a server (`lifecycle.Runnable`), or None when the config leaves it off.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from kvservice.config import Config, load_config
from kvservice.http.app import create_app
from kvservice.http.server import Server, ServerSettings
from kvservice.lifecycle import Runnable, configure_logging, run_until_signalled
from kvservice.resp.server import RespServer, RespSettings
from kvservice.store import Store
from kvservice.store.memory import MemoryStore


def build_store(config: Config) -> Store:
    """The store with the configured window and budgets."""
    return MemoryStore(
        history_window_ms=round(config.history_window_s * 1000),
        max_bytes=config.max_bytes,
        max_value_bytes=config.max_value_bytes,
    )


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


def http_transport(config: Config, store: Store) -> Runnable | None:
    """HTTP on --port, always on."""
    return Server(create_app(store), server_settings(config))


def resp_transport(config: Config, store: Store) -> Runnable | None:
    """The Redis protocol on --resp-port, off unless that is set."""
    return None if config.resp_port is None else RespServer(store, resp_settings(config))


TRANSPORTS: dict[str, Callable[[Config, Store], Runnable | None]] = {
    "http": http_transport,
    "resp": resp_transport,
}
"""Every transport by name; each serves the same store."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run kvservice until SIGTERM or SIGINT."""
    config = load_config(argv)
    configure_logging(config.log_level)
    store = build_store(config)
    servers = [make(config, store) for make in TRANSPORTS.values()]
    return run_until_signalled([server for server in servers if server is not None])


if __name__ == "__main__":
    sys.exit(main())
