"""The composition root: config -> store backend, wrapped in the store service, with its
sweeper of expired keys and the change feed's hub -> every enabled transport's server -> run;
at the stop, the feed's watchers are ended first, then the servers drain.

`kvservice backup --data-dir DIR FILE` is the one subcommand: an online backup of the
durable store's directory (`kvservice.store.durable.backup`).

A transport is one entry in `TRANSPORTS`: a function from the config, the shared store, the
shared `Security` (tokens, TLS), the shared metrics (None with --metrics off), the shared
`ReplyBudget` (--max-reply-buffer-bytes, for every transport together) and the shared
`ChangeFeed` to a server (`lifecycle.Runnable`), or None when the config leaves it off.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kvservice.auth import TokenFileError, Tokens
from kvservice.config import Config, load_backup_arguments, load_config
from kvservice.execution import execution_for
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.http.app import create_app
from kvservice.http.bearer import BearerTokens
from kvservice.http.server import RequestObserver, Server, ServerSettings, write_access_line
from kvservice.lifecycle import (
    Runnable,
    configure_logging,
    fit_open_files,
    run_until_signalled,
)
from kvservice.metrics import Metrics
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.server import RespServer, RespSettings
from kvservice.store import Closable, Store, StoreMisconfigured, StoreUnavailable
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from kvservice.store.sweeper import Sweeper
from kvservice.tls import TLSSetupError, server_context

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


def durable_store(config: Config) -> Store:
    """The memory store kept on disk in --data-dir, synced as --fsync says."""
    from kvservice.store.durable import DataDirError, DurableStore

    assert config.data_dir is not None
    try:
        return DurableStore(
            Path(config.data_dir),
            fsync=config.fsync,
            history_window_ms=round(config.history_window_s * 1000),
            max_bytes=config.max_bytes,
            max_value_bytes=config.max_value_bytes,
        )
    except DataDirError as error:
        raise StartupError(f"--data-dir: {error}") from error


def redis_store(config: Config) -> Store:
    """Redis or Redis Cluster at --store, with a connection for each worker thread of each
    transport (the execution policy runs every call of this store on one), and the metrics'."""
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
        connections=len(TRANSPORTS) * config.threads + 1,
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
"""Each store backend by the scheme of --store (`memory` has none); with --data-dir, memory is
`durable_store`."""


def build_store(config: Config) -> Store:
    """The store every transport serves: the backend --store (and --data-dir) names, behind
    the service that validates what clients ask (`StoreService`)."""
    return StoreService(build_backend(config))


def build_backend(config: Config) -> Store:
    """The backend --store (and --data-dir) names; raises StartupError for one that is not
    known, or --data-dir beside a store that keeps its data elsewhere."""
    scheme = "memory" if config.store == "memory" else urlsplit(config.store).scheme
    if config.data_dir is not None:
        if scheme != "memory":
            raise StartupError(
                f"--data-dir keeps the memory store's data on disk; --store {scheme}:// keeps "
                "it in Redis: give one or the other"
            )
        return durable_store(config)
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
        workers=config.threads,
    )


def http_transport_settings(
    config: Config, store: Store, tls: ssl.SSLContext | None = None
) -> ServerSettings:
    """The HTTP transport's settings for `store`: served on the event loop's thread or by
    --threads workers, as the execution policy says."""
    return dataclasses.replace(server_settings(config), execution=execution_for(store), tls=tls)


@dataclass(frozen=True)
class Security:
    """What every transport checks before it serves a client, shared by all of them."""

    tokens: Tokens | None = None
    """The tokens clients must present; None: anyone may read and write."""
    http_tls: ssl.SSLContext | None = None
    """HTTPS on --port; None: plain HTTP."""
    resp_tls: ssl.SSLContext | None = None
    """TLS on --resp-port; None: plain RESP."""


def build_security(config: Config) -> Security:
    """The tokens of --auth-tokens and the TLS of --tls-cert and --tls-key; raises
    StartupError if a file cannot be used."""
    http_tls = resp_tls = None
    if (config.tls_cert is None) != (config.tls_key is None):
        raise StartupError("--tls-cert and --tls-key go together: give both, or neither")
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            http_tls = server_context(config.tls_cert, config.tls_key, alpn=["http/1.1"])
            resp_tls = server_context(config.tls_cert, config.tls_key)
        except TLSSetupError as error:
            raise StartupError(f"--tls-cert/--tls-key: {error}") from error
    return Security(tokens=_build_tokens(config), http_tls=http_tls, resp_tls=resp_tls)


def _build_tokens(config: Config) -> Tokens | None:
    if config.auth_tokens is None:
        if not _is_loopback(config.host):
            logger.warning(
                "listening on %s without --auth-tokens: every client that can reach it can "
                "read, overwrite and delete every key",
                config.host,
            )
        return None
    try:
        tokens = Tokens.from_file(Path(config.auth_tokens))
    except TokenFileError as error:
        raise StartupError(f"--auth-tokens: {error}") from error
    logger.info("clients need one of %d tokens from %s", len(tokens), config.auth_tokens)
    return tokens


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def feed_settings(config: Config) -> FeedSettings:
    """The change feed's bounds."""
    return FeedSettings(
        max_watchers=config.max_watchers,
        queue_changes=config.watch_queue_changes,
        bookmark_interval_s=config.watch_bookmark_interval_s,
        max_wait_s=config.watch_max_wait_s,
    )


def http_transport(
    config: Config,
    store: Store,
    security: Security,
    metrics: Metrics | None,
    replies: ReplyBudget,
    feed: ChangeFeed,
) -> Runnable | None:
    """HTTP on --port, always on; with metrics, it counts requests and serves /_metrics;
    /_watch and the history's long-poll watch through `feed`."""
    app = create_app(store, metrics_page=None if metrics is None else metrics.render, feed=feed)
    if security.tokens is not None:
        app = BearerTokens(app, security.tokens)
    observers: list[RequestObserver] = [write_access_line]
    if metrics is not None:
        observers.append(metrics.observe_request)
    settings = http_transport_settings(config, store, security.http_tls)
    server = Server(app, settings, observers, reply_budget=replies)
    if metrics is not None:
        metrics.watch_http(server)
    return server


def resp_transport(
    config: Config,
    store: Store,
    security: Security,
    metrics: Metrics | None,
    replies: ReplyBudget,
    feed: ChangeFeed,
) -> Runnable | None:
    """The Redis protocol on --resp-port, off unless that is set; its keyspace notifications
    come from `feed`."""
    if config.resp_port is None:
        return None
    server = RespServer(
        store,
        resp_settings(config),
        tokens=security.tokens,
        tls=security.resp_tls,
        execution=execution_for(store),
        reply_budget=replies,
        changes=feed,  # keyspace notifications
    )
    if metrics is not None:
        metrics.watch_resp(server.figures)
    return server


Transport = Callable[
    [Config, Store, Security, "Metrics | None", ReplyBudget, ChangeFeed], Runnable | None
]
"""A transport's factory: config, the shared store, security, metrics, reply budget and change
feed -> its server."""

TRANSPORTS: dict[str, Transport] = {
    "http": http_transport,
    "resp": resp_transport,
}
"""Every transport by name; each serves the same store."""


def backup(argv: Sequence[str]) -> int:
    """`kvservice backup --data-dir DIR FILE`: 0 once FILE holds the copy, 2 if it cannot."""
    from kvservice.store.durable import DataDirError
    from kvservice.store.durable import backup as copy_data

    data_dir, target = load_backup_arguments(argv)
    configure_logging("INFO", "text")
    try:
        report = copy_data(Path(data_dir), Path(target))
    except (DataDirError, OSError) as error:
        logger.error("cannot back up: %s", error)
        return 2
    logger.info(
        "backed up %s to %s: %d keys, %d history entries, %d bytes",
        data_dir,
        target,
        report.keys,
        report.history_entries,
        report.bytes,
    )
    return 0


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"backup": backup}
"""What `kvservice NAME ...` runs instead of the service."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run kvservice until SIGTERM or SIGINT (or a subcommand)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        return SUBCOMMANDS[arguments[0]](arguments[1:])
    config = load_config(arguments)
    configure_logging(config.log_level, config.log_format)
    fit_open_files(
        config.max_connections + (0 if config.resp_port is None else config.resp_max_connections)
    )
    try:
        security = build_security(config)
        store = build_store(config)
        check_store(store)
    except (StartupError, ValueError) as error:
        logger.error("cannot start: %s", error)
        return 2
    replies = ReplyBudget(config.max_reply_buffer_bytes)
    feed = ChangeFeed(store, feed_settings(config))
    metrics = Metrics(store) if config.metrics else None
    if metrics is not None:
        metrics.watch_replies(replies)
        metrics.watch_feed(feed.figures)
    servers = [
        make(config, store, security, metrics, replies, feed) for make in TRANSPORTS.values()
    ]
    reloads = [] if security.tokens is None else [security.tokens.reload]
    sweeper = Sweeper(store)  # expired keys give their memory back though nobody reads them
    sweeper.start()
    try:
        return run_until_signalled(
            [server for server in servers if server is not None],
            on_reload=reloads,
            on_stopping=[feed.close],  # watchers are told, then the servers drain
        )
    finally:
        sweeper.stop()
        if isinstance(store, Closable):
            store.close()


if __name__ == "__main__":
    sys.exit(main())
