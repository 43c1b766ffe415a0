"""The test client's configuration: one frozen dataclass, built once from flags with env fallbacks.

This is the only module of testclient that reads the environment. The value parsers and the
`Option` record are kvservice's, so both programs accept and refuse the same spellings.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from kvservice.config import Option, add_options, log_level, port_number, positive_float
from testclient.checks import ALL_CHECKS
from testclient.clients import CLIENTS

RUN, SERVE = "run", "serve"
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Every setting of a test client process."""

    command: str = RUN
    checks: tuple[str, ...] = ()
    """The checks `run` runs, in order; empty means all of them."""
    kv_url: str = "http://localhost:3000"
    host: str = "127.0.0.1"
    port: int = 8000
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    log_level: str = "INFO"

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) seconds for each request to the kvservice."""
        return self.connect_timeout_s, self.read_timeout_s


def kv_url(text: str) -> str:
    """A kvservice base URL, for argparse: http(s)://host[:port][/path] or redis://host[:port],
    without query or fragment, trailing slash removed."""
    parts = urlsplit(text)
    if parts.scheme not in CLIENTS or not parts.hostname:
        schemes = ", ".join(f"{scheme}://" for scheme in CLIENTS)
        raise ValueError(f"{text!r} is not a URL with a host and one of {schemes}")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a query or fragment; give the service's base URL")
    if parts.scheme == "redis" and parts.path not in ("", "/", "/0"):
        raise ValueError(f"{text!r} names a database; kvservice has only database 0")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return text.rstrip("/")


def _named(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    # argparse names the type in its errors ("invalid port value: 'x'") and in the usage line.
    def named_parse(text: str) -> T:
        return parse(text)

    named_parse.__name__ = name
    return named_parse


COMMON_OPTIONS = (
    Option(
        "--kv-url",
        "KV_URL",
        "kv_url",
        _named(kv_url, "url"),
        "the kvservice to check: http://HOST:PORT, or redis://HOST:PORT for its RESP port",
    ),
    Option(
        "--connect-timeout",
        "TESTCLIENT_CONNECT_TIMEOUT",
        "connect_timeout_s",
        _named(positive_float, "seconds"),
        "seconds to wait for a connection to the kvservice",
    ),
    Option(
        "--read-timeout",
        "TESTCLIENT_READ_TIMEOUT",
        "read_timeout_s",
        _named(positive_float, "seconds"),
        "seconds to wait for each answer of the kvservice",
    ),
    Option(
        "--log-level",
        "TESTCLIENT_LOG_LEVEL",
        "log_level",
        _named(log_level, "level"),
        "DEBUG, INFO, WARNING or ERROR",
    ),
)
SERVE_OPTIONS = (
    Option("--host", "TESTCLIENT_HOST", "host", _named(str, "address"), "address to listen on"),
    Option(
        "--port", "TESTCLIENT_PORT", "port", _named(port_number, "port"), "TCP port to listen on"
    ),
)


def build_parser(
    environ: Mapping[str, str], check_names: Collection[str]
) -> argparse.ArgumentParser:
    """The command-line parser: `run [CHECK ...]` and `serve`, defaults from the environment."""
    parser = argparse.ArgumentParser(
        prog="testclient",
        description="Checks that a running kvservice keeps its promises.",
        epilog="exit codes of run: 0 all passed, 1 a check failed, 2 usage error, "
        "3 the kvservice was unreachable, 4 a check cannot run over the URL's transport",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(RUN, help="run checks once and print a report")
    run.add_argument(
        "checks",
        nargs="*",
        metavar="CHECK",
        help=f"checks to run (default: all): {', '.join(check_names)}, {ALL_CHECKS}",
    )
    add_options(run, COMMON_OPTIONS, Config(), environ)
    serve = commands.add_parser(SERVE, help="serve the checks over HTTP until SIGTERM")
    add_options(serve, SERVE_OPTIONS + COMMON_OPTIONS, Config(), environ)
    return parser


def load_config(
    check_names: Collection[str],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Parse flags over environment over defaults; exits with a usage error (2) on bad values."""
    parser = build_parser(os.environ if environ is None else environ, check_names)
    settings = vars(parser.parse_args(argv))
    requested = settings.pop("checks", [])
    unknown = [name for name in requested if name not in check_names and name != ALL_CHECKS]
    if unknown:
        parser.error(f"unknown check {', '.join(unknown)}; choose from {', '.join(check_names)}")
    checks = () if ALL_CHECKS in requested else tuple(dict.fromkeys(requested))
    return Config(checks=checks, **settings)
