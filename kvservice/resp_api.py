"""The Redis protocol adapter: the same store over RESP, for redis-cli, redis-py and friends.

Parses RESP2 commands (arrays of bulk strings, or inline lines), calls the store once and
answers in RESP2, or in RESP3 after `HELLO 3` (which redis-py 8 sends by default; it differs
only in how nil and the HELLO map are written). Domain errors become replies through one
table (`STORE_ERRORS`), like http_api's PROBLEMS: an error reply carrying the same text
the HTTP problem's `detail` has, or nil where Redis answers nil (GET of an empty key, SET NX
on a taken key). Commands are one table (`COMMANDS`); HELLO, COMMAND, CLIENT and SELECT
answer just enough for real clients to connect.

`RespServer` is a `lifecycle.Runnable`: asyncio streams on one dedicated thread, so idle
connections cost a socket and a small buffer, not a thread. Store calls are quick and run
on that thread, between reads. Everything a client can make it hold is bounded: connections,
idle time, the size of one request, the number of its arguments; malformed input is answered
with `-ERR Protocol error: ...` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TypeAlias

from kvservice.store import (
    MATCH_ANY,
    InvalidKey,
    KeyExists,
    KeyNotFound,
    Precondition,
    PreconditionFailed,
    Store,
    StoreError,
    StoreFull,
    ValueTooLarge,
    validate_key,
)

logger = logging.getLogger("kvservice.resp")
access_logger = logging.getLogger("kvservice.access")

CRLF = b"\r\n"
_INTEGER = re.compile(rb"-?[0-9]{1,12}")
_PRINTABLE_CHARS = 64
_ACCEPTS_PER_WAKEUP = 64


@dataclass(frozen=True)
class RespSettings:
    """Listening address and every limit the RESP transport enforces."""

    host: str = "127.0.0.1"
    port: int = 6379
    max_connections: int = 512
    idle_timeout_s: float = 300.0
    max_argument_bytes: int = 1024 + 1024
    """One bulk string; above the value limit, so the store answers slightly large values."""
    max_request_bytes: int = 64 * 1024
    """All arguments of one command together; also the longest inline command line."""
    max_arguments: int = 1024
    listen_backlog: int = 1024
    shutdown_timeout_s: float = 2.0


# -- replies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """A simple string reply, `+OK`."""

    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply, `-CODE message`."""

    code: str
    message: str


Reply: TypeAlias = Status | Error | int | bytes | list["Reply"] | dict[bytes, "Reply"] | None
"""A reply: None is nil, a list an array, a dict a map (a flat array in RESP2)."""

OK = Status("OK")
SUPPORTED_PROTOCOLS = (2, 3)
"""RESP versions HELLO accepts; redis-py 8 asks for 3 by default."""

STORE_ERRORS: dict[type[StoreError], str | None] = {
    InvalidKey: "ERR",
    ValueTooLarge: "ERR",
    StoreFull: "ERR",
    KeyNotFound: None,  # GET of a key without a value
    KeyExists: None,  # SET NX on a key holding a value
    PreconditionFailed: None,  # SET XX on a key holding none
}
"""Each domain error's reply: an error with this code and the store's message, or nil (None)."""


def encode(reply: Reply, protocol: int = 2) -> bytes:
    """The reply in RESP2, or in RESP3 where the two differ (nil and maps)."""
    if reply is None:
        return b"_\r\n" if protocol == 3 else b"$-1\r\n"
    if isinstance(reply, dict):
        pairs = [encode(item, protocol) for pair in reply.items() for item in pair]
        head = b"%%%d\r\n" % len(reply) if protocol == 3 else b"*%d\r\n" % len(pairs)
        return head + b"".join(pairs)
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, Status):
        return b"+" + _one_line(reply.text) + CRLF
    if isinstance(reply, Error):
        return b"-" + _one_line(f"{reply.code} {reply.message}") + CRLF
    return b"*%d\r\n" % len(reply) + b"".join(encode(item, protocol) for item in reply)


def _one_line(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def _printable(argument: bytes) -> str:
    """An argument as it may appear in an error or the log: escaped, at most 64 characters."""
    return repr(argument[:_PRINTABLE_CHARS])[2:-1]


# -- commands -------------------------------------------------------------------------------


@dataclass
class Session:
    """What one connection remembers between commands."""

    id: int
    name: bytes | None = None
    closing: bool = False
    """Set by QUIT: the connection closes once the reply is sent."""
    protocol: int = 2
    """2 or 3, as chosen with HELLO; RESP3 is RESP2 with its own nil and maps."""


Handler = Callable[[Store, Session, list[bytes]], Reply]


@dataclass(frozen=True)
class Command:
    """A command's handler and how many arguments it takes (max None: any number)."""

    handler: Handler
    min_args: int
    max_args: int | None


def execute(store: Store, session: Session, arguments: Sequence[bytes]) -> Reply:
    """Run one command (name and arguments) against the store; never raises a StoreError."""
    name, *args = arguments
    command = COMMANDS.get(name.upper())
    if command is None:
        return Error("ERR", f"unknown command '{_printable(name)}'")
    return _call(command, _printable(name).lower(), store, session, args)


def _call(command: Command, label: str, store: Store, session: Session, args: list[bytes]) -> Reply:
    if len(args) < command.min_args or (
        command.max_args is not None and len(args) > command.max_args
    ):
        return Error("ERR", f"wrong number of arguments for '{label}' command")
    try:
        return command.handler(store, session, args)
    except StoreError as error:
        code = STORE_ERRORS[type(error)]
        return None if code is None else Error(code, str(error))


def _subcommands(command: str, table: dict[bytes, Command]) -> Handler:
    """A handler that dispatches on its first argument through `table`."""

    def dispatch(store: Store, session: Session, args: list[bytes]) -> Reply:
        name = args[0].upper() if args else b""
        subcommand = table.get(name)
        if subcommand is None:
            return Error("ERR", f"unknown subcommand '{_printable(name)}'. Try {command} HELP.")
        label = f"{command}|{_printable(name)}".lower()
        return _call(subcommand, label, store, session, args[1:])

    return dispatch


def _key(argument: bytes) -> str:
    """A key as the store takes it: one character per byte, so errors name byte positions
    the way HTTP does for a percent-encoded path."""
    key = argument.decode("latin-1")
    validate_key(key)
    return key


def _ping(store: Store, session: Session, args: list[bytes]) -> Reply:
    return args[0] if args else Status("PONG")


def _get(store: Store, session: Session, args: list[bytes]) -> Reply:
    return store.get(_key(args[0])).data


_ONLY_IF_SET = Precondition(if_match=frozenset({MATCH_ANY}))

SET_MODES: dict[frozenset[bytes], Callable[[Store, str, bytes], object]] = {
    frozenset(): lambda store, key, value: store.put(key, value),
    frozenset({b"NX"}): lambda store, key, value: store.create(key, value),
    frozenset({b"XX"}): lambda store, key, value: store.put(key, value, None, _ONLY_IF_SET),
}
"""SET's options -> the store call: plain, create-only (NX) or only-if-set (XX)."""


def _set(store: Store, session: Session, args: list[bytes]) -> Reply:
    key, value, *options = args
    write = SET_MODES.get(frozenset(option.upper() for option in options))
    if write is None:
        return Error("ERR", "syntax error; SET takes NX or XX, and no expiry")
    write(store, _key(key), value)
    return OK


def _delete(store: Store, session: Session, args: list[bytes]) -> Reply:
    deleted = 0
    for key in [_key(arg) for arg in args]:  # all keys are valid before anything is deleted
        with contextlib.suppress(KeyNotFound):
            store.delete(key)
            deleted += 1
    return deleted


def _exists(store: Store, session: Session, args: list[bytes]) -> Reply:
    found = 0
    for key in [_key(arg) for arg in args]:
        with contextlib.suppress(KeyNotFound):
            store.get(key)
            found += 1
    return found


def _history(store: Store, session: Session, args: list[bytes]) -> Reply:
    return [[entry.timestamp_ms, entry.data] for entry in store.history(_key(args[0]))]


def _quit(store: Store, session: Session, args: list[bytes]) -> Reply:
    session.closing = True
    return OK


def _hello(store: Store, session: Session, args: list[bytes]) -> Reply:
    if args:
        if not _INTEGER.fullmatch(args[0]):
            return Error("ERR", "Protocol version is not an integer or out of range")
        if int(args[0]) not in SUPPORTED_PROTOCOLS:
            return Error("NOPROTO", "unsupported protocol version")
        options = args[1:]
        if len(options) == 2 and options[0].upper() == b"SETNAME":
            named = _client_setname(store, session, options[1:])
            if named != OK:
                return named
        elif options:
            return Error("ERR", "syntax error; HELLO takes a version and SETNAME (no AUTH)")
        session.protocol = int(args[0])
    return {
        b"server": b"kvservice",
        b"version": _VERSION.encode(),
        b"proto": session.protocol,
        b"id": session.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


def _client_setname(store: Store, session: Session, args: list[bytes]) -> Reply:
    if any(byte <= 0x20 or byte >= 0x7F for byte in args[0]):
        return Error("ERR", "Client names cannot contain spaces, newlines or special characters.")
    session.name = args[0] or None
    return OK


CLIENT_SUBCOMMANDS: dict[bytes, Command] = {
    b"SETNAME": Command(_client_setname, 1, 1),
    b"GETNAME": Command(lambda store, session, args: session.name, 0, 0),
    b"SETINFO": Command(lambda store, session, args: OK, 2, 2),
    b"ID": Command(lambda store, session, args: session.id, 0, 0),
}

COMMAND_SUBCOMMANDS: dict[bytes, Command] = {
    # No command metadata: clients (redis-cli hints, redis-py) do without it.
    b"": Command(lambda store, session, args: [], 0, 0),
    b"DOCS": Command(lambda store, session, args: [], 0, None),
    b"INFO": Command(lambda store, session, args: [None for _ in args], 0, None),
    b"COUNT": Command(lambda store, session, args: len(COMMANDS), 0, 0),
    b"LIST": Command(lambda store, session, args: [name.lower() for name in COMMANDS], 0, 0),
}


def _select(store: Store, session: Session, args: list[bytes]) -> Reply:
    if not _INTEGER.fullmatch(args[0]):
        return Error("ERR", "value is not an integer or out of range")
    if int(args[0]) != 0:
        return Error("ERR", "DB index is out of range; kvservice has only database 0")
    return OK


COMMANDS: dict[bytes, Command] = {
    b"PING": Command(_ping, 0, 1),
    b"GET": Command(_get, 1, 1),
    b"SET": Command(_set, 2, None),
    b"DEL": Command(_delete, 1, None),
    b"EXISTS": Command(_exists, 1, None),
    b"HISTORY": Command(_history, 1, 1),
    b"QUIT": Command(_quit, 0, None),
    b"HELLO": Command(_hello, 0, None),
    b"COMMAND": Command(_subcommands("COMMAND", COMMAND_SUBCOMMANDS), 0, None),
    b"CLIENT": Command(_subcommands("CLIENT", CLIENT_SUBCOMMANDS), 1, None),
    b"SELECT": Command(_select, 1, 1),
}
"""Every command by its upper-case name."""


def _package_version() -> str:
    try:
        return metadata.version("kvservice")
    except metadata.PackageNotFoundError:
        return "unknown"


_VERSION = _package_version()


# -- reading requests -----------------------------------------------------------------------


class ProtocolError(Exception):
    """Malformed or oversized input; answered with `-ERR Protocol error: ...`, then closed."""


async def read_command(reader: asyncio.StreamReader, settings: RespSettings) -> list[bytes] | None:
    """The next command's arguments ([] for an empty line or array); None when input ends.

    The reader's `limit` must be `settings.max_request_bytes`: it bounds every line.
    """
    line = await _read_line(reader)
    if line is None:
        return None
    if line.startswith(b"*"):
        return await _read_array(reader, line, settings)
    arguments = line.split()  # an inline command, as typed into telnet; no quoting
    if len(arguments) > settings.max_arguments:
        raise ProtocolError(f"too many arguments (at most {settings.max_arguments})")
    return arguments


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None  # the client went away, perhaps mid-command: nothing to answer
    except asyncio.LimitOverrunError as error:
        raise ProtocolError("too big inline request") from error


async def _read_array(
    reader: asyncio.StreamReader, header: bytes, settings: RespSettings
) -> list[bytes] | None:
    count = _length(header, "multibulk")
    if count > settings.max_arguments:
        raise ProtocolError(
            f"invalid multibulk length {count} (at most {settings.max_arguments} arguments)"
        )
    arguments: list[bytes] = []
    total = 0
    for _ in range(count):  # a count <= 0 is an empty command, which Redis ignores too
        line = await _read_line(reader)
        if line is None:
            return None
        if not line.startswith(b"$"):
            raise ProtocolError(f"expected '$', got '{_printable(line[:1])}'")
        size = _length(line, "bulk")
        if not 0 <= size <= settings.max_argument_bytes:
            raise ProtocolError(
                f"invalid bulk length {size} (arguments are at most "
                f"{settings.max_argument_bytes} bytes)"
            )
        total += size
        if total > settings.max_request_bytes:
            raise ProtocolError(f"request larger than {settings.max_request_bytes} bytes")
        try:
            data = await reader.readexactly(size + 2)
        except asyncio.IncompleteReadError:
            return None
        if not data.endswith(CRLF):
            raise ProtocolError("bulk string not followed by CRLF")
        arguments.append(data[:-2])
    return arguments


def _length(line: bytes, what: str) -> int:
    """The number in a `*3` or `$5` line, which must end in CRLF."""
    digits = line[1:-2]
    if not line.endswith(CRLF) or not _INTEGER.fullmatch(digits):
        raise ProtocolError(f"invalid {what} length '{_printable(digits)}'")
    return int(digits)


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
        self._bound_port = int(self._socket.getsockname()[1])
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
            reader, writer = await asyncio.open_connection(
                sock=client, limit=self.settings.max_request_bytes
            )
        except OSError:
            client.close()
            return
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        try:
            if self._stopping:
                return
            if len(self._connections) >= self.settings.max_connections:
                logger.warning(
                    "refused %s: %d connections are open", peer, self.settings.max_connections
                )
                await self._send(writer, encode(Error("ERR", "max number of clients reached")))
                return
            connection = _Connection(Session(next(self._ids)), reader, writer.transport)
            self._connections[task] = connection
            try:
                await self._converse(reader, writer, connection, peer)
            finally:
                del self._connections[task]
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
        """Read, run and answer commands until the client leaves, idles or misbehaves."""
        settings = self.settings
        while not self._stopping:
            connection.reading = True
            try:
                async with asyncio.timeout(settings.idle_timeout_s):
                    arguments = await read_command(reader, settings)
            except TimeoutError:
                logger.debug("closing %s: idle for %g s", peer, settings.idle_timeout_s)
                return
            except ProtocolError as error:
                logger.info("closing %s: protocol error: %s", peer, error)
                await self._send(writer, encode(Error("ERR", f"Protocol error: {error}")))
                return
            finally:
                connection.reading = False
            if arguments is None:
                return
            if not arguments:
                continue
            data = self._answer(arguments, connection.session, peer)
            await self._send(writer, data)
            if connection.session.closing:
                return

    def _answer(self, arguments: list[bytes], session: Session, peer: str) -> bytes:
        started = time.perf_counter()
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
    name = _printable(arguments[0]).upper()
    return f"{name} {_printable(arguments[1])}" if len(arguments) > 1 else name


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
