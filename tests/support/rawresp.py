"""Raw-socket RESP for tests: send exact bytes, get back exact bytes, see whether it closed.

Replies are returned as the bytes on the wire (`b"$5\\r\\nhello\\r\\n"`), so the tests state
the protocol byte for byte. Also: a RESP server on a free loopback port, for a `with`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kvservice.auth import Tokens
from kvservice.execution import Execution, ExecutionPolicy
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.server import ChangeSource, RespServer
from kvservice.store import Store
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from tests.support.servers import resp_test_settings


def command(*arguments: bytes | str) -> bytes:
    """A command as a RESP array of bulk strings; str arguments are sent as UTF-8."""
    encoded = [a.encode() if isinstance(a, str) else a for a in arguments]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)


class RespConnection:
    """One raw connection to a RESP server."""

    def __init__(self, port: int, timeout_s: float = 2.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.stream = self.sock.makefile("rb")

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, *arguments: bytes | str) -> bytes:
        """Send one command and return its reply's raw bytes."""
        self.send(command(*arguments))
        return self.reply()

    def reply(self) -> bytes:
        """The raw bytes of the next complete reply."""
        line = self.stream.readline()
        assert line.endswith(b"\r\n"), f"incomplete reply line {line!r}"
        if line[:1] == b"$" and line != b"$-1\r\n":
            return line + self.stream.read(int(line[1:-2]) + 2)
        if line[:1] in b"*>" and line != b"*-1\r\n":  # an array, or a RESP3 push
            return line + b"".join(self.reply() for _ in range(int(line[1:-2])))
        if line[:1] == b"%":  # a RESP3 map: a key and a value per entry
            return line + b"".join(self.reply() for _ in range(2 * int(line[1:-2])))
        return line

    def rest_and_closed(self) -> tuple[bytes, bool]:
        """Everything still to come, and whether the server closed (False: timed out)."""
        received = b""
        try:
            while chunk := self.stream.read1(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True
        return received, True


@contextmanager
def running_resp(
    store: Store | None = None,
    *,
    tokens: Tokens | None = None,
    tls: ssl.SSLContext | None = None,
    execution: Execution | ExecutionPolicy = Execution.INLINE,
    reply_budget: ReplyBudget | None = None,
    changes: ChangeSource | None = None,
    **settings: Any,
) -> Iterator[RespServer]:
    """A RespServer over `store` (a fresh one by default), behind the store service as
    kvservice serves it, on a free 127.0.0.1 port, asking
    clients for one of `tokens` if given, speaking TLS with `tls` if given, running commands
    where `execution` says (WORKERS: as for a store that may block; a policy: each kind of
    command where it says), charging unsent replies
    to `reply_budget` if given."""
    server = RespServer(
        StoreService(store or MemoryStore()),
        resp_test_settings(**settings),
        tokens=tokens,
        tls=tls,
        execution=(
            execution
            if isinstance(execution, ExecutionPolicy)
            else ExecutionPolicy.everything(execution)
        ),
        reply_budget=reply_budget,
        changes=changes,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
