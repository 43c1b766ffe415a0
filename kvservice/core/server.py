"""The core's server: asyncio on one dedicated thread, accepting connections for a transport.

`ConnectionServer` is a `lifecycle.Runnable`. Idle connections cost a socket and a small
buffer, not a thread. It accepts up to `_ACCEPTS_PER_WAKEUP` connections a turn of the loop;
each is a `connection.Connection` that the transport's protocol code plugs into. What a client
can make it hold is bounded: connections (`max_connections`; one past it is told the
transport's `refusal` and closed), idle time, the time a request takes to arrive, the replies
it has not read (the process's `ReplyBudget`). With TLS, asyncio does each handshake without
blocking the loop, within `handshake_timeout_s`; connections still in their handshake count
against the cap, and one past it is closed at once (there is no TLS yet to say why in), or,
for the first `tls_refusals` past it, refused once its handshake is done (HTTP's 503).
Where a transport's `Work` runs is the execution policy's (`kvservice.execution`): on this
thread for a store that never blocks; for one that may, on a pool of `workers` threads, so no
client waits behind another client's store call. `stop()` drains: nothing more is accepted,
work in flight finishes, a request that has started arriving may arrive and be answered,
replies are written for up to `shutdown_timeout_s`, then every connection is closed.
Connections woken from other threads (a change feed's watchers) are gathered and woken by
one hop onto the loop, however many a change wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from kvservice.core.connection import Connection
from kvservice.core.protocol import Transport
from kvservice.execution import INLINE_POLICY, Execution, ExecutionPolicy, StoreCalls
from kvservice.reply_budget import ReplyBudget

_ACCEPTS_PER_WAKEUP = 64
_ACCEPT_RETRY_S = 0.1
"""How long accepting pauses after the system refused an accept (out of file descriptors)."""
_TLS_HANDSHAKE_RECORD = b"\x16"
"""The first byte of every TLS ClientHello (a handshake record)."""
_LEAST_TIMEOUT_S = 0.001
_READ_IN_THE_CLEAR = 64 * 1024


@dataclass(frozen=True)
class ConnectionSettings:
    """The listening address and every bound the core enforces for one transport."""

    host: str
    port: int
    max_connections: int
    idle_timeout_s: float
    listen_backlog: int
    request_timeout_s: float | None = None
    """How long a request may take to arrive from its first byte; None: the idle timeout
    applies throughout (RESP)."""
    shutdown_timeout_s: float = 2.0
    handshake_timeout_s: float = 10.0
    """How long a TLS handshake may take; a client that stalls one is then dropped."""
    workers: int = 32
    """Threads that run a transport's work when the execution policy says WORKERS."""
    tls_refusals: int = 0
    """With TLS, how many connections past the cap are let through their handshake (within
    `handshake_timeout_s`) to be told the transport's `refusal`, as HTTP's 503 is; past
    those, and with 0, one is closed at once, without a word."""
    read_bytes: int = 16 * 1024
    """The most one read takes from a connection, so the most one turn of the loop runs for
    it (asyncio's own reads take up to 256 KiB). Redis reads 16 KiB too (PROTO_IOBUF_LEN)."""


def _settle_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ConnectionFigures(Protocol):
    """The counts the core keeps up to date, for INFO and the metrics (the names are Redis's
    INFO fields; RESP's `ServerState` is one)."""

    connected_clients: int
    total_connections_received: int
    rejected_connections: int


@dataclass
class Counts:
    """`ConnectionFigures` of their own, for a transport that keeps no others."""

    connected_clients: int = 0
    total_connections_received: int = 0
    rejected_connections: int = 0


class ConnectionServer:
    """A transport's connections on a background thread until `stop()`."""

    def __init__(
        self,
        transport: Transport,
        settings: ConnectionSettings,
        *,
        tls: ssl.SSLContext | None = None,
        execution: ExecutionPolicy = INLINE_POLICY,
        reply_budget: ReplyBudget | None = None,
        figures: ConnectionFigures | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.tls = tls
        """Serve TLS with this context (`kvservice.tls`); None: plain."""
        self.reply_budget = reply_budget
        """What connections' unsent replies are charged to, shared with the other transports;
        None: unbounded but for the idle timeout."""
        self.figures: ConnectionFigures = Counts() if figures is None else figures
        self.clock = clock
        self.workers: ThreadPoolExecutor | None = None
        """Where work the policy sends to workers runs; None: everything on the loop's thread."""
        self.execution = execution
        if execution.needs_workers:
            self.workers = ThreadPoolExecutor(
                settings.workers, thread_name_prefix=f"{transport.name.lower()}-worker"
            )
        self.failed = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._connections: set[Connection] = set()
        """Admitted connections, open."""
        self._tasks: set[asyncio.Task[None]] = set()
        """One per accepted socket, until it closes: handshaking, refused or admitted."""
        self._ids = itertools.count(1)
        self._bound_port = settings.port
        self.read_buffer = memoryview(bytearray(settings.read_bytes))
        """Where every connection's reads land (`Connection.get_buffer`), each copied out
        before the next: one buffer for the loop's one thread, not one per connection."""
        self._woken: set[Connection] = set()
        """Connections woken (`Connection.wake`, from any thread) since the loop last ran
        their wakes: one hop onto the loop serves them all, so a change a thousand watchers
        follow costs one wake-up of the loop, not a thousand."""
        self._woken_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._bound_port

    @property
    def stopping(self) -> bool:
        """Whether it is draining: nothing new is read, work stops between requests."""
        return self._stopping

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
        self._bound_port = int(self._socket.getsockname()[1])
        name = self.transport.name
        self._thread = threading.Thread(target=self._run, name=f"{name.lower()}-serve", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.failed.is_set():
            self._socket.close()
            raise OSError(f"{host}:{port}: the {name} server failed to start; it logged why")

    def stop(self) -> None:
        """Stop accepting, finish work in flight, close every connection; a few seconds."""
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
            self.transport.logger.exception(
                "the %s server loop stopped unexpectedly", self.transport.name
            )
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
        for connection in list(self._connections):
            connection.drain()  # closed once its replies (and a request arriving) are sent
        if self._tasks:
            _, unfinished = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_timeout_s
            )
            for connection in list(self._connections):
                connection.transport.abort()  # replies it does not read: given up
            if unfinished:
                _, unfinished = await asyncio.wait(unfinished, timeout=1.0)
            for task in unfinished:
                task.cancel()  # a TLS handshake still under way: its socket is closed
            if unfinished:
                await asyncio.wait(unfinished, timeout=0.1)

    def _accept(self, listener: socket.socket) -> None:
        """Accept what is waiting; each connection gets a task, tracked from its first moment.

        (asyncio.start_server would do, but a connection it accepts just as it closes is
        neither served nor closed; here a connection is either accepted and tracked, or not.)
        """
        loop = asyncio.get_running_loop()
        logger = self.transport.logger
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as error:  # out of file descriptors, say: pause, then try again
                logger.warning("cannot accept a %s connection: %s", self.transport.name, error)
                loop.remove_reader(listener.fileno())
                loop.call_later(_ACCEPT_RETRY_S, self._resume_accepting, listener)
                return
            over_cap = self.tls is not None and len(self._tasks) >= self.settings.max_connections
            if over_cap and len(self._tasks) >= (
                self.settings.max_connections + self.settings.tls_refusals
            ):
                # Connections mid-handshake count too, or stalled handshakes would be
                # unbounded; there is no TLS yet to say "max number of clients" in.
                self.figures.total_connections_received += 1
                self.figures.rejected_connections += 1
                logger.warning("refused a TLS connection: %d are open", len(self._tasks))
                client.close()
                continue
            task = loop.create_task(self._serve_connection(client, over_cap))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if not self._stopping:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _serve_connection(self, sock: socket.socket, over_cap: bool = False) -> None:
        """Hand the socket to a `Connection` and wait until it has closed; `over_cap`: it is
        to be refused once its TLS handshake is done (`tls_refusals`)."""
        loop = asyncio.get_running_loop()
        connection = Connection(self, next(self._ids), over_cap=over_cap)
        try:
            if self.tls is None:
                await loop.connect_accepted_socket(lambda: connection, sock=sock)
            else:
                deadline = loop.time() + self.settings.handshake_timeout_s
                if not await self._speaks_tls(sock, deadline):
                    sock.close()
                    return
                await loop.connect_accepted_socket(
                    lambda: connection,
                    sock=sock,
                    ssl=self.tls,
                    ssl_handshake_timeout=max(deadline - loop.time(), _LEAST_TIMEOUT_S),
                )
        except OSError as error:  # ssl.SSLError and a handshake timeout included
            if self.tls is not None:
                self.transport.logger.info("TLS handshake failed: %s", error)
            sock.close()
            return
        except asyncio.CancelledError:  # the drain gave up on it
            sock.close()
            raise
        await connection.closed

    async def _speaks_tls(self, sock: socket.socket, deadline: float) -> bool:
        """Whether the client's first byte, awaited until `deadline`, opens a TLS handshake.
        One that speaks in the clear is told the transport's `in_the_clear`, in the clear
        (asyncio's failed handshake closes the socket before anything could be said)."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _settle_once, readable)
        try:
            await asyncio.wait_for(readable, max(deadline - loop.time(), _LEAST_TIMEOUT_S))
            first = sock.recv(1, socket.MSG_PEEK)
        except (TimeoutError, OSError) as error:
            self.transport.logger.info("TLS handshake failed: %s", error or "timed out")
            return False
        finally:
            loop.remove_reader(sock.fileno())
        if first == _TLS_HANDSHAKE_RECORD:
            return True
        if first:  # not b"": the client did not just leave
            self.transport.logger.info("TLS handshake failed: the client spoke in the clear")
            with contextlib.suppress(OSError):
                # Read what it sent first: closing on unread bytes resets the connection,
                # and a reset can lose the words before they are read.
                sock.recv(_READ_IN_THE_CLEAR)
                sock.send(self.transport.in_the_clear)  # a few bytes, into an empty buffer
        return False

    async def _sweep(self) -> None:
        """Expire connections: idle, not reading their replies, or slow to send a request."""
        settings = self.settings
        timeouts = [settings.idle_timeout_s]
        if settings.request_timeout_s is not None:
            timeouts.append(settings.request_timeout_s)
        while True:
            await asyncio.sleep(min(1.0, min(timeouts) / 4))
            now = self.clock()
            for connection in list(self._connections):
                connection.expire(now)

    # -- what the connections call ----------------------------------------------------------

    def wake(self, connection: Connection) -> None:
        """Have the loop run `connection`'s wake soon; thread-safe (see `_woken`)."""
        with self._woken_lock:
            first = not self._woken
            self._woken.add(connection)
        if first:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to wake
                connection.loop.call_soon_threadsafe(self._run_wakes)

    def _run_wakes(self) -> None:
        with self._woken_lock:
            woken, self._woken = self._woken, set()
        for connection in woken:
            connection.woken()

    def runs_inline(self, calls: StoreCalls) -> bool:
        """Whether work of kind `calls` runs on the loop's thread (the execution policy)."""
        return self.workers is None or self.execution.where(calls) is Execution.INLINE

    def admit(self, connection: Connection, over_cap: bool = False) -> bool:
        """Count a new connection in, or refuse it (False) past `max_connections` (or when it
        was past them, counting handshakes, as it was accepted: `over_cap`)."""
        figures = self.figures
        figures.total_connections_received += 1
        if self._stopping:
            return False
        if over_cap or len(self._connections) >= self.settings.max_connections:
            figures.rejected_connections += 1
            self.transport.logger.warning(
                "refused %s: %d connections are open",
                connection.peer,
                self.settings.max_connections,
            )
            return False
        self._connections.add(connection)
        figures.connected_clients = len(self._connections)
        return True

    def leave(self, connection: Connection) -> None:
        """Count a connection out."""
        self._connections.discard(connection)
        self.figures.connected_clients = len(self._connections)
