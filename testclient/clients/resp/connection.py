"""One socket to a RESP server for the test client: TCP (or TLS), a buffered reader over it,
AUTH with a token when the connection opens, and whether a pooled connection went stale."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import BinaryIO

from testclient.clients.protocol import KVRefused
from testclient.clients.resp.reader import Status, encode_command, read_reply, shape


class Connection:
    """One socket to the server (TLS with `tls`) and a buffered reader over it; with a
    `token`, authenticated before it is used (raises KVRefused if refused)."""

    def __init__(
        self,
        address: tuple[str, int],
        timeout: tuple[float, float],
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        connect_s, read_s = timeout
        self.sock = socket.create_connection(address, timeout=connect_s)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:  # the handshake is bounded by the connect timeout
                self.sock = tls.wrap_socket(self.sock, server_hostname=address[0])
            self.sock.settimeout(read_s)
            self.stream: BinaryIO = self.sock.makefile("rb")
            if token is not None:
                self._authenticate(token, address)
        except BaseException:
            self.sock.close()
            raise

    def _authenticate(self, token: str, address: tuple[str, int]) -> None:
        self.send([b"AUTH", token.encode()])
        reply = read_reply(self.stream)
        if reply != Status("OK"):
            raise KVRefused(f"AUTH ({address[0]}:{address[1]}): RESP {shape(reply)}")

    def send(self, arguments: Sequence[bytes]) -> None:
        self.sock.sendall(encode_command(arguments))

    def is_stale(self) -> bool:
        """Whether the server closed it (or sent something unasked) while it sat in the pool."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted bytes nobody asked for
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)  # with a timeout, recv would wait for data first
        try:
            # The kernel's buffer, past TLS (which cannot peek): bytes or an end of stream.
            socket.socket.recv(self.sock, 1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(timeout)
        return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
