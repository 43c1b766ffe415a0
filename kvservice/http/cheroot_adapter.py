"""The one module that touches cheroot: a request the parser (`parser.py`) judged whole, run
through cheroot's WSGI gateway over in-memory buffers, and the response it writes.

cheroot stays in the request path as this project's WSGI gateway: its `Gateway_10` makes the
environ and calls the app, its `HTTPRequest` writes the response head (status line, Date,
Server, Content-Length or chunked coding, Connection and Keep-Alive as the protocol
versions ask) and frames the body. What cheroot no longer does is read a socket or parse: the
request it is handed is filled in from the parser's `RequestHead` (its head is parsed once),
its body is already in memory, and what it writes lands in a list, not a socket.

What it relies on of cheroot is written down here, in `_GatewayServer` and `_GatewayConnection`
(the attributes cheroot's request and gateway read, as `__slots__`: one more read by a new
cheroot raises AttributeError) and in the public methods called below (`Gateway_10`'s
`get_environ`, `start_response` and `write`; `HTTPRequest`'s `ensure_headers_sent` and the
fields it fills). `tests/kvservice/http/test_cheroot_adapter.py` runs it against the
installed cheroot, so an upgrade that changes any of it fails there first.

A body the app yields in pieces is written here up to `STREAM_AFTER_BYTES`; the rest is
produced a piece at a time as the client reads (`StreamedBody`, a `core.Pieces`), so a long
history to a client that does not read costs one piece, not a serialised copy of all of it.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi

from kvservice.http.parser import RequestHead
from kvservice.http.request_info import STREAM_STATE_ENVIRON

WSGIApp = Callable[..., Iterable[bytes]]

STREAM_AFTER_BYTES = 32 * 1024
"""A response body the app yields in pieces past this many bytes is produced as it is sent."""
_LAST_CHUNK = b"0\r\n\r\n"
_ENCODED_SLASH = re.compile(rb"%2F", re.IGNORECASE)
_TLS_ENVIRON = {"HTTPS": "on", "wsgi.url_scheme": "https"}


class _GatewayServer:
    """What cheroot's request and gateway read of the server, and nothing more."""

    __slots__ = (
        "bind_addr",
        "can_add_keepalive_connection",
        "protocol",
        "server_name",
        "software",
        "ssl_adapter",
        "timeout",
        "wsgi_app",
    )

    def __init__(self, app: WSGIApp, server_name: str, port: int, timeout: float) -> None:
        self.wsgi_app = app
        self.server_name = server_name
        self.software = f"{cheroot_wsgi.Server.version} Server"
        self.protocol = "HTTP/1.1"
        self.bind_addr = ("", port)
        self.timeout = timeout
        """Said in HTTP/1.0's `Keep-Alive: timeout=`: the idle timeout."""
        self.can_add_keepalive_connection = True  # the connection core bounds connections
        self.ssl_adapter = None  # TLS is the core's; the scheme is set per request


class _GatewayConnection:
    """What cheroot's request and gateway read of a connection: the peer, TLS, and the
    response's sink (`wfile`), a list the response's bytes are appended to."""

    __slots__ = ("remote_addr", "remote_port", "ssl_env", "wfile")

    def __init__(self, remote_addr: str, remote_port: str, tls: bool) -> None:
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.ssl_env = _TLS_ENVIRON if tls else None
        self.wfile = _Written()


class _Written(list[bytes]):
    """A response's bytes as cheroot writes them, kept in order, never copied."""

    __slots__ = ()

    def write(self, data: bytes) -> int:
        self.append(data)
        return len(data)


@dataclass(slots=True)
class Response:
    """What the app answered: the bytes written so far (the head and the body, or its first
    pieces), the rest of a streamed body, and whether the connection may carry another
    request (cheroot's decision, from the request's keep-alive and the response's framing)."""

    written: list[bytes]
    rest: StreamedBody | None
    keep_alive: bool


class Gateway:
    """cheroot's WSGI gateway for one app: `respond` runs a request through it."""

    def __init__(self, app: WSGIApp, server_name: str, port: int, idle_timeout_s: float) -> None:
        self.server = _GatewayServer(app, server_name, port, idle_timeout_s)

    @property
    def port(self) -> int:
        """The SERVER_PORT the environ says."""
        return int(self.server.bind_addr[1])

    @port.setter
    def port(self, port: int) -> None:
        self.server.bind_addr = ("", port)

    def respond(
        self,
        head: RequestHead,
        body: bytes,
        peer: tuple[str, str],
        *,
        tls: bool,
        close: bool,
    ) -> Response:
        """Call the app for `head` and its whole `body` from `peer` (address, port); `close`:
        the connection is to close after this response whatever the request said. Errors of
        the app that Bottle does not turn into a response propagate: the caller answers 500."""
        connection = _GatewayConnection(peer[0], peer[1], tls)
        request = cheroot_server.HTTPRequest(self.server, connection)
        request.method = head.method
        request.uri = head.target  # REQUEST_URI: what the access log shows
        # Percent-decoded, except an encoded slash, which stays one: cheroot's PATH_INFO.
        path = head.path
        if b"%" in path:
            pieces = _ENCODED_SLASH.split(path)
            path = b"%2F".join(map(urllib.parse.unquote_to_bytes, pieces))
        request.path = path
        request.qs = head.query
        request.request_protocol = b"HTTP/%d.%d" % head.version
        request.response_protocol = "HTTP/1.1" if head.version >= (1, 1) else "HTTP/1.0"
        request.inheaders = head.headers
        request.chunked_read = head.chunked
        request.rfile = received = io.BytesIO(body)
        request.close_connection = close or not head.keep_alive
        if tls:
            request.scheme = b"https"
        gateway = cheroot_wsgi.Gateway_10(request)
        result = self.server.wsgi_app(gateway.env, gateway.start_response)
        chunks = iter(result)
        written = connection.wfile
        size = 0
        try:
            for chunk in chunks:
                if chunk:
                    _check(chunk)
                    if not size and head.chunked:
                        _close_if_unread(request, received, len(body))
                    gateway.write(chunk)
                    size += len(chunk)
                    if size >= STREAM_AFTER_BYTES:
                        held = gateway.env.get(STREAM_STATE_ENVIRON, 0)
                        rest = StreamedBody(gateway, request, chunks, result, held)
                        return Response(written, rest, _keeps_alive(request))
        except BaseException:
            _close(result)
            raise
        _close(result)
        if not size and head.chunked:
            _close_if_unread(request, received, len(body))
        _finish(request)
        return Response(written, None, _keeps_alive(request))


class StreamedBody:
    """The rest of a response body, produced a piece at a time as the client reads
    (`core.Pieces`); `held_bytes` is what the app said its iterable holds meanwhile (a
    history's snapshot), charged to the reply budget."""

    def __init__(
        self,
        gateway: cheroot_wsgi.Gateway_10,
        request: cheroot_server.HTTPRequest,
        chunks: Iterator[bytes],
        result: Iterable[bytes],
        held_bytes: int,
    ) -> None:
        self._gateway = gateway
        self._request = request
        self._chunks: Iterator[bytes] | None = chunks
        self._result = result
        self.held_bytes = held_bytes
        self._written: _Written = request.conn.wfile

    def next_piece(self) -> bytes | None:
        """The next piece cheroot frames (the last chunk of a chunked body after the app's
        last); None after the last. An error of the app's iterable propagates."""
        chunks = self._chunks
        if chunks is None:
            return None
        written = self._written
        written.clear()
        for chunk in chunks:
            if chunk:
                _check(chunk)
                self._gateway.write(chunk)
                break
        else:
            self.close()
            _finish(self._request)
        piece = b"".join(written)
        written.clear()
        return piece or None

    def close(self) -> None:
        """Let go of the app's iterable (its `close`, once)."""
        if self._chunks is not None:
            self._chunks = None
            self.held_bytes = 0
            _close(self._result)


def _check(chunk: Any) -> None:
    if not isinstance(chunk, bytes):
        raise TypeError("WSGI applications must yield bytes")


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _finish(request: cheroot_server.HTTPRequest) -> None:
    """The head if the body was empty, and the end of a chunked body (cheroot's `respond`)."""
    request.ensure_headers_sent()
    if request.chunked_write:
        request.conn.wfile.write(_LAST_CHUNK)


def _close_if_unread(request: cheroot_server.HTTPRequest, body: io.BytesIO, size: int) -> None:
    """Before the head is written: a chunked body the app answered without reading closes
    the connection, as it must on a server that reads the body as the app asks (cheroot's
    own): the same answer, whichever server a client met."""
    if body.tell() < size:
        request.close_connection = True


def _keeps_alive(request: cheroot_server.HTTPRequest) -> bool:
    """Whether cheroot kept the connection for another request: not if it decided to close,
    nor if the app asked to (`Connection: close`, which cheroot writes and does not heed)."""
    return not request.close_connection and (b"Connection", b"close") not in request.outheaders
