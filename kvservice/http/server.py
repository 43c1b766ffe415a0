"""Runs any WSGI application on cheroot with explicit limits, an access log and a graceful stop.

The strict request parsing is `strict.py`'s, the selector-side gate `gate.py`'s; everything
else is ordinary cheroot configuration taken from `ServerSettings`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cheroot import wsgi as cheroot_wsgi

from kvservice.http.gate import GatedConnectionManager
from kvservice.http.strict import StrictConnection

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


class AccessLog:
    """WSGI middleware writing one line per request: client, method, path, status, bytes, time."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not access_logger.isEnabledFor(logging.INFO):
            return self.app(environ, start_response)  # the access log is off: step aside
        return self._logged(environ, start_response)

    def _logged(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        started = time.perf_counter()
        status = ["-"]

        def recording_start_response(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = status_line.split(" ", 1)[0]
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
            access_logger.info(
                '%s "%s %s" %s %d %.1fms%s',
                environ.get("REMOTE_ADDR", "-"),
                environ.get("REQUEST_METHOD", "-"),
                environ.get("REQUEST_URI") or environ.get("PATH_INFO", "-"),
                status[0],
                sent,
                (time.perf_counter() - started) * 1000,
                # The name of the token the request came with (bearer.py), never the token.
                f" token={environ['REMOTE_USER']}" if "REMOTE_USER" in environ else "",
            )


class Server:
    """A cheroot server for one WSGI app, serving on a background thread until `stop()`."""

    def __init__(self, app: WSGIApp, settings: ServerSettings) -> None:
        self.settings = settings
        self._server = _CherootServer(
            (settings.host, settings.port),
            AccessLog(app),
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
