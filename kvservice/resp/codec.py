"""RESP on the wire, without sockets: replies to bytes, and bytes to commands.

`encode` writes a reply in RESP2, or in RESP3 where the two differ (nil, maps and pushes).
`CommandParser` is fed whatever bytes arrive and hands out every complete command in them
(arrays of bulk strings, or inline lines as typed into telnet), so a server can run all the
commands a client pipelined before it writes their replies together. It remembers where it is
inside a command, so a request that trickles in costs no rescans. Everything a client can
make it hold is bounded (`RequestLimits`), tighter still until the connection authenticates
(as Redis bounds it since CVE-2021-32675), and every declared count or length is judged
before anything of its size is allocated or awaited; malformed or oversized input raises
ProtocolError.

A read that holds only whole, well-formed commands within the limits (what clients send,
pipelined or not) is parsed by hiredis, redis-py's C reader, 25 times faster than Python
reads it; the Python reader here judges everything else (inline commands, a command split
across reads, malformed or oversized input), so what is accepted and every error are the same.
hiredis allocates an array as soon as it reads its declared count (`*2147483648` is 16 GiB of
list, and seconds of CPU to free), so a read that declares a count far past the limit in any
of RESP's aggregate types never reaches it.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

import hiredis

CRLF = b"\r\n"
INTEGER = re.compile(rb"-?[0-9]{1,12}")
_LENGTH = re.compile(rb"0|-?[1-9][0-9]{0,11}")
"""A count or length as Redis reads one (string2ll): no sign but `-`, no space, no leading
zero; more than 12 digits is refused unread."""
_PRINTABLE_CHARS = 64


@dataclass(frozen=True, slots=True)
class Status:
    """A simple string reply, `+OK`."""

    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply, `-CODE message`."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Push:
    """Data the server sends unasked (a keyspace notification) or that RESP3 marks as such (the
    subscribe family's confirmations): RESP3's push type, `>`; an array in RESP2."""

    items: list[Reply]


@dataclass(frozen=True, slots=True)
class Replies:
    """Several replies to one command, written one after the other: SUBSCRIBE confirms each
    channel on its own."""

    replies: list[Reply]


Reply: TypeAlias = (
    Status | Error | int | bytes | list["Reply"] | dict[bytes, "Reply"] | Push | Replies | None
)
"""A reply: None is nil, a list an array, a dict a map (a flat array in RESP2)."""

OK = Status("OK")


def encode(reply: Reply, protocol: int = 2) -> bytes:
    """The reply in RESP2, or in RESP3 where the two differ (nil, maps and pushes)."""
    if reply is None:
        return b"_\r\n" if protocol == 3 else b"$-1\r\n"
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, dict):
        pairs = [encode(item, protocol) for pair in reply.items() for item in pair]
        head = b"%%%d\r\n" % len(reply) if protocol == 3 else b"*%d\r\n" % len(pairs)
        return head + b"".join(pairs)
    if isinstance(reply, Status):
        return b"+" + _one_line(reply.text) + CRLF
    if isinstance(reply, Error):
        return b"-" + _one_line(f"{reply.code} {reply.message}") + CRLF
    if isinstance(reply, Push):
        head = b">%d\r\n" if protocol == 3 else b"*%d\r\n"
        return head % len(reply.items) + b"".join(encode(item, protocol) for item in reply.items)
    if isinstance(reply, Replies):
        return b"".join(encode(item, protocol) for item in reply.replies)
    return b"*%d\r\n" % len(reply) + b"".join(encode(item, protocol) for item in reply)


def _one_line(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def printable(argument: bytes) -> str:
    """An argument as it may appear in an error or the log: escaped, at most 64 characters."""
    return repr(argument[:_PRINTABLE_CHARS])[2:-1]


def encode_command(arguments: list[bytes]) -> bytes:
    """A command as clients send it: an array of bulk strings."""
    return b"*%d\r\n" % len(arguments) + b"".join(
        b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments
    )


# -- reading commands -------------------------------------------------------------------------


class ProtocolError(Exception):
    """Malformed or oversized input; answered with `-ERR Protocol error: ...`, then closed."""


@dataclass(frozen=True)
class RequestLimits:
    """What one command may hold."""

    max_argument_bytes: int = 2048
    """One bulk string."""
    max_request_bytes: int = 64 * 1024
    """All arguments of one command together; also the longest line (an inline command)."""
    max_arguments: int = 1024


UNAUTHENTICATED_MAX_ARGUMENTS = 10
UNAUTHENTICATED_MAX_ARGUMENT_BYTES = 16 * 1024
"""Redis's bounds on an array and on one bulk string from a client that has not authenticated
where that is required (CVE-2021-32675), here as there: AUTH and HELLO fit in them."""
_SHAPES = bytes(
    ord("*") if byte in b"*%~>|" else ord("0") if byte in b"0123456789" else ord(".")
    for byte in range(256)
)
"""A translation that leaves only the shape of what hiredis could read as a declared count:
each of RESP's aggregate types (arrays, maps, sets, pushes, attributes, whose count hiredis
allocates for) becomes `*`, each digit `0`, any other byte `.`."""


class CommandParser:
    """Commands out of a byte stream fed in pieces: `feed(data)`, then `next_command()` until
    it returns None (the rest has not arrived). Raises ProtocolError; after that the stream
    is beyond repair and the connection should close."""

    def __init__(self, limits: RequestLimits, *, authenticated: bool = True) -> None:
        self.limits = limits
        self.authenticated = authenticated
        """False while the connection must, and has yet to, authenticate: arrays and bulk
        strings are held to Redis's tighter bounds for such a client. The server sets it."""
        self._too_many_digits = b"*" + b"0" * (len(str(limits.max_arguments)) + 1)
        """In a read's `_SHAPES`, wherever it might declare a count with more digits than the
        limit has (even inside a bulk string): such a read goes to the Python reader, which
        refuses it before allocating anything, or finds it harmless."""
        self._buffer = bytearray()
        self._arguments: list[bytes] | None = None
        """The arguments of the array being read; None between commands."""
        self._arguments_left = 0
        self._bulk_size: int | None = None
        """The size of the bulk string whose `$` line has been read, until its data arrives."""
        self._request_bytes = 0
        self._parsed: deque[list[bytes]] = deque()
        """Whole commands hiredis read, in order, before anything in `_buffer`."""
        self._reader = hiredis.Reader()

    @property
    def midway(self) -> bool:
        """Whether part of a command has arrived and the rest has not."""
        return bool(self._buffer) or self._arguments is not None

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if (
            not self.midway
            and data[:1] == b"*"
            and self._too_many_digits not in data.translate(_SHAPES)
        ):
            commands = self._whole_commands(data)
            if commands is not None:
                self._parsed.extend(commands)
                return
        self._buffer += data

    def _whole_commands(self, data: bytes) -> list[list[bytes]] | None:
        """The commands in `data` as hiredis reads them, if it holds nothing but whole arrays
        of bulk strings within the limits, encoded exactly as `encode_command` would encode
        them (hiredis alone takes any two bytes after a bulk string for its CRLF); else None,
        for the Python reader to judge."""
        reader = self._reader
        reader.feed(data)
        max_arguments, max_argument_bytes = self._max_arguments(), self._max_argument_bytes()
        max_request_bytes = self.limits.max_request_bytes
        commands: list[list[bytes]] = []
        canonical: list[bytes] = []  # `data` again, as encode_command writes commands
        try:
            while (command := reader.gets()) is not False:
                canonical.append(b"*%d\r\n" % len(command))
                request_bytes = 0
                for argument in command:
                    size = len(argument)  # TypeError unless a bulk string (or an array)
                    if size > max_argument_bytes:
                        raise ValueError
                    request_bytes += size
                    canonical += (b"$%d\r\n" % size, argument, CRLF)
                if len(command) > max_arguments or request_bytes > max_request_bytes:
                    raise ValueError
                commands.append(command)
            whole = b"".join(canonical) == data  # else: not whole yet, or not canonical
        except (TypeError, ValueError, hiredis.ProtocolError):
            whole = False
        if not whole:
            self._reader = hiredis.Reader()
            return None
        return commands

    def next_command(self) -> list[bytes] | None:
        """The next complete command's arguments ([] for an empty line or array), or None."""
        if self._parsed:
            return self._parsed.popleft()
        if self._arguments is None:
            line = self._line()
            if line is None:
                return None
            if not line.startswith(b"*"):
                return self._inline(line)
            count = _length(line, "multibulk")
            self._check_count(count)
            if count <= 0:
                return []  # an empty command, which Redis ignores too
            self._arguments, self._arguments_left, self._request_bytes = [], count, 0
        while self._arguments_left:
            argument = self._bulk()
            if argument is None:
                return None
            self._arguments.append(argument)
            self._arguments_left -= 1
        arguments, self._arguments, self._request_bytes = self._arguments, None, 0
        return arguments

    def _line(self) -> bytes | None:
        """The next line, LF included, taken off the buffer; None until it has arrived."""
        end = self._buffer.find(b"\n", 0, self.limits.max_request_bytes + 1)
        if end < 0:
            if len(self._buffer) > self.limits.max_request_bytes:
                raise ProtocolError("too big inline request")
            return None
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def _inline(self, line: bytes) -> list[bytes]:
        """An inline command's arguments, held to the same bounds as an array's (before AUTH
        too: the line alone is bounded by the request limit, 64 KiB)."""
        arguments = line.split()  # as typed into telnet; no quoting
        self._check_count(len(arguments))
        for argument in arguments:
            self._check_size(len(argument))
        return arguments

    def _bulk(self) -> bytes | None:
        if self._bulk_size is None:
            line = self._line()
            if line is None:
                return None
            if not line.startswith(b"$"):
                raise ProtocolError(f"expected '$', got '{printable(line[:1])}'")
            size = _length(line, "bulk")
            self._check_size(size)
            self._request_bytes += size
            if self._request_bytes > self.limits.max_request_bytes:
                raise ProtocolError(f"request larger than {self.limits.max_request_bytes} bytes")
            self._bulk_size = size
        size = self._bulk_size
        if len(self._buffer) < size + 2:
            return None
        if self._buffer[size : size + 2] != CRLF:
            raise ProtocolError("bulk string not followed by CRLF")
        data = bytes(self._buffer[:size])
        del self._buffer[: size + 2]
        self._bulk_size = None
        return data

    def _max_arguments(self) -> int:
        limit = self.limits.max_arguments
        return limit if self.authenticated else min(limit, UNAUTHENTICATED_MAX_ARGUMENTS)

    def _max_argument_bytes(self) -> int:
        limit = self.limits.max_argument_bytes
        return limit if self.authenticated else min(limit, UNAUTHENTICATED_MAX_ARGUMENT_BYTES)

    def _check_count(self, count: int) -> None:
        """Refuse an array's declared count (or an inline command's count) past the limit, in
        Redis's words and ours."""
        limit = self.limits.max_arguments
        if count > limit:
            raise ProtocolError(f"invalid multibulk length {count} (at most {limit} arguments)")
        if count > self._max_arguments():
            raise ProtocolError(
                f"unauthenticated multibulk length {count} "
                f"(at most {UNAUTHENTICATED_MAX_ARGUMENTS} arguments before AUTH)"
            )

    def _check_size(self, size: int) -> None:
        """Refuse a bulk string's declared length (or an inline argument's) out of bounds, in
        Redis's words and ours."""
        limit = self.limits.max_argument_bytes
        if not 0 <= size <= limit:
            raise ProtocolError(f"invalid bulk length {size} (arguments are at most {limit} bytes)")
        if size > self._max_argument_bytes():
            raise ProtocolError(
                f"unauthenticated bulk length {size} (arguments are at most "
                f"{UNAUTHENTICATED_MAX_ARGUMENT_BYTES} bytes before AUTH)"
            )


def _length(line: bytes, what: str) -> int:
    """The number in a `*3` or `$5` line, which must end in CRLF."""
    digits = line[1:-2]
    if not line.endswith(CRLF) or not _LENGTH.fullmatch(digits):
        raise ProtocolError(f"invalid {what} length '{printable(digits)}'")
    return int(digits)
