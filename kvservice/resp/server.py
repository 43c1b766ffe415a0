"""The RESP transport's server: asyncio on one dedicated thread, over any `Store`.

`RespServer` is a `lifecycle.Runnable`. Idle connections cost a socket and a small buffer, not
a thread. Each read is fed to the connection's `codec.CommandParser`; every complete command
in it is run (store calls are quick and run on this thread) and their replies are written
together, so a client that pipelines gets one write back, not one per command. Everything a
client can make it hold is bounded: connections, idle time, the size of one request, the
number of its arguments; malformed input is answered with `-ERR Protocol error: ...` and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass

from kvservice.resp.codec import (
    CRLF,
    CommandParser,
    Error,
    ProtocolError,
    RequestLimits,
    encode,
    printable,
)
from kvservice.resp.commands import ServerState, Session, execute
from kvservice.store import Store

logger = logging.getLogger("kvservice.resp")
access_logger = logging.getLogger("kvservice.access")

_ACCEPTS_PER_WAKEUP = 64
_RECEIVE_BYTES = 64 * 1024


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

    @property
    def limits(self) -> RequestLimits:
        """What one command may hold, for the parser."""
        return RequestLimits(self.max_argument_bytes, self.max_request_bytes, self.max_arguments)


# -- the server -----------------------------------------------------------------------------


@dataclass
class _Connection:
    session: Session
    reader: asyncio.StreamReader
    transport: asyncio.BaseTransport
    reading: bool = False
    """Waiting for (the rest of) a command: nothing in flight, so stop may end it."""


class RespServer:
    """The RESP transport over `store`, serving on a background thread until `stop()`."""

    def __init__(self, store: Store, settings: RespSettings) -> None:
        self.store = store
        self.settings = settings
        self.failed = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._state = ServerState(max_clients=settings.max_connections)
        self._bound_port = settings.port

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._bound_port

    @property
    def url(self) -> str:
        """The address it serves, as a redis:// URL."""
        host = self.settings.host
        return f"redis://{f'[{host}]' if ':' in host else host}:{self.port}"

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

    async def _serve(self) -> None:
        assert self._socket is not None
        listener = self._socket
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        loop.add_reader(listener.fileno(), self._accept, listener)
        self._ready.set()
        await self._stop_requested.wait()
        self._stopping = True
        loop.remove_reader(listener.fileno())
        listener.close()
        for connection in self._connections.values():
            if connection.reading:
                # Its read ends as if the client had left; nothing more may arrive after that.
                if isinstance(connection.transport, asyncio.ReadTransport):
                    connection.transport.pause_reading()
                connection.reader.feed_eof()
        if self._tasks:
            _, unfinished = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_timeout_s
            )
            for task in unfinished:
                task.cancel()
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
            task = loop.create_task(self._serve_client(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if not self._stopping:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _serve_client(self, client: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=client)
        except OSError:
            client.close()
            return
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        try:
            if self._stopping:
                return
            state = self._state
            state.total_connections_received += 1
            if len(self._connections) >= self.settings.max_connections:
                state.rejected_connections += 1
                logger.warning(
                    "refused %s: %d connections are open", peer, self.settings.max_connections
                )
                await self._send(writer, encode(Error("ERR", "max number of clients reached")))
                return
            connection = _Connection(Session(next(self._ids), state), reader, writer.transport)
            self._connections[task] = connection
            state.connected_clients = len(self._connections)
            try:
                await self._converse(reader, writer, connection, peer)
            finally:
                del self._connections[task]
                state.connected_clients = len(self._connections)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing left to tell it
        except asyncio.CancelledError:
            pass  # stop() gave up waiting for its reply to drain; the task ends here anyway
        except Exception:
            logger.exception("unexpected error on the connection from %s", peer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        peer: str,
    ) -> None:
        """Read, run and answer commands until the client leaves, idles or misbehaves.

        Every command complete in what has arrived runs before the replies are written, in
        one write: pipelining costs the client one round trip, not one per command.
        """
        settings = self.settings
        parser = CommandParser(settings.limits)
        session = connection.session
        while not self._stopping:
            replies: list[bytes] = []
            broken = False
            try:
                while not session.closing and (arguments := parser.next_command()) is not None:
                    if arguments:
                        replies.append(self._answer(arguments, session, peer))
            except ProtocolError as error:
                logger.info("closing %s: protocol error: %s", peer, error)
                replies.append(encode(Error("ERR", f"Protocol error: {error}")))
                broken = True
            if replies:
                await self._send(writer, b"".join(replies))
            if broken or session.closing:
                return
            connection.reading = True
            try:
                async with asyncio.timeout(settings.idle_timeout_s):
                    data = await reader.read(_RECEIVE_BYTES)
            except TimeoutError:
                logger.debug("closing %s: idle for %g s", peer, settings.idle_timeout_s)
                return
            finally:
                connection.reading = False
            if not data:
                return  # the client went away, perhaps mid-command: nothing to answer
            parser.feed(data)

    def _answer(self, arguments: list[bytes], session: Session, peer: str) -> bytes:
        started = time.perf_counter()
        self._state.total_commands_processed += 1
        try:
            data = encode(execute(self.store, session, arguments), session.protocol)
        except Exception:
            logger.exception("unexpected error running %s", _summary(arguments))
            data = encode(Error("ERR", "The server failed to answer; it logged why."))
        access_logger.info(
            '%s "%s" %s %d %.1fms',
            peer,
            _summary(arguments),
            data.split(b" ", 1)[0].split(CRLF, 1)[0][:16].decode("ascii", "replace"),
            len(data),
            (time.perf_counter() - started) * 1000,
        )
        return data

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.settings.idle_timeout_s):
            await writer.drain()


def _summary(arguments: list[bytes]) -> str:
    """The command and its first argument (the key, usually) for the log; never a value."""
    name = printable(arguments[0]).upper()
    return f"{name} {printable(arguments[1])}" if len(arguments) > 1 else name


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
