"""A transport of the tests' own on the connection core: lines in, lines out.

Each line is a request, answered with the line in upper case, in batches of `batch_lines`.
`quit` is answered `BYE` and closes; a line starting with `!` is a protocol error, answered
`error` without any work and closed; `stream N` is answered with N pieces of `piece_bytes`
produced as the client reads; `big N` with N bytes at once; `wait` blocks its work until the
transport's `gate` opens; `boom` raises. `feed` is answered with a `FedPieces` stream that
sends what the test puts in it, and nothing (b"") until then; `park` parks the connection
(`parked`, nothing answered) until a wake finds the `gate` open, then answers `UNPARKED`.
`LinesTransport.protocols` keeps every connection's protocol, `ran_on` the thread each
request ran on, `feeds` every stream `feed` made.
"""

from __future__ import annotations

import logging
import threading

from kvservice.core import After, ConnectionInfo, Outcome, Reply, Step, Work

REFUSAL = b"busy\n"
IN_THE_CLEAR = b"tls only\n"


class CountedPieces:
    """`count` pieces of `piece_bytes` x's, counting what was produced and whether closed."""

    def __init__(self, count: int, piece_bytes: int) -> None:
        self.count = count
        self.piece_bytes = piece_bytes
        self.produced = 0
        self.closed = False
        self.held_bytes = count * piece_bytes

    def next_piece(self) -> bytes | None:
        if self.produced == self.count:
            return None
        self.produced += 1
        return b"x" * self.piece_bytes

    def close(self) -> None:
        self.closed = True


class FedPieces:
    """Pieces the test puts in `pending`; b"" while there are none; None once `ended` and
    they are all sent. Past `max_asks` asks it raises, so a core that spins on b"" fails
    the test rather than hanging it."""

    held_bytes = 0

    def __init__(self, max_asks: int = 100) -> None:
        self.pending: list[bytes] = []
        self.ended = False
        self.asks = 0
        self.max_asks = max_asks
        self.closed = False

    def next_piece(self) -> bytes | None:
        self.asks += 1
        if self.asks > self.max_asks:
            raise RuntimeError("asked for pieces again and again with nothing new")
        if self.pending:
            return self.pending.pop(0)
        return None if self.ended else b""

    def close(self) -> None:
        self.closed = True


class LinesTransport:
    name = "LINES"
    logger = logging.getLogger("tests.core.lines")
    refusal = REFUSAL
    in_the_clear = IN_THE_CLEAR

    def __init__(self, batch_lines: int = 2, piece_bytes: int = 16 * 1024) -> None:
        self.batch_lines = batch_lines
        self.piece_bytes = piece_bytes
        self.gate = threading.Event()
        self.protocols: list[LinesProtocol] = []
        self.ran_on: list[str] = []
        self.streams: list[CountedPieces] = []
        self.feeds: list[FedPieces] = []

    def protocol_for(self, connection: ConnectionInfo) -> LinesProtocol:
        protocol = LinesProtocol(self, connection)
        self.protocols.append(protocol)
        return protocol


class LinesProtocol:
    def __init__(self, transport: LinesTransport, connection: ConnectionInfo) -> None:
        self.transport = transport
        self.connection = connection
        self.buffer = bytearray()
        self.closed_calls = 0
        self.parked = False
        self.full = False

    @property
    def mid_request(self) -> bool:
        return bool(self.buffer) and b"\n" not in self.buffer

    def received(self, data: bytes) -> None:
        self.buffer += data

    def next_step(self) -> Step | None:
        if self.parked:
            if not self.transport.gate.is_set():
                return None
            self.parked = False
            return Outcome([b"UNPARKED\n"], After.CONTINUE if b"\n" in self.buffer else After.READ)
        if b"\n" not in self.buffer:
            return None
        if self.buffer.startswith(b"!"):
            return Outcome([b"error\n"], After.CLOSE)
        return Work(self._run)

    def timed_out(self) -> bytes:
        return b"too slow\n"

    def closed(self) -> None:
        self.closed_calls += 1

    def _run(self) -> Outcome:
        transport = self.transport
        replies: list[Reply] = []
        while len(replies) < transport.batch_lines and b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer = bytearray(rest)
            transport.ran_on.append(threading.current_thread().name)
            verb, _, argument = line.partition(b" ")
            if verb == b"quit":
                replies.append(b"BYE\n")
                return Outcome(replies, After.CLOSE)
            if verb == b"boom":
                raise RuntimeError("boom")
            if verb == b"stream":
                stream = CountedPieces(int(argument), transport.piece_bytes)
                transport.streams.append(stream)
                replies.append(stream)
            elif verb == b"feed":
                feed = FedPieces()
                transport.feeds.append(feed)
                replies.append(feed)
            elif verb == b"park":
                self.parked = True
                return Outcome(replies, After.READ)
            elif verb == b"big":
                replies.append(b"x" * int(argument))
            else:
                if verb == b"wait":
                    transport.gate.wait(5)
                replies.append(line.upper() + b"\n")
        return Outcome(replies, After.CONTINUE if b"\n" in self.buffer else After.READ)
