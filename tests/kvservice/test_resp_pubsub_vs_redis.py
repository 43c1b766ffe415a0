"""Keyspace notifications and the subscribe family against a real redis-server 7: the same
steps, over several connections, go to it and to kvservice (the memory store, with its change
feed), and everything each connection receives is compared as the bytes on the wire, in
RESP2 and again in RESP3: confirmations, messages and their order, refusals in subscribed
mode, CONFIG SET and GET of notify-keyspace-events, RESET and QUIT.

A step is `name: COMMAND args` on the connection `name` (opened with HELLO, whose reply is
not compared), or `SLEEP ms`; `""` is an empty argument. A step waits for its replies before
the next is sent, so one connection's command is served before another's that follows it.
Left out on purpose: UNSUBSCRIBE without arguments while following several channels (Redis
drops them in its hash table's order), events kvservice does not have (`expire`, `persist`:
no SET ... EX with the `g` class on; `new`, the `n` class), and the words of an unknown
command.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kvservice.execution import Execution
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.store.memory import MemoryStore
from tests.support.rawresp import RespConnection, running_resp
from tests.support.redis_servers import RedisProcess

SLEEP = "SLEEP"
EMPTY = '""'
QUIET_S = 0.3
"""How long a connection stays silent before all it was sent is taken to have arrived."""
_FAMILY = {"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE"}
_MESSAGES = (
    b"*3\r\n$7\r\nmessage\r\n",
    b">3\r\n$7\r\nmessage\r\n",
    b"*4\r\n$8\r\npmessage\r\n",
    b">4\r\n$8\r\npmessage\r\n",
)
"""How a message begins, RESP2 and RESP3: it is no command's reply."""

SEQUENCES: dict[str, str] = {
    "confirmations_and_counts": """
        s: SUBSCRIBE a b a
        s: PSUBSCRIBE p* a
        s: UNSUBSCRIBE x
        s: UNSUBSCRIBE b
        s: UNSUBSCRIBE a b
        s: PUNSUBSCRIBE a
        s: PUNSUBSCRIBE
        s: PUNSUBSCRIBE
        s: UNSUBSCRIBE
        s: SUBSCRIBE c
        s: UNSUBSCRIBE
        s: SUBSCRIBE
        s: PSUBSCRIBE
        s: PING
    """,
    "what_runs_while_subscribed": """
        s: SUBSCRIBE a
        s: PING
        s: PING hi
        s: PING a b
        s: GET k
        s: SET k v
        s: GET
        s: ECHO x
        s: CONFIG GET notify-keyspace-events
        s: CONFIG SET notify-keyspace-events K$
        s: CONFIG FOO
        s: CLIENT GETNAME
        s: EXISTS k
        s: PSUBSCRIBE x*
        s: UNSUBSCRIBE a
        s: PUNSUBSCRIBE x*
        s: GET k
        s: PING
    """,
    "reset_and_quit": """
        s: SUBSCRIBE a
        s: PSUBSCRIBE p*
        s: RESET
        s: GET k
        s: PING
        s: UNSUBSCRIBE
        s: SUBSCRIBE b
        s: RESET extra
        s: QUIT
    """,
    "notifications_of_set_and_del": """
        w: CONFIG SET notify-keyspace-events KE$gx
        s: SUBSCRIBE __keyspace@0__:k __keyevent@0__:del
        p: PSUBSCRIBE __key*__:*
        w: SET k v
        w: SET k v NX
        w: SET k w XX
        w: SET j v
        w: DEL k
        w: DEL k
        w: DEL j m
        s: PING
        w: SET k v GET
        p: PUNSUBSCRIBE __key*__:*
        w: DEL k
        s: PING
    """,
    "each_class_and_channel_kind": """
        p: PSUBSCRIBE *
        w: CONFIG SET notify-keyspace-events K$
        w: SET k v
        w: DEL k
        w: CONFIG SET notify-keyspace-events Eg
        w: SET k v
        w: DEL k
        w: CONFIG SET notify-keyspace-events $g
        w: SET k v
        w: DEL k
        w: CONFIG SET notify-keyspace-events KElshzetdm
        w: SET k v
        w: DEL k
        w: CONFIG SET notify-keyspace-events ""
        w: SET k v
        w: DEL k
        w: CONFIG SET notify-keyspace-events AKE
        w: SET k v
        w: DEL k
        p: PING
    """,
    "expired": """
        w: CONFIG SET notify-keyspace-events Ex
        s: SUBSCRIBE __keyevent@0__:expired __keyevent@0__:set
        w: SET k v PX 100
        SLEEP 400
        w: GET k
        w: EXISTS k
        s: PING
    """,
    "own_writes_while_subscribed": """
        s: CONFIG SET notify-keyspace-events KA
        s: SUBSCRIBE __keyspace@0__:k
        s: SET k v
        s: DEL k
        s: PING
    """,
    "config_set_and_get": """
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events KEA
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events $
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events Kg$lshzxetd
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events AKEmn
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events xE$K
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events mn$E
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events dtmEK
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events ztsg
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events Kq
        c: CONFIG SET notify-keyspace-events k
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events
        c: CONFIG SET notify-keyspace-events a b
        c: CONFIG SET notify-keyspace-events K notify-keyspace-events E
        c: CONFIG SET NOTIFY-KEYSPACE-EVENTS gK
        c: CONFIG GET Notify*
        c: CONFIG SET foo bar
        c: CONFIG SET notify-keyspace-events K foo bar
        c: CONFIG SET databases 3
        c: CONFIG SET databases 3 foo bar
        c: CONFIG SET notify-keyspace-events K notify-keyspace-events Kq
        c: CONFIG SET notify-keyspace-events E notify-keyspace-events K
        c: CONFIG GET notify-keyspace-events
        c: CONFIG SET
        c: CONFIG SET a
        c: CONFIG SET notify-keyspace-events ""
        c: CONFIG GET notify-keyspace-events
    """,
}


def steps(sequence: str) -> list[tuple[str, list[bytes]]]:
    parsed = []
    for line in sequence.strip().splitlines():
        name, _, command = line.strip().rpartition(": ")
        words = command.split()
        parsed.append((name, [b"" if word == EMPTY else word.encode() for word in words]))
    return parsed


def _is_message(reply: bytes) -> bool:
    return reply.startswith(_MESSAGES)


def transcripts(
    port: int, protocol: int, sequence: list[tuple[str, list[bytes]]]
) -> dict[str, bytes]:
    """Everything each connection received, in order, after its HELLO."""
    connections: dict[str, RespConnection] = {}
    received: dict[str, bytes] = {}
    try:
        for name, command in sequence:
            if command[0] == SLEEP.encode():
                time.sleep(int(command[1]) / 1000)
                continue
            if name not in connections:
                connections[name] = RespConnection(port)
                connections[name].ask("HELLO", str(protocol))
                received[name] = b""
            connection = connections[name]
            connection.send(_command(command))
            expected = len(command) - 1 if command[0].upper().decode() in _FAMILY else 1
            while expected > 0:
                reply = connection.reply()
                received[name] += reply
                expected -= not _is_message(reply)
        for name, connection in connections.items():
            received[name] += _rest(connection)
    finally:
        for connection in connections.values():
            connection.close()
    return received


def _command(arguments: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(arguments) + b"".join(
        b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments
    )


def _rest(connection: RespConnection) -> bytes:
    """What arrives until the connection is quiet for QUIET_S, and `<closed>` if it closed."""
    connection.sock.settimeout(QUIET_S)
    rest, closed = connection.rest_and_closed()
    return rest + b"<closed>" * closed


@pytest.fixture
def real_redis(redis_server: RedisProcess) -> Iterator[RedisProcess]:
    """The Redis whose replies are the reference, emptied, with notifications off."""
    redis_server.flush()
    redis_server.client().config_set("notify-keyspace-events", "")
    yield redis_server


@pytest.mark.parametrize("execution", list(Execution), ids=lambda execution: execution.value)
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_what_each_connection_receives_is_redis_7s_byte_for_byte(
    real_redis: RedisProcess, name: str, protocol: int, execution: Execution
) -> None:
    """With commands run on the loop, and again on workers (as for a store that may block),
    where a message may be queued while the subscriber's own command runs."""
    sequence = steps(SEQUENCES[name])
    store = MemoryStore()
    feed = ChangeFeed(store, FeedSettings())
    try:
        with running_resp(store, changes=feed, execution=execution) as kvservice:
            ours = transcripts(kvservice.port, protocol, sequence)
    finally:
        feed.close()
    theirs = transcripts(real_redis.port, protocol, sequence)
    differences = [
        f"connection {connection}:\n  kvservice {ours[connection]!r}\n  redis {mine!r}"
        for connection, mine in theirs.items()
        if ours[connection] != mine
    ]
    assert not differences, "\n".join(differences)
