"""cheroot's request, connection and chunked-body reader, made strict about framing and errors.

cheroot's defaults are loose for a service that must never garble a write: it accepts
ambiguous request framing (Content-Length with Transfer-Encoding, duplicate or signed
lengths, `0x`-prefixed chunk sizes), keeps reading a connection after the application
asked to close it, answers oversized headers with 413 and writes its own errors as plain
text. It also reads request targets loosely (`urlsplit` drops tabs and CRs, so `/ta\tb` is
the key `tab`) and refuses the absolute form a server must accept. The subclasses here
tighten exactly those points; where a request ends, and what its request line and fields
may hold, is decided by `framing.py`, which the gate reads with too.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import urllib.parse
from http import HTTPStatus
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server

from kvservice.http.framing import (
    CRLF,
    EMPTY_LINES_BEFORE_REQUEST,
    BadRequestLine,
    ChunkedBodyDecoder,
    empty_lines_length,
    parse_header_block,
    parse_request_line,
    read_strict_headers,
)
from kvservice.http.gate import GateReader, ResponseBuffer, gated_makefile
from kvservice.http.problems import PROBLEM_CONTENT_TYPE, problem_body

_ENCODED_SLASH = re.compile(rb"%2F", re.IGNORECASE)


class StrictChunkedReader(cheroot_server.ChunkedRFile):
    """A chunked body reader on `framing.ChunkedBodyDecoder`: bounded lines, strict hex sizes,
    trailers consumed, and never a byte read past the end of the message.

    Chunk data is decoded piece by piece as the application asks for it, so a chunk that
    announces gigabytes costs no more memory than the application reads; going past
    `maxlen` raises MaxSizeExceeded. `closed` becomes true only after the whole message,
    trailers included, has been read, so a partly read body can be told apart and the
    connection closed.
    """

    def __init__(self, rfile: Any, maxlen: int, bufsize: int = 8192) -> None:
        super().__init__(rfile, maxlen, bufsize)
        self._decoder = ChunkedBodyDecoder()

    def _fetch(self) -> None:
        # Peek, decode, then consume only what the decoder used: what follows the message
        # stays in the connection's reader for the next request. peek(1) reads the socket
        # only when nothing is buffered; a larger peek would wait for more than has arrived.
        while not (self.closed or self.buffer):
            available = self.rfile.peek(1)[: self.bufsize]
            if not available:
                raise ValueError("Bad chunked transfer coding: the body is truncated.")
            data, used = self._decoder.feed(available)
            self.rfile.read(used)
            self.bytes_read += len(data)
            if self.maxlen and self.bytes_read > self.maxlen:
                raise cheroot_errors.MaxSizeExceeded("Request Entity Too Large", self.maxlen)
            self.buffer += data
            self.closed = self._decoder.done


class StrictRequest(cheroot_server.HTTPRequest):
    """cheroot's request with strict framing, 431 for large headers and problem+json errors."""

    def parse_request(self) -> None:
        # The gate has the whole head in memory, so peeking does not block.
        self.head_request = is_head_request(self.conn.rfile.peek(_PEEK_BYTES))
        self.rfile = cheroot_server.SizeCheckWrapper(
            self.conn.rfile, self.server.max_request_header_size
        )
        try:
            if not self.read_request_line():
                return
        except cheroot_errors.MaxSizeExceeded:
            self.simple_response("414 URI Too Long", "The request line is too long.")
            return
        try:
            if not self.read_request_headers():
                return
        except cheroot_errors.MaxSizeExceeded:
            self.simple_response(
                "431 Request Header Fields Too Large",
                "The request's header fields are too large or too many.",
            )
            return
        self.ready = True

    def read_request_line(self) -> bool:
        """Read the request line with `framing.parse_request_line`, in place of cheroot's
        reading, which `urlsplit` makes lossy; fill in what cheroot's would."""
        line = self.rfile.readline()
        self.started_request = True  # from here, a stalled request is answered 408
        for _ in range(EMPTY_LINES_BEFORE_REQUEST):
            if line != CRLF:
                break
            line = self.rfile.readline()
        if not line:
            return False
        try:
            request_line = parse_request_line(line)
        except BadRequestLine as error:
            self.simple_response(f"{error.status} {HTTPStatus(error.status).phrase}", error.detail)
            return False
        self.method = request_line.method
        self.uri = request_line.origin_form  # REQUEST_URI: what the access log shows
        self.authority = request_line.authority
        # Percent-decoded, except an encoded slash, which stays one: cheroot's PATH_INFO.
        pieces = _ENCODED_SLASH.split(request_line.path)
        self.path = b"%2F".join(map(urllib.parse.unquote_to_bytes, pieces))
        self.qs = request_line.query
        self.request_protocol = b"HTTP/%d.%d" % request_line.version
        self.response_protocol = "HTTP/{}.{}".format(*min(request_line.version, (1, 1)))
        return True

    def read_request_headers(self) -> bool:
        self.header_reader = HeaderReader(self.server.max_header_count)
        if not super().read_request_headers():  # type: ignore[no-untyped-call]
            return False
        # Connection options are case-insensitive tokens (RFC 9110 section 7.6.1); cheroot
        # honours only the exact value "close".
        options = self.inheaders.get(b"Connection", b"").lower().split(b",")
        if b"close" in (option.strip() for option in options):
            self.close_connection = True
        if not self.chunked_read and b"Transfer-Encoding" in self.inheaders:
            # HTTP/1.0 has no chunked coding; cheroot would read the body as the next request.
            self.simple_response(
                "400 Bad Request", "Transfer-Encoding is not allowed on HTTP/1.0 requests."
            )
            return False
        if self.request_protocol == b"HTTP/1.1" and b"Host" not in self.inheaders:
            self.simple_response(
                "400 Bad Request", "An HTTP/1.1 request must have a Host header (RFC 9112 3.2)."
            )
            return False
        if self.authority is not None:
            self.inheaders[b"Host"] = self.authority  # RFC 9112 3.2.2: the target's authority
        return True

    def respond(self) -> None:
        max_body = self.server.max_request_body_size
        if self.chunked_read:
            self.rfile = StrictChunkedReader(self.conn.rfile, max_body)
        else:
            length = int(self.inheaders.get(b"Content-Length", 0))
            if max_body and length > max_body:
                self.simple_response(
                    "413 Content Too Large",
                    f"The request body exceeds the limit of {max_body} bytes.",
                )
                return
            self.rfile = cheroot_server.KnownLengthRFile(self.conn.rfile, length)
        self.server.gateway(self).respond()
        if self.ready:
            self.ensure_headers_sent()
        if self.chunked_write:
            self.conn.wfile.write(b"0\r\n\r\n")

    def send_headers(self) -> None:
        if (b"Connection", b"close") in self.outheaders:
            self.close_connection = True  # cheroot would otherwise keep reading this connection
        if self.chunked_read and not self.rfile.closed:
            self.close_connection = True  # an unread chunked body must not become the next request
        super().send_headers()

    def simple_response(self, status: str, msg: str = "") -> None:
        """Answer a transport-level error with a problem document and close the connection."""
        self.close_connection = True
        self.server.connections.count_refusal(int(status[:3]))
        try:
            self.conn.wfile.write(error_response(int(status[:3]), msg, head_only=self.head_request))
        except OSError as error:
            if error.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise


_PEEK_BYTES = 1024
"""How much of a request `is_head_request` looks at: enough to see its method."""


def is_head_request(data: bytes) -> bool:
    """Whether the request `data` starts with is a HEAD (after the empty lines skipped before
    a request line)."""
    return data.startswith(b"HEAD ", empty_lines_length(data))


def error_response(code: int, detail: str, *, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 error response with a problem body; it announces the connection closes.

    An answer to HEAD leaves the body out (RFC 9110 section 9.3.2) and keeps its length.
    """
    body = problem_body(code, detail or HTTPStatus(code).description)
    head = (
        f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else body)


class HeaderReader(cheroot_server.HeaderReader):
    """Reads the header section with framing.py's rules: taken whole from what the gate has
    buffered and parsed in one pass when it is all there (as it is for every request the gate
    let through whole), else line by line."""

    def __init__(self, max_count: int) -> None:
        self.max_count = max_count

    def __call__(self, rfile: Any, hdict: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
        source = getattr(rfile, "rfile", None)  # cheroot's SizeCheckWrapper around the gate's
        block = source.take_header_block() if isinstance(source, GateReader) else None
        if block is None:
            headers = read_strict_headers(rfile, self.max_count)
        else:
            rfile.bytes_read += len(block)
            rfile._check_length()  # 431 past --max-header-bytes, as a line-by-line read
            headers = parse_header_block(block, self.max_count)
        if headers.get(b"Expect", b"").strip().lower() == b"100-continue":
            # The gate answered it when the head arrived, or the body came with the head;
            # cheroot would answer it again, after the body.
            del headers[b"Expect"]
        if hdict is not None:
            hdict.update(headers)
            return hdict
        return headers


class StrictConnection(cheroot_server.HTTPConnection):
    """A connection whose reads and writes go through the gate and whose close is counted.

    `close()` with a response still to send hands the connection to the gate, which closes it
    (`close_now()`) once the response is out or the client stops reading.
    """

    RequestHandlerClass = StrictRequest
    wfile: ResponseBuffer

    def __init__(self, server: Any, sock: socket.socket, makefile: Any = None) -> None:
        super().__init__(
            server, sock, functools.partial(gated_makefile, reply_budget=server.reply_budget)
        )
        self._closed = False

    def refuse(self, code: int, detail: str) -> None:
        """Answer with an error before any request was served, then close."""
        head_only = is_head_request(bytes(self.rfile.gate.pending[:_PEEK_BYTES]))
        self.server.connections.count_refusal(code)
        self.wfile.write(error_response(code, detail, head_only=head_only))
        self.close()

    def refuse_in_clear(self, code: int, detail: str) -> None:
        """Answer a client that spoke plain HTTP to the TLS port, in plain HTTP, in one
        send past the TLS layer (a small response into an empty socket buffer); the caller
        closes the connection."""
        with contextlib.suppress(OSError):
            socket.socket.send(self.socket, error_response(code, detail))

    def close(self) -> None:
        if self.wfile.pending and not self._closed:
            self.server.connections.finish(self)
        else:
            self.close_now()

    def close_now(self) -> None:
        """Close, dropping anything not yet sent."""
        if not self._closed:
            self._closed = True
            self.server.connections.connection_closed()
        self.wfile.close()
        super().close()
