"""The Redis commands kvservice answers: one table (`COMMANDS`) from a name to its handler.

Each handler takes the store, the connection's `Session` and the arguments, makes at most a
few store calls and returns a `codec.Reply`. Domain errors become replies through one table
(`STORE_ERRORS`), like the HTTP app's PROBLEMS: an error reply with a code of its own and
the store's message, or nil where Redis answers nil (GET of an empty key, SET NX on a taken
key). With tokens, a connection that has not sent AUTH (or HELLO ... AUTH) may only run the
commands that need `Access.NONE` (HELLO itself only with AUTH in it, as in Redis 7), and one
with a read token not those that need `Access.WRITE`: each command's `access` in the table
says which. KEYS, SCAN MATCH and CONFIG GET match Redis's glob patterns in bounded time
(`patterns.GlobPattern`). HELLO, COMMAND, CLIENT, SELECT, CONFIG GET and INFO answer just
enough for real clients and tools (redis-cli --stat, redis-benchmark) to connect and report.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvservice import __version__
from kvservice.auth import Access, Grant, Tokens
from kvservice.resp.codec import INTEGER, OK, Error, Reply, Status, printable
from kvservice.resp.patterns import GlobPattern, literal_prefix
from kvservice.store import (
    MATCH_ANY,
    MAX_PAGE_KEYS,
    InvalidKey,
    KeyExists,
    KeyNotFound,
    Precondition,
    PreconditionFailed,
    Store,
    StoreError,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
    ValueTooLarge,
    validate_key,
)

SUPPORTED_PROTOCOLS = (2, 3)
"""RESP versions HELLO accepts; redis-py 8 asks for 3 by default."""

STORE_ERRORS: dict[type[StoreError], str | None] = {
    InvalidKey: "INVALIDKEY",
    ValueTooLarge: "TOOLARGE",
    StoreFull: "OOM",  # Redis's own code for writes refused at its memory limit
    StoreUnavailable: "UNAVAILABLE",  # the store's Redis could not be reached or answer
    StoreMisconfigured: "MISCONF",  # Redis's code for a setup that refuses writes
    KeyNotFound: None,  # GET of a key without a value
    KeyExists: None,  # SET NX on a key holding a value
    PreconditionFailed: None,  # SET XX on a key holding none
}
"""Each domain error's reply: an error with this code (the first word, as Redis's `-OOM` and
`-WRONGTYPE` are, so clients tell errors apart without reading the text) and the store's
message, or nil (None)."""


# -- commands -------------------------------------------------------------------------------


class ScanCursors:
    """Where each SCAN left off, shared by every connection of a server.

    Redis clients treat a cursor as a 64-bit number (redis-cli parses it with strtoull), and a
    page ends at a key of up to 255 characters, so a cursor cannot carry the key itself: it is a
    random 62-bit number remembered with the key. The most recent `capacity` are kept; an
    older or unknown cursor (from another server, or before a restart) is refused, never
    resumed somewhere else.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._after: OrderedDict[int, str] = OrderedDict()
        self._lock = threading.Lock()  # connections' commands may run on worker threads

    def issue(self, after: str) -> int:
        """A new cursor for the page after `after`."""
        cursor = secrets.randbits(62) | 1  # never 0, which starts and ends an iteration
        with self._lock:
            self._after[cursor] = after
            while len(self._after) > self.capacity:
                self._after.popitem(last=False)
        return cursor

    def resume(self, cursor: int) -> str | None:
        """The key a cursor's page starts after: None for 0; raises KeyError if unknown."""
        if cursor == 0:
            return None
        with self._lock:
            return self._after[cursor]


@dataclass
class ServerState:
    """What every connection of one server shares: its SCAN cursors, and the figures INFO
    reports, which the server keeps up to date."""

    port: int = 0
    max_clients: int = 0
    cursors: ScanCursors = field(default_factory=ScanCursors)
    started: float = field(default_factory=time.monotonic)
    run_id: str = field(default_factory=lambda: secrets.token_hex(20))
    connected_clients: int = 0
    total_connections_received: int = 0
    rejected_connections: int = 0
    total_commands_processed: int = 0
    commands: dict[bytes, int] = field(default_factory=dict)
    """Calls by command name, upper case; names not in COMMANDS count as UNKNOWN_COMMAND."""
    errors: dict[tuple[bytes, str], int] = field(default_factory=dict)
    """Error replies by command name (as `commands` counts it) and error code."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: bytes, reply: Reply) -> None:
        """Count one command run and, if it is an error, its error code; commands may run on
        worker threads (the execution policy), so under a lock."""
        with self.lock:
            commands = self.commands
            commands[name] = commands.get(name, 0) + 1
            if type(reply) is Error:
                errors, labels = self.errors, (name, reply.code)
                errors[labels] = errors.get(labels, 0) + 1

    tokens: Tokens | None = None
    """The tokens clients must AUTH with; None: every connection may read and write."""


@dataclass
class Session:
    """What one connection remembers between commands."""

    id: int
    server: ServerState = field(default_factory=ServerState)
    """Shared with every connection of the server (a connection of its own has its own)."""
    name: bytes | None = None
    closing: bool = False
    """Set by QUIT: the connection closes once the reply is sent."""
    protocol: int = 2
    """2 or 3, as chosen with HELLO; RESP3 is RESP2 with its own nil and maps."""
    token: bytes | None = field(default=None, repr=False)  # no log or traceback shows it
    """The token AUTH accepted, kept to check it again after the tokens are reloaded."""
    grant: Grant | None = None
    generation: int = 0
    """The tokens' generation `grant` was looked up in."""

    @property
    def access(self) -> Access:
        """What this connection may do now: a token revoked by a reload stops working on
        connections that authenticated with it too."""
        tokens = self.server.tokens
        if tokens is None:
            return Access.WRITE
        if self.token is None:
            return Access.NONE
        if self.generation != tokens.generation:
            self.generation = tokens.generation
            self.grant = tokens.grant_for(self.token)
        return Access.NONE if self.grant is None else self.grant.access

    @property
    def user(self) -> str:
        """The name of the token in use, for the log ("-" for none)."""
        return "-" if self.grant is None else self.grant.name


Handler = Callable[[Store, Session, list[bytes]], Reply]


@dataclass(frozen=True)
class Command:
    """A command's handler, how many arguments it takes (max None: any number) and the
    access it needs when tokens are in use."""

    handler: Handler
    min_args: int
    max_args: int | None
    access: Access = Access.READ


UNKNOWN_COMMAND = b"UNKNOWN"
"""The name a command not in COMMANDS is counted under (clients choose names; counts must
not grow with them)."""


def execute(store: Store, session: Session, arguments: Sequence[bytes]) -> Reply:
    """Run one command (name and arguments) against the store, and count it in the server's
    figures; never raises a StoreError."""
    name, *args = arguments
    upper = name.upper()
    command = COMMANDS.get(upper)
    if command is None:
        reply: Reply = Error("ERR", f"unknown command '{printable(name)}'")
        session.server.count(UNKNOWN_COMMAND, reply)
        return reply
    if command.access > Access.NONE and session.access < command.access:
        reply = _refusal(session, session.access, printable(name).lower())
    else:
        reply = _call(command, lambda: printable(name).lower(), store, session, args)
    session.server.count(upper, reply)
    return reply


def _refusal(session: Session, access: Access, label: str) -> Error:
    """The answer to a command the connection's token (or its lack) does not allow."""
    if access is Access.NONE:
        return Error("NOAUTH", "Authentication required.")
    return Error("NOPERM", f"the token {session.user} may read, not run the '{label}' command")


def _call(
    command: Command, label: Callable[[], str], store: Store, session: Session, args: list[bytes]
) -> Reply:
    if len(args) < command.min_args or (
        command.max_args is not None and len(args) > command.max_args
    ):
        return Error("ERR", f"wrong number of arguments for '{label()}' command")
    try:
        return command.handler(store, session, args)
    except StoreError as error:
        code = STORE_ERRORS[type(error)]
        return None if code is None else Error(code, str(error))


def _subcommands(command: str, table: dict[bytes, Command]) -> Handler:
    """A handler that dispatches on its first argument through `table`."""

    def dispatch(store: Store, session: Session, args: list[bytes]) -> Reply:
        name = args[0].upper() if args else b""
        subcommand = table.get(name)
        if subcommand is None:
            return Error("ERR", f"unknown subcommand '{printable(name)}'. Try {command} HELP.")
        label = f"{command}|{printable(name)}".lower()
        return _call(subcommand, lambda: label, store, session, args[1:])

    return dispatch


def _key(argument: bytes) -> str:
    """A key as the store takes it: one character per byte, so errors name byte positions
    the way HTTP does for a percent-encoded path."""
    key = argument.decode("latin-1")
    validate_key(key)
    return key


def _ping(store: Store, session: Session, args: list[bytes]) -> Reply:
    return args[0] if args else Status("PONG")


def _echo(store: Store, session: Session, args: list[bytes]) -> Reply:
    return args[0]


def _get(store: Store, session: Session, args: list[bytes]) -> Reply:
    return store.get(_key(args[0])).data


def _mget(store: Store, session: Session, args: list[bytes]) -> Reply:
    """Each key's value, nil for a key without one; all keys are valid before any is read."""
    values: list[Reply] = []
    for key in [_key(arg) for arg in args]:
        try:
            values.append(store.get(key).data)
        except KeyNotFound:
            values.append(None)
    return values


_ONLY_IF_SET = Precondition(if_match=frozenset({MATCH_ANY}))

SET_MODES: dict[frozenset[bytes], Callable[[Store, str, bytes], object]] = {
    frozenset(): lambda store, key, value: store.put(key, value),
    frozenset({b"NX"}): lambda store, key, value: store.create(key, value),
    frozenset({b"XX"}): lambda store, key, value: store.put(key, value, None, _ONLY_IF_SET),
}
"""SET's options -> the store call: plain, create-only (NX) or only-if-set (XX)."""


def _set(store: Store, session: Session, args: list[bytes]) -> Reply:
    key, value, *options = args
    write = SET_MODES.get(frozenset(option.upper() for option in options))
    if write is None:
        return Error("ERR", "syntax error; SET takes NX or XX, and no expiry")
    write(store, _key(key), value)
    return OK


def _delete(store: Store, session: Session, args: list[bytes]) -> Reply:
    deleted = 0
    for key in [_key(arg) for arg in args]:  # all keys are valid before anything is deleted
        with contextlib.suppress(KeyNotFound):
            store.delete(key)
            deleted += 1
    return deleted


def _exists(store: Store, session: Session, args: list[bytes]) -> Reply:
    found = 0
    for key in [_key(arg) for arg in args]:
        with contextlib.suppress(KeyNotFound):
            store.get(key)
            found += 1
    return found


def _history(store: Store, session: Session, args: list[bytes]) -> Reply:
    return [[entry.timestamp_ms, entry.data] for entry in store.history(_key(args[0]))]


SCAN_DEFAULT_COUNT = 10
"""Keys per SCAN page when the client names no COUNT, as in Redis."""
SCAN_MAX_COUNT = 1_000
"""The most keys a SCAN page reads, whatever COUNT says (in Redis too COUNT is a hint): a page
of 10,000 keys of 255 bytes took 13.5 ms to build and 2.6 MB to encode whole, and two
hundred clients sending it at once held everyone else for a second; 1,000 take 0.9 ms."""
_CURSOR = re.compile(rb"[0-9]{1,20}")
"""An unsigned 64-bit number, as Redis reads a cursor."""


def _scan(store: Store, session: Session, args: list[bytes]) -> Reply:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: one page of keys, as Redis answers
    it: [next cursor (0 when done), [keys]]. COUNT keys are read per page (at most
    SCAN_MAX_COUNT) and MATCH filters them, so a page may come back short, or empty."""
    cursor_text, *options = args
    if not _CURSOR.fullmatch(cursor_text) or int(cursor_text) >= 2**64:
        return Error("ERR", "invalid cursor")
    try:
        after = session.server.cursors.resume(int(cursor_text))
    except KeyError:
        return Error("ERR", "invalid cursor; it is unknown to this server or too old, scan again")
    settings = _scan_options(options)
    if isinstance(settings, Error):
        return settings
    pattern, count, type_name = settings
    if type_name not in (None, b"STRING"):
        return [b"0", []]  # every kvservice value is a string
    prefix = literal_prefix(pattern).decode("latin-1")
    try:
        page = store.keys(prefix=prefix, after=after, limit=min(count, SCAN_MAX_COUNT))
    except InvalidKey:
        return [b"0", []]  # a prefix no key can start with
    matches = GlobPattern(pattern).matches
    keys: list[Reply] = [k.encode() for k in page.keys if matches(k.encode())]
    next_cursor = 0 if page.next_after is None else session.server.cursors.issue(page.next_after)
    return [str(next_cursor).encode(), keys]


def _scan_options(options: list[bytes]) -> tuple[bytes, int, bytes | None] | Error:
    """MATCH, COUNT and TYPE, each followed by its value; defaults `*`, 10 and any type."""
    pattern, count, type_name = b"*", SCAN_DEFAULT_COUNT, None
    if len(options) % 2:
        return Error("ERR", "syntax error")
    for name, value in zip(options[::2], options[1::2], strict=True):
        option = name.upper()
        if option == b"MATCH":
            pattern = value
        elif option == b"COUNT":
            if not INTEGER.fullmatch(value):
                return Error("ERR", "value is not an integer or out of range")
            if int(value) < 1:
                return Error("ERR", "syntax error")
            count = int(value)
        elif option == b"TYPE":
            type_name = value.upper()
        else:
            return Error("ERR", "syntax error")
    return pattern, count, type_name


MAX_KEYS_READ = 10 * MAX_PAGE_KEYS
"""The most keys one KEYS reads (about 40 ms on the memory store): with more under the
pattern's literal prefix it answers an error pointing to SCAN. Redis has no such bound (its
manual warns that KEYS "may ruin performance"); here one command must not hold every other
client for a time that grows with the keyspace: 200,000 keys took 80 ms, and twenty such
commands 1.6 s."""


def _keys(store: Store, session: Session, args: list[bytes]) -> Reply:
    """KEYS pattern: every matching key at once, in order, from at most MAX_KEYS_READ keys.
    SCAN is the way for many keys."""
    prefix = literal_prefix(args[0]).decode("latin-1")
    matches = GlobPattern(args[0]).matches
    found: list[Reply] = []
    after = None
    read = 0
    try:
        while True:
            page = store.keys(prefix=prefix, after=after, limit=MAX_PAGE_KEYS)
            found.extend(key.encode() for key in page.keys if matches(key.encode()))
            if page.next_after is None:
                return found
            read += len(page.keys)
            if read >= MAX_KEYS_READ:
                return Error(
                    "ERR",
                    f"KEYS reads at most {MAX_KEYS_READ} keys, and more start with "
                    f"{printable(prefix.encode('latin-1'))!r}; use SCAN",
                )
            after = page.next_after
    except InvalidKey:
        return []  # a prefix no key can start with


def _dbsize(store: Store, session: Session, args: list[bytes]) -> Reply:
    return store.stats().keys


def _quit(store: Store, session: Session, args: list[bytes]) -> Reply:
    session.closing = True
    return OK


def _client_setname(store: Store, session: Session, args: list[bytes]) -> Reply:
    if any(byte <= 0x20 or byte >= 0x7F for byte in args[0]):
        return Error("ERR", "Client names cannot contain spaces, newlines or special characters.")
    session.name = args[0] or None
    return OK


def _auth(store: Store, session: Session, args: list[bytes]) -> Reply:
    """AUTH token, or AUTH username token as Redis 6 clients send it: the username is
    `default` or the token's own name. A failed AUTH leaves the connection as it was."""
    username, token = (b"default", args[0]) if len(args) == 1 else (args[0], args[1])
    tokens = session.server.tokens
    if tokens is None:
        # Redis's words, which clients recognise: there is nothing to authenticate against.
        return Error(
            "ERR",
            "AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?",
        )
    grant = tokens.grant_for(token)
    if grant is None or username not in (b"default", grant.name.encode()):
        return Error("WRONGPASS", "invalid username-password pair or user is disabled.")
    session.token, session.grant, session.generation = token, grant, tokens.generation
    return OK


HELLO_OPTIONS: dict[bytes, int] = {b"AUTH": 2, b"SETNAME": 1}
"""HELLO's options and how many arguments each takes."""

HELLO_NOAUTH = Error(
    "NOAUTH",
    "HELLO must be called with the client already authenticated, otherwise the HELLO AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP "
    "protocol version at the same time",
)
"""Redis 7's answer to a HELLO without AUTH from a client that has not authenticated: the
server's details are not for anyone who connects."""


def _hello(store: Store, session: Session, args: list[bytes]) -> Reply:
    """HELLO [version [AUTH user token] [SETNAME name]], in Redis's order: the version is
    checked, then the options are read, then AUTH runs, then a client that still has not
    authenticated is refused, then SETNAME runs and the version is chosen."""
    protocol = session.protocol
    if args:
        if not INTEGER.fullmatch(args[0]):
            return Error("ERR", "Protocol version is not an integer or out of range")
        protocol = int(args[0])
        if protocol not in SUPPORTED_PROTOCOLS:
            return Error("NOPROTO", "unsupported protocol version")
    options: dict[bytes, list[bytes]] = {}
    rest = args[1:]
    while rest:
        name = rest[0].upper()
        count = HELLO_OPTIONS.get(name)
        if count is None or len(rest) <= count:
            return Error("ERR", "syntax error; HELLO takes a version, AUTH and SETNAME")
        options[name], rest = rest[1 : 1 + count], rest[1 + count :]
    if b"AUTH" in options:
        authenticated = _auth(store, session, options[b"AUTH"])
        if authenticated != OK:
            return authenticated
    if session.access is Access.NONE:
        return HELLO_NOAUTH
    if b"SETNAME" in options:
        named = _client_setname(store, session, options[b"SETNAME"])
        if named != OK:
            return named
    session.protocol = protocol
    return {
        b"server": b"kvservice",
        b"version": __version__.encode(),
        b"proto": session.protocol,
        b"id": session.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


CLIENT_SUBCOMMANDS: dict[bytes, Command] = {
    b"SETNAME": Command(_client_setname, 1, 1),
    b"GETNAME": Command(lambda store, session, args: session.name, 0, 0),
    b"SETINFO": Command(lambda store, session, args: OK, 2, 2),
    b"ID": Command(lambda store, session, args: session.id, 0, 0),
}

COMMAND_SUBCOMMANDS: dict[bytes, Command] = {
    # No command metadata: clients (redis-cli hints, redis-py) do without it.
    b"": Command(lambda store, session, args: [], 0, 0),
    b"DOCS": Command(lambda store, session, args: [], 0, None),
    b"INFO": Command(lambda store, session, args: [None for _ in args], 0, None),
    b"COUNT": Command(lambda store, session, args: len(COMMANDS), 0, 0),
    b"LIST": Command(lambda store, session, args: [name.lower() for name in COMMANDS], 0, 0),
}


def _select(store: Store, session: Session, args: list[bytes]) -> Reply:
    if not INTEGER.fullmatch(args[0]):
        return Error("ERR", "value is not an integer or out of range")
    if int(args[0]) != 0:
        return Error("ERR", "DB index is out of range; kvservice has only database 0")
    return OK


# -- CONFIG GET and INFO: what tools ask before they start ------------------------------------

CONFIG_PARAMETERS: dict[bytes, Callable[[Store], bytes]] = {
    b"maxmemory": lambda store: b"%d" % store.stats().max_bytes,
    b"maxmemory-policy": lambda store: b"noeviction",  # at the budget, writes are refused
    b"databases": lambda store: b"1",
    b"save": lambda store: b"",  # no snapshots: with --data-dir, every write is journaled
    b"appendonly": lambda store: b"no" if store.stats().persistence is None else b"yes",
}
"""The parameters CONFIG GET answers (redis-benchmark asks for save and appendonly): what
kvservice does, read-only; it is configured by its command line, so there is no CONFIG SET."""


def _config_get(store: Store, session: Session, args: list[bytes]) -> Reply:
    """CONFIG GET pattern [pattern ...]: a map of every parameter a pattern matches, with
    case ignored as Redis ignores it."""
    matchers = [GlobPattern(pattern, nocase=True).matches for pattern in args]
    return {
        name: value(store)
        for name, value in CONFIG_PARAMETERS.items()
        if any(matches(name) for matches in matchers)
    }


CONFIG_SUBCOMMANDS: dict[bytes, Command] = {
    b"GET": Command(_config_get, 1, None),
}


def _human_bytes(count: int) -> str:
    """Bytes as Redis's INFO writes them for people: 1.50K, 2.00M."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count}B"


InfoSection = Callable[[Store, ServerState], dict[str, object]]

_OS = f"{platform.system()} {platform.release()} {platform.machine()}"
_ARCH_BITS = 64 if sys.maxsize > 2**32 else 32
"""The width of a pointer, as Redis reports it. Not platform.architecture(), which runs
`file` on the interpreter in a subprocess at every call: a millisecond and a fork for each
INFO, on the loop every client waits on."""


def _info_server(store: Store, server: ServerState) -> dict[str, object]:
    uptime = int(time.monotonic() - server.started)
    return {
        # Valkey's precedent: the Redis version whose replies it gives, for tools that read it;
        # server_name and kvservice_version say what it is.
        "redis_version": REDIS_COMPATIBLE_VERSION,
        "server_name": "kvservice",
        "kvservice_version": __version__,
        "redis_mode": "standalone",
        "os": _OS,
        "arch_bits": _ARCH_BITS,
        "multiplexing_api": "asyncio",
        "process_id": os.getpid(),
        "run_id": server.run_id,
        "tcp_port": server.port,
        "uptime_in_seconds": uptime,
        "uptime_in_days": uptime // 86400,
    }


def _info_clients(store: Store, server: ServerState) -> dict[str, object]:
    return {
        "connected_clients": server.connected_clients,
        "maxclients": server.max_clients,
        "blocked_clients": 0,
    }


def _info_memory(store: Store, server: ServerState) -> dict[str, object]:
    stats = store.stats()
    memory: dict[str, object] = {
        "used_memory": stats.used_bytes,  # as the store's budget counts it
        "used_memory_human": _human_bytes(stats.used_bytes),
        "maxmemory": stats.max_bytes,
        "maxmemory_human": _human_bytes(stats.max_bytes),
        "maxmemory_policy": "noeviction",
    }
    if stats.history_entries is not None:
        memory["kvservice_history_entries"] = stats.history_entries
    return memory


def _info_persistence(store: Store, server: ServerState) -> dict[str, object]:
    """Redis's fields, read as its AOF's: with --data-dir every write is journaled (the
    journal is kvservice's append-only file), and a "save" is a commit."""
    persistence = store.stats().persistence
    if persistence is None:
        return {
            "loading": 0,
            "rdb_bgsave_in_progress": 0,
            "aof_enabled": 0,
            "aof_rewrite_in_progress": 0,
        }
    status = "ok" if persistence.last_commit_ok else "err"
    return {
        "loading": 0,
        "rdb_changes_since_last_save": persistence.pending_writes,
        "rdb_bgsave_in_progress": 0,
        "rdb_last_save_time": persistence.last_commit_time_s,
        "rdb_last_bgsave_status": status,
        "aof_enabled": 1,
        "aof_rewrite_in_progress": 0,
        "aof_last_write_status": status,
        "aof_current_size": sum(persistence.file_bytes.values()),
        "aof_pending_writes": persistence.pending_writes,
        "kvservice_fsync": persistence.fsync,
        "kvservice_commits": persistence.commits,
        "kvservice_committed_writes": persistence.committed_writes,
        "kvservice_failed_commits": persistence.failed_commits,
    }


def _info_stats(store: Store, server: ServerState) -> dict[str, object]:
    return {
        "total_connections_received": server.total_connections_received,
        "total_commands_processed": server.total_commands_processed,
        "rejected_connections": server.rejected_connections,
        "total_error_replies": sum(server.errors.values()),
        # Writes refused at the memory budget over either transport (HTTP 507, RESP OOM).
        "kvservice_store_full_refusals": store.stats().full_refusals,
    }


def _info_commandstats(store: Store, server: ServerState) -> dict[str, object]:
    """Redis's fields for each command's calls and error replies; no timings (not kept)."""
    failed: dict[bytes, int] = {}
    for (name, _), count in dict(server.errors).items():
        failed[name] = failed.get(name, 0) + count
    return {
        f"cmdstat_{name.decode('ascii', 'replace').lower()}": (
            f"calls={calls},failed_calls={failed.get(name, 0)}"
        )
        for name, calls in sorted(dict(server.commands).items())
    }


def _info_errorstats(store: Store, server: ServerState) -> dict[str, object]:
    by_code: dict[str, int] = {}
    for (_, code), count in dict(server.errors).items():
        by_code[code] = by_code.get(code, 0) + count
    return {f"errorstat_{code}": f"count={count}" for code, count in sorted(by_code.items())}


def _info_keyspace(store: Store, server: ServerState) -> dict[str, object]:
    keys = store.stats().keys
    return {"db0": f"keys={keys},expires=0,avg_ttl=0"} if keys else {}  # as Redis, if any


INFO_SECTIONS: dict[bytes, InfoSection] = {
    b"server": _info_server,
    b"clients": _info_clients,
    b"memory": _info_memory,
    b"persistence": _info_persistence,
    b"stats": _info_stats,
    b"commandstats": _info_commandstats,
    b"errorstats": _info_errorstats,
    b"keyspace": _info_keyspace,
}
"""INFO's sections, in order; `INFO all` and `INFO everything` give every one, `INFO` and
`INFO default` all but commandstats and errorstats, as Redis does."""
_EVERY_SECTION = {b"all", b"everything"}
_DEFAULT_SECTIONS = {b"default"}
_NOT_DEFAULT = {b"commandstats", b"errorstats"}
REDIS_COMPATIBLE_VERSION = "7.0.0"


def _info(store: Store, session: Session, args: list[bytes]) -> Reply:
    """INFO [section ...]: `# Section` headings and `field:value` lines, as Redis writes them;
    a section it does not have is left out, as Redis leaves out one it does not know."""
    asked = {arg.lower() for arg in args} or _DEFAULT_SECTIONS
    everything = bool(asked & _EVERY_SECTION)
    default = bool(asked & _DEFAULT_SECTIONS)
    sections = [
        f"# {name.decode().capitalize()}\r\n"
        + "".join(f"{field}:{value}\r\n" for field, value in section(store, session.server).items())
        for name, section in INFO_SECTIONS.items()
        if everything or name in asked or (default and name not in _NOT_DEFAULT)
    ]
    return "\r\n".join(sections).encode()


COMMANDS: dict[bytes, Command] = {
    b"PING": Command(_ping, 0, 1, Access.NONE),
    b"ECHO": Command(_echo, 1, 1),
    b"GET": Command(_get, 1, 1),
    b"MGET": Command(_mget, 1, None),
    b"SET": Command(_set, 2, None, Access.WRITE),
    b"DEL": Command(_delete, 1, None, Access.WRITE),
    b"EXISTS": Command(_exists, 1, None),
    b"HISTORY": Command(_history, 1, 1),
    b"SCAN": Command(_scan, 1, None),
    b"KEYS": Command(_keys, 1, 1),
    b"DBSIZE": Command(_dbsize, 0, 0),
    b"QUIT": Command(_quit, 0, None, Access.NONE),
    b"HELLO": Command(_hello, 0, None, Access.NONE),
    b"COMMAND": Command(_subcommands("COMMAND", COMMAND_SUBCOMMANDS), 0, None),
    b"CLIENT": Command(_subcommands("CLIENT", CLIENT_SUBCOMMANDS), 1, None),
    b"SELECT": Command(_select, 1, 1),
    b"CONFIG": Command(_subcommands("CONFIG", CONFIG_SUBCOMMANDS), 1, None),
    b"INFO": Command(_info, 0, None),
    b"AUTH": Command(_auth, 1, 2, Access.NONE),
}
"""Every command by its upper-case name."""
