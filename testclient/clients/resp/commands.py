"""A `KVClient` for kvservice's Redis protocol port: the commands and what their replies mean.

The only code of testclient that knows kvservice's RESP commands and replies. As in the
HTTP client, each operation has a table from the kind of reply to an outcome, so `+OK` where
nil belongs is an unexpected answer, not a success. kvservice's errors carry a code, as
Redis's do (`-INVALIDKEY <detail>`, `-TOOLARGE`, `-OOM`), followed by the HTTP problem's
detail text; `_ERROR_KINDS` tells them apart by the code alone.

`identify` sends `INFO server`: kvservice's answer is a bulk string with the line
`server_name:kvservice` (Redis has no such line; Valkey says `server_name:valkey`), so a real
Redis or anything else on the port is told apart from kvservice before any check writes to it.

RESP carries neither versions nor content types: `capabilities` lacks them, and a request
that needs one answers `Outcome.UNSUPPORTED` without sending anything. Keys expire as in
Redis (`SET ... PX`, `PEXPIRETIME`), but HISTORY shows an expiry as a delete (`[timestamp,
nil]`), so `Capability.EXPIRY_ENTRIES` is lacking too, and so is `Capability.WATCH`: kvservice's
keyspace notifications are fire-and-forget, with no position to resume from. A refused
connection, a timeout or a connection closed before the reply raises `KVUnreachable`. With a
token, each new connection sends `AUTH token` first; a refused AUTH, and -NOAUTH, -WRONGPASS
or -NOPERM to a command, raise `KVRefused`. A `rediss://` URL speaks TLS, verified against
`credentials.ca_cert` or the system's CAs.

The wire format is `reader.py`'s and the socket `connection.py`'s, as redis-py separates
`_parsers/`, `connection.py` and `commands/`. It keeps the test client free of any dependency
beyond requests, and checks kvservice's RESP server with a parser it does not share (the tests
use redis-py and redis-cli as well).
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from testclient.clients.pool import IdlePool
from testclient.clients.protocol import (
    DEFAULT_TIMEOUT_S,
    NO_CREDENTIALS,
    Capability,
    Credentials,
    HistoryEntry,
    HistoryReply,
    KeysReply,
    KVRefused,
    KVUnreachable,
    Outcome,
    Reply,
    UnopenedWatch,
    Watch,
)
from testclient.clients.resp.connection import Connection
from testclient.clients.resp.reader import (
    INTEGER,
    ConnectionClosed,
    ErrorReply,
    MalformedReply,
    RespValue,
    read_reply,
    shape,
)

DEFAULT_PORT = 6379
SCHEMES = ("redis", "rediss")
"""Plain RESP, and RESP over TLS."""
_REFUSALS = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
"""The error codes that mean the token, not the command, was refused."""
_EVIDENCE_CHARS = 200
_KVSERVICE_INFO_LINE = b"server_name:kvservice"

_ERROR_KINDS = {"INVALIDKEY": "invalid", "TOOLARGE": "too large", "OOM": "store full"}
"""kvservice's error replies by their code, the first word of the reply."""

_WRITE_ERRORS = {
    "-invalid": Outcome.INVALID,
    "-too large": Outcome.TOO_LARGE,
    "-store full": Outcome.STORE_FULL,
}
_SET_OUTCOMES = {"+OK": Outcome.STORED, **_WRITE_ERRORS}
_SET_IF_ABSENT_OUTCOMES = {
    "+OK": Outcome.STORED,
    "nil": Outcome.PRECONDITION_FAILED,
    **_WRITE_ERRORS,
}
_CREATE_OUTCOMES = {"+OK": Outcome.CREATED, "nil": Outcome.ALREADY_EXISTS, **_WRITE_ERRORS}
_GET_OUTCOMES = {"bulk": Outcome.FOUND, "nil": Outcome.NOT_FOUND, "-invalid": Outcome.INVALID}
_DELETE_OUTCOMES = {":1": Outcome.DELETED, ":0": Outcome.NOT_FOUND, "-invalid": Outcome.INVALID}
_HISTORY_OUTCOMES = {"array": Outcome.FOUND, "-invalid": Outcome.INVALID}
_PEXPIRETIME_NO_KEY = -2
_PEXPIRETIME_NO_DEADLINE = -1


class RespKVClient:
    """A `KVClient` for a `redis://host:port` or `rediss://host:port` URL; safe to share
    between threads.

    Each command borrows a connection from a pool (opening one when all are busy) and
    returns it; a pooled connection the server has closed meanwhile is dropped, not used.
    """

    capabilities: frozenset[Capability] = frozenset({Capability.EXPIRY})

    def __init__(
        self,
        url: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT_S,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"{url!r} is not a redis://host:port or rediss://host:port URL")
        self.url = url.rstrip("/")
        self.address = (parts.hostname, parts.port or DEFAULT_PORT)
        self.timeout = timeout
        self.credentials = credentials
        tls = None
        if parts.scheme == "rediss":
            tls = ssl.create_default_context(cafile=credentials.ca_cert)
        self._connections = IdlePool(
            lambda: Connection(self.address, self.timeout, credentials.token, tls),
            Connection.close,
            Connection.is_stale,
        )

    def with_token(self, token: str | None) -> RespKVClient:
        """A client of the same kvservice presenting `token` (None: none)."""
        credentials = dataclasses.replace(self.credentials, token=token)
        return RespKVClient(self.url, self.timeout, credentials)

    def __enter__(self) -> RespKVClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection."""
        self._connections.close()

    def put(
        self,
        key: str,
        value: bytes,
        *,
        content_type: str | None = None,
        only_if_version: str | None = None,
        only_if_absent: bool = False,
        ttl_ms: int | None = None,
    ) -> Reply:
        """SET key value [NX] [PX ttl]: +OK when stored, nil when NX found a value."""
        if content_type is not None:
            return _unsupported(Capability.CONTENT_TYPES)
        if only_if_version is not None:
            return _unsupported(Capability.VERSIONS)
        options = [b"NX"] if only_if_absent else []
        if ttl_ms is not None:
            options += [b"PX", str(ttl_ms).encode()]
        outcomes = _SET_IF_ABSENT_OUTCOMES if only_if_absent else _SET_OUTCOMES
        return self._write(outcomes, b"SET", key, value, *options)

    def create(self, key: str, value: bytes, *, content_type: str | None = None) -> Reply:
        """SET key value NX: +OK when created, nil when the key has a value."""
        if content_type is not None:
            return _unsupported(Capability.CONTENT_TYPES)
        return self._write(_CREATE_OUTCOMES, b"SET", key, value, b"NX")

    def get(self, key: str) -> Reply:
        """GET key: the bytes, or nil when the key has no value. No content type, no version."""
        reply, evidence = self._exchange(b"GET", key)
        outcome = _outcome(reply, _GET_OUTCOMES)
        if outcome is not Outcome.FOUND or not isinstance(reply, bytes):
            return Reply(outcome, evidence=evidence)
        return Reply(outcome, value=reply, evidence=evidence)

    def delete(self, key: str, *, only_if_version: str | None = None) -> Reply:
        """DEL key: :1 when deleted, :0 when there was no value."""
        if only_if_version is not None:
            return _unsupported(Capability.VERSIONS)
        return self._write(_DELETE_OUTCOMES, b"DEL", key)

    def expiry(self, key: str) -> Reply:
        """PEXPIRETIME key: the deadline in epoch ms, :-1 when there is none, :-2 when the key
        has no value."""
        reply, evidence = self._exchange(b"PEXPIRETIME", key)
        if _kind(reply) == "-invalid":
            return Reply(Outcome.INVALID, evidence=evidence)
        if not isinstance(reply, int) or reply < _PEXPIRETIME_NO_KEY:
            return Reply(Outcome.UNEXPECTED, evidence=evidence)
        if reply == _PEXPIRETIME_NO_KEY:
            return Reply(Outcome.NOT_FOUND, evidence=evidence)
        deadline = None if reply == _PEXPIRETIME_NO_DEADLINE else reply
        return Reply(Outcome.FOUND, expires_at_ms=deadline, evidence=evidence)

    def history(
        self, key: str, *, after: str | None = None, wait_ms: int | None = None
    ) -> HistoryReply:
        """HISTORY key: an array of [timestamp, value or nil], newest first."""
        if after is not None or wait_ms is not None:
            unsupported = _unsupported(Capability.WATCH)
            return HistoryReply(unsupported.outcome, evidence=unsupported.evidence)
        reply, evidence = self._exchange(b"HISTORY", key)
        outcome = _outcome(reply, _HISTORY_OUTCOMES)
        if outcome is not Outcome.FOUND or not isinstance(reply, list):
            return HistoryReply(outcome, evidence=evidence)
        try:
            entries = tuple(_history_entry(position, item) for position, item in enumerate(reply))
        except ValueError as error:
            return HistoryReply(
                Outcome.UNEXPECTED, evidence=f"{evidence}, but it is malformed: {error}"
            )
        return HistoryReply(outcome, entries, evidence)

    def watch(
        self, *, key: str | None = None, prefix: str | None = None, resume: str | None = None
    ) -> Watch:
        """Nothing is sent: see `Capability.WATCH`."""
        unsupported = _unsupported(Capability.WATCH)
        return UnopenedWatch(unsupported.outcome, unsupported.evidence)

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        """SCAN cursor MATCH prefix* COUNT limit: [next cursor (0 on the last page), [keys]]."""
        cursor = "0" if page is None else page
        pattern = _glob_escape(prefix) + b"*"
        reply, evidence = self._exchange(
            b"SCAN", cursor, b"MATCH", pattern, b"COUNT", str(limit).encode()
        )
        if _kind(reply) == "-invalid":
            return KeysReply(Outcome.INVALID, evidence=evidence)
        if not (
            isinstance(reply, list)
            and len(reply) == 2
            and isinstance(reply[0], bytes)
            and INTEGER.fullmatch(reply[0])
            and isinstance(reply[1], list)
            and all(isinstance(key, bytes) for key in reply[1])
        ):
            return KeysReply(
                Outcome.UNEXPECTED, evidence=f"{evidence}, but it is not [cursor, [keys]]"
            )
        next_cursor = reply[0].decode()
        keys = tuple(key.decode("latin-1") for key in reply[1] if isinstance(key, bytes))
        return KeysReply(Outcome.FOUND, keys, None if next_cursor == "0" else next_cursor, evidence)

    def identify(self) -> str | None:
        """INFO server: kvservice's answer has the line `server_name:kvservice`."""
        unlike = f"{self.url} answered like something else"
        try:
            reply, evidence = self._exchange(b"INFO", "server")
        except KVUnreachable as error:
            closed = error.__cause__
            if isinstance(closed, ConnectionClosed) and closed.received:  # e.g. an HTTP server
                return f"{unlike}: {closed.received!r} to INFO server, then it closed"
            raise
        if isinstance(reply, bytes) and _KVSERVICE_INFO_LINE in reply.splitlines():
            return None
        if isinstance(reply, bytes):
            fields = dict(line.partition(b":")[::2] for line in reply.splitlines() if b":" in line)
            name = fields.get(b"server_name", b"redis" if b"redis_version" in fields else b"")
            said = f"server_name {name.decode('utf-8', 'replace')!r}" if name else "no server_name"
            return f"{unlike}: INFO server gives {said}, not kvservice"
        return f"{unlike}: INFO server answered {evidence}"

    # -- transport ---------------------------------------------------------------------------

    def _write(self, outcomes: Mapping[str, Outcome], name: bytes, key: str, *rest: bytes) -> Reply:
        reply, evidence = self._exchange(name, key, *rest)
        return Reply(_outcome(reply, outcomes), evidence=evidence)

    def _exchange(
        self, name: bytes, key: str, *rest: bytes
    ) -> tuple[RespValue | MalformedReply, str]:
        """Send one command; returns the reply (or why it is unreadable) and its evidence."""
        label = f"{name.decode()} {key} ({self.url})"
        try:
            with self._connections.borrowed() as connection:
                connection.send([name, key.encode("utf-8"), *rest])
                reply = read_reply(connection.stream)
        except TimeoutError as error:
            connect_s, read_s = self.timeout
            raise KVUnreachable(
                f"{label}: timed out (connect {connect_s:g} s, read {read_s:g} s): {error}"
            ) from error
        except ConnectionClosed as error:
            raise KVUnreachable(f"{label}: the connection closed: {error}") from error
        except ssl.SSLError as error:  # before OSError, which it is: not a network failure
            raise KVUnreachable(f"{label}: TLS failed: {error}") from error
        except OSError as error:
            raise KVUnreachable(f"{label}: no connection: {error}") from error
        except MalformedReply as error:
            return error, f"unreadable RESP reply: {error}"
        if isinstance(reply, ErrorReply) and reply.text.split(" ", 1)[0] in _REFUSALS:
            raise KVRefused(f"{label}: {_evidence(reply)}")
        return reply, _evidence(reply)


def _kind(reply: RespValue | MalformedReply) -> str:
    """The reply's row in the outcome tables: '+OK', 'nil', ':1', 'bulk', 'array', '-invalid'."""
    if isinstance(reply, MalformedReply):
        return "unreadable"
    if isinstance(reply, ErrorReply):
        return "-" + _ERROR_KINDS.get(reply.text.split(" ", 1)[0], "other")
    return shape(reply)


def _outcome(reply: RespValue | MalformedReply, outcomes: Mapping[str, Outcome]) -> Outcome:
    return outcomes.get(_kind(reply), Outcome.UNEXPECTED)


def _evidence(reply: RespValue) -> str:
    """'RESP +OK', 'RESP nil', 'RESP :1', 'RESP bulk of 5 bytes', 'RESP -ERR ...'."""
    if isinstance(reply, ErrorReply):
        return f"RESP -{reply.text[:_EVIDENCE_CHARS]}"
    if isinstance(reply, bytes):
        return f"RESP bulk of {len(reply)} bytes"
    if isinstance(reply, list):
        return f"RESP array of {len(reply)}"
    return f"RESP {_kind(reply)}"


def _glob_escape(text: str) -> bytes:
    """`text` as a Redis glob pattern that matches it literally."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", text.encode("utf-8"))


def _unsupported(capability: Capability) -> Reply:
    return Reply(Outcome.UNSUPPORTED, evidence=f"RESP has no {capability.value}; nothing was sent")


def _history_entry(position: int, item: RespValue) -> HistoryEntry:
    if (
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], int)
        and (item[1] is None or isinstance(item[1], bytes))
    ):
        return HistoryEntry(item[1], item[0])
    raise ValueError(f"entry {position} is not [timestamp, value or nil]: {item!r:.100}")
