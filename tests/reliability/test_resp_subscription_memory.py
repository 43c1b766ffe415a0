"""What RESP subscriptions make a kvservice process hold: many connections each following
as much as it may, with the longest names it may, cost a bounded amount of memory together,
measured as the process's RSS (the review's finding F8: 60 connections of 1,000 channels of
2 KB grew it by 153 MiB, about 2.5 MiB a connection, outside every bound)."""

from __future__ import annotations

import contextlib
import socket
import time

from kvservice.resp.keyspace_events import KEYSPACE_PREFIX
from kvservice.store import MAX_KEY_LENGTH
from tests.support.processes import free_port, kvservice_process
from tests.support.rawresp import command

CONNECTIONS = 200
CHANNELS = 1_000
"""As many as one connection may follow."""
CHANNELS_PER_COMMAND = 25
CHANNEL_BYTES = len(KEYSPACE_PREFIX) + MAX_KEY_LENGTH
"""The longest channel a keyspace notification uses, so the longest that is useful."""
MAX_GROWTH_PER_CONNECTION = 128 * 1024
"""An idle connection costs about 4 KiB; before the fix each of these cost about 650 KiB
(the server-wide bound, 16 MiB, is about 80 KiB each of 200)."""


def drain(sock: socket.socket) -> bytes:
    """What the server has sent so far (until it pauses for 50 ms)."""
    sock.settimeout(0.05)
    received = b""
    with contextlib.suppress(TimeoutError):
        while chunk := sock.recv(1 << 20):
            received += chunk
    return received


def test_many_subscribers_following_all_they_may_cost_a_bounded_memory() -> None:
    resp_port = free_port()
    with kvservice_process("--resp-port", str(resp_port)) as service:
        time.sleep(0.5)  # the process settles (its first requests allocate)
        rss_before = service.rss_bytes()
        connections: list[socket.socket] = []
        refused = 0
        try:
            for number in range(CONNECTIONS):
                sock = socket.create_connection(("127.0.0.1", resp_port))
                connections.append(sock)
                for first in range(0, CHANNELS, CHANNELS_PER_COMMAND):
                    names = (
                        f"{number:06d}-{channel:06d}-".encode().ljust(CHANNEL_BYTES, b"x")
                        for channel in range(first, first + CHANNELS_PER_COMMAND)
                    )
                    sock.sendall(command("SUBSCRIBE", *names))
                refused += b"-ERR" in drain(sock)
            time.sleep(1.0)
            growth = service.rss_bytes() - rss_before
            probe = connections[0]
            probe.sendall(command("PING"))
            assert b"pong" in drain(probe).lower()  # the server still serves them
        finally:
            for sock in connections:
                sock.close()
    print(
        f"\n{CONNECTIONS} connections x {CHANNELS} channels of {CHANNEL_BYTES} bytes: RSS "
        f"grew {growth / 2**20:.1f} MiB, {growth / CONNECTIONS / 1024:.0f} KiB a connection; "
        f"{refused} connections were refused some"
    )
    assert growth <= CONNECTIONS * MAX_GROWTH_PER_CONNECTION
