"""TCP peers that misbehave for real, on loopback: a server that accepts connections and never
answers, and a proxy that delays every byte by a fixed time (a store "200 ms away")."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def _accepting(on_accept: Callable[[socket.socket], list[socket.socket]]) -> Iterator[int]:
    """A loopback listener whose connections are handed to `on_accept`, which returns the
    sockets to close at the end; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    opened: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                opened.extend(on_accept(listener.accept()[0]))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.close()


def silent_server() -> contextlib.AbstractContextManager[int]:
    """A port that accepts every connection and never sends a byte; yields the port."""
    return _accepting(lambda client: [client])  # held open, never read or written


class _DelayedPipe:
    """Copies one direction of a connection, each chunk sent `delay_s` after it arrived:
    latency without any loss of throughput (chunks in flight overlap)."""

    def __init__(self, source: socket.socket, target: socket.socket, delay_s: float) -> None:
        self.source, self.target, self.delay_s = source, target, delay_s
        self._due: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._ended = False
        threading.Thread(target=self._receive, daemon=True).start()
        threading.Thread(target=self._send, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                chunk = self.source.recv(65536)
            except OSError:
                chunk = b""
            with self._ready:
                if not chunk:
                    self._ended = True
                else:
                    due = time.monotonic() + self.delay_s
                    heapq.heappush(self._due, (due, next(self._order), chunk))
                self._ready.notify()
            if not chunk:
                return

    def _send(self) -> None:
        while True:
            with self._ready:
                while not self._due and not self._ended:
                    self._ready.wait()
                if not self._due:
                    with contextlib.suppress(OSError):
                        self.target.shutdown(socket.SHUT_WR)
                    return
                due, _, chunk = self._due[0]
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    self._ready.wait(wait_s)
                    continue
                heapq.heappop(self._due)
            try:
                self.target.sendall(chunk)
            except OSError:
                return


def delaying_proxy(upstream_port: int, delay_s: float) -> contextlib.AbstractContextManager[int]:
    """A proxy to 127.0.0.1:`upstream_port` whose replies each arrive `delay_s` late, so every
    round trip through it takes at least that; yields its port."""

    def relay(client: socket.socket) -> list[socket.socket]:
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _DelayedPipe(client, upstream, 0.0)
        _DelayedPipe(upstream, client, delay_s)
        return [client, upstream]

    return _accepting(relay)
