"""The HTTP server's event loop: it reads every request whole before it is served, and sends
every response, so that no thread but its own ever waits on a socket.

Stock cheroot hands every new connection to a worker thread at once, and the worker then
blocks reading the request; the socket timeout restarts with every byte. So a client that
opens a connection and says nothing, or trickles a byte a second, holds a worker, and as
many such clients as there are workers stop the server for everyone. A worker also blocks
writing its response to a client that does not read it.

Here the selector thread reads whatever has arrived, without blocking, into the
connection's `GateReader`. The request is served only when it is complete: its head, and
its body, whether of known length or chunked up to the last chunk and its trailers
(`framing.py` decides, with the functions the parser uses). A `RequestJudge` per request
keeps what it has judged, so each byte is examined a bounded number of times however the
request is split over reads, and a body trickled in small reads costs this loop time
linear in its length. A request the parser would
refuse anyway is served at once; a body past the limit is refused here with 413, before it
is sent when the client asked first (`Expect: 100-continue`, answered here too). A request
not complete within `request_timeout_s` of its first byte gets a 408; a connection that
stays silent is closed after the idle timeout; connections past `max_connections` get a 503.

The request is then served by a worker, or right here when the server serves inline (an app
that never waits: no thread hand-off at all). Either way the response goes into the
connection's `ResponseBuffer`, and this loop sends it: in one send when the socket takes it,
the rest as the client reads, closing a connection that makes no progress for the socket
timeout. Slow clients, reading or writing, cost a selector slot and a buffer, never a thread.
The buffers are bounded as a whole: what a connection holds once its socket is full is
charged to the process's `ReplyBudget`, and a connection whose response does not fit is
closed. A long body the app yields in pieces (a history) is not built whole to be held:
`StreamingGateway` writes its first pieces, and the loop produces each next one only once
the socket has taken the last.

With TLS (`server.tls_context`), each accepted socket is wrapped without a handshake, and
this loop drives the handshake as the client's bytes arrive, as it reads requests: a client
that connects and never completes one holds a selector slot until the request timeout, not
the loop or a worker (cheroot's own TLS adapter handshakes, blocking, on the accepting
thread). A failed handshake is logged in one line and the connection closed; plain HTTP sent
to the TLS port gets a 400 in plain text first. After the handshake, the connection is an
ordinary one; the only difference is that bytes OpenSSL has already decrypted
(`SSLSocket.pending()`) do not show as readiness, so they are taken along with every read.
"""

from __future__ import annotations

import _pyio  # type: ignore[import-not-found]  # cheroot's reader base; it has no stubs
import contextlib
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from cheroot import connections as cheroot_connections
from cheroot import wsgi as cheroot_wsgi

from kvservice.http.framing import (
    CHUNKED,
    Body,
    ChunkedBodyDecoder,
    body_framing,
    empty_lines_length,
)
from kvservice.http.request_info import STREAM_STATE_ENVIRON
from kvservice.reply_budget import ConnectionCharge, ReplyBudget

logger = logging.getLogger("kvservice.gate")

_RECEIVE_BYTES = 65536
_ACCEPTS_PER_WAKEUP = 128
_PIPELINED_PER_WAKEUP = 16
_SEND_PER_WAKEUP = 64 * 1024
"""Bytes of a streamed body sent to one connection a round: into an empty socket buffer
(which takes megabytes) it would otherwise hold the loop while it is produced. A body made
whole is sent as fast as the socket takes it."""
_STREAMED_PER_ROUND = 256 * 1024
"""Bytes of streamed bodies sent a round, every connection together: hundreds of them into
empty socket buffers would otherwise make a round, and every other client's wait, long."""
_HEAD_END = b"\r\n\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _GateRaw(_pyio.RawIOBase):  # type: ignore[misc]
    """A socket's read side, serving first the bytes the selector thread already received."""

    def __init__(self, sock: socket.socket) -> None:
        self.pending = bytearray()
        self._socket_io = socket.SocketIO(sock, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self.pending:
            count = min(len(buffer), len(self.pending))
            buffer[:count] = self.pending[:count]
            del self.pending[:count]
            return count
        try:
            return self._socket_io.readinto(buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None  # TLS's "nothing now", which SocketIO does not recognise

    def close(self) -> None:
        self._socket_io.close()
        super().close()


class GateReader(_pyio.BufferedReader):  # type: ignore[misc]
    """The connection's `rfile`: cheroot's reader interface over a `_GateRaw`."""

    def __init__(self, sock: socket.socket, bufsize: int = _pyio.DEFAULT_BUFFER_SIZE) -> None:
        self.gate = _GateRaw(sock)
        super().__init__(self.gate, bufsize)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes; b"" when none have arrived. The socket is non-blocking, and the
        gate hands the parser only requests it judged whole, so a parser that wants more (a
        line longer than every limit, say) has read all there is: it must not wait for it."""
        data: bytes | None = super().read(size)
        if data is None:  # nothing buffered, and the socket has nothing now
            return b""
        self.bytes_read += len(data)
        return data

    def take_header_block(self) -> bytes | None:
        """The header section at the front of the buffer (its lines and the empty line),
        taken off it; None unless it is all in the buffer already."""
        available = self.peek(1)
        if available.startswith(b"\r\n"):
            return bytes(self.read(2))
        end = available.find(_HEAD_END)
        return None if end < 0 else bytes(self.read(end + len(_HEAD_END)))

    def has_data(self) -> bool:
        """True if bytes are buffered here or waiting in the gate."""
        return bool(self._buffered() or self.gate.pending)

    def unread_buffered(self) -> None:
        """Give bytes read ahead (a pipelined request) back to the gate, in front."""
        buffered = self._buffered()
        if buffered:
            self.gate.pending[:0] = super().read1(buffered)

    def _buffered(self) -> int:
        # The same private fields cheroot's own reader reads for has_data().
        return len(self._read_buf) - int(self._read_pos)


STREAM_AFTER_BYTES = 32 * 1024
"""A response body the app yields in pieces past this many bytes is produced as it is sent."""
STREAM_HEADROOM_BYTES = 32 * 1024
"""What a body being produced is charged for its pending bytes, whatever they are at the
moment: a piece or two (a history's are 16 KiB). A charge that grew as the client read would
be refused whenever the budget is full, closing the connections that make progress."""


class ResponseBuffer:
    """The connection's `wfile`: what cheroot writes is kept, not sent; the gate sends it,
    all at once when the socket takes it (one send for head and body), the rest as the
    client reads.

    A long body the app yields in pieces (a history) is not produced whole: past
    `STREAM_AFTER_BYTES`, `StreamingGateway` leaves the rest to `produce_later`, and the gate
    produces the next piece (`refill`) only once the socket has taken the last one. What a
    connection holds once the socket has taken what it would (the bytes pending, and what
    the app says its producer holds: a history's snapshot) is charged to the process's
    `ReplyBudget` (`hold`), and released as the client reads or the connection closes.
    """

    def __init__(self, budget: ReplyBudget | None = None) -> None:
        self.pending = bytearray()
        """Bytes to send now; never empty while more is to come."""
        self.bytes_written = 0
        self.closed = False
        self.charge = None if budget is None else ConnectionCharge(budget, STREAM_HEADROOM_BYTES)
        """This connection's share of the reply budget; None: unbounded."""
        self._later: deque[bytes | Iterator[None]] = deque()
        """After `pending`, in order: bytes written, and producers of the rest of a body."""
        self._producing = False
        self._producer_state = 0
        """Bytes the producers in `_later` hold to produce the rest (the app says how many)."""

    def write(self, data: bytes) -> int:
        """Keep `data` to send, after anything still to be produced."""
        if self._later and not self._producing:
            self._later.append(bytes(data))
        else:
            self.pending += data
        self.bytes_written += len(data)
        return len(data)

    def produce_later(self, producer: Iterator[None], state_bytes: int = 0) -> None:
        """Produce the rest of the body as it is sent: each step of `producer` writes its
        next piece here; `state_bytes` is what it holds meanwhile, charged with the rest."""
        self._later.append(producer)
        self._producer_state += state_bytes

    def refill(self) -> bool:
        """Put what comes next into `pending` once it is empty; whether there is any. A
        producer's error propagates (the gate logs it and closes the connection)."""
        while not self.pending and self._later:
            following = self._later[0]
            if isinstance(following, bytes):
                self.pending += following
                self._later.popleft()
                continue
            self._producing = True
            try:
                next(following)
            except StopIteration:
                self._later.popleft()
                if not self.streaming:
                    self._producer_state = 0
            finally:
                self._producing = False
        return bool(self.pending)

    @property
    def streaming(self) -> bool:
        """Whether part of the body is still to be produced."""
        return any(not isinstance(later, bytes) for later in self._later)

    def hold(self) -> bool:
        """Charge the budget for what is pending now (releasing what was sent); False if it
        does not fit, and then the connection must close."""
        if self.charge is None:
            return True
        return self.charge.settle(
            len(self.pending), streaming=self.streaming, produced_from=self._producer_state
        )

    def flush(self) -> None:
        """Nothing to do: the gate sends."""

    def discard(self) -> None:
        """Forget what was not sent, produced or not, and give back its charge."""
        self.pending.clear()
        self._producer_state = 0
        while self._later:
            following = self._later.popleft()
            if not isinstance(following, bytes):
                with contextlib.suppress(Exception):  # it is being dropped; nothing to tell
                    following.close()  # type: ignore[attr-defined]  # a generator
        if self.charge is not None:
            self.charge.release()

    def close(self) -> None:
        """Forget what was not sent."""
        self.discard()
        self.closed = True


class StreamingGateway(cheroot_wsgi.Gateway_10):
    """cheroot's WSGI gateway, except that a body the app yields in pieces is written into
    the `ResponseBuffer` only up to `STREAM_AFTER_BYTES` here; the rest is left to it to
    produce as the client reads. So a long history to a client that does not read costs one
    piece, not a serialised copy of all of it. Bodies of one piece (every other route's)
    are written whole, as cheroot does."""

    req: Any

    def respond(self) -> None:
        response = self.req.server.wsgi_app(self.env, self.start_response)
        chunks = iter(response)
        wfile: ResponseBuffer = self.req.conn.wfile
        streaming = False
        try:
            for chunk in chunks:
                self._write_chunk(chunk)
                if len(wfile.pending) >= STREAM_AFTER_BYTES:
                    state_bytes = self.env.get(STREAM_STATE_ENVIRON, 0)
                    wfile.produce_later(self._produce(chunks, response), state_bytes)
                    streaming = True
                    return
        finally:
            self.req.ensure_headers_sent()
            if not streaming and hasattr(response, "close"):
                response.close()

    def _produce(self, chunks: Iterator[bytes], response: Any) -> Iterator[None]:
        """Write one chunk a step (on the gate's thread); close the app's response at the
        end, or when the connection is dropped."""
        try:
            for chunk in chunks:
                self._write_chunk(chunk)
                yield
        finally:
            if hasattr(response, "close"):
                response.close()

    def _write_chunk(self, chunk: bytes) -> None:
        if chunk:
            if not isinstance(chunk, bytes):
                raise ValueError("WSGI Applications must yield bytes")
            self.write(chunk)


def gated_makefile(
    sock: socket.socket,
    mode: str = "r",
    bufsize: int = 8192,
    reply_budget: ReplyBudget | None = None,
) -> Any:
    """The gate's reader and writer in place of cheroot's MakeFile; the writer charges what
    it holds to `reply_budget`."""
    if "r" in mode:
        return GateReader(sock, bufsize)
    return ResponseBuffer(reply_budget)


class Readiness(Enum):
    """What the gate does with a connection's pending bytes."""

    WAIT = "wait"  # well-formed so far and incomplete
    CONTINUE = "continue"  # as WAIT, and the client waits for `100 Continue` to send its body
    SERVE = "serve"  # whole, or malformed: a worker's strict parser answers either
    TOO_LARGE = "too large"  # the body is over the limit: refused with 413 here
    TOO_LARGE_TO_CONTINUE = "too large to continue"  # refused with 413 before it is sent


_WAITING = (Readiness.WAIT, Readiness.CONTINUE)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
"""What a non-blocking socket, plain or TLS, raises when it cannot go on now."""


class _TLSListener:
    """The listening socket as cheroot's accept sees it: each accepted socket comes back
    wrapped for TLS, its handshake not started (the gate drives it)."""

    def __init__(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        self.listener = listener
        self.context = context

    def accept(self) -> tuple[ssl.SSLSocket, Any]:
        sock, address = self.listener.accept()
        try:
            wrapped = self.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            sock.close()
            raise
        return wrapped, address


class RequestJudge:
    """Judges whether the request arriving on a connection can go to a worker now, must wait
    for more bytes, or is too large; one per request, fed the connection's pending bytes
    each time more arrive.

    It keeps what it has judged (how far it looked for the head's end and for bare LFs, the
    head's framing, a chunked body's decoder state), so each byte is examined a bounded
    number of times however the request is split over reads (h11's `_receivebuffer.py`
    does the same): a chunked body trickled in small reads costs the loop time linear in
    its length. The bytes it was fed must still be at the front of `pending`: the gate
    starts a new judge for each request.

    The gate waits only for requests the strict parser would read a body for; anything it
    refuses at once (malformed, ambiguous, too large a head, a line ended by a bare LF) goes
    to a worker at once. A client that sent `Expect: 100-continue` is told to go on
    (CONTINUE) unless it declared a body over `max_continued_body` (default `max_body`),
    which is refused before it is sent.
    """

    def __init__(
        self, max_head: int, max_body: int, max_fields: int, max_continued_body: int | None = None
    ) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.max_fields = max_fields
        self.max_continued_body = max_continued_body or max_body
        self._searched = 0
        """How far the head's end and bare LFs have been looked for."""
        self._body_start = -1
        """Where the body starts, once the head has been judged."""
        self._framing: Body | None = None
        self._decoder = ChunkedBodyDecoder()
        self._body_judged = 0
        """Bytes of a chunked body the decoder has been fed."""

    @property
    def framing(self) -> Body | None:
        """What the head says of the body, once a head announcing one has been judged."""
        return self._framing

    def readiness(self, pending: bytes | bytearray) -> Readiness:
        """What to do with the request at the front of `pending` now."""
        if self._body_start < 0:
            verdict = self._judge_head(pending)
            if verdict is not None:
                return verdict
        framing = self._framing
        assert framing is not None  # the head was judged to have a body
        received = len(pending) - self._body_start
        if framing.length == CHUNKED:
            return self._judge_chunked(pending, received)
        if framing.length > self.max_body:
            return Readiness.TOO_LARGE
        if framing.expects_continue and framing.length > self.max_continued_body:
            return Readiness.TOO_LARGE_TO_CONTINUE
        if received >= framing.length:
            return Readiness.SERVE
        return Readiness.CONTINUE if framing.expects_continue and not received else Readiness.WAIT

    def _judge_head(self, pending: bytes | bytearray) -> Readiness | None:
        """A verdict on the head, or None once it is whole and announces a body."""
        start = empty_lines_length(pending)
        # Step back over a CRLF CRLF (or CR LF) that the last look may have seen only part of.
        head_end = pending.find(_HEAD_END, max(start, self._searched - len(_HEAD_END) + 1))
        searched = len(pending) if head_end < 0 else head_end
        if _BARE_LF.search(pending, max(0, self._searched - 1), min(searched, self.max_head + 1)):
            return Readiness.SERVE  # the parser refuses the line at once (RFC 9112 2.2 allows it)
        self._searched = searched
        if head_end < 0:
            return Readiness.SERVE if len(pending) > self.max_head else Readiness.WAIT
        if head_end > self.max_head:
            return Readiness.SERVE  # refused as too large before any body is read
        self._framing = body_framing(bytes(pending[:head_end]), self.max_fields)
        if self._framing is None:
            return Readiness.SERVE
        self._body_start = head_end + len(_HEAD_END)
        return None

    def _judge_chunked(self, pending: bytes | bytearray, received: int) -> Readiness:
        try:
            _, used = self._decoder.feed(pending[self._body_start + self._body_judged :])
        except ValueError:
            return Readiness.SERVE  # malformed: the worker's reader refuses it with 400
        self._body_judged += used
        if self._decoder.done:
            return Readiness.SERVE
        if received > self.max_body:
            return Readiness.TOO_LARGE
        if self._framing is not None and self._framing.expects_continue and not received:
            return Readiness.CONTINUE
        return Readiness.WAIT


class GatedConnectionManager(cheroot_connections.ConnectionManager):
    """cheroot's connection manager, made the server's event loop: it reads every request
    whole before serving it, and sends every response, so that no thread but its own ever
    waits on a socket.

    A connection is in one of three states: waiting for (the rest of) a request, registered
    for reading; being served, unregistered (by a worker, or right here on this thread when
    `server.serve_inline`); or sending its response, registered for writing. Runs on the
    server's selector thread, except `put()` and `finish()`, which workers call when they
    have written a response into the connection's ResponseBuffer.
    """

    # cheroot's internals this class builds on; its type stubs leave them out.
    server: Any
    _selector: Any
    _stop_requested: bool
    _serving: bool
    _remove_invalid_sockets: Callable[[], None]
    _from_server_socket: Callable[[socket.socket], Any]

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self._open_connections = 0
        self._count_lock = threading.Lock()
        self.refusals: dict[int, int] = {}
        """Answers the transport gave before the app saw a request, by status code."""
        self._drain_deadline: float | None = None
        self._accepting = True
        self._to_serve: deque[Any] = deque()
        """Connections (unregistered) holding a whole request to serve here, next round."""
        self._streamed_this_round = 0

    # -- accounting: `_admit` counts every accepted connection, its close() uncounts it ----

    def connection_closed(self) -> None:
        """Called once per connection when it closes, wherever that happens."""
        with self._count_lock:
            self._open_connections -= 1

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed: waiting, in the gate or being served."""
        return self._open_connections

    @property
    def connections_in_gate(self) -> int:
        """Connections registered with the selector, not counting the listening socket: idle,
        receiving a request, sending a response, or (`serve_inline`) being served here."""
        return max(0, len(self._selector) - (1 if self._accepting else 0))

    def count_refusal(self, status: int) -> None:
        """Count an answer the transport gave on its own (any thread)."""
        with self._count_lock:
            self.refusals[status] = self.refusals.get(status, 0) + 1

    # -- the selector loop ------------------------------------------------------------------

    def stop(self) -> None:
        """Drain, then stop the selector loop: called from the thread stopping the server.

        New connections are no longer accepted and idle ones are closed at once; requests that
        have started to arrive get until `drain_timeout` to complete and be served, and
        responses being sent until then to go out. Whatever is still incomplete then is
        answered 503.
        """
        self._drain_deadline = time.time() + self.server.drain_timeout
        while self._serving and time.time() < self._drain_deadline and self._unfinished():
            time.sleep(0.01)
        super().stop()
        while self._to_serve:
            self._to_serve.popleft().refuse(503, "The server is shutting down; retry later.")
        for sock_fd, conn in list(self._selector.connections):
            if conn is not self.server:
                self._selector.unregister(sock_fd)
                if conn.wfile.pending or conn.handshaking:
                    conn.close_now()  # a reader too slow to take its response, or no TLS yet
                else:
                    conn.refuse(503, "The server is shutting down; retry elsewhere or later.")

    def _unfinished(self) -> bool:
        return bool(self._to_serve) or any(
            conn is not self.server and (conn.rfile.gate.pending or conn.wfile.pending)
            for _, conn in self._selector.connections
        )

    def _start_draining(self) -> None:
        """Stop accepting and close the idle connections (selector thread)."""
        self._accepting = False
        self._selector.unregister(self.server.socket.fileno())
        for sock_fd, conn in list(self._selector.connections):
            if not (conn.rfile.gate.pending or conn.wfile.pending):
                self._selector.unregister(sock_fd)
                conn.close()

    def _run(self, expiration_interval: float) -> None:
        last_expiration_check = time.time()
        while not self._stop_requested:
            self._streamed_this_round = 0
            if self._drain_deadline is not None and self._accepting:
                self._start_draining()
            # While draining, look often: the thread stopping the server is waiting; and do
            # not wait at all while requests are waiting to be served here.
            timeout = expiration_interval if self._accepting else 0.01
            if self._to_serve:
                timeout = 0
            try:
                ready = list(self._selector.select(timeout=timeout))
            except OSError:
                self._remove_invalid_sockets()
                continue
            for sock_fd, conn in ready:
                if conn is self.server:
                    self._accept()
                elif conn.handshaking:
                    self._handshake(sock_fd, conn)
                elif conn.wfile.pending:
                    self._send_more(sock_fd, conn)
                else:
                    self._receive(sock_fd, conn)
            for _ in range(len(self._to_serve)):  # those waiting now; more wait a round
                self._serve_here(self._to_serve.popleft())
            now = time.time()
            if now - last_expiration_check > expiration_interval:
                self._expire(threshold=now - self.server.timeout)
                last_expiration_check = now

    def _accept(self) -> None:
        """Accept every connection waiting, up to a batch (the listening socket does not
        block): one a wakeup would leave a crowd of new clients waiting a round each."""
        listener: Any = self.server.socket
        if self.server.tls_context is not None:
            listener = _TLSListener(listener, self.server.tls_context)
        for _ in range(_ACCEPTS_PER_WAKEUP):
            conn = self._from_server_socket(listener)
            if conn is None:
                return
            self._admit(conn)

    def _admit(self, conn: Any) -> None:
        with self._count_lock:
            self._open_connections += 1
            over_capacity = self._open_connections > self.server.max_connections
        conn.socket.setblocking(False)  # only this thread touches sockets, and never waits
        conn.handshaking = isinstance(conn.socket, ssl.SSLSocket)
        if conn.handshaking:
            # The refusal, if any, is sent once there is a TLS session to send it in.
            conn.over_capacity = over_capacity
            conn.last_used = time.time()
            conn.request_deadline = conn.last_used + self.server.request_timeout
            conn.handshake_events = selectors.EVENT_READ  # the client speaks first
            self._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=conn)
            return
        if over_capacity:
            conn.refuse(503, "The server is at its connection limit; retry shortly.")
            return
        self._wait_for_request(conn)

    def _handshake(self, sock_fd: int, conn: Any) -> None:
        """Take the TLS handshake one step further; once done, wait for a request."""
        try:
            conn.socket.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as wanted:
            events = (
                selectors.EVENT_READ
                if isinstance(wanted, ssl.SSLWantReadError)
                else selectors.EVENT_WRITE
            )
            if events != conn.handshake_events:  # cheroot's selector has no modify()
                self._selector.unregister(sock_fd)
                self._selector.register(sock_fd, events, data=conn)
                conn.handshake_events = events
            return
        except OSError as error:  # ssl.SSLError included: no traceback, it is the client's
            logger.info("TLS handshake with %s failed: %s", conn.remote_addr, error)
            self._selector.unregister(sock_fd)
            if getattr(error, "reason", None) == "HTTP_REQUEST":  # OpenSSL saw plain HTTP
                conn.refuse_in_clear(400, "This port speaks HTTPS only: use an https:// URL.")
            conn.close_now()
            return
        conn.handshaking = False
        conn.ssl_env = {"HTTPS": "on", "wsgi.url_scheme": "https"}
        self._selector.unregister(sock_fd)
        if conn.over_capacity:
            conn.refuse(503, "The server is at its connection limit; retry shortly.")
            return
        self._wait_for_request(conn)

    # -- answered: send the response, then wait for the next request or close --------------

    def put(self, conn: Any) -> None:
        """A worker has answered a request on a kept-alive connection."""
        self._respond(conn, keep_open=True)

    def finish(self, conn: Any) -> None:
        """A connection with a response still to send is done: send it, then close."""
        self._respond(conn, keep_open=False)

    def _respond(self, conn: Any, keep_open: bool) -> None:
        """Send what is in the connection's ResponseBuffer; what the socket does not take now
        goes out as the client reads it, without a worker (a slow reader holds no thread)."""
        conn.keep_open = keep_open
        if self._send(conn):
            self._sent(conn)
            return
        conn.send_deadline = time.time() + self.server.timeout
        self._selector.register(conn.socket.fileno(), selectors.EVENT_WRITE, data=conn)

    def _send_more(self, sock_fd: int, conn: Any) -> None:
        if self._send(conn):
            self._selector.unregister(sock_fd)
            self._sent(conn)
        else:
            conn.send_deadline = time.time() + self.server.timeout  # it is reading: more time

    def _send(self, conn: Any) -> bool:
        """Send what the socket takes now, producing the rest of a streamed body as it goes;
        True once nothing is left (sent, or undeliverable: the client is gone, the reply
        budget is full or the body failed, and the connection will close)."""
        wfile: ResponseBuffer = conn.wfile
        pending = wfile.pending
        allowance = _SEND_PER_WAKEUP
        try:
            while pending or wfile.refill():
                streaming = wfile.streaming
                try:
                    if streaming and (
                        allowance <= 0 or self._streamed_this_round > _STREAMED_PER_ROUND
                    ):
                        raise BlockingIOError  # more next round, after the other connections
                    sent = conn.socket.send(pending)
                except _WOULD_BLOCK:  # before OSError: TLS's are OSErrors too
                    if wfile.hold():
                        return False
                    self._over_reply_budget(conn)
                    break
                except OSError:
                    break
                del pending[:sent]
                allowance -= sent
                if streaming:
                    self._streamed_this_round += sent
            else:
                wfile.hold()  # all sent: its charge goes back
                return True
        except Exception:
            logger.exception("producing a response failed")
        wfile.discard()
        conn.keep_open = False
        return True

    def _over_reply_budget(self, conn: Any) -> None:
        wfile: ResponseBuffer = conn.wfile
        assert wfile.charge is not None  # only a charged response is refused
        logger.warning("%s", wfile.charge.refusal(conn.remote_addr, len(wfile.pending)))

    def _sent(self, conn: Any) -> None:
        if not conn.keep_open:
            conn.close_now()
            return
        conn.rfile.unread_buffered()  # bytes read ahead: a pipelined request
        self._wait_for_request(conn)

    # -- waiting for a request --------------------------------------------------------------

    def _wait_for_request(self, conn: Any) -> None:
        conn.last_used = time.time()
        self._begin_request(conn)
        more = self._decrypted(conn)  # a broken connection shows at the next read
        if more:
            conn.rfile.gate.pending += more
        readiness = self._readiness(conn) if conn.rfile.gate.pending else Readiness.WAIT
        if readiness not in _WAITING:
            self._dispatch(conn, readiness)
            return
        self._tell_to_continue(conn, readiness)
        conn.request_deadline = conn.last_used + self.server.request_timeout
        self._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=conn)

    def _decrypted(self, conn: Any) -> bytes | None:
        """What OpenSSL has decrypted and not handed out yet, which the selector cannot see;
        None if the connection broke."""
        sock = conn.socket
        if not isinstance(sock, ssl.SSLSocket):
            return b""
        data = bytearray()
        while sock.pending():
            try:
                data += sock.recv(sock.pending())
            except _WOULD_BLOCK:
                break
            except OSError:
                return None
        return bytes(data)

    def _receive(self, sock_fd: int, conn: Any) -> None:
        try:
            data = conn.socket.recv(_RECEIVE_BYTES)
        except _WOULD_BLOCK:  # before OSError: TLS's are OSErrors too
            return
        except OSError:
            data = b""
        if data:
            more = self._decrypted(conn)
            data = b"" if more is None else data + more
        if not data:  # the client closed, or the connection broke
            self._selector.unregister(sock_fd)
            conn.close()
            return
        pending = conn.rfile.gate.pending
        if not pending:
            conn.request_deadline = time.time() + self.server.request_timeout
            self._begin_request(conn)
        pending += data
        conn.last_used = time.time()
        readiness = self._readiness(conn)
        if readiness in _WAITING:
            self._tell_to_continue(conn, readiness)
            return
        if readiness is Readiness.SERVE and self.server.serve_inline:
            self._serve_registered(sock_fd, conn)
            return
        self._selector.unregister(sock_fd)
        self._dispatch(conn, readiness)

    def _serve_registered(self, sock_fd: int, conn: Any) -> None:
        """Serve requests here while the connection stays registered for reading, which is
        what it returns to when its response went out whole (two epoll calls saved a request):
        as many requests as it has pipelined, up to a batch, so that no one client holds the
        loop."""
        for _ in range(_PIPELINED_PER_WAKEUP):
            keep_open = self._communicate(conn)
            if not (keep_open and self._send(conn) and conn.keep_open):
                self._selector.unregister(sock_fd)
                self._respond(conn, keep_open and conn.keep_open)
                return
            conn.rfile.unread_buffered()  # bytes read ahead: a pipelined request
            conn.last_used = time.time()
            self._begin_request(conn)
            readiness = self._readiness(conn) if conn.rfile.gate.pending else Readiness.WAIT
            if readiness in _WAITING:
                self._tell_to_continue(conn, readiness)
                conn.request_deadline = conn.last_used + self.server.request_timeout
                return
            if readiness is not Readiness.SERVE:
                self._selector.unregister(sock_fd)
                self._dispatch(conn, readiness)
                return
        # More pipelined requests wait: served on the loop's next round, after the others.
        self._selector.unregister(sock_fd)
        self._to_serve.append(conn)

    def _tell_to_continue(self, conn: Any, readiness: Readiness) -> None:
        """Answer `Expect: 100-continue` once the head is accepted, so the client sends its
        body now rather than after its own timeout (curl's is 1 s). Once per request."""
        if readiness is Readiness.CONTINUE and not conn.continued:
            conn.continued = True
            with contextlib.suppress(OSError):
                conn.socket.send(_CONTINUE)  # 25 bytes into an idle socket's empty buffer

    def _readiness(self, conn: Any) -> Readiness:
        return conn.request_judge.readiness(conn.rfile.gate.pending)  # type: ignore[no-any-return]

    def _begin_request(self, conn: Any) -> None:
        """What the gate knows of a request is forgotten: the next bytes start a new one."""
        server = self.server
        conn.continued = False
        conn.request_judge = RequestJudge(
            server.max_request_header_size,
            server.max_request_body_size,
            server.max_header_count,
            server.max_continued_body_size,
        )

    def _dispatch(self, conn: Any, readiness: Readiness) -> None:
        """Serve the request (here, or on a worker), or refuse it as too large."""
        if readiness is Readiness.SERVE:
            if self.server.serve_inline:
                self._to_serve.append(conn)  # not now: that would recurse, request by request
            else:
                self.server.process_conn(conn)
        elif readiness is Readiness.TOO_LARGE_TO_CONTINUE:
            limit = self.server.max_continued_body_size
            size = self._declared_size(conn)
            conn.refuse(413, f"The request body{size} would exceed the limit of {limit} bytes.")
        else:
            limit = self.server.max_request_body_size
            size = self._declared_size(conn)
            conn.refuse(413, f"The request body{size} exceeds the limit of {limit} bytes.")

    def _declared_size(self, conn: Any) -> str:
        """ " of N bytes" for a request that declared its Content-Length, else "" (chunked)."""
        framing = conn.request_judge.framing
        if framing is None or framing.length == CHUNKED:
            return ""
        return f" of {framing.length} bytes"

    def _serve_here(self, conn: Any) -> None:
        """What a worker does with a connection, on this thread: no hand-off, no lock, no
        other thread waking up. For apps that never wait (an in-process store)."""
        if self._communicate(conn):
            self.put(conn)
        else:
            conn.close()

    def _communicate(self, conn: Any) -> bool:
        """Serve the request at the front of `conn` (its response into the connection's
        ResponseBuffer); whether the connection may carry another."""
        conn.keep_open = True
        try:
            return bool(conn.communicate())
        except Exception:
            logger.exception("serving a request failed")
            return False

    def _expire(self, threshold: float) -> None:
        """Close silent connections after the idle timeout, and those that stopped reading
        their response for as long; answer stalled requests with 408."""
        now = time.time()
        expired = [
            (sock_fd, conn)
            for sock_fd, conn in self._selector.connections
            if conn is not self.server
            and (
                (conn.handshaking and now > conn.request_deadline)
                or (conn.wfile.pending and now > conn.send_deadline)
                or (
                    not conn.wfile.pending
                    and conn.rfile.gate.pending
                    and now > conn.request_deadline
                )
                or (
                    not conn.wfile.pending
                    and not conn.rfile.gate.pending
                    and conn.last_used < threshold
                )
            )
        ]
        for sock_fd, conn in expired:
            self._selector.unregister(sock_fd)
            if conn.wfile.pending:
                conn.close_now()
            elif conn.rfile.gate.pending:
                conn.refuse(408, "The request did not arrive in time.")
            else:
                conn.close()


def _expired(conn: Any, now: float, idle_threshold: float) -> bool:
    """Whether a connection has waited too long for what it is waiting for."""
    if conn.wfile.pending:
        return bool(now > conn.send_deadline)  # the client stopped reading its response
    if conn.rfile.gate.pending:
        return bool(now > conn.request_deadline)  # a request that is not arriving
    return bool(conn.last_used < idle_threshold)  # an idle connection
