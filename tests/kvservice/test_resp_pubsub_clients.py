"""Keyspace notifications as Redis clients use them, over real sockets: redis-py's pubsub API
in RESP2 and RESP3 against kvservice serving one store (with its change feed) over RESP and
HTTP, so a write over either transport reaches a RESP subscriber; and what a subscription
costs the server: a subscriber that falls behind is closed, one that waits is not timed out,
one without a token is refused."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests

from kvservice.auth import Access, Tokens
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.http.app import create_app
from kvservice.http.server import Server
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.server import RespServer
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from tests.support.processes import free_port, kvservice_process
from tests.support.rawresp import RespConnection, command, running_resp
from tests.support.servers import http_settings


@dataclass(frozen=True)
class Served:
    """One store, its change feed, served over HTTP and RESP."""

    http_url: str
    resp: RespServer
    feed: ChangeFeed


@pytest.fixture
def served(background_stops: list[threading.Thread]) -> Iterator[Served]:
    store = StoreService(MemoryStore())
    feed = ChangeFeed(store, FeedSettings())
    http = Server(create_app(store), http_settings(threads=4, socket_timeout_s=2.0))
    http.start()
    try:
        with running_resp(store, changes=feed) as resp:
            yield Served(f"http://127.0.0.1:{http.port}", resp, feed)
    finally:
        feed.close()
        stop = threading.Thread(target=http.stop)  # cheroot takes 0.5 s; off the critical path
        stop.start()
        background_stops.append(stop)


def confirmed(pubsub: Any, count: int, timeout_s: float = 5.0) -> None:
    """Wait for `count` (un)subscription confirmations: redis-py sends (P)(UN)SUBSCRIBE
    without waiting for them, and a write another connection makes meanwhile may reach the
    server first (notifications are fire and forget: it would be missed, or heard after)."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < count:
        assert time.monotonic() < deadline, f"{seen} of {count} confirmations"
        message = pubsub.get_message(timeout=0.2)
        if message is not None:
            assert message["type"] in {"subscribe", "psubscribe", "unsubscribe", "punsubscribe"}
            seen += 1


def messages(pubsub: Any, count: int, timeout_s: float = 5.0) -> list[tuple[Any, ...]]:
    """The next `count` messages (kind, pattern, channel, data), waiting at most `timeout_s`."""
    received: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            received.append(
                (message["type"], message["pattern"], message["channel"], message["data"])
            )
    return received


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_hears_writes_over_resp_and_http(served: Served, protocol: int) -> None:
    client = redis.Redis(port=served.resp.port, protocol=protocol, socket_timeout=5)
    try:
        assert client.config_get("notify-keyspace-events") == {"notify-keyspace-events": ""}
        assert client.config_set("notify-keyspace-events", "KEA") is True
        assert client.config_get("notify-keyspace-events") == {"notify-keyspace-events": "AKE"}
        pubsub = client.pubsub()
        pubsub.subscribe("__keyspace@0__:k")
        pubsub.psubscribe("__keyevent@0__:*")
        confirmed(pubsub, 2)

        client.set("k", "v")
        requests.put(f"{served.http_url}/k", data=b"w", timeout=5).raise_for_status()
        requests.delete(f"{served.http_url}/k", timeout=5).raise_for_status()
        client.set("j", "v")

        assert messages(pubsub, 7) == [
            ("message", None, b"__keyspace@0__:k", b"set"),
            ("pmessage", b"__keyevent@0__:*", b"__keyevent@0__:set", b"k"),
            ("message", None, b"__keyspace@0__:k", b"set"),
            ("pmessage", b"__keyevent@0__:*", b"__keyevent@0__:set", b"k"),
            ("message", None, b"__keyspace@0__:k", b"del"),
            ("pmessage", b"__keyevent@0__:*", b"__keyevent@0__:del", b"k"),
            ("pmessage", b"__keyevent@0__:*", b"__keyevent@0__:set", b"j"),
        ]
        pubsub.unsubscribe()  # type: ignore[no-untyped-call]
        pubsub.punsubscribe()  # type: ignore[no-untyped-call]
        confirmed(pubsub, 2)
        client.set("k", "again")
        assert messages(pubsub, 1, timeout_s=0.5) == []
        pubsub.close()
    finally:
        client.close()


def test_an_expiry_is_told_once_the_store_notices_it(served: Served) -> None:
    client = redis.Redis(port=served.resp.port, protocol=2, socket_timeout=5)
    try:
        client.config_set("notify-keyspace-events", "Ex")
        pubsub = client.pubsub()
        pubsub.subscribe("__keyevent@0__:expired")
        confirmed(pubsub, 1)
        client.set("k", "v", px=50)
        time.sleep(0.2)
        assert client.get("k") is None
        assert messages(pubsub, 1) == [("message", None, b"__keyevent@0__:expired", b"k")]
        pubsub.close()
    finally:
        client.close()


def test_a_subscriber_that_falls_behind_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    """It stops reading while keys are written: its queue passes the bound, and once the
    connection can write again it is closed, with a line in the log, instead of being sent
    every message (or holding them)."""
    store = MemoryStore()
    feed = ChangeFeed(store, FeedSettings())
    writes = 4_000
    key = "k" * 255
    with (
        caplog.at_level(logging.WARNING, logger="kvservice.resp"),
        running_resp(store, changes=feed, max_pending_notifications=100) as server,
    ):
        subscriber = socket.socket()
        subscriber.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        subscriber.connect(("127.0.0.1", server.port))
        subscriber.settimeout(5)
        with RespConnection(server.port) as writer:
            assert writer.ask("CONFIG", "SET", "notify-keyspace-events", "KE$") == b"+OK\r\n"
            subscriber.sendall(command("PSUBSCRIBE", "*"))
            time.sleep(0.2)
            writer.send(b"".join(command("SET", key, str(n)) for n in range(writes)))
            for _ in range(writes):
                assert writer.reply() == b"+OK\r\n"
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := subscriber.recv(65536):
                received += chunk
        subscriber.close()
    feed.close()
    assert received.count(b"pmessage") < 2 * writes
    assert "keyspace notifications unread" in caplog.text


def test_a_subscriber_s_unsent_notifications_are_charged_to_the_reply_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It stops reading while keys are written: its queued notifications are charged to the
    reply budget with the rest of the unsent replies, so it is closed once they do not fit
    (or once its write buffer does not fit beside them), whatever their count, and the
    budget is given back."""
    store = MemoryStore()
    feed = ChangeFeed(store, FeedSettings())
    budget = ReplyBudget(256 * 1024)
    writes = 20_000  # 40,000 messages of about 310 bytes: 12 MB, more than the kernel holds
    key = "k" * 255
    with (
        caplog.at_level(logging.WARNING, logger="kvservice.resp"),
        running_resp(
            store, changes=feed, reply_budget=budget, max_pending_notifications=10 * writes
        ) as server,
    ):
        subscriber = socket.socket()
        subscriber.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        subscriber.connect(("127.0.0.1", server.port))
        subscriber.settimeout(5)
        with RespConnection(server.port) as writer:
            assert writer.ask("CONFIG", "SET", "notify-keyspace-events", "KE$") == b"+OK\r\n"
            subscriber.sendall(command("PSUBSCRIBE", "*"))
            time.sleep(0.2)
            writer.send(b"".join(command("SET", key, str(n)) for n in range(writes)))
            for _ in range(writes):
                assert writer.reply() == b"+OK\r\n"
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := subscriber.recv(65536):
                received += chunk
        subscriber.close()
        deadline = time.monotonic() + 5
        while budget.held_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert budget.held_bytes == 0
    feed.close()
    assert received.count(b"pmessage") < writes
    assert "fit the reply budget" in caplog.text


def test_a_subscriber_is_not_timed_out_while_it_waits() -> None:
    store = MemoryStore()
    feed = ChangeFeed(store, FeedSettings())
    with (
        running_resp(store, changes=feed, idle_timeout_s=0.4) as server,
        RespConnection(server.port, timeout_s=5) as subscriber,
        RespConnection(server.port, timeout_s=5) as idle,
    ):
        assert idle.ask("CONFIG", "SET", "notify-keyspace-events", "E$") == b"+OK\r\n"
        subscriber.ask("SUBSCRIBE", "__keyevent@0__:set")
        time.sleep(1.5)
        assert idle.rest_and_closed() == (b"", True)  # an idle connection is closed
        with RespConnection(server.port) as writer:
            assert writer.ask("SET", "k", "v") == b"+OK\r\n"
        assert subscriber.reply() == (
            b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$1\r\nk\r\n"
        )
    feed.close()


def test_subscribing_needs_a_token_and_config_set_a_write_token() -> None:
    tokens = Tokens.of(("reader-token", Access.READ, "reader"))
    with running_resp(tokens=tokens) as server, RespConnection(server.port) as connection:
        assert connection.ask("SUBSCRIBE", "a") == b"-NOAUTH Authentication required.\r\n"
        assert connection.ask("AUTH", "reader-token") == b"+OK\r\n"
        assert connection.ask("CONFIG", "SET", "notify-keyspace-events", "KEA").startswith(
            b"-NOPERM the token reader may read, not run the 'config|set' command"
        )
        assert connection.ask("SUBSCRIBE", "a").endswith(b":1\r\n")
        assert connection.ask("RESET") == b"+RESET\r\n"  # and no longer authenticated
        assert connection.ask("PING") == b"+PONG\r\n"
        assert connection.ask("GET", "k") == b"-NOAUTH Authentication required.\r\n"


def test_the_kvservice_process_publishes_writes_over_http_to_resp_subscribers() -> None:
    """As `kvservice` runs (its composition root hands the change feed to RESP)."""
    resp_port = free_port()
    with kvservice_process("--resp-port", str(resp_port)) as service:
        client = redis.Redis(port=resp_port, protocol=3, socket_timeout=5)
        try:
            client.config_set("notify-keyspace-events", "K$")
            pubsub = client.pubsub()
            pubsub.psubscribe("__keyspace@0__:*")
            confirmed(pubsub, 1)
            requests.put(f"{service.url}/k", data=b"v", timeout=5).raise_for_status()
            assert messages(pubsub, 1) == [
                ("pmessage", b"__keyspace@0__:*", b"__keyspace@0__:k", b"set")
            ]
            pubsub.close()
        finally:
            client.close()


def test_a_write_reaches_every_one_of_200_subscribers() -> None:
    """Each parked connection is woken for its message: no thread per subscriber, none
    missed."""
    store = MemoryStore()
    feed = ChangeFeed(store, FeedSettings())
    expected = b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$1\r\nk\r\n"
    with running_resp(store, changes=feed) as server, contextlib.ExitStack() as stack:
        subscribers = [
            stack.enter_context(RespConnection(server.port, timeout_s=5)) for _ in range(200)
        ]
        for subscriber in subscribers:
            subscriber.send(command("SUBSCRIBE", "__keyevent@0__:set"))
        for subscriber in subscribers:
            assert subscriber.reply().endswith(b":1\r\n")
        threads_before = threading.active_count()
        with RespConnection(server.port) as writer:
            assert writer.ask("CONFIG", "SET", "notify-keyspace-events", "E$") == b"+OK\r\n"
            assert writer.ask("SET", "k", "v") == b"+OK\r\n"
        assert [subscriber.reply() for subscriber in subscribers] == [expected] * 200
        assert threading.active_count() <= threads_before
    feed.close()
