"""The reply budget on its own, and each transport keeping to it over real sockets: a long
history is streamed over HTTP, a connection whose unsent reply does not fit is closed (logged,
counted) while the others are served, and every byte charged is given back."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from kvservice.config import load_config
from kvservice.execution import Execution
from kvservice.http.app import create_app, history_json
from kvservice.http.server import Server
from kvservice.metrics import Metrics
from kvservice.reply_budget import ReplyBudget, estimated_size
from kvservice.resp.codec import encode
from kvservice.store import HistoryEntry, Value
from kvservice.store.memory import MemoryStore
from tests.support.rawresp import RespConnection, command, running_resp
from tests.support.servers import http_settings

LONG_HISTORY = 6000
"""Entries of 1 KiB that is not UTF-8: 8 MB of JSON, 6 MB over RESP, more than the kernel's
socket buffers take (about 4 MB here) for a client that does not read."""
VALUE = bytes(range(256)) * 4


def test_a_reservation_fits_or_is_refused_whole_and_counted() -> None:
    budget = ReplyBudget(100)
    assert budget.reserve(60)
    assert not budget.reserve(41)
    assert budget.held_bytes == 60
    assert budget.reserve(40)
    assert budget.held_bytes == 100
    budget.release(100)
    assert budget.held_bytes == 0
    assert budget.refusals == 1


def test_settle_moves_a_charge_up_or_down_and_keeps_it_when_refused() -> None:
    budget = ReplyBudget(100)
    assert budget.settle(0, 70) == 70
    assert budget.settle(70, 20) == 20
    assert budget.held_bytes == 20
    assert budget.settle(20, 101) is None
    assert budget.held_bytes == 20
    assert budget.settle(20, 0) == 0
    assert budget.held_bytes == 0


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplyBudget(0)


def test_threads_reserving_at_once_never_take_more_than_the_budget() -> None:
    budget = ReplyBudget(1000)
    granted = [0] * 8
    start = threading.Barrier(len(granted))

    def reserve(worker: int) -> None:
        start.wait()
        for _ in range(500):
            granted[worker] += budget.reserve(1)
            budget.release(1)
            granted[worker] += budget.reserve(1)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(len(granted))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.held_bytes == 1000 == sum(granted) - 8 * 500
    assert budget.refusals == 8 * 1000 - sum(granted)


def test_the_budget_is_one_setting_with_a_flag_and_an_environment_variable() -> None:
    assert load_config([], environ={}).max_reply_buffer_bytes == 64 * 2**20
    assert load_config(["--max-reply-buffer-bytes", "1MiB"], environ={}).max_reply_buffer_bytes == (
        2**20
    )
    environ = {"KV_MAX_REPLY_BUFFER_BYTES": "12000000"}
    assert load_config([], environ=environ).max_reply_buffer_bytes == 12_000_000


def test_what_the_budget_holds_and_refuses_is_on_the_metrics_page() -> None:
    budget = ReplyBudget(100)
    metrics = Metrics(MemoryStore())
    metrics.watch_replies(budget)
    budget.reserve(60)
    budget.reserve(50)
    page = metrics.render(None)[0].decode()
    assert "kvservice_reply_buffer_bytes 60.0" in page
    assert "kvservice_reply_buffer_max_bytes 100.0" in page
    assert "kvservice_reply_buffer_closed_connections_total 1.0" in page


# -- over real sockets ---------------------------------------------------------------------


@pytest.fixture
def long_history() -> MemoryStore:
    store = MemoryStore()
    for _ in range(LONG_HISTORY):
        store.put("h", VALUE)
    return store


@pytest.fixture
def http_server(long_history: MemoryStore) -> Iterator[tuple[Server, ReplyBudget]]:
    """The app on the memory store, served on the event loop as kvservice serves it, with a
    reply budget of 1 KB: any reply held for a client that does not read is too much."""
    budget = ReplyBudget(1000)
    settings = http_settings(threads=4, socket_timeout_s=5.0, serve_inline=True)
    server = Server(create_app(long_history), settings, reply_budget=budget)
    server.start()
    try:
        yield server, budget
    finally:
        server.stop()


def slow_reader(port: int, request: bytes) -> socket.socket:
    """A connection that sends `request` and reads nothing, with a 4 KiB window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    while data := sock.recv(1 << 20):
        received += data
    return bytes(received)


def wait_until_released(budget: ReplyBudget) -> None:
    deadline = time.monotonic() + 5
    while budget.held_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert budget.held_bytes == 0


def test_a_long_history_streams_whole_to_a_client_that_reads(
    long_history: MemoryStore,
) -> None:
    """Chunked, serialised as the client reads it, the same bytes as history_json, and the
    next pipelined request is answered after it on the same connection."""
    budget = ReplyBudget(64 << 20)  # the default: the 7 MB snapshot, charged whole, fits
    settings = http_settings(threads=4, socket_timeout_s=5.0, serve_inline=True)
    server = Server(create_app(long_history), settings, reply_budget=budget)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"GET /h/history HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            time.sleep(0.5)  # the server fills the socket buffers and waits for the reader
            answer = read_to_end(sock)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        body = bytearray()
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        assert bytes(body) == history_json(long_history.history("h"))
        assert rest.startswith(b"\r\nHTTP/1.1 200 OK\r\n")
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["status"] == "ok"
        wait_until_released(budget)
    finally:
        server.stop()


def test_a_long_page_of_keys_streams_so_many_slow_readers_of_it_fit_the_budget() -> None:
    """`/_keys?limit=10000` over keys of 255 characters is 2.6 MB of JSON. It was built whole
    and held for a client that did not read: 200 such readers made /_health wait 1.4 s and
    grew the process by 140 MiB under a 64 MiB budget, 170 of them closed for it. Streamed
    as a history is, each holds a piece and its list of keys, and twenty fit in 4 MB."""
    store = MemoryStore(max_bytes=100_000_000)
    for number in range(10_000):
        store.put(f"{number:05d}" + "k" * 250, b"v")
    budget = ReplyBudget(4_000_000)
    settings = http_settings(threads=4, socket_timeout_s=5.0, serve_inline=True)
    server = Server(create_app(store), settings, reply_budget=budget)
    server.start()
    try:
        request = b"GET /_keys?limit=10000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        readers = [slow_reader(server.port, request) for _ in range(20)]
        time.sleep(0.5)  # each fills its socket buffers, and the server holds the rest
        assert budget.refusals == 0
        for reader in readers:
            answer = read_to_end(reader)
            reader.close()
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head
            page = json.loads(dechunked(rest))
            assert page == {"keys": store.keys(limit=10_000).keys, "next": None}
        wait_until_released(budget)
    finally:
        server.stop()


def dechunked(body: bytes) -> bytes:
    """A chunked body's data, up to its last chunk."""
    data = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(data)
        data += body[:size]
        body = body[size + 2 :]


def test_an_http_response_over_the_budget_closes_its_connection_and_others_are_served(
    long_history: MemoryStore,
    http_server: tuple[Server, ReplyBudget],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, budget = http_server
    with caplog.at_level(logging.WARNING, logger="kvservice.http"):
        reader = slow_reader(server.port, b"GET /h/history HTTP/1.1\r\nHost: x\r\n\r\n")
        health = requests.get(f"http://127.0.0.1:{server.port}/_health", timeout=5)
        received = read_to_end(reader)  # the server closed it, long before the end
        reader.close()
    assert health.status_code == 200
    assert b"HTTP/1.1 200 OK" in received
    assert len(received) < len(history_json(long_history.history("h")))
    assert budget.refusals == 1
    assert any("do not fit the reply budget" in r.getMessage() for r in caplog.records)
    wait_until_released(budget)


@pytest.mark.parametrize("execution", list(Execution), ids=lambda execution: execution.value)
def test_a_resp_reply_over_the_budget_closes_its_connection_and_others_are_served(
    long_history: MemoryStore, caplog: pytest.LogCaptureFixture, execution: Execution
) -> None:
    budget = ReplyBudget(1000)
    with (
        caplog.at_level(logging.WARNING, logger="kvservice.resp"),
        running_resp(long_history, reply_budget=budget, execution=execution) as server,
    ):
        reader = slow_reader(server.port, command("HISTORY", "h"))
        time.sleep(0.3)
        with RespConnection(server.port) as other:
            assert other.ask("PING") == b"+PONG\r\n"
        received = read_to_end(reader)
        reader.close()
        wait_until_released(budget)
    assert received.startswith(b"*%d\r\n" % LONG_HISTORY)
    assert len(received) < LONG_HISTORY * len(VALUE)
    assert budget.refusals == 1
    assert any("do not fit the reply budget" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("execution", list(Execution), ids=lambda execution: execution.value)
def test_a_long_resp_reply_streams_whole_and_the_commands_after_it_are_answered_in_order(
    long_history: MemoryStore, execution: Execution
) -> None:
    """Encoded as it is sent, the same bytes as encoded whole; the PING and QUIT pipelined
    behind it are answered after it, and QUIT closes the connection once all is sent (with
    the commands run on the loop, and on workers as for Redis)."""
    budget = ReplyBudget(64 << 20)  # the default: the 7 MB snapshot, charged whole, fits
    expected = encode([[entry.timestamp_ms, entry.data] for entry in long_history.history("h")])
    with running_resp(long_history, reply_budget=budget, execution=execution) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(command("HISTORY", "h") + command("PING") + command("QUIT"))
            time.sleep(0.5)  # the server fills the socket buffers and waits for the reader
            received = read_to_end(sock)
        wait_until_released(budget)
    assert received == expected + b"+PONG\r\n+OK\r\n"


def test_a_head_of_a_long_history_has_its_length_and_keeps_the_connection(
    long_history: MemoryStore,
) -> None:
    """HEAD gets the Content-Length a GET's body would have, counted without building the
    body, and the request pipelined after it is answered on the same connection."""
    settings = http_settings(threads=4, socket_timeout_s=5.0, serve_inline=True)
    server = Server(create_app(long_history), settings, reply_budget=ReplyBudget(1 << 20))
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"HEAD /h/history HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = read_to_end(sock)
    finally:
        server.stop()
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = len(history_json(long_history.history("h")))
    assert b"Content-Length: %d\r\n" % length in head + b"\r\n"
    assert b"Transfer-Encoding" not in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), "the pipelined request was answered"


class FreshCopies(MemoryStore):
    """A memory store whose histories are fresh copies of the bytes, as Redis's are: a
    snapshot being sent holds all of them."""

    copies_on_read = True

    def history(self, key: str) -> list[HistoryEntry]:
        return [
            HistoryEntry(
                None if entry.data is None else bytes(bytearray(entry.data)), entry.timestamp_ms
            )
            for entry in super().history(key)
        ]


@pytest.fixture
def fresh_history() -> FreshCopies:
    store = FreshCopies()
    for _ in range(2000):
        store.put("h", VALUE)
    return store


def test_a_streamed_http_history_is_charged_the_bytes_it_holds(
    fresh_history: FreshCopies,
) -> None:
    """2 MB of history held for one slow reader does not fit a 1 MiB budget: the snapshot
    is charged what its entries take, not the size of the list that points at them."""
    budget = ReplyBudget(1 << 20)
    settings = http_settings(threads=4, socket_timeout_s=5.0, serve_inline=True)
    server = Server(create_app(fresh_history), settings, reply_budget=budget)
    server.start()
    try:
        reader = slow_reader(server.port, b"GET /h/history HTTP/1.1\r\nHost: x\r\n\r\n")
        read_to_end(reader)
        reader.close()
        wait_until_released(budget)
    finally:
        server.stop()
    assert budget.refusals == 1


@pytest.mark.parametrize("execution", list(Execution), ids=lambda execution: execution.value)
def test_a_streamed_resp_reply_is_charged_the_bytes_it_holds(
    fresh_history: FreshCopies, execution: Execution
) -> None:
    """The same over RESP: HISTORY's items are charged with their bytes."""
    budget = ReplyBudget(1 << 20)
    with running_resp(fresh_history, reply_budget=budget, execution=execution) as server:
        reader = slow_reader(server.port, command("HISTORY", "h"))
        read_to_end(reader)
        reader.close()
        wait_until_released(budget)
    assert budget.refusals == 1


@pytest.mark.parametrize("execution", list(Execution), ids=lambda execution: execution.value)
def test_one_read_of_many_large_replies_is_answered_a_batch_at_a_time(
    execution: Execution,
) -> None:
    """200 HISTORY commands of 300 KB each in one send: run all at once, their replies would
    hold 60 MB before the first is written, far past a 4 MiB budget, and the connection would
    be closed; run a batch at a time, each written before the next runs, all are answered."""
    store = MemoryStore()
    for _ in range(300):
        store.put("h", VALUE)
    budget = ReplyBudget(4 << 20)
    expected = encode([[entry.timestamp_ms, entry.data] for entry in store.history("h")])
    with running_resp(store, reply_budget=budget, execution=execution) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(command("HISTORY", "h") * 200 + command("QUIT"))
            received = read_to_end(sock)
        wait_until_released(budget)
    assert budget.refusals == 0
    assert received == expected * 200 + b"+OK\r\n"


class SlowStore(MemoryStore):
    """A store whose reads take 0.25 s, as a distant Redis's do; it counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: str) -> Value:
        time.sleep(0.25)
        self.reads += 1
        return super().get(key)


def test_a_stop_ends_a_batch_on_a_worker_between_commands() -> None:
    """Twenty pipelined GETs on a slow store, and the server told to stop after the first
    has started: the batch stops at the next command, so the store is not called for the
    rest after the server has stopped, and no worker outlives the stop."""
    store = SlowStore()
    store.put("k", b"v")
    with (
        running_resp(store, execution=Execution.WORKERS, shutdown_timeout_s=2.0) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        sock.sendall(command("GET", "k") * 20)
        time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        stopped_after_s = time.monotonic() - started
        reads_at_stop = store.reads
        time.sleep(0.6)
    assert stopped_after_s < 2.0
    assert store.reads == reads_at_stop <= 2, "the store was called after the stop"
    workers = [t for t in threading.enumerate() if t.name.startswith("resp-worker")]
    assert not [t for t in workers if t.is_alive()], "a worker outlived the stop"


def test_a_long_sequence_is_sized_from_a_sample_a_short_one_whole() -> None:
    """A short list is measured item by item; a long one from a random sample, within a few
    per cent when its items are alike, and a value that stands out still moves the estimate
    on average (no fixed positions a client could write around)."""
    short = [b"x" * 10, b"y" * 1000]
    assert estimated_size(short, sys.getsizeof) == sys.getsizeof(short) + sum(
        map(sys.getsizeof, short)
    )
    alike = [b"v" * 1000] * 10_000
    exact = sys.getsizeof(alike) + 10_000 * sys.getsizeof(alike[0])
    assert estimated_size(alike, sys.getsizeof) == exact
    mixed = [b"v" * (1000 if index % 2 else 10) for index in range(10_000)]
    exact = sys.getsizeof(mixed) + sum(map(sys.getsizeof, mixed))
    estimates = [estimated_size(mixed, sys.getsizeof) for _ in range(200)]
    assert abs(sum(estimates) / len(estimates) - exact) < 0.05 * exact
