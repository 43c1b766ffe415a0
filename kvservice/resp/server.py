"""The RESP transport's server: asyncio on one dedicated thread, over any `Store`.

`RespServer` is a `lifecycle.Runnable`. Idle connections cost a socket and a small buffer, not
a thread. Each connection is an asyncio Protocol (`_Client`): each read, of at most
`_READ_BYTES` (16 KiB, as Redis reads), is fed to its `codec.CommandParser` as it arrives,
and the complete commands in it are run in batches whose replies are written together, so a
client that pipelines gets one write back, not one per command. A batch stops at
`_BATCH_COMMANDS` commands, once its replies reach `_BATCH_REPLY_BYTES`, or when the server
stops; the rest wait until those replies are written, reading paused meanwhile, so a client
that does not read holds one batch's replies. Where the commands run is the execution
policy's (`kvservice.execution`): on this thread for a store that never blocks; for one that
may (Redis), on a pool of `workers` threads, one batch per connection at a time and in order,
so no client waits behind another client's store call. No coroutine runs per command: the
streams API's awaits cost more than a GET. The access log has a line per connection at INFO
and one per command at DEBUG (a line costs more than the command it describes). Everything a
client can make it hold is bounded: connections, idle time, the size of one request, the
number of its arguments, and the replies it has not read: a long array reply (a long
HISTORY) is encoded a piece at a time as the client reads it, and what a connection's write
buffer and queue hold is charged to the process's `ReplyBudget`, shared with HTTP; a
connection whose replies do not fit is closed. Malformed input is answered with `-ERR
Protocol error: ...` and the connection is closed. With TLS, asyncio does each handshake
without blocking the loop, within `handshake_timeout_s`; connections still in their handshake
count against the connection limit, and one past it is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import ssl
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kvservice.auth import Access, Tokens
from kvservice.execution import Execution
from kvservice.reply_budget import ConnectionCharge, ReplyBudget, estimated_size
from kvservice.resp.codec import (
    CRLF,
    CommandParser,
    Error,
    ProtocolError,
    Reply,
    RequestLimits,
    encode,
    printable,
)
from kvservice.resp.commands import ServerState, Session, execute
from kvservice.store import Store

logger = logging.getLogger("kvservice.resp")
access_logger = logging.getLogger("kvservice.access")

_ACCEPTS_PER_WAKEUP = 64
_READ_BYTES = 16 * 1024
"""The most one read takes from a connection, so the most one turn of the loop runs for it:
asyncio's own reads take up to 256 KiB, which is 37,000 pipelined `GET k` run in one go
(half a second, and 38 MB of replies built before any budget could refuse them). Redis reads
16 KiB too (PROTO_IOBUF_LEN)."""


@dataclass(frozen=True)
class RespSettings:
    """Listening address and every limit the RESP transport enforces; those a user can change
    come from the configuration (`kvservice.__main__.resp_settings`), without defaults here."""

    host: str
    port: int
    max_connections: int
    idle_timeout_s: float
    max_argument_bytes: int
    """One bulk string; above the value limit, so the store answers slightly large values."""
    max_request_bytes: int
    """All arguments of one command together; also the longest inline command line."""
    listen_backlog: int
    max_arguments: int = 1024
    shutdown_timeout_s: float = 2.0
    handshake_timeout_s: float = 10.0
    """How long a TLS handshake may take; a client that stalls one is then dropped."""
    workers: int = 32
    """Threads that run commands when the execution policy says WORKERS (--threads)."""

    @property
    def limits(self) -> RequestLimits:
        """What one command may hold, for the parser."""
        return RequestLimits(self.max_argument_bytes, self.max_request_bytes, self.max_arguments)


# -- the server -----------------------------------------------------------------------------


class RespServer:
    """The RESP transport over `store`, serving on a background thread until `stop()`."""

    def __init__(
        self,
        store: Store,
        settings: RespSettings,
        tokens: Tokens | None = None,
        tls: ssl.SSLContext | None = None,
        execution: Execution = Execution.INLINE,
        reply_budget: ReplyBudget | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.tls = tls
        """Serve TLS with this context (`kvservice.tls`); None: plain RESP."""
        self.reply_budget = reply_budget
        """What connections' unsent replies are charged to, shared with the other transports;
        None: unbounded but for the idle timeout."""
        self.workers: ThreadPoolExecutor | None = None
        """Where commands run under Execution.WORKERS; None: on the loop's thread."""
        if execution is Execution.WORKERS:
            self.workers = ThreadPoolExecutor(settings.workers, thread_name_prefix="resp-worker")
        self.failed = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._state = ServerState(max_clients=settings.max_connections, tokens=tokens)
        self._bound_port = settings.port

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._bound_port

    @property
    def stopping(self) -> bool:
        """Whether it is draining: batches stop between commands, nothing new is read."""
        return self._stopping

    @property
    def figures(self) -> ServerState:
        """Its connection and command counts, as INFO reports them (read by metrics)."""
        return self._state

    @property
    def url(self) -> str:
        """The address it serves, as a redis:// (or with TLS rediss://) URL."""
        host = self.settings.host
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        """Bind (raising OSError if the address is taken) and serve on a background thread."""
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server(
                (host, port), family=family, backlog=self.settings.listen_backlog
            )
        except OSError as error:
            raise OSError(f"{host}:{port}: {error}") from error
        self._bound_port = self._state.port = int(self._socket.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name="resp-serve", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.failed.is_set():
            self._socket.close()
            raise OSError(f"{host}:{port}: the RESP server failed to start; it logged why")

    def stop(self) -> None:
        """Stop accepting, finish commands in flight, close every connection; a few seconds."""
        loop, thread, stop_requested = self._loop, self._thread, self._stop_requested
        if loop is None or thread is None or stop_requested is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended on its own
            loop.call_soon_threadsafe(stop_requested.set)
        thread.join(self.settings.shutdown_timeout_s + 2)

    # -- the event loop thread -------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            logger.exception("the RESP server loop stopped unexpectedly")
            self.failed.set()
        finally:
            self._ready.set()
            loop.close()
            if self.workers is not None:
                self.workers.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        assert self._socket is not None
        listener = self._socket
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        loop.add_reader(listener.fileno(), self._accept, listener)
        sweeper = loop.create_task(self._sweep())
        self._ready.set()
        await self._stop_requested.wait()
        self._stopping = True
        sweeper.cancel()
        loop.remove_reader(listener.fileno())
        listener.close()
        for client in list(self._clients):
            client.finish()  # no more commands; closed once its replies are sent
        if self._tasks:
            _, unfinished = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_timeout_s
            )
            for client in list(self._clients):
                client.transport.abort()  # replies it does not read: given up
            if unfinished:
                await asyncio.wait(unfinished, timeout=1.0)

    def _accept(self, listener: socket.socket) -> None:
        """Accept what is waiting; each connection gets a task, tracked from its first moment.

        (asyncio.start_server would do, but a connection it accepts just as it closes is
        neither served nor closed; here a connection is either accepted and tracked, or not.)
        """
        loop = asyncio.get_running_loop()
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as error:  # out of file descriptors, say: pause, then try again
                logger.warning("cannot accept a RESP connection: %s", error)
                loop.remove_reader(listener.fileno())
                loop.call_later(0.1, self._resume_accepting, listener)
                return
            if self.tls is not None and len(self._tasks) >= self.settings.max_connections:
                # Connections mid-handshake count too, or stalled handshakes would be
                # unbounded; there is no TLS yet to say "max number of clients" in.
                self._state.total_connections_received += 1
                self._state.rejected_connections += 1
                logger.warning("refused a TLS connection: %d are open", len(self._tasks))
                client.close()
                continue
            task = loop.create_task(self._serve_client(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if not self._stopping:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _serve_client(self, sock: socket.socket) -> None:
        """Hand the socket to a `_Client` and wait until it has closed."""
        loop = asyncio.get_running_loop()
        client = _Client(self, next(self._ids))
        try:
            if self.tls is None:
                await loop.connect_accepted_socket(lambda: client, sock=sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: client,
                    sock=sock,
                    ssl=self.tls,
                    ssl_handshake_timeout=self.settings.handshake_timeout_s,
                )
        except OSError as error:  # ssl.SSLError and a handshake timeout included
            if self.tls is not None:
                logger.info("TLS handshake failed: %s", error)
            sock.close()
            return
        await client.closed

    async def _sweep(self) -> None:
        """Close connections idle, or not reading their replies, for --resp-idle-timeout."""
        timeout = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for client in list(self._clients):
                client.expire(now - timeout)

    # -- what the connections call ----------------------------------------------------------

    def admit(self, client: _Client) -> bool:
        """Count a new connection in, or refuse it (False) past --resp-max-connections."""
        state = self._state
        state.total_connections_received += 1
        if self._stopping:
            return False
        if len(self._clients) >= self.settings.max_connections:
            state.rejected_connections += 1
            logger.warning(
                "refused %s: %d connections are open", client.peer, self.settings.max_connections
            )
            return False
        self._clients.add(client)
        state.connected_clients = len(self._clients)
        return True

    def leave(self, client: _Client) -> None:
        """Count a connection out."""
        self._clients.discard(client)
        self._state.connected_clients = len(self._clients)

    def answer(self, arguments: list[bytes], session: Session, peer: str) -> bytes | _ReplyStream:
        """Run one command; its reply, encoded for the session's protocol, or, for a long
        array (a long HISTORY), to be encoded as it is sent."""
        state = self._state
        with state.lock:  # counted before it runs, so an INFO counts itself, as before
            state.total_commands_processed += 1
        logged = access_logger.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if logged else 0.0
        data: bytes | _ReplyStream
        try:
            reply = execute(self.store, session, arguments)
            if isinstance(reply, list) and len(reply) > _STREAM_AFTER_ITEMS:
                data = _ReplyStream(reply, session.protocol, self.store.copies_on_read)
            else:
                data = encode(reply, session.protocol)
        except Exception:
            logger.exception("unexpected error running %s", _summary(arguments))
            data = encode(Error("ERR", "The server failed to answer; it logged why."))
        if logged:
            shown = data.head if isinstance(data, _ReplyStream) else data
            access_logger.debug(
                '%s "%s" %s %s %.1fms',
                peer,
                _summary(arguments),
                shown.split(b" ", 1)[0].split(CRLF, 1)[0][:16].decode("ascii", "replace"),
                "streamed" if isinstance(data, _ReplyStream) else len(data),
                (time.perf_counter() - started) * 1000,
            )
        return data


_STREAM_AFTER_ITEMS = 256
"""An array reply longer than this is encoded a piece at a time, as the client reads it."""
_PIECE_BYTES = 16 * 1024
"""About how much of a streamed reply is encoded at a time."""
_STREAM_HEADROOM = 96 * 1024
"""What a connection streaming a reply is charged for its write buffer, whatever it holds at
the moment: up to the transport's high-water mark (64 KiB) and a piece
(`ConnectionCharge`)."""
_WRITE_PER_ROUND = 64 * 1024
"""Bytes of streamed replies written to one connection before the loop serves the others:
a socket buffer takes megabytes, which would otherwise be encoded in one go."""


_BATCH_COMMANDS = 1024
"""The most commands one batch runs before the loop has the connection back: a stop, the
reply budget and the other connections get their turn between batches."""
_BATCH_REPLY_BYTES = 64 * 1024
"""A batch stops once its replies hold this much; the commands after them wait in the parser
(reading paused) until those replies are written, so one read of many large-reply commands
cannot pin more than about this, whatever the reply budget says afterwards: 16 KiB of
pipelined `GET k` is 2,300 commands and 2.3 MB of replies."""


class _ReplyStream:
    """An array reply encoded a piece at a time. It holds the reply's items meanwhile (a copy
    from Redis, or a snapshot that keeps the memory store's bytes alive past an overwrite):
    `held_bytes`, what the reply budget is charged, is what they take in memory besides what
    the store holds anyway."""

    def __init__(self, items: list[Reply], protocol: int, copies: bool) -> None:
        """`copies`: the values in `items` were made for this reply (`Store.copies_on_read`),
        so they are charged too; else they are the store's own, which it holds anyway."""
        self.items = items
        self.protocol = protocol
        self.head = b"*%d\r\n" % len(items)
        self.position = -1
        self.held_bytes = estimated_size(
            items, functools.partial(_size_in_memory, with_values=copies)
        )

    def next_piece(self) -> bytes | None:
        """The next piece of the encoded reply; None after the last."""
        if self.position < 0:
            self.position = 0
            return self.head
        items, protocol, position = self.items, self.protocol, self.position
        if position >= len(items):
            return None
        piece: list[bytes] = []
        size = 0
        while position < len(items) and size < _PIECE_BYTES:
            encoded = encode(items[position], protocol)
            piece.append(encoded)
            size += len(encoded)
            position += 1
        self.position = position
        return b"".join(piece)


def _size_in_memory(reply: Reply, *, with_values: bool = True) -> int:
    """What a reply's objects take, nested arrays included; without `with_values`, only
    what was made for the client besides the store's own values (bytes and strings): its
    arrays and numbers (the commands layer builds `[timestamp, value]` per HISTORY entry)."""
    if isinstance(reply, list):
        return sys.getsizeof(reply) + sum(
            _size_in_memory(item, with_values=with_values) for item in reply
        )
    if not with_values and isinstance(reply, bytes | str):
        return 0
    return sys.getsizeof(reply)


_Batch = tuple[list[bytes | _ReplyStream], ProtocolError | None, bool]
"""What running a connection's buffered commands gives: the replies, the protocol error that
ended them if any, and whether the batch was cut short with commands maybe still buffered."""


class _Client(asyncio.BufferedProtocol):
    """One connection: every command complete in what arrives is run, in order, and their
    replies are written together: at once on this thread, or (`server.workers`) when a worker
    has run them, reading paused until then.

    A client that stops reading its replies stops being read (`pause_writing`): what one
    connection can make the server hold is one batch's replies (a read is at most
    `_READ_BYTES`). A long array reply
    (`_ReplyStream`) is encoded as the client reads it: replies queue behind it in
    `outgoing`, nothing more is read meanwhile, and the next pieces are written as the
    transport drains, at most `_WRITE_PER_ROUND` bytes a turn of the loop. A batch stops at
    `_BATCH_COMMANDS` commands or `_BATCH_REPLY_BYTES` of replies (or when the server stops);
    the commands left in the parser run once its replies are written. What the write
    buffer and the queue hold is charged to the server's reply budget after each write, when
    it drains (`resume_writing`) and at each sweep; a connection it does not fit is closed.
    """

    def __init__(self, server: RespServer, client_id: int) -> None:
        self.server = server
        self.session = Session(client_id, server._state)
        self.parser = CommandParser(
            server.settings.limits, authenticated=self.session.access > Access.NONE
        )
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connection
        self.peer = "?"
        self.last_received = time.monotonic()
        self.stalled_since: float | None = None
        """When its replies stopped draining (the client stopped reading); None if they drain."""
        self.opened = self.last_received
        self.commands = 0
        self.errors = 0
        self.admitted = False
        self.running = False
        """A batch of its commands is on a worker: nothing else of it runs until it is done."""
        self.finishing = False
        """Close once every reply (the running batch's too) is written."""
        budget = server.reply_budget
        self.charge = None if budget is None else ConnectionCharge(budget, _STREAM_HEADROOM)
        """Its write buffer's and `outgoing`'s share of the reply budget; None: unbounded."""
        self.outgoing: deque[bytes | _ReplyStream] = deque()
        """Replies not yet written: a stream being written, and those after it."""
        self.outgoing_bytes = 0
        self.writing_paused = False
        self.pumping = False
        """Whether a turn of the loop is to write more of `outgoing`."""
        self.backlog = False
        """A batch was cut short: commands may wait in the parser, run once its replies are
        written (`_run_backlog`); nothing more is read meanwhile."""
        self.read_buffer = memoryview(bytearray(_READ_BYTES))
        """Where each read lands (`get_buffer`), at most `_READ_BYTES` at a time."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        address = transport.get_extra_info("peername")
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.admitted = self.server.admit(self)
        if not self.admitted:
            if not self.server.stopping:
                transport.write(encode(Error("ERR", "max number of clients reached")))
            transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        self.parser.feed(data)
        if not self.running:
            self._serve_parsed()

    def _serve_parsed(self) -> None:
        """Run the commands buffered so far: here, or on a worker from the first complete one.

        Commands are parsed one at a time as they are run, because AUTH lifts the bounds
        before AUTH for the commands after it in the same read. Under WORKERS the first one is
        parsed here (an incomplete read costs no hand-off), the rest on the worker, which
        alone touches the parser until it is done: reading is paused meanwhile."""
        try:
            first = self._next_command()
        except ProtocolError as error:
            self._reply([], error)
            return
        if first is None:
            return
        workers = self.server.workers
        if workers is None:
            self._finish_batch(self._run_from(first))
            return
        self.running = True
        self.transport.pause_reading()
        batch = asyncio.get_running_loop().run_in_executor(workers, self._run_from, first)
        batch.add_done_callback(self._batch_done)

    def _next_command(self) -> list[bytes] | None:
        """The next complete command buffered (empty ones skipped), or None."""
        while (arguments := self.parser.next_command()) is not None:
            if arguments:
                return arguments
        return None

    def _run_from(self, first: list[bytes]) -> _Batch:
        """Run `first`, then the commands complete after it, in order (on a worker under
        WORKERS), until none is left, QUIT, a protocol error, the server stopping, or the
        batch's bounds (_BATCH_COMMANDS, _BATCH_REPLY_BYTES)."""
        replies: list[bytes | _ReplyStream] = []
        held = 0
        arguments: list[bytes] | None = first
        try:
            while arguments is not None:
                reply = self.server.answer(arguments, self.session, self.peer)
                replies.append(reply)
                held += _held_bytes(reply)
                # AUTH lifts the bounds before AUTH for the commands after it.
                self.parser.authenticated = self.session.access > Access.NONE
                if self.session.closing:
                    break
                if (
                    self.server.stopping
                    or len(replies) >= _BATCH_COMMANDS
                    or held >= _BATCH_REPLY_BYTES
                ):
                    return replies, None, True
                arguments = self._next_command()
        except ProtocolError as error:
            return replies, error, False
        return replies, None, False

    def _batch_done(self, batch: asyncio.Future[_Batch]) -> None:
        self.running = False
        if self.transport.is_closing():  # aborted meanwhile (idle sweep, stop): nobody to tell
            return
        error = None if batch.cancelled() else batch.exception()
        if batch.cancelled() or error is not None:
            # Answering never raises (`answer` turns every error into a reply): a bug.
            logger.error("closing %s: its commands failed", self.peer, exc_info=error)
            self.transport.abort()
            return
        self._finish_batch(batch.result())
        if self.transport.is_closing():
            return
        if self.finishing:
            self.finish()
            return
        self._resume_reading()
        if not self.outgoing and not self.backlog:
            self._serve_parsed()  # what arrived while the batch ran

    def _finish_batch(self, batch: _Batch) -> None:
        """Write a batch's replies; if it was cut short, run what is left once they are
        written (at once, on the loop's next turn, if they went out)."""
        replies, error, cut = batch
        self._reply(replies, error)
        if not cut or self.finishing or self.transport.is_closing():
            return
        self.backlog = True
        self.transport.pause_reading()
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._run_backlog)

    def _run_backlog(self) -> None:
        """Run the commands a cut-short batch left in the parser, then read again."""
        self.backlog = False
        if self.running or self.finishing or self.transport.is_closing():
            return
        self._serve_parsed()
        self._resume_reading()

    def _reply(self, replies: list[bytes | _ReplyStream], error: ProtocolError | None) -> None:
        """Write a batch's replies (and the protocol error after them); close after QUIT or
        a protocol error."""
        answered = len(replies)
        if error is not None and not self.session.closing:
            logger.info("closing %s: protocol error: %s", self.peer, error)
            replies.append(encode(Error("ERR", f"Protocol error: {error}")))
            self.errors += 1
        self.commands += answered
        if self.outgoing or any(isinstance(reply, _ReplyStream) for reply in replies):
            self.queue(replies)
        elif replies:
            self.transport.write(b"".join(replies))  # type: ignore[arg-type]  # all bytes
            self.hold()
        if error is not None or self.session.closing:
            self.finish()

    def _resume_reading(self) -> None:
        """Read again, unless a batch runs, replies wait to be written, or it is closing."""
        if not (
            self.running
            or self.backlog
            or self.finishing
            or self.writing_paused
            or self.outgoing
            or self.transport.is_closing()
        ):
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close once the replies are out

    def pause_writing(self) -> None:
        self.stalled_since = time.monotonic()
        self.writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.stalled_since = None
        self.writing_paused = False
        if self.outgoing:
            self.write_more()
            return
        self.hold()
        self._resume_reading()

    def queue(self, replies: list[bytes | _ReplyStream]) -> None:
        """Write `replies` after those queued, streams a piece at a time; read nothing more
        until they are all written."""
        for reply in replies:
            self.outgoing.append(reply)
            self.outgoing_bytes += _held_bytes(reply)
        self.transport.pause_reading()
        self.write_more()

    def write_more(self) -> None:
        """Write what is queued, until the transport is full or this turn's bytes are
        written; then charge the budget, and go on next turn, when it drains, or close."""
        self.pumping = False
        if self.transport.is_closing():
            return
        outgoing = self.outgoing
        written = 0
        while outgoing and not self.writing_paused and written < _WRITE_PER_ROUND:
            following = outgoing[0]
            piece = following if isinstance(following, bytes) else following.next_piece()
            if piece is following or piece is None:
                outgoing.popleft()
                self.outgoing_bytes -= _held_bytes(following)
            if piece is None:
                continue
            self.transport.write(piece)  # may pause writing: the client is not keeping up
            written += len(piece)
        self.hold()
        if outgoing:
            if not self.writing_paused and not self.pumping and not self.transport.is_closing():
                self.pumping = True
                asyncio.get_running_loop().call_soon(self.write_more)
        elif self.finishing and not self.running:
            self.transport.close()
        elif self.backlog:
            self._run_backlog()
        else:
            self._resume_reading()

    def hold(self) -> None:
        """Charge the budget for what the write buffer and the queue hold now (giving back
        what was sent); close the connection, dropping its replies, if that does not fit."""
        charge = self.charge
        if charge is None or self.transport.is_closing():
            return
        buffered = self.transport.get_write_buffer_size()
        streaming = any(isinstance(reply, _ReplyStream) for reply in self.outgoing)
        if charge.settle(buffered, streaming=streaming, produced_from=self.outgoing_bytes):
            return
        logger.warning("%s", charge.refusal(self.peer, buffered + self.outgoing_bytes))
        self.outgoing.clear()  # now, not when the loop gets to connection_lost
        self.outgoing_bytes = 0
        self.transport.abort()

    def finish(self) -> None:
        """Read nothing more; close once every reply has been sent (and, with a batch on a
        worker, once its replies are written)."""
        self.finishing = True
        if not self.transport.is_closing():
            self.transport.pause_reading()
            if not self.outgoing and not self.running:
                self.transport.close()

    def expire(self, threshold: float) -> None:
        """Close it if it has been idle since before `threshold`, or its replies have not
        drained since then; what it has not read is dropped. A connection whose commands run,
        or whose replies are still being written, is busy, not idle: reading is paused then."""
        stalled = self.stalled_since is not None and self.stalled_since < threshold
        busy = self.running or self.backlog or bool(self.outgoing)
        idle = not busy and self.stalled_since is None and self.last_received < threshold
        if stalled or idle:
            logger.debug(
                "closing %s: idle for %g s", self.peer, self.server.settings.idle_timeout_s
            )
            self.transport.abort()
        elif self.charge is not None and self.charge.bytes:
            self.hold()  # what it read since gives its charge back

    def connection_lost(self, exc: Exception | None) -> None:
        self.outgoing.clear()
        self.outgoing_bytes = 0
        if self.charge is not None:
            self.charge.release()
        if self.admitted:
            self.server.leave(self)
            access_logger.info(
                "%s closed: %d command%s in %.1f s%s%s",
                self.peer,
                self.commands,
                "" if self.commands == 1 else "s",
                time.monotonic() - self.opened,
                ", after a protocol error" if self.errors else "",
                # The name of the token AUTH accepted, never the token.
                f" token={self.session.user}" if self.session.grant is not None else "",
            )
        if not self.closed.done():
            self.closed.set_result(None)


def _held_bytes(reply: bytes | _ReplyStream) -> int:
    """What a queued reply holds, for the reply budget."""
    return reply.held_bytes if isinstance(reply, _ReplyStream) else len(reply)


_SECRET_ARGUMENTS = frozenset({"AUTH"})
"""Commands whose arguments the log leaves out: AUTH's first one may be the token."""


def _summary(arguments: list[bytes]) -> str:
    """The command and its first argument (the key, usually) for the log; never a value or
    a token."""
    name = printable(arguments[0]).upper()
    if len(arguments) < 2 or name in _SECRET_ARGUMENTS:
        return name
    return f"{name} {printable(arguments[1])}"
