"""Many clients that never read a long history: the process holds at most its reply budget
for them, and serves everyone else as fast as ever.

One key written 8,000 times with 1 KiB values has a history of 10.9 MiB as JSON (8.1 MiB
over RESP), about as large as the reply budget (11.4 MiB) and the store's. SLOW_READERS
clients (default 80) ask for it, over HTTP or over RESP, with a 4 KiB receive window, and
never read. Before the reply budget each reply was built whole and kept: +860 MiB over HTTP,
+320-440 MiB over RESP, and `/_health` took seconds. Now the RSS grows by less than
`RSS_BOUND_BYTES`, derived from the budget, and `/_health` on another connection stays fast.

Run alone for the figures: `python -m pytest tests/reliability/test_slow_history_readers.py
-s`; RELIABILITY_SLOW_READERS=500 for 500 readers (docs/RELIABILITY.md has both).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.support.processes import ServiceProcess, free_port, kvservice_process, percentile
from tests.support.rawresp import RespConnection, command

SLOW_READERS = int(os.environ.get("RELIABILITY_SLOW_READERS", "80"))
BUDGET_BYTES = 12_000_000
"""--max-bytes and --max-reply-buffer-bytes alike: the history fills the store's budget."""
WRITES = 8000
VALUE = bytes(range(256)) * 4
"""1 KiB that is not UTF-8, so base64 in the JSON: a 10.9 MiB history, 8.1 MiB over RESP."""
RSS_BOUND_BYTES = BUDGET_BYTES + 24 * 2**20
"""The budget, all of it held, and 24 MiB for what it does not count: each connection's own
objects (socket, buffers, parser), the reply being built when it is refused, and the
allocator's slack."""
HEALTH_P99_MS = 100
HEALTH_MAX_MS = 1000
"""No stall of a second: before the budget, the first /_health waited 3 s behind the replies."""
SETTLE_S = 3.0
"""How long the readers' requests are given to be served, RSS sampled all along."""


@dataclass(frozen=True)
class Transport:
    """How a slow reader asks for the history."""

    name: str
    request: bytes

    def port(self, kv: ServiceProcess, resp_port: int) -> int:
        return kv.port if self.name == "http" else resp_port


HTTP = Transport("http", b"GET /h/history HTTP/1.1\r\nHost: x\r\n\r\n")
RESP = Transport("resp", command("HISTORY", "h"))


@pytest.fixture
def service() -> Iterator[tuple[ServiceProcess, int]]:
    """One kvservice with both transports and the history written (over RESP, pipelined:
    8,000 writes in a second), its reply budget as large as the history."""
    resp_port = free_port()
    budget = str(BUDGET_BYTES)
    args = ("--max-bytes", budget, "--max-reply-buffer-bytes", budget, "--resp-port")
    with kvservice_process(*args, str(resp_port), "--socket-timeout", "20") as kv:
        with socket.create_connection(("127.0.0.1", resp_port), timeout=30) as writer:
            writer.sendall(b"".join(command("SET", "h", VALUE) for _ in range(WRITES)))
            answered = b""
            while answered.count(b"+OK\r\n") < WRITES:
                data = writer.recv(65536)
                assert data, f"the writer's connection closed after {answered[-200:]!r}"
                answered += data
        yield kv, resp_port


def rss_samples(kv: ServiceProcess, stop: threading.Event, samples: list[int]) -> None:
    while not stop.wait(0.05):
        samples.append(kv.rss_bytes())


@pytest.mark.parametrize("transport", [HTTP, RESP], ids=lambda transport: transport.name)
def test_slow_readers_of_a_long_history_hold_at_most_the_reply_budget(
    service: tuple[ServiceProcess, int], transport: Transport
) -> None:
    kv, resp_port = service
    size = len(requests.get(f"{kv.url}/h/history", timeout=30).content)
    baseline = kv.rss_bytes()
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_samples, args=(kv, stop, samples))
    sampler.start()
    readers = []
    latencies: list[float] = []
    resp_latencies: list[float] = []
    try:
        for _ in range(SLOW_READERS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
            sock.settimeout(10)
            sock.connect(("127.0.0.1", transport.port(kv, resp_port)))
            sock.sendall(transport.request)
            readers.append(sock)
        deadline = time.monotonic() + SETTLE_S
        with requests.Session() as client, RespConnection(resp_port, timeout_s=10) as resp:
            while time.monotonic() < deadline or len(latencies) < 100:
                started = time.perf_counter()
                assert client.get(f"{kv.url}/_health", timeout=10).status_code == 200
                latencies.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                assert resp.ask("PING") == b"+PONG\r\n"
                resp_latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.01)
            metrics = client.get(f"{kv.url}/_metrics", timeout=10).text
    finally:
        stop.set()
        sampler.join()
        for sock in readers:
            sock.close()
    growth = max(samples) - baseline
    p99 = percentile(latencies, 0.99)
    resp_p99 = percentile(resp_latencies, 0.99)
    held = _metric(metrics, "kvservice_reply_buffer_bytes")
    closed = _metric(metrics, "kvservice_reply_buffer_closed_connections")
    print(
        f"\n{SLOW_READERS} {transport.name} clients not reading a {size / 2**20:.1f} MiB "
        f"history, reply budget {BUDGET_BYTES / 2**20:.1f} MiB: RSS {baseline / 2**20:.0f} -> "
        f"{max(samples) / 2**20:.0f} MiB at most (+{growth / 2**20:.1f} MiB, bound "
        f"{RSS_BOUND_BYTES / 2**20:.0f}); held {held / 2**20:.1f} MiB, {closed:.0f} "
        f"connections closed for the budget so far; /_health p50 "
        f"{percentile(latencies, 0.5):.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms; "
        f"RESP PING p50 {percentile(resp_latencies, 0.5):.1f} ms, p99 {resp_p99:.1f} ms, max "
        f"{max(resp_latencies):.1f} ms"
    )
    assert size > 10 * 2**20
    assert growth < RSS_BOUND_BYTES
    assert held <= BUDGET_BYTES
    assert p99 < HEALTH_P99_MS
    assert max(latencies) < HEALTH_MAX_MS
    assert resp_p99 < HEALTH_P99_MS
    assert max(resp_latencies) < HEALTH_MAX_MS


def _metric(page: str, name: str) -> float:
    """A sample's value from the Prometheus text page (a metric without labels)."""
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not on the metrics page")
