"""kvservice's configuration: one frozen dataclass, built once from flags with env fallbacks.

This is the only module of kvservice that reads the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Config:
    """Every setting of a kvservice process."""

    host: str = "127.0.0.1"
    port: int = 3000
    history_window_s: float = 120.0
    max_bytes: int = 256 * 1024 * 1024
    max_value_bytes: int = 1024
    threads: int = 32
    listen_backlog: int = 1024
    socket_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024
    log_level: str = "INFO"
    resp_port: int | None = None
    """The Redis protocol's port on `host`; None: off."""
    resp_max_connections: int = 512
    resp_idle_timeout_s: float = 300.0


@dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable, parser and help text."""

    flag: str
    env: str
    field: str
    parse: Callable[[str], Any]
    help: str


def positive_int(text: str) -> int:
    """An integer > 0, for argparse."""
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text} is not a positive integer")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (0 picks a free one), for argparse."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text} is not a port number (0-65535)")
    return value


def optional_port(text: str) -> int | None:
    """A TCP port as `port_number` does, or None for an empty string (unset), for argparse."""
    return port_number(text) if text.strip() else None


def positive_float(text: str) -> float:
    """A number > 0, for argparse."""
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number")
    return value


def log_level(text: str) -> str:
    """One of LOG_LEVELS, any case."""
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"{text} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def _named(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    # argparse names the type in its error message: "invalid <name> value: 'x'".
    def named_parse(text: str) -> Any:
        return parse(text)

    named_parse.__name__ = name
    return named_parse


OPTIONS = (
    Option("--host", "KV_HOST", "host", _named(str, "address"), "address to listen on"),
    Option("--port", "KV_PORT", "port", _named(port_number, "port"), "TCP port"),
    Option(
        "--history-window",
        "KV_HISTORY_WINDOW",
        "history_window_s",
        _named(positive_float, "seconds"),
        "seconds of write history kept per key",
    ),
    Option(
        "--max-bytes",
        "KV_MAX_BYTES",
        "max_bytes",
        _named(positive_int, "bytes"),
        "memory budget for keys, values and history; writes past it get 507",
    ),
    Option(
        "--max-value-bytes",
        "KV_MAX_VALUE_BYTES",
        "max_value_bytes",
        _named(positive_int, "bytes"),
        "largest value accepted; larger ones get 413",
    ),
    Option(
        "--threads",
        "KV_THREADS",
        "threads",
        _named(positive_int, "count"),
        "worker threads, the number of requests served at once",
    ),
    Option(
        "--listen-backlog",
        "KV_LISTEN_BACKLOG",
        "listen_backlog",
        _named(positive_int, "count"),
        "connections the kernel queues before accept",
    ),
    Option(
        "--socket-timeout",
        "KV_SOCKET_TIMEOUT",
        "socket_timeout_s",
        _named(positive_float, "seconds"),
        "how long a connection may sit idle, or a read or write stall",
    ),
    Option(
        "--request-timeout",
        "KV_REQUEST_TIMEOUT",
        "request_timeout_s",
        _named(positive_float, "seconds"),
        "how long a request may take to arrive once it started; then 408",
    ),
    Option(
        "--max-connections",
        "KV_MAX_CONNECTIONS",
        "max_connections",
        _named(positive_int, "count"),
        "open connections at most; more get 503",
    ),
    Option(
        "--max-header-bytes",
        "KV_MAX_HEADER_BYTES",
        "max_header_bytes",
        _named(positive_int, "bytes"),
        "request line plus headers; larger gets 414/431",
    ),
    Option(
        "--log-level",
        "KV_LOG_LEVEL",
        "log_level",
        _named(log_level, "level"),
        "DEBUG, INFO, WARNING or ERROR",
    ),
    Option(
        "--resp-port",
        "KV_RESP_PORT",
        "resp_port",
        _named(optional_port, "port"),
        "serve the Redis protocol (RESP2) on this port of --host too; unset or empty: off",
    ),
    Option(
        "--resp-max-connections",
        "KV_RESP_MAX_CONNECTIONS",
        "resp_max_connections",
        _named(positive_int, "count"),
        "RESP connections open at once; more are refused",
    ),
    Option(
        "--resp-idle-timeout",
        "KV_RESP_IDLE_TIMEOUT",
        "resp_idle_timeout_s",
        _named(positive_float, "seconds"),
        "how long a RESP connection may sit idle or stall",
    ),
)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command-line parser; each option's default comes from its environment variable."""
    parser = argparse.ArgumentParser(
        prog="kvservice",
        description="An in-memory HTTP key-value store with a write history per key.",
    )
    add_options(parser, OPTIONS, Config(), environ)
    return parser


def add_options(
    parser: argparse.ArgumentParser,
    options: Sequence[Option],
    defaults: object,
    environ: Mapping[str, str],
) -> None:
    """Add each option as a flag whose default is its environment variable, else the field of
    `defaults` (a config dataclass instance) it sets."""
    for option in options:
        default = getattr(defaults, option.field)
        env_value = environ.get(option.env)
        parser.add_argument(
            option.flag,
            dest=option.field,
            type=option.parse,
            metavar=getattr(option.parse, "__name__", "VALUE").upper(),
            # argparse runs `type` on string defaults, so bad environment values fail like flags.
            default=env_value if env_value is not None else default,
            help=f"{option.help} (env {option.env}, default {default})",
        )


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse flags over environment over defaults; exits with a usage error on bad values."""
    parser = build_parser(os.environ if environ is None else environ)
    namespace = parser.parse_args(argv)
    return Config(**vars(namespace))
