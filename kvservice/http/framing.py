"""HTTP/1.1 message framing, read strictly: the one place that decides where a request ends.

Both the gate (which waits in the selector until a request has arrived) and the strict request
parser (which a worker runs) read request lines, heads and chunked bodies through these
functions, so the two can never disagree about where a message ends or whether it is refused:
the disagreement request smuggling lives on.

What is refused, and why (RFC 9112 and 9110):

- Up to EMPTY_LINES_BEFORE_REQUEST empty lines before a request line are skipped (RFC 9112
  2.2: a server SHOULD ignore at least one); they count against the head limit.
- The request line is exactly `method SP request-target SP HTTP-version` (RFC 9112 3). The
  target may hold only the characters RFC 3986 allows (no whitespace, CTL, DEL, `#`,
  non-ASCII, and `%` only before two hex digits), so that no library downstream reads a key
  other than the one sent (`urlsplit` drops tabs and CRs). It is the origin form (`/path?q`),
  the absolute form (`http://host/path?q`, which a server MUST accept, RFC 9112 3.2.2: its
  path is routed and its authority replaces Host), or `*` for OPTIONS.
- A field value holding CR, LF or NUL is refused (RFC 9110 5.5), in any field.
- Singleton fields (`SINGLETON_HEADERS`: Host, Content-Length, Authorization, Content-Type)
  must not repeat: which one wins is exactly what a proxy and this server could disagree on.
  List fields (`_LIST_HEADERS`, RFC 9110 5.3: If-Match, If-None-Match, Transfer-Encoding...)
  may repeat and are joined with commas, so one line or two say the same; any other repeated
  field keeps its last value, as none of them decides who the caller is or what is stored.
- Transfer-Encoding is judged as the list it is, however it is split over lines: chunked at
  most once and last (RFC 9112 6.1, 6.3); a coding other than chunked is 501.
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
    b"If-Match If-None-Match Pragma Te Trailer Transfer-Encoding Upgrade Via Warning".split()
)
SINGLETON_HEADERS = frozenset(b"Authorization Content-Length Content-Type Host".split())
"""Fields that must not be repeated: a second line is refused with 400."""
_FORBIDDEN_IN_VALUES = re.compile(rb"[\r\n\x00]")
EMPTY_LINES_BEFORE_REQUEST = 4
"""Empty lines skipped before a request line (RFC 9112 2.2 says at least one)."""
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ ]*) HTTP/([0-9]+)\.([0-9]+)\r\n")
# RFC 3986's characters: unreserved, gen-delims but "#", sub-delims, and pct-encoded.
_TARGET = re.compile(rb"(?:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://([^/?@]+)(/[^?]*)?(?:\?(.*))?")
HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,8}")
MAX_CHUNK_LINE_BYTES = 1024
MAX_TRAILER_LINES = 32
CHUNKED = -1
"""The length `body_framing` gives a chunked body."""


class TooManyHeaders(cheroot_errors.MaxSizeExceeded):
    """More header fields than `max_header_count`; answered with 431 like oversized headers."""


class BadRequestLine(ValueError):
    """A request line the server refuses, with the status that says why (400 or 505)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RequestLine:
    """A request line read strictly: what the request asks for, in origin form."""

    method: bytes
    path: bytes
    """The path as sent (still percent-encoded), "/" for an absolute form without one, or
    "*" for OPTIONS *."""
    query: bytes
    authority: bytes | None
    """The authority of an absolute-form target, which replaces Host; None otherwise."""
    version: tuple[int, int]

    @property
    def origin_form(self) -> bytes:
        """The target as the origin form says it: what is routed, checked and logged."""
        return self.path + (b"?" + self.query if self.query else b"")


def empty_lines_length(data: bytes | bytearray) -> int:
    """How many bytes of empty lines (at most EMPTY_LINES_BEFORE_REQUEST) start `data`."""
    position = 0
    for _ in range(EMPTY_LINES_BEFORE_REQUEST):
        if not data.startswith(CRLF, position):
            break
        position += len(CRLF)
    return position


def parse_request_line(line: bytes) -> RequestLine:
    """Read a request line, its CRLF included; raises BadRequestLine for what is refused."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequestLine(
            400, "Malformed request line: it must be METHOD SP TARGET SP HTTP/x.y CRLF."
        )
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version[0] != 1 or version > (1, 1):
        raise BadRequestLine(505, "This server speaks HTTP/1.0 and HTTP/1.1.")
    if method.upper() != method:
        raise BadRequestLine(400, "Method names are case-sensitive and upper case.")
    if not _TARGET.fullmatch(target):
        raise BadRequestLine(
            400,
            "The request target may hold only the characters RFC 3986 allows (no whitespace, "
            "control characters, '#' or non-ASCII; '%' only before two hex digits).",
        )
    if target.startswith(b"/"):
        path, _, query = target.partition(b"?")
        return RequestLine(method, path, query, None, version)
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute is not None:
        authority, path, query = absolute.groups()
        return RequestLine(method, path or b"/", query or b"", authority, version)
    if target == b"*" and method == b"OPTIONS":
        return RequestLine(method, target, b"", None, version)
    raise BadRequestLine(
        400,
        "The request target must be a path (/key), an absolute http(s) URI with a host and "
        "no user information, or * for OPTIONS.",
    )


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
        if _FORBIDDEN_IN_VALUES.search(value):
            raise ValueError(
                f"The {name.decode()} header holds CR, LF or NUL, which no field value may "
                "(RFC 9110 5.5)."
            )
        if name in headers:
            if name in SINGLETON_HEADERS:
                raise ValueError(f"Duplicate {name.decode()} header.")
            if name in _LIST_HEADERS:
                value = headers[name] + b", " + value
        headers[name] = value
    else:
        raise ValueError("Illegal end of headers.")

    if b"Content-Length" in headers and b"Transfer-Encoding" in headers:
        raise ValueError("Content-Length and Transfer-Encoding must not both be present.")
    length = headers.get(b"Content-Length")
    if length is not None and not _DIGITS.fullmatch(length):
        raise ValueError("Content-Length must be a non-negative decimal integer.")
    codings = transfer_codings(headers.get(b"Transfer-Encoding", b""))
    if codings.count(b"chunked") > 1:
        raise ValueError("Transfer-Encoding names chunked more than once (RFC 9112 6.1).")
    if b"chunked" in codings and codings[-1] != b"chunked":
        raise ValueError("chunked must be the last transfer coding (RFC 9112 6.3).")
    return headers


def transfer_codings(value: bytes) -> list[bytes]:
    """The codings a Transfer-Encoding value lists, lower-cased, empty elements left out."""
    return [coding.strip(b" \t").lower() for coding in value.split(b",") if coding.strip(b" \t")]


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

    `head` is a request line and its header fields, without the empty line that ends them,
    perhaps after empty lines (`empty_lines_length`).
    """
    head = head[empty_lines_length(head) :]
    request_line, _, fields = head.partition(CRLF)
    try:
        version = parse_request_line(request_line + CRLF).version
    except BadRequestLine:
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
        if transfer_codings(coding) != [b"chunked"] or version != (1, 1):
            return None  # refused with 400 or 501
        return Body(CHUNKED, expects_continue)
    if length is None or int(length) == 0:
        return None
    return Body(int(length), expects_continue)


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
        """Decode what `data` completes: (body bytes, how many bytes of `data` were used).

        Each byte is examined once, however the body is split over calls: a body fed in
        small pieces costs time linear in its length.
        """
        source = bytes(data) if isinstance(data, memoryview) else data
        body = bytearray()
        position = 0
        while position < len(source) and not self.done:
            if self._data_left:
                taken = source[position : position + self._data_left]
                body += taken
                position += len(taken)
                self._data_left -= len(taken)
                if not self._data_left:
                    self._crlf_left = 2
            elif self._crlf_left:
                expected = CRLF[2 - self._crlf_left :]
                taken = source[position : position + self._crlf_left]
                if bytes(taken) != expected[: len(taken)]:
                    raise ValueError(
                        "Bad chunked transfer coding: chunk data is not followed by CRLF."
                    )
                position += len(taken)
                self._crlf_left -= len(taken)
            else:
                position = self._feed_line(source, position)
        return bytes(body), position

    def _feed_line(self, source: bytes | bytearray, position: int) -> int:
        room = MAX_CHUNK_LINE_BYTES - len(self._line)
        newline = source.find(b"\n", position, position + room)
        if newline < 0:
            self._line += source[position : position + room]
            if len(self._line) >= MAX_CHUNK_LINE_BYTES:
                raise ValueError(f"Bad chunked transfer coding: {self._what()} line is too long.")
            return len(source)
        self._line += source[position : newline + 1]
        line, self._line = bytes(self._line), bytearray()
        if not line.endswith(CRLF):
            raise ValueError(f"Bad chunked transfer coding: {self._what()} line is malformed.")
        if self._in_trailers:
            self._trailer_line(line)
        else:
            self._size_line(line)
        return newline + 1

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
