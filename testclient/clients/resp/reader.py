"""RESP2 on the wire, for the test client: the reply types, a command's encoding, and a
reader of one reply from a buffered stream, every length and count bounded before it is read.

Written here rather than taken from redis-py because redis-py cannot say what came back: it
folds the status `+OK` and a bulk string "OK" into the same value, and nil and a missing reply
into None, so a server answering SET with the wrong reply type would pass. The checks must see
the reply type on the wire (see `commands.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, TypeAlias

MAX_LINE_BYTES = 64 * 1024
MAX_BULK_BYTES = 1024 * 1024
MAX_ARRAY_ITEMS = 1_000_000
MAX_DEPTH = 4
INTEGER = re.compile(rb"-?[0-9]{1,19}")


@dataclass(frozen=True)
class Status:
    """A simple string reply (`+OK`)."""

    text: str


@dataclass(frozen=True)
class ErrorReply:
    """An error reply (`-ERR ...`), without the dash."""

    text: str


RespValue: TypeAlias = Status | ErrorReply | int | bytes | list["RespValue"] | None
"""A decoded RESP2 reply: None is nil, a list an array."""


class MalformedReply(Exception):
    """The bytes that came back are not RESP2."""


class ConnectionClosed(Exception):
    """The server closed the connection before the reply was complete."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        self.received = received
        """The start of what did come back, if anything."""


def encode_command(arguments: Sequence[bytes]) -> bytes:
    """A command as a RESP2 array of bulk strings."""
    parts = [b"*%d\r\n" % len(arguments)]
    parts.extend(b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments)
    return b"".join(parts)


def read_reply(stream: BinaryIO, depth: int = 0) -> RespValue:
    """Read one RESP2 reply; raises MalformedReply or ConnectionClosed."""
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line.endswith(b"\r\n"):
        if len(line) > MAX_LINE_BYTES:
            raise MalformedReply(f"a line longer than {MAX_LINE_BYTES} bytes")
        raise ConnectionClosed(f"after {line[:40]!r}" if line else "before a reply", line[:40])
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return Status(body.decode("utf-8", "replace"))
    if kind == b"-":
        return ErrorReply(body.decode("utf-8", "replace"))
    if kind == b":":
        return _integer(body)
    if kind == b"$":
        return _read_bulk(stream, _integer(body))
    if kind == b"*":
        return _read_array(stream, _integer(body), depth)
    raise MalformedReply(f"unknown reply type in {line[:40]!r}")


def _integer(body: bytes) -> int:
    if not INTEGER.fullmatch(body):
        raise MalformedReply(f"{body[:40]!r} is not an integer")
    return int(body)


def _read_bulk(stream: BinaryIO, size: int) -> bytes | None:
    if size == -1:
        return None
    if not 0 <= size <= MAX_BULK_BYTES:
        raise MalformedReply(f"bulk length {size}")
    data = stream.read(size + 2)
    if len(data) < size + 2:
        raise ConnectionClosed(f"{len(data)} bytes into a bulk string of {size}")
    if not data.endswith(b"\r\n"):
        raise MalformedReply(f"a bulk string of {size} bytes is not followed by CRLF")
    return data[:-2]


def _read_array(stream: BinaryIO, count: int, depth: int) -> list[RespValue] | None:
    if count == -1:
        return None
    if not 0 <= count <= MAX_ARRAY_ITEMS or depth >= MAX_DEPTH:
        raise MalformedReply(f"array of {count} items at depth {depth}")
    return [read_reply(stream, depth + 1) for _ in range(count)]


def shape(reply: RespValue) -> str:
    """The reply as a person reads it: '+OK', '-ERR ...', 'nil', ':1', 'bulk', 'array'."""
    if reply is None:
        return "nil"
    if isinstance(reply, Status):
        return f"+{reply.text}"
    if isinstance(reply, ErrorReply):
        return f"-{reply.text}"
    if isinstance(reply, int):
        return f":{reply}"
    if isinstance(reply, bytes):
        return "bulk"
    return "array"
