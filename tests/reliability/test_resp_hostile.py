"""Hostile RESP input against a kvservice process with tokens: none of it may cost more than
a bounded time or memory, stall the other transport, or put a traceback in the log.

Two classes, each sent before AUTH and after it while another connection times `GET
/_health`: declared counts and lengths far past a limit (in every RESP type and number
spelling), and glob patterns built to make a backtracking matcher explode, in every
command that takes one, with the longest key there is.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from kvservice.resp.commands import COMMANDS
from tests.support.patterns import ADVERSARIAL_PATTERNS
from tests.support.processes import ServiceProcess, free_port, start_service
from tests.support.rawresp import RespConnection, command
from tests.support.tokens import WRITE_TOKEN

MAX_VALUE_BYTES = 64 * 1024
"""Set so that an argument may be far longer than Redis's 16 KiB before AUTH."""
REPLY_WITHIN_S = 1.0
HEALTH_WITHIN_S = 1.0
"""Each far past what the server needs (milliseconds); before the fix, seconds."""
ATTACK_S = 1.0
"""How long the frames are sent for, round after round, while /_health is timed."""


@contextmanager
def resp_service(tmp_path: Path, *args: str) -> Iterator[tuple[ServiceProcess, int]]:
    """kvservice with a write token and RESP on a free port; its log must hold no traceback."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"write {WRITE_TOKEN} writer\n")
    resp_port = free_port()
    service = start_service(
        "kvservice",
        "--auth-tokens",
        str(tokens),
        "--resp-port",
        str(resp_port),
        "--log-level",
        "WARNING",
        *args,
        capture=True,
    )
    try:
        yield service, resp_port
    finally:
        _, stderr = service.stop()
    assert "Traceback" not in stderr and "MemoryError" not in stderr, stderr


class HealthWatch:
    """GET /_health every 20 ms on its own connection, until the `with` ends; `worst_s` is
    the slowest answer (or how long the last one had waited, if it never came)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst_s = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    session.get(f"{self.url}/_health", timeout=30).raise_for_status()
                    self.answers += 1
                finally:
                    self.worst_s = max(self.worst_s, time.perf_counter() - started)
                self._stop.wait(0.02)


def authenticated(port: int, timeout_s: float = 5.0) -> RespConnection:
    """A connection that has sent AUTH with the write token."""
    connection = RespConnection(port, timeout_s)
    assert connection.ask("AUTH", WRITE_TOKEN) == b"+OK\r\n"
    return connection


# -- declared sizes --------------------------------------------------------------------------

FAR_PAST_A_LIMIT = [
    b"*2147483648\r\n",
    b"*4294967295\r\n",
    b"*4294967296\r\n",
    b"*9223372036854775807\r\n",
    b"*99999999999999999999\r\n",
    b"*+2147483648\r\n",
    b"* 2147483648\r\n",
    b"*02147483648\r\n",
    b"*1\r\n$9999999999\r\n",
    b"*1\r\n$-9999999999\r\n",
    b"*1\r\n$99999999999999999999\r\n",
    b"*1\r\n$+9999999999\r\n",
    b"*1\r\n$ 9999999999\r\n",
    b"*1\r\n$%d\r\n" % (MAX_VALUE_BYTES * 1024),
    # Nested, and RESP3's aggregate types, which hiredis reads and a client may not send.
    b"*1\r\n*2147483648\r\n",
    b"*1\r\n*4294967295\r\n",
    b"*2\r\n$3\r\nGET\r\n*4294967295\r\n",
    b"*1\r\n%2147483648\r\n",
    b"*1\r\n~2147483648\r\n",
    b"*1\r\n>2147483648\r\n",
    b"*1\r\n|2147483648\r\n",
    b"*1\r\n|4294967295\r\n",
    # After a whole command in the same read.
    b"*1\r\n$4\r\nPING\r\n*2147483648\r\n",
    b"*1\r\n$4\r\nPING\r\n*1\r\n>4294967295\r\n",
]
"""Each refused with a protocol error whether or not the client has authenticated."""

PAST_THE_BOUNDS_BEFORE_AUTH = {
    b"*11\r\n": b"-ERR Protocol error: unauthenticated multibulk length 11 "
    b"(at most 10 arguments before AUTH)\r\n",
    b"*1\r\n$16385\r\n": b"-ERR Protocol error: unauthenticated bulk length 16385 "
    b"(arguments are at most 16384 bytes before AUTH)\r\n",
    # Inline, as typed into telnet: the same bounds (they were 1,024 arguments and 64 KiB).
    b"PING" + b" a" * 10 + b"\r\n": b"-ERR Protocol error: unauthenticated multibulk length 11 "
    b"(at most 10 arguments before AUTH)\r\n",
    b"PING " + b"a" * 16385 + b"\r\n": b"-ERR Protocol error: unauthenticated bulk length 16385 "
    b"(arguments are at most 16384 bytes before AUTH)\r\n",
}
"""Redis's bounds for a client that has not authenticated (CVE-2021-32675), here too."""


def send_and_judge(
    port: int, frame: bytes, connect: Callable[[int, float], RespConnection]
) -> tuple[float, str | None]:
    """Send `frame` on a new connection (`connect` may AUTH first): how long the server took
    to answer and close, and what was wrong with its answer, if anything."""
    started = time.perf_counter()
    try:
        with connect(port, 5.0) as connection:
            started = time.perf_counter()
            connection.send(frame)
            reply, closed = connection.rest_and_closed()
    except OSError as error:  # a server stalled by the frame before: its AUTH timed out
        return time.perf_counter() - started, f"{frame!r} ({connect.__name__}): {error!r}"
    elapsed_s = time.perf_counter() - started
    last_line = reply.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
    if closed and last_line.startswith(b"-ERR Protocol error: "):
        return elapsed_s, None
    return elapsed_s, f"{frame!r} ({connect.__name__}): {reply!r}, closed={closed}"


def test_declared_sizes_far_past_a_limit_are_refused_at_once_before_auth_and_after(
    tmp_path: Path,
) -> None:
    cases = list(itertools.product(FAR_PAST_A_LIMIT, (RespConnection, authenticated)))
    with (
        resp_service(tmp_path, "--max-value-bytes", str(MAX_VALUE_BYTES)) as (service, port),
        HealthWatch(service.url) as health,
    ):
        rss_before = service.rss_bytes()
        slowest_s, sent, problems = 0.0, 0, list[str]()
        attack_started = time.monotonic()
        attack_ends = attack_started + ATTACK_S
        while time.monotonic() < attack_ends and sent < 20 * len(cases) and not problems:
            for frame, connect in cases:
                elapsed_s, problem = send_and_judge(port, frame, connect)
                slowest_s, sent = max(slowest_s, elapsed_s), sent + 1
                problems += [problem] if problem else []
        attack_s = time.monotonic() - attack_started
        rss_growth = service.rss_bytes() - rss_before

    print(
        f"\n{sent} frames ({len(FAR_PAST_A_LIMIT)} kinds, before and after AUTH) in "
        f"{attack_s:.2f} s: slowest refusal {slowest_s * 1000:.1f} ms, slowest /_health "
        f"{health.worst_s * 1000:.1f} ms ({health.answers} answers), RSS grew "
        f"{rss_growth / 1024:.0f} KiB"
    )
    assert not problems, "\n".join(problems)
    assert slowest_s < REPLY_WITHIN_S
    assert health.worst_s < HEALTH_WITHIN_S
    assert rss_growth < 20 * 1024 * 1024


def test_redis_bounds_before_auth_hold_until_auth_then_the_service_limits(
    tmp_path: Path,
) -> None:
    eleven_keys = command("MGET", *[f"k{n}" for n in range(11)])
    long_value = command("SET", "k", "v" * 20_000)
    with resp_service(tmp_path, "--max-value-bytes", str(MAX_VALUE_BYTES)) as (_, port):
        for frame, refusal in PAST_THE_BOUNDS_BEFORE_AUTH.items():
            with RespConnection(port) as connection:
                connection.send(frame)
                assert connection.rest_and_closed() == (refusal, True)
        with RespConnection(port) as connection:
            # AUTH and what it allows in one read: the bounds lift from the next command.
            connection.send(command("AUTH", WRITE_TOKEN) + eleven_keys + long_value)
            assert connection.reply() == b"+OK\r\n"
            assert connection.reply() == b"*11\r\n" + b"$-1\r\n" * 11
            assert connection.reply() == b"+OK\r\n"
        with authenticated(port) as connection:
            assert connection.ask("MGET", *[f"k{n}" for n in range(11)]).startswith(b"*11\r\n")


# -- patterns --------------------------------------------------------------------------------

LONGEST_KEY = "a" * 255
REQUEST_LIMIT = 64 * 1024
"""kvservice's default limit on one command's arguments together."""
PATTERN_COMMANDS = {
    b"KEYS": lambda pattern: [b"KEYS", pattern],
    b"SCAN": lambda pattern: [b"SCAN", b"0", b"MATCH", pattern, b"COUNT", b"1000"],
    b"CONFIG": lambda pattern: [b"CONFIG", b"GET", pattern],
}
"""Every command that takes a glob pattern, and how it takes one."""
TAKE_NO_PATTERN = {b"PING", b"ECHO", b"GET", b"MGET", b"SET", b"DEL", b"EXISTS", b"HISTORY"}
TAKE_NO_PATTERN |= {b"DBSIZE", b"QUIT", b"HELLO", b"COMMAND", b"CLIENT", b"SELECT", b"INFO"}
TAKE_NO_PATTERN |= {b"AUTH", b"SETEX", b"PSETEX", b"GETEX", b"PERSIST"}
TAKE_NO_PATTERN |= {b"EXPIRE", b"PEXPIRE", b"EXPIREAT", b"PEXPIREAT"}
TAKE_NO_PATTERN |= {b"TTL", b"PTTL", b"EXPIRETIME", b"PEXPIRETIME"}
# PUNSUBSCRIBE compares its arguments with the patterns followed, byte for byte: no matching.
TAKE_NO_PATTERN |= {b"SUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"RESET"}
SUBSCRIBED_PATTERN_COMMANDS = {b"PSUBSCRIBE"}
"""Commands whose patterns are kept and matched against every keyspace notification: see
test_adversarial_patterns_followed_by_every_connection_cost_writes_a_bounded_time."""


def test_every_command_is_known_to_take_a_pattern_or_not() -> None:
    assert set(COMMANDS) == set(PATTERN_COMMANDS) | SUBSCRIBED_PATTERN_COMMANDS | TAKE_NO_PATTERN


@pytest.mark.parametrize("name", sorted(PATTERN_COMMANDS))
def test_every_pattern_command_answers_adversarial_patterns_in_bounded_time(
    tmp_path: Path, name: bytes
) -> None:
    with resp_service(tmp_path) as (service, port), authenticated(port) as connection:
        for key in (LONGEST_KEY, "b" * 255, "a", "ab", "config"):
            assert connection.ask("SET", key, "v") == b"+OK\r\n"
        with HealthWatch(service.url) as health:
            slowest_s, slowest = 0.0, b""
            for pattern in ADVERSARIAL_PATTERNS:
                started = time.perf_counter()
                reply = connection.ask(*PATTERN_COMMANDS[name](pattern))
                elapsed_s = time.perf_counter() - started
                assert not reply.startswith(b"-"), (pattern, reply)
                if elapsed_s > slowest_s:
                    slowest_s, slowest = elapsed_s, pattern
            if name == b"CONFIG":  # many patterns in one command, up to the request limit
                copies = (REQUEST_LIMIT - 4096) // sum(map(len, ADVERSARIAL_PATTERNS))
                started = time.perf_counter()
                every_one = ADVERSARIAL_PATTERNS * copies
                reply = connection.ask("CONFIG", "GET", *every_one)
                elapsed_s = time.perf_counter() - started
                assert not reply.startswith(b"-"), reply
                if elapsed_s > slowest_s:
                    slowest_s, slowest = elapsed_s, b"%d at once" % len(every_one)
            else:
                reply = connection.ask(*PATTERN_COMMANDS[name](b"*a*a*a*a*a*a*a*a"))
                assert LONGEST_KEY.encode() in reply

    print(
        f"\n{name.decode()}: {len(ADVERSARIAL_PATTERNS)} adversarial patterns, slowest "
        f"{slowest_s * 1000:.1f} ms ({slowest[:24]!r}), slowest /_health "
        f"{health.worst_s * 1000:.1f} ms"
    )
    assert slowest_s < REPLY_WITHIN_S
    assert health.worst_s < HEALTH_WITHIN_S


SUBSCRIBERS = 512
"""The RESP connection cap's default: every connection a client may open."""
PATTERNS_PER_SUBSCRIBER = 32
"""The most patterns a connection may follow (pubsub.MAX_PATTERNS)."""
PATTERN_BYTES = 1900
"""Each pattern's adversarial part, so that 32 of them and their numbers fit one request."""
WRITES = 20


def distinct_adversarial_pattern(number: int) -> bytes:
    """An adversarial pattern made distinct by a number (each is compiled and matched on its
    own): a server that follows a pattern once for every connection is not spared."""
    adversarial = ADVERSARIAL_PATTERNS[number % len(ADVERSARIAL_PATTERNS)][:PATTERN_BYTES]
    return adversarial + b"%d" % number


def psubscribe_all_allowed(connection: RespConnection, first: int) -> tuple[int, bytes | None]:
    """PSUBSCRIBE PATTERNS_PER_SUBSCRIBER distinct patterns from `first`: how many the server
    took, and its refusal, if it refused the rest."""
    patterns = [distinct_adversarial_pattern(first + n) for n in range(PATTERNS_PER_SUBSCRIBER)]
    connection.send(command("PSUBSCRIBE", *patterns))
    for taken in range(PATTERNS_PER_SUBSCRIBER):
        reply = connection.reply()
        if reply.startswith(b"-"):
            return taken, reply
    return PATTERNS_PER_SUBSCRIBER, None


def test_adversarial_patterns_followed_by_every_connection_cost_writes_a_bounded_time(
    tmp_path: Path,
) -> None:
    """Every connection follows as many distinct adversarial patterns as the server lets it,
    with keyspace notifications on. Each was matched against every change's channels on the
    store's write path, inside the memory store's lock: the first SET after they subscribed
    took seconds (their regular expressions compiled), every later one tens of milliseconds,
    and every other client waited as long. Now writes only queue the change for the RESP
    server's dispatcher, and the patterns all connections follow together are capped."""
    with resp_service(tmp_path) as (service, port):
        with authenticated(port) as admin:
            assert admin.ask("CONFIG", "SET", "notify-keyspace-events", "KEA") == b"+OK\r\n"
        listener = authenticated(port, timeout_s=10.0)
        assert listener.ask("PSUBSCRIBE", "__keyspace@0__:watched").startswith(b"*3\r\n")
        subscribers: list[RespConnection] = []
        followed, refusals = 0, set[bytes]()
        try:
            for index in range(SUBSCRIBERS - 3):  # the listener, the writer, /_health's peer
                subscriber = authenticated(port, timeout_s=10.0)
                subscribers.append(subscriber)
                taken, refusal = psubscribe_all_allowed(subscriber, index * PATTERNS_PER_SUBSCRIBER)
                followed += taken
                refusals |= {refusal} if refusal else set()
            with authenticated(port, timeout_s=30.0) as writer, HealthWatch(service.url) as health:
                slowest_s = 0.0
                for n in range(WRITES):
                    started = time.perf_counter()
                    # Keys as long as patterns are: a channel shorter than a pattern's
                    # fixed bytes is passed over without matching.
                    assert writer.ask("SET", f"{LONGEST_KEY[:240]}{n}", "v") == b"+OK\r\n"
                    slowest_s = max(slowest_s, time.perf_counter() - started)
                started = time.perf_counter()
                assert writer.ask("SET", "watched", "v") == b"+OK\r\n"
                slowest_s = max(slowest_s, time.perf_counter() - started)
                notification = listener.reply()
                time.sleep(0.1)  # /_health is asked again while the notifications flow
        finally:
            for subscriber in subscribers:
                subscriber.close()
            listener.close()

    print(
        f"\n{len(subscribers)} connections following {followed} distinct adversarial patterns "
        f"({sorted(refusals)!r} for the rest): slowest of {WRITES + 1} SETs "
        f"{slowest_s * 1000:.1f} ms, slowest /_health {health.worst_s * 1000:.1f} ms"
    )
    assert notification == command(
        "pmessage", "__keyspace@0__:watched", "__keyspace@0__:watched", "set"
    )
    assert slowest_s < REPLY_WITHIN_S
    assert health.worst_s < HEALTH_WITHIN_S


# -- pipelines: a few bytes a command, a kilobyte a reply --------------------------------------

PIPELINED_GETS = 40_000
"""`GET k\r\n` this many times: 280 KB sent at once, more than asyncio reads in one go."""
PIPELINERS = 10
PIPELINE_BUDGET_BYTES = 16_000_000
"""The reply budget for the test: what the pipeliners may make the process hold."""


class PingWatch:
    """PING every 20 ms on its own authenticated connection, until the `with` ends;
    `worst_s` is the slowest answer."""

    def __init__(self, port: int) -> None:
        self.connection = authenticated(port)
        self.worst_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            assert self.connection.ask("PING") == b"+PONG\r\n"
            self.worst_s = max(self.worst_s, time.perf_counter() - started)
            self._stop.wait(0.02)


def test_pipelined_commands_that_never_read_cost_one_read_s_worth_not_the_whole_pipeline(
    tmp_path: Path,
) -> None:
    """Ten clients each send 40,000 `GET k` of a 1 KiB value at once and never read. The
    server read 256 KiB at a time and ran all of it in one turn of its loop: 14.5 MB of
    replies built per read before the budget could judge them, RSS +57 MiB with a 16 MB
    budget, and another connection's PING waited 0.7 s. Reads of 16 KiB (as Redis's), and
    batches that stop at 64 KiB of replies until the client reads them, bound both."""
    with resp_service(tmp_path, "--max-reply-buffer-bytes", str(PIPELINE_BUDGET_BYTES)) as (
        service,
        port,
    ):
        with authenticated(port) as connection:
            assert connection.ask("SET", "k", "v" * 1000) == b"+OK\r\n"
        baseline = service.rss_bytes()
        pipeline = b"GET k\r\n" * PIPELINED_GETS
        with PingWatch(port) as ping, HealthWatch(service.url) as health:
            pipeliners = [authenticated(port) for _ in range(PIPELINERS)]
            peak = baseline
            try:
                for pipeliner in pipeliners:
                    with contextlib.suppress(OSError):  # it stops reading, or is closed
                        pipeliner.sock.settimeout(2.0)
                        pipeliner.send(pipeline)
                    peak = max(peak, service.rss_bytes())
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    peak = max(peak, service.rss_bytes())
                    time.sleep(0.05)
            finally:
                for pipeliner in pipeliners:
                    pipeliner.close()
    grown = peak - baseline
    print(
        f"\n{PIPELINERS} clients pipelining {PIPELINED_GETS} GETs of 1 KiB, never reading: "
        f"RSS +{grown / 2**20:.1f} MiB, slowest PING {ping.worst_s * 1000:.1f} ms, slowest "
        f"/_health {health.worst_s * 1000:.1f} ms"
    )
    assert grown < 16 * 2**20
    assert ping.worst_s < 0.1
    assert health.worst_s < HEALTH_WITHIN_S
