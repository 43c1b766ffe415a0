"""The test client's configuration: one frozen dataclass, built once from flags with env fallbacks.

Each setting is declared once, with `kvservice.config.setting`, so both programs accept and
refuse the same spellings. This is the only module of testclient that reads the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from kvservice.config import (
    ADDRESS,
    FILE,
    LEVEL,
    LOG_FORMAT,
    PORT,
    SECONDS,
    add_settings,
    add_version,
    duration_s,
    named,
    parse_settings,
    setting,
    settings_of,
)
from testclient.checks import ALL_CHECKS
from testclient.clients import CLIENTS, Credentials
from testclient.exit_codes import exit_codes_help

RUN, SERVE = "run", "serve"
TEXT, JSON = "text", "json"
"""The formats of `run`'s output: the readable report, or the HTTP service's JSON document."""


def optional_seconds(text: str) -> float | None:
    """A duration > 0 in seconds (units as `duration_s` takes them), or None for an empty
    string (off)."""
    return duration_s(text) if text.strip() else None


TOKEN = named(lambda text: text.strip() or None, "token")
"""A token, or None for an empty string (unset)."""


def kv_url(text: str) -> str:
    """A kvservice base URL, for argparse: http(s)://host[:port][/path] or redis(s)://host[:port],
    without query or fragment, trailing slash removed."""
    parts = urlsplit(text)
    if parts.scheme not in CLIENTS or not parts.hostname:
        schemes = ", ".join(f"{scheme}://" for scheme in CLIENTS)
        raise ValueError(f"{text!r} is not a URL with a host and one of {schemes}")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a query or fragment; give the service's base URL")
    if parts.scheme in ("redis", "rediss") and parts.path not in ("", "/", "/0"):
        raise ValueError(f"{text!r} names a database; kvservice has only database 0")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return text.rstrip("/")


@dataclass(frozen=True)
class Config:
    """Every setting of a test client process."""

    command: str = RUN
    checks: tuple[str, ...] = ()
    """The checks `run` runs, in order; empty means all of them."""
    quiet: bool = False
    """`run --quiet`: report only the checks that did not pass, and the summary."""
    output_format: str = TEXT
    """`run --format`: TEXT, or JSON (the HTTP service's document, one object on stdout)."""
    kv_url: str = setting(
        "http://localhost:3000",
        "--kv-url",
        "KV_URL",
        named(kv_url, "url"),
        "the kvservice to check: http(s)://HOST:PORT, or redis(s)://HOST:PORT for its RESP port",
    )
    host: str = setting("127.0.0.1", "--host", "TESTCLIENT_HOST", ADDRESS, "address to listen on")
    port: int = setting(8000, "--port", "TESTCLIENT_PORT", PORT, "TCP port to listen on")
    interval_s: float | None = setting(
        None,
        "--interval",
        "TESTCLIENT_INTERVAL",
        named(optional_seconds, "seconds"),
        "run every check every SECONDS in the background (a slow round delays the next); "
        "unset or empty: off",
    )
    connect_timeout_s: float = setting(
        2.0,
        "--connect-timeout",
        "TESTCLIENT_CONNECT_TIMEOUT",
        SECONDS,
        "seconds to wait for a connection to the kvservice",
    )
    read_timeout_s: float = setting(
        5.0,
        "--read-timeout",
        "TESTCLIENT_READ_TIMEOUT",
        SECONDS,
        "seconds to wait for each answer of the kvservice",
    )
    log_level: str = setting(
        "INFO", "--log-level", "TESTCLIENT_LOG_LEVEL", LEVEL, "DEBUG, INFO, WARNING or ERROR"
    )
    log_format: str = setting(
        "text",
        "--log-format",
        "TESTCLIENT_LOG_FORMAT",
        LOG_FORMAT,
        "text (one line a record) or json (one JSON object a line, for log collectors)",
    )
    kv_token: str | None = setting(
        None,
        "--kv-token",
        "KV_TOKEN",
        TOKEN,
        "a write token of the kvservice, sent with every request; prefer the environment "
        "variable, which other users cannot see in the process list",
    )
    kv_read_token: str | None = setting(
        None,
        "--kv-read-token",
        "KV_READ_TOKEN",
        TOKEN,
        "a read token of the kvservice: test_tokens then checks that it reads but cannot write",
    )
    ca_cert: str | None = setting(
        None,
        "--ca-cert",
        "KV_CA_CERT",
        FILE,
        "PEM file of the CA that signed the kvservice's certificate (https://, rediss://)",
    )

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) seconds for each request to the kvservice."""
        return self.connect_timeout_s, self.read_timeout_s

    @property
    def credentials(self) -> Credentials:
        """The tokens to present to the kvservice and the CA to trust."""
        return Credentials(self.kv_token, self.kv_read_token, self.ca_cert)


SERVE_ONLY = ("host", "port", "interval_s")
"""Settings of `serve` alone; `run` takes the others."""


def build_parser(
    environ: Mapping[str, str], check_names: Collection[str]
) -> argparse.ArgumentParser:
    """The command-line parser: `run [CHECK ...]` and `serve`, defaults from the environment."""
    parser = argparse.ArgumentParser(
        prog="testclient",
        description="Checks that a running kvservice keeps its promises.",
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog is a table
    )
    add_version(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(RUN, help="run checks once and print a report")
    run.add_argument(
        "checks",
        nargs="*",
        metavar="CHECK",
        help=f"checks to run (default: all): {', '.join(check_names)}, {ALL_CHECKS}",
    )
    every_setting = settings_of(Config)
    add_settings(run, [field for field in every_setting if field.name not in SERVE_ONLY], environ)
    run.add_argument(
        "--quiet",
        action="store_true",
        help="report only the checks that did not pass, and the summary line",
    )
    run.add_argument(
        "--format",
        dest="output_format",
        choices=(TEXT, JSON),
        default=TEXT,
        help="text: the report (default); json: the HTTP service's document, on stdout",
    )
    serve = commands.add_parser(SERVE, help="serve the checks over HTTP until SIGTERM")
    add_settings(serve, every_setting, environ)
    return parser


def load_config(
    check_names: Collection[str],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Parse flags over environment over defaults; exits with a usage error (2) on bad values."""
    parser = build_parser(os.environ if environ is None else environ, check_names)
    settings = parse_settings(parser, argv)
    requested = settings.pop("checks", [])
    unknown = [name for name in requested if name not in check_names and name != ALL_CHECKS]
    if unknown:
        parser.error(f"unknown check {', '.join(unknown)}; choose from {', '.join(check_names)}")
    checks = () if ALL_CHECKS in requested else tuple(dict.fromkeys(requested))
    return Config(checks=checks, **settings)
