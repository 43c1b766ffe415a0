"""Where the Redis backend's commands go: connections whose every step has a deadline (the
host lookup included), one server's pool, and the topology that says which server holds a
Redis key and which slots each primary holds (a single server, or a cluster through
redis-py's slot map)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from kvservice.store.model import StoreUnavailable

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


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


class Connection(redis.Connection):
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


class SSLConnection(redis.SSLConnection, Connection):
    """The same over TLS: redis-py's SSLConnection wraps what Connection connected."""


# -- where commands go --------------------------------------------------------------------------


class Server:
    """One Redis server and the pool of connections to it."""

    def __init__(self, pool: redis.ConnectionPool, address: str) -> None:
        self.pool = pool
        self.address = address

    @property
    def database(self) -> int:
        """The database the pool's connections select (the URL's path; 0 by default)."""
        return int(self.pool.connection_kwargs.get("db", 0))

    def subscription(self) -> PubSub:
        """A PubSub on a connection of its own, made with the pool's settings: a subscribed
        connection takes no other command, so it is never one of the pool's. Close it with
        `close_subscription`."""
        pool = redis.ConnectionPool(
            connection_class=self.pool.connection_class,
            max_connections=1,
            **self.pool.connection_kwargs,
        )
        return redis.Redis(connection_pool=pool).pubsub()


def close_subscription(subscription: PubSub) -> None:
    """Close a `Server.subscription` and its connection."""
    subscription.close()
    subscription.connection_pool.disconnect()


class Topology:
    """Which server holds a Redis key."""

    cluster: bool

    def server_for(self, redis_key: str) -> Server:
        """The server to send commands about `redis_key` to."""
        raise NotImplementedError

    def primaries(self) -> list[Server]:
        """Every server that holds keys."""
        raise NotImplementedError

    def slots_by_primary(self, slots: Iterable[int] | None = None) -> list[list[int]]:
        """A cluster's slots (all, or those given), in order, grouped by the primary that
        holds them ([] on a single server)."""
        return []

    def refresh(self) -> None:
        """Relearn the topology (after MOVED, or a node that went away)."""

    def close(self) -> None:
        """Close every connection."""


class SingleServer(Topology):
    """One Redis server holds everything."""

    cluster = False

    def __init__(self, server: Server) -> None:
        self._server = server

    def server_for(self, redis_key: str) -> Server:
        return self._server

    def primaries(self) -> list[Server]:
        return [self._server]

    def close(self) -> None:
        self._server.pool.disconnect()


class Cluster(Topology):
    """A Redis Cluster, through redis-py's slot map; connected lazily, so the process starts
    even while the cluster is down."""

    cluster = True

    def __init__(self, make_client: Callable[[], RedisCluster], description: str) -> None:
        self._make_client = make_client
        self._description = description
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def _connected(self) -> RedisCluster:
        client = self._client
        if client is not None:
            return client
        # Connecting asks the cluster for its slots, a network call: made outside the lock, so
        # that requests do not queue behind one another's timeouts. Racing callers may each
        # connect; the first to finish is kept.
        try:
            client = self._make_client()
        except (redis_errors.RedisError, OSError) as error:
            raise StoreUnavailable(
                f"The Redis Cluster at {self._description} could not be reached: "
                f"{error}; nothing was changed."
            ) from error
        with self._lock:
            kept, spare = (self._client, client) if self._client is not None else (client, None)
            self._client = kept
        if spare is not None:
            spare.close()
        return kept

    def _server_of(self, node: ClusterNode) -> Server:
        client = self._connected().get_redis_connection(node)
        return Server(client.connection_pool, f"{node.host}:{node.port}")

    def server_for(self, redis_key: str) -> Server:
        try:
            node = self._connected().get_node_from_key(redis_key)  # type: ignore[no-untyped-call]
            return self._server_of(node)
        except redis_errors.SlotNotCoveredError as error:
            self.refresh()
            raise StoreUnavailable(
                f"The Redis Cluster at {self._description} does not cover the key's slot: "
                f"{error}; nothing was changed."
            ) from error

    def primaries(self) -> list[Server]:
        nodes = self._connected().get_primaries()  # type: ignore[no-untyped-call]
        return [self._server_of(node) for node in nodes]

    def slots_by_primary(self, slots: Iterable[int] | None = None) -> list[list[int]]:
        # redis-py replaces its slot map whole, and changes a slot's entry in place on MOVED.
        slots_cache = self._connected().nodes_manager.slots_cache
        groups: dict[str, list[int]] = {}
        for slot in sorted(slots_cache if slots is None else slots):
            nodes = slots_cache.get(slot)
            if nodes:
                groups.setdefault(nodes[0].name, []).append(slot)
        return list(groups.values())

    def refresh(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        self.refresh()


def topology(
    url: str, connections: int, timeout_s: float, lookup: BoundedLookup
) -> tuple[Topology, str]:
    """The servers a store URL names, and how to describe them without their credentials."""
    tls = urlsplit(url).scheme.startswith("rediss")
    connection_class = type(
        "Connection", (SSLConnection if tls else Connection,), {"lookup": lookup}
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

        return Cluster(make_cluster, description), description
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        timeout=timeout_s,
        connection_class=connection_class,
        **options,
    )
    address = f"{parts.hostname}:{parts.port or 6379}"
    return SingleServer(Server(pool, address)), description


def _without_credentials(url: str) -> str:
    """The URL with any user and password left out, for logs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
