"""What RESP connections remember: each connection's `Session` (its subscriptions among it),
and the `ServerState` every connection of one server shares (SCAN cursors, the figures INFO
reports, the tokens, the clock TTL reads, the subscriptions' `PubSub`)."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kvservice.auth import Access, Grant, Tokens
from kvservice.resp.codec import Error, Reply
from kvservice.resp.pubsub import PubSub, Subscriber, SubscriberState
from kvservice.store import Clock, system_clock_ms


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
    """What every connection of one server shares: its SCAN cursors, the figures INFO
    reports, which the server keeps up to date, and the clock deadlines are read against."""

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
    pubsub: PubSub = field(default_factory=PubSub)
    """Every connection's subscriptions, and the keyspace notifications' setting."""
    notifications_unavailable: str | None = None
    """Why no change is ever told (the store keeps no change feed: a Redis Cluster), or
    None: CONFIG SET then refuses to turn keyspace notifications on, rather than accept a
    setting that would never notify."""
    clock: Clock = system_clock_ms
    """The wall clock TTL and PTTL measure a key's deadline against, and the now Redis's
    bound on a relative expiry (the deadline must fit 64 bits) is checked at; the store
    keeps its own for the deadlines themselves. Tests set the store's fake clock here."""


_FOLLOWING = {SubscriberState.SUBSCRIBED, SubscriberState.OVERFLOWED}


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
    wake: Callable[[], None] = field(default=lambda: None, repr=False)
    """Makes the connection take its messages (`ConnectionInfo.wake`): thread-safe."""
    subscriber: Subscriber | None = None
    """Its subscriptions, from its first SUBSCRIBE or PSUBSCRIBE on."""

    @property
    def subscriptions(self) -> Subscriber:
        """Its subscriptions, made on first use."""
        if self.subscriber is None:
            self.subscriber = Subscriber(self.server.pubsub, self.wake)
        return self.subscriber

    @property
    def subscribed(self) -> bool:
        """Whether it follows a channel or a pattern (Redis's CLIENT_PUBSUB)."""
        subscriber = self.subscriber
        return subscriber is not None and subscriber.state in _FOLLOWING

    @property
    def in_subscribed_mode(self) -> bool:
        """Whether only the subscribe family, PING, QUIT and RESET may run: subscribed under
        RESP2, whose replies could not be told from messages (RESP3 pushes can)."""
        return self.protocol == 2 and self.subscribed

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
