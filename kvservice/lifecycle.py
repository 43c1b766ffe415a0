"""Runs a set of servers (one per transport) until SIGTERM or SIGINT, then stops them; and
sets up the process: its logging, and an open-file limit that fits its connection caps.

The servers run on their own threads; the main thread only waits for a signal, because
stopping a server from a signal handler on its serving thread would wait for itself.
"""

from __future__ import annotations

import datetime
import json
import logging
import resource
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

_access_logger = logging.getLogger("kvservice.access")  # every transport writes its lines here


class Runnable(Protocol):
    """A server that serves on background threads between `start()` and `stop()`."""

    failed: threading.Event
    """Set when the server stopped serving on its own (the process then exits 1)."""

    @property
    def url(self) -> str:
        """Where it listens, for the log: http://host:port, redis://host:port, ..."""
        ...

    def start(self) -> None:
        """Bind and start serving; raises OSError if the address cannot be used."""
        ...

    def stop(self) -> None:
        """Stop accepting and let in-flight requests finish, within a bounded time."""
        ...


def run_until_signalled(
    servers: Sequence[Runnable],
    on_started: Callable[[], None] | None = None,
    on_reload: Sequence[Callable[[], object]] = (),
    service: str = "kvservice",
    on_stopping: Sequence[Callable[[], object]] = (),
) -> int:
    """Start every server, wait for SIGTERM or SIGINT, stop them all; returns the exit code.
    `on_started` runs once every server listens, and not at all if one cannot. SIGHUP calls
    each of `on_reload` (re-reading files such as the token file); with nothing to reload it is
    logged and ignored, as redis-server does: a logrotate-style HUP must never stop a service
    whose data may live only in its memory (SIGHUP's default action is to terminate). At the
    stop, each of `on_stopping` runs before the servers drain (the change feed ends its
    watchers, whose streams are then answered and closed within the drain). The
    start-up and stop lines are logged as `<service>.lifecycle`, so each program's log names
    that program."""
    logger = logging.getLogger(f"{service}.lifecycle")
    stop_requested = threading.Event()
    reload_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop_requested.set()

    def request_reload(_signum: int, _frame: FrameType | None) -> None:
        # Done by the loop below, not here: a handler interrupts whatever the main thread does.
        reload_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    started: list[Runnable] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
            logger.info("listening on %s", server.url)
    except OSError as error:
        logger.error("cannot listen: %s", error)
        _stop_all(started)
        return 1
    if on_started is not None:
        on_started()
    while not stop_requested.wait(0.1):
        if any(server.failed.is_set() for server in started):
            break
        if reload_requested.is_set():
            reload_requested.clear()
            if not on_reload:
                logger.info("received SIGHUP: nothing to reload, carrying on")
            else:
                logger.info("received SIGHUP, reloading")
            for reload in on_reload:
                reload()
    for stopping in on_stopping:
        stopping()
    _stop_all(started)
    logger.info("stopped")
    return 1 if any(server.failed.is_set() for server in started) else 0


def _stop_all(servers: Sequence[Runnable]) -> None:
    stoppers = [threading.Thread(target=server.stop) for server in servers]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


class JsonFormatter(logging.Formatter):
    """One JSON object a record: time (UTC, ISO 8601), level, logger, message, an access
    line's fields (from its `request`, a named tuple: client, method, target, route, status,
    body_bytes_in, body_bytes_out, duration_s, request_id, token_name), and any exception's
    traceback as one string, so a log collector needs no multi-line rules."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, object] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if request is not None:
            document.update(request._asdict())
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


LOG_FORMATTERS: dict[str, Callable[[], tuple[logging.Formatter, logging.Formatter]]] = {
    "text": lambda: (
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
        logging.Formatter("%(asctime)s %(message)s"),
    ),
    "json": lambda: (JsonFormatter(), JsonFormatter()),
}
"""Each --log-format's formatters: (everything else, access lines)."""


FILES_BESIDE_CONNECTIONS = 64
"""Descriptors the process needs besides its clients' sockets: listening sockets, the
durable store's files, connections to Redis, the loops' own pipes."""


def fit_open_files(connections: int) -> int:
    """Raise the soft limit on open files (RLIMIT_NOFILE) to fit `connections` client sockets
    and FILES_BESIDE_CONNECTIONS more, as far as the hard limit allows, as Redis does for its
    maxclients; return the limit now. Many systems start a process at 1024, fewer than the
    default caps: past it an accept fails (asyncio then pauses accepting for a second) and the
    cap's clear 503 is never reached. Logs a warning when the hard limit is too low."""
    needed = connections + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < needed:
        logging.getLogger("kvservice").warning(
            "the open-file limit is %d (the hard limit); the connection caps need %d: lower "
            "--max-connections or --resp-max-connections, or raise the hard limit (ulimit -Hn)",
            raised,
            needed,
        )
    return raised


def configure_logging(level: str, log_format: str = "text") -> None:
    """Access log lines to stdout, everything else to stderr, in `log_format`.

    No record looks up its caller's file and line or its thread and process (the Logging
    HOWTO's "Optimization"): no format here shows them, and they were a quarter of the cost
    of an access log line (10.2 -> 7.5 us)."""
    logging._srcfile = None  # documented in the HOWTO, though private-named
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    formatter, access_formatter = LOG_FORMATTERS[log_format]()
    errors_handler = logging.StreamHandler(sys.stderr)
    errors_handler.setFormatter(formatter)
    errors_handler.addFilter(lambda record: record.name != _access_logger.name)
    access_handler = logging.StreamHandler(sys.stdout)
    access_handler.setFormatter(access_formatter)
    _access_logger.addHandler(access_handler)
    _access_logger.propagate = False
    root = logging.getLogger()
    root.addHandler(errors_handler)
    root.setLevel(level.upper())
