"""The judgement of a request as it arrives, read by the parser as the transport reads it, in
the style of h11's tests: every case fed whole, byte by byte, and followed by the bytes of a
next request. These were the gate's cases; the transport now waits for what the parser says,
so they are put to it. The grammar itself (the chunked decoder included) and the cost of a
body trickled in small reads, which must grow linearly with its length, are tested in
tests/kvservice/http/test_parser.py."""

from __future__ import annotations

from enum import Enum

import pytest

from kvservice.http.parser import EndOfMessage, ParserLimits, Refusal, RequestParser, Signal
from tests.kvservice.http.test_parser import CHUNKED_BODIES, CHUNKED_HEAD, REFUSED

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
BAD_BODIES = {
    name: raw[len(CHUNKED_HEAD) :]
    for name, (raw, status, _) in REFUSED.items()
    if status == 400 and raw.startswith(CHUNKED_HEAD)
}


VALID_BODIES = {name: raw for name, (raw, _) in CHUNKED_BODIES.items()}


@pytest.mark.parametrize("raw", VALID_BODIES.values(), ids=VALID_BODIES.keys())
def test_a_valid_body_is_served_once_whole(raw: bytes) -> None:
    for piece_bytes in (None, 1, 7):
        assert gate_readiness(CHUNKED_HEAD + raw, piece_bytes) is Readiness.SERVE
        assert gate_readiness(CHUNKED_HEAD + raw + NEXT_REQUEST, piece_bytes) is Readiness.SERVE


@pytest.mark.parametrize("raw", VALID_BODIES.values(), ids=VALID_BODIES.keys())
def test_every_prefix_of_a_valid_body_waits_for_more(raw: bytes) -> None:
    for end in range(len(raw)):
        prefix = raw[:end]
        assert gate_readiness(CHUNKED_HEAD + prefix) is Readiness.WAIT, f"prefix of {end} bytes"
    judge = gate_judge()
    for byte in CHUNKED_HEAD + raw[:-1]:
        assert judge.readiness(bytes([byte])) is Readiness.WAIT, "one parser, fed each byte"


@pytest.mark.parametrize("raw", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_malformed_body_is_refused_as_it_arrives(raw: bytes) -> None:
    for piece_bytes in (None, 1):
        readiness = gate_readiness(CHUNKED_HEAD + raw, piece_bytes)
        assert readiness is Readiness.REFUSED, "a malformed body is refused as it arrives"


# -- the judgement: the parser fed incrementally, as bytes arrive -----------------------------


class Readiness(Enum):
    """What the transport does with a request arriving, by what its parser says."""

    WAIT = "wait"  # incomplete: read on (told to continue, perhaps)
    SERVE = "serve"  # whole: the app answers it
    REFUSED = "refused"  # malformed: answered 400 (or 501, 505, 414, 431) and closed
    TOO_LARGE = "too large"  # the body is over the limit: 413


class Judge:
    """One parser per connection, fed each read, asked for events until it waits."""

    def __init__(self, max_body: int = 1 << 20) -> None:
        limits = ParserLimits(max_header_bytes=16384, max_header_count=100, max_body_bytes=max_body)
        self.parser = RequestParser(limits)

    def readiness(self, data: bytes) -> Readiness:
        self.parser.receive_data(data)
        while True:
            event = self.parser.next_event()
            if event is Signal.NEED_DATA or event is Signal.SEND_CONTINUE:
                return Readiness.WAIT
            if isinstance(event, EndOfMessage):
                return Readiness.SERVE
            if isinstance(event, Refusal):
                return Readiness.TOO_LARGE if event.status == 413 else Readiness.REFUSED


def gate_judge() -> Judge:
    return Judge()


def gate_readiness(data: bytes, piece_bytes: int | None = None) -> Readiness:
    """What the parser makes of `data` arriving in reads of `piece_bytes` (all at once: None):
    one parser per request, given each read as it arrives, until it stops waiting."""
    judge = gate_judge()
    step = piece_bytes or max(1, len(data))
    readiness = Readiness.WAIT
    for start in range(0, len(data), step):
        readiness = judge.readiness(data[start : start + step])
        if readiness is not Readiness.WAIT:
            break
    return readiness


def one_byte_chunks(body_bytes: int) -> bytes:
    """A request whose chunked body of 1-byte chunks is `body_bytes` long on the wire."""
    return CHUNKED_HEAD + b"1\r\nx\r\n" * (body_bytes // 6) + b"0\r\n\r\n"


def test_a_chunked_body_past_the_limit_is_too_large_as_it_arrives() -> None:
    judge, received = Judge(max_body=600), 0
    data = one_byte_chunks(6000)
    verdicts = []
    for start in range(0, len(data), 60):
        received += len(data[start : start + 60])
        verdicts.append(judge.readiness(data[start : start + 60]))
        if verdicts[-1] is not Readiness.WAIT:
            break
    assert verdicts[-1] is Readiness.TOO_LARGE
    assert received - len(CHUNKED_HEAD) <= 600 + 60, "refused once past the limit"


HEADS = {
    "no body": (b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n", Readiness.SERVE),
    "empty lines first": (b"\r\n\r\nGET /k HTTP/1.1\r\nHost: x\r\n\r\n", Readiness.SERVE),
    "a body to come": (b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", Readiness.WAIT),
    "a body after empty lines": (
        b"\r\n" * 4 + b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        Readiness.WAIT,
    ),
    "one empty line too many": (
        b"\r\n" * 5 + b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        Readiness.REFUSED,  # no body to wait for
    ),
    "the body's head refused": (
        b"PUT /t\tk HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        Readiness.REFUSED,
    ),
    "a bare LF": (b"PUT /k HTTP/1.1\nHost: x\r\nContent-Length: 5\r\n\r\n", Readiness.REFUSED),
    "too large": (
        b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
        Readiness.TOO_LARGE,
    ),
}


@pytest.mark.parametrize("piece_bytes", [None, 1, 3], ids=["whole", "byte by byte", "in threes"])
@pytest.mark.parametrize(("head", "expected"), HEADS.values(), ids=HEADS.keys())
def test_a_head_is_judged_alike_however_it_arrives(
    head: bytes, expected: Readiness, piece_bytes: int | None
) -> None:
    assert gate_readiness(head, piece_bytes) is expected


def test_a_bare_lf_is_judged_when_it_arrives_and_a_split_crlf_is_not_one() -> None:
    judge = gate_judge()
    assert judge.readiness(b"GET /k HTTP/1.1\r") is Readiness.WAIT
    assert judge.readiness(b"\nHost: x\r\n\r") is Readiness.WAIT
    assert judge.readiness(b"\n") is Readiness.SERVE
    judge = gate_judge()
    assert judge.readiness(b"GET /k HTTP/1.1\r\nHost: x") is Readiness.WAIT
    assert judge.readiness(b"\n") is Readiness.REFUSED, "a bare LF: refused at once"
