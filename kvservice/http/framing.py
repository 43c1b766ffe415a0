"""The parser's grammar as the cheroot-based transport (`strict.py`, `gate.py`) reads it: the
request line, a header section from a stream or a block, and what a head says of its body.

Every rule lives in `parser.py`; this module only adapts it to what cheroot expects (a
header section with too many fields raises cheroot's MaxSizeExceeded, answered 431) and to
the gate's question (`body_framing`: is there a body to wait for?). It goes when strict.py
and gate.py do, once the HTTP transport runs on the parser itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cheroot import errors as cheroot_errors

from kvservice.http.parser import (
    CRLF,
    EMPTY_LINES_BEFORE_REQUEST,
    MAX_CHUNK_LINE_BYTES,
    MAX_TRAILER_LINES,
    SINGLETON_HEADERS,
    ChunkedBodyDecoder,
    ParseError,
    ParserLimits,
    RequestHead,
    RequestLine,
    RequestParser,
    empty_lines_length,
    parse_fields,
    parse_request_line,
    transfer_codings,
)

__all__ = [
    "CHUNKED",
    "CRLF",
    "EMPTY_LINES_BEFORE_REQUEST",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_TRAILER_LINES",
    "SINGLETON_HEADERS",
    "BadRequestLine",
    "Body",
    "ChunkedBodyDecoder",
    "RequestLine",
    "TooManyHeaders",
    "body_framing",
    "empty_lines_length",
    "parse_header_block",
    "parse_request_line",
    "read_strict_headers",
    "transfer_codings",
]

CHUNKED = -1
"""The length `body_framing` gives a chunked body."""
BadRequestLine = ParseError
"""What `parse_request_line` raises: a refusal with its status (400 or 505) and detail."""


class TooManyHeaders(cheroot_errors.MaxSizeExceeded):
    """More header fields than `max_header_count`; answered with 431 like oversized headers."""


def read_strict_headers(rfile: Any, max_count: int) -> dict[bytes, bytes]:
    """Read a header section line by line from a stream, as `parse_header_block` judges it."""
    return _fields(iter(rfile.readline, b""), max_count)


def parse_header_block(block: bytes, max_count: int) -> dict[bytes, bytes]:
    """Parse a whole header section already in memory: its field lines and the empty line
    that ends it (all that follows the request line, up to and including CRLF CRLF).

    Raises ValueError (answered 400) for malformed or ambiguous framing and TooManyHeaders
    (answered 431) past `max_count` fields.
    """
    lines = block.split(b"\n")
    tail = lines.pop()  # what follows the last LF: nothing, in a whole block
    return _fields([*(line + b"\n" for line in lines), *([tail] if tail else [])], max_count)


def _fields(lines: Iterable[bytes], max_count: int) -> dict[bytes, bytes]:
    try:
        return parse_fields(lines, max_count)
    except ParseError as error:
        if error.status == 431:
            raise TooManyHeaders from error
        raise


@dataclass(frozen=True, slots=True)
class Body:
    """What a request head says of the body after it."""

    length: int
    """Its length, or CHUNKED."""
    expects_continue: bool
    """The client waits for `100 Continue` before it sends the body (RFC 9110 10.1.1)."""


def body_framing(head: bytes, max_fields: int) -> Body | None:
    """The body that follows `head`, or None if there is none or the parser refuses the head
    (the gate then serves it at once, to be refused).

    `head` is a request line and its header fields, without the empty line that ends them,
    perhaps after empty lines (`empty_lines_length`). Body limits are the gate's to judge.
    """
    data = head + CRLF + CRLF
    limits = ParserLimits(
        max_header_bytes=len(data), max_header_count=max_fields, max_body_bytes=1 << 62
    )
    parser = RequestParser(limits)
    parser.receive_data(data)
    event = parser.next_event()
    if not isinstance(event, RequestHead) or event.content_length == 0:
        return None
    length = CHUNKED if event.content_length is None else event.content_length
    return Body(length, event.expects_continue)
