"""The reply budget on its own, and each transport keeping to it over real sockets: a long
history is streamed over HTTP, a connection whose unsent reply does not fit is closed (logged,
counted) while the others are served, and every byte charged is given back."""

from __future__ import annotations

import json
import logging
import socket
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
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.codec import encode
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
    budget = ReplyBudget(1 << 20)
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
    with caplog.at_level(logging.WARNING, logger="kvservice.gate"):
        reader = slow_reader(server.port, b"GET /h/history HTTP/1.1\r\nHost: x\r\n\r\n")
        health = requests.get(f"http://127.0.0.1:{server.port}/_health", timeout=5)
        received = read_to_end(reader)  # the server closed it, long before the end
        reader.close()
    assert health.status_code == 200
    assert b"HTTP/1.1 200 OK" in received
    assert len(received) < len(history_json(long_history.history("h")))
    assert budget.refusals == 1
    assert any("does not fit the reply budget" in r.getMessage() for r in caplog.records)
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
    budget = ReplyBudget(1 << 20)
    expected = encode([[entry.timestamp_ms, entry.data] for entry in long_history.history("h")])
    with running_resp(long_history, reply_budget=budget, execution=execution) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(command("HISTORY", "h") + command("PING") + command("QUIT"))
            time.sleep(0.5)  # the server fills the socket buffers and waits for the reader
            received = read_to_end(sock)
        wait_until_released(budget)
    assert received == expected + b"+PONG\r\n+OK\r\n"
