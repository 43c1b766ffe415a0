"""Keys that expire over RESP, where kvservice has more to show than Redis: deadlines on the
store's hand-driven clock (exact TTLs, the edges of the deadline), the expiry in HISTORY, a
key expiring for real, SET ... GET and GETEX staying atomic while other writes race them, and
redis-py's own methods. What Redis answers byte for byte is test_resp_expiry_vs_redis.py's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from kvservice.execution import Execution
from kvservice.resp.commands.expiry import RACE_ATTEMPTS
from kvservice.resp.server import RespServer
from kvservice.store import InvalidKey, Value, validate_key
from kvservice.store.memory import MemoryStore
from tests.support.clock import FakeClock
from tests.support.rawresp import RespConnection, running_resp

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
START_MS = 1_700_000_000_000


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def integer(number: int) -> bytes:
    return b":%d\r\n" % number


def history(*entries: tuple[int, bytes | None]) -> bytes:
    """HISTORY's reply: [timestamp, value or nil] pairs, newest first."""
    items = [
        b"*2\r\n" + integer(ms) + (NIL if data is None else bulk(data)) for ms, data in entries
    ]
    return b"*%d\r\n" % len(items) + b"".join(items)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START_MS)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture(params=list(Execution), ids=lambda execution: execution.value)
def server(
    store: MemoryStore, clock: FakeClock, request: pytest.FixtureRequest
) -> Iterator[RespServer]:
    """The server on the store's hand-driven clock, commands run on its loop and on workers."""
    with running_resp(store, execution=request.param) as resp_server:
        resp_server.figures.clock = clock
        yield resp_server


@pytest.fixture
def conn(server: RespServer) -> Iterator[RespConnection]:
    with RespConnection(server.port) as connection:
        yield connection


# -- deadlines on the store's clock -------------------------------------------------------------


def test_a_key_is_there_until_its_deadline_and_gone_at_it(
    conn: RespConnection, clock: FakeClock
) -> None:
    assert conn.ask("SET", "k", "v", "PX", "100") == OK
    assert conn.ask("PEXPIRETIME", "k") == integer(START_MS + 100)
    clock.advance(99)
    assert conn.ask("GET", "k") == bulk(b"v")
    assert conn.ask("PTTL", "k") == integer(1)
    assert conn.ask("TTL", "k") == integer(0)  # rounded to the nearest second, as Redis does
    clock.advance(1)
    assert conn.ask("GET", "k") == NIL
    assert conn.ask("PTTL", "k") == integer(-2)
    assert conn.ask("EXISTS", "k") == integer(0)
    assert conn.ask("SET", "k", "again", "NX") == OK, "create works on an expired key"


def test_each_way_of_giving_a_deadline_gives_the_same_one(
    conn: RespConnection, clock: FakeClock
) -> None:
    deadline = START_MS + 5_000
    writes = [
        ["SET", "k", "v", "EX", "5"],
        ["SET", "k", "v", "PX", "5000"],
        ["SET", "k", "v", "EXAT", str(deadline // 1000)],
        ["SET", "k", "v", "PXAT", str(deadline)],
        ["SETEX", "k", "5", "v"],
        ["PSETEX", "k", "5000", "v"],
    ]
    changes = [
        ["EXPIRE", "k", "5"],
        ["PEXPIRE", "k", "5000"],
        ["EXPIREAT", "k", str(deadline // 1000)],
        ["PEXPIREAT", "k", str(deadline)],
        ["GETEX", "k", "EX", "5"],
        ["GETEX", "k", "PX", "5000"],
        ["GETEX", "k", "EXAT", str(deadline // 1000)],
        ["GETEX", "k", "PXAT", str(deadline)],
    ]
    for write in writes:
        assert conn.ask(*write) == OK, write
        assert conn.ask("PEXPIRETIME", "k") == integer(deadline), write
        assert conn.ask("TTL", "k") == integer(5), write
        assert conn.ask("PTTL", "k") == integer(5000), write
    for change in changes:
        assert conn.ask("SET", "k", "v") == OK
        assert conn.ask("PTTL", "k") == integer(-1)
        assert conn.ask(*change) in (integer(1), bulk(b"v")), change
        assert conn.ask("PEXPIRETIME", "k") == integer(deadline), change


def test_ttl_and_expiretime_round_to_the_nearest_second_as_redis_does(
    conn: RespConnection,
) -> None:
    assert conn.ask("SET", "k", "v", "PX", "1500") == OK
    assert conn.ask("TTL", "k") == integer(2)
    assert conn.ask("SET", "k", "v", "PX", "1499") == OK
    assert conn.ask("TTL", "k") == integer(1)
    assert conn.ask("PEXPIREAT", "k", "4102444800500") == integer(1)
    assert conn.ask("EXPIRETIME", "k") == integer(4102444801)
    assert conn.ask("PEXPIREAT", "k", "4102444800499") == integer(1)
    assert conn.ask("EXPIRETIME", "k") == integer(4102444800)


def test_a_relative_time_counts_from_the_stores_clock(
    server: RespServer, store: MemoryStore, clock: FakeClock
) -> None:
    """The server's clock (the wall clock in production) is not where EX starts from."""
    server.figures.clock = lambda: clock() + 60_000
    with RespConnection(server.port) as conn:
        assert conn.ask("SET", "k", "v", "EX", "10") == OK
        assert conn.ask("EXPIRE", "j", "10") == integer(0)
    assert store.get("k").expires_at_ms == START_MS + 10_000


def test_a_deadline_the_wall_clock_has_passed_reads_0_as_in_redis(
    server: RespServer, clock: FakeClock
) -> None:
    """Until the store's clock reaches it the key is there; the time left is never negative."""
    server.figures.clock = lambda: clock() + 5_000
    with RespConnection(server.port) as conn:
        assert conn.ask("SET", "k", "v", "PX", "3000") == OK
        assert conn.ask("PTTL", "k") == integer(0)
        assert conn.ask("TTL", "k") == integer(0)
        assert conn.ask("PEXPIRETIME", "k") == integer(START_MS + 3_000)


def test_a_plain_write_removes_the_deadline_and_keepttl_keeps_it(conn: RespConnection) -> None:
    assert conn.ask("SET", "k", "v", "EX", "100") == OK
    assert conn.ask("SET", "k", "w", "KEEPTTL") == OK
    assert conn.ask("TTL", "k") == integer(100)
    assert conn.ask("SET", "k", "x", "XX") == OK
    assert conn.ask("TTL", "k") == integer(-1)
    assert conn.ask("SETEX", "k", "100", "y") == OK
    assert conn.ask("SET", "k", "z") == OK
    assert conn.ask("TTL", "k") == integer(-1)


# -- the history --------------------------------------------------------------------------------


def test_history_shows_the_expiry_at_the_deadline_like_a_delete(
    conn: RespConnection, clock: FakeClock
) -> None:
    assert conn.ask("SET", "k", "v", "PX", "100") == OK
    clock.advance(250)  # nobody reads the key in between: the entry is still at the deadline

    assert conn.ask("HISTORY", "k") == history((START_MS + 100, None), (START_MS, b"v"))


def test_a_deadline_already_passed_deletes_at_once_recorded_at_now(
    conn: RespConnection, clock: FakeClock
) -> None:
    assert conn.ask("SET", "k", "v") == OK
    clock.advance(10)
    assert conn.ask("EXPIREAT", "k", "1") == integer(1)
    assert conn.ask("GET", "k") == NIL
    assert conn.ask("HISTORY", "k") == history((START_MS + 10, None), (START_MS, b"v"))
    clock.advance(10)
    assert conn.ask("SET", "k", "w", "PXAT", "1", "GET") == NIL
    assert conn.ask("GET", "k") == NIL
    assert conn.ask("HISTORY", "k")[:4] == b"*4\r\n"


def test_changing_a_deadline_writes_no_history(conn: RespConnection, clock: FakeClock) -> None:
    assert conn.ask("SET", "k", "v") == OK
    assert conn.ask("EXPIRE", "k", "10") == integer(1)
    assert conn.ask("PERSIST", "k") == integer(1)
    assert conn.ask("GETEX", "k", "PX", "5") == bulk(b"v")
    assert conn.ask("PTTL", "k") == integer(5)
    assert conn.ask("HISTORY", "k") == history((START_MS, b"v"))


def test_a_key_with_a_short_ttl_expires_for_real_and_its_history_says_when() -> None:
    """On the wall clock, as the service runs: SET PX, then wait past the deadline."""
    with running_resp(MemoryStore()) as server, RespConnection(server.port) as conn:
        assert conn.ask("SET", "k", "v", "PX", "200") == OK
        deadline = int(conn.ask("PEXPIRETIME", "k")[1:-2])
        assert 0 < deadline - time.time() * 1000 <= 200
        time.sleep(max(0.0, deadline / 1000 - time.time()) + 0.05)

        assert conn.ask("GET", "k") == NIL
        assert conn.ask("TTL", "k") == integer(-2)
        assert conn.ask("HISTORY", "k") == history((deadline, None), (deadline - 200, b"v"))


# -- atomic reads and writes under contention -----------------------------------------------------


class RacedStore(MemoryStore):
    """A MemoryStore where another client writes the key right after each of the next
    `races` reads: what a read-then-write command meets when other writes land between."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.raced = 0

    def get(self, key: str) -> Value:
        try:
            return super().get(key)
        finally:
            if self.races > 0:
                self.races -= 1
                self.raced += 1
                self.put(key, b"other%d" % self.raced)


def test_set_get_returns_the_value_it_replaced_even_when_writes_race_it() -> None:
    store = RacedStore(races=0)
    store.put("k", b"first")
    store.races = 2
    with running_resp(store) as server, RespConnection(server.port) as conn:
        assert conn.ask("SET", "k", "mine", "GET") == bulk(b"other2")
    assert [entry.data for entry in store.history("k")] == [b"mine", b"other2", b"other1", b"first"]


def test_set_nx_get_on_a_key_created_by_a_racing_write_writes_nothing() -> None:
    store = RacedStore(races=1)
    with running_resp(store) as server, RespConnection(server.port) as conn:
        assert conn.ask("SET", "k", "mine", "NX", "GET") == bulk(b"other1")
    assert store.get("k").data == b"other1"


def test_getex_sets_the_deadline_of_the_value_it_returns_even_when_writes_race_it() -> None:
    store = RacedStore(races=0)
    store.put("k", b"first")
    store.races = 1
    with running_resp(store) as server, RespConnection(server.port) as conn:
        assert conn.ask("GETEX", "k", "PX", "100000") == bulk(b"other1")
        assert 0 < int(conn.ask("PTTL", "k")[1:-2]) <= 100_000
    assert store.get("k").data == b"other1"


def test_a_command_raced_without_end_gives_up_and_writes_nothing() -> None:
    store = RacedStore(races=RACE_ATTEMPTS)
    with running_resp(store) as server, RespConnection(server.port) as conn:
        assert conn.ask("SET", "k", "mine", "GET") == (
            b"-ERR the key changed under set %d times in a row; nothing was done, try again\r\n"
            % RACE_ATTEMPTS
        )
        assert conn.ask("GET", "k") == bulk(b"other%d" % RACE_ATTEMPTS)
    assert b"mine" not in [entry.data for entry in store.history("k")]


# -- kvservice's own rules -----------------------------------------------------------------------


def test_invalid_keys_get_the_stores_message_after_the_options_are_judged(
    conn: RespConnection,
) -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_key("bad-key")
    invalid = f"-INVALIDKEY {raised.value}\r\n".encode()
    for command in (
        ["SET", "bad-key", "v", "EX", "10"],
        ["SETEX", "bad-key", "10", "v"],
        ["GETEX", "bad-key", "PERSIST"],
        ["EXPIRE", "bad-key", "10"],
        ["PERSIST", "bad-key"],
        ["TTL", "bad-key"],
        ["PEXPIRETIME", "bad-key"],
    ):
        assert conn.ask(*command) == invalid, command
    assert conn.ask("SET", "bad-key", "v", "EX", "ten") == (
        b"-ERR value is not an integer or out of range\r\n"
    )
    assert conn.ask("EXPIRE", "bad-key", "10", "SOON") == b"-ERR Unsupported option SOON\r\n"


def test_an_unsupported_option_is_echoed_escaped(conn: RespConnection) -> None:
    assert conn.ask("EXPIRE", "k", "10", b"\r\n+OK") == b"-ERR Unsupported option \\r\\n+OK\r\n"


def test_a_huge_deadline_is_kept_and_reported_exactly(conn: RespConnection) -> None:
    assert conn.ask("SET", "k", "v", "PXAT", str(2**63 - 1)) == OK
    assert conn.ask("PEXPIRETIME", "k") == integer(2**63 - 1)
    assert conn.ask("EXPIRETIME", "k") == integer((2**63 - 1 + 500) // 1000)
    assert conn.ask("GET", "k") == bulk(b"v")


# -- redis-py --------------------------------------------------------------------------------------


@pytest.fixture
def redis_py(server: RespServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port, protocol=2, socket_timeout=2)
    yield client
    client.close()


def test_redis_py_writes_with_deadlines_and_reads_them(
    redis_py: redis.Redis, clock: FakeClock
) -> None:
    r = redis_py
    assert r.set("k", "v", ex=100) is True
    assert r.ttl("k") == 100
    assert r.pttl("k") == 100_000
    assert r.pexpiretime("k") == START_MS + 100_000
    assert r.expiretime("k") == (START_MS + 100_000 + 500) // 1000
    assert r.set("k", "w", keepttl=True, get=True) == b"v"
    assert r.ttl("k") == 100
    assert r.set("k", "x", pxat=START_MS + 5_000) is True
    assert r.pttl("k") == 5_000
    assert r.set("k", "y", exat=START_MS // 1000 + 7) is True
    assert r.pexpiretime("k") == START_MS + 7_000
    assert r.set("k", "z", px=1_500, xx=True, get=True) == b"y"
    assert r.set("k", "z", nx=True, ex=5) is None
    assert r.set("k", "plain") is True
    assert r.ttl("k") == -1
    assert r.setex("s", 10, "v") is True
    assert r.psetex("p", 1_500, "v") is True
    assert r.pttl("p") == 1_500
    assert r.ttl("missing") == -2
    assert r.expiretime("missing") == -2
    clock.advance(1_500)
    assert r.get("p") is None
    assert r.get("s") == b"v"
    clock.advance(8_500)
    assert r.get("s") is None


def test_redis_py_changes_and_removes_deadlines(redis_py: redis.Redis) -> None:
    r = redis_py
    r.set("k", "v")
    assert r.expire("k", 50, xx=True) is False
    assert r.expire("k", 50, nx=True) is True
    assert r.expire("k", 60, nx=True) is False
    assert r.expire("k", 40, gt=True) is False
    assert r.expire("k", 70, gt=True) is True
    assert r.expire("k", 60, lt=True) is True
    assert r.ttl("k") == 60
    assert r.pexpire("k", 30_000, xx=True) is True
    assert r.expireat("k", START_MS // 1000 + 20) is True
    assert r.pexpireat("k", START_MS + 10_000) is True
    assert r.pttl("k") == 10_000
    assert r.persist("k") is True
    assert r.persist("k") is False
    assert r.expire("missing", 10) is False
    assert r.getex("k", ex=10) == b"v"
    assert r.ttl("k") == 10
    assert r.getex("k", persist=True) == b"v"
    assert r.ttl("k") == -1
    assert r.getex("k", px=2_000) == b"v"
    assert r.pttl("k") == 2_000
    assert r.getex("k", pxat=START_MS + 3_000) == b"v"
    assert r.getex("k", exat=START_MS // 1000 + 4) == b"v"
    assert r.pttl("k") == 4_000
    assert r.getex("missing", ex=10) is None


def test_redis_py_raises_redis_errors_for_bad_times(redis_py: redis.Redis) -> None:
    r = redis_py
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'set' command$"):
        r.execute_command("SET", "k", "v", "EX", 0)  # type: ignore[no-untyped-call]
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'setex' command$"):
        r.setex("k", -1, "v")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.execute_command("EXPIRE", "k", "soon")  # type: ignore[no-untyped-call]
    with pytest.raises(redis.ResponseError, match=r"^GT and LT options at the same time"):
        r.expire("k", 10, gt=True, lt=True)
    assert r.get("k") is None
