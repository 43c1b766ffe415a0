"""The change feed's must-holds (issue 21) over real kvservice processes and real sockets:

- a busy feed whose watcher's connection is cut at random byte offsets (mid-event too) and
  resumed with the last complete event's id, 100 times, delivers every change exactly once
  and in order, checked against each key's history (the memory and the durable store);
- the same over two replicas on one redis-server: writes through one, watched through the
  other, some resumes through the first with the tokens the second handed out;
- a restart: an in-memory service answers an old token 410 with the position to start again
  (SSE and long-poll alike); a durable one resumes it and serves what was missed;
- a RESP SET reaches an SSE watcher (the other way, an HTTP PUT heard by a RESP SUBSCRIBE,
  is tested with the keyspace notifications, tests/kvservice/test_resp_pubsub_clients.py).

Every kvservice is a process (tests/support/processes.py) and every Redis a redis-server
(tests/support/redis_servers.py), both on free loopback ports and stopped by PID. Each test
prints its figures. Loops are bounded in count and time.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from testclient.clients.sse import EventStreamParser
from tests.support.processes import ServiceProcess, free_port, kvservice_process
from tests.support.rawresp import RespConnection, command
from tests.support.redis_servers import running_redis
from tests.support.sse import Event, EventStream

PREFIX = "feed"
KEYS = [f"{PREFIX}k{number}" for number in range(4)]
END_KEY = f"{PREFIX}zzend"
"""Written once the writer stopped: the watcher has everything once its change arrives."""
KILLS = 100
MAX_WRITES = 5_000
"""The writer stops at this count, or when the kills are done, whichever comes first."""
MAX_CUT_BYTES = 3_000
"""A connection is cut after a random number of bytes up to this (its head included)."""
READ_TIMEOUT_S = 2.0
"""A connection that got no byte for this long is cut where it is."""
TEST_BUDGET_S = 120.0
SHORT_TTLS = ("1ms", "20ms", "200ms")
WINDOW = ("--history-window", "10m")
"""Longer than any test here: each key's history then holds every write of the test."""


@dataclass(frozen=True)
class Cut:
    """What one connection received before the watcher cut it."""

    status: int
    events: list[Event]
    received_bytes: int
    mid_event: bool
    """The cut fell inside an event (bytes of an event it did not finish were received)."""


def complete_events(body: bytes) -> tuple[list[Event], bool]:
    """The events of an event stream's de-chunked `body` that ended (a blank line) and
    whether an unfinished one followed them; `retry:` blocks and comments are skipped."""
    events = [Event.of(event) for event in EventStreamParser().feed(body)]
    return events, bool(body.rpartition(b"\n\n")[2])


def dechunked(body: bytes) -> bytes:
    """The content of a chunked body cut anywhere: every content byte received, in order."""
    content = b""
    while body:
        size_line, separator, body = body.partition(b"\r\n")
        if not separator:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        content += body[:size]
        body = body[size + 2 :]
    return content


def watch_and_cut(url: str, last_id: str | None, cut_at: int) -> Cut:
    """Watch PREFIX from `last_id` over a raw socket and close it after `cut_at` bytes (or
    when nothing came for READ_TIMEOUT_S)."""
    address = urlsplit(url)
    request = f"GET /_watch?prefix={PREFIX} HTTP/1.1\r\nHost: {address.netloc}\r\n"
    if last_id is not None:
        request += f"Last-Event-ID: {last_id}\r\n"
    received = b""
    with socket.create_connection((address.hostname, address.port), READ_TIMEOUT_S) as sock:
        sock.sendall((request + "\r\n").encode("latin-1"))
        try:
            while len(received) < cut_at:
                data = sock.recv(min(4096, cut_at - len(received)))
                if not data:
                    break
                received += data
        except TimeoutError:
            pass
    head, separator, body = received.partition(b"\r\n\r\n")
    if not separator:  # cut inside the head: nothing was served
        return Cut(0, [], len(received), False)
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        return Cut(status, [], len(received), False)
    events, unfinished = complete_events(dechunked(body))
    return Cut(status, events, len(received), unfinished)


@dataclass
class Writer:
    """A thread writing to KEYS until stopped or MAX_WRITES: PUTs (some with a short TTL, so
    that expiries join the feed), create-only POSTs and DELETEs, at random."""

    url: str
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: Counter[int] = field(default_factory=Counter)
    thread: threading.Thread | None = None

    def __enter__(self) -> Writer:
        self.thread = threading.Thread(target=self._write, name="feed-writer", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)

    def _write(self) -> None:
        chooser = random.Random(self.seed)
        with requests.Session() as session:
            for number in range(MAX_WRITES):
                if self.stop.is_set():
                    return
                key = f"{self.url}/{chooser.choice(KEYS)}"
                operation = chooser.random()
                if operation < 0.45:
                    response = session.put(key, data=f"put{number}", timeout=10)
                elif operation < 0.65:
                    ttl = chooser.choice(SHORT_TTLS)
                    response = session.put(
                        key, params={"ttl": ttl}, data=f"ttl{number}", timeout=10
                    )
                elif operation < 0.8:
                    response = session.post(key, data=f"post{number}", timeout=10)
                else:
                    response = session.delete(key, timeout=10)
                self.statuses[response.status_code] += 1


def head_token(url: str) -> str:
    """The feed's head, as any history answer says it (`KV-Position`)."""
    response = requests.get(f"{url}/{END_KEY}/history", timeout=5)
    assert response.status_code == 200, response.text
    return response.headers["KV-Position"]


@dataclass
class Watched:
    """What the watcher collected over every connection."""

    changes: list[dict[str, object]] = field(default_factory=list)
    cuts: int = 0
    cuts_mid_event: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    resumed_elsewhere: int = 0


def watch_with_cuts(
    urls: Callable[[int], str], last_id: str, seed: int, kills: int = KILLS
) -> tuple[Watched, str]:
    """`kills` connections, each to `urls(number)` from the last complete event's id, cut at
    a random byte offset; their change events, and the id to resume from after them."""
    chooser = random.Random(seed)
    watched = Watched()
    deadline = time.monotonic() + TEST_BUDGET_S
    for number in range(kills):
        assert time.monotonic() < deadline, f"{number} cuts took more than {TEST_BUDGET_S} s"
        cut = watch_and_cut(urls(number), last_id, chooser.randint(1, MAX_CUT_BYTES))
        watched.cuts += 1
        watched.cuts_mid_event += cut.mid_event
        watched.statuses[cut.status] += 1
        assert cut.status in (0, 200), f"a resume from {last_id} was answered {cut.status}"
        watched.resumed_elsewhere += urls(number) != urls(max(0, number - 1))
        for event in cut.events:
            assert event.event in ("change", "bookmark"), event
            if event.event == "change":
                watched.changes.append(event.json())
            assert event.id is not None
            last_id = event.id
    return watched, last_id


def read_to_the_end(url: str, last_id: str, watched: Watched) -> None:
    """Resume once more and read until END_KEY's change (which is written after the rest)."""
    deadline = time.monotonic() + 30
    with EventStream(url, f"/_watch?prefix={PREFIX}", {"Last-Event-ID": last_id}) as stream:
        assert stream.status == 200
        while time.monotonic() < deadline:
            event = stream.next_event()
            if event.event == "change":
                watched.changes.append(event.json())
                if watched.changes[-1]["key"] == END_KEY:
                    return
    raise AssertionError("the end marker's change did not arrive within 30 s")


def settle_and_mark_the_end(url: str) -> None:
    """After the writer stopped: the short TTLs pass, a GET of each key makes sure its
    expiry is noticed (and in the feed), then END_KEY is written."""
    time.sleep(max(int(ttl.removesuffix("ms")) for ttl in SHORT_TTLS) / 1000 + 0.2)
    with requests.Session() as session:
        for key in KEYS:
            session.get(f"{url}/{key}", timeout=5)
        assert session.put(f"{url}/{END_KEY}", data="end", timeout=5).status_code == 204


def exactly_once_problems(url: str, changes: list[dict[str, object]]) -> list[str]:
    """What is wrong with `changes` against the store: revisions must strictly increase (no
    duplicate, none out of order), and each key's changes must be its history, oldest first
    (every write of the window, none missing, none twice)."""
    problems = []
    revisions = [int(str(change["revision"])) for change in changes]
    for earlier, later in itertools.pairwise(revisions):
        if later <= earlier:
            problems.append(f"revision {later} after {earlier}")
    for key in [*KEYS, END_KEY]:
        history = requests.get(f"{url}/{key}/history", timeout=5).json()
        expected = [
            (entry["value"], entry["timestamp"], entry.get("expired", False))
            for entry in reversed(history)
        ]
        got = [
            (change["value"], change["timestamp"], change["type"] == "expired")
            for change in changes
            if change["key"] == key
        ]
        if got != expected:
            problems.append(
                f"{key}: {len(got)} changes watched, history has {len(expected)}; first "
                f"difference at {first_difference(got, expected)}"
            )
    return problems


def first_difference(got: Sequence[object], expected: Sequence[object]) -> str:
    for index, (one, other) in enumerate(zip(got, expected, strict=False)):
        if one != other:
            return f"#{index}: watched {one}, history {other}"
    return f"#{min(len(got), len(expected))} (one list ends)"


def check_exactly_once_under_cuts(
    write_url: str, watch_urls: Callable[[int], str], label: str, seed: int = 21
) -> None:
    """The must-hold: KILLS cuts of a busy feed, each resumed from the last complete event's
    id, then every change exactly once and in order against each key's history."""
    first_id = head_token(write_url)  # a long-poll's position resumes an event stream
    started = time.monotonic()
    with Writer(write_url, seed) as writer:
        watched, last_id = watch_with_cuts(watch_urls, first_id, seed)
    settle_and_mark_the_end(write_url)
    read_to_the_end(watch_urls(KILLS), last_id, watched)
    problems = exactly_once_problems(write_url, watched.changes)
    kinds = Counter(str(change["type"]) for change in watched.changes)
    print(
        f"\n{label}: {watched.cuts} cuts ({watched.cuts_mid_event} mid-event, statuses "
        f"{dict(watched.statuses)}, 0 = cut inside the head), "
        f"{watched.resumed_elsewhere} resumed on another replica than the cut; writes "
        f"{dict(writer.statuses)}; {len(watched.changes)} changes watched {dict(kinds)} in "
        f"{time.monotonic() - started:.1f} s; problems: {problems or 'none'}"
    )
    assert watched.cuts_mid_event > 0, "some cuts fell inside an event"
    assert kinds["expired"] > 0 and kinds["delete"] > 0 and kinds["put"] > 0
    assert not problems


def test_cuts_of_a_busy_feed_on_the_memory_store_lose_and_repeat_nothing() -> None:
    with kvservice_process(*WINDOW) as kv:
        check_exactly_once_under_cuts(kv.url, lambda _: kv.url, "memory store")


def test_cuts_of_a_busy_feed_on_the_durable_store_lose_and_repeat_nothing(tmp_path: Path) -> None:
    with kvservice_process(*WINDOW, "--data-dir", str(tmp_path)) as kv:
        check_exactly_once_under_cuts(kv.url, lambda _: kv.url, "durable store")


@contextmanager
def two_replicas(tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with running_redis(tmp_path) as redis, ExitStack() as stack:
        first, second = (
            stack.enter_context(kvservice_process("--store", redis.url, *WINDOW)) for _ in range(2)
        )
        yield first, second


def test_cuts_of_a_busy_feed_over_two_replicas_on_one_redis_lose_and_repeat_nothing(
    tmp_path: Path,
) -> None:
    with two_replicas(tmp_path) as (writes, watches):
        # Every fifth connection resumes through the replica that takes the writes, with a
        # token the other handed out (and the one after, the other way round).
        check_exactly_once_under_cuts(
            writes.url,
            lambda number: writes.url if number % 5 == 4 else watches.url,
            "two replicas on one Redis",
        )


# -- restarts --------------------------------------------------------------------------------------


def write_and_take_token(url: str) -> str:
    """A write to KEYS[0], and the position of that write (its event's id)."""
    with EventStream(url, f"/_watch?key={KEYS[0]}") as stream:
        stream.events_until("bookmark")
        assert requests.put(f"{url}/{KEYS[0]}", data="before", timeout=5).status_code == 204
        (change,) = [event for event in stream.events_until("change") if event.event == "change"]
    assert change.id is not None
    return change.id


def assert_resume_gone(status: int, content_type: str, body: bytes) -> str:
    """A 410 problem with the position to start again from; that position."""
    assert status == 410, f"{status}: {body!r}"
    assert content_type.startswith("application/problem+json")
    problem = json.loads(body)
    assert str(problem["type"]).endswith("resume-gone")
    assert isinstance(problem["position"], str)
    return problem["position"]


def test_an_in_memory_service_restarted_answers_an_old_token_410_with_where_to_start() -> None:
    with kvservice_process() as kv:
        old_token = write_and_take_token(kv.url)
        assert requests.put(f"{kv.url}/{KEYS[0]}", data="missed", timeout=5).status_code == 204
        port = kv.port
    with kvservice_process("--port", str(port)) as kv:
        with EventStream(kv.url, f"/_watch?key={KEYS[0]}", {"Last-Event-ID": old_token}) as sse:
            sse_start = assert_resume_gone(sse.status, sse.headers["content-type"], sse.body)
            sse_problem = sse.problem()
        long_poll = requests.get(
            f"{kv.url}/{KEYS[0]}/history", params={"after": old_token, "wait": "1s"}, timeout=5
        )
        poll_start = assert_resume_gone(
            long_poll.status_code, long_poll.headers["Content-Type"], long_poll.content
        )
        # From the position given, the stream starts again and hears the next change.
        with EventStream(kv.url, f"/_watch?key={KEYS[0]}", {"Last-Event-ID": sse_start}) as sse:
            assert sse.status == 200
            sse.events_until("bookmark")
            assert requests.put(f"{kv.url}/{KEYS[0]}", data="after", timeout=5).status_code == 204
            changes = [
                event.json() for event in sse.events_until("change") if event.event == "change"
            ]
    print(
        f"\nin-memory restart: SSE 410 {sse_problem['detail']!r}, long-poll 410 too; start again "
        f"from {sse_start} (long-poll said {poll_start}); then {[c['value'] for c in changes]}"
    )
    assert [change["value"] for change in changes] == ["after"]


def test_a_durable_service_restarted_resumes_an_old_token_with_what_was_missed(
    tmp_path: Path,
) -> None:
    data_dir = ("--data-dir", str(tmp_path))
    with kvservice_process(*data_dir) as kv:
        old_token = write_and_take_token(kv.url)
        for value in ("missed1", "missed2"):
            assert requests.put(f"{kv.url}/{KEYS[0]}", data=value, timeout=5).status_code == 204
        port = kv.port
    with kvservice_process(*data_dir, "--port", str(port)) as kv:
        assert requests.put(f"{kv.url}/{KEYS[0]}", data="missed3", timeout=5).status_code == 204
        long_poll = requests.get(
            f"{kv.url}/{KEYS[0]}/history", params={"after": old_token, "wait": "1s"}, timeout=5
        )
        with EventStream(kv.url, f"/_watch?key={KEYS[0]}", {"Last-Event-ID": old_token}) as sse:
            assert sse.status == 200, sse.problem()
            events = sse.events_until("change", 3)
    missed = [event.json()["value"] for event in events if event.event == "change"]
    polled = [entry["value"] for entry in long_poll.json()] if long_poll.ok else long_poll.text
    print(f"\ndurable restart: the old token resumes: SSE {missed}, long-poll {polled}")
    assert missed == ["missed1", "missed2", "missed3"]
    assert long_poll.status_code == 200
    assert polled == ["missed3", "missed2", "missed1"]  # the history's order: newest first


# -- every transport's writes are in the feed ------------------------------------------------------


def test_a_resp_set_reaches_an_sse_watcher() -> None:
    port = free_port()
    with (
        kvservice_process("--resp-port", str(port)) as kv,
        EventStream(kv.url, f"/_watch?key={KEYS[0]}") as sse,
    ):
        sse.events_until("bookmark")
        with RespConnection(port) as resp:
            assert resp.ask("SET", KEYS[0], "from-resp") == b"+OK\r\n"
            assert resp.ask("DEL", KEYS[0]) == b":1\r\n"
        events = [e.json() for e in sse.events_until("change", 2) if e.event == "change"]
    print(f"\nRESP SET and DEL, as an SSE watcher heard them: {json.dumps(events)}")
    assert [(event["type"], event["value"]) for event in events] == [
        ("put", "from-resp"),
        ("delete", None),
    ]


@contextmanager
def http_and_resp_services(replicas: bool, tmp_path: Path) -> Iterator[tuple[ServiceProcess, int]]:
    """A service to write to over HTTP and the RESP port of one to subscribe on: the same
    process, or (`replicas`) another replica on the same redis-server."""
    resp_port = free_port()
    with ExitStack() as stack:
        if replicas:
            redis = stack.enter_context(running_redis(tmp_path))
            writes = stack.enter_context(kvservice_process("--store", redis.url))
            stack.enter_context(
                kvservice_process("--store", redis.url, "--resp-port", str(resp_port))
            )
        else:
            writes = stack.enter_context(kvservice_process("--resp-port", str(resp_port)))
        yield writes, resp_port


@pytest.mark.parametrize("replicas", [False, True], ids=["one process", "another replica"])
def test_an_http_put_reaches_a_resp_subscriber(replicas: bool, tmp_path: Path) -> None:
    with (
        http_and_resp_services(replicas, tmp_path) as (writes, resp_port),
        RespConnection(resp_port, timeout_s=5) as subscriber,
    ):
        enabled = subscriber.ask("CONFIG", "SET", "notify-keyspace-events", "KEA")
        if enabled.startswith(b"-"):
            pytest.skip(f"no keyspace notifications in this build (branch feed-resp): {enabled!r}")
        channel = f"__keyspace@0__:{KEYS[0]}"
        subscribed = subscriber.ask("SUBSCRIBE", channel)
        # Redis's confirmation: ["subscribe", channel, 1 channel followed].
        assert subscribed == b"*3\r\n$9\r\nsubscribe\r\n" + command(channel)[4:] + b":1\r\n"
        assert requests.put(f"{writes.url}/{KEYS[0]}", data="http", timeout=5).status_code == 204
        assert requests.delete(f"{writes.url}/{KEYS[0]}", timeout=5).status_code == 204
        heard = [subscriber.reply(), subscriber.reply()]
    where = "another replica" if replicas else "the same process"
    print(f"\nHTTP PUT and DELETE, as a RESP subscriber on {where} heard them: {heard}")
    assert heard == [
        command("message", channel, "set"),
        command("message", channel, "del"),
    ]
