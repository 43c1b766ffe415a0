"""HTTP/1.1 message framing, read strictly: the one place that decides where a request ends.

Both the gate (which waits in the selector until a request has arrived) and the strict request
parser (which a worker runs) read heads and chunked bodies through these functions, so the two
can never disagree about where a message ends: the disagreement request smuggling lives on.
"""

from __future__ import annotations

import io
import re
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
"""What `body_length` returns for a chunked body."""


class TooManyHeaders(cheroot_errors.MaxSizeExceeded):
    """More header fields than `max_header_count`; answered with 431 like oversized headers."""


def read_strict_headers(rfile: Any, max_count: int) -> dict[bytes, bytes]:
    """Read a header section, refusing anything that would make the message length ambiguous.

    Raises ValueError (answered 400) for malformed or ambiguous framing and TooManyHeaders
    (answered 431) past `max_count` fields.
    """
    headers: dict[bytes, bytes] = {}
    seen_framing: set[bytes] = set()
    count = 0
    while True:
        line = rfile.readline()
        if not line:
            raise ValueError("Illegal end of headers.")
        if line == CRLF:
            break
        if not line.endswith(CRLF):
            raise ValueError("HTTP requires CRLF line terminators.")
        if line[:1] in (b" ", b"\t"):
            raise ValueError("Obsolete header line folding is not accepted.")
        count += 1
        if count > max_count:
            raise TooManyHeaders
        name, colon, value = line[:-2].partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError("Illegal header line.")
        name = name.title()
        value = value.strip(b" \t")
        if name in (b"Content-Length", b"Transfer-Encoding"):
            if name in seen_framing:
                raise ValueError(f"Duplicate {name.decode()} header.")
            seen_framing.add(name)
        if name in _LIST_HEADERS and name in headers:
            value = headers[name] + b", " + value
        headers[name] = value

    if len(seen_framing) == 2:
        raise ValueError("Content-Length and Transfer-Encoding must not both be present.")
    length = headers.get(b"Content-Length")
    if length is not None and not _DIGITS.fullmatch(length):
        raise ValueError("Content-Length must be a non-negative decimal integer.")
    return headers


def body_length(head: bytes, max_fields: int) -> int | None:
    """The length of the body that follows `head` (CHUNKED if chunked), or None if there is
    no body or the strict parser refuses the head before reading one.

    `head` is a request line and its header fields, without the empty line that ends them.
    """
    head = head.removeprefix(CRLF)  # cheroot skips one empty line before a request
    request_line, _, fields = head.partition(CRLF)
    version = _http_version(request_line)
    if version is None or version[0] != 1 or version > (1, 1):
        return None  # refused with 400 or 505
    try:
        section = fields + CRLF + CRLF if fields else CRLF
        headers = read_strict_headers(io.BytesIO(section), max_fields)
    except (ValueError, TooManyHeaders):
        return None  # refused with 400 or 431
    length = headers.get(b"Content-Length")
    coding = headers.get(b"Transfer-Encoding")
    if coding is not None:
        tokens = [token.strip().lower() for token in coding.split(b",") if token.strip()]
        chunked = bool(tokens) and all(token == b"chunked" for token in tokens)
        return CHUNKED if chunked and version == (1, 1) else None  # else 400 or 501
    return None if length is None else int(length)


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


def chunked_body_complete(body: bytes) -> bool:
    """True once a chunked body has ended (trailers included) or shown itself malformed,
    read line by line as StrictChunkedReader reads it."""
    position = 0
    while True:
        line, position = _chunk_line(body, position)
        if line is None:
            return False
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not line.endswith(CRLF) or not HEX_DIGITS.fullmatch(size_text):
            return True
        size = int(size_text, 16)
        if size == 0:
            return _trailers_complete(body, position)
        if len(body) < position + size + 2:
            return False
        if body[position + size : position + size + 2] != CRLF:
            return True
        position += size + 2


def _trailers_complete(body: bytes, position: int) -> bool:
    for _ in range(MAX_TRAILER_LINES):
        line, position = _chunk_line(body, position)
        if line is None:
            return False
        if line == CRLF or not line.endswith(CRLF):
            return True
    return True  # too many trailer lines: refused


def _chunk_line(body: bytes, position: int) -> tuple[bytes | None, int]:
    """The next line as `readline(MAX_CHUNK_LINE_BYTES)` returns it; None until it arrives."""
    newline = body.find(b"\n", position, position + MAX_CHUNK_LINE_BYTES)
    if newline >= 0:
        return body[position : newline + 1], newline + 1
    if len(body) - position >= MAX_CHUNK_LINE_BYTES:
        return body[position : position + MAX_CHUNK_LINE_BYTES], position + MAX_CHUNK_LINE_BYTES
    return None, position
