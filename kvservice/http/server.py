"""Runs any WSGI application on cheroot with explicit limits, an access log and a graceful stop.

The strict request parsing is `strict.py`'s, the selector-side gate `gate.py`'s; everything
else is ordinary cheroot configuration taken from `ServerSettings`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cheroot import wsgi as cheroot_wsgi

from kvservice.http.gate import GatedConnectionManager, StreamingGateway
from kvservice.http.request_info import (
    REQUEST_ID_ENVIRON,
    REQUEST_ID_HEADER,
    ROUTE_ENVIRON,
    UNMATCHED_ROUTE,
    request_id,
)
from kvservice.http.strict import StrictConnection
from kvservice.reply_budget import ReplyBudget

WSGIApp = Callable[..., Iterable[bytes]]

access_logger = logging.getLogger("kvservice.access")
logger = logging.getLogger("kvservice.server")


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
    serve_inline: bool = False
    """Serve each request on the event loop's own thread, not a worker: for apps that never
    wait (an in-process store), which then cost no thread hand-off. An app that waits on a
    network (a remote store) must leave it False, or it would stall every connection."""
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context (`kvservice.tls`); None: plain HTTP. The gate does the
    handshakes, without blocking."""
    drain_timeout_s: float = 2.0
    shutdown_timeout_s: float = 2.5
    max_header_count: int = 100
    server_name: str = "kvservice"


class _CherootServer(cheroot_wsgi.Server):
    ConnectionClass = StrictConnection
    # Set from ServerSettings by Server before the server starts; the gate and parser read them.
    max_header_count: int
    max_continued_body_size: int
    max_connections: int
    serve_inline: bool
    request_timeout: float
    drain_timeout: float
    tls_context: ssl.SSLContext | None
    reply_budget: ReplyBudget | None
    _connections: GatedConnectionManager

    def prepare(self) -> None:
        super().prepare()
        self.socket.setblocking(False)  # the gate accepts in batches until none is left
        self._connections._selector.close()  # replaced, with the listening socket, by the gate
        self._connections = GatedConnectionManager(self)

    @property
    def connections(self) -> GatedConnectionManager:
        """The gate, which also counts open connections."""
        return self._connections

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        logger.log(level, "%s", msg, exc_info=traceback)


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
    observer what became of it once the response has been produced."""

    def __init__(self, app: WSGIApp, observers: Sequence[RequestObserver]) -> None:
        self.app = app
        self.observers = tuple(observers)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        started = time.perf_counter()
        environ[REQUEST_ID_ENVIRON] = identifier = request_id(environ)
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
            if self.observers:
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
    """A cheroot server for one WSGI app, serving on a background thread until `stop()`; each
    request answered is told to `observers` (by default, the access log); the responses it
    holds for clients that do not read them are charged to `reply_budget` (None: unbounded
    but for the socket timeout), which other transports may share."""

    def __init__(
        self,
        app: WSGIApp,
        settings: ServerSettings,
        observers: Sequence[RequestObserver] = (write_access_line,),
        reply_budget: ReplyBudget | None = None,
    ) -> None:
        self.settings = settings
        self._server = _CherootServer(
            (settings.host, settings.port),
            RequestLog(app, observers),
            numthreads=settings.threads,
            server_name=settings.server_name,
            request_queue_size=settings.listen_backlog,
            # cheroot's stubs say int; it passes both to settimeout/join, which take floats.
            timeout=settings.socket_timeout_s,  # type: ignore[arg-type]
            shutdown_timeout=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        )
        self._server.max_request_header_size = settings.max_header_bytes
        self._server.max_request_body_size = settings.max_body_bytes
        self._server.max_continued_body_size = (
            settings.max_continued_body_bytes or settings.max_body_bytes
        )
        self._server.max_header_count = settings.max_header_count
        self._server.max_connections = settings.max_connections
        self._server.request_timeout = settings.request_timeout_s
        self._server.drain_timeout = settings.drain_timeout_s
        self._server.serve_inline = settings.serve_inline
        self._server.tls_context = settings.tls
        self._server.reply_budget = reply_budget
        self._server.gateway = StreamingGateway
        # Idle kept-alive connections wait in the selector at no cost; only the total counts.
        self._server.keep_alive_conn_limit = settings.max_connections
        self._thread: threading.Thread | None = None
        self.failed = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return int(self._server.bind_addr[1])

    @property
    def url(self) -> str:
        """The address it serves, as a URL."""
        scheme = "http" if self.settings.tls is None else "https"
        return f"{scheme}://{self.settings.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        return self._server.connections.open_connections

    @property
    def connections_in_gate(self) -> int:
        """Open connections the gate holds: waiting for (the rest of) a request, or sending a
        response; the others are being served."""
        return self._server.connections.connections_in_gate

    @property
    def refusals(self) -> Mapping[int, int]:
        """Requests and connections the transport refused before the app saw them (connection
        limit, timeouts, oversized heads or bodies, shutting down), by status code."""
        return self._server.connections.refusals

    def start(self) -> None:
        """Bind (raising OSError if the address is taken) and serve on a background thread."""
        try:
            self._server.prepare()
        except OSError as error:
            raise OSError(f"{self.settings.host}:{self.settings.port}: {error}") from error
        self._thread = threading.Thread(target=self._serve, name="cheroot-serve", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:
            logger.exception("the server loop stopped unexpectedly")
            self.failed.set()

    def stop(self) -> None:
        """Stop accepting, let requests that started arriving finish (up to the drain timeout),
        then let workers finish what they serve (up to the shutdown timeout)."""
        self._server.stop()
        if self._thread is not None:
            self._thread.join(self.settings.shutdown_timeout_s)
