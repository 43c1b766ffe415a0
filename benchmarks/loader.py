"""Fills a server over HTTP quickly: pipelined keep-alive requests on a few plain sockets.

A request-then-response loop in Python manages about 1.5k requests/s against kvservice on
this machine; sending requests in batches without waiting for each answer (HTTP/1.1
pipelining) lets the server run at its own speed, so pre-filling 100k keys takes seconds.
Only what the benchmark needs is supported: bodies of known length, answers that carry a
Content-Length or close the connection.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

BATCH_SIZE = 64
"""Requests written before their answers are read; small enough that no socket buffer fills."""
SOCKET_TIMEOUT_S = 30.0


class LoadFailed(RuntimeError):
    """The server closed the connection or answered in a way the loader cannot read."""


@dataclass(frozen=True)
class Request:
    """One HTTP request to send."""

    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None

    def encode(self) -> bytes:
        """The request as bytes on the wire."""
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: benchmark\r\n"
        if self.content_type is not None:
            head += f"Content-Type: {self.content_type}\r\n"
        if self.body or self.method in ("PUT", "POST"):
            head += f"Content-Length: {len(self.body)}\r\n"
        return head.encode("ascii") + b"\r\n" + self.body


def send_all(
    host: str, port: int, requests: Sequence[Request], *, connections: int = 2
) -> Counter[int]:
    """Send every request, spread over `connections` pipelined connections; count the statuses.

    Requests on one connection are applied in order; across connections, in any order.
    """
    shares = [requests[index::connections] for index in range(connections)]
    with ThreadPoolExecutor(max_workers=connections) as pool:
        counts = pool.map(lambda share: _send_on_one_connection(host, port, share), shares)
        return sum(counts, Counter[int]())


def require_success(statuses: Counter[int], what: str) -> None:
    """Raise LoadFailed, naming `what`, unless every status is 2xx."""
    failures = {status: count for status, count in statuses.items() if not 200 <= status < 300}
    if failures:
        raise LoadFailed(f"{what}: unexpected statuses {failures} (of {statuses.total()})")


def _send_on_one_connection(host: str, port: int, requests: Sequence[Request]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    sent = 0
    while sent < len(requests):
        # Each connection starts with one request alone, so that a server that closes after
        # every response (waitress after a 204) is never sent requests it would drop.
        with (
            socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S) as sock,
            sock.makefile("rb") as responses,
        ):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            batch_size = 1
            closed = False
            while sent < len(requests) and not closed:
                batch = requests[sent : sent + batch_size]
                sock.sendall(b"".join(request.encode() for request in batch))
                for position in range(len(batch)):
                    status, closed = _read_response(responses)
                    statuses[status] += 1
                    if closed and position < len(batch) - 1:
                        raise LoadFailed(f"the server closed a pipelined connection ({status})")
                sent += len(batch)
                batch_size = BATCH_SIZE
    return statuses


def _read_response(responses: BinaryIO) -> tuple[int, bool]:
    """Read one response, skipping its body; returns its status and whether the server closes."""
    status_line = responses.readline()
    if not status_line:
        raise LoadFailed("the server closed the connection without answering")
    try:
        status = int(status_line.split(b" ", 2)[1])
    except (IndexError, ValueError) as error:
        raise LoadFailed(f"unreadable status line {status_line!r}") from error
    body_length = 0
    closes = False
    while (line := responses.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            body_length = int(value)
        elif name == b"connection":
            closes = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise LoadFailed(f"chunked responses are not supported (status {status})")
    responses.read(body_length)
    return status, closes
