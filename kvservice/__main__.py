"""The composition root: config -> store -> HTTP app -> server."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kvservice.config import Config, load_config
from kvservice.http_api import create_app
from kvservice.lifecycle import run_until_signalled
from kvservice.server import Server, ServerSettings, configure_logging
from kvservice.store import Store


def build_store(config: Config) -> Store:
    """The store with the configured window and budgets."""
    return Store(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run kvservice until SIGTERM or SIGINT."""
    config = load_config(argv)
    configure_logging(config.log_level)
    app = create_app(build_store(config))
    return run_until_signalled([Server(app, server_settings(config))])


if __name__ == "__main__":
    sys.exit(main())
