"""The HTTP transport's protocol code on the connection core (`kvservice.core`): what an HTTP
connection does with the bytes it receives, and nothing about sockets, threads or timeouts.

Each read is fed to the connection's `parser.RequestParser`; `next_step` loops on its events,
as uvicorn's protocols do:

- `SEND_CONTINUE`: the client waits for `100 Continue` before it sends its body: written
  at once, reading on.
- a `Refusal` (400, 413, 414, 431, 501, 505): answered with a problem document that says
  the connection closes, then closed; a HEAD's answer leaves the body out.
- a `RequestHead` and its `Data`, up to `EndOfMessage`: the request is whole, and the app
  is called through cheroot's WSGI gateway (`cheroot_adapter`) with its body in memory: as
  `Work` when the execution policy runs its kind (GET and HEAD read, the rest may write) on
  a worker, at once on the loop when it runs it there (an in-process store, or the durable
  store's reads: no hand-off). Its response is the head and body bytes, and
  for a long body the app yields in pieces (a history, a page of keys) the rest as `Pieces`
  produced as the client reads, charged to the reply budget meanwhile by the core.

A request may wait for a change feed without a thread or a worker. Each is given a
`request_info.Parking` with the connection's `wake`: an event stream's body gives b"" while
it has nothing (the core waits for a wake), and a long-poll the app parks is answered
nothing; the connection is `parked` (no idle timeout) and, once woken (not when bytes
arrive), the app is run again on the same request, on the loop (it only takes what its
watcher has), until it answers; with the same `Parking`, so that the request's access line
covers it whole, once, under one ID. What its client pipelines meanwhile waits in the parser
up to what one request may be (`full`: the header and body limits), and the core reads no
more until it is answered: the core reads on until then so that a client that leaves (an EOF
or a reset) is heard and its watcher let go of; one that sent that much first is heard by
the core's sweep where the kernel tells (Linux), else once its answer is written. What it
parked is closed with the connection.

The connection is kept for the next request when the request and the response say so
(HTTP/1.1 unless `Connection: close`, HTTP/1.0 with `Connection: keep-alive`), never while
the server stops; pipelined bytes wait in the parser meanwhile and are served once the
response is written (`After.CONTINUE`). A request that does not arrive within the request
timeout of its first byte is answered 408 (`timed_out`); a connection past the cap gets a
503 (`refusal`), and a client that speaks plain HTTP to the TLS port a 400 in plain text
(`in_the_clear`). Each of these answers is counted by status (`refusals`), for the metrics.
No coroutine runs per request.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Generator, Mapping
from wsgiref.types import WSGIApplication

from kvservice.core import After, ConnectionInfo, Outcome, Reply, Step, Work
from kvservice.execution import StoreCalls
from kvservice.http.cheroot_adapter import CherootGateway, Peer, ServerInfo
from kvservice.http.parser import (
    Data,
    EndOfMessage,
    ParserLimits,
    Refusal,
    RequestHead,
    RequestParser,
    Signal,
)
from kvservice.http.problems import error_response
from kvservice.http.request_info import Parking

logger = logging.getLogger("kvservice.http")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READS = frozenset({b"GET", b"HEAD"})
"""The methods that only read the store; the execution policy may run them where writes
cannot go (on the loop, when only writes may block)."""


class HttpTransport:
    """The HTTP transport as the core sees it (`core.Transport`): the app behind cheroot's
    gateway, the parser's limits, and the answers the transport gives on its own."""

    name = "HTTP"
    logger = logger

    def __init__(
        self,
        app: WSGIApplication,
        limits: ParserLimits,
        info: ServerInfo,
        *,
        tls: bool,
    ) -> None:
        self.app = app
        self.gateway = CherootGateway(app, info)
        self.limits = limits
        self.tls = tls
        self._refusals: dict[int, int] = {}
        self._lock = threading.Lock()
        self.on_workers = 0
        """Requests being served on a worker now (not the loop's: for the metrics)."""
        self.refusal = error_response(503, "The server is at its connection limit; retry shortly.")
        self.in_the_clear = error_response(400, "This port speaks HTTPS only: use an https:// URL.")

    @property
    def refusals(self) -> Mapping[int, int]:
        """The answers it gave before the app saw a request, by status (a copy)."""
        with self._lock:
            return dict(self._refusals)

    def count(self, status: int) -> None:
        """Count an answer the transport gave on its own."""
        with self._lock:
            self._refusals[status] = self._refusals.get(status, 0) + 1

    def serving_on(self, port: int) -> None:
        """The port bound (the environ's SERVER_PORT), once known: when port 0 was asked
        for, no client can have connected before it is told."""
        info = self.gateway.info
        if info.port != port:
            self.gateway = CherootGateway(self.app, dataclasses.replace(info, port=port))

    def protocol_for(self, connection: ConnectionInfo) -> HttpProtocol:
        return HttpProtocol(self, connection)

    def working(self, change: int) -> None:
        """A request went to a worker (+1), or its worker is done with it (-1)."""
        with self._lock:
            self.on_workers += change


class HttpProtocol:
    """One HTTP connection's protocol code (`core.WireProtocol`): its parser, and the request
    it is receiving."""

    def __init__(self, transport: HttpTransport, connection: ConnectionInfo) -> None:
        self.transport = transport
        self.connection = connection
        self.parser = RequestParser(transport.limits)
        self.head: RequestHead | None = None
        self.body: list[bytes] = []
        self.parking: Parking | None = None
        """How the request being answered waits, once the app has parked it; None: not
        parked."""
        self.woken = False
        """A wake came since the app last ran the parked request (set from any thread)."""
        self.most_held = transport.limits.max_header_bytes + transport.limits.max_body_bytes
        """What it holds of what arrives while its request is parked: one request's worth."""
        address, _, port = connection.peer.rpartition(":")
        self.peer = Peer(address, int(port) if port.isdigit() else 0, https=transport.tls)

    @property
    def mid_request(self) -> bool:
        return self.parser.request_in_progress

    @property
    def parked(self) -> bool:
        return self.parking is not None

    @property
    def full(self) -> bool:
        return self.parking is not None and len(self.parser.buffer) >= self.most_held

    def received(self, data: bytes) -> None:
        self.parser.receive_data(data)

    def next_step(self) -> Step | None:
        """The first thing to answer in what has arrived: 100 Continue, a refusal, or a whole
        request (at once when the execution policy runs its kind on the loop, else as
        `Work`: GET and HEAD read, every other method may write)."""
        if self.parking is not None:
            if not self.woken:
                return None  # bytes arrived: they wait in the parser until it is answered
            return self._serve()  # it only takes what it waits on
        parser = self.parser
        while True:
            event = parser.next_event()
            if isinstance(event, Data):
                self.body.append(event.data)
            elif isinstance(event, RequestHead):
                self.head = event
            elif isinstance(event, EndOfMessage):
                assert self.head is not None
                calls = StoreCalls.READS if self.head.method in _READS else StoreCalls.WRITES
                if self.connection.runs_inline(calls):
                    return self._serve()
                self.transport.working(1)
                return Work(self._serve_on_worker, calls)
            elif event is Signal.SEND_CONTINUE:
                return Outcome([_CONTINUE], After.READ)
            elif isinstance(event, Refusal):
                return self._refuse(event)
            else:  # NEED_DATA, or PAUSED
                return None

    def timed_out(self) -> bytes:
        self.transport.count(408)
        return error_response(
            408, "The request did not arrive in time.", head_only=self.parser.head_request
        )

    def closed(self) -> None:
        self.body = []
        parking, self.parking = self.parking, None
        if parking is not None and parking.parked is not None:
            parking.parked.close()

    def _refuse(self, refusal: Refusal) -> Outcome:
        self.transport.count(refusal.status)
        answer = error_response(refusal.status, refusal.detail, head_only=refusal.head_request)
        return Outcome([answer], After.CLOSE)

    def _wake(self) -> None:
        """What the parked request waits on has news (from any thread): run it again."""
        self.woken = True
        self.connection.wake()

    def _serve_on_worker(self) -> Outcome:
        try:
            return self._serve()
        finally:
            self.transport.working(-1)

    def _serve(self) -> Outcome:
        """Answer the request received (its head and body), then read the next one, serve
        the next one buffered once this response is written, or close; or, if the app
        parks it, answer nothing and keep it for the wake."""
        head = self.head
        assert head is not None  # EndOfMessage follows a head
        body = self.body
        parser = self.parser
        stopping = self.connection.stopping
        parking = self.parking or Parking(self._wake)
        parking.resume()
        self.woken = False  # before the app runs: a wake while it runs has it run again
        response = self.transport.gateway.respond(
            head,
            body[0] if len(body) == 1 else b"".join(body),
            self.peer,
            close=stopping,
            parking=parking,
        )
        if parking.resumed is not None and parking.resumed is not parking.parked:
            parking.resumed.close()  # answered (or failed): the app is done with it
        if parking.parked is not None:
            self.parking = parking
            return Outcome([], After.READ)
        self.parking = None
        self.head, self.body = None, []
        replies: list[Reply] = [response.produced]
        if response.rest is not None:
            replies.append(_StreamedBody(response.rest, response.stream_state_bytes))
        if not response.keep_alive or stopping:
            return Outcome(replies, After.CLOSE)
        parser.start_next_cycle()
        return Outcome(replies, After.CONTINUE if len(parser.buffer) else After.READ)


class _StreamedBody:
    """The rest of a long response body as the core writes it (`core.Pieces`): a piece (in
    the chunked coding) each time the client has taken the last; `held_bytes` is what the app
    said producing it holds (a history's snapshot), charged to the reply budget."""

    def __init__(self, rest: Generator[bytes, None, None], held_bytes: int) -> None:
        self.rest = rest
        self.held_bytes = held_bytes

    def next_piece(self) -> bytes | None:
        return next(self.rest, None)

    def close(self) -> None:
        self.rest.close()  # the app's iterable is closed with it
        self.held_bytes = 0
