"""HTTP/1.1 message framing, read strictly: the one place that decides where a request ends.

Both the gate (which waits in the selector until a request has arrived) and the strict request
parser (which a worker runs) read heads and chunked bodies through these functions, so the two
can never disagree about where a message ends: the disagreement request smuggling lives on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cheroot import errors as cheroot_errors

CRLF = b"\r\n"
_DIGITS = re.compile(rb"[0-9]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# List-valued fields (RFC 9110 section 5.3) that may be repeated and are joined with commas.
_LIST_HEADERS = frozenset(
    b"Accept Accept-Charset Accept-Encoding Accept-Language Cache-Control Connection Expect "
    b"If-Match If-None-Match Pragma Te Trailer Upgrade Via Warning".split()
)
HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,8}")
MAX_CHUNK_LINE_BYTES = 1024
MAX_TRAILER_LINES = 32
CHUNKED = -1
"""The length `body_framing` gives a chunked body."""


class TooManyHeaders(cheroot_errors.MaxSizeExceeded):
    """More header fields than `max_header_count`; answered with 431 like oversized headers."""


def read_strict_headers(rfile: Any, max_count: int) -> dict[bytes, bytes]:
    """Read a header section line by line from a stream, as `parse_header_block` judges it."""
    return _parse_fields(iter(rfile.readline, b""), max_count)


def parse_header_block(block: bytes, max_count: int) -> dict[bytes, bytes]:
    """Parse a whole header section already in memory: its field lines and the empty line
    that ends it (all that follows the request line, up to and including CRLF CRLF).

    Refuses anything that would make the message length ambiguous: raises ValueError
    (answered 400) for malformed or ambiguous framing and TooManyHeaders (answered 431) past
    `max_count` fields.
    """
    lines = block.split(b"\n")
    tail = lines.pop()  # what follows the last LF: nothing, in a whole block
    return _parse_fields([*(line + b"\n" for line in lines), *([tail] if tail else [])], max_count)


def _parse_fields(lines: Iterable[bytes], max_count: int) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    seen_framing: set[bytes] = set()
    for count, line in enumerate(lines, start=1):
        if line == CRLF:
            break
        if not line.endswith(CRLF):
            raise ValueError("HTTP requires CRLF line terminators.")
        if line[:1] in (b" ", b"\t"):
            raise ValueError("Obsolete header line folding is not accepted.")
        if count > max_count:
            raise TooManyHeaders
        name, colon, value = line[:-2].partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError("Illegal header line.")
        name = name.title()
        value = value.strip(b" \t")
        if name in (b"Content-Length", b"Transfer-Encoding", b"Host"):
            if name in seen_framing:
                raise ValueError(f"Duplicate {name.decode()} header.")
            seen_framing.add(name)
        if name in _LIST_HEADERS and name in headers:
            value = headers[name] + b", " + value
        headers[name] = value
    else:
        raise ValueError("Illegal end of headers.")

    if {b"Content-Length", b"Transfer-Encoding"} <= seen_framing:
        raise ValueError("Content-Length and Transfer-Encoding must not both be present.")
    length = headers.get(b"Content-Length")
    if length is not None and not _DIGITS.fullmatch(length):
        raise ValueError("Content-Length must be a non-negative decimal integer.")
    return headers


@dataclass(frozen=True, slots=True)
class Body:
    """What a request head says of the body after it."""

    length: int
    """Its length, or CHUNKED."""
    expects_continue: bool
    """The client waits for `100 Continue` before it sends the body (RFC 9110 10.1.1)."""


def body_framing(head: bytes, max_fields: int) -> Body | None:
    """The body that follows `head`, or None if there is none or the strict parser refuses
    the head before reading one.

    `head` is a request line and its header fields, without the empty line that ends them.
    """
    head = head.removeprefix(CRLF)  # cheroot skips one empty line before a request
    request_line, _, fields = head.partition(CRLF)
    version = _http_version(request_line)
    if version is None or version[0] != 1 or version > (1, 1):
        return None  # refused with 400 or 505
    try:
        section = fields + CRLF + CRLF if fields else CRLF
        headers = parse_header_block(section, max_fields)
    except (ValueError, TooManyHeaders):
        return None  # refused with 400 or 431
    if version == (1, 1) and b"Host" not in headers:
        return None  # refused with 400
    length = headers.get(b"Content-Length")
    coding = headers.get(b"Transfer-Encoding")
    expects_continue = headers.get(b"Expect", b"").strip().lower() == b"100-continue"
    if coding is not None:
        tokens = [token.strip().lower() for token in coding.split(b",") if token.strip()]
        chunked = bool(tokens) and all(token == b"chunked" for token in tokens)
        if not chunked or version != (1, 1):
            return None  # refused with 400 or 501
        return Body(CHUNKED, expects_continue)
    if length is None or int(length) == 0:
        return None
    return Body(int(length), expects_continue)


def _http_version(request_line: bytes) -> tuple[int, int] | None:
    """The version as cheroot reads it, or None where cheroot refuses the request line."""
    if b"\n" in request_line:
        return None
    parts = request_line.strip().split(b" ", 2)
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    major, dot, minor = parts[2][5:].partition(b".")
    try:
        return (int(major), int(minor)) if dot else None
    except ValueError:
        return None


class ChunkedBodyDecoder:
    """The chunked transfer coding (RFC 9112 section 7.1), decoded incrementally and strictly.

    Sans-IO: `feed()` takes whatever bytes have arrived and returns the body bytes they
    complete and how many of the given bytes it used; it stops at the end of the message
    (last chunk and trailers), so bytes after it (a pipelined request) are left unused.
    Malformed input raises ValueError, answered 400: a size that is not 1-8 hex digits, a
    line longer than MAX_CHUNK_LINE_BYTES or not ended by CRLF, chunk data not followed by
    CRLF, or more than MAX_TRAILER_LINES trailer lines. The gate feeds it what the selector
    received to learn whether a body has arrived whole; the worker's body reader feeds it the
    same bytes to decode them, so the two cannot disagree on where a body ends.
    """

    def __init__(self) -> None:
        self._line = bytearray()
        """The part of a size or trailer line received so far."""
        self._data_left = 0
        """Bytes of the current chunk's data still to come."""
        self._crlf_left = 0
        """Bytes of the CRLF after the current chunk's data still to come."""
        self._trailer_lines = 0
        self._in_trailers = False
        self.done = False
        """True once the last chunk and the trailers have been read."""

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Decode what `data` completes: (body bytes, how many bytes of `data` were used)."""
        view = memoryview(data)
        body = bytearray()
        position = 0
        while position < len(view) and not self.done:
            if self._data_left:
                taken = view[position : position + self._data_left]
                body += taken
                position += len(taken)
                self._data_left -= len(taken)
                if not self._data_left:
                    self._crlf_left = 2
            elif self._crlf_left:
                expected = CRLF[2 - self._crlf_left :]
                taken = view[position : position + self._crlf_left]
                if bytes(taken) != expected[: len(taken)]:
                    raise ValueError(
                        "Bad chunked transfer coding: chunk data is not followed by CRLF."
                    )
                position += len(taken)
                self._crlf_left -= len(taken)
            else:
                position = self._feed_line(view, position)
        return bytes(body), position

    def _feed_line(self, view: memoryview, position: int) -> int:
        room = MAX_CHUNK_LINE_BYTES - len(self._line)
        newline = bytes(view[position : position + room]).find(b"\n")
        if newline < 0:
            self._line += view[position : position + room]
            if len(self._line) >= MAX_CHUNK_LINE_BYTES:
                raise ValueError(f"Bad chunked transfer coding: {self._what()} line is too long.")
            return len(view)
        self._line += view[position : position + newline + 1]
        line, self._line = bytes(self._line), bytearray()
        if not line.endswith(CRLF):
            raise ValueError(f"Bad chunked transfer coding: {self._what()} line is malformed.")
        if self._in_trailers:
            self._trailer_line(line)
        else:
            self._size_line(line)
        return position + newline + 1

    def _what(self) -> str:
        return "trailer" if self._in_trailers else "chunk-size"

    def _size_line(self, line: bytes) -> None:
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not HEX_DIGITS.fullmatch(size_text):
            raise ValueError(f"Bad chunked transfer coding: chunk size {size_text!r}.")
        self._data_left = int(size_text, 16)
        self._in_trailers = self._data_left == 0

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_lines += 1
        if line == CRLF:
            self.done = True
        elif self._trailer_lines >= MAX_TRAILER_LINES:
            raise ValueError("Bad chunked transfer coding: too many trailer lines.")


def chunked_body_complete(body: bytes | bytearray | memoryview) -> bool:
    """True once a chunked body has ended (trailers included) or shown itself malformed."""
    decoder = ChunkedBodyDecoder()
    try:
        decoder.feed(body)
    except ValueError:
        return True  # malformed: the worker's reader refuses it with 400
    return decoder.done
