"""Chunked bodies trickled in small reads must not slow the event loop down for everyone (issue
18, must-hold 1): the gate judges a body as it arrives, each byte once, so eight clients each
sending a 60 KB body of 1-byte chunks, 60 bytes every 5 ms, leave `/_health` on another
connection as fast as ever. (When the gate re-judged the whole buffer on each read, eight such
clients took `/_health` to 1.5 s.)

Run alone for the figures: `python -m pytest tests/reliability/test_trickled_bodies.py -s`.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.processes import ServiceProcess, kvservice_process, percentile
from tests.support.rawhttp import parse_responses
from tests.support.redis_servers import RedisProcess

TRICKLERS = 8
BODY_BYTES = 60_000
"""Each body on the wire: 10,000 chunks of one byte."""
WRITE_BYTES = 60
WRITE_EVERY_S = 0.005
HEALTH_EVERY_S = 0.01
BOUND_S = 10.0
"""The whole attack must be over within this; the trickle alone takes about 5 s."""
VALUE_LIMIT = str(BODY_BYTES // 6)


@pytest.fixture(params=["memory", "redis"], ids=["on the event loop", "by workers"])
def kv(request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """kvservice as it runs: the memory store served on the event loop, Redis by workers."""
    store: tuple[str, ...] = ()
    if request.param == "redis":
        redis_server: RedisProcess = request.getfixturevalue("redis_server")
        redis_server.flush()
        store = ("--store", redis_server.url)
    with kvservice_process("--max-value-bytes", VALUE_LIMIT, *store) as service:
        yield service


def trickled_request(number: int) -> bytes:
    head = b"PUT /trickled%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % number
    return head + b"1\r\nx\r\n" * (BODY_BYTES // 6) + b"0\r\n\r\n"


class HealthProbe:
    """GETs /_health on a kept-alive connection every HEALTH_EVERY_S until stopped; the
    latency of each, in milliseconds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe")

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self._thread.join()

    def _run(self) -> None:
        request = b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            while not self.stop_event.wait(HEALTH_EVERY_S):
                started = time.perf_counter()
                sock.sendall(request)
                received = b""
                try:
                    while not received.endswith(b"}"):  # /_health answers one JSON object
                        chunk = sock.recv(65536)
                        assert chunk, "the server closed the probe's connection"
                        received += chunk
                except TimeoutError:
                    self.latencies.append(math.inf)  # no answer in 5 s: the test fails
                    return
                self.latencies.append((time.perf_counter() - started) * 1000)


def test_eight_clients_trickling_chunked_bodies_leave_health_fast(kv: ServiceProcess) -> None:
    requests_ = [trickled_request(number) for number in range(TRICKLERS)]
    tricklers = [
        socket.create_connection(("127.0.0.1", kv.port), timeout=5) for _ in range(TRICKLERS)
    ]
    for sock in tricklers:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each write its own segment
    started = time.monotonic()
    try:
        with HealthProbe(kv.port) as probe:
            for offset in range(0, len(requests_[0]), WRITE_BYTES):
                for sock, request_ in zip(tricklers, requests_, strict=True):
                    sock.sendall(request_[offset : offset + WRITE_BYTES])
                time.sleep(WRITE_EVERY_S)
                assert time.monotonic() - started < BOUND_S, "the trickle took too long"
        trickle_s = time.monotonic() - started
        answers = []
        for sock in tricklers:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, "a trickled request was not answered"
                received += chunk
            answers.append(parse_responses(received)[0].status)
    finally:
        for sock in tricklers:
            sock.close()
    p50, p99 = percentile(probe.latencies, 0.5), percentile(probe.latencies, 0.99)
    print(
        f"\n{TRICKLERS} clients trickling {BODY_BYTES // 1000} KB chunked bodies of 1-byte chunks "
        f"in {WRITE_BYTES}-byte writes every {WRITE_EVERY_S * 1000:.0f} ms ({trickle_s:.1f} s): "
        f"{len(probe.latencies)} /_health GETs p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(probe.latencies):.1f} ms; answers {answers}"
    )
    assert p99 < 20, f"p99 {p99:.1f} ms"
    assert len(probe.latencies) > 100, "the probe was answered throughout"
    assert answers == [204] * TRICKLERS, "every trickled body arrived whole and was stored"
