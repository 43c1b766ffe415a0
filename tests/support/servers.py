"""Transport settings for servers started inside a test: kvservice's defaults, as its
composition root builds them, with what a test needs changed (port 0, fewer threads)."""

from __future__ import annotations

import dataclasses
from typing import Any

from kvservice.__main__ import resp_settings, server_settings
from kvservice.config import Config
from kvservice.execution import Execution, ExecutionPolicy
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.http.app import create_app
from kvservice.http.server import ServerSettings
from kvservice.metrics import Metrics
from kvservice.resp.server import RespSettings
from kvservice.store import Store
from kvservice.store.service import StoreService


def http_settings(
    *, serve_inline: bool = False, execution: ExecutionPolicy | None = None, **config: Any
) -> ServerSettings:
    """The HTTP transport's settings for a Config with these fields, on a free port; served
    as `execution` says, or else every request by workers unless `serve_inline`."""
    settings = server_settings(Config(**{"port": 0, **config}))
    if execution is None:
        execution = ExecutionPolicy.everything(
            Execution.INLINE if serve_inline else Execution.WORKERS
        )
    return dataclasses.replace(settings, execution=execution)


def resp_test_settings(**overrides: Any) -> RespSettings:
    """The RESP transport's default settings on a free port, with these fields replaced."""
    return dataclasses.replace(resp_settings(Config(resp_port=0)), **overrides)


def kv_app_with_metrics(store: Store) -> Any:
    """kvservice's app over `store` as the service serves it by default: behind the store
    service, with /_metrics and the change feed (/_watch, the history's long-poll)."""
    served = StoreService(store)
    metrics = Metrics(served)
    feed = ChangeFeed(served, FeedSettings())
    metrics.watch_feed(feed.figures)
    return create_app(served, metrics_page=metrics.render, feed=feed)
