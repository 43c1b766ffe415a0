"""The one module that touches cheroot: a request the parser has accepted, answered by a WSGI
app through cheroot's WSGI gateway, over in-memory buffers.

cheroot stays this project's WSGI gateway: `cheroot.wsgi.Gateway_10` builds the environ and
`start_response`, and `cheroot.server.HTTPRequest` writes the status line and headers (Date,
Server, chunked coding when the app gives no length, Connection and Keep-Alive) as it always
has; the bytes a client reads are cheroot's. What it no longer does is read sockets or parse:
`parser.py` has judged the request whole before it comes here, so the request object is filled
in from the parser's `RequestHead` (public attributes only) and its body is the decoded bytes.
No method of cheroot's is overridden: the request and gateway are used through their public
methods (`Gateway_10(req)`, `start_response`, `write`, `ensure_headers_sent`), and what they
read of "the server" and "the connection" is given by two small views (`_ServerView`,
`_ConnectionView`) that hold exactly that, with `__slots__`, so a cheroot that starts reading
something else fails loudly (tests/kvservice/http/test_cheroot_adapter.py guards this, and the
environ and response bytes, against an upgrade).

A long body the app yields in pieces (a history, a page of keys) is not produced whole: past
`stream_after_bytes`, the rest is left to `Response.rest`, which produces the next piece only
when the caller asks for it (once the socket has taken the last), and closes the app's
iterable at the end or when closed early. An app that says its body waits on a feed
(FEED_STREAM_ENVIRON) yields b"" for "nothing yet": its response is handed over at once with
the rest to produce, and the rest gives b"" too, for the transport to wait for a wake
(`Parking`, put in the environ). cheroot's stubs type nearly everything `Any`; this module
keeps that inside it: what it returns is typed.
"""

from __future__ import annotations

import io
import logging
import re
import urllib.parse
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi

from kvservice.http.parser import RequestHead, connection_options
from kvservice.http.problems import error_response
from kvservice.http.request_info import (
    FEED_STREAM_ENVIRON,
    PARKING_ENVIRON,
    STREAM_STATE_ENVIRON,
    Parking,
)

logger = logging.getLogger("kvservice.http.cheroot")

STREAM_AFTER_BYTES = 32 * 1024
"""A response body the app yields in pieces past this many bytes is produced as it is sent."""
_ENCODED_SLASH = re.compile(rb"%2F", re.IGNORECASE)
_LAST_CHUNK = b"0\r\n\r\n"
_APP_FAILED = "The server failed to answer; it logged why."


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the environ and the response headers say of the server."""

    host: str
    port: int
    server_name: str = "kvservice"
    """The Server header and SERVER_NAME."""
    keep_alive_timeout_s: float = 10.0
    """What a kept-alive HTTP/1.0 response's `Keep-Alive: timeout=` says."""
    stream_after_bytes: int = STREAM_AFTER_BYTES


@dataclass(frozen=True, slots=True)
class Peer:
    """The client on the other end of the connection."""

    address: str
    port: int
    https: bool = False
    """Whether the connection is TLS (the environ's wsgi.url_scheme and HTTPS)."""


@dataclass(slots=True)
class Response:
    """A response: its bytes produced so far, and the rest of a streamed body, if any."""

    status: int
    produced: bytes
    """The status line and headers, and the body, or as much as was produced of a long one."""
    keep_alive: bool
    """Whether the connection may carry another request once this response is sent."""
    rest: Generator[bytes, None, None] | None = None
    """The rest of a long body, a piece (already in the chunked coding) each time it is asked;
    None when `produced` is all of it. Close it if the connection goes first: the app's
    iterable is closed with it."""
    stream_state_bytes: int = 0
    """What the app says producing `rest` holds (a history's snapshot), for a reply budget."""


class _ResponseBuffer:
    """cheroot's `conn.wfile`: what it writes is kept, to be taken."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the caller sends."""

    def take(self) -> bytes:
        taken = bytes(self.data)
        self.data.clear()
        return taken


class _ServerView:
    """What cheroot's request and gateway read of the server, and nothing else."""

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

    def __init__(self, app: WSGIApplication, info: ServerInfo) -> None:
        self.wsgi_app = app
        self.bind_addr = (info.host, info.port)
        self.server_name = info.server_name
        self.software = f"{cheroot_server.HTTPServer.version} Server"
        self.protocol = "HTTP/1.1"
        self.ssl_adapter = None  # the scheme is set per request, from the Peer
        self.timeout = info.keep_alive_timeout_s
        self.can_add_keepalive_connection = True  # the connection core decides its limits


class _ConnectionView:
    """What cheroot's request and gateway read of the connection, and nothing else."""

    __slots__ = ("remote_addr", "remote_port", "ssl_env", "wfile")

    def __init__(self, peer: Peer, wfile: _ResponseBuffer) -> None:
        self.remote_addr = peer.address
        self.remote_port = peer.port
        self.ssl_env = {"HTTPS": "on", "wsgi.url_scheme": "https"} if peer.https else {}
        self.wfile = wfile


class CherootGateway:
    """Answers requests the parser accepted with a WSGI app, through cheroot's WSGI gateway."""

    def __init__(self, app: WSGIApplication, info: ServerInfo) -> None:
        self.app = app
        self.info = info
        self._server = _ServerView(app, info)

    def environ(self, head: RequestHead, body: bytes, peer: Peer) -> WSGIEnvironment:
        """The WSGI environ cheroot builds for this request (what the app would be given)."""
        _, gateway = self._gateway(head, body, peer, _ResponseBuffer())
        environ: WSGIEnvironment = gateway.env
        return environ

    def respond(
        self,
        head: RequestHead,
        body: bytes,
        peer: Peer,
        *,
        close: bool = False,
        parking: Parking | None = None,
    ) -> Response:
        """Run the app on the request `head` with its decoded `body`; its response as bytes,
        the first `stream_after_bytes` or so of a long body with the rest to produce later.
        `close`: the connection closes after it whatever the request says (the server stops),
        and the response says so. `parking` is the request's way to wait (PARKING_ENVIRON).

        An app that fails here is answered 500 (logged; the connection closes): nothing of its
        response has left yet. One whose streamed body fails later raises from `rest`, and the
        caller closes the connection (the client sees a truncated chunked body).
        """
        wfile = _ResponseBuffer()
        request, gateway = self._gateway(head, body, peer, wfile)
        request.close_connection |= close
        environ = gateway.env
        if parking is not None:
            environ[PARKING_ENVIRON] = parking
        result: Iterable[bytes] = ()
        try:
            result = self.app(environ, _start_response(gateway))
            pieces = iter(result)
            for piece in pieces:
                if piece and not request.sent_headers:
                    _close_if_unread(request, head, len(body))
                _write(gateway, piece)
                feed_stream = bool(environ.get(FEED_STREAM_ENVIRON))
                waits = feed_stream and not piece and request.sent_headers
                if waits or len(wfile.data) >= self.info.stream_after_bytes:
                    return Response(
                        _status(request),
                        wfile.take(),
                        _keep_alive(request),
                        _produce(request, gateway, wfile, pieces, result, feed_stream),
                        int(gateway.env.get(STREAM_STATE_ENVIRON, 0)),
                    )
            _close_if_unread(request, head, len(body))
            _finish(request, wfile)
        except Exception:
            logger.exception("the app failed on %s %r", head.method.decode(), head.target)
            _close(result)
            failed = error_response(500, _APP_FAILED, head_only=head.method == b"HEAD")
            return Response(500, failed, keep_alive=False)
        _close(result)
        return Response(_status(request), wfile.take(), _keep_alive(request))

    def _gateway(
        self, head: RequestHead, body: bytes, peer: Peer, wfile: _ResponseBuffer
    ) -> tuple[cheroot_server.HTTPRequest, cheroot_wsgi.Gateway_10]:
        """cheroot's request, filled in from the parser's head, and its WSGI gateway."""
        connection = _ConnectionView(peer, wfile)
        request = cheroot_server.HTTPRequest(self._server, connection)
        request.method = head.method
        request.uri = head.target  # REQUEST_URI: what the access log shows
        # Percent-decoded, except an encoded slash, which stays one: cheroot's PATH_INFO.
        pieces = _ENCODED_SLASH.split(head.path)
        request.path = b"%2F".join(map(urllib.parse.unquote_to_bytes, pieces))
        request.qs = head.query
        request.request_protocol = b"HTTP/%d.%d" % head.version
        request.response_protocol = "HTTP/{}.{}".format(*min(head.version, (1, 1)))
        request.inheaders = dict(head.headers)
        request.chunked_read = head.chunked
        request.close_connection = not head.keep_alive
        request.rfile = io.BytesIO(body)
        request.scheme = b"https" if peer.https else b"http"
        request.ready = True
        return request, cheroot_wsgi.Gateway_10(request)


def _start_response(gateway: cheroot_wsgi.Gateway_10) -> StartResponse:
    start_response: StartResponse = gateway.start_response
    return start_response


def _write(gateway: cheroot_wsgi.Gateway_10, piece: bytes) -> None:
    """One piece of the app's body through cheroot's write (which sends the head first)."""
    if piece:
        if not isinstance(piece, bytes):
            raise TypeError("WSGI applications must yield bytes")
        gateway.write(piece)


def _close_if_unread(request: cheroot_server.HTTPRequest, head: RequestHead, size: int) -> None:
    """Before the head is written: a chunked body the app answered without reading closes
    the connection, as it must on a server that reads a body as the app asks (cheroot's own
    did): the same answer, whichever server a client met."""
    if head.chunked and not request.sent_headers and request.rfile.tell() < size:
        request.close_connection = True


def _finish(request: cheroot_server.HTTPRequest, wfile: _ResponseBuffer) -> None:
    """What cheroot's `HTTPRequest.respond` does after the app: the head if the body was
    empty, and the last chunk of a chunked body."""
    request.ensure_headers_sent()
    if request.chunked_write:
        wfile.write(_LAST_CHUNK)


def _produce(
    request: cheroot_server.HTTPRequest,
    gateway: cheroot_wsgi.Gateway_10,
    wfile: _ResponseBuffer,
    pieces: Iterator[bytes],
    result: Iterable[bytes],
    feed_stream: bool = False,
) -> Generator[bytes, None, None]:
    """The rest of a long body, one piece of the app's a step (b"" for an empty one of a
    `feed_stream`: nothing yet); the app's iterable closed at the end, or when this is
    closed first."""
    try:
        for piece in pieces:
            _write(gateway, piece)
            if wfile.data:
                yield wfile.take()
            elif feed_stream:
                yield b""
        _finish(request, wfile)
        last = wfile.take()
        if last:  # b"" would say "nothing yet" to the transport: a body of known length ends so
            yield last
    finally:
        _close(result)


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _status(request: cheroot_server.HTTPRequest) -> int:
    return int(request.status[:3])


def _keep_alive(request: cheroot_server.HTTPRequest) -> bool:
    """Whether the connection may carry another request: cheroot's decision (the request's
    Connection, HTTP/1.0, a body of unknown length), and the app's `Connection: close`."""
    if request.close_connection:
        return False
    return not any(
        name.lower() == b"connection" and b"close" in connection_options(value)
        for name, value in request.outheaders
    )
