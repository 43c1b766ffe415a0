"""Slow and idle clients must not starve anyone: kvservice with its default settings, over
plain HTTP and over TLS (where every attacking connection completes its handshake first, then
trickles or idles inside TLS, and the normal client pays a handshake on each GET).

Run alone for the figures: `python -m pytest tests/reliability/test_slow_clients.py -s`.
RELIABILITY_ATTACK_S shortens or lengthens the attack (default 30 s, as the issue asks).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest
import requests

from tests.support.certificates import Certificates
from tests.support.processes import ServiceProcess, kvservice_process, percentile

ATTACK_S = float(os.environ.get("RELIABILITY_ATTACK_S", "30"))
TRICKLERS = 200
IDLERS = 200
READERS_THAT_NEVER_READ = 12
TRICKLED_REQUEST = b"GET /k HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 100 + b"\r\n\r\n"


@dataclass(frozen=True)
class Transport:
    """How the tests reach the service: plain HTTP, or TLS with a private CA."""

    certificates: Certificates | None

    def service(self, *args: str) -> AbstractContextManager[ServiceProcess]:
        """A kvservice with ARGS on this transport."""
        if self.certificates is None:
            return kvservice_process(*args)
        files = ("--tls-cert", str(self.certificates.cert), "--tls-key", str(self.certificates.key))
        return kvservice_process(*files, *args, ca_cert=self.certificates.ca_cert)

    @property
    def verify(self) -> str | bool:
        """What requests verifies the service's certificate with."""
        return True if self.certificates is None else str(self.certificates.ca_cert)

    def connect(
        self, port: int, timeout: float = 5, receive_buffer: int | None = None
    ) -> socket.socket:
        """A connection to the service, its TLS handshake done on this transport; with
        `receive_buffer`, set before connecting (the window is negotiated then)."""
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        if self.certificates is None:
            return sock
        context = ssl.create_default_context(cafile=str(self.certificates.ca_cert))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")


@pytest.fixture(params=["http", "tls"])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """Each test runs over plain HTTP and over TLS."""
    if request.param == "http":
        yield Transport(None)
    else:
        yield Transport(request.getfixturevalue("certificates"))


class Attack:
    """Keeps TRICKLERS connections sending one header byte a second and IDLERS saying nothing,
    reconnecting any the server closes, until stopped."""

    def __init__(self, port: int, connect: Callable[[int], socket.socket]) -> None:
        self.port = port
        self.connect = connect
        self.stop_event = threading.Event()
        self.closed_by_server = 0
        self.answers: dict[bytes, int] = {}
        self._thread = threading.Thread(target=self._run, name="attack")

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self._thread.join()

    def _connect(self) -> socket.socket:
        sock = self.connect(self.port)
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        tricklers = {self._connect(): 0 for _ in range(TRICKLERS)}
        idlers = [self._connect() for _ in range(IDLERS)]
        try:
            while not self.stop_event.wait(1.0):
                for sock in list(tricklers):
                    if self._closed(sock):
                        del tricklers[sock]
                        tricklers[self._connect()] = 0
                        continue
                    sent = tricklers[sock]
                    sock.send(TRICKLED_REQUEST[sent % len(TRICKLED_REQUEST) :][:1])
                    tricklers[sock] = sent + 1
                for index, sock in enumerate(idlers):
                    if self._closed(sock):
                        idlers[index] = self._connect()
        finally:
            for sock in [*tricklers, *idlers]:
                sock.close()

    def _closed(self, sock: socket.socket) -> bool:
        """Whether the server answered or closed this connection (then it is closed here too)."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            data = sock.recv(65536)
        except ssl.SSLWantReadError:
            return False  # TLS bytes that were no data (a session ticket, say)
        except OSError:
            data = b""
        status = data[9:12] if data.startswith(b"HTTP/1.1 ") else b"closed"
        self.answers[status] = self.answers.get(status, 0) + 1
        self.closed_by_server += 1
        sock.close()
        return True


def timed_get(url: str, verify: str | bool = True) -> float:
    """One GET on a fresh connection; its latency in milliseconds (it must succeed)."""
    started = time.perf_counter()
    response = requests.get(url, timeout=5, verify=verify)
    assert response.status_code == 200, response.text
    return (time.perf_counter() - started) * 1000


def test_slow_and_idle_clients_do_not_starve_a_normal_client(transport: Transport) -> None:
    verify = transport.verify
    with transport.service() as kv:
        requests.put(f"{kv.url}/k", data=b"value", timeout=5, verify=verify)
        latencies = []
        with Attack(kv.port, transport.connect) as attack:
            time.sleep(2)  # let all 400 connections open and start trickling
            deadline = time.monotonic() + ATTACK_S
            while time.monotonic() < deadline:
                latencies.append(timed_get(f"{kv.url}/k", verify))
                time.sleep(0.05)
        stopped = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:  # every worker free again
            after = list(pool.map(lambda _: timed_get(f"{kv.url}/k", verify), range(64)))
        recovery_ms = (time.perf_counter() - stopped) * 1000

    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"\nslow clients: {TRICKLERS} trickling + {IDLERS} idle for {ATTACK_S:.0f} s; "
        f"{len(latencies)} GETs: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms; "
        f"server closed {attack.closed_by_server} attack connections {attack.answers}; "
        f"64 GETs after the attack in {recovery_ms:.0f} ms (max {max(after):.1f} ms)"
    )
    assert p99 < 100, f"p99 {p99:.1f} ms"
    assert recovery_ms < 1000
    assert attack.answers.get(b"408", 0) > 0, "stalled requests are answered 408"


def test_connections_past_capacity_get_a_fast_503_and_capacity_returns(
    transport: Transport,
) -> None:
    capacity = 20
    with transport.service("--max-connections", str(capacity)) as kv:
        held = [socket.create_connection(("127.0.0.1", kv.port)) for _ in range(capacity)]
        time.sleep(0.2)
        started = time.perf_counter()
        with transport.connect(kv.port, timeout=2) as excess:
            answer = excess.recv(65536)
            closed = excess.recv(65536) == b""
        refused_ms = (time.perf_counter() - started) * 1000
        for sock in held:
            sock.close()
        time.sleep(0.05)
        started = time.perf_counter()
        back = requests.get(f"{kv.url}/_health", timeout=2, verify=transport.verify).status_code
        back_ms = (time.perf_counter() - started) * 1000

    print(
        f"\ncapacity {capacity}: excess connection answered in {refused_ms:.1f} ms; "
        f"service back {back_ms:.1f} ms after the held connections closed"
    )
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"application/problem+json" in answer
    assert closed
    assert refused_ms < 100
    assert back == 200


def test_clients_that_never_read_a_long_history_hold_no_worker(transport: Transport) -> None:
    """12 clients ask for a history of 5 MB, more than the kernel's socket buffers take (4 MiB
    at most here), and never read it: the server sends what their sockets take and keeps the
    rest to send as they read, holding no thread, so a normal client is served as fast as
    ever; once they have made no progress for the socket timeout it gives up on them. (When a
    worker wrote the response, four such clients held all four workers, 3 s at a time.)"""
    verify = transport.verify
    with transport.service("--socket-timeout", "3", "--threads", "4") as kv:
        with requests.Session() as writer:
            for number in range(5000):
                value = f"entry {number:05d} ".encode() * 84  # 1008 bytes
                writer.put(f"{kv.url}/long", data=value, timeout=5, verify=verify)
        size = len(requests.get(f"{kv.url}/long/history", timeout=30, verify=verify).content)
        readers = []
        for _ in range(READERS_THAT_NEVER_READ):
            sock = transport.connect(kv.port, receive_buffer=4096)  # a small window
            sock.sendall(b"GET /long/history HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(sock)
        time.sleep(0.5)
        rss_while_stuck = kv.rss_bytes()
        latencies = []
        with requests.Session() as client:
            for _ in range(200):
                started = time.perf_counter()
                assert client.get(f"{kv.url}/_health", timeout=5, verify=verify).status_code == 200
                latencies.append((time.perf_counter() - started) * 1000)
        # The kernel takes what it can into socket buffers (they grow, up to megabytes);
        # the rest waits in the server's buffer. A connection that has made no progress for
        # the socket timeout is closed, and so is one left idle for it once all was taken.
        # A close is only seen by reading (it comes after the data), so wait, then read.
        time.sleep(15.0)
        closed = sum(_closed_after_reading(sock) for sock in readers)
    p99 = percentile(latencies, 0.99)
    print(
        f"\n{READERS_THAT_NEVER_READ} clients not reading a {size / 2**20:.1f} MiB history: "
        "a normal client's 200 GETs "
        f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {p99:.1f} ms; RSS {rss_while_stuck >> 20} "
        f"MiB; {closed} of {READERS_THAT_NEVER_READ} closed by the server within 15 s (socket "
        "timeout 3 s)"
    )
    assert size > 4.5 * 1024 * 1024, "more than the kernel's buffers take (4 MiB)"
    assert p99 < 100
    assert closed == READERS_THAT_NEVER_READ


def _closed_after_reading(sock: socket.socket) -> bool:
    """Read what `sock` has; whether the server had closed it (an end of stream comes)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
    finally:
        sock.close()
    return True
