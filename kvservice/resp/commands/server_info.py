"""CONFIG GET and INFO: what tools (redis-cli --stat, redis-benchmark) ask before they start,
answered as Redis words it, from the store's figures and the server's; CONFIG SET of the one
parameter set at run time, `notify-keyspace-events` (`keyspace_events`), with Redis 7's checks
and words."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable

from kvservice import __version__
from kvservice.auth import Access
from kvservice.resp.codec import OK, Error, Reply, printable
from kvservice.resp.commands.dispatch import SYNTAX_ERROR, Command, subcommands
from kvservice.resp.commands.state import ServerState, Session
from kvservice.resp.keyspace_events import INVALID_LETTER, KeyspaceEvents
from kvservice.resp.patterns import GlobPattern
from kvservice.store import (
    Store,
)

CONFIG_PARAMETERS: dict[bytes, Callable[[Store, ServerState], bytes]] = {
    b"maxmemory": lambda store, server: b"%d" % store.stats().max_bytes,
    b"maxmemory-policy": lambda store, server: b"noeviction",  # at the budget, writes refused
    b"databases": lambda store, server: b"1",
    b"save": lambda store, server: b"",  # no snapshots: with --data-dir, every write is journaled
    b"appendonly": lambda store, server: b"no" if store.stats().persistence is None else b"yes",
    b"notify-keyspace-events": lambda store, server: str(server.pubsub.events).encode(),
}
"""The parameters CONFIG GET answers (redis-benchmark asks for save and appendonly): what
kvservice does. All but those in CONFIG_SETTERS come from its command line."""


def _set_keyspace_events(server: ServerState, value: bytes) -> Callable[[], None] | str:
    events = KeyspaceEvents.parse(value)
    if events is None:
        return INVALID_LETTER
    if events.publishes and server.notifications_unavailable is not None:
        return server.notifications_unavailable

    def apply() -> None:
        server.pubsub.events = events

    return apply


CONFIG_SETTERS: dict[bytes, Callable[[ServerState, bytes], Callable[[], None] | str]] = {
    b"notify-keyspace-events": _set_keyspace_events,
}
"""The parameters CONFIG SET changes: each reads a value into what applies it, or into
Redis's reason for refusing it."""


def _config_get(store: Store, session: Session, args: list[bytes]) -> Reply:
    """CONFIG GET pattern [pattern ...]: a map of every parameter a pattern matches, with
    case ignored as Redis ignores it."""
    matchers = [GlobPattern(pattern, nocase=True).matches for pattern in args]
    return {
        name: value(store, session.server)
        for name, value in CONFIG_PARAMETERS.items()
        if any(matches(name) for matches in matchers)
    }


def _config_set(store: Store, session: Session, args: list[bytes]) -> Reply:
    """CONFIG SET parameter value [parameter value ...], all or nothing, with Redis 7's
    checks in its order: the names (unknown, fixed, twice), then each value."""
    if len(args) % 2:
        return SYNTAX_ERROR
    pairs = list(zip(args[::2], args[1::2], strict=True))
    unknown: bytes | None = None
    seen: set[bytes] = set()
    for given, _ in pairs:
        name = given.lower()
        if name not in CONFIG_PARAMETERS:
            unknown = unknown or given
            continue
        if name not in CONFIG_SETTERS or name in seen:
            if unknown is not None:
                break
            reason = "duplicate parameter" if name in seen else "can't set immutable config"
            return _config_set_failed(given, reason)
        seen.add(name)
    if unknown is not None:
        return Error(
            "ERR", f"Unknown option or number of arguments for CONFIG SET - '{printable(unknown)}'"
        )
    changes = []
    for given, value in pairs:
        name = given.lower()
        change = CONFIG_SETTERS[name](session.server, value)
        if isinstance(change, str):
            return _config_set_failed(name, change)
        changes.append(change)
    for change in changes:
        change()
    return OK


def _config_set_failed(name: bytes, reason: str) -> Error:
    return Error(
        "ERR", f"CONFIG SET failed (possibly related to argument '{printable(name)}') - {reason}"
    )


CONFIG_SUBCOMMANDS: dict[bytes, Command] = {
    b"GET": Command(_config_get, 1, None),
    b"SET": Command(_config_set, 2, None, Access.WRITE),
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
    channels, patterns = server.pubsub.figures
    return {
        "total_connections_received": server.total_connections_received,
        "total_commands_processed": server.total_commands_processed,
        "rejected_connections": server.rejected_connections,
        "pubsub_channels": channels,
        "pubsub_patterns": patterns,
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
    # expires= and avg_ttl= stay 0: StoreStats does not count the keys that have a deadline,
    # and counting them here would mean reading every key.
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


SERVER_COMMANDS: dict[bytes, Command] = {
    b"CONFIG": Command(subcommands("CONFIG", CONFIG_SUBCOMMANDS), 1, None, while_subscribed=True),
    b"INFO": Command(_info, 0, None),
}
"""The commands about the server, by upper-case name."""
