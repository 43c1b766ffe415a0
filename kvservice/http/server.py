"""The HTTP transport's runner: its settings, `Server` (the protocol code of `protocol.py` on
the connection core, `kvservice.core`, which owns the loop thread, accepting, the connection
cap, timeouts, TLS, flow control, the reply budget, the execution policy and the drain), and
what every request answered is told to: `RequestLog` gives each its ID and tells the
observers (the access log, `write_access_line`; the metrics) what became of it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from kvservice.core import ConnectionServer, ConnectionSettings, Counts
from kvservice.execution import WORKERS_POLICY, ExecutionPolicy
from kvservice.http.cheroot_adapter import ServerInfo
from kvservice.http.parser import ParserLimits
from kvservice.http.protocol import HttpTransport
from kvservice.http.request_info import (
    PARKING_ENVIRON,
    REQUEST_ID_ENVIRON,
    REQUEST_ID_HEADER,
    ROUTE_ENVIRON,
    UNMATCHED_ROUTE,
    Parking,
    request_id,
)
from kvservice.reply_budget import ReplyBudget

__all__ = [
    "RequestLog",
    "RequestObserver",
    "RequestRecord",
    "Server",
    "ServerSettings",
    "WSGIApp",
    "write_access_line",
]

WSGIApp = Callable[..., Iterable[bytes]]

access_logger = logging.getLogger("kvservice.access")


@dataclass(frozen=True)
class ServerSettings:
    """Listening address and every limit the transport enforces.

    The settings a user can change have no default here: they come from the caller's
    configuration (`kvservice.__main__.server_settings`), which declares each default once.
    """

    host: str
    port: int
    threads: int
    listen_backlog: int
    socket_timeout_s: float
    request_timeout_s: float
    max_connections: int
    max_header_bytes: int
    max_body_bytes: int
    max_continued_body_bytes: int | None = None
    """The largest body a client that sends `Expect: 100-continue` is told to send; larger is
    413 before it is sent. None: `max_body_bytes`."""
    execution: ExecutionPolicy = WORKERS_POLICY
    """Where requests are served (`kvservice.execution`): GET and HEAD are reads, every
    other method may write. INLINE: on the event loop's own thread, for an app that never
    waits on what it reads or writes (an in-process store), which then costs no thread
    hand-off; WORKERS (`threads` of them, the default) for one that may wait on a network
    or a disk, which would otherwise stall every connection."""
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context (`kvservice.tls`); None: plain HTTP. The core does the
    handshakes, without blocking, each within the request timeout."""
    drain_timeout_s: float = 2.0
    """How long `stop()` lets requests that started arriving finish and responses be
    written before it closes every connection."""
    max_header_count: int = 100
    server_name: str = "kvservice"

    @property
    def limits(self) -> ParserLimits:
        """What one request may hold, for the parser."""
        return ParserLimits(
            max_header_bytes=self.max_header_bytes,
            max_header_count=self.max_header_count,
            max_body_bytes=self.max_body_bytes,
            max_continued_body_bytes=self.max_continued_body_bytes,
        )

    @property
    def connections(self) -> ConnectionSettings:
        """What the connection core enforces: the socket timeout is the idle timeout (and
        how long a response may go unread), the request timeout bounds a request's arrival
        and a TLS handshake."""
        return ConnectionSettings(
            host=self.host,
            port=self.port,
            max_connections=self.max_connections,
            idle_timeout_s=self.socket_timeout_s,
            listen_backlog=self.listen_backlog,
            request_timeout_s=self.request_timeout_s,
            shutdown_timeout_s=self.drain_timeout_s,
            handshake_timeout_s=self.request_timeout_s,
            workers=self.threads,
            # Over TLS too, a client past the cap is told 503 (after its handshake), as many
            # of them as there are connections; past those, closed without a word.
            tls_refusals=self.max_connections,
        )


class RequestRecord(NamedTuple):
    """What happened to one request the app answered, for the access log and metrics. (A
    named tuple: it is made for every request, and it is the quickest record to make.)"""

    client: str
    method: str
    target: str
    """The request target as sent: path and query."""
    route: str
    """The template of the route that served it ("/{key}"), or UNMATCHED_ROUTE."""
    status: int
    body_bytes_in: int
    """The request body's declared Content-Length (0 for none, or a chunked body)."""
    body_bytes_out: int
    duration_s: float
    request_id: str
    token_name: str | None
    """The name of the token the request came with (`bearer.py`'s REMOTE_USER), never the
    token; None without tokens."""


RequestObserver = Callable[[RequestRecord], None]


def write_access_line(record: RequestRecord) -> None:
    """The access log's line for a request: client, request, status, bytes, time, ID, and the
    token's name when there is one. The record goes along (`request`), for the JSON log
    format to write its fields."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    access_logger.info(
        '%s "%s %s" %d %d %.1fms %s%s',
        record.client,
        record.method,
        record.target,
        record.status,
        record.body_bytes_out,
        record.duration_s * 1000,
        record.request_id,
        "" if record.token_name is None else f" token={record.token_name}",
        extra={"request": record},
    )


class RequestLog:
    """WSGI middleware: gives each request its ID (X-Request-ID, both ways), then tells each
    observer what became of it once the response has been produced. A parked request
    (`Parking`) is one request however many times the app runs it: told of once, when it is
    answered, under the ID of its first run and with the time from that run's start."""

    def __init__(self, app: WSGIApp, observers: Sequence[RequestObserver]) -> None:
        self.app = app
        self.observers = tuple(observers)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        parking = environ.get(PARKING_ENVIRON)
        if not isinstance(parking, Parking):
            parking = None
        if parking is not None and parking.began is not None and parking.request_id:
            # A parked request run again: one request, from its first run to its answer.
            started, identifier = parking.began, parking.request_id
        else:
            started, identifier = time.perf_counter(), request_id(environ)
            if parking is not None:
                parking.began, parking.request_id = started, identifier
        environ[REQUEST_ID_ENVIRON] = identifier
        status = [0]

        def recording_start_response(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            headers.append((REQUEST_ID_HEADER, identifier))
            return start_response(status_line, headers, exc_info)

        body = self.app(environ, recording_start_response)
        sent = 0
        try:
            for chunk in body:
                sent += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            answered = parking is None or parking.parked is None
            if self.observers and answered:  # a parked request is told of once answered
                length = environ.get("CONTENT_LENGTH")
                record = RequestRecord(
                    environ.get("REMOTE_ADDR", "-"),
                    environ.get("REQUEST_METHOD", "-"),
                    environ.get("REQUEST_URI") or environ.get("PATH_INFO", "-"),
                    environ.get(ROUTE_ENVIRON, UNMATCHED_ROUTE),
                    status[0],
                    int(length) if length else 0,
                    sent,
                    time.perf_counter() - started,
                    identifier,
                    environ.get("REMOTE_USER"),
                )
                for observe in self.observers:
                    observe(record)


class Server:
    """The HTTP transport for one WSGI app, serving on a background thread until `stop()`:
    the protocol code (`protocol.py`) on the connection core; each request answered is told
    to `observers` (by default, the access log); the responses it holds for clients that do
    not read them are charged to `reply_budget` (None: unbounded but for the socket
    timeout), which other transports may share."""

    def __init__(
        self,
        app: WSGIApp,
        settings: ServerSettings,
        observers: Sequence[RequestObserver] = (write_access_line,),
        reply_budget: ReplyBudget | None = None,
    ) -> None:
        self.settings = settings
        self._transport = HttpTransport(
            RequestLog(app, observers),
            settings.limits,
            ServerInfo(
                settings.host,
                settings.port,
                server_name=settings.server_name,
                keep_alive_timeout_s=settings.socket_timeout_s,
            ),
            tls=settings.tls is not None,
        )
        self._figures = Counts()
        self._core = ConnectionServer(
            self._transport,
            settings.connections,
            tls=settings.tls,
            execution=settings.execution,
            reply_budget=reply_budget,
            figures=self._figures,
        )
        self.failed = self._core.failed

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._core.port

    @property
    def url(self) -> str:
        """The address it serves, as a URL."""
        scheme = "http" if self.settings.tls is None else "https"
        return f"{scheme}://{self.settings.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        return self._figures.connected_clients

    @property
    def connections_in_gate(self) -> int:
        """Open connections the event loop holds: idle, receiving a request, sending a
        response, or served on the loop itself; not those whose request a worker serves."""
        return max(0, self._figures.connected_clients - self._transport.on_workers)

    @property
    def refusals(self) -> Mapping[int, int]:
        """Requests and connections the transport refused before the app saw them (connection
        limit, timeouts, oversized heads or bodies, malformed requests), by status code."""
        refusals = dict(self._transport.refusals)
        if self._figures.rejected_connections:
            refusals[503] = refusals.get(503, 0) + self._figures.rejected_connections
        return refusals

    def start(self) -> None:
        """Bind (raising OSError if the address is taken) and serve on a background thread."""
        self._core.start()
        self._transport.serving_on(self._core.port)  # the port asked for, unless it was 0

    def stop(self) -> None:
        """Stop accepting, let requests that started arriving finish and responses be written
        (up to the drain timeout), then close every connection."""
        self._core.stop()
