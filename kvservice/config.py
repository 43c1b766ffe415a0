"""kvservice's configuration: one frozen dataclass, built once from flags with env fallbacks.

Each setting is declared once, as a field of `Config` made by `setting()`: its default, flag,
environment variable, parser and help text together. The parser, `--help` and the README
all follow from that one line. The parsers and `add_settings` are shared with the test
client, so both programs accept and refuse the same spellings.

This is the only module of kvservice that reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvservice import __version__

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FSYNC_POLICIES = ("always", "everysec", "off")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Flag:
    """How one setting is given: its flag, environment variable, parser and help text."""

    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str


def setting(default: Any, flag: str, env: str, parse: Callable[[str], Any], help: str) -> Any:
    """A config dataclass field with its default, settable by `flag` or `env`."""
    return dataclasses.field(default=default, metadata={"flag": Flag(flag, env, parse, help)})


def named(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """`parse` under the name argparse shows in usage and errors ("invalid port value"); its
    ValueError's message, which says what is accepted, becomes the error argparse shows."""

    def named_parse(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"invalid {name} value {text!r}: {error}") from None

    named_parse.__name__ = name
    return named_parse


def _integer(text: str, accepted: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(accepted) from None


def positive_int(text: str) -> int:
    """An integer > 0."""
    accepted = "give a whole number of at least 1"
    value = _integer(text, accepted)
    if value <= 0:
        raise ValueError(accepted)
    return value


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (0 picks a free one)."""
    accepted = "give a port number from 0 to 65535 (0 picks a free one)"
    value = _integer(text, accepted)
    if not 0 <= value <= 65535:
        raise ValueError(accepted)
    return value


def optional_port(text: str) -> int | None:
    """A TCP port as `port_number` takes it, or None for an empty string (unset)."""
    return port_number(text) if text.strip() else None


_QUANTITY = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")

BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
"""Units of a size, any case: SI's kB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024. A bare
K, M or G is refused, since tools disagree on which it means."""
SECONDS_PER_UNIT = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
"""Units of a duration; a bare number is seconds."""


def _quantity(text: str, units: Mapping[str, float], accepted: str) -> float:
    """A positive number times its unit from `units`; ValueError saying `accepted` if not."""
    match = _QUANTITY.fullmatch(text)
    unit = match and units.get(match[2].lower())
    if match is None or unit is None or not float(match[1]) > 0:
        raise ValueError(accepted)
    return float(match[1]) * unit


def byte_size(text: str) -> int:
    """A whole number of bytes > 0, bare or with a unit of BYTE_UNITS: 1024, 64KiB, 10MB."""
    accepted = (
        "give a whole number of bytes of at least 1, bare or with a unit: "
        "65536, 64KiB, 10MB, 1GiB (kB, MB, GB are powers of 1000; KiB, MiB, GiB of 1024)"
    )
    size = _quantity(text, BYTE_UNITS, accepted)
    if size != int(size):
        raise ValueError(accepted)
    return int(size)


def duration_s(text: str) -> float:
    """A duration > 0 in seconds, bare or with a unit of SECONDS_PER_UNIT: 2.5, 500ms, 2m."""
    return _quantity(text, SECONDS_PER_UNIT, "give a duration above 0: 120, 2.5s, 500ms, 2m, 1h")


def store_location(text: str) -> str:
    """`memory`, or the URL of the service the data lives in (its scheme is checked against
    the backends the composition root knows)."""
    if text == "memory":
        return text
    parts = urllib.parse.urlsplit(text)
    if not parts.scheme or not parts.netloc:
        raise ValueError("not memory and not a URL such as redis://host:6379")
    return text


def optional_path(text: str) -> str | None:
    """A file name, or None for an empty string (unset)."""
    return text if text.strip() else None


def log_level(text: str) -> str:
    """One of LOG_LEVELS, any case."""
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"give one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def log_format(text: str) -> str:
    """One of LOG_FORMATS, any case."""
    if text.lower() not in LOG_FORMATS:
        raise ValueError(f"give one of {', '.join(LOG_FORMATS)}")
    return text.lower()


def fsync_policy(text: str) -> str:
    """One of FSYNC_POLICIES, any case."""
    if text.lower() not in FSYNC_POLICIES:
        raise ValueError(f"give one of {', '.join(FSYNC_POLICIES)}")
    return text.lower()


def on_off(text: str) -> bool:
    """on or off (also true/false, yes/no, 1/0), any case."""
    value = {"on": True, "true": True, "yes": True, "1": True}.get(text.strip().lower())
    if value is None and text.strip().lower() not in ("off", "false", "no", "0"):
        raise ValueError("give on or off")
    return bool(value)


ADDRESS = named(str, "address")
PORT = named(port_number, "port")
SECONDS = named(duration_s, "seconds")
BYTES = named(byte_size, "bytes")
COUNT = named(positive_int, "count")
LEVEL = named(log_level, "level")
LOG_FORMAT = named(log_format, "format")
SWITCH = named(on_off, "switch")
FILE = named(optional_path, "file")
DIRECTORY = named(optional_path, "directory")
FSYNC = named(fsync_policy, "policy")


@dataclass(frozen=True)
class Config:
    """Every setting of a kvservice process."""

    host: str = setting("127.0.0.1", "--host", "KV_HOST", ADDRESS, "address to listen on")
    store: str = setting(
        "memory",
        "--store",
        "KV_STORE",
        named(store_location, "url"),
        "where the data lives: memory (this process), redis://[user:password@]host:port[/db], "
        "rediss://... (TLS), or redis+cluster://host:port[,host:port...] (a Redis Cluster)",
    )
    store_timeout_s: float = setting(
        2.0,
        "--store-timeout",
        "KV_STORE_TIMEOUT",
        SECONDS,
        "seconds to wait for Redis to connect or answer; past it the request gets 503",
    )
    data_dir: str | None = setting(
        None,
        "--data-dir",
        "KV_DATA_DIR",
        DIRECTORY,
        "keep the data on disk in this directory (made if missing; one kvservice at a time): "
        "values, ETags and the history window survive restarts and crashes; unset: memory "
        "only, nothing written anywhere; not with --store redis://",
    )
    fsync: str = setting(
        "always",
        "--fsync",
        "KV_FSYNC",
        FSYNC,
        "with --data-dir, when writes reach the disk: always (synced before the write is "
        "acknowledged), everysec (synced about once a second: a power cut loses up to about "
        "1 s of writes), off (when the OS decides)",
    )
    port: int = setting(3000, "--port", "KV_PORT", PORT, "TCP port (0 picks a free one)")
    history_window_s: float = setting(
        120.0,
        "--history-window",
        "KV_HISTORY_WINDOW",
        SECONDS,
        "seconds of write history kept per key",
    )
    max_bytes: int = setting(
        256 * 1024 * 1024,
        "--max-bytes",
        "KV_MAX_BYTES",
        BYTES,
        "memory budget of the memory store (with or without --data-dir); writes past it get "
        "507 (Redis: its maxmemory)",
    )
    max_value_bytes: int = setting(
        1024,
        "--max-value-bytes",
        "KV_MAX_VALUE_BYTES",
        BYTES,
        "largest value accepted; larger ones get 413",
    )
    threads: int = setting(
        32,
        "--threads",
        "KV_THREADS",
        COUNT,
        "worker threads per transport for a store that waits on a network (Redis) or a disk "
        "(--data-dir): requests served at once; the memory store alone is served on the "
        "event loops and uses none",
    )
    listen_backlog: int = setting(
        1024,
        "--listen-backlog",
        "KV_LISTEN_BACKLOG",
        COUNT,
        "connections the kernel queues before accept",
    )
    socket_timeout_s: float = setting(
        10.0,
        "--socket-timeout",
        "KV_SOCKET_TIMEOUT",
        SECONDS,
        "how long a connection may sit idle, or a read or write stall",
    )
    request_timeout_s: float = setting(
        10.0,
        "--request-timeout",
        "KV_REQUEST_TIMEOUT",
        SECONDS,
        "how long a request may take to arrive once it started; then 408",
    )
    max_connections: int = setting(
        4096,
        "--max-connections",
        "KV_MAX_CONNECTIONS",
        COUNT,
        "open HTTP connections at most, watchers' included; more get 503 (the process raises "
        "its open-file limit to fit them, as far as the hard limit allows)",
    )
    max_reply_buffer_bytes: int = setting(
        64 * 1024 * 1024,
        "--max-reply-buffer-bytes",
        "KV_MAX_REPLY_BUFFER_BYTES",
        BYTES,
        "replies held for clients that have not read them, every HTTP and RESP connection "
        "together; a connection whose reply does not fit is closed (Redis: maxmemory-clients)",
    )
    max_header_bytes: int = setting(
        16 * 1024,
        "--max-header-bytes",
        "KV_MAX_HEADER_BYTES",
        BYTES,
        "request line plus headers; larger gets 414/431",
    )
    log_level: str = setting(
        "INFO", "--log-level", "KV_LOG_LEVEL", LEVEL, "DEBUG, INFO, WARNING or ERROR"
    )
    log_format: str = setting(
        "text",
        "--log-format",
        "KV_LOG_FORMAT",
        LOG_FORMAT,
        "text (one line a record) or json (one JSON object a line, for log collectors)",
    )
    metrics: bool = setting(
        True,
        "--metrics",
        "KV_METRICS",
        SWITCH,
        "on: count requests and serve them at /_metrics (Prometheus); off: neither",
    )
    resp_port: int | None = setting(
        None,
        "--resp-port",
        "KV_RESP_PORT",
        named(optional_port, "port"),
        "serve the Redis protocol (RESP2, RESP3 after HELLO 3) on this port of --host too; "
        "unset or empty: off",
    )
    resp_max_connections: int = setting(
        512,
        "--resp-max-connections",
        "KV_RESP_MAX_CONNECTIONS",
        COUNT,
        "RESP connections open at once; more are refused",
    )
    resp_idle_timeout_s: float = setting(
        300.0,
        "--resp-idle-timeout",
        "KV_RESP_IDLE_TIMEOUT",
        SECONDS,
        "how long a RESP connection may sit idle or stall",
    )
    max_watchers: int = setting(
        2048,
        "--max-watchers",
        "KV_MAX_WATCHERS",
        COUNT,
        "change feed watchers open at once (HTTP /_watch streams and history long-polls "
        "together); more get 503 with Retry-After. Below --max-connections, so that "
        "watchers leave connections for every other client",
    )
    watch_queue_changes: int = setting(
        1000,
        "--watch-queue",
        "KV_WATCH_QUEUE",
        COUNT,
        "changes held for one watcher its client has not read; past it, the watcher is "
        "ended (its client resumes from its last event id)",
    )
    watch_bookmark_interval_s: float = setting(
        15.0,
        "--watch-bookmark-interval",
        "KV_WATCH_BOOKMARK_INTERVAL",
        SECONDS,
        "a watcher sent nothing for this long is sent a bookmark (its position), which "
        "keeps proxies from timing it out and bounds how far back a resume reaches",
    )
    watch_max_wait_s: float = setting(
        60.0,
        "--watch-max-wait",
        "KV_WATCH_MAX_WAIT",
        SECONDS,
        "the longest wait= a history long-poll may ask for; longer gets 400",
    )
    auth_tokens: str | None = setting(
        None,
        "--auth-tokens",
        "KV_AUTH_TOKENS",
        FILE,
        "file of access tokens, a line each: read|write TOKEN [NAME]; clients then need one "
        "(HTTP: Authorization: Bearer TOKEN; RESP: AUTH TOKEN); re-read on SIGHUP; unset: off",
    )
    tls_cert: str | None = setting(
        None,
        "--tls-cert",
        "KV_TLS_CERT",
        FILE,
        "PEM certificate chain: serve HTTPS on --port and TLS on --resp-port (with --tls-key)",
    )
    tls_key: str | None = setting(
        None, "--tls-key", "KV_TLS_KEY", FILE, "PEM private key of --tls-cert"
    )


def settings_of(
    config_class: type, names: Collection[str] | None = None
) -> list[dataclasses.Field[Any]]:
    """The fields of a config dataclass that are settings (made by `setting()`), in order;
    only those named in `names`, when given."""
    return [
        field
        for field in dataclasses.fields(config_class)
        if "flag" in field.metadata and (names is None or field.name in names)
    ]


@dataclass(frozen=True)
class FromEnvironment:
    """A setting's default taken from its environment variable, parsed once the flags are:
    only when no flag overrides it, and with the variable, not the flag, named if it is bad."""

    flag: Flag
    text: str


def add_settings(
    parser: argparse.ArgumentParser,
    fields: Sequence[dataclasses.Field[Any]],
    environ: Mapping[str, str],
) -> None:
    """Add each setting as a flag whose default is its environment variable, else its own;
    `parse_settings` then parses what came from the environment."""
    for field in fields:
        flag: Flag = field.metadata["flag"]
        env_value = environ.get(flag.env)
        parser.add_argument(
            flag.flag,
            dest=field.name,
            type=flag.parse,
            metavar=getattr(flag.parse, "__name__", "VALUE").upper(),
            default=FromEnvironment(flag, env_value) if env_value is not None else field.default,
            help=f"{flag.help} (env {flag.env}, default {shown_default(field.default)})",
        )


def shown_default(default: Any) -> str:
    """A default as a user would type it: on/off, unset, 120 rather than 120.0."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return "unset"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


UNITS_HELP = (
    "Sizes take a unit or none (bytes): 65536, 64KiB, 10MB, 1GiB (kB, MB, GB are powers of "
    "1000; KiB, MiB, GiB of 1024). Durations take ms, s, m or h, or none (seconds): 120, 2m, "
    "500ms."
)


def parse_settings(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """Every setting by name: flags over environment over defaults. A bad value exits with
    a usage error (2) naming where it came from, the flag or the environment variable."""
    settings = vars(parser.parse_args(argv))
    for name, value in settings.items():
        if isinstance(value, FromEnvironment):
            try:
                settings[name] = value.flag.parse(value.text)
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"environment variable {value.flag.env}: {error}")
    return settings


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`: the program's name and the installed package's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command-line parser; each option's default comes from its environment variable."""
    parser = argparse.ArgumentParser(
        prog="kvservice",
        description="An HTTP and RESP key-value store with a write history per key.",
        epilog=UNITS_HELP,
    )
    add_version(parser)
    add_settings(parser, settings_of(Config), environ)
    return parser


def load_backup_arguments(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """`kvservice backup --data-dir DIR FILE`: the data directory (flag or KV_DATA_DIR, as
    the service takes it) and the file to write; exits with a usage error without both."""
    parser = argparse.ArgumentParser(
        prog="kvservice backup",
        description="Copy the data of a kvservice's --data-dir to FILE, consistent as of one "
        "commit, while it serves. Restore: put FILE in an empty directory as "
        "kvservice.sqlite3 and start kvservice with --data-dir on that directory.",
    )
    add_settings(
        parser, settings_of(Config, {"data_dir"}), os.environ if environ is None else environ
    )
    parser.add_argument("file", metavar="FILE", help="where to write the copy (replaced whole)")
    settings = parse_settings(parser, argv)
    if not settings["data_dir"]:
        parser.error("give --data-dir (or KV_DATA_DIR): the directory kvservice keeps its data in")
    return settings["data_dir"], settings["file"]


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse flags over environment over defaults; exits with a usage error on bad values."""
    parser = build_parser(os.environ if environ is None else environ)
    return Config(**parse_settings(parser, argv))
