"""A raw-socket fuzzer of kvservice's HTTP/1.1 parsing: request lines, headers, chunked framing.

A seeded generator mutates well-formed requests (and sometimes sends plain noise), each on a
connection of its own. The server's answers are judged against a reference reading of the
same bytes (`expected_framing`), written from RFC 9112 and the strict rules in the README,
which says how many requests the bytes hold that a server must answer without waiting for
more, and whether an incomplete one trails them. For every case:

- every response is well formed: an HTTP/1.1 status line, header fields, a Content-Length
  its body matches (none for HEAD), an `application/problem+json` body naming the same
  status for errors, no Python traceback, nothing after a response that closed;
- no 5xx, except 501 for a transfer coding other than chunked and 505 for an HTTP version
  other than 1.x, which are RFC 9112's required answers, not failures;
- never more responses than the reference finds requests (no smuggling);
- a request whose head the reference refuses (a request line or target outside RFC 9112
  and 3986, a CR or NUL in a field value, a repeated singleton field, chunked twice or not
  last, more empty lines first than are skipped) never gets a 1xx-3xx answer: what a
  proxy would read otherwise is never served;
- no hang: the server answers every whole request within ANSWER_TIMEOUT_S. It may keep
  waiting only where the bytes end in an incomplete request (a head without its blank line,
  a body or chunk shorter than announced: it cannot know more is not coming) or after a
  kept-alive response. Then the client half-closes, and the server must close within
  CLOSE_TIMEOUT_S.

The server must stay up: /_health answers every HEALTH_EVERY cases and at the end, and
nothing is logged at ERROR. The summary line gives the figures for docs/RELIABILITY.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import pytest

from kvservice.execution import Execution, ExecutionPolicy
from tests.conftest import StartKV
from tests.support.servers import http_settings

SEED = 20240605
CASES = 5000
HEALTH_EVERY = 100
MAX_FAILURES = 20
ANSWER_TIMEOUT_S = 1.0
CLOSE_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 2.0
SETTINGS = http_settings(threads=8, socket_timeout_s=2.0)
MAX_HEADER_COUNT = SETTINGS.max_header_count
HEAD_LIMIT_SLACK = 256
"""The reference does not count the head exactly as the server does; near the limit it
lets the server either refuse the head or wait for the rest of the request."""

CRLF = b"\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]+")
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,8}")
_MAX_CHUNK_LINE_BYTES = 1024
_MAX_TRAILER_LINES = 32
_EMPTY_LINES_SKIPPED = 4
_URI_CHARACTERS = re.compile(rb"[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+")
_SINGLETONS = {b"host", b"content-length", b"authorization", b"content-type"}
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\x20-\x7e]*")
_RFC_REQUIRED_5XX = {501, 505}


# -- the reference: how many requests a server must answer, and whether one is unfinished -----


class Verdict(Enum):
    """What a strict server must do with the next message on a connection."""

    WHOLE = "whole"  # all of it arrived: answer it
    REFUSED = "refused"  # malformed or over a limit: answer at once, then close
    INCOMPLETE = "incomplete"  # well-formed so far and unfinished: waiting is legitimate


@dataclass(frozen=True)
class Message:
    verdict: Verdict
    end: int = 0
    method: bytes = b""
    keep_alive: bool = False
    head_refused: bool = False
    """Refused for its request line or header fields, before any body is read."""


@dataclass(frozen=True)
class Framing:
    """The reference reading of one case's bytes."""

    answerable: int
    """Requests a server must answer without waiting for another byte."""
    incomplete_tail: bool
    """Whether an unfinished request follows them (the server may wait for it, or refuse it)."""
    methods: tuple[bytes, ...]
    """The method of each request, in order, when its request line could be read."""
    refused: bool = False
    """Whether the last request the server must answer is one whose head it must refuse (4xx
    or 5xx, whatever the route)."""


def expected_framing(data: bytes, max_head: int, max_body: int) -> Framing:
    """Read `data` as a strict HTTP/1.1 server must (RFC 9112, the README's framing rules)."""
    answerable = 0
    methods: list[bytes] = []
    position = 0
    while position < len(data):
        message = _frame_message(data, position, max_head, max_body)
        methods.append(message.method)
        if message.verdict is Verdict.INCOMPLETE:
            return Framing(answerable, True, tuple(methods))
        answerable += 1
        if message.verdict is Verdict.REFUSED:
            return Framing(answerable, False, tuple(methods), refused=message.head_refused)
        if not message.keep_alive:
            break
        position = message.end
    return Framing(answerable, False, tuple(methods))


def _frame_message(data: bytes, start: int, max_head: int, max_body: int) -> Message:
    position = start
    for _ in range(_EMPTY_LINES_SKIPPED):  # RFC 9112 section 2.2
        if data.startswith(CRLF, position):
            position += 2
    head_end = data.find(CRLF + CRLF, position)
    # HEAD is a request line that starts with it; anything else is not a HEAD.
    method, space, _ = data[position:].split(b"\n", 1)[0].partition(b" ")
    method = method if space else b""
    if head_end < 0:
        # Under strict CRLF rules a head is not over until its blank line arrives.
        too_large = len(data) - start > max_head + HEAD_LIMIT_SLACK
        return Message(Verdict.REFUSED if too_large else Verdict.INCOMPLETE, method=method)
    if head_end - start > max_head + HEAD_LIMIT_SLACK:
        return Message(Verdict.REFUSED, method=method)
    if head_end - start > max_head - HEAD_LIMIT_SLACK:
        return Message(Verdict.INCOMPLETE, method=method)  # either answer is right here
    request_line, *field_lines = data[position:head_end].split(CRLF)
    refused = Message(Verdict.REFUSED, method=method, head_refused=True)
    if any(b"\n" in line for line in (request_line, *field_lines)):
        return refused  # a bare LF ends a line early for a strict reader
    version = _request_line_version(request_line)
    if version is None:
        return refused
    fields = _header_fields(field_lines)
    if fields is None:
        return refused
    lengths = fields.get(b"content-length", [])
    if lengths and b"transfer-encoding" in fields:
        return refused
    # Connection options are case-insensitive tokens (RFC 9110 7.6.1), however many lines.
    options = {
        option.strip(b" \t").lower()
        for line in fields.get(b"connection", [])
        for option in line.split(b",")
    }
    keep_alive = b"close" not in options if version == (1, 1) else b"keep-alive" in options
    body_start = head_end + 4
    if b"transfer-encoding" in fields:
        # One list however it is split over lines (RFC 9110 5.3): only chunked, once, is read;
        # any other coding is 501, chunked twice or not last 400.
        codings = [
            coding.strip(b" \t").lower()
            for line in fields[b"transfer-encoding"]
            for coding in line.split(b",")
            if coding.strip(b" \t")
        ]
        if version != (1, 1) or codings != [b"chunked"]:
            return refused
        verdict, end = _frame_chunked(data, body_start)
        return Message(verdict, end, method, keep_alive)
    length_text = lengths[0] if lengths else b"0"
    if not _DIGITS.fullmatch(length_text) or int(length_text) > max_body:
        return refused
    end = body_start + int(length_text)
    verdict = Verdict.WHOLE if len(data) >= end else Verdict.INCOMPLETE
    return Message(verdict, end, method, keep_alive)


def _request_line_version(line: bytes) -> tuple[int, int] | None:
    """The version of a request line RFC 9112 section 3 accepts, or None. It is `METHOD SP
    target SP HTTP/x.y`: an upper-case token; a target of RFC 3986's characters (a `%` only
    before two hex digits) in origin form, in absolute http(s) form with a host and no user
    information, or `*` for OPTIONS; a 1.x version."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, protocol = parts
    version = _http_version(protocol)
    if version is None or version[0] != 1 or version > (1, 1):
        return None
    if not _TOKEN.fullmatch(method) or method != method.upper():
        return None
    if not _URI_CHARACTERS.fullmatch(target) or re.search(rb"%(?![0-9A-Fa-f]{2})", target):
        return None
    scheme, separator, rest = target.partition(b"://")
    if separator and scheme.lower() in (b"http", b"https"):
        authority = re.split(rb"[/?]", rest, maxsplit=1)[0]
        return version if authority and b"@" not in authority else None
    if target.startswith(b"/") or (target == b"*" and method == b"OPTIONS"):
        return version
    return None


def _http_version(protocol: bytes) -> tuple[int, int] | None:
    """The version of `HTTP/` DIGITS `.` DIGITS."""
    match = re.fullmatch(rb"HTTP/([0-9]+)\.([0-9]+)", protocol)
    return None if match is None else (int(match[1]), int(match[2]))


def _header_fields(lines: list[bytes]) -> dict[bytes, list[bytes]] | None:
    """Field values by lower-cased name, or None where a strict reader refuses the section."""
    if len(lines) > MAX_HEADER_COUNT:
        return None
    fields: dict[bytes, list[bytes]] = collections.defaultdict(list)
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            return None  # obsolete line folding
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or re.search(rb"[\r\x00]", value):
            return None  # a CR or NUL in a value (RFC 9110 5.5)
        if name.lower() in _SINGLETONS and name.lower() in fields:
            return None
        fields[name.lower()].append(value.strip(b" \t"))
    return fields


def _frame_chunked(data: bytes, position: int) -> tuple[Verdict, int]:
    """Walk a chunked body as StrictChunkedReader does: where it ends, or why it cannot."""
    while True:
        line, position = _chunk_line(data, position)
        if line is None:
            return Verdict.INCOMPLETE, 0
        if not line.endswith(CRLF):
            return Verdict.REFUSED, 0
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not _HEX_DIGITS.fullmatch(size_text):
            return Verdict.REFUSED, 0
        size = int(size_text, 16)
        if size == 0:
            return _frame_trailers(data, position)
        if len(data) < position + size + 2:
            return Verdict.INCOMPLETE, 0
        if data[position + size : position + size + 2] != CRLF:
            return Verdict.REFUSED, 0
        position += size + 2


def _frame_trailers(data: bytes, position: int) -> tuple[Verdict, int]:
    for _ in range(_MAX_TRAILER_LINES):
        line, position = _chunk_line(data, position)
        if line is None:
            return Verdict.INCOMPLETE, 0
        if line == CRLF:
            return Verdict.WHOLE, position
        if not line.endswith(CRLF):
            return Verdict.REFUSED, 0
    return Verdict.REFUSED, 0


def _chunk_line(data: bytes, position: int) -> tuple[bytes | None, int]:
    """A line as `readline(1024)` returns it; None if it has not fully arrived."""
    newline = data.find(b"\n", position, position + _MAX_CHUNK_LINE_BYTES)
    if newline < 0:
        if len(data) - position >= _MAX_CHUNK_LINE_BYTES:
            end = position + _MAX_CHUNK_LINE_BYTES
            return data[position:end], end
        return None, position
    return data[position : newline + 1], newline + 1


# -- responses --------------------------------------------------------------------------------


class MalformedResponse(Exception):
    """The server's bytes are not a sequence of well-formed HTTP/1.1 responses."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_responses(data: bytes, methods: tuple[bytes, ...]) -> tuple[list[Response], int]:
    """Final responses and the count of interim (1xx) ones; raises MalformedResponse."""
    responses: list[Response] = []
    interim = 0
    position = 0
    while position < len(data):
        if responses and responses[-1].headers.get(b"connection", b"").lower() == b"close":
            raise MalformedResponse("bytes after a response that closed the connection")
        head_end = data.find(CRLF + CRLF, position)
        if head_end < 0:
            raise MalformedResponse("a response head without its blank line")
        status_line, *field_lines = data[position:head_end].split(CRLF)
        status_match = _STATUS_LINE.fullmatch(status_line)
        if status_match is None:
            raise MalformedResponse(f"bad status line {status_line[:80]!r}")
        status = int(status_match[1])
        headers: dict[bytes, bytes] = {}
        for line in field_lines:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or name.lower() in headers:
                raise MalformedResponse(f"bad or repeated header field {line[:80]!r}")
            headers[name.lower()] = value.strip(b" \t")
        position = head_end + 4
        if status < 200:
            interim += 1  # 100 Continue: no body, the final response follows
            continue
        method = methods[len(responses)] if len(responses) < len(methods) else b""
        length_text = headers.get(b"content-length", b"0" if status in (204, 304) else None)
        if length_text is None or not _DIGITS.fullmatch(length_text):
            raise MalformedResponse(f"{status} response without a valid Content-Length")
        length = 0 if method == b"HEAD" or status in (204, 304) else int(length_text)
        body = data[position : position + length]
        if len(body) != length:
            raise MalformedResponse(f"{status} body has {len(body)} of {length} bytes")
        position += length
        responses.append(Response(status, headers, body))
    return responses, interim


def response_problems(response: Response, request: bytes) -> list[str]:
    """What is wrong with one well-framed response, if anything."""
    problems = []
    status = response.status
    if status >= 500 and not (status in _RFC_REQUIRED_5XX and _rfc_requires(status, request)):
        problems.append(f"server error {status}")
    if b"Traceback" in response.body:
        problems.append("a Python traceback in the body")
    if status >= 400 and response.body:
        content_type = response.headers.get(b"content-type")
        if content_type != b"application/problem+json":
            problems.append(f"{status} with Content-Type {content_type!r}")
        else:
            try:
                problem = json.loads(response.body)
            except ValueError:
                problems.append(f"{status} with a problem body that is not JSON")
            else:
                # The app's problems name the request; the transport's come before it has one.
                if set(problem) - {"request_id"} != {"type", "title", "status", "detail"}:
                    problems.append(f"{status} problem with fields {sorted(problem)}")
                elif problem["status"] != status:
                    problems.append(f"{status} problem saying status {problem['status']}")
    return problems


def _rfc_requires(status: int, request: bytes) -> bool:
    """501 answers an unknown transfer coding (RFC 9112 6.1); 505 an HTTP version not 1.x."""
    for _ in range(_EMPTY_LINES_SKIPPED):
        request = request.removeprefix(CRLF)
    head = request.split(CRLF + CRLF, 1)[0].lower()
    if status == 501:
        return b"\ntransfer-encoding" in head
    parts = request.split(b"\n", 1)[0].strip().split(b" ", 2)
    version = _http_version(parts[-1]) if len(parts) == 3 else None
    return version is not None and (version[0] != 1 or version > (1, 1))


# -- one case over one connection -------------------------------------------------------------


class Ending(Enum):
    """How a case's connection ended."""

    CLOSED = "closed by the server"
    RESET = "reset by the server"
    KEPT_ALIVE = "kept alive after answering"
    WAITING = "waiting for the rest of a request"
    UNANSWERED = "a whole request unanswered"
    HUNG = "still open after the client's EOF"


@dataclass
class Outcome:
    ending: Ending
    received: bytes
    elapsed_s: float


def run_case(port: int, request: bytes, framing: Framing) -> Outcome:
    """Send `request`; wait for the answers it must get; then half-close and wait for the close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S) as sock:
        # The server may refuse early and close; what it sent is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        received, ending = _read_answers(sock, framing, started + ANSWER_TIMEOUT_S)
        if ending is None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            rest, closed = _read_until_closed(sock, time.monotonic() + CLOSE_TIMEOUT_S)
            received += rest
            answered = _final_responses(received, framing) >= framing.answerable
            if not closed:
                ending = Ending.HUNG
            elif not answered:
                ending = Ending.UNANSWERED
            elif _closes(received, framing):
                ending = Ending.CLOSED
            else:
                ending = Ending.WAITING if framing.incomplete_tail else Ending.KEPT_ALIVE
    return Outcome(ending, received, time.monotonic() - started)


def _read_answers(
    sock: socket.socket, framing: Framing, deadline: float
) -> tuple[bytes, Ending | None]:
    """Read until the server closes or has answered every whole request (None: still open)."""
    received = b""
    while _final_responses(received, framing) < framing.answerable:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return received, None
        except ConnectionResetError:
            return received, Ending.RESET
        if not chunk:
            return received, Ending.CLOSED
        received += chunk
    return received, None


def _read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    received = b""
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def _closes(received: bytes, framing: Framing) -> bool:
    """Whether the last response announced that the server closes the connection."""
    with contextlib.suppress(MalformedResponse):
        responses = parse_responses(received, framing.methods)[0]
        return bool(responses) and responses[-1].headers.get(b"connection") == b"close"
    return False


def _final_responses(received: bytes, framing: Framing) -> int:
    try:
        return len(parse_responses(received, framing.methods)[0])
    except MalformedResponse:
        return 0  # not all of it has arrived yet


# -- the generator ----------------------------------------------------------------------------


@dataclass
class Request:
    """A request under construction: mutated as parts, then as bytes."""

    method: bytes
    target: bytes
    version: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunks: list[bytes] | None = None
    """Chunked body lines and data, joined as they are (mutations may break them)."""
    line_end: bytes = CRLF
    raw_fields: list[bytes] = field(default_factory=list)
    """Header lines added verbatim (folded, colon-less, huge)."""
    leading: bytes = b""
    """What comes before the request line (empty lines)."""

    def to_bytes(self) -> bytes:
        lines = [self.method + b" " + self.target + b" " + self.version]
        lines += [name + b": " + value for name, value in self.fields]
        lines += self.raw_fields
        head = self.leading + b"".join(line + self.line_end for line in lines) + self.line_end
        body = b"".join(self.chunks) if self.chunks is not None else self.body
        return head + body


KEYS = [b"fz", b"fz1", b"K" * 255, b"K" * 256, b"_health", b"fz%20x", b"fz-1", b"%ff"]
PATHS = [b"/", b"/_health", b"/_nothing", b"/fz/history", b"/a/b/c", b"*", b"//fz"]
METHODS = [b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"]
ODD_METHODS = [b"get", b"G\x00T", b"CONNECT", b"", b"M" * 300, b"GET\tX", b"\xff\xfe"]
ODD_TARGETS = [
    b"http://127.0.0.1/fz",
    b"/fz#frag",
    b"/fz?q=1&q=2",
    b"/fz%",
    b"/fz%zz",
    b"/%00",
    b"/fz\x00",
    b"/\xc3\xa9",
    b"/" + b"a" * 20_000,
    b"/fz x",
    b"",
    b"/fz/../_health",
    # Whitespace, controls and non-URI bytes, which urlsplit drops or a proxy reads otherwise.
    b"/fz\tx",
    b"/fz\t",
    b"/f\rz",
    b"/fz\x01",
    b"/fz\x1b",
    b"/fz\x7f",
    b"/fz\x0b",
    b"/fz%2",
    b"/fz%2Fx",
    b"/fz\\x",
    b"/fz{x}",
    # The absolute form, which a server must accept, and forms it must not.
    b"http://127.0.0.1/fz",
    b"HTTP://127.0.0.1:1/fz?x=1",
    b"https://h/fz",
    b"http://127.0.0.1",
    b"http:///fz",
    b"http://user@h/fz",
    b"ftp://h/fz",
    b"http://h/fz\tx",
    b"//fz",
    b"*",
]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 2
ODD_VERSIONS = [
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"HTTP/1.2",
    b"HTTP/1.01",
    b"HTTP/1.1x",
    b"http/1.1",
    b"HTTP/1",
    b"HTTP/-1.1",
    b"HTTP/1.1_0",
    b"HTTP/1.1 extra",
    b"",
    b"HTTP/ 1.1",
    b"HTTP/9999999999999999999.1",
]
BAD_LENGTHS = [b"+5", b"-1", b"0x5", b"5, 5", b"5 5", b"", b"1e3", b"\xd9\xa5", b"05", b"5\x00"]
BAD_LENGTHS += [b"99999999999999999999999", b"65537", b" 5", b"5\x0b", b"1_0"]
CODINGS = [b"chunked", b"Chunked", b"chunked, chunked", b"gzip", b"gzip, chunked"]
CODINGS += [b"chunked, gzip", b"identity", b"", b"chunked;q=1", b"\x0bchunked", b"chunk"]
CODINGS += [b"chunked,chunked", b"CHUNKED ,\tchunked", b", chunked", b"chunked ,", b"chunked,,"]
SINGLETONS = [b"Host", b"Authorization", b"Content-Type", b"Content-Length", b"host"]
CONTENT_TYPES = [b"text/plain\r", b"text/plain\x00", b"text/plain\rSet-Cookie: x=1", b"a\x01b"]
CONTENT_TYPES += [b"text/\x1bplain", b"text/plain\x7f", b"text/plain;\tq=1", b"text/\xe9"]
CHUNK_SIZES = [b"0x5", b"+5", b"-1", b"zz", b"5 5", b"ffffffff", b"100000000", b"000000005"]
CHUNK_SIZES += [b"", b"5\x00", b" 5", b"5 ", b"\xd9\xa5", b"fffffffffffffff"]


class Fuzzer:
    """Deterministic cases from one seed: base requests, mutated in parts and as bytes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def cases(self, count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield self.case()

    def case(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.04:
            return self.noise()
        if roll < 0.12:
            return b"".join(self.request().to_bytes() for _ in range(rng.randint(2, 4)))
        request = self.request()
        for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
            rng.choice(self.PART_MUTATIONS)(self, request)
        data = request.to_bytes()
        if data and rng.random() < 0.25:
            data = rng.choice(self.BYTE_MUTATIONS)(self, data)
        if rng.random() < 0.1:
            data += self.request().to_bytes()  # something pipelined behind it
        return data

    def noise(self) -> bytes:
        size = self.rng.choice([1, 2, 16, 200, 5000])
        return self.rng.randbytes(size)

    def request(self) -> Request:
        rng = self.rng
        method = rng.choice(METHODS)
        key = rng.choice(KEYS)
        target = rng.choice([b"/" + key, b"/" + key, b"/" + key + b"/history", rng.choice(PATHS)])
        fields = [(b"Host", b"127.0.0.1")]
        if rng.random() < 0.7:
            fields.append((b"Connection", b"close"))
        request = Request(method, target, rng.choice(VERSIONS), fields)
        if method in (b"PUT", b"POST") or rng.random() < 0.1:
            body = self.value()
            if rng.random() < 0.3:
                content_type = rng.choice([b"application/json", b"text/plain", b"x/y+json"])
                request.fields.append((b"Content-Type", content_type))
            if request.version == b"HTTP/1.1" and rng.random() < 0.35:
                request.fields.append((b"Transfer-Encoding", b"chunked"))
                request.chunks = self.chunked(body)
            else:
                request.fields.append((b"Content-Length", b"%d" % len(body)))
                request.body = body
        return request

    def value(self) -> bytes:
        rng = self.rng
        kind = rng.random()
        if kind < 0.3:
            return b'{"a": [1, 2]}'
        if kind < 0.5:
            return rng.randbytes(rng.choice([0, 1, 10, 100, 1024, 1025, 3000]))
        return b"v" * rng.choice([0, 1, 5, 64, 1024, 1025])

    def chunked(self, body: bytes) -> list[bytes]:
        rng = self.rng
        chunks = []
        position = 0
        while position < len(body):
            size = rng.randint(1, max(1, len(body) - position))
            piece = body[position : position + size]
            extension = rng.choice([b"", b"", b"", b";a=b", b"; x", b';q="1"'])
            chunks += [b"%x" % len(piece) + extension + CRLF, piece + CRLF]
            position += size
        chunks.append(b"0" + CRLF)
        if rng.random() < 0.2:
            chunks.append(b"X-Trailer: t" + CRLF)
        chunks.append(CRLF)
        return chunks

    # -- mutations of parts ---------------------------------------------------------------------

    def odd_method(self, request: Request) -> None:
        request.method = self.rng.choice(ODD_METHODS)

    def odd_target(self, request: Request) -> None:
        request.target = self.rng.choice(ODD_TARGETS)

    def odd_version(self, request: Request) -> None:
        request.version = self.rng.choice(ODD_VERSIONS)

    def odd_field(self, request: Request) -> None:
        rng = self.rng
        names = [b"X-Fuzz", b"X\x00Y", b"X Y", b"", b"\xff", b"N" * 20_000, b"X-\r", b"X:Y"]
        values = [b"v", b"\x00", b"a\rb", b"\xff\xfe", b"v" * 20_000, b" ", b"\x7f", b"\tv\t"]
        request.fields.insert(
            rng.randint(0, len(request.fields)), (rng.choice(names), rng.choice(values))
        )

    def raw_line(self, request: Request) -> None:
        lines = [b" folded", b"\tfolded", b"no colon", b":empty name", b"X-A : spaced"]
        lines += [b"Content-Length : 5", b"Transfer-Encoding : chunked", b"X-B:\x00"]
        request.raw_fields.append(self.rng.choice(lines))

    def bad_length(self, request: Request) -> None:
        self._drop(request, b"content-length")
        request.fields.append((b"Content-Length", self.rng.choice(BAD_LENGTHS)))

    def duplicate_length(self, request: Request) -> None:
        length = b"%d" % len(request.body)
        other = self.rng.choice([length, b"%d" % (len(request.body) + 1), b"0"])
        request.fields += [(b"Content-Length", length), (b"Content-Length", other)]

    def length_and_coding(self, request: Request) -> None:
        pair = [(b"Content-Length", b"%d" % len(request.body))]
        pair.append((b"Transfer-Encoding", self.rng.choice(CODINGS)))
        self.rng.shuffle(pair)
        request.fields += pair

    def split_coding(self, request: Request) -> None:
        """Transfer-Encoding over two lines, which must frame as the same list on one line."""
        self._drop(request, b"transfer-encoding")
        self._drop(request, b"content-length")
        first, second = self.rng.choice([(b"chunked", b"chunked"), (b"gzip", b"chunked")])
        request.fields += [(b"Transfer-Encoding", first), (b"transfer-encoding", second)]
        request.chunks = request.chunks or self.chunked(request.body or b"hello")

    def duplicate_singleton(self, request: Request) -> None:
        name = self.rng.choice(SINGLETONS)
        request.fields += [(name, b"a"), (name, self.rng.choice([b"a", b"b", b"0"]))]

    def odd_content_type(self, request: Request) -> None:
        self._drop(request, b"content-type")
        request.fields.append((b"Content-Type", self.rng.choice(CONTENT_TYPES)))

    def empty_lines(self, request: Request) -> None:
        request.leading = CRLF * self.rng.choice([1, 2, 4, 5, 40])

    def odd_coding(self, request: Request) -> None:
        self._drop(request, b"transfer-encoding")
        request.fields.append((b"Transfer-Encoding", self.rng.choice(CODINGS)))
        if request.chunks is None:
            request.chunks = self.chunked(request.body or b"hello")
            self._drop(request, b"content-length")

    def many_fields(self, request: Request) -> None:
        count = self.rng.choice([MAX_HEADER_COUNT - 2, MAX_HEADER_COUNT, 150, 2000])
        request.fields += [(b"X-H%d" % index, b"v") for index in range(count)]

    def odd_line_ends(self, request: Request) -> None:
        request.line_end = self.rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])

    def expect_continue(self, request: Request) -> None:
        request.fields.append((b"Expect", self.rng.choice([b"100-continue", b"nonsense"])))

    def odd_connection(self, request: Request) -> None:
        self._drop(request, b"connection")
        values = [b"keep-alive", b"Keep-Alive", b"close, x", b"CLOSE", b"upgrade"]
        request.fields.append((b"Connection", self.rng.choice(values)))

    def bad_chunks(self, request: Request) -> None:
        rng = self.rng
        if request.chunks is None:
            self._drop(request, b"content-length")
            request.fields.append((b"Transfer-Encoding", b"chunked"))
            request.chunks = self.chunked(request.body or b"hello")
        chunks = request.chunks
        if not chunks:  # truncated to nothing by an earlier mutation
            chunks.append(b"0" + CRLF)
        index = rng.randrange(len(chunks))
        mutation = rng.randrange(7)
        if mutation == 0:
            chunks[index] = rng.choice(CHUNK_SIZES) + CRLF
        elif mutation == 1:
            chunks[index] = chunks[index].rstrip(CRLF)  # a missing CRLF
        elif mutation == 2:
            chunks[index] = chunks[index].rstrip(CRLF) + b";" + b"e" * rng.choice([10, 2000])
            chunks[index] += CRLF
        elif mutation == 3:
            chunks[-1:] = [b"X-T%d: v\r\n" % i for i in range(rng.choice([1, 31, 40]))] + [CRLF]
        elif mutation == 4:
            chunks[-1:] = [rng.choice([b"bad trailer\r\n", b" folded\r\n", b"X: v\n"]), CRLF]
        elif mutation == 5:
            del chunks[rng.randrange(len(chunks)) :]  # truncated
        else:
            chunks.insert(index, b"%x\r\n" % rng.choice([1, 0x10000, 0x7FFFFFFF]) + b"z\r\n")

    def _drop(self, request: Request, name: bytes) -> None:
        request.fields = [(n, v) for n, v in request.fields if n.lower() != name]

    PART_MUTATIONS: ClassVar[list[Callable[[Fuzzer, Request], None]]] = [
        odd_method,
        odd_target,
        odd_version,
        odd_field,
        raw_line,
        bad_length,
        duplicate_length,
        length_and_coding,
        odd_coding,
        split_coding,
        duplicate_singleton,
        odd_content_type,
        empty_lines,
        many_fields,
        odd_line_ends,
        expect_continue,
        odd_connection,
        bad_chunks,
        bad_chunks,
    ]

    # -- mutations of bytes ---------------------------------------------------------------------

    def flip(self, data: bytes) -> bytes:
        index = self.rng.randrange(len(data))
        return data[:index] + bytes([self.rng.randrange(256)]) + data[index + 1 :]

    def insert(self, data: bytes) -> bytes:
        index = self.rng.randrange(len(data) + 1)
        extra = self.rng.choice([b"\r\n", b"\x00", b" ", b"\r", b"\n", self.rng.randbytes(8)])
        return data[:index] + extra + data[index:]

    def delete(self, data: bytes) -> bytes:
        start = self.rng.randrange(len(data))
        return data[:start] + data[start + self.rng.randint(1, 16) :]

    def truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data))]

    def repeat(self, data: bytes) -> bytes:
        start = self.rng.randrange(len(data))
        piece = data[start : start + self.rng.randint(1, 64)]
        return data[:start] + piece * self.rng.randint(2, 50) + data[start:]

    BYTE_MUTATIONS: ClassVar[list[Callable[[Fuzzer, bytes], bytes]]] = [
        flip,
        insert,
        delete,
        truncate,
        repeat,
    ]


# -- the test ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the run saw, for the summary and the failure report."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    endings: collections.Counter[Ending] = field(default_factory=collections.Counter)
    interim: int = 0
    pipelined: int = 0
    slowest_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def fail(self, number: int, request: bytes, outcome: Outcome, why: str) -> None:
        self.kinds[why.split(":")[0]] += 1
        self.failures.append(
            f"case {number}: {why} ({outcome.ending.value}, {outcome.elapsed_s:.2f} s)\n"
            f"  sent     {request[:300]!r}{'...' if len(request) > 300 else ''}\n"
            f"  received {outcome.received[:300]!r}"
        )

    def summary(self, cases: int, elapsed_s: float) -> str:
        statuses = " ".join(f"{status}:{count}" for status, count in sorted(self.statuses.items()))
        endings = ", ".join(f"{ending.value} {self.endings[ending]}" for ending in Ending)
        return (
            f"raw fuzz (seed {SEED}): {cases} cases in {elapsed_s:.1f} s, "
            f"{sum(self.statuses.values())} responses ({self.pipelined} cases got more than "
            f"one, {self.interim} 100 Continue); statuses {statuses}; connections: {endings}; "
            f"slowest case {self.slowest_s * 1000:.0f} ms; failures {len(self.failures)}"
        )


def judge(number: int, request: bytes, outcome: Outcome, framing: Framing, tally: Tally) -> None:
    """Check one case's outcome, counting it in `tally`."""
    tally.endings[outcome.ending] += 1
    tally.slowest_s = max(tally.slowest_s, outcome.elapsed_s)
    try:
        responses, interim = parse_responses(outcome.received, framing.methods)
    except MalformedResponse as error:
        tally.fail(number, request, outcome, f"malformed response: {error}")
        return
    tally.interim += interim
    tally.pipelined += len(responses) > 1
    tally.statuses.update(response.status for response in responses)
    allowed = framing.answerable + framing.incomplete_tail
    if len(responses) > allowed:
        tally.fail(number, request, outcome, f"{len(responses)} responses to {allowed} requests")
    if outcome.ending in (Ending.UNANSWERED, Ending.HUNG):
        tally.fail(number, request, outcome, outcome.ending.value)
    if framing.refused and len(responses) == framing.answerable:
        refused_with = responses[framing.answerable - 1].status
        if refused_with < 400:
            tally.fail(number, request, outcome, f"{refused_with} to a request it must refuse")
    for response in responses:
        for problem in response_problems(response, request):
            tally.fail(number, request, outcome, problem)


def health_answers(port: int) -> bool:
    """GET /_health on a fresh connection is a 200 within the answer timeout."""
    request = b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    framing = Framing(1, False, (b"GET",))
    outcome = run_case(port, request, framing)
    return outcome.received.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("serve_inline", [True, False], ids=["on the event loop", "by workers"])
def test_raw_fuzz_never_breaks_the_server(
    start_kv: StartKV,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    serve_inline: bool,
) -> None:
    caplog.set_level(logging.ERROR)
    settings = dataclasses.replace(
        SETTINGS,
        execution=ExecutionPolicy.everything(
            Execution.INLINE if serve_inline else Execution.WORKERS
        ),
    )
    url = start_kv(settings=settings, max_bytes=64 * 1024)
    port = int(url.rsplit(":", 1)[1])
    tally = Tally()
    started = time.monotonic()
    cases = 0
    for number, request in enumerate(Fuzzer(SEED).cases(CASES)):
        framing = expected_framing(request, SETTINGS.max_header_bytes, SETTINGS.max_body_bytes)
        judge(number, request, run_case(port, request, framing), framing, tally)
        cases += 1
        if cases % HEALTH_EVERY == 0:
            assert health_answers(port), f"/_health stopped answering after case {number}"
        if len(tally.failures) >= MAX_FAILURES:
            break  # enough to go on; a failing run stays short
    assert health_answers(port), "/_health does not answer after the run"
    summary = tally.summary(cases, time.monotonic() - started)
    with capsys.disabled():
        print("\n" + summary)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, f"the server logged errors: {errors[:5]}"
    assert not tally.failures, summary + "\n" + "\n".join(tally.failures)


FOUND = {
    # The gate waited for a body that the strict parser, refusing the head, never reads.
    "TE on HTTP/1.0": b"PUT /k HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    "TE gzip": b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "TE twice": b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    + b"Transfer-Encoding: chunked\r\n\r\n",
    "space before colon": b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n",
    "bad field name": b"PUT /k HTTP/1.1\r\n\xff: v\r\nContent-Length: 5\r\n\r\n",
    "bare LF": b"PUT /k HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/0.9": b"PUT /k HTTP/0.9\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    "no method": b" /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    "bare LF trailer": b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"1\r\nv\r\n0\r\nX: v\n\r\n",
    # Transport-level errors answered HEAD with a body.
    "HEAD, bad version": b"HEAD /k HTTP/1.1x\r\nHost: x\r\n\r\n",
    "HEAD, two lengths": b"HEAD /k HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    "HEAD, body too large": b"HEAD /k HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n",
    # Issue 23: what a proxy and this server would read differently, or a server must accept.
    "tab in the target": b"PUT /ta\tb HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv",
    "CR in the target": b"PUT /ta\rb HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv",
    "NUL in a value": b"GET /k HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "two Authorization lines": b"GET /k HTTP/1.1\r\nHost: x\r\nAuthorization: a\r\n"
    + b"Authorization: b\r\n\r\n",
    "chunked, chunked": b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n"
    + b"\r\n1\r\nv\r\n0\r\n\r\n",
    "gzip and chunked on two lines": b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
    + b"Transfer-Encoding: chunked\r\n\r\n1\r\nv\r\n0\r\n\r\n",
    "two empty lines first": b"\r\n\r\nGET /k HTTP/1.1\r\nHost: x\r\n\r\n",
    "an empty line too many, then a body": b"\r\n" * 5
    + b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    "absolute form": b"GET http://x/k HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute form with userinfo": b"GET http://u@x/k HTTP/1.1\r\nHost: x\r\n\r\n",
}
"""Reductions of what the fuzzer found, kept as a fast regression corpus."""


@pytest.mark.parametrize("request_", FOUND.values(), ids=FOUND.keys())
def test_what_the_fuzzer_found_stays_fixed(start_kv: StartKV, request_: bytes) -> None:
    port = int(start_kv(settings=SETTINGS).rsplit(":", 1)[1])
    framing = expected_framing(request_, SETTINGS.max_header_bytes, SETTINGS.max_body_bytes)
    tally = Tally()
    judge(0, request_, run_case(port, request_, framing), framing, tally)
    assert not tally.failures, tally.failures[0]


# -- the judge itself can fail ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "answerable", "tail"),
    [
        (b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n", 1, False),
        (b"GET /k HTTP/1.1\r\nHost: x\r\n", 0, True),
        (b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel", 0, True),
        (b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n", 2, False),
        (b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloGET /", 1, False),
        (b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 1, False),
        (b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1, False),
        (b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 0, True),
        (b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello", 1, False),
        (b"PUT /k HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 1, False),
        (b"PUT /k HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 1, False),
        (b"PUT /k HTTP/1.1\r\nContent-Length : 5\r\n\r\n", 1, False),
        (b"GET /k HTTP/2.0\r\n\r\n", 1, False),
        (b"\r\n\r\nGET /k HTTP/1.1\r\n\r\nGET /k HTTP/1.1\r\n\r\n", 2, False),
        (b"GET http://x/k HTTP/1.1\r\n\r\nGET /k HTTP/1.1\r\n\r\n", 2, False),
        (b"GET /t\tk HTTP/1.1\r\n\r\nGET /k HTTP/1.1\r\n\r\n", 1, False),
        (b"GET /k HTTP/1.1\r\nX: \x00\r\n\r\nGET /k HTTP/1.1\r\n\r\n", 1, False),
        (
            b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\nGET /k HTTP/1.1\r\n\r\n",
            1,
            False,
        ),
        (
            b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /k HTTP/1.1\r\n\r\n",
            2,
            False,
        ),
    ],
)
def test_the_reference_framing(data: bytes, answerable: int, tail: bool) -> None:
    framing = expected_framing(data, max_head=16384, max_body=65536)
    assert (framing.answerable, framing.incomplete_tail) == (answerable, tail)


@pytest.mark.parametrize(
    ("received", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", "body has 3 of 5"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "without a valid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", "without its blank line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", "repeated"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "bad status line"),
        (
            b"HTTP/1.1 400 Bad\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "after a response that closed",
        ),
    ],
)
def test_malformed_responses_are_caught(received: bytes, why: str) -> None:
    with pytest.raises(MalformedResponse, match=why):
        parse_responses(received, (b"GET", b"GET"))


@pytest.mark.parametrize(
    ("response", "request_", "why"),
    [
        (Response(500, {}, b""), b"GET / HTTP/1.1\r\n\r\n", "server error 500"),
        (Response(505, {}, b""), b"GET / HTTP/1.1\r\n\r\n", "server error 505"),
        (Response(404, {b"content-type": b"text/html"}, b"<h1>"), b"", "Content-Type"),
        (Response(400, {}, b"Traceback (most recent call last)"), b"", "traceback"),
        (
            Response(404, {b"content-type": b"application/problem+json"}, b'{"status":400}'),
            b"",
            "fields",
        ),
    ],
)
def test_bad_responses_are_caught(response: Response, request_: bytes, why: str) -> None:
    assert any(why in problem for problem in response_problems(response, request_))


def test_rfc_required_5xx_are_allowed() -> None:
    unknown_coding = b"PUT /k HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"
    assert not response_problems(Response(501, {}, b""), unknown_coding)
    assert not response_problems(Response(505, {}, b""), b"GET /k HTTP/2.0\r\n\r\n")


def test_the_fuzzer_is_deterministic() -> None:
    assert list(Fuzzer(SEED).cases(50)) == list(Fuzzer(SEED).cases(50))
