"""SET's options and the commands on deadlines, against a real redis-server 7: the same command
sequences go to it and to kvservice, and the replies are compared one for one, as the bytes on
the wire (RESP2, and again RESP3), error texts included.

kvservice runs over each backend with the production clock: the memory store, and the Redis
store on a redis-server of its own (its deadlines in Redis, its relative times from Redis's
TIME). A reply that is a time left (TTL, PTTL, not negative) depends on when it was asked, so
those are compared within a tolerance; absolute deadlines (EXPIRETIME, PEXPIRETIME) are exact.
Keys are kvservice's ([A-Za-z0-9]); where kvservice differs from Redis on purpose (invalid
keys, values over the limit) it is tested elsewhere, not here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from kvservice.execution import Execution
from kvservice.store import Store
from kvservice.store.memory import MemoryStore
from kvservice.store.redis import RedisStore
from tests.support.rawresp import RespConnection, running_resp
from tests.support.redis_servers import RedisProcess, running_redis

SLEEP = "SLEEP"
"""Not a command: `SLEEP ms` waits that long before the next one is sent to either server."""
TOLERANCE = {"TTL": 1, "PTTL": 1_000}
"""How far apart two time-left replies may be: the two servers are asked a moment apart."""

SEQUENCES: dict[str, str] = {
    "set_with_each_deadline_option": """
        SET k v EX 100
        TTL k
        PTTL k
        SET k v PX 100000
        PTTL k
        TTL k
        SET k v EXAT 4102444800
        EXPIRETIME k
        PEXPIRETIME k
        TTL k
        SET k v PXAT 4102444800123
        PEXPIRETIME k
        EXPIRETIME k
        SET k v PXAT 4102444800500
        EXPIRETIME k
        SET k v ex 100
        SET k v
        TTL k
        SET k v EX 100
        SET k w KEEPTTL
        TTL k
        GET k
        SET k v keepttl keepttl
        TTL k
        SET k v EX 10 EX 100
        TTL k
        SET k v PX 10 px 100000
        PTTL k
        SET k v PXAT 4102444800000 PXAT 4102444801000
        PEXPIRETIME k
    """,
    "set_conditions_and_get": """
        SET k v NX GET
        SET k w NX GET
        GET k
        SET k w XX GET
        GET k
        SET m w XX GET
        GET m
        SET k x GET NX
        SET k x GET
        SET k y GET GET
        GET k
        SET k z NX NX
        SET k z XX XX
        GET k
        SET n v XX
        SET n v NX
        SET n w NX
        GET n
        SET k v EX 100 GET
        TTL k
        SET k w KEEPTTL GET
        TTL k
        SET k x GET XX EX 200
        TTL k
        SET k y GET
        TTL k
        SET p v GET NX PX 100000
        PTTL p
        SET p w nx get px 100000
        GET p
    """,
    "set_syntax_errors": """
        SET k v NX XX
        SET k v XX NX
        SET k v NX GET XX
        SET k v EX 10 PX 20
        SET k v EX 10 KEEPTTL
        SET k v KEEPTTL EX 10
        SET k v KEEPTTL PXAT 10
        SET k v EXAT 10 PXAT 10
        SET k v PX 10 EXAT 10
        SET k v PERSIST
        SET k v FOO
        SET k v NX FOO
        SET k v EX
        SET k v PX
        SET k v NX EXAT
        SET k v EX abc NX XX
        SET k v NX XX EX abc
        SET k v EX 10 BAR
        GET k
        SET k v EX NX
        SET k v PX GET
        GET k
    """,
    "set_times_out_of_range": """
        SET k v EX 0
        SET k v EX -1
        SET k v PX 0
        SET k v PX -100
        SET k v EXAT 0
        SET k v PXAT -5
        SET k v EX abc
        SET k v EX 01
        SET k v EX +5
        SET k v PX -0
        SET k v PX 1.5
        SET k v EX 1e3
        SET k v EX 9223372036854775808
        SET k v PX -9223372036854775809
        SET k v PX 99999999999999999999
        SET k v EX 9223372036854775
        SET k v EX 9223372036854776
        SET k v PX 9223372036854775807
        SET k v EXAT 9223372036854776
        SET k v EXAT -9223372036854775808
        GET k
        SET k v EX 0 GET
        SET k v NX EX abc
        GET k
    """,
    "deadlines_past_2_to_the_53_ms": """
        SET k v EXAT 9223372036854775
        EXPIRETIME k
        PEXPIRETIME k
        SET k v PXAT 9223372036854775807
        PEXPIRETIME k
        EXPIRETIME k
        SET k v PX 9223370000000000000
        TTL k
        SET k v
        EXPIREAT k 9223372036854775
        EXPIRETIME k
        PEXPIRETIME k
        PEXPIREAT k 9223372036854775807
        PEXPIRETIME k
        EXPIRETIME k
        GETEX k PXAT 9007199254740993
        PEXPIRETIME k
        PEXPIRE k 9007199254740993 GT
        PTTL k
    """,
    "set_with_a_deadline_passed": """
        SET k v PXAT 1
        GET k
        EXISTS k
        TTL k
        SET k v EXAT 1 GET
        GET k
        SET k v
        SET k w PXAT 1 GET
        GET k
        SET k v
        SET k w EXAT 1000000000 XX GET
        EXISTS k
        SET k v PXAT 1 NX
        GET k
    """,
    "setex_and_psetex": """
        SETEX k 100 v
        TTL k
        GET k
        PSETEX k 100000 w
        PTTL k
        GET k
        SETEX k 0 v
        SETEX k -5 v
        SETEX k abc v
        SETEX k 01 v
        SETEX k 9223372036854775 v
        SETEX k 9223372036854775808 v
        PSETEX k 0 v
        PSETEX k -1 v
        PSETEX k 9223372036854775807 v
        PSETEX k 01 v
        SETEX k 10
        SETEX k 10 v extra
        PSETEX k
        PSETEX k 10 v NX
        GET k
        SET k v
        SETEX k 100 w
        TTL k
        SET k x
        TTL k
    """,
    "getex": """
        GETEX nokey
        GETEX nokey EX abc
        GETEX nokey EX 0
        GETEX nokey PXAT 1
        GETEX nokey FOO
        GETEX nokey NX
        GETEX nokey XX
        GETEX nokey KEEPTTL
        GETEX nokey GET
        GETEX nokey EX
        GETEX nokey EX 10 PX 10
        GETEX nokey EX abc FOO
        EXISTS nokey
        SET k v
        GETEX k EX abc
        GETEX k EX 0
        GETEX k EX -1
        GETEX k PX 01
        GETEX k EX 9223372036854775
        GETEX k PX 9223372036854775807
        GETEX k EXAT 9223372036854776
        GETEX k EX 10 PERSIST
        GETEX k PERSIST EX 10
        GETEX k PERSIST PERSIST
        TTL k
        GETEX k EX 10 ex 100
        TTL k
        GETEX k
        TTL k
        GETEX k persist
        TTL k
        GETEX k PX 100000
        PTTL k
        GETEX k EXAT 4102444800
        EXPIRETIME k
        GETEX k PXAT 4102444800999
        PEXPIRETIME k
        EXPIRETIME k
        GETEX k PXAT 1
        EXISTS k
        GETEX k
        GETEX
    """,
    "expire_pexpire_expireat_pexpireat": """
        EXPIRE nokey 10
        PEXPIRE nokey 10000
        EXPIREAT nokey 4102444800
        PEXPIREAT nokey 4102444800000
        EXISTS nokey
        SET k v
        EXPIRE k 100
        TTL k
        PEXPIRE k 200000
        PTTL k
        EXPIREAT k 4102444800
        EXPIRETIME k
        PEXPIREAT k 4102444800123
        PEXPIRETIME k
        EXPIRE k 0
        EXISTS k
        SET k v
        PEXPIRE k -1
        EXISTS k
        SET k v
        EXPIREAT k 1
        GET k
        SET k v
        PEXPIREAT k 0
        GET k
        SET k v
        PEXPIREAT k -100
        GET k
        SET k v
        EXPIRE k -9223372036854775
        EXISTS k
        SET k v
        PEXPIRE k -9223372036854775808
        EXISTS k
        SET k v EX 100
        SET k w
        TTL k
    """,
    "expire_flags": """
        SET k v
        EXPIRE k 100 XX
        EXPIRE k 100 GT
        TTL k
        EXPIRE k 100 LT
        TTL k
        EXPIRE k 50 LT
        TTL k
        EXPIRE k 80 GT
        TTL k
        EXPIRE k 90 nx
        EXPIRE k 90 xx
        TTL k
        EXPIRE k 80 XX LT
        TTL k
        EXPIRE k 85 LT XX
        EXPIRE k 85 XX GT
        TTL k
        EXPIRE k 95 gt xx
        TTL k
        EXPIRE k 94 GT GT
        EXPIRE k 90 lt LT
        TTL k
        PERSIST k
        EXPIRE k 80 XX LT
        EXPIRE k 80 LT XX
        EXPIRE k 80 XX GT
        TTL k
        EXPIRE k 80 NX
        TTL k
        EXPIRE k 90 NX NX
        TTL k
        PERSIST k
        EXPIRE k -10 GT
        EXPIRE k -10 XX
        EXISTS k
        EXPIRE k -10 LT
        EXISTS k
        SET k v
        EXPIRE k -10 NX
        EXISTS k
        SET k v
        PEXPIREAT k 4102444800000 GT
        PEXPIREAT k 4102444800000 LT
        PEXPIRETIME k
        PEXPIREAT k 4102444800001 LT
        PEXPIREAT k 4102444799999 GT
        PEXPIREAT k 4102444800001 GT
        PEXPIRETIME k
        EXPIREAT k 4102444800 LT
        PEXPIRETIME k
        EXPIREAT k 4102444800 LT
        PEXPIREAT k 1 GT
        PEXPIREAT k 1 LT
        EXISTS k
        EXPIRE nokey 10 NX
        EXPIRE nokey 10 XX LT
    """,
    "expire_errors": """
        EXPIRE k 10 FOO
        EXPIRE k 10 foo
        EXPIRE k 10 NX foo
        EXPIRE k abc FOO
        EXPIRE k abc NX XX
        EXPIRE k 10 NX GT
        EXPIRE k 10 NX LT
        EXPIRE k 10 GT LT
        EXPIRE k 10 XX GT LT
        EXPIRE k 10 NX XX GT LT
        EXPIRE k 10 GT NX
        EXPIRE k 10 nx xx
        PEXPIRE k 10 GT lt
        EXPIREAT k 10 bar
        PEXPIREAT k 10 XX NX
        EXPIRE k abc
        EXPIRE k 1.5
        EXPIRE k 01
        EXPIRE k +1
        EXPIRE k -0
        EXPIRE k 9223372036854775808
        EXPIRE k 9223372036854775
        EXPIRE k 9223372036854776
        EXPIRE k -9223372036854776
        PEXPIRE k 9223372036854775807
        EXPIREAT k 9223372036854776
        EXPIREAT k -9223372036854776
        PEXPIREAT k -9223372036854775809
        SET k v
        EXPIRE k 9223372036854775
        PEXPIRE k 9223372036854775807
        EXPIREAT k 9223372036854776
        TTL k
        EXPIRE k
        EXPIRE
        PEXPIRE k
        EXPIREAT k
        PEXPIREAT
    """,
    "ttl_and_persist": """
        TTL nokey
        PTTL nokey
        EXPIRETIME nokey
        PEXPIRETIME nokey
        PERSIST nokey
        SET k v
        TTL k
        PTTL k
        EXPIRETIME k
        PEXPIRETIME k
        PERSIST k
        EXPIRE k 100
        PERSIST k
        PERSIST k
        TTL k
        GET k
        SET k v PXAT 4102444800000
        PERSIST k
        PEXPIRETIME k
        TTL
        TTL a b
        PTTL
        PERSIST
        PERSIST a b
        EXPIRETIME a b
        PEXPIRETIME
    """,
    "keys_expire_when_their_deadline_passes": """
        SET k v PX 100
        SET j v PX 100
        SET l v PX 100000
        PSETEX m 100 v
        SET n v
        PEXPIRE n 100
        SET o v
        GETEX o PX 100
        SET q v
        PEXPIREAT q 4102444800000
        SET r v EX 100
        SET r w KEEPTTL
        PEXPIRE r 100
        SLEEP 300
        GET k
        EXISTS k j l m n o q r
        TTL j
        PTTL j
        PTTL l
        GET m
        GET n
        GETEX o
        GET r
        SET k w NX
        GET k
        TTL k
        SET j w XX
        GET j
        EXPIRE m 10
        PERSIST n
    """,
}


def steps(sequence: str) -> list[list[str]]:
    return [line.split() for line in sequence.strip().splitlines()]


def replies(port: int, protocol: int, sequence: list[list[str]]) -> list[bytes]:
    """Each command's raw reply, after HELLO `protocol` (whose reply is not compared)."""
    with RespConnection(port) as connection:
        connection.ask("HELLO", str(protocol))
        answers = []
        for step in sequence:
            if step[0] == SLEEP:
                time.sleep(int(step[1]) / 1000)
                continue
            answers.append(connection.ask(*step))
        return answers


_TIME_LEFT = re.compile(rb":([0-9]+)\r\n")


def same(command: str, ours: bytes, redis: bytes) -> bool:
    """Byte for byte, or for a time left of both (TTL, PTTL), within the tolerance."""
    if ours == redis:
        return True
    both = _TIME_LEFT.fullmatch(ours), _TIME_LEFT.fullmatch(redis)
    if command.upper() not in TOLERANCE or None in both:
        return False
    ours_left, redis_left = (int(match[1]) for match in both if match)
    return abs(ours_left - redis_left) <= TOLERANCE[command.upper()]


@pytest.fixture
def real_redis(redis_server: RedisProcess) -> Iterator[RedisProcess]:
    """The Redis whose replies are the reference, emptied."""
    redis_server.flush()
    yield redis_server


@pytest.fixture(scope="module")
def backend_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """Another redis-server, for kvservice's Redis store to keep its data in."""
    with running_redis(tmp_path_factory.mktemp("backend")) as server:
        yield server


def redis_backend(request: pytest.FixtureRequest) -> tuple[Store, Execution]:
    server: RedisProcess = request.getfixturevalue("backend_redis")
    server.flush()
    store = RedisStore.from_url(server.url, connections=4, timeout_s=5.0)
    request.addfinalizer(store.close)
    return store, Execution.WORKERS


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], tuple[Store, Execution]]] = {
    "memory": lambda request: (MemoryStore(), Execution.INLINE),
    "redis": redis_backend,
}
"""Each store kvservice is compared on, and where its commands run (a store that waits on the
network runs them on workers, as the service does)."""
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}
"""Where a backend is known to answer otherwise, and why (strict: a fix shows up as a pass)."""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_replies_are_redis_7s_byte_for_byte(
    real_redis: RedisProcess,
    name: str,
    protocol: int,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    if (backend, name) in KNOWN_DIFFERENCES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_DIFFERENCES[backend, name], strict=True))
    sequence = steps(SEQUENCES[name])
    store, execution = BACKENDS[backend](request)
    with running_resp(store, execution=execution) as kvservice:
        ours = replies(kvservice.port, protocol, sequence)
    theirs = replies(real_redis.port, protocol, sequence)

    commands = [step for step in sequence if step[0] != SLEEP]
    differences = [
        f"{' '.join(step)}: kvservice {mine!r}, redis {redis!r}"
        for step, mine, redis in zip(commands, ours, theirs, strict=True)
        if not same(step[0], mine, redis)
    ]
    assert not differences, "\n".join(differences)


def test_the_comparison_sees_a_difference() -> None:
    """The tolerance covers time left only, and only a little of it."""
    assert same("PTTL", b":100000\r\n", b":99990\r\n")
    assert not same("PTTL", b":100000\r\n", b":90000\r\n")
    assert not same("PTTL", b":-1\r\n", b":0\r\n")
    assert not same("EXPIRETIME", b":4102444800\r\n", b":4102444801\r\n")
    assert not same("SET", b"+OK\r\n", b"-ERR syntax error\r\n")
