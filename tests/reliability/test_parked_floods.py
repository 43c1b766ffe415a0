"""What a client sends behind a request that waits for the change feed costs a bounded amount
of memory (review21 F5): a parked long-poll holds one request's worth of its pipelined bytes
and reads no more until it is answered; an event stream waiting for news holds one read.
Either still hears its client leave when it has not sent that much.

Each test floods a real kvservice process (tests/support/processes.py) over a real socket
with valid pipelined requests, bounded in bytes and in time (the kernel's buffers fill and
the send times out once the server stops reading), and prints its figures.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable

import requests

from tests.support.processes import ServiceProcess, kvservice_process

PIPELINED = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
"""About 56 KB of valid pipelined requests, sent again and again."""
FLOOD_BYTES = 128 * 2**20
FLOOD_S = 15.0
SEND_TIMEOUT_S = 2.0
"""A send blocked this long: the server reads no more."""
MAX_GROWTH_BYTES = 32 * 2**20
"""What RSS may grow by: one request's worth (the head and body limits, 80 KiB by default),
and the allocator's slack; the flood is four times that."""


def flood(sock: socket.socket) -> int:
    """Send pipelined requests until FLOOD_BYTES, FLOOD_S, or the server stops reading;
    how many bytes went."""
    sock.settimeout(SEND_TIMEOUT_S)
    sent = 0
    deadline = time.monotonic() + FLOOD_S
    try:
        while sent < FLOOD_BYTES and time.monotonic() < deadline:
            sock.sendall(PIPELINED)
            sent += len(PIPELINED)
    except TimeoutError:
        pass  # the server stopped reading: what it holds is bounded
    return sent


def watchers(kv: ServiceProcess, kind: str) -> float:
    page = requests.get(f"{kv.url}/_metrics", timeout=5).text
    match = re.search(rf'^kvservice_watchers{{kind="{kind}"}} (\S+)$', page, re.MULTILINE)
    assert match is not None, page
    return float(match.group(1))


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_head(sock: socket.socket) -> bytes:
    """The response head (and whatever came with it)."""
    sock.settimeout(5)
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        assert data, received
        received += data
    return received


def test_a_flood_behind_a_parked_long_poll_is_held_bounded_and_it_is_still_answered() -> None:
    with kvservice_process() as kv, socket.create_connection(("127.0.0.1", kv.port)) as sock:
        sock.sendall(b"GET /lp/history?wait=30s HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: watchers(kv, "long-poll") == 1)
        before = kv.rss_bytes()
        started = time.monotonic()
        sent = flood(sock)
        elapsed = time.monotonic() - started
        growth = kv.rss_bytes() - before
        print(
            f"long-poll: sent {sent / 2**20:.0f} MiB in {elapsed:.1f} s, "
            f"RSS {before / 2**20:.0f} -> {(before + growth) / 2**20:.0f} MiB"
        )
        assert growth < MAX_GROWTH_BYTES
        # Parked, not stuck: a write answers it, at once.
        assert requests.put(f"{kv.url}/lp", data=b"v", timeout=5).status_code == 204
        answer = read_head(sock)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert b"kv-position:" in answer.lower()


def test_a_flood_behind_an_event_stream_is_held_bounded() -> None:
    with kvservice_process() as kv, socket.create_connection(("127.0.0.1", kv.port)) as sock:
        sock.sendall(b"GET /_watch?prefix= HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        before = kv.rss_bytes()
        started = time.monotonic()
        sent = flood(sock)
        elapsed = time.monotonic() - started
        growth = kv.rss_bytes() - before
        print(
            f"event stream: sent {sent / 2**20:.0f} MiB in {elapsed:.1f} s, "
            f"RSS {before / 2**20:.0f} -> {(before + growth) / 2**20:.0f} MiB"
        )
        assert growth < MAX_GROWTH_BYTES
        assert watchers(kv, "sse") == 1


def test_a_parked_long_poll_hears_its_client_leave_after_a_pipelined_request() -> None:
    with kvservice_process() as kv:
        for ending in ("close", "reset"):
            sock = socket.create_connection(("127.0.0.1", kv.port))
            sock.sendall(b"GET /lp/history?wait=30s HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_for(lambda: watchers(kv, "long-poll") == 1)
            sock.sendall(PIPELINED[:4096])  # read and held, not served
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            assert wait_for(lambda: watchers(kv, "long-poll") == 0), ending


def test_a_parked_long_poll_that_reads_no_more_hears_its_client_leave() -> None:
    # At one request's worth (the head limit and a body of twice the value limit: 144 KiB
    # here) the server reads no more; the client sends a little past it (reads are 16 KiB),
    # so that what the server has not read leaves the kernel's window open for the FIN
    # (a FIN that meets a closed window is dropped: that client is heard only by a reset,
    # or once its answer is written), then leaves.
    past_the_bound = b"x" * (144 * 1024 + 8 * 1024)
    with kvservice_process("--max-value-bytes", "65536") as kv:
        for ending in ("close", "reset"):
            sock = socket.create_connection(("127.0.0.1", kv.port))
            sock.sendall(b"GET /lp/history?wait=30s HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_for(lambda: watchers(kv, "long-poll") == 1)
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendall(past_the_bound)
            time.sleep(0.2)
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            assert wait_for(lambda: watchers(kv, "long-poll") == 0), ending
