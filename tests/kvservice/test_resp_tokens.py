"""AUTH over RESP: raw bytes, redis-py and redis-cli against a RESP server with tokens."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvservice.auth import Access, Grant, Tokens, TokenTable
from kvservice.execution import Execution
from kvservice.resp.commands import COMMANDS
from kvservice.resp.server import RespServer
from kvservice.store.memory import MemoryStore
from tests.support.rawresp import RespConnection, running_resp
from tests.support.redis_servers import running_redis
from tests.support.tokens import READ_TOKEN, WRITE_TOKEN, reader_and_writer

NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
OPEN_COMMANDS = {b"AUTH", b"HELLO", b"QUIT", b"PING", b"RESET"}


@pytest.fixture
def store() -> MemoryStore:
    """A store holding k = v."""
    store = MemoryStore()
    store.put("k", b"v")
    return store


@pytest.fixture(params=list(Execution), ids=lambda execution: execution.value)
def resp(store: MemoryStore, request: pytest.FixtureRequest) -> Iterator[RespServer]:
    """A RESP server over `store`, with a read and a write token, running commands on its
    loop and, again, on workers (as for Redis)."""
    tokens = reader_and_writer()
    with running_resp(store, tokens=tokens, execution=request.param) as server:
        yield server


# Each command with arguments it would run with; all but the open ones are refused.
EXAMPLES: dict[bytes, tuple[str, ...]] = {
    b"ECHO": ("hi",),
    b"GET": ("k",),
    b"MGET": ("k",),
    b"SET": ("k", "new"),
    b"SETEX": ("k", "100", "new"),
    b"PSETEX": ("k", "100000", "new"),
    b"GETEX": ("k",),
    b"EXPIRE": ("k", "100"),
    b"PEXPIRE": ("k", "100000"),
    b"EXPIREAT": ("k", "4102444800"),
    b"PEXPIREAT": ("k", "4102444800000"),
    b"PERSIST": ("k",),
    b"TTL": ("k",),
    b"PTTL": ("k",),
    b"EXPIRETIME": ("k",),
    b"PEXPIRETIME": ("k",),
    b"DEL": ("k",),
    b"EXISTS": ("k",),
    b"HISTORY": ("k",),
    b"SCAN": ("0",),
    b"KEYS": ("*",),
    b"DBSIZE": (),
    b"COMMAND": (),
    b"CLIENT": ("ID",),
    b"SELECT": ("0",),
    b"CONFIG": ("GET", "maxmemory"),
    b"INFO": (),
    b"SUBSCRIBE": ("a",),
    b"PSUBSCRIBE": ("a*",),
    b"UNSUBSCRIBE": (),
    b"PUNSUBSCRIBE": (),
}
WRITES = {b"SET", b"SETEX", b"PSETEX", b"DEL", b"PERSIST", b"GETEX"}
WRITES |= {b"EXPIRE", b"PEXPIRE", b"EXPIREAT", b"PEXPIREAT"}


def test_every_command_is_in_the_examples() -> None:
    assert set(COMMANDS) == set(EXAMPLES) | OPEN_COMMANDS


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_before_auth_every_command_but_the_open_ones_is_refused(
    resp: RespServer, store: MemoryStore, name: bytes
) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask(name, *EXAMPLES[name]) == NOAUTH
        assert connection.ask("AUTH", "wrong-token-0123456789") == WRONGPASS
        assert connection.ask("AUTH", WRITE_TOKEN[:-1] + "g") == WRONGPASS
        assert connection.ask(name, *EXAMPLES[name]) == NOAUTH
    assert store.get("k").data == b"v"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_read_token_runs_reads_and_gets_noperm_on_writes(
    resp: RespServer, store: MemoryStore, name: bytes
) -> None:
    before = store.get("k")
    with RespConnection(resp.port) as connection:
        assert connection.ask("AUTH", READ_TOKEN) == b"+OK\r\n"
        reply = connection.ask(name, *EXAMPLES[name])
    if name in WRITES:
        assert reply.startswith(b"-NOPERM the token reader may read")
        assert store.get("k") == before, "neither the value nor its deadline changed"
    else:
        assert not reply.startswith((b"-NOAUTH", b"-NOPERM"))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_write_token_runs_everything(resp: RespServer, name: bytes) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask("AUTH", "default", WRITE_TOKEN) == b"+OK\r\n"
        assert not connection.ask(name, *EXAMPLES[name]).startswith((b"-NOAUTH", b"-NOPERM"))


def test_the_open_commands_answer_before_auth(resp: RespServer) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask("PING") == b"+PONG\r\n"
        assert connection.ask("HELLO", "2", "AUTH", "default", READ_TOKEN).startswith(b"*14\r\n")
    with RespConnection(resp.port) as connection:
        assert connection.ask("QUIT") == b"+OK\r\n"


HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    b"HELLO AUTH <user> <pass> option can be used to authenticate the client and select the "
    b"RESP protocol version at the same time\r\n"
)
"""Redis 7.0's words, byte for byte."""


@pytest.mark.parametrize(
    "hello", [["HELLO"], ["HELLO", "2"], ["HELLO", "3"], ["HELLO", "3", "SETNAME", "me"]]
)
def test_hello_without_auth_tells_nothing_and_changes_nothing_before_auth(
    resp: RespServer, hello: list[str]
) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask(*hello) == HELLO_NOAUTH
        assert connection.ask("AUTH", READ_TOKEN) == b"+OK\r\n"
        assert connection.ask("GET", "missing") == b"$-1\r\n", "still RESP2"
        assert connection.ask("CLIENT", "GETNAME") == b"$-1\r\n", "no name was set"
        assert connection.ask(*hello)[:1] in (b"*", b"%"), "after AUTH, HELLO answers"


def test_hello_checks_its_version_then_authenticates_then_names(resp: RespServer) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask("HELLO", "4") == b"-NOPROTO unsupported protocol version\r\n"
        assert connection.ask("HELLO", "two").startswith(b"-ERR Protocol version")
        assert connection.ask("HELLO", "3", "SETNAME", "me", "AUTH", "default", READ_TOKEN)[:1] == (
            b"%"
        )
        assert connection.ask("CLIENT", "GETNAME") == b"$2\r\nme\r\n"


def test_hello_before_auth_is_answered_as_a_real_redis_with_a_password_answers_it(
    tmp_path: Path, resp: RespServer
) -> None:
    asked = [
        ["HELLO"],
        ["HELLO", "3"],
        ["HELLO", "2", "SETNAME", "me"],
        ["HELLO", "4"],
        ["HELLO", "two"],
        ["HELLO", "3", "AUTH", "default", "wrong-token-0123"],
    ]
    with running_redis(tmp_path, "--requirepass", WRITE_TOKEN) as redis_server:
        for hello in asked:
            with RespConnection(resp.port) as ours, RespConnection(redis_server.port) as theirs:
                assert ours.ask(*hello) == theirs.ask(*hello), hello


def test_auth_takes_the_token_name_as_the_user_and_no_other(resp: RespServer) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask("AUTH", "reader", WRITE_TOKEN) == WRONGPASS
        assert connection.ask("AUTH", "writer", WRITE_TOKEN) == b"+OK\r\n"
        assert connection.ask("SET", "k", "w") == b"+OK\r\n"


def test_hello_authenticates_and_a_failed_hello_changes_nothing(resp: RespServer) -> None:
    with RespConnection(resp.port) as connection:
        assert connection.ask("HELLO", "3", "AUTH", "default", "wrong-token-0123") == WRONGPASS
        assert connection.ask("GET", "k") == NOAUTH  # still RESP2, still not authenticated
        assert connection.ask("HELLO", "3", "AUTH", "default", READ_TOKEN, "SETNAME", "me")[:1] == (
            b"%"
        )
        assert connection.ask("GET", "k") == b"$1\r\nv\r\n"
        assert connection.ask("CLIENT", "GETNAME") == b"$2\r\nme\r\n"
        assert connection.ask("HELLO", "3", "AUTH", "default").startswith(b"-ERR syntax error")


def test_a_reload_that_drops_a_token_stops_connections_using_it() -> None:
    in_file = {READ_TOKEN.encode(): Grant(Access.READ, "reader")}
    tokens = Tokens(TokenTable(in_file), load=lambda: TokenTable(in_file))
    with running_resp(tokens=tokens) as server, RespConnection(server.port) as connection:
        assert connection.ask("AUTH", READ_TOKEN) == b"+OK\r\n"
        assert connection.ask("DBSIZE") == b":0\r\n"
        in_file = {WRITE_TOKEN.encode(): Grant(Access.WRITE, "writer")}
        assert tokens.reload()
        assert connection.ask("DBSIZE") == NOAUTH


def test_without_tokens_auth_is_an_error_as_in_redis() -> None:
    with running_resp() as server, RespConnection(server.port) as connection:
        assert connection.ask("AUTH", READ_TOKEN).startswith(
            b"-ERR AUTH <password> called without any password configured"
        )
        assert connection.ask("SET", "k", "v") == b"+OK\r\n"


def test_the_token_is_not_in_the_command_log(
    resp: RespServer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with (
        caplog.at_level(logging.DEBUG, logger="kvservice.access"),
        RespConnection(resp.port) as connection,
    ):
        connection.ask("AUTH", "writer", WRITE_TOKEN)
        connection.ask("AUTH", READ_TOKEN)
        connection.ask("HELLO", "3", "AUTH", "default", READ_TOKEN)
        connection.ask("QUIT")
        assert connection.rest_and_closed() == (b"", True)
        deadline = time.monotonic() + 2  # the line is written as the server closes its end
        while "closed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = " ".join(record.getMessage() for record in caplog.records)
    assert '"AUTH"' in lines
    assert WRITE_TOKEN not in lines and READ_TOKEN not in lines
    assert "token=reader" in lines


# -- clients nobody here wrote ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_with_a_password(resp: RespServer, protocol: int) -> None:
    redis = pytest.importorskip("redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def client(password: str | None) -> Any:
        # No retries: redis-py retries a refused AUTH as it would a broken connection.
        return redis.Redis(
            port=resp.port, password=password, protocol=protocol, retry=Retry(NoBackoff(), 0)
        )

    with client(WRITE_TOKEN) as writer:
        assert writer.set("k", "from-py") is True
        assert writer.get("k") == b"from-py"
    with client(READ_TOKEN) as reader, pytest.raises(redis.exceptions.NoPermissionError):
        reader.set("k", "no")
    with client(None) as anonymous, pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("k")
    with client(WRITE_TOKEN + "x") as wrong, pytest.raises(redis.exceptions.AuthenticationError):
        wrong.get("k")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is missing")
def test_redis_cli_with_a_password(resp: RespServer) -> None:
    def redis_cli(*args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(resp.port), "--no-auth-warning", *args],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    assert redis_cli("-a", WRITE_TOKEN, "SET", "k", "cli") == "OK\n"
    assert redis_cli("-a", READ_TOKEN, "GET", "k") == "cli\n"
    assert redis_cli("GET", "k").startswith("NOAUTH")
    assert redis_cli("-a", READ_TOKEN, "SET", "k", "no").startswith("NOPERM")


def test_a_session_does_not_show_its_token() -> None:
    from kvservice.resp.commands import Session

    assert WRITE_TOKEN not in repr(Session(1, token=WRITE_TOKEN.encode()))
