"""A store backend on Redis or Redis Cluster (redis-py), with the memory backend's contract.

Layout: for a kvservice key K, a hash `kv:{K}` holds the value (`d`), its content type (`t`)
and its ETag (`e`), and a list `kv:{K}:h` holds its history, oldest first, each entry
`<epoch ms>:=<bytes>` for a write or `<epoch ms>:-` for a delete. The hash tag `{K}` puts
both in one cluster slot. On a single Redis a sorted set `kv:keys` also holds every key with a
value, for listing in order; a cluster cannot keep one set in step with keys on every node,
so there listing scans every primary instead.

Every operation is atomic on the server: writes, create-only, preconditions and deletes are
one Lua script each (EVALSHA, loaded again on NOSCRIPT), so replicas racing on one key behave
as threads of one process do. A script takes the time from Redis `TIME` (or the injected
clock), never lets a key's timestamps go backwards, trims the key's history to the window,
and sets a TTL on it so a deleted key's history goes away by itself. ETags are random and
kept in Redis, so any replica honours the ETag another one handed out.

The budget is Redis's `maxmemory`; kvservice refuses a server whose `maxmemory-policy` would
evict (evicted keys are acknowledged writes lost). Write scripts are refused whole at the
limit (OOM, our 507); the delete script is marked `allow-oom`, so deletes still work.

Faults: commands are sent on connections taken from redis-py's pools directly rather than
through its client, to know what happened. A connection that cannot be made, or a command
that could not be sent, changed nothing; a command sent without a reply may or may not have
been applied, and the StoreUnavailable says so. Nothing is retried blindly: only NOSCRIPT and
a cluster's MOVED/ASK (which mean the command did not run) are retried, once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from kvservice.store.model import (
    DEFAULT_PAGE_KEYS,
    MATCH_ANY,
    NO_CONDITION,
    Clock,
    HistoryEntry,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Precondition,
    PreconditionFailed,
    StoreFull,
    StoreMisconfigured,
    StoreStats,
    StoreUnavailable,
    Value,
    too_large,
    validate_key,
    validate_prefix,
)

logger = logging.getLogger("kvservice.store.redis")

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
INDEX_KEY = "kv:keys"
HISTORY_TTL_MARGIN_MS = 1_000
"""How much longer than the window a key's history list lives after its last write."""
_SCAN_COUNT = 1000
_SAFE_POLICIES = ("noeviction",)

# -- the scripts --------------------------------------------------------------------------------

_LUA_COMMON = r"""
local function now_ms(clock)
  if clock ~= '' then return tonumber(clock) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function stamp(entry)
  return tonumber(string.match(entry, '^(%d+):'))
end

local function latest_ms(history, clock)
  -- A key's timestamps never go backwards, whatever the clock does.
  local now = now_ms(clock)
  local newest = redis.call('LINDEX', history, -1)
  if newest and stamp(newest) > now then return stamp(newest) end
  return now
end

local function matches(spec, etag)
  if not etag then return false end
  if spec == '*' then return true end
  for tag in string.gmatch(string.sub(spec, 2), '[^\n]+') do
    if tag == etag then return true end
  end
  return false
end

local function holds(if_match, if_none_match, etag)
  if if_match ~= '' and not matches(if_match, etag) then return false end
  return if_none_match == '' or not matches(if_none_match, etag)
end

local function record(history, entry, window_ms, clock, ttl_ms)
  local now = latest_ms(history, clock)
  redis.call('RPUSH', history, string.format('%.0f', now) .. ':' .. entry)
  local cutoff = now - window_ms
  while true do
    local oldest = redis.call('LINDEX', history, 0)
    if not oldest or stamp(oldest) > cutoff then break end
    redis.call('LPOP', history)
  end
  redis.call('PEXPIRE', history, ttl_ms)
  return now
end
"""

# KEYS: value hash, history list, [index]. ARGV: key, data, content type ('' or '=type'),
# new etag, create only ('1'/'0'), If-Match spec, If-None-Match spec, window, clock, ttl.
_WRITE = (
    "#!lua\n"
    + _LUA_COMMON
    + r"""
local etag = redis.call('HGET', KEYS[1], 'e')
if ARGV[5] == '1' and etag then return {'exists'} end
if not holds(ARGV[6], ARGV[7], etag) then return {'precondition'} end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 't')
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'e', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'e', ARGV[4], 't', string.sub(ARGV[3], 2))
end
if KEYS[3] then redis.call('ZADD', KEYS[3], 0, ARGV[1]) end
local now = record(KEYS[2], '=' .. ARGV[2], tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10]))
return {'ok', now}
"""
)

# KEYS: value hash, history list, [index]. ARGV: key, If-Match spec, If-None-Match spec,
# window, clock, ttl. allow-oom: deletes are how a full store gets room back.
_DELETE = (
    "#!lua flags=allow-oom\n"
    + _LUA_COMMON
    + r"""
local etag = redis.call('HGET', KEYS[1], 'e')
if not etag then return {'missing'} end
if not holds(ARGV[2], ARGV[3], etag) then return {'precondition'} end
redis.call('DEL', KEYS[1])
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[1]) end
record(KEYS[2], '-', tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]))
return {'ok'}
"""
)

# KEYS: history list. ARGV: window, clock. The entries inside the window, newest first.
_HISTORY = (
    "#!lua flags=no-writes\n"
    + _LUA_COMMON
    + r"""
local cutoff = latest_ms(KEYS[1], ARGV[2]) - tonumber(ARGV[1])
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local kept = {}
for i = #entries, 1, -1 do
  if stamp(entries[i]) <= cutoff then break end
  kept[#kept + 1] = entries[i]
end
return kept
"""
)


@dataclass(frozen=True)
class _Script:
    source: str

    @property
    def sha(self) -> str:
        """Redis's name for the script: the SHA-1 of its source."""
        return hashlib.sha1(self.source.encode()).hexdigest()


WRITE, DELETE, HISTORY = _Script(_WRITE), _Script(_DELETE), _Script(_HISTORY)


def value_key(key: str) -> str:
    """The Redis hash holding a key's value."""
    return f"kv:{{{key}}}"


def history_key(key: str) -> str:
    """The Redis list holding a key's history."""
    return f"kv:{{{key}}}:h"


# -- connections whose every step has a deadline -------------------------------------------------


class BoundedLookup:
    """Host name lookups that give up after a deadline and then fall back on the address
    that answered last.

    redis-py looks the host up with getaddrinfo on every new connection, and no socket
    timeout bounds that: a DNS server that does not answer (a stopped container's name, in
    compose) holds the request for the resolver's own timeouts, 10 s and more, far past
    --store-timeout. Here the lookup runs on a small pool of its own threads, and waiting for
    it is bounded; one that does not finish is left to finish on its own.
    """

    def __init__(self, resolve: Callable[[str, int], str] | None = None, threads: int = 2) -> None:
        self._resolve = resolve or _first_address
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="redis-lookup")
        self._last_good: dict[tuple[str, int], str] = {}

    def address(self, host: str, port: int, timeout_s: float | None) -> str:
        """An address for `host`, within `timeout_s`; raises ConnectionError if none."""
        if _is_address(host):
            return host
        try:
            address = self._pool.submit(self._resolve, host, port).result(timeout_s)
        except (FutureTimeout, OSError) as error:
            last_good = self._last_good.get((host, port))
            if last_good is not None:
                return last_good
            reason = (
                f"no answer within {timeout_s:g} s" if isinstance(error, FutureTimeout) else error
            )
            raise redis_errors.ConnectionError(f"cannot look {host} up: {reason}") from error
        self._last_good[(host, port)] = address
        return address


def _first_address(host: str, port: int) -> str:
    return str(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][4][0])


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


LOOKUP = BoundedLookup()
"""The lookups of every connection of the process."""


class _Connection(redis.Connection):
    """redis-py's TCP connection, looking the host up through LOOKUP."""

    lookup = LOOKUP

    def _connect(self) -> socket.socket:
        # The lookup and the connect share one deadline: the connect timeout.
        name, timeout_s = self._host, self.socket_connect_timeout
        started = time.monotonic()
        self._host = self.lookup.address(name, self.port, timeout_s)
        if timeout_s is not None:
            self.socket_connect_timeout = max(0.05, timeout_s - (time.monotonic() - started))
        try:
            sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        finally:
            self._host = name  # TLS checks the certificate against the name, not the address
            self.socket_connect_timeout = timeout_s
        return sock


class _SSLConnection(redis.SSLConnection, _Connection):
    """The same over TLS: redis-py's SSLConnection wraps what _Connection connected."""


# -- where commands go --------------------------------------------------------------------------


class _Server:
    """One Redis server and the pool of connections to it."""

    def __init__(self, pool: redis.ConnectionPool, address: str) -> None:
        self.pool = pool
        self.address = address


class _Topology:
    """Which server holds a Redis key."""

    cluster: bool

    def server_for(self, redis_key: str) -> _Server:
        """The server to send commands about `redis_key` to."""
        raise NotImplementedError

    def primaries(self) -> list[_Server]:
        """Every server that holds keys."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Relearn the topology (after MOVED, or a node that went away)."""

    def close(self) -> None:
        """Close every connection."""


class _SingleServer(_Topology):
    """One Redis server holds everything."""

    cluster = False

    def __init__(self, server: _Server) -> None:
        self._server = server

    def server_for(self, redis_key: str) -> _Server:
        return self._server

    def primaries(self) -> list[_Server]:
        return [self._server]

    def close(self) -> None:
        self._server.pool.disconnect()


class _Cluster(_Topology):
    """A Redis Cluster, through redis-py's slot map; connected lazily, so the process starts
    even while the cluster is down."""

    cluster = True

    def __init__(self, make_client: Callable[[], RedisCluster], description: str) -> None:
        self._make_client = make_client
        self._description = description
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def _connected(self) -> RedisCluster:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._make_client()
                except (redis_errors.RedisError, OSError) as error:
                    raise StoreUnavailable(
                        f"The Redis Cluster at {self._description} could not be reached: "
                        f"{error}; nothing was changed."
                    ) from error
            return self._client

    def _server_of(self, node: ClusterNode) -> _Server:
        client = self._connected().get_redis_connection(node)
        return _Server(client.connection_pool, f"{node.host}:{node.port}")

    def server_for(self, redis_key: str) -> _Server:
        try:
            node = self._connected().get_node_from_key(redis_key)  # type: ignore[no-untyped-call]
            return self._server_of(node)
        except redis_errors.SlotNotCoveredError as error:
            self.refresh()
            raise StoreUnavailable(
                f"The Redis Cluster at {self._description} does not cover the key's slot: "
                f"{error}; nothing was changed."
            ) from error

    def primaries(self) -> list[_Server]:
        nodes = self._connected().get_primaries()  # type: ignore[no-untyped-call]
        return [self._server_of(node) for node in nodes]

    def refresh(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        self.refresh()


# -- the backend --------------------------------------------------------------------------------


class RedisStore:
    """The Store contract on Redis or Redis Cluster; safe to share between threads."""

    remote = True

    def __init__(
        self,
        topology: _Topology,
        *,
        description: str,
        history_window_ms: int = 120_000,
        max_value_bytes: int = 1024,
        timeout_s: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        """Use `topology`; `clock` None takes the time from Redis (the production choice)."""
        if history_window_ms <= 0 or max_value_bytes < 0:
            raise ValueError("history_window_ms must be positive")
        self.description = description
        self.history_window_ms = history_window_ms
        self.max_value_bytes = max_value_bytes
        self.timeout_s = timeout_s
        self._topology = topology
        self._clock = clock
        self._checked = False
        self._check_lock = threading.Lock()
        self._full_refusals = 0
        self._full_refusals_lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connections: int,
        timeout_s: float = 2.0,
        history_window_ms: int = 120_000,
        max_value_bytes: int = 1024,
        clock: Clock | None = None,
        lookup: BoundedLookup = LOOKUP,
    ) -> RedisStore:
        """A store on `redis://[user:password@]host:port[/db]`, `rediss://...` (TLS), or
        `redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for TLS), with at most
        `connections` connections to each server. Connects lazily: nothing is sent yet."""
        topology, description = _topology(url, connections, timeout_s, lookup)
        return cls(
            topology,
            description=description,
            history_window_ms=history_window_ms,
            max_value_bytes=max_value_bytes,
            timeout_s=timeout_s,
            clock=clock,
        )

    def close(self) -> None:
        """Close every connection."""
        self._topology.close()

    # -- readiness and figures --------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise StoreMisconfigured if a server would evict keys, StoreUnavailable if one
        cannot be reached; remember a success, so operations need not ask again."""
        for server in self._topology.primaries():
            info = _info(self._execute(server, ("INFO", "memory"), writes=False))
            policy = info.get("maxmemory_policy", "")
            if policy not in _SAFE_POLICIES:
                raise StoreMisconfigured(
                    f"Redis at {server.address} has maxmemory-policy {policy or 'unknown'}: it "
                    "would evict keys, losing writes kvservice acknowledged. Set "
                    "maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, or in "
                    "redis.conf); Redis then refuses writes at maxmemory, which kvservice "
                    "answers with 507."
                )
        self._checked = True

    def stats(self) -> StoreStats:
        """Keys holding a value, Redis's used memory and its maxmemory (0: no limit), summed
        over a cluster's primaries. On a cluster the count scans every key."""
        self._ensure_checked()
        used = limit = 0
        for server in self._topology.primaries():
            info = _info(self._execute(server, ("INFO", "memory"), writes=False))
            used += int(info.get("used_memory", 0))
            limit += int(info.get("maxmemory", 0))
        if self._topology.cluster:
            count = sum(len(self._scan_keys(server, "")) for server in self._topology.primaries())
        else:
            count = int(self._execute(self._index_server(), ("ZCARD", INDEX_KEY), writes=False))
        return StoreStats(count, used, limit, full_refusals=self._full_refusals)

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        """The key's current value; raises KeyNotFound."""
        validate_key(key)
        self._ensure_checked()
        redis_key = value_key(key)
        data, content_type, etag = self._execute(
            self._topology.server_for(redis_key), ("HMGET", redis_key, "d", "t", "e"), writes=False
        )
        if etag is None:
            raise KeyNotFound(f"The key {key!r} has no value.")
        return Value(data, None if content_type is None else content_type.decode(), etag.decode())

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; [] if none."""
        validate_key(key)
        self._ensure_checked()
        entries = self._script(
            HISTORY, key, [history_key(key)], [self.history_window_ms, self._clock_arg()], False
        )
        return [_history_entry(entry) for entry in entries]

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """Up to `limit` keys holding a value that start with `prefix`, in lexicographic
        order, strictly after `after`. A single Redis reads its index; a cluster is scanned."""
        validate_prefix(prefix)
        if after is not None:
            validate_key(after)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._ensure_checked()
        if self._topology.cluster:
            found = sorted(
                key
                for server in self._topology.primaries()
                for key in self._scan_keys(server, prefix)
                if after is None or key > after
            )[: limit + 1]
        else:
            low = f"({after}" if after is not None and after >= prefix else f"[{prefix}"
            high = f"[{prefix}\xff" if prefix else "+"
            members = self._execute(
                self._index_server(),
                ("ZRANGE", INDEX_KEY, low, high.encode("latin-1"), "BYLEX", "LIMIT", 0, limit + 1),
                writes=False,
            )
            found = [member.decode() for member in members]
        if len(found) > limit:
            return KeyPage(found[:limit], found[limit - 1])
        return KeyPage(found, None)

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
    ) -> Value:
        """Set the key's value; raises PreconditionFailed, ValueTooLarge, StoreFull."""
        return self._write(key, data, content_type, precondition, create_only=False)

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
    ) -> Value:
        """Set the key's value only if it has none; raises KeyExists, and as `put` does."""
        return self._write(key, data, content_type, precondition, create_only=True)

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        """Remove the key's value and record the delete; raises KeyNotFound, PreconditionFailed.

        Deletes are allowed when Redis is at maxmemory: they are how a full store gets room back.
        """
        validate_key(key)
        self._ensure_checked()
        arguments = [
            key,
            _condition(precondition.if_match),
            _condition(precondition.if_none_match),
            self.history_window_ms,
            self._clock_arg(),
            self.history_window_ms + HISTORY_TTL_MARGIN_MS,
        ]
        outcome = self._script(DELETE, key, self._keys_of(key), arguments, True)
        if outcome[0] == b"missing":
            raise KeyNotFound(f"The key {key!r} has no value.")
        if outcome[0] == b"precondition":
            raise PreconditionFailed(f"The precondition on {key!r} does not hold.")

    def _write(
        self,
        key: str,
        data: bytes,
        content_type: str | None,
        precondition: Precondition,
        *,
        create_only: bool,
    ) -> Value:
        validate_key(key)
        if len(data) > self.max_value_bytes:
            raise too_large(len(data), self.max_value_bytes)
        self._ensure_checked()
        etag = secrets.token_hex(8)
        arguments = [
            key,
            data,
            "" if content_type is None else "=" + content_type,
            etag,
            "1" if create_only else "0",
            _condition(precondition.if_match),
            _condition(precondition.if_none_match),
            self.history_window_ms,
            self._clock_arg(),
            self.history_window_ms + HISTORY_TTL_MARGIN_MS,
        ]
        outcome = self._script(WRITE, key, self._keys_of(key), arguments, True)
        if outcome[0] == b"exists":
            raise KeyExists(f"The key {key!r} already has a value.")
        if outcome[0] == b"precondition":
            raise PreconditionFailed(f"The precondition on {key!r} does not hold.")
        return Value(data, content_type, etag)

    # -- talking to Redis -------------------------------------------------------------------

    def _keys_of(self, key: str) -> list[str]:
        keys = [value_key(key), history_key(key)]
        return keys if self._topology.cluster else [*keys, INDEX_KEY]

    def _index_server(self) -> _Server:
        return self._topology.server_for(INDEX_KEY)

    def _clock_arg(self) -> str:
        return "" if self._clock is None else str(self._clock())

    def _ensure_checked(self) -> None:
        if self._checked:
            return
        with self._check_lock:
            if not self._checked:
                self.check_ready()

    def _scan_keys(self, server: _Server, prefix: str) -> list[str]:
        """Every key holding a value on one server that starts with `prefix` (a SCAN walk)."""
        pattern = f"kv:{{{prefix}*}}"
        found: list[str] = []
        cursor: Any = 0
        while True:
            cursor, names = self._execute(
                server, ("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT), writes=False
            )
            found += [name.decode()[4:-1] for name in names]
            if int(cursor) == 0:
                return found

    def _script(
        self, script: _Script, key: str, keys: list[str], arguments: Sequence[Any], writes: bool
    ) -> Any:
        """Run a script on the server for `key`: EVALSHA, loading it on NOSCRIPT; in a cluster,
        relearning the slot map and retrying once on MOVED or ASK (it did not run)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *arguments)
        for attempt in range(2):
            server = self._topology.server_for(keys[0])
            try:
                try:
                    return self._execute(server, command, writes=writes)
                except redis_errors.NoScriptError:
                    self._execute(server, ("SCRIPT", "LOAD", script.source), writes=False)
                    return self._execute(server, command, writes=writes)
            except (redis_errors.MovedError, redis_errors.AskError):
                self._topology.refresh()
                if attempt:
                    raise StoreUnavailable(
                        f"The Redis Cluster at {self.description} is moving the key's slot; "
                        "nothing was changed: try again."
                    ) from None
        raise AssertionError("unreachable")

    def _execute(self, server: _Server, command: Sequence[Any], *, writes: bool) -> Any:
        """Send one command and read its reply, turning every way Redis can fail into a
        StoreError that says what became of the command."""
        name = str(command[0])
        try:
            connection = server.pool.get_connection()
        except (redis_errors.RedisError, OSError) as error:
            # Not reached, or it refused the connection's handshake (a wrong password, or
            # protected mode): either way no command was sent. Only a timeout waited: a
            # refusal comes back at once, and must not read as a server that was slow.
            self._topology_lost()
            failure = (
                f"gave no connection within {self.timeout_s:g} s"
                if isinstance(error, redis_errors.TimeoutError | TimeoutError)
                else "could not be connected to"
            )
            raise StoreUnavailable(
                f"Redis at {server.address} {failure} ({_reason(error)}); nothing was changed."
            ) from error
        try:
            try:
                connection.send_command(*command)  # type: ignore[no-untyped-call]
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
                connection.disconnect()  # type: ignore[no-untyped-call]
                raise StoreUnavailable(
                    f"Redis at {server.address} could not be sent {name} ({_reason(error)}); "
                    "nothing was changed."
                ) from error
            try:
                return connection.read_response()
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
                connection.disconnect()  # type: ignore[no-untyped-call]
                self._topology_lost()
                effect = (
                    "the write may or may not have been applied: read the key to find out "
                    "before writing it again"
                    if writes
                    else "nothing was changed"
                )
                raise StoreUnavailable(
                    f"Redis at {server.address} did not answer {name} within {self.timeout_s:g} s "
                    f"({_reason(error)}); {effect}."
                ) from error
        except redis_errors.ResponseError as error:
            refusal = _refusal(error, server.address)
            if refusal is error:
                raise
            if isinstance(refusal, StoreFull):
                with self._full_refusals_lock:
                    self._full_refusals += 1
            raise refusal from error
        finally:
            server.pool.release(connection)

    def _topology_lost(self) -> None:
        if self._topology.cluster:
            self._topology.refresh()  # a node went away: the slot map may have changed


def _refusal(error: redis_errors.ResponseError, address: str) -> Exception:
    """What an error reply from Redis means here. NOSCRIPT, MOVED and ASK pass through to
    `_script`, which retries them. An error nothing here expects is still Redis's doing, not
    the client's: logged, and answered as the store being unavailable."""
    if isinstance(
        error, redis_errors.NoScriptError | redis_errors.MovedError | redis_errors.AskError
    ):
        return error
    if isinstance(error, redis_errors.OutOfMemoryError):
        return StoreFull(
            f"Redis at {address} is at its memory limit (maxmemory); delete keys or wait for "
            "history to expire."
        )
    unavailable = (
        redis_errors.BusyLoadingError,  # LOADING: restarting, reading its append-only file
        redis_errors.ReadOnlyError,  # READONLY: a replica, after a failover
        redis_errors.ClusterDownError,
        redis_errors.TryAgainError,
        redis_errors.MasterDownError,
    )
    if isinstance(error, unavailable):
        return StoreUnavailable(
            f"Redis at {address} cannot serve now ({error}); nothing was changed."
        )
    if isinstance(error, redis_errors.NoPermissionError | redis_errors.AuthenticationError):
        return StoreMisconfigured(
            f"Redis at {address} does not let kvservice's user run its commands ({error}); "
            "it needs EVALSHA, SCRIPT, HMGET, ZRANGE, ZCARD, SCAN and INFO on the keys kv:*"
        )
    logger.error("Redis at %s answered an error kvservice does not expect: %s", address, error)
    return StoreUnavailable(f"Redis at {address} answered with an error: {error}.")


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _condition(tags: frozenset[str] | None) -> str:
    """A precondition as the scripts read it: '' none, '*' any value, '=' and tags by line."""
    if tags is None:
        return ""
    if MATCH_ANY in tags:
        return "*"
    return "=" + "\n".join(sorted(tags))


def _history_entry(entry: bytes) -> HistoryEntry:
    stamp, _, rest = entry.partition(b":")
    return HistoryEntry(rest[1:] if rest[:1] == b"=" else None, int(stamp))


def _info(reply: bytes) -> dict[str, str]:
    """An INFO reply's `name:value` lines."""
    fields = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon and not line.startswith("#"):
            fields[name] = value.strip()
    return fields


def _topology(
    url: str, connections: int, timeout_s: float, lookup: BoundedLookup
) -> tuple[_Topology, str]:
    """The servers a store URL names, and how to describe them without their credentials."""
    tls = urlsplit(url).scheme.startswith("rediss")
    connection_class = type(
        "Connection", (_SSLConnection if tls else _Connection,), {"lookup": lookup}
    )
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.netloc:
        raise ValueError(
            f"{_without_credentials(url)} is not a {', '.join(s + '://' for s in SCHEMES)} URL"
        )
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    description = _without_credentials(url)
    if parts.scheme.endswith("+cluster"):
        seeds = []
        for address in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = address.rpartition(":")
            seeds.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))  # type: ignore[no-untyped-call]

        def make_cluster() -> RedisCluster:
            first = seeds[0]
            return RedisCluster(
                # With a url (plain redis://, whatever the scheme: TLS is the connection
                # class's), redis-py builds each node's pool with our connection class;
                # without one it would build clients that do not take a connection class.
                url=f"redis://{first.host}:{first.port}",
                startup_nodes=seeds[1:],
                connection_class=connection_class,
                max_connections=connections,
                require_full_coverage=False,
                username=parts.username,
                password=parts.password,
                **options,
            )

        return _Cluster(make_cluster, description), description
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        timeout=timeout_s,
        connection_class=connection_class,
        **options,
    )
    address = f"{parts.hostname}:{parts.port or 6379}"
    return _SingleServer(_Server(pool, address)), description


def _without_credentials(url: str) -> str:
    """The URL with any user and password left out, for logs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
