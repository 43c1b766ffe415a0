"""Clients nobody here wrote (redis-py, redis-cli) against the RESP transport, and one store
behind both transports: what is written over one is read over the other, errors say the same.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from kvservice.http.app import create_app
from kvservice.http.server import Server
from kvservice.resp.server import RespServer
from kvservice.store import Store
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from tests.support.rawresp import RespConnection, running_resp
from tests.support.servers import http_settings


@dataclass(frozen=True)
class BothTransports:
    """One store served over HTTP and RESP."""

    store: Store
    http_url: str
    resp: RespServer


@pytest.fixture
def both(background_stops: list[threading.Thread]) -> Iterator[BothTransports]:
    store = StoreService(MemoryStore(max_bytes=64 * 1024))
    http = Server(create_app(store), http_settings(threads=4, socket_timeout_s=2.0))
    http.start()
    try:
        with running_resp(store) as resp:
            yield BothTransports(store, f"http://127.0.0.1:{http.port}", resp)
    finally:
        stop = threading.Thread(target=http.stop)  # cheroot takes 0.5 s; off the critical path
        stop.start()
        background_stops.append(stop)


# -- redis-py --------------------------------------------------------------------------------------


@pytest.fixture
def redis_py(both: BothTransports) -> Iterator[object]:
    redis = pytest.importorskip("redis", reason="redis-py is a test dependency: pip install redis")
    # RESP2 explicitly: redis-py 8 defaults to RESP3 (HELLO 3), which kvservice refuses.
    client = redis.Redis(port=both.resp.port, protocol=2, socket_timeout=2, client_name="tests")
    yield client
    client.close()


def test_redis_py_reads_writes_and_deletes(redis_py: object) -> None:
    import redis

    assert isinstance(redis_py, redis.Redis)
    r = redis_py
    every_byte = bytes(range(256))

    assert r.ping() is True
    assert r.set("bin", every_byte) is True
    assert r.get("bin") == every_byte
    assert r.set("bin", b"other", nx=True) is None
    assert r.set("fresh", b"v", xx=True) is None
    assert r.set("fresh", b"v", nx=True) is True
    assert r.exists("bin", "fresh", "none") == 2
    assert r.delete("bin", "none") == 1
    assert r.get("bin") is None
    history = r.execute_command("HISTORY", "bin")  # type: ignore[no-untyped-call]
    assert [value for _, value in history] == [None, every_byte]
    assert history[0][0] >= history[1][0] > 1_600_000_000_000
    assert r.client_getname() in ("tests", b"tests")  # decoded by some redis-py versions


def test_redis_py_raises_the_stores_error_text(redis_py: object) -> None:
    import redis

    assert isinstance(redis_py, redis.Redis)
    with pytest.raises(
        redis.ResponseError, match=r"^INVALIDKEY The key has the character '-' at position 3"
    ):
        redis_py.set("bad-key", b"v")
    with pytest.raises(redis.ResponseError, match=r"^TOOLARGE The value is 1025 bytes; the limit"):
        redis_py.set("big", b"x" * 1025)
    with pytest.raises(redis.ResponseError, match=r"^unknown command 'MULTI'"):
        redis_py.execute_command("MULTI")  # type: ignore[no-untyped-call]


def test_redis_py_pipelines_without_transactions(redis_py: object) -> None:
    import redis

    assert isinstance(redis_py, redis.Redis)
    pipe = redis_py.pipeline(transaction=False)
    for number in range(20):
        pipe.set(f"p{number}", f"v{number}")
    pipe.get("p19")

    assert pipe.execute() == [True] * 20 + [b"v19"]


def test_redis_py_with_its_resp3_default_works(both: BothTransports) -> None:
    redis = pytest.importorskip("redis", reason="redis-py is a test dependency: pip install redis")
    client = redis.Redis(port=both.resp.port, protocol=3, socket_timeout=2)

    assert client.ping() is True
    assert client.get("resp3") is None
    assert client.set("resp3", b"v") is True
    assert client.get("resp3") == b"v"
    assert client.delete("resp3") == 1
    assert [value for _, value in client.execute_command("HISTORY", "resp3")] == [None, b"v"]
    client.close()


def test_redis_py_scan_iter_walks_every_key_exactly_once(redis_py: object) -> None:
    import redis

    assert isinstance(redis_py, redis.Redis)
    written = {f"scan{number}".encode() for number in range(120)} | {b"other1", b"other2"}
    for key in written:
        redis_py.set(key, b"v")

    everything = list(redis_py.scan_iter(count=7))
    assert sorted(everything) == sorted(written)
    assert len(everything) == len(set(everything)), "no key twice"
    matching = list(redis_py.scan_iter(match="scan1*", count=20))
    assert sorted(matching) == sorted(k for k in written if k.startswith(b"scan1"))
    assert sorted(redis_py.keys("other*")) == [b"other1", b"other2"]
    assert redis_py.dbsize() == len(written)


# -- redis-cli -------------------------------------------------------------------------------------

needs_redis_cli = pytest.mark.skipif(
    shutil.which("redis-cli") is None,
    reason="redis-cli is missing: apt-get install redis-tools (Debian) to run these",
)


def redis_cli(port: int, *args: str, stdin: str | None = None, raw: bool = False) -> str:
    """redis-cli's output, formatted as a person sees it ('(nil)', '(integer) 1', ...), or
    as a script reads it (`raw`: values unquoted, one per line)."""
    completed = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--raw" if raw else "--no-raw", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@needs_redis_cli
def test_redis_cli_session(both: BothTransports) -> None:
    port = both.resp.port

    assert redis_cli(port, "PING") == "PONG\n"
    assert redis_cli(port, "SET", "foo", "hello world!") == "OK\n"
    assert redis_cli(port, "GET", "foo") == '"hello world!"\n'
    assert redis_cli(port, "SET", "foo", "again", "NX") == "(nil)\n"
    assert redis_cli(port, "DEL", "foo", "bar") == "(integer) 1\n"
    assert redis_cli(port, "GET", "foo") == "(nil)\n"
    history = redis_cli(port, "HISTORY", "foo").splitlines()
    assert [line.split(") ", 1)[1] for line in history[1::2]] == ["(nil)", '"hello world!"']
    assert redis_cli(port, "SET", "foo-bar", "x") == (
        "(error) INVALIDKEY The key has the character '-' at position 3; "
        "keys are 1-255 characters of [A-Za-z0-9].\n"
    )


@needs_redis_cli
def test_redis_cli_scan_lists_every_key(both: BothTransports) -> None:
    written = [f"cli{number:03d}" for number in range(120)]
    for key in written:
        both.store.put(key, b"v")
    both.store.put("elsewhere", b"v")

    assert redis_cli(both.resp.port, "--scan", raw=True).split() == [*written, "elsewhere"]
    assert redis_cli(both.resp.port, "--scan", "--pattern", "cli1*", raw=True).split() == [
        key for key in written if key.startswith("cli1")
    ]
    assert redis_cli(both.resp.port, "DBSIZE") == "(integer) 121\n"


@needs_redis_cli
def test_redis_cli_reads_commands_from_stdin_and_speaks_resp3_when_asked(
    both: BothTransports,
) -> None:
    port = both.resp.port

    assert redis_cli(port, stdin="SET k v\nGET k\nEXISTS k\n") == 'OK\n"v"\n(integer) 1\n'
    completed = subprocess.run(
        ["redis-cli", "-p", str(port), "-3", "PING"], capture_output=True, text=True, timeout=10
    )
    assert completed.stdout.startswith("PONG")


def read_terminal(argv: list[str], seconds: float) -> str:
    """What a program that runs until stopped prints to a terminal in `seconds`: redis-cli
    --stat buffers its output when it is not writing to one."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([controller], [], [], left)[0]:
                try:
                    output += os.read(controller, 4096)
                except OSError:  # the program ended and closed the terminal
                    break
    finally:
        process.kill()
        process.wait()
        os.close(controller)
    return output.decode(errors="replace")


@needs_redis_cli
def test_redis_cli_stat_reports_keys_memory_clients_and_requests(both: BothTransports) -> None:
    for key in ("a", "b", "c"):
        both.store.put(key, b"12345")

    output = read_terminal(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(both.resp.port), "--stat", "-i", "0.2"], 1.5
    )

    lines = output.splitlines()
    assert lines[1].split() == ["keys", "mem", "clients", "blocked", "requests", "connections"]
    keys, memory, clients, blocked, requests_made, *_ = lines[2].split()
    assert (keys, clients, blocked) == ("3", "1", "0")
    assert memory == f"{both.store.stats().used_bytes / 1024:.2f}K"  # 3 keys: over 1 KiB
    later = lines[3].split()
    assert int(later[4]) == int(requests_made) + 1 and later[5] == "(+1)"
    assert "Error" not in output and "WARNING" not in output


needs_redis_benchmark = pytest.mark.skipif(
    shutil.which("redis-benchmark") is None,
    reason="redis-benchmark is missing: apt-get install redis-tools (Debian) to run these",
)


@needs_redis_benchmark
def test_redis_benchmark_runs_without_warnings(both: BothTransports) -> None:
    port = str(both.resp.port)
    value = "v" * 100
    load = ["-n", "100", "-r", "50", "-P", "4", "-c", "2", "-q"]
    # Keys of kvservice's alphabet: the default -t tests use key:__rand_int__.
    command = ["SET", "k__rand_int__", value]
    completed = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", port, *load, *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    output = completed.stdout + completed.stderr
    assert "requests per second" in output
    assert "WARNING" not in output and "Error" not in output, output
    written = [key for key in (f"k{n:012d}" for n in range(50)) if key in both.store.keys().keys]
    assert written and all(both.store.get(key).data == value.encode() for key in written)


# -- one store, two transports ---------------------------------------------------------------------


def test_a_write_over_http_is_read_over_resp(both: BothTransports) -> None:
    requests.put(f"{both.http_url}/cross", data=b"from http", timeout=5)
    requests.delete(f"{both.http_url}/cross", timeout=5)
    requests.put(f"{both.http_url}/cross", data=b"\x00\xffagain", timeout=5)

    with RespConnection(both.resp.port) as conn:
        assert conn.ask("GET", "cross") == b"$7\r\n\x00\xffagain\r\n"
        history = conn.ask("HISTORY", "cross")
    stamps = [entry["timestamp"] for entry in requests.get(f"{both.http_url}/cross/history").json()]
    assert history == (
        b"*3\r\n*2\r\n:%d\r\n$7\r\n\x00\xffagain\r\n*2\r\n:%d\r\n$-1\r\n"
        b"*2\r\n:%d\r\n$9\r\nfrom http\r\n" % tuple(stamps)
    )


def test_a_write_over_resp_is_read_over_http(both: BothTransports) -> None:
    with RespConnection(both.resp.port) as conn:
        assert conn.ask("SET", "cross", "from resp") == b"+OK\r\n"
        read = requests.get(f"{both.http_url}/cross", timeout=5)
        assert (read.status_code, read.content) == (200, b"from resp")
        assert read.headers["Content-Type"] == "application/octet-stream"

        assert conn.ask("DEL", "cross") == b":1\r\n"
    assert requests.get(f"{both.http_url}/cross", timeout=5).status_code == 404
    history = requests.get(f"{both.http_url}/cross/history", timeout=5).json()
    assert [entry["value"] for entry in history] == [None, "from resp"]


def test_the_stores_errors_say_the_same_over_both_transports(both: BothTransports) -> None:
    with RespConnection(both.resp.port) as conn:
        for key in ["bad-key", "caf\u00e9", "k" * 256]:
            http = requests.put(f"{both.http_url}/{key}", data=b"v", timeout=5)
            assert http.status_code == 400
            assert conn.ask("SET", key, "v") == f"-INVALIDKEY {http.json()['detail']}\r\n".encode()

        while conn.ask("SET", f"fill{both.store.stats().used_bytes}", "x" * 1024) == b"+OK\r\n":
            pass  # until the 64 KiB budget is spent
        http_full = requests.put(f"{both.http_url}/more", data=b"x" * 1024, timeout=5)
        assert http_full.status_code == 507
        assert conn.ask("SET", "more", "x" * 1024) == (
            f"-OOM {http_full.json()['detail']}\r\n".encode()
        )


def test_a_value_too_large_is_refused_by_both_in_the_same_words(both: BothTransports) -> None:
    # HTTP refuses by Content-Length before reading the body; RESP has read the bytes and lets
    # the store refuse them: both in the store's words, with the size.
    http = requests.put(f"{both.http_url}/big", data=b"x" * 1025, timeout=5)
    with RespConnection(both.resp.port) as conn:
        resp = conn.ask("SET", "big", "x" * 1025)

    assert (http.status_code, http.json()["detail"]) == (
        413,
        "The value is 1025 bytes; the limit is 1024 bytes.",
    )
    assert resp == b"-TOOLARGE The value is 1025 bytes; the limit is 1024 bytes.\r\n"
