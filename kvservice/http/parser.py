"""HTTP/1.1 request framing as a sans-IO parser: bytes in, events out, the state in one value.

This is the one place that decides where a request ends and whether it is refused (the
disagreement request smuggling lives on), and it knows nothing of sockets, threads or cheroot.
A transport feeds it what arrives (`receive_data`, from `data_received`) and loops on
`next_event()`, as uvicorn's h11 protocol does:

    parser.receive_data(data)
    while True:
        event = parser.next_event()
        if event is Signal.NEED_DATA or event is Signal.PAUSED: break
        if event is Signal.SEND_CONTINUE: write 100 Continue; continue
        if isinstance(event, Refusal): write its answer, close; break
        ... RequestHead, then Data pieces, then EndOfMessage ...

then, once its response is out, `start_next_cycle()` and loop again: pipelined bytes stay
buffered meanwhile. It is written after h11 (`_state.py`, `_receivebuffer.py`,
`_readers.py`); h11 itself could not be used as it is: it accepts what this server must
refuse (bare LF line ends, `0x` and signed chunk sizes, a repeated Authorization, targets
with characters RFC 3986 leaves out), has no limit on header count or body size, and does
not answer `Expect: 100-continue` before a body it would refuse.

Theory of operation
===================

One request at a time is received; `ReceiveState` says where it is:

    AWAITING_HEAD --RequestHead--> RECEIVING_BODY --Data*, EndOfMessage--> DONE
         ^                                                                  |
         +------------------------ start_next_cycle() ---------------------+

    DONE, if the request does not keep the connection alive --> MUST_CLOSE
    AWAITING_HEAD or RECEIVING_BODY --Refusal--> REFUSED

Every transition is in `TRANSITIONS`, a table (state, what happened) -> next state; the one
that is not triggered by an event (DONE becomes MUST_CLOSE when the request asked to close)
is applied where EndOfMessage is, and nowhere else. The readers that turn buffered bytes into
events are picked from a table too, by state (`_READERS`) and by body framing
(`BODY_READERS`). DONE, MUST_CLOSE and REFUSED read nothing: `next_event()` says PAUSED (or
gives the refusal again) and bytes that arrive meanwhile wait in the buffer (or, once the
connection will close, are dropped).

Each byte is examined a bounded number of times however the input is split: the buffer
remembers how far it has searched for a line end (`ReceiveBuffer`), the head is judged line by
line as lines complete (so a refused head is refused as soon as its bad line has arrived, not
when the blank line does), and a chunked body is decoded incrementally (`ChunkedBodyDecoder`),
never re-read from its start.

What is refused, and why (RFC 9112 and 9110), with the status and the wording:

- Up to EMPTY_LINES_BEFORE_REQUEST empty lines before a request line are skipped (RFC 9112
  2.2: a server SHOULD ignore at least one); they count against the head limit.
- The request line is exactly `method SP request-target SP HTTP-version` (RFC 9112 3), or 400;
  HTTP/1.0 and 1.1 only, or 505. The target may hold only the characters RFC 3986 allows (no
  whitespace, CTL, DEL, `#`, non-ASCII, and `%` only before two hex digits), so that no
  library downstream reads a key other than the one sent (`urlsplit` drops tabs and CRs). It
  is the origin form (`/path?q`), the absolute form (`http://host/path?q`, which a server MUST
  accept, RFC 9112 3.2.2: its path is routed and its authority replaces Host), or `*` for
  OPTIONS. A request line longer than `max_header_bytes` is 414; a head longer, or with more
  than `max_header_count` fields, 431.
- Every line ends with CRLF (a bare LF is refused at once); no obsolete line folding.
- A field value holding CR, LF or NUL is refused (RFC 9110 5.5), in any field.
- Singleton fields (`SINGLETON_HEADERS`: Host, Content-Length, Authorization, Content-Type)
  must not repeat: which one wins is exactly what a proxy and this server could disagree on.
  List fields (`LIST_HEADERS`, RFC 9110 5.3: If-Match, If-None-Match, Transfer-Encoding...)
  may repeat and are joined with commas, so one line or two say the same; any other repeated
  field keeps its last value, as none of them decides who the caller is or what is stored.
- Content-Length is digits only, and never beside Transfer-Encoding. Transfer-Encoding is
  judged as the list it is, however it is split over lines: chunked at most once and last
  (RFC 9112 6.1, 6.3); a coding other than chunked is 501; any coding on HTTP/1.0 is 400.
- An HTTP/1.1 request without Host is 400.
- A body declared over `max_body_bytes` is 413 before it is read; a chunked one, once its bytes
  on the wire pass the limit. A client that sent `Expect: 100-continue` is told to continue
  (SEND_CONTINUE) unless it declared a body over `max_continued_body_bytes`: that is 413
  before it sends it.
- Chunk sizes are 1-8 hex digits (no `0x`, no sign), lines at most MAX_CHUNK_LINE_BYTES, at
  most MAX_TRAILER_LINES trailer lines, chunk data followed by CRLF; or 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

CRLF = b"\r\n"
EMPTY_LINES_BEFORE_REQUEST = 4
"""Empty lines skipped before a request line (RFC 9112 2.2 says at least one)."""
SINGLETON_HEADERS = frozenset(b"Authorization Content-Length Content-Type Host".split())
"""Fields that must not be repeated: a second line is refused with 400."""
LIST_HEADERS = frozenset(
    b"Accept Accept-Charset Accept-Encoding Accept-Language Cache-Control Connection Expect "
    b"If-Match If-None-Match Pragma Te Trailer Transfer-Encoding Upgrade Via Warning".split()
)
"""List-valued fields (RFC 9110 5.3) that may be repeated and are joined with commas."""
MAX_CHUNK_LINE_BYTES = 1024
MAX_TRAILER_LINES = 32

_DIGITS = re.compile(rb"[0-9]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUES = re.compile(rb"[\r\n\x00]")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ ]*) HTTP/([0-9]+)\.([0-9]+)\r\n")
# RFC 3986's characters: unreserved, gen-delims but "#", sub-delims, and pct-encoded.
_TARGET = re.compile(rb"(?:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://([^/?@]+)(/[^?]*)?(?:\?(.*))?")
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,8}")

REQUEST_LINE_TOO_LONG = "The request line is too long."
HEAD_TOO_LARGE = "The request's header fields are too large or too many."


class ParseError(ValueError):
    """What the parser refuses, with the status that says why and the detail the client reads.

    A ValueError, so that code reading a body through the decoders treats it as any malformed
    input."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _bad_request(detail: str) -> ParseError:
    return ParseError(400, detail)


# -- the grammar: request line, header fields, body framing ----------------------------------


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


def parse_request_line(line: bytes) -> RequestLine:
    """Read a request line, its CRLF included; raises ParseError (400 or 505) if refused."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise _bad_request("Malformed request line: it must be METHOD SP TARGET SP HTTP/x.y CRLF.")
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version[0] != 1 or version > (1, 1):
        raise ParseError(505, "This server speaks HTTP/1.0 and HTTP/1.1.")
    if method.upper() != method:
        raise _bad_request("Method names are case-sensitive and upper case.")
    if not _TARGET.fullmatch(target):
        raise _bad_request(
            "The request target may hold only the characters RFC 3986 allows (no whitespace, "
            "control characters, '#' or non-ASCII; '%' only before two hex digits)."
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
    raise _bad_request(
        "The request target must be a path (/key), an absolute http(s) URI with a host and "
        "no user information, or * for OPTIONS."
    )


class HeaderFields:
    """A header section read one field line at a time, as lines arrive: each line is judged
    when it is added, the section as a whole when it ends (`finish`).

    Names are title-cased; list fields are joined with commas; repeated singletons, CR, LF or
    NUL in values, folding, malformed lines and too many fields raise ParseError.
    """

    def __init__(self, max_count: int) -> None:
        self.max_count = max_count
        self.fields: dict[bytes, bytes] = {}
        self._count = 0

    def add_line(self, line: bytes) -> None:
        """Judge and keep one field line, its line end included (not the empty line)."""
        if not line.endswith(CRLF):
            raise _bad_request("HTTP requires CRLF line terminators.")
        if line[:1] in (b" ", b"\t"):
            raise _bad_request("Obsolete header line folding is not accepted.")
        self._count += 1
        if self._count > self.max_count:
            raise ParseError(431, HEAD_TOO_LARGE)
        name, colon, value = line[:-2].partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _bad_request("Illegal header line.")
        name = name.title()
        value = value.strip(b" \t")
        if _FORBIDDEN_IN_VALUES.search(value):
            raise _bad_request(
                f"The {name.decode()} header holds CR, LF or NUL, which no field value may "
                "(RFC 9110 5.5)."
            )
        fields = self.fields
        if name in fields:
            if name in SINGLETON_HEADERS:
                raise _bad_request(f"Duplicate {name.decode()} header.")
            if name in LIST_HEADERS:
                value = fields[name] + b", " + value
        fields[name] = value

    def finish(self) -> dict[bytes, bytes]:
        """The fields, once the empty line has ended them; refuses ambiguous body framing."""
        fields = self.fields
        if b"Content-Length" in fields and b"Transfer-Encoding" in fields:
            raise _bad_request("Content-Length and Transfer-Encoding must not both be present.")
        length = fields.get(b"Content-Length")
        if length is not None and not _DIGITS.fullmatch(length):
            raise _bad_request("Content-Length must be a non-negative decimal integer.")
        codings = transfer_codings(fields.get(b"Transfer-Encoding", b""))
        if codings.count(b"chunked") > 1:
            raise _bad_request("Transfer-Encoding names chunked more than once (RFC 9112 6.1).")
        if b"chunked" in codings and codings[-1] != b"chunked":
            raise _bad_request("chunked must be the last transfer coding (RFC 9112 6.3).")
        return fields


def parse_fields(lines: Iterable[bytes], max_count: int) -> dict[bytes, bytes]:
    """A header section from its lines (line ends included), up to the empty line that ends
    it; raises ParseError if refused, or if the lines stop before the empty line."""
    section = HeaderFields(max_count)
    for line in lines:
        if line == CRLF:
            return section.finish()
        section.add_line(line)
    raise _bad_request("Illegal end of headers.")


def transfer_codings(value: bytes) -> list[bytes]:
    """The codings a Transfer-Encoding value lists, lower-cased, empty elements left out."""
    return [coding.strip(b" \t").lower() for coding in value.split(b",") if coding.strip(b" \t")]


def connection_options(value: bytes) -> set[bytes]:
    """The options a Connection value lists, lower-cased (RFC 9110 7.6.1: case-insensitive)."""
    return {option.strip(b" \t").lower() for option in value.split(b",")}


class ChunkedBodyDecoder:
    """The chunked transfer coding (RFC 9112 section 7.1), decoded incrementally and strictly.

    `feed()` takes whatever bytes have arrived and returns the body bytes they complete and
    how many of the given bytes it used; it stops at the end of the message (last chunk and
    trailers), so bytes after it (a pipelined request) are left unused. Malformed input raises
    ParseError (400): a size that is not 1-8 hex digits, a line longer than
    MAX_CHUNK_LINE_BYTES or not ended by CRLF, chunk data not followed by CRLF, or more than
    MAX_TRAILER_LINES trailer lines.
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
                    raise _bad_request(
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
                raise _bad_request(f"Bad chunked transfer coding: {self._what()} line is too long.")
            return len(source)
        self._line += source[position : newline + 1]
        line, self._line = bytes(self._line), bytearray()
        if not line.endswith(CRLF):
            raise _bad_request(f"Bad chunked transfer coding: {self._what()} line is malformed.")
        if self._in_trailers:
            self._trailer_line(line)
        else:
            self._size_line(line)
        return newline + 1

    def _what(self) -> str:
        return "trailer" if self._in_trailers else "chunk-size"

    def _size_line(self, line: bytes) -> None:
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not _HEX_DIGITS.fullmatch(size_text):
            raise _bad_request(f"Bad chunked transfer coding: chunk size {size_text!r}.")
        self._data_left = int(size_text, 16)
        self._in_trailers = self._data_left == 0

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_lines += 1
        if line == CRLF:
            self.done = True
        elif self._trailer_lines >= MAX_TRAILER_LINES:
            raise _bad_request("Bad chunked transfer coding: too many trailer lines.")


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request line and header section, accepted: what the request asks for and how its
    body is framed."""

    method: bytes
    target: bytes
    """The target in origin form (path and query, as sent): what is routed and logged."""
    path: bytes
    """The path as sent, still percent-encoded ("*" for OPTIONS *)."""
    query: bytes
    version: tuple[int, int]
    headers: Mapping[bytes, bytes]
    """Title-cased names; list fields joined; an absolute form's authority as Host; an
    `Expect: 100-continue` taken out (the parser answers it: `expects_continue`)."""
    content_length: int | None
    """The body's length (0: none), or None for a chunked body."""
    keep_alive: bool
    """Whether the connection may carry another request after this one (HTTP/1.1 unless
    `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`)."""
    expects_continue: bool
    """The client waits for `100 Continue` before it sends its body (RFC 9110 10.1.1)."""

    @property
    def chunked(self) -> bool:
        """Whether the body comes in the chunked coding."""
        return self.content_length is None


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of the request body, decoded."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The request's body (or its head, without one) has ended; trailers are dropped."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request is refused: answer `status` with `detail`, then close the connection."""

    status: int
    detail: str
    head_request: bool
    """The refused request was a HEAD, so the answer leaves its body out (RFC 9110 9.3.2)."""


class Signal(Enum):
    """What `next_event()` says when it has no event."""

    NEED_DATA = "need data"
    """Nothing more can be read until more bytes arrive."""
    SEND_CONTINUE = "send continue"
    """The client waits for `100 Continue` before it sends the body (once a request)."""
    PAUSED = "paused"
    """The request has ended: `start_next_cycle()` once it is answered (if the state is DONE)."""


Event = RequestHead | Data | EndOfMessage | Refusal | Signal


# -- the state ----------------------------------------------------------------------------------


class ReceiveState(Enum):
    """Where the request being received is (see the theory of operation above)."""

    AWAITING_HEAD = "awaiting head"
    RECEIVING_BODY = "receiving body"
    DONE = "done"
    MUST_CLOSE = "must close"
    REFUSED = "refused"


class _StartNextCycle:
    """What `start_next_cycle()` is, in the table of transitions."""


TRANSITIONS: dict[tuple[ReceiveState, type], ReceiveState] = {
    (ReceiveState.AWAITING_HEAD, RequestHead): ReceiveState.RECEIVING_BODY,
    (ReceiveState.AWAITING_HEAD, Refusal): ReceiveState.REFUSED,
    (ReceiveState.RECEIVING_BODY, Data): ReceiveState.RECEIVING_BODY,
    (ReceiveState.RECEIVING_BODY, EndOfMessage): ReceiveState.DONE,
    (ReceiveState.RECEIVING_BODY, Refusal): ReceiveState.REFUSED,
    (ReceiveState.DONE, _StartNextCycle): ReceiveState.AWAITING_HEAD,
}
"""(state, what happened) -> the next state. The one transition no event triggers, DONE ->
MUST_CLOSE for a request that does not keep the connection alive, follows EndOfMessage."""


class ProtocolStateError(RuntimeError):
    """The caller asked for something the state does not allow (`start_next_cycle()` before
    the request ended, or after the connection must close)."""


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """What a request may hold; each is injected from the server's configuration."""

    max_header_bytes: int
    """The request line and header section together (and empty lines before them)."""
    max_header_count: int
    max_body_bytes: int
    """A body's declared length, or a chunked body's bytes on the wire."""
    max_continued_body_bytes: int | None = None
    """The largest body a client that sends `Expect: 100-continue` is told to send; larger is
    413 before it is sent. None: `max_body_bytes`."""


# -- the receive buffer -------------------------------------------------------------------------


class ReceiveBuffer:
    """The bytes received and not yet turned into events, which never rescans what it has
    searched: it remembers how far it looked for a line end.

    `bytes_examined` counts the bytes it searched and handed out, so a test can see that each
    byte is examined a bounded number of times however the input is split.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._searched = 0
        """How far from the front a line end has been looked for, and not found."""
        self.bytes_examined = 0

    def __iadd__(self, data: bytes | bytearray | memoryview) -> ReceiveBuffer:
        self._data += data
        return self

    def __len__(self) -> int:
        return len(self._data)

    def __bytes__(self) -> bytes:
        return bytes(self._data)

    def peek(self) -> bytearray:
        """All the bytes buffered (do not change them)."""
        return self._data

    def hand_out(self, at_most: int) -> bytearray:
        """Up to `at_most` of the bytes buffered, for a decoder to examine (do not change
        them; `discard` what it used): counted as examined."""
        data = self._data if len(self._data) <= at_most else self._data[:at_most]
        self.bytes_examined += len(data)
        return data

    def extract(self, count: int) -> bytes:
        """Take up to `count` bytes off the front. (Deleting from the front of a bytearray is
        amortised O(bytes deleted) in CPython, so taking small pieces off a long buffer is
        linear overall.)"""
        taken = bytes(self._data[:count])
        del self._data[:count]
        self._searched = max(0, self._searched - len(taken))
        self.bytes_examined += len(taken)
        return taken

    def discard(self, count: int) -> None:
        """Drop `count` bytes off the front (a decoder has used them)."""
        del self._data[:count]
        self._searched = max(0, self._searched - count)

    def extract_line(self) -> bytes | None:
        """The first line with its LF, taken off the front; None while no LF has arrived."""
        end = self._data.find(b"\n", self._searched)
        self.bytes_examined += (len(self._data) if end < 0 else end + 1) - self._searched
        if end < 0:
            self._searched = len(self._data)
            return None
        self._searched = 0
        line = bytes(self._data[: end + 1])
        del self._data[: end + 1]
        return line

    def clear(self) -> None:
        """Drop everything buffered."""
        self._data.clear()
        self._searched = 0


# -- readers: buffered bytes -> events, one per state (and one per body framing) -----------------


class ContentLengthReader:
    """A body of known length: Data as it arrives, then EndOfMessage."""

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.started = False

    def __call__(self, buffer: ReceiveBuffer) -> Data | EndOfMessage | None:
        if not self.remaining:
            return EndOfMessage()
        if not len(buffer):
            return None
        self.started = True
        data = buffer.extract(self.remaining)
        self.remaining -= len(data)
        return Data(data)


class ChunkedReader:
    """A chunked body, decoded as it arrives; 413 once its bytes on the wire pass the limit."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.received = 0
        self.started = False
        self._decoder = ChunkedBodyDecoder()

    def __call__(self, buffer: ReceiveBuffer) -> Data | EndOfMessage | None:
        while not self._decoder.done:
            if not len(buffer):
                return None
            self.started = True
            # No further than one byte past the limit: what lies beyond is never judged.
            room = self.max_body_bytes - self.received + 1
            data, used = self._decoder.feed(buffer.hand_out(room))
            buffer.discard(used)
            self.received += used
            if self.received > self.max_body_bytes:
                raise ParseError(
                    413, f"The request body exceeds the limit of {self.max_body_bytes} bytes."
                )
            if data:
                return Data(data)
        return EndOfMessage()


BODY_READERS: dict[
    bool, Callable[[RequestHead, ParserLimits], ContentLengthReader | ChunkedReader]
] = {
    False: lambda head, limits: ContentLengthReader(head.content_length or 0),
    True: lambda head, limits: ChunkedReader(limits.max_body_bytes),
}
"""Whether the body is chunked -> the reader of a body so framed."""


class _HeadReader:
    """A request head, judged line by line as lines arrive: empty lines skipped first, then
    the request line, then field lines until the empty line; limits checked as it goes."""

    def __init__(self, limits: ParserLimits) -> None:
        self.limits = limits
        self.head_bytes = 0
        self.empty_lines = 0
        self.request_line: RequestLine | None = None
        self.fields = HeaderFields(limits.max_header_count)
        self.head_request = False

    def __call__(self, buffer: ReceiveBuffer) -> RequestHead | None:
        while True:
            line = buffer.extract_line()
            if line is None:
                if self.request_line is None:
                    self.head_request = buffer.peek().startswith(b"HEAD ")
                if self.head_bytes + len(buffer) > self.limits.max_header_bytes:
                    raise self._too_large()
                return None
            self.head_bytes += len(line)
            if self.head_bytes > self.limits.max_header_bytes:
                raise self._too_large()
            if self.request_line is None:
                if line == CRLF and self.empty_lines < EMPTY_LINES_BEFORE_REQUEST:
                    self.empty_lines += 1
                    continue
                self.head_request = line.startswith(b"HEAD ")
                self.request_line = parse_request_line(line)
            elif line == CRLF:
                return self._head(self.request_line, self.fields.finish())
            else:
                self.fields.add_line(line)

    def _too_large(self) -> ParseError:
        if self.request_line is None:
            return ParseError(414, REQUEST_LINE_TOO_LONG)
        return ParseError(431, HEAD_TOO_LARGE)

    def _head(self, line: RequestLine, fields: dict[bytes, bytes]) -> RequestHead:
        """The head, once its fields are in: what it says of the body and the connection."""
        version = line.version
        coding = fields.get(b"Transfer-Encoding")
        if coding is not None:
            codings = transfer_codings(coding)
            if version == (1, 0):
                raise _bad_request("Transfer-Encoding is not allowed on HTTP/1.0 requests.")
            if codings != [b"chunked"]:
                if not codings:
                    raise _bad_request("Transfer-Encoding names no coding.")
                raise ParseError(501, HTTPStatus(501).description)
        if version == (1, 1) and b"Host" not in fields:
            raise _bad_request("An HTTP/1.1 request must have a Host header (RFC 9112 3.2).")
        limits = self.limits
        length = None if coding is not None else _declared_length(fields, limits)
        asks_to_continue = fields.get(b"Expect", b"").strip().lower() == b"100-continue"
        if asks_to_continue:
            del fields[b"Expect"]  # answered here (or moot without a body); the app need not know
        expects_continue = asks_to_continue and length != 0
        if length is not None and length > limits.max_body_bytes:
            raise ParseError(
                413,
                f"The request body of {length} bytes exceeds the limit of "
                f"{limits.max_body_bytes} bytes.",
            )
        continued_limit = limits.max_continued_body_bytes or limits.max_body_bytes
        if expects_continue and length is not None and length > continued_limit:
            raise ParseError(
                413,
                f"The request body of {length} bytes would exceed the limit of "
                f"{continued_limit} bytes.",
            )
        if line.authority is not None:
            fields[b"Host"] = line.authority  # RFC 9112 3.2.2: the target's authority
        options = connection_options(fields.get(b"Connection", b""))
        keep_alive = b"close" not in options and (version == (1, 1) or b"keep-alive" in options)
        return RequestHead(
            method=line.method,
            target=line.origin_form,
            path=line.path,
            query=line.query,
            version=version,
            headers=fields,
            content_length=length,
            keep_alive=keep_alive,
            expects_continue=expects_continue,
        )


_MAX_LENGTH_DIGITS = 18
"""Declared lengths of more digits are refused before conversion: Python refuses to convert
more than 4,300 digits (a ValueError that would escape), and no body here is an exabyte."""


def _declared_length(fields: Mapping[bytes, bytes], limits: ParserLimits) -> int:
    """The Content-Length (0 without one), refused with 413 if it has too many digits to
    be a size any limit allows."""
    digits = fields.get(b"Content-Length", b"0").lstrip(b"0") or b"0"
    if len(digits) > _MAX_LENGTH_DIGITS:
        raise ParseError(
            413, f"The request body exceeds the limit of {limits.max_body_bytes} bytes."
        )
    return int(digits)


def empty_lines_length(data: bytes | bytearray) -> int:
    """How many bytes of empty lines (at most EMPTY_LINES_BEFORE_REQUEST) start `data`."""
    position = 0
    for _ in range(EMPTY_LINES_BEFORE_REQUEST):
        if not data.startswith(CRLF, position):
            break
        position += len(CRLF)
    return position


# -- the parser ---------------------------------------------------------------------------------


class RequestParser:
    """The requests arriving on one connection, one at a time: feed it bytes with
    `receive_data`, take events with `next_event()` until it says NEED_DATA or PAUSED, and
    call `start_next_cycle()` once a request (state DONE) has been answered.

    While it says PAUSED, the transport should stop reading (`pause_reading()`): what
    arrives meanwhile is buffered whole (`len(parser.buffer)`), with no limit of the
    parser's, until the next cycle reads it."""

    def __init__(self, limits: ParserLimits) -> None:
        self.limits = limits
        self.state = ReceiveState.AWAITING_HEAD
        self.buffer = ReceiveBuffer()
        self._head_reader = _HeadReader(limits)
        self._body_reader: ContentLengthReader | ChunkedReader | None = None
        self._head: RequestHead | None = None
        self._refusal: Refusal | None = None
        self._continue_signalled = False

    @property
    def request_in_progress(self) -> bool:
        """Whether part of a request has arrived and its end has not (what a request timeout,
        rather than the idle timeout, is for)."""
        if self.state is ReceiveState.AWAITING_HEAD:
            return bool(len(self.buffer)) or self._head_reader.head_bytes > 0
        return self.state is ReceiveState.RECEIVING_BODY

    @property
    def head_request(self) -> bool:
        """Whether the request being received (or refused) is a HEAD, as far as is known."""
        return self._head_reader.head_request

    @property
    def trailing_data(self) -> bytes:
        """The bytes received and not yet read: the next requests, pipelined."""
        return bytes(self.buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes as they arrive. Once the connection is to close (MUST_CLOSE, REFUSED),
        they are dropped: nothing more is read from it."""
        if self.state in (ReceiveState.MUST_CLOSE, ReceiveState.REFUSED):
            return
        self.buffer += data

    def next_event(self) -> Event:
        """The next event the bytes received make, or a Signal."""
        if self._refusal is not None:
            return self._refusal
        reader = _READERS.get(self.state)
        if reader is None:
            return Signal.PAUSED
        try:
            event = reader(self)
        except ParseError as error:
            refusal = Refusal(error.status, error.detail, self._head_reader.head_request)
            self._transition(refusal)
            self._refusal = refusal
            self.buffer.clear()
            return refusal
        if event is None:
            return self._waiting()
        self._transition(event)
        return event

    def start_next_cycle(self) -> None:
        """The request has been answered and the connection stays: read the next one (its
        bytes may have arrived already)."""
        self._transition(_StartNextCycle())
        self._head_reader = _HeadReader(self.limits)
        self._body_reader = None
        self._head = None
        self._continue_signalled = False

    def _waiting(self) -> Signal:
        """NEED_DATA, or SEND_CONTINUE once when the body has not started and the client
        waits to be told to send it."""
        head, reader = self._head, self._body_reader
        if (
            head is not None
            and head.expects_continue
            and reader is not None
            and not reader.started
            and not self._continue_signalled
        ):
            self._continue_signalled = True
            return Signal.SEND_CONTINUE
        return Signal.NEED_DATA

    def _transition(self, event: object) -> None:
        try:
            self.state = TRANSITIONS[(self.state, type(event))]
        except KeyError:
            raise ProtocolStateError(
                f"{type(event).__name__.strip('_')} is not allowed in state {self.state.name}"
            ) from None
        if isinstance(event, EndOfMessage) and not (self._head and self._head.keep_alive):
            self.state = ReceiveState.MUST_CLOSE

    def _read_head(self) -> RequestHead | None:
        head = self._head_reader(self.buffer)
        if head is not None:
            self._head = head
            self._body_reader = BODY_READERS[head.chunked](head, self.limits)
        return head

    def _read_body(self) -> Data | EndOfMessage | None:
        assert self._body_reader is not None  # set with the head
        return self._body_reader(self.buffer)


_READERS: dict[
    ReceiveState, Callable[[RequestParser], RequestHead | Data | EndOfMessage | None]
] = {
    ReceiveState.AWAITING_HEAD: RequestParser._read_head,
    ReceiveState.RECEIVING_BODY: RequestParser._read_body,
}
"""The reader for each state that reads; the others read nothing (PAUSED)."""
