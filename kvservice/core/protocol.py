"""The interface between the connection core and a transport: what a transport provides
(`Transport` per server, `WireProtocol` per connection) and what it hands back (`Outcome`,
`Work`, `After`, and replies: bytes, or `Pieces` produced as the client reads).

It is written for two transports. RESP: `received` feeds the codec's parser; `next_step`
parses the first complete command and returns `Work` that runs it and the commands after it
(a batch), or an `Outcome` with `-ERR Protocol error` and `After.CLOSE`. HTTP: `received`
feeds a sans-IO request parser; `next_step` returns an `Outcome` with `100 Continue` and
`After.READ` when a head asks for it, `Work` that calls the WSGI app once a request is
complete (its response bytes, or `Pieces` that produce the body from the app's iterable as
the client reads), with `After.CLOSE` when the connection is not to be kept; `mid_request`
tells the core that part of a request has arrived, so the request timeout runs from its
first byte, and `timed_out` gives the 408 to write before closing.

A connection may wait for something other than its client (a change feed): a streamed reply
whose `next_piece` has nothing yet gives b"", and a transport whose request waits says so
(`WireProtocol.parked`, exempt from the idle timeout) and answers None from `next_step`;
`ConnectionInfo.wake`, from any thread, has the core ask again. Neither costs a thread.
Meanwhile the core reads on, to hear a client that leaves, until the protocol says it holds
as much as it takes (`WireProtocol.full`): what a client sends while its request waits is
bounded; one that sent that much is heard leaving by the sweep, where the kernel tells
without a read (POLLRDHUP, Linux), else once its answer is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from kvservice.execution import StoreCalls


class Pieces(Protocol):
    """A reply produced a piece at a time as the client reads it (a long RESP array, an HTTP
    body from a WSGI iterable), so it is never built whole to be held."""

    @property
    def held_bytes(self) -> int:
        """What it holds in memory to produce the rest, charged to the reply budget."""
        ...

    def next_piece(self) -> bytes | None:
        """The next piece (about 16 KiB is right); None after the last; b"" when there is
        nothing to send yet (a change feed's stream between events): the core then asks
        again only once the connection is woken (`ConnectionInfo.wake`). Called on the loop
        thread: producing a piece must not block."""
        ...

    def close(self) -> None:
        """Called once: after the last piece, or when the connection closes before it (a
        WSGI iterable's `close`)."""
        ...


Reply = bytes | Pieces
"""What a transport writes: bytes, or pieces produced as the client reads."""


class After(Enum):
    """What the connection does once an `Outcome`'s replies are handed to it."""

    READ = "read"
    """Read on: everything complete in the input was served; ask again when bytes arrive."""
    CONTINUE = "continue"
    """The input may hold more to serve (a batch cut short): ask again once these replies
    are written, reading nothing meanwhile, so a client that does not read holds no more."""
    CLOSE = "close"
    """Read nothing more; close once these replies are written."""


@dataclass(slots=True)
class Outcome:
    """Replies to write, in order, after those written before, and what comes after."""

    replies: list[Reply] = field(default_factory=list)
    after: After = After.READ


@dataclass(frozen=True, slots=True)
class Work:
    """A transport's work that may call the store. The core runs it where the execution
    policy says (inline on the loop, or on a worker), one at a time per connection and in
    order, with reading paused; `run` may touch the connection's protocol state (the core
    calls nothing else of it meanwhile). If `run` raises, the connection is closed and the
    error logged: a transport turns the errors it expects into replies. `calls` says what it
    asks of the store, for the policy: work that may write is the one kind that cannot run
    inline when writes may block, so it is the default."""

    run: Callable[[], Outcome]
    calls: StoreCalls = StoreCalls.WRITES


Step = Outcome | Work
"""What a transport asks for next: replies now, or work that makes them."""


class ConnectionInfo(Protocol):
    """What a transport may know of its connection (`core.connection.Connection`)."""

    @property
    def id(self) -> int:
        """Unique among the server's connections, counting from 1 (RESP's CLIENT ID)."""
        ...

    @property
    def peer(self) -> str:
        """The client's address as host:port, for logs."""
        ...

    @property
    def opened(self) -> float:
        """When it was accepted, on the server's clock (seconds)."""
        ...

    @property
    def stopping(self) -> bool:
        """Whether the server is draining: work should stop between requests."""
        ...

    def runs_inline(self, calls: StoreCalls) -> bool:
        """Whether work of kind `calls` runs on the loop (the execution policy): work that
        runs inline must stop before a request of a kind that does not, and leave it for a
        `Work` of its own."""
        ...

    def wake(self) -> None:
        """Something the connection waits for has happened (a change feed has news): on the
        loop, a streamed reply waiting for data (`Pieces.next_piece` gave b"") is asked for
        its next piece, and a free connection is asked for its `next_step` (a parked
        request). Thread-safe, from any thread; cheap when there is nothing to do, and a
        no-op once the connection or the server has closed."""
        ...


class WireProtocol(Protocol):
    """What a transport provides for each connection: its protocol code. Every method is
    called on the loop thread, never while the connection's `Work` runs."""

    def received(self, data: bytes) -> None:
        """Bytes that arrived, in order (a read, at most `read_bytes`): feed the parser.
        Serve nothing here; the core calls `next_step` next."""
        ...

    def next_step(self) -> Step | None:
        """What to do with what has arrived: None if no request is complete (the core reads
        on), else an `Outcome` or `Work`. Called after each read while the connection is
        free, and, after `After.CONTINUE`, once the replies are written."""
        ...

    @property
    def mid_request(self) -> bool:
        """Whether part of a request has arrived but not all of it: the request timeout
        then applies (from the read that began it) instead of the idle timeout."""
        ...

    @property
    def parked(self) -> bool:
        """Whether the connection waits for a wake (`ConnectionInfo.wake`), not for its
        client: a long-poll, a subscription. The idle timeout does not apply meanwhile (a
        client that stops reading its replies is still reset)."""
        ...

    @property
    def full(self) -> bool:
        """Whether it holds as much unserved input as it takes: the core reads no more until
        its next step has been taken and its replies written. A parked HTTP request is
        answered only when woken, so what its client pipelines meanwhile waits in the parser,
        up to what one request may be (read on until then, so that a client that leaves is
        heard and its watcher let go of)."""
        ...

    def timed_out(self) -> bytes:
        """What to write before closing a connection whose request did not arrive within
        the request timeout (HTTP's 408); may be empty."""
        ...

    def closed(self) -> None:
        """The connection closed, for whatever reason: log its line, let go of state."""
        ...


class Transport(Protocol):
    """What a transport provides once per server."""

    @property
    def name(self) -> str:
        """Its name in logs and thread names: "RESP", "HTTP"."""
        ...

    @property
    def logger(self) -> logging.Logger:
        """Where the core logs about its connections: refusals, handshakes, expiries."""
        ...

    @property
    def refusal(self) -> bytes:
        """What a connection past the cap is told before it is closed (RESP's
        `-ERR max number of clients reached`, HTTP's 503); while the server stops, and with
        TLS past the settings' `tls_refusals`, a connection past the cap is closed without a
        word."""
        ...

    @property
    def in_the_clear(self) -> bytes:
        """What a client that speaks plain text to a TLS port is told, in plain text, before
        it is closed (HTTP's 400 "this port speaks HTTPS only"); empty: closed without a word."""
        ...

    def protocol_for(self, connection: ConnectionInfo) -> WireProtocol:
        """The protocol code of a connection just admitted."""
        ...
