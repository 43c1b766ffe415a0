"""The RESP transport over a real socket: every command byte for byte, errors, limits, stop.

Replies are compared as the bytes on the wire. The store under the server is the real one;
where timestamps matter it runs on a hand-driven clock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kvservice.__main__ import TRANSPORTS, Security, resp_settings
from kvservice.config import Config, load_config
from kvservice.execution import Execution
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.server import RespServer, RespSettings
from kvservice.store import (
    NO_CONDITION,
    NO_EXPIRY,
    Expiry,
    InvalidKey,
    Precondition,
    Store,
    StoreFull,
    Value,
    ValueTooLarge,
    validate_key,
)
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from tests.support.clock import FakeClock
from tests.support.processes import free_port, start_service
from tests.support.rawresp import RespConnection, command, running_resp
from tests.support.servers import resp_test_settings

OK = b"+OK\r\n"
NIL = b"$-1\r\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000_000)


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return MemoryStore(clock=clock)


@pytest.fixture(params=list(Execution), ids=lambda execution: execution.value)
def server(store: Store, request: pytest.FixtureRequest) -> Iterator[RespServer]:
    """The server, with commands run on its loop and, again, on workers (as for Redis)."""
    with running_resp(store, idle_timeout_s=5.0, execution=request.param) as resp_server:
        yield resp_server


@pytest.fixture
def conn(server: RespServer) -> Iterator[RespConnection]:
    with RespConnection(server.port) as connection:
        yield connection


def error_line(message: str, code: str = "ERR") -> bytes:
    return f"-{code} {message}\r\n".encode()


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def store_message(error_type: type[Exception], call: object) -> str:
    """The message the store raises for a call, to compare replies with."""
    with pytest.raises(error_type) as raised:
        call()  # type: ignore[operator]
    return str(raised.value)


# -- commands --------------------------------------------------------------------------------------


def test_ping_with_and_without_a_message(conn: RespConnection) -> None:
    assert conn.ask("PING") == b"+PONG\r\n"
    assert conn.ask("ping", "hello there") == bulk(b"hello there")
    assert conn.ask("PING", "a", "b") == error_line("wrong number of arguments for 'ping' command")


def test_set_then_get_returns_the_exact_bytes(conn: RespConnection) -> None:
    assert conn.ask("SET", "foo", "hello world!") == OK
    assert conn.ask("GET", "foo") == bulk(b"hello world!")
    assert conn.ask("set", "foo", "") == OK
    assert conn.ask("get", "foo") == b"$0\r\n\r\n"


def test_get_of_a_key_without_a_value_is_nil(conn: RespConnection) -> None:
    assert conn.ask("GET", "nothing") == NIL


def test_set_nx_creates_only_and_xx_overwrites_only(conn: RespConnection, store: Store) -> None:
    assert conn.ask("SET", "k", "first", "NX") == OK
    assert conn.ask("SET", "k", "second", "nx") == NIL
    assert conn.ask("GET", "k") == bulk(b"first")
    assert conn.ask("SET", "other", "v", "XX") == NIL
    assert conn.ask("GET", "other") == NIL
    assert conn.ask("SET", "k", "third", "xx") == OK
    assert conn.ask("GET", "k") == bulk(b"third")
    assert [entry.data for entry in store.history("k")] == [b"third", b"first"]
    assert store.history("other") == []


@pytest.mark.parametrize(
    "options", [["NX", "XX"], ["EX"], ["EX", "10", "PX", "10"], ["KEEPTTL", "EX", "1"], ["FOO"]]
)
def test_set_refuses_options_redis_refuses_with_its_syntax_error(
    conn: RespConnection, options: list[str]
) -> None:
    reply = conn.ask("SET", "k", "v", *options)

    assert reply == error_line("syntax error")
    assert conn.ask("GET", "k") == NIL


def test_del_counts_what_it_deleted_and_writes_history_only_for_those(
    conn: RespConnection, store: Store
) -> None:
    conn.ask("SET", "a", "1")
    conn.ask("SET", "b", "2")

    assert conn.ask("DEL", "a", "b", "c") == b":2\r\n"
    assert conn.ask("DEL", "a") == b":0\r\n"
    assert conn.ask("GET", "a") == NIL
    assert [entry.data for entry in store.history("a")] == [None, b"1"]
    assert store.history("c") == []


def test_del_with_an_invalid_key_deletes_nothing(conn: RespConnection) -> None:
    conn.ask("SET", "a", "1")

    reply = conn.ask("DEL", "a", "b-c")

    assert reply.startswith(b"-INVALIDKEY The key has the character '-' at position 1")
    assert conn.ask("GET", "a") == bulk(b"1")


def test_exists_counts_keys_with_a_value(conn: RespConnection) -> None:
    conn.ask("SET", "a", "1")
    conn.ask("SET", "b", "2")
    conn.ask("DEL", "b")

    assert conn.ask("EXISTS", "a", "b", "c", "a") == b":2\r\n"
    assert conn.ask("EXISTS") == error_line("wrong number of arguments for 'exists' command")


def test_echo_answers_its_argument(conn: RespConnection) -> None:
    assert conn.ask("ECHO", "hello there") == bulk(b"hello there")
    assert conn.ask("ECHO") == error_line("wrong number of arguments for 'echo' command")


def test_mget_answers_each_keys_value_or_nil_in_order(conn: RespConnection) -> None:
    conn.ask("SET", "a", "1")
    conn.ask("SET", "b", "")
    conn.ask("SET", "gone", "x")
    conn.ask("DEL", "gone")

    assert conn.ask("MGET", "b", "nothing", "a", "gone", "a") == (
        b"*5\r\n$0\r\n\r\n$-1\r\n$1\r\n1\r\n$-1\r\n$1\r\n1\r\n"
    )
    assert conn.ask("MGET", "a", "b-c").startswith(
        b"-INVALIDKEY The key has the character '-' at position 1"
    )
    assert conn.ask("MGET") == error_line("wrong number of arguments for 'mget' command")


def test_history_lists_timestamps_and_values_newest_first(
    conn: RespConnection, clock: FakeClock
) -> None:
    t0 = clock.now_ms
    conn.ask("SET", "h", "one")
    clock.advance(5)
    conn.ask("SET", "h", "two")
    clock.advance(7)
    conn.ask("DEL", "h")

    assert conn.ask("HISTORY", "h") == (
        b"*3\r\n"
        b"*2\r\n:%d\r\n$-1\r\n"
        b"*2\r\n:%d\r\n$3\r\ntwo\r\n"
        b"*2\r\n:%d\r\n$3\r\none\r\n" % (t0 + 12, t0 + 5, t0)
    )
    assert conn.ask("HISTORY", "never") == b"*0\r\n"


def test_history_forgets_writes_outside_the_window(conn: RespConnection, clock: FakeClock) -> None:
    conn.ask("SET", "h", "old")
    clock.advance(120_001)

    assert conn.ask("HISTORY", "h") == b"*0\r\n"
    assert conn.ask("GET", "h") == bulk(b"old")


def test_quit_answers_ok_then_closes(conn: RespConnection) -> None:
    conn.send(command("QUIT") + command("PING"))

    assert conn.rest_and_closed() == (OK, True)


def test_unknown_commands_and_wrong_arity_are_errors_that_keep_the_connection(
    conn: RespConnection,
) -> None:
    assert conn.ask("FOO", "bar") == error_line("unknown command 'FOO'")
    assert conn.ask("MULTI") == error_line("unknown command 'MULTI'")
    assert conn.ask("GET") == error_line("wrong number of arguments for 'get' command")
    assert conn.ask("get", "a", "b") == error_line("wrong number of arguments for 'get' command")
    assert conn.ask("HISTORY") == error_line("wrong number of arguments for 'history' command")
    assert conn.ask("PING") == b"+PONG\r\n"


def test_a_command_name_with_line_breaks_cannot_inject_a_reply(conn: RespConnection) -> None:
    reply = conn.ask(b"X\r\n+OK")

    assert reply == error_line("unknown command 'X\\r\\n+OK'")
    assert conn.ask("PING") == b"+PONG\r\n"


# -- listing keys: SCAN, KEYS, DBSIZE --------------------------------------------------------------


def scan_reply(cursor: bytes, keys: list[str]) -> bytes:
    """A SCAN reply as the bytes on the wire."""
    return (
        b"*2\r\n" + bulk(cursor) + b"*%d\r\n" % len(keys) + b"".join(bulk(k.encode()) for k in keys)
    )


def scan(conn: RespConnection, cursor: bytes, *options: str) -> tuple[bytes, list[bytes]]:
    """One SCAN page: the next cursor and the keys, parsed from the raw reply."""
    conn.send(command("SCAN", cursor, *options))
    head = conn.stream.readline()
    assert head == b"*2\r\n", head
    next_cursor = conn.stream.readline()
    assert next_cursor.startswith(b"$")
    cursor_value = conn.stream.readline()[:-2]
    count = int(conn.stream.readline()[1:-2])
    keys = []
    for _ in range(count):
        length = int(conn.stream.readline()[1:-2])
        keys.append(conn.stream.read(length + 2)[:-2])
    return cursor_value, keys


def scan_all(conn: RespConnection, *options: str) -> list[bytes]:
    """Every key a full SCAN iteration hands out, in the order handed out."""
    cursor, listed = b"0", []
    for _ in range(10_000):
        cursor, keys = scan(conn, cursor, *options)
        listed += keys
        if cursor == b"0":
            return listed
    raise AssertionError("SCAN never returned cursor 0")


def test_dbsize_counts_keys_with_a_value(conn: RespConnection) -> None:
    assert conn.ask("DBSIZE") == b":0\r\n"
    for key in ["a", "b", "c"]:
        conn.ask("SET", key, "v")
    conn.ask("DEL", "b")
    assert conn.ask("DBSIZE") == b":2\r\n"
    assert conn.ask("DBSIZE", "x") == error_line("wrong number of arguments for 'dbsize' command")


def test_keys_lists_the_matching_keys_in_order(conn: RespConnection) -> None:
    for key in ["user1", "user2", "user10", "video1", "gone"]:
        conn.ask("SET", key, "v")
    conn.ask("DEL", "gone")
    assert conn.ask("KEYS", "*") == b"*4\r\n" + b"".join(
        bulk(k) for k in [b"user1", b"user10", b"user2", b"video1"]
    )
    assert conn.ask("KEYS", "user?") == b"*2\r\n" + bulk(b"user1") + bulk(b"user2")
    assert conn.ask("KEYS", "*1") == b"*2\r\n" + bulk(b"user1") + bulk(b"video1")
    assert conn.ask("KEYS", "nothing*") == b"*0\r\n"
    assert conn.ask("KEYS", "bad-*") == b"*0\r\n", "a prefix no key can have matches nothing"


def test_keys_over_more_keys_than_it_reads_is_refused_pointing_to_scan() -> None:
    """KEYS built its whole answer in one go: 200,000 keys held every other client for 80 ms,
    twenty such commands for 1.6 s. Past 100,000 keys (MAX_KEYS_READ) under its prefix it is
    an error; a narrower prefix, and SCAN, still reach every key."""
    store = MemoryStore(max_bytes=100_000_000)
    for number in range(100_001):  # MAX_KEYS_READ, and one more
        store.put(f"k{number:06d}", b"v")
    store.put("other", b"v")
    with running_resp(store) as server, RespConnection(server.port) as conn:
        for pattern in ("*", "k*", "*1", "k*1"):
            reply = conn.ask("KEYS", pattern)
            assert reply.startswith(b"-ERR KEYS reads at most 100000 keys"), (pattern, reply)
            assert b"use SCAN" in reply
        assert conn.ask("KEYS", "k09999?").startswith(b"*10\r\n")
        assert conn.ask("KEYS", "k0*1").startswith(b"*10000\r\n"), "exactly 100,000 read"
        assert conn.ask("KEYS", "o*") == b"*1\r\n" + bulk(b"other")
        assert conn.ask("SCAN", "0", "MATCH", "k1*", "COUNT", "10").startswith(b"*2\r\n")


def test_keys_past_due_keys_not_yet_swept_counts_them_as_read(clock: FakeClock) -> None:
    """A store's page may come back short, having skipped keys past their deadline: KEYS pages
    on and still answers every live key, and counts each page as read in full, so a keyspace
    of due keys (a wave the sweeper has not removed yet) is not walked without bound."""
    store = MemoryStore(clock=clock, max_bytes=1_000_000_000)
    deadline = Expiry(at_ms=clock.now_ms + 1)
    live = [f"k{number:06d}".encode() for number in range(500, 30_000, 1_000)]
    for number in range(30_000):
        expiry = NO_EXPIRY if number % 1_000 == 500 else deadline
        store.put(f"k{number:06d}", b"v", expiry=expiry)
    clock.advance(1)
    with running_resp(store) as server, RespConnection(server.port) as conn:
        assert conn.ask("KEYS", "*") == b"*30\r\n" + b"".join(bulk(key) for key in live)
        deadline = Expiry(at_ms=clock.now_ms + 1)
        for number in range(30_000, 110_000):  # past MAX_KEYS_READ, however pages end
            store.put(f"k{number:06d}", b"v", expiry=deadline)
        clock.advance(1)
        assert conn.ask("KEYS", "*").startswith(b"-ERR KEYS reads at most 100000 keys")


def test_scan_walks_every_key_once_with_the_cursors_it_hands_out(conn: RespConnection) -> None:
    written = sorted(f"k{number:03d}".encode() for number in range(95))
    for key in written:
        conn.ask("SET", key, "v")

    assert scan_all(conn) == written, "10 keys a page by default"
    assert scan_all(conn, "COUNT", "7") == written
    assert scan_all(conn, "COUNT", "1000") == written
    assert scan_all(conn, "MATCH", "k0*", "COUNT", "3") == [k for k in written if k < b"k1"]
    assert scan_all(conn, "MATCH", "*5") == [k for k in written if k.endswith(b"5")]


def test_a_scan_page_reads_at_most_a_thousand_keys_whatever_count_says(
    conn: RespConnection,
) -> None:
    """COUNT 10000 over keys of 255 bytes was 13.5 ms and a 2.6 MB reply encoded whole; two
    hundred clients sending it at once held everyone else for a second. COUNT is a hint (in
    Redis too): a page reads at most 1,000 keys, and the iteration still reaches them all."""
    written = sorted(f"{number:04d}".encode() + b"k" * 251 for number in range(2_500))
    for first in range(0, len(written), 500):
        conn.send(b"".join(command("SET", key, "v") for key in written[first : first + 500]))
        assert [conn.reply() for _ in range(500)] == [OK] * 500

    cursor, keys = scan(conn, b"0", "COUNT", "10000")
    assert keys == written[:1000]
    assert cursor != b"0"
    assert scan_all(conn, "COUNT", "999999999999") == written


def test_scan_pages_are_count_keys_and_matching_filters_them(conn: RespConnection) -> None:
    for key in ["a1", "a2", "b1", "b2", "c1"]:
        conn.ask("SET", key, "v")
    cursor, keys = scan(conn, b"0", "COUNT", "2")
    assert keys == [b"a1", b"a2"]
    assert cursor not in (b"0", b"")
    assert scan(conn, cursor, "COUNT", "10") == (b"0", [b"b1", b"b2", b"c1"])
    # MATCH filters each page after it is read (as Redis does), so a page may come back empty.
    cursor, keys = scan(conn, b"0", "MATCH", "*2", "COUNT", "1")
    assert keys == []
    assert cursor != b"0"
    assert conn.ask("SCAN", "0", "TYPE", "hash") == scan_reply(b"0", [])
    assert conn.ask("SCAN", "0", "TYPE", "string", "COUNT", "1") != scan_reply(b"0", [])


def test_a_cursor_is_good_on_any_connection_of_the_server(server: RespServer) -> None:
    with RespConnection(server.port) as first, RespConnection(server.port) as second:
        for key in ["a", "b", "c"]:
            first.ask("SET", key, "v")
        cursor, keys = scan(first, b"0", "COUNT", "2")
        assert keys == [b"a", b"b"]
        assert scan(second, cursor) == (b"0", [b"c"])


@pytest.mark.parametrize(
    ("arguments", "reply"),
    [
        (["SCAN", "x"], error_line("invalid cursor")),
        (["SCAN", "-1"], error_line("invalid cursor")),
        (
            ["SCAN", "12345"],
            error_line("invalid cursor; it is unknown to this server or too old, scan again"),
        ),
        (["SCAN", "0", "COUNT", "0"], error_line("syntax error")),
        (["SCAN", "0", "COUNT", "ten"], error_line("value is not an integer or out of range")),
        (["SCAN", "0", "MATCH"], error_line("syntax error")),
        (["SCAN", "0", "LIMIT", "5"], error_line("syntax error")),
        (["SCAN"], error_line("wrong number of arguments for 'scan' command")),
        (["KEYS"], error_line("wrong number of arguments for 'keys' command")),
        (["KEYS", "a", "b"], error_line("wrong number of arguments for 'keys' command")),
    ],
)
def test_bad_listing_commands_get_redis_errors(
    conn: RespConnection, arguments: list[str], reply: bytes
) -> None:
    assert conn.ask(*arguments) == reply


# -- the handshake commands real clients send ------------------------------------------------------


def test_hello_answers_a_resp2_map_as_a_flat_array(conn: RespConnection) -> None:
    reply = conn.ask("HELLO")

    assert reply.startswith(b"*14\r\n$6\r\nserver\r\n$9\r\nkvservice\r\n$7\r\nversion\r\n")
    assert b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:" in reply
    assert reply.endswith(
        b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    )
    assert conn.ask("HELLO", "2").startswith(b"*14\r\n")


def test_hello_3_switches_nil_and_maps_to_resp3(conn: RespConnection) -> None:
    assert conn.ask("GET", "nothing") == b"$-1\r\n"
    reply = conn.ask("HELLO", "3")
    assert reply.startswith(b"%7\r\n$6\r\nserver\r\n$9\r\nkvservice\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in reply
    assert conn.ask("GET", "nothing") == b"_\r\n"
    assert conn.ask("HELLO", "2").startswith(b"*14\r\n")
    assert conn.ask("GET", "nothing") == b"$-1\r\n"


def test_hello_with_other_versions_is_refused(conn: RespConnection) -> None:
    assert conn.ask("HELLO", "4") == b"-NOPROTO unsupported protocol version\r\n"
    assert conn.ask("HELLO", "two") == error_line(
        "Protocol version is not an integer or out of range"
    )
    assert conn.ask("HELLO", "2", "SETNAME").startswith(b"-ERR syntax error")
    assert conn.ask("HELLO", "2", "FOO", "bar").startswith(b"-ERR syntax error")
    assert conn.ask("PING") == b"+PONG\r\n"


def test_hello_and_client_set_the_connection_name(conn: RespConnection) -> None:
    assert conn.ask("CLIENT", "GETNAME") == NIL
    assert conn.ask("HELLO", "2", "SETNAME", "first").startswith(b"*14\r\n")
    assert conn.ask("CLIENT", "GETNAME") == bulk(b"first")
    assert conn.ask("client", "setname", "second") == OK
    assert conn.ask("CLIENT", "GETNAME") == bulk(b"second")
    assert conn.ask("CLIENT", "SETNAME", "has space") == error_line(
        "Client names cannot contain spaces, newlines or special characters."
    )
    assert conn.ask("CLIENT", "SETINFO", "LIB-NAME", "redis-py") == OK
    assert re.fullmatch(rb":\d+\r\n", conn.ask("CLIENT", "ID"))
    assert conn.ask("CLIENT", "KILL", "x") == error_line(
        "unknown subcommand 'KILL'. Try CLIENT HELP."
    )
    assert conn.ask("CLIENT", "SETINFO", "x") == error_line(
        "wrong number of arguments for 'client|setinfo' command"
    )


def test_command_tells_just_enough(conn: RespConnection) -> None:
    assert conn.ask("COMMAND") == b"*0\r\n"
    assert conn.ask("COMMAND", "DOCS") == b"*0\r\n"
    assert conn.ask("COMMAND", "DOCS", "get") == b"*0\r\n"
    assert conn.ask("COMMAND", "COUNT") == b":31\r\n"
    assert conn.ask("COMMAND", "INFO", "get", "set") == b"*2\r\n$-1\r\n$-1\r\n"
    assert conn.ask("COMMAND", "LIST").startswith(b"*31\r\n$4\r\nping\r\n$4\r\necho\r\n")


def test_config_get_answers_what_tools_ask_as_a_map(conn: RespConnection) -> None:
    assert conn.ask("CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert conn.ask("config", "get", "APPENDONLY") == b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
    assert conn.ask("CONFIG", "GET", "maxmemory*", "databases") == (
        b"*6\r\n$9\r\nmaxmemory\r\n$9\r\n268435456\r\n"
        b"$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n$9\r\ndatabases\r\n$1\r\n1\r\n"
    )
    assert conn.ask("CONFIG", "GET", "no-such-parameter") == b"*0\r\n"
    conn.ask("HELLO", "3")
    assert conn.ask("CONFIG", "GET", "save") == b"%1\r\n$4\r\nsave\r\n$0\r\n\r\n"


def test_config_has_no_set_kvservice_is_configured_by_its_command_line(
    conn: RespConnection,
) -> None:
    assert conn.ask("CONFIG", "SET", "maxmemory", "1") == error_line(
        "unknown subcommand 'SET'. Try CONFIG HELP."
    )
    assert conn.ask("CONFIG", "GET", "maxmemory") == (
        b"*2\r\n$9\r\nmaxmemory\r\n$9\r\n268435456\r\n"
    )


def info_fields(reply: bytes) -> dict[str, dict[str, str]]:
    """An INFO bulk reply as {section: {field: value}}, checking it is well formed."""
    head, _, body = reply.partition(b"\r\n")
    text = body[:-2]  # the bulk string: every line of it ends in CRLF, as in Redis
    assert head == b"$%d" % len(text) and body.endswith(b"\r\n") and text.endswith(b"\r\n")
    sections: dict[str, dict[str, str]] = {}
    for block in text[:-2].decode().split("\r\n\r\n"):
        title, *lines = block.split("\r\n")
        assert title.startswith("# "), block
        sections[title[2:]] = dict(line.split(":", 1) for line in lines)
    return sections


def test_info_reports_server_clients_memory_persistence_stats_and_keyspace(
    server: RespServer, store: Store
) -> None:
    with RespConnection(server.port) as first, RespConnection(server.port) as second:
        assert first.ask("INFO", "keyspace") == b"$12\r\n# Keyspace\r\n\r\n"  # no keys yet
        first.ask("SET", "a", "12345")
        first.ask("SET", "b", "x")
        second.ask("DEL", "b")

        info = info_fields(second.ask("INFO"))

    assert list(info) == ["Server", "Clients", "Memory", "Persistence", "Stats", "Keyspace"]
    assert info["Server"]["redis_version"] == "7.0.0"
    assert info["Server"]["server_name"] == "kvservice"
    assert info["Server"]["tcp_port"] == str(server.port)
    assert info["Server"]["process_id"] == str(os.getpid())
    assert info["Clients"] == {
        "connected_clients": "2",
        "maxclients": "512",
        "blocked_clients": "0",
    }
    stats = store.stats()
    assert info["Memory"]["used_memory"] == str(stats.used_bytes) != "0"
    assert info["Memory"]["maxmemory"] == str(stats.max_bytes)
    assert info["Memory"]["maxmemory_human"] == "256.00M"
    assert info["Memory"]["maxmemory_policy"] == "noeviction"
    assert info["Persistence"]["loading"] == "0"
    assert info["Memory"]["kvservice_history_entries"] == str(stats.history_entries) == "3"
    assert info["Stats"] == {
        "total_connections_received": "2",
        "total_commands_processed": "5",
        "rejected_connections": "0",
        "total_error_replies": "0",
        "kvservice_store_full_refusals": "0",
    }
    assert info["Keyspace"] == {"db0": "keys=1,expires=0,avg_ttl=0"}


def test_info_costs_no_subprocess_so_a_pipeline_of_it_is_fast(conn: RespConnection) -> None:
    """INFO's arch_bits came from platform.architecture(), which runs `file` in a subprocess
    each call: 0.9 ms and a fork per INFO, on the loop; 2,000 pipelined INFO held another
    connection's PING for 110 ms a batch. 500 now take a few milliseconds."""
    started = time.perf_counter()
    conn.send(command("INFO") * 500)
    replies = [conn.reply() for _ in range(500)]
    elapsed_s = time.perf_counter() - started

    assert all(b"arch_bits:64" in reply or b"arch_bits:32" in reply for reply in replies)
    assert elapsed_s < 0.2, f"500 INFO took {elapsed_s * 1000:.0f} ms"


def test_info_gives_the_sections_asked_for(conn: RespConnection) -> None:
    assert list(info_fields(conn.ask("INFO", "stats", "CLIENTS"))) == ["Clients", "Stats"]
    assert list(info_fields(conn.ask("INFO", "everything"))) == [
        *list(info_fields(conn.ask("INFO", "default")))[:-1],
        "Commandstats",
        "Errorstats",
        "Keyspace",
    ]
    assert conn.ask("INFO", "replication") == b"$0\r\n\r\n"


def test_info_counts_calls_and_errors_by_command_and_code(conn: RespConnection) -> None:
    conn.ask("SET", "a", "1")
    conn.ask("GET", "a")
    conn.ask("GET", "a", "b")  # wrong number of arguments: ERR
    conn.ask("GET", "bad-key")  # INVALIDKEY
    conn.ask("NOSUCH")
    info = info_fields(conn.ask("INFO", "commandstats", "errorstats"))
    assert info["Commandstats"] == {
        "cmdstat_get": "calls=3,failed_calls=2",
        "cmdstat_set": "calls=1,failed_calls=0",
        "cmdstat_unknown": "calls=1,failed_calls=1",
    }
    assert info["Errorstats"] == {"errorstat_ERR": "count=2", "errorstat_INVALIDKEY": "count=1"}
    assert info_fields(conn.ask("INFO", "stats"))["Stats"]["total_error_replies"] == "3"


def test_info_counts_refused_connections() -> None:
    with running_resp(max_connections=1) as server, RespConnection(server.port) as first:
        with RespConnection(server.port) as refused:
            assert refused.rest_and_closed()[1]
        stats = info_fields(first.ask("INFO", "stats"))["Stats"]
    assert stats["total_connections_received"] == "2"
    assert stats["rejected_connections"] == "1"


def test_select_accepts_only_database_0(conn: RespConnection) -> None:
    assert conn.ask("SELECT", "0") == OK
    assert conn.ask("SELECT", "1") == error_line(
        "DB index is out of range; kvservice has only database 0"
    )
    assert conn.ask("SELECT", "x") == error_line("value is not an integer or out of range")


def test_an_unexpected_error_is_logged_and_answered_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenStore(MemoryStore):
        def get(self, key: str) -> Value:
            raise RuntimeError("boom")

    with (
        caplog.at_level(logging.INFO),
        running_resp(BrokenStore()) as server,
        RespConnection(server.port) as conn,
    ):
        assert conn.ask("GET", "k") == error_line("The server failed to answer; it logged why.")
        assert conn.ask("PING") == b"+PONG\r\n"

    assert "unexpected error running GET k" in caplog.text
    assert "RuntimeError: boom" in caplog.text


def test_at_debug_each_command_is_on_the_access_log_without_its_value(
    caplog: pytest.LogCaptureFixture, conn: RespConnection
) -> None:
    with caplog.at_level(logging.DEBUG, logger="kvservice.access"):
        conn.ask("SET", "foo", "secret value")
        conn.ask("GET", "foo")
        conn.ask("GET", "bad-key")

    lines = [record.getMessage() for record in caplog.records if record.name == "kvservice.access"]
    assert [re.sub(r"^127\.0\.0\.1:\d+ | [\d.]+ms$", "", line) for line in lines] == [
        '"SET foo" +OK 5',
        '"GET foo" $12 19',
        '"GET bad-key" -INVALIDKEY 100',
    ]
    assert "secret" not in caplog.text


def test_at_info_each_connection_has_one_line_when_it_closes(
    caplog: pytest.LogCaptureFixture, server: RespServer
) -> None:
    with caplog.at_level(logging.INFO, logger="kvservice.access"):
        with RespConnection(server.port) as conn:
            conn.ask("SET", "foo", "secret value")
            conn.ask("GET", "foo")
            conn.send(command("QUIT"))
            assert conn.rest_and_closed() == (OK, True)
        with RespConnection(server.port) as broken:
            broken.send(b"*1\r\n:5\r\n")
            assert broken.rest_and_closed()[1]
        deadline = time.monotonic() + 2
        while len(access_lines(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

    assert [
        re.sub(r"^127\.0\.0\.1:\d+ | in [\d.]+ s", "", line) for line in access_lines(caplog)
    ] == [
        "closed: 3 commands",
        "closed: 0 commands, after a protocol error",
    ]
    assert "secret" not in caplog.text


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "kvservice.access"]


# -- the store's errors, with the store's words ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "call"),
    [
        ("foo-bar", ["GET"]),
        ("foo.bar", ["SET", "v"]),
        ("k" * 256, ["HISTORY"]),
        ("", ["DEL"]),
        ("caf\u00e9", ["EXISTS"]),
    ],
)
def test_invalid_keys_get_the_stores_message(
    conn: RespConnection, key: str, call: list[str]
) -> None:
    name, *rest = call
    # Keys are bytes on the wire; the store sees one character per byte, as HTTP does.
    expected = store_message(InvalidKey, lambda: validate_key(key.encode().decode("latin-1")))

    assert conn.ask(name, key, *rest) == error_line(expected, "INVALIDKEY")


def test_a_value_over_the_limit_gets_the_stores_message_and_the_connection_stays(
    conn: RespConnection,
) -> None:
    expected = store_message(
        ValueTooLarge, lambda: StoreService(MemoryStore()).put("k", b"x" * 1025)
    )

    assert conn.ask("SET", "big", "x" * 1024) == OK
    assert conn.ask("SET", "big", "x" * 1025) == error_line(expected, "TOOLARGE")
    assert expected == "The value is 1025 bytes; the limit is 1024 bytes."
    assert conn.ask("GET", "big") == bulk(b"x" * 1024)


def test_a_full_store_refuses_writes_with_its_message_but_serves_reads() -> None:
    store = MemoryStore(max_bytes=3000)
    with running_resp(store) as server, RespConnection(server.port) as conn:
        assert conn.ask("SET", "a", "x" * 1000) == OK
        reply = conn.ask("SET", "b", "x" * 1000)
        expected = store_message(StoreFull, lambda: store.put("b", b"x" * 1000))

        assert reply == error_line(expected, "OOM")
        assert "memory budget of 3000 bytes" in expected
        assert conn.ask("GET", "a") == bulk(b"x" * 1000)
        assert conn.ask("DEL", "a") == b":1\r\n"


# -- the wire: inline commands, pipelining, binary values ------------------------------------------


def test_inline_commands_as_typed_into_telnet(conn: RespConnection) -> None:
    conn.send(b"PING\r\n\r\nSET  k   v\nGET k\r\n")

    assert [conn.reply() for _ in range(3)] == [b"+PONG\r\n", OK, bulk(b"v")]


def test_pipelined_commands_are_answered_in_order(conn: RespConnection) -> None:
    conn.send(b"".join(command("SET", f"k{n}", f"v{n}") for n in range(50)))
    conn.send(b"".join(command("GET", f"k{n}") for n in range(50)))

    replies = [conn.reply() for _ in range(100)]

    assert replies == [OK] * 50 + [bulk(f"v{n}".encode()) for n in range(50)]


def test_a_pipeline_of_many_batches_is_answered_whole_and_in_order(conn: RespConnection) -> None:
    """Replies of a 1 KiB value fill a batch after 64 commands: the rest of each read runs in
    later turns (`_BATCH_REPLY_BYTES`), and what arrives meanwhile after them, in order."""
    first, second = b"a" * 1024, b"b" * 1024
    assert conn.ask("SET", "k", first) == OK
    conn.send(
        command("GET", "k") * 1000 + command("SET", "k", second) + b"GET k\r\n" * 1000 + b"ECH"
    )
    conn.send(b"O end\r\n")

    replies = [conn.reply() for _ in range(2002)]

    assert replies == [bulk(first)] * 1000 + [OK] + [bulk(second)] * 1000 + [bulk(b"end")]
    assert conn.ask("PING") == b"+PONG\r\n"


def test_values_are_binary_safe(conn: RespConnection, store: Store) -> None:
    every_byte = bytes(range(256))
    framing = b"\r\n*1\r\n$4\r\nPING\r\n-ERR\r\n$-1\r\n"

    assert conn.ask("SET", "bin", every_byte) == OK
    assert conn.ask("GET", "bin") == bulk(every_byte)
    assert conn.ask("SET", "frame", framing) == OK
    assert conn.ask("GET", "frame") == bulk(framing)
    assert conn.ask("HISTORY", "frame").endswith(bulk(framing))
    assert store.get("bin").content_type is None


# -- limits and malformed input: an error, then the connection closes ------------------------------


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"*x\r\n", "invalid multibulk length 'x'"),
        (b"*1\n", "invalid multibulk length ''"),
        (b"*1\r\n:5\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length -1 (arguments are at most 2048 bytes)"),
        (b"*1\r\n$4\r\nPINGxx", "bulk string not followed by CRLF"),
        (b"*2000\r\n", "invalid multibulk length 2000 (at most 1024 arguments)"),
        (b"*1\r\n$2049\r\n", "invalid bulk length 2049 (arguments are at most 2048 bytes)"),
        (b"*1\r\n$99999999999999999999\r\n", "invalid bulk length '99999999999999999999'"),
        # Declared sizes far past a limit are refused before anything of their size exists.
        (b"*2147483648\r\n", "invalid multibulk length 2147483648 (at most 1024 arguments)"),
        (b"*4294967295\r\n", "invalid multibulk length 4294967295 (at most 1024 arguments)"),
        (b"*1\r\n*4294967295\r\n", "expected '$', got '*'"),
        (b"*1\r\n~2147483648\r\n", "expected '$', got '~'"),
        (b"*1\r\n|4294967295\r\n", "expected '$', got '|'"),
        (
            b"*1\r\n$9999999999\r\n",
            "invalid bulk length 9999999999 (arguments are at most 2048 bytes)",
        ),
        # Numbers as Redis reads them: no sign but `-`, no space, no leading zero.
        (b"*+1\r\n", "invalid multibulk length '+1'"),
        (b"* 1\r\n", "invalid multibulk length ' 1'"),
        (b"*01\r\n", "invalid multibulk length '01'"),
        (b"*1\r\n$04\r\n", "invalid bulk length '04'"),
    ],
)
def test_malformed_or_oversized_input_is_a_protocol_error_and_closes(
    conn: RespConnection, sent: bytes, error: str
) -> None:
    conn.send(sent)

    assert conn.rest_and_closed() == (error_line(f"Protocol error: {error}"), True)


def test_an_oversized_argument_is_refused_before_its_bytes_are_read(
    conn: RespConnection,
) -> None:
    conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000000\r\n")  # and not one byte of it

    reply, closed = conn.rest_and_closed()

    assert reply.startswith(b"-ERR Protocol error: invalid bulk length 100000000")
    assert closed


def test_a_request_larger_than_the_request_limit_is_refused() -> None:
    with running_resp(max_request_bytes=4096) as server, RespConnection(server.port) as conn:
        conn.send(command("DEL", *[f"k{n:04}" + "x" * 995 for n in range(5)]))

        assert conn.rest_and_closed() == (
            error_line("Protocol error: request larger than 4096 bytes"),
            True,
        )


def test_an_overlong_inline_line_is_refused() -> None:
    with running_resp(max_request_bytes=4096) as server, RespConnection(server.port) as conn:
        conn.send(b"PING " + b"x" * 5000)

        assert conn.rest_and_closed() == (
            error_line("Protocol error: too big inline request"),
            True,
        )


def test_connections_past_the_maximum_are_refused_and_closed() -> None:
    with running_resp(max_connections=2) as server:
        first, second = RespConnection(server.port), RespConnection(server.port)
        try:
            assert first.ask("PING") == second.ask("PING") == b"+PONG\r\n"
            with RespConnection(server.port) as third:
                assert third.rest_and_closed() == (
                    error_line("max number of clients reached"),
                    True,
                )
            first.close()
            deadline = time.monotonic() + 2
            while True:  # the server notices the close on its next read
                with RespConnection(server.port) as fourth, contextlib.suppress(ConnectionError):
                    fourth.send(command("PING"))
                    if fourth.reply() == b"+PONG\r\n":
                        break
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert second.ask("PING") == b"+PONG\r\n"
        finally:
            first.close()
            second.close()


def test_idle_and_stalled_connections_are_closed_after_the_idle_timeout() -> None:
    with running_resp(idle_timeout_s=0.3) as server:
        idle, stalled = RespConnection(server.port), RespConnection(server.port)
        started = time.monotonic()
        stalled.send(b"*2\r\n$3\r\nGET\r\n$3\r\nfo")  # and never the rest

        assert idle.rest_and_closed() == (b"", True)
        assert stalled.rest_and_closed() == (b"", True)
        assert 0.25 < time.monotonic() - started < 2.0
        idle.close()
        stalled.close()


def test_a_client_that_does_not_read_its_replies_is_not_read_and_is_closed() -> None:
    store = MemoryStore()
    store.put("big", b"x" * 1024)
    with running_resp(store, idle_timeout_s=1.0) as server:
        greedy = socket.create_connection(("127.0.0.1", server.port))
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.setblocking(False)
        sent, sent_by = 0, {}
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 0.8:  # GETs of 1 KiB, no reply read
            try:
                sent += greedy.send(command("GET", "big") * 64)
            except BlockingIOError:
                time.sleep(0.001)
            sent_by[round(elapsed, 1)] = sent
        with RespConnection(server.port) as other:  # meanwhile, others are served
            assert other.ask("PING") == b"+PONG\r\n"
        # The server stopped reading it: nothing more went out in the last 0.4 s.
        assert sent_by[0.4] == sent > 0
        time.sleep(1.5)  # past the idle timeout (1 s), and still not reading
        greedy.setblocking(True)
        greedy.settimeout(1)
        received, closed = 0, False
        deadline = time.monotonic() + 3
        try:
            while not closed and time.monotonic() < deadline:
                chunk = greedy.recv(1 << 20)
                received += len(chunk)
                closed = not chunk
        except ConnectionResetError:
            closed = True  # with replies unsent
        assert closed
        assert received < sent // 30 * 1031  # 30 bytes a GET, 1031 its reply: not all sent
        greedy.close()
        with RespConnection(server.port) as info:
            clients = info_fields(info.ask("INFO", "clients"))["Clients"]
        assert clients["connected_clients"] == "1"


def test_a_busy_connection_is_not_idle() -> None:
    with running_resp(idle_timeout_s=0.3) as server, RespConnection(server.port) as conn:
        for _ in range(6):
            assert conn.ask("PING") == b"+PONG\r\n"
            time.sleep(0.1)


# -- the Runnable: start, url, stop ----------------------------------------------------------------


def test_url_names_the_bound_port(server: RespServer) -> None:
    assert server.url == f"redis://127.0.0.1:{server.port}"
    assert server.port != 0
    assert not server.failed.is_set()


def test_a_port_in_use_fails_to_start_with_the_address() -> None:
    with running_resp() as server:
        taken = RespServer(MemoryStore(), resp_test_settings(port=server.port))
        with pytest.raises(OSError, match=rf"^127\.0\.0\.1:{server.port}: "):
            taken.start()
        taken.stop()  # harmless on a server that never started


def test_stop_lets_the_command_in_flight_finish_and_closes_every_connection() -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowStore(MemoryStore):
        def put(
            self,
            key: str,
            data: bytes,
            content_type: str | None = None,
            precondition: Precondition = NO_CONDITION,
            expiry: Expiry = NO_EXPIRY,
        ) -> Value:
            entered.set()
            release.wait(5)
            return super().put(key, data, content_type, precondition, expiry)

    store = SlowStore()
    server = RespServer(store, resp_test_settings())
    server.start()
    idle = RespConnection(server.port)
    busy = RespConnection(server.port)
    assert idle.ask("PING") == b"+PONG\r\n"
    busy.send(command("SET", "k", "v"))
    assert entered.wait(2)

    stopper = threading.Thread(target=server.stop)
    started = time.monotonic()
    stopper.start()
    time.sleep(0.1)  # stop() is waiting for the command in flight
    release.set()
    stopper.join(5)

    assert not stopper.is_alive()
    assert time.monotonic() - started < 2.0
    assert busy.rest_and_closed() == (OK, True)
    assert idle.rest_and_closed() == (b"", True)
    assert store.get("k").data == b"v"
    assert not server.failed.is_set()
    with pytest.raises(ConnectionRefusedError):
        RespConnection(server.port)
    idle.close()
    busy.close()


def test_stop_is_prompt_with_many_idle_connections() -> None:
    server = RespServer(MemoryStore(), resp_test_settings())
    server.start()
    connections = [RespConnection(server.port) for _ in range(50)]
    for connection in connections:
        connection.send(command("PING"))
        assert connection.reply() == b"+PONG\r\n"
    halfway = RespConnection(server.port)  # connected just now, half a command sent
    halfway.send(b"*2\r\n$3\r\nGET")
    connections.append(halfway)

    started = time.monotonic()
    server.stop()

    assert time.monotonic() - started < 1.0
    assert all(connection.rest_and_closed() == (b"", True) for connection in connections)
    for connection in connections:
        connection.close()


# -- configuration and the composition root --------------------------------------------------------


def test_resp_is_off_by_default_and_on_with_a_port() -> None:
    assert load_config([], environ={}).resp_port is None
    store = MemoryStore()
    feed = ChangeFeed(store, FeedSettings())
    assert TRANSPORTS["resp"](Config(), store, Security(), None, ReplyBudget(1), feed) is None

    config = load_config(["--resp-port", "0"], environ={})
    server = TRANSPORTS["resp"](config, store, Security(), None, ReplyBudget(1), feed)

    assert isinstance(server, RespServer)
    assert server.url == "redis://127.0.0.1:0"


def test_resp_settings_come_from_flags_and_environment() -> None:
    environ = {"KV_RESP_PORT": "6380", "KV_RESP_IDLE_TIMEOUT": "30", "KV_HOST": "0.0.0.0"}
    config = load_config(["--resp-max-connections", "7", "--max-value-bytes", "100"], environ)

    assert resp_settings(config) == RespSettings(
        host="0.0.0.0",
        port=6380,
        max_connections=7,
        idle_timeout_s=30.0,
        max_argument_bytes=1124,
        max_request_bytes=64 * 1024,
        listen_backlog=1024,
    )
    assert load_config([], {"KV_RESP_PORT": ""}).resp_port is None


@pytest.mark.parametrize(
    "args",
    [["--resp-port", "70000"], ["--resp-max-connections", "0"], ["--resp-idle-timeout", "x"]],
)
def test_bad_resp_settings_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        load_config(args, environ={})
    assert raised.value.code == 2


def test_the_service_serves_both_transports_on_one_store_and_stops_on_sigterm() -> None:
    resp_port = free_port()
    service = start_service("kvservice", "--resp-port", str(resp_port), capture=True)
    try:
        with RespConnection(resp_port) as conn:
            assert conn.ask("SET", "shared", "over resp") == OK
        with socket.create_connection(("127.0.0.1", service.port)) as sock:
            sock.sendall(b"GET /shared HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert response.endswith(b"\r\n\r\nover resp")
    finally:
        _, stderr = service.stop()

    assert service.process.returncode == 0, stderr
    assert f"listening on redis://127.0.0.1:{resp_port}" in stderr
    assert "stopped" in stderr
