"""The chunked-body decoder as pure functions, in the style of h11's tests: every case fed
whole, byte by byte, and followed by the bytes of a next request, which must stay unused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvservice.http.framing import (
    MAX_CHUNK_LINE_BYTES,
    MAX_TRAILER_LINES,
    ChunkedBodyDecoder,
    chunked_body_complete,
)

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
LONGEST_LINE = b"5;" + b"e" * (MAX_CHUNK_LINE_BYTES - 4) + b"\r\n"  # exactly the limit

VALID = {
    "no chunks": (b"0\r\n\r\n", b""),
    "one chunk": (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "several chunks": (b"3\r\nabc\r\n1\r\nd\r\n2\r\nef\r\n0\r\n\r\n", b"abcdef"),
    "upper and lower hex, leading zeros": (b"00A\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n", b"x" * 10),
    "eight hex digits": (b"00000003\r\nabc\r\n0\r\n\r\n", b"abc"),
    "extensions": (b"5;name=value;other\r\nhello\r\n0;last\r\n\r\n", b"hello"),
    "blanks around the size": (b"5 \t;ext\r\nhello\r\n0 \r\n\r\n", b"hello"),
    "trailers": (b"3\r\nabc\r\n0\r\nX-Trace: 1\r\nX-More: 2\r\n\r\n", b"abc"),
    "chunk data holding CRLFs and digits": (b"7\r\n0\r\n\r\n0\r\r\n0\r\n\r\n", b"0\r\n\r\n0\r"),
    "a size line of exactly the longest length": (LONGEST_LINE + b"hello\r\n0\r\n\r\n", b"hello"),
    "the most trailer lines": (
        b"0\r\n" + b"X: 1\r\n" * (MAX_TRAILER_LINES - 1) + b"\r\n",
        b"",
    ),
}

INVALID = {
    "a size that is not hex": b"x\r\n",
    "a 0x prefix": b"0x5\r\nhello\r\n",
    "a signed size": b"+5\r\nhello\r\n",
    "a negative size": b"-5\r\nhello\r\n",
    "an empty size": b"\r\n",
    "nine hex digits": b"000000005\r\nhello\r\n",
    "a size line ended by a bare LF": b"5\nhello\r\n0\r\n\r\n",
    "chunk data not followed by CRLF": b"5\r\nhelloXY0\r\n\r\n",
    "chunk data followed by a bare LF": b"5\r\nhello\n0\r\n\r\n",
    "a size line one byte too long": b"5;" + b"e" * (MAX_CHUNK_LINE_BYTES - 3) + b"\r\n",
    "a size line that never ends": b"5" * (MAX_CHUNK_LINE_BYTES + 10),
    "a trailer ended by a bare LF": b"0\r\nX-Trace: 1\n\r\n",
    "one trailer line too many": b"0\r\n" + b"X: 1\r\n" * MAX_TRAILER_LINES + b"\r\n",
}


def decode_whole(data: bytes) -> tuple[bytes, int, bool]:
    decoder = ChunkedBodyDecoder()
    body, used = decoder.feed(data)
    return body, used, decoder.done


def decode_byte_by_byte(data: bytes) -> tuple[bytes, int, bool]:
    decoder = ChunkedBodyDecoder()
    body, used = b"", 0
    for index in range(len(data)):
        piece, piece_used = decoder.feed(data[index : index + 1])
        body += piece
        used += piece_used
        if decoder.done:
            break
    return body, used, decoder.done


Feeder = Callable[[bytes], tuple[bytes, int, bool]]
"""Feeds a body to a fresh decoder: (body decoded, bytes used, whether it ended)."""
FEEDERS: dict[str, Feeder] = {"whole": decode_whole, "byte by byte": decode_byte_by_byte}


@pytest.mark.parametrize("feed", FEEDERS.values(), ids=FEEDERS.keys())
@pytest.mark.parametrize(("raw", "body"), VALID.values(), ids=VALID.keys())
def test_a_valid_body_decodes_and_ends_where_it_ends(feed: Feeder, raw: bytes, body: bytes) -> None:
    assert feed(raw) == (body, len(raw), True)
    assert feed(raw + NEXT_REQUEST) == (body, len(raw), True), "the next request stays unread"
    assert chunked_body_complete(raw)
    assert chunked_body_complete(raw + NEXT_REQUEST)


@pytest.mark.parametrize("raw", [raw for raw, _ in VALID.values()], ids=VALID.keys())
def test_every_prefix_of_a_valid_body_waits_for_more(raw: bytes) -> None:
    for end in range(len(raw)):
        prefix = raw[:end]
        _, used, done = decode_whole(prefix)
        assert (used, done) == (len(prefix), False), f"prefix of {end} bytes"
        assert not chunked_body_complete(prefix), f"prefix of {end} bytes"


@pytest.mark.parametrize("feed", FEEDERS.values(), ids=FEEDERS.keys())
@pytest.mark.parametrize("raw", INVALID.values(), ids=INVALID.keys())
def test_a_malformed_body_is_refused_however_it_arrives(feed: Feeder, raw: bytes) -> None:
    with pytest.raises(ValueError, match="Bad chunked transfer coding"):
        feed(raw)
    with pytest.raises(ValueError, match="Bad chunked transfer coding"):
        feed(raw + NEXT_REQUEST)
    assert chunked_body_complete(raw), "the gate hands malformed bodies on, to be refused"


def test_chunk_data_is_handed_out_as_it_arrives() -> None:
    decoder = ChunkedBodyDecoder()
    assert decoder.feed(b"b\r\nhel") == (b"hel", 6)
    assert decoder.feed(b"lo wo") == (b"lo wo", 5)
    assert not decoder.done
    assert decoder.feed(b"rld\r\n0\r\n\r\nGET") == (b"rld", 10)
    assert decoder.done
