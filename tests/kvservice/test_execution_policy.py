"""The execution policy over real sockets: on a store that waits on a network, no client's
request waits behind another client's store call, over HTTP and over RESP alike.

kvservice runs as a process on `--store redis://` pointed at a port that accepts and never
answers, at one that refuses, and at a real Redis behind a proxy that delays every reply by
200 ms. Concurrent requests are each timed from the moment they are sent.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kvservice.execution import Execution, ExecutionPolicy, execution_for
from kvservice.store import Value
from kvservice.store.durable import DurableStore
from kvservice.store.memory import MemoryStore
from tests.support.processes import free_port, kvservice_process
from tests.support.rawresp import RespConnection, command, running_resp
from tests.support.redis_servers import require_redis_server, running_redis
from tests.support.slow_tcp import delaying_proxy, silent_server

CONCURRENT = 6
Answer = tuple[str, float]
"""What a request got (an HTTP status, or a RESP reply's first line) and how long it took."""


@contextmanager
def kvservice_on(store_port: int, *options: str) -> Iterator[tuple[int, int]]:
    """kvservice on redis://127.0.0.1:`store_port` with RESP on; yields (HTTP, RESP) ports."""
    resp_port = free_port()
    store = f"redis://127.0.0.1:{store_port}"
    with kvservice_process("--store", store, "--resp-port", str(resp_port), *options) as kv:
        yield kv.port, resp_port


def http_get(port: int, key: str) -> Callable[[], Answer]:
    """Connects now; the returned function sends GET /key and times its answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.connect()

    def send() -> Answer:
        started = time.monotonic()
        connection.request("GET", f"/{key}")
        response = connection.getresponse()
        response.read()
        connection.close()
        return str(response.status), time.monotonic() - started

    return send


def resp_get(port: int, key: str) -> Callable[[], Answer]:
    """Connects now; the returned function sends GET key and times its reply's first line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send() -> Answer:
        started = time.monotonic()
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key.encode()))
        reply = sock.makefile("rb").readline()
        sock.close()
        return reply.decode().split(" ", 1)[0].strip(), time.monotonic() - started

    return send


def all_at_once(requests: list[Callable[[], Answer]]) -> list[Answer]:
    """Run every request on a thread of its own, released together."""
    answers: list[Answer | None] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def run(index: int) -> None:
        start.wait()
        answers[index] = requests[index]()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(answer is not None for answer in answers), "a request was never answered"
    return [answer for answer in answers if answer is not None]


TRANSPORTS: dict[str, tuple[Callable[[int, str], Callable[[], Answer]], int]] = {
    "HTTP": (http_get, 0),
    "RESP": (resp_get, 1),
}
"""Each transport's request maker and which of kvservice_on's ports it uses."""
UNAVAILABLE = {"HTTP": "503", "RESP": "-UNAVAILABLE"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_silent_redis_answers_every_concurrent_request_within_the_timeout(
    transport: str,
) -> None:
    """A Redis that accepts connections and never answers, --store-timeout 1: six concurrent
    requests are all refused within 1.3 s of being sent (not one after another)."""
    make, port_index = TRANSPORTS[transport]
    with silent_server() as store_port, kvservice_on(store_port, "--store-timeout", "1") as ports:
        requests = [make(ports[port_index], f"k{index}") for index in range(CONCURRENT)]
        answers = all_at_once(requests)
    print(f"\n{transport}, silent Redis: {[f'{kind} {s:.2f}s' for kind, s in answers]}")
    assert {kind for kind, _ in answers} == {UNAVAILABLE[transport]}
    assert max(seconds for _, seconds in answers) < 1.3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refusing_redis_answers_every_concurrent_request_at_once(transport: str) -> None:
    """Nothing listens where Redis should be: each request is refused well within the timeout."""
    make, port_index = TRANSPORTS[transport]
    with kvservice_on(free_port(), "--store-timeout", "1") as ports:
        answers = all_at_once([make(ports[port_index], "k") for _ in range(CONCURRENT)])
    assert {kind for kind, _ in answers} == {UNAVAILABLE[transport]}
    assert max(seconds for _, seconds in answers) < 0.5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_distant_redis_serves_concurrent_requests_side_by_side(
    transport: str, tmp_path: Path
) -> None:
    """Redis 200 ms away: eight concurrent GETs are each answered within 0.5 s; served one
    after another they would take up to 1.6 s."""
    require_redis_server()
    make, port_index = TRANSPORTS[transport]
    with (
        running_redis(tmp_path) as redis_server,
        delaying_proxy(redis_server.port, 0.2) as proxy_port,
        kvservice_on(proxy_port) as ports,
    ):
        redis_server.client().hset("kv:{k}", mapping={"d": b"v", "e": "etag"})
        # The first round opens the store's connections (a handshake of several round trips).
        all_at_once([make(ports[port_index], "k") for _ in range(8)])
        answers = all_at_once([make(ports[port_index], "k") for _ in range(8)])
    print(f"\n{transport}, Redis 200 ms away: {[f'{kind} {s:.2f}s' for kind, s in answers]}")
    assert {kind for kind, _ in answers} == {"200" if transport == "HTTP" else "$1"}
    assert max(seconds for _, seconds in answers) < 0.5


# -- per kind of call: reads inline where only writes may block ---------------------------------


class ThreadRecordingStore(MemoryStore):
    """A memory store that says its writes may block (as the durable store's do) and its reads
    do not (as its reads with --fsync everysec), and records the thread of each call."""

    may_block = True
    reads_may_block = False

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[tuple[str, str]] = []

    def get(self, key: str) -> Value:
        self.threads.append(("get", threading.current_thread().name))
        return super().get(key)

    def put(self, key: str, data: bytes, *args: Any, **kwargs: Any) -> Value:
        self.threads.append(("put", threading.current_thread().name))
        return super().put(key, data, *args, **kwargs)


def test_reads_run_on_the_loop_and_writes_on_workers_when_only_writes_may_block() -> None:
    store = ThreadRecordingStore()
    policy = execution_for(store)
    assert policy == ExecutionPolicy(reads=Execution.INLINE, writes=Execution.WORKERS)
    with running_resp(store, execution=policy) as server, RespConnection(server.port) as conn:
        # Pipelined: a read, then writes and reads, answered in order. The read runs on the
        # loop's thread and its batch stops before the write, which goes to a worker with
        # the rest of the pipeline (no hand-off back for a read behind a write).
        pipelined = [["GET", "k"], ["SET", "k", "1"], ["GET", "k"], ["GET", "k"], ["SET", "k", "2"]]
        conn.send(b"".join(command(*arguments) for arguments in pipelined))
        replies = [conn.reply() for _ in pipelined]
        assert replies == [b"$-1\r\n", b"+OK\r\n", b"$1\r\n1\r\n", b"$1\r\n1\r\n", b"+OK\r\n"]
        # One at a time: each where its kind runs.
        assert conn.ask("GET", "k") == b"$1\r\n2\r\n"
        assert conn.ask("SET", "k", "3") == b"+OK\r\n"
        assert conn.ask("GET", "k") == b"$1\r\n3\r\n"
    kinds = [(call, thread.split("_")[0]) for call, thread in store.threads]  # resp-worker_3
    assert kinds == [
        ("get", "resp-serve"),
        ("put", "resp-worker"),
        ("get", "resp-worker"),
        ("get", "resp-worker"),
        ("put", "resp-worker"),
        ("get", "resp-serve"),
        ("put", "resp-worker"),
        ("get", "resp-serve"),
    ]


def test_the_durable_store_reads_inline_unless_every_read_waits_for_a_sync(
    tmp_path: Path,
) -> None:
    for fsync, reads in (("always", Execution.WORKERS), ("everysec", Execution.INLINE)):
        store = DurableStore(tmp_path / fsync, fsync=fsync)
        try:
            assert execution_for(store) == ExecutionPolicy(reads=reads, writes=Execution.WORKERS)
        finally:
            store.close()
