"""The RESP transport's server: its settings, and `RespServer`, the RESP protocol code
(`protocol.py`) on the connection core (`kvservice.core`), which owns the loop thread,
accepting, the connection cap, timeouts, TLS, flow control, the reply budget, the execution
policy and the drain. Here is what is RESP's about them: the refusal a connection past the
cap gets (`-ERR max number of clients reached`), a `redis://` URL, and the figures INFO
reports (`commands.ServerState`), in which the core counts connections, and the source of
keyspace notifications (`ChangeSource`, the change feed), which it listens to while it runs,
and whose notifications its dispatcher (`pubsub.PubSub.start`) delivers meanwhile.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvservice.auth import Tokens
from kvservice.core import ConnectionServer, ConnectionSettings
from kvservice.execution import INLINE_POLICY, ExecutionPolicy
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.codec import RequestLimits
from kvservice.resp.commands import ServerState
from kvservice.resp.protocol import RespTransport
from kvservice.resp.pubsub import MAX_PENDING_MESSAGES, PubSub
from kvservice.store import Change, FeedUnsupported, Store


class ChangeSource(Protocol):
    """Where keyspace notifications come from: the change feed's hub (`feed.ChangeFeed`),
    which tells of every change whichever transport or replica made it."""

    def subscribe(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Call `listener` with every change from now on (from any thread); returns what
        stops it."""
        ...


@dataclass(frozen=True)
class RespSettings:
    """Listening address and every limit the RESP transport enforces; those a user can change
    come from the configuration (`kvservice.__main__.resp_settings`), without defaults here."""

    host: str
    port: int
    max_connections: int
    idle_timeout_s: float
    max_argument_bytes: int
    """One bulk string; above the value limit, so the store answers slightly large values."""
    max_request_bytes: int
    """All arguments of one command together; also the longest inline command line."""
    listen_backlog: int
    max_arguments: int = 1024
    shutdown_timeout_s: float = 2.0
    handshake_timeout_s: float = 10.0
    """How long a TLS handshake may take; a client that stalls one is then dropped."""
    workers: int = 32
    """Threads that run commands when the execution policy says WORKERS (--threads)."""
    max_pending_notifications: int = MAX_PENDING_MESSAGES
    """Keyspace notifications queued for a subscriber that does not read them before it is
    closed (their bytes are charged to the reply budget too)."""

    @property
    def limits(self) -> RequestLimits:
        """What one command may hold, for the parser."""
        return RequestLimits(self.max_argument_bytes, self.max_request_bytes, self.max_arguments)

    @property
    def connections(self) -> ConnectionSettings:
        """What the connection core enforces; RESP has no request timeout (a command
        trickled in is idle between its bytes)."""
        return ConnectionSettings(
            host=self.host,
            port=self.port,
            max_connections=self.max_connections,
            idle_timeout_s=self.idle_timeout_s,
            listen_backlog=self.listen_backlog,
            shutdown_timeout_s=self.shutdown_timeout_s,
            handshake_timeout_s=self.handshake_timeout_s,
            workers=self.workers,
        )


class RespServer:
    """The RESP transport over `store`, serving on a background thread until `stop()`."""

    def __init__(
        self,
        store: Store,
        settings: RespSettings,
        tokens: Tokens | None = None,
        tls: ssl.SSLContext | None = None,
        execution: ExecutionPolicy = INLINE_POLICY,
        reply_budget: ReplyBudget | None = None,
        changes: ChangeSource | None = None,
    ) -> None:
        """`changes`: where keyspace notifications come from; None: SUBSCRIBE works, and
        no notification is ever published."""
        self.store = store
        self.settings = settings
        self.changes = changes
        self._stop_listening: Callable[[], None] | None = None
        self._state = ServerState(
            port=settings.port,
            max_clients=settings.max_connections,
            tokens=tokens,
            pubsub=PubSub(settings.max_pending_notifications, reply_budget=reply_budget),
        )
        self._core = ConnectionServer(
            RespTransport(store, self._state, settings.limits),
            settings.connections,
            tls=tls,
            execution=execution,
            reply_budget=reply_budget,
            figures=self._state,
        )
        self.failed = self._core.failed

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The TLS context it serves with (`kvservice.tls`); None: plain RESP."""
        return self._core.tls

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._core.port

    @property
    def stopping(self) -> bool:
        """Whether it is draining: batches stop between commands, nothing new is read."""
        return self._core.stopping

    @property
    def figures(self) -> ServerState:
        """Its connection and command counts, as INFO reports them (read by metrics)."""
        return self._state

    @property
    def url(self) -> str:
        """The address it serves, as a redis:// (or with TLS rediss://) URL."""
        host = self.settings.host
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        """Bind (raising OSError if the address is taken) and serve on a background thread."""
        self._core.start()
        self._state.port = self._core.port  # the port asked for, unless it was 0
        if self.changes is not None:
            self._state.pubsub.start()
            try:
                self._stop_listening = self.changes.subscribe(self._state.pubsub.changed)
            except FeedUnsupported as error:  # a Redis Cluster: CONFIG SET says why
                self._state.notifications_unavailable = str(error)

    def stop(self) -> None:
        """Stop accepting, finish commands in flight, close every connection; a few seconds."""
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        self._core.stop()
        self._state.pubsub.stop()
