"""What the checks need from a kvservice, whatever the transport: the `KVClient` protocol.

The protocol speaks in outcomes (`Outcome.STORED`, `Outcome.NOT_FOUND`, ...) rather than
status codes or reply types, so each transport's client implements it without pretending to
be another. A transport that cannot express something (versions, content types) says so in
`capabilities`, and the checks skip, visibly, the steps that need it. Each reply keeps
`evidence`, a short note of what actually came back on the wire ("HTTP 500 Internal Server
Error: ..."), so a failing check can show it. A transport failure (refused connection,
timeout) raises `KVUnreachable`, which is how callers tell "answered wrongly" from "did not
answer"; a refused token (or a missing one) raises its subclass `KVRefused`, so that it is
reported as what it is. A client presents `credentials.token`; `with_token` makes one like it
that presents another (the token checks use it).

Keys may be written with a time to live (`put(..., ttl_ms=)`), and `expiry` reads the deadline
a key has; a transport whose history cannot tell an expiry from a delete says so
(`Capability.EXPIRY_ENTRIES`).

The change feed (`Capability.WATCH`): `watch` opens a `Watch` of a key or a prefix, live or
resumed from a position (an event's id), whose `next_event` hands out `FeedEvent`s (a change,
a bookmark, or the error the stream ended with); `history(key, after=, wait_ms=)` is the
long-poll, its reply carrying the position to resume from. Positions are opaque tokens, the
same in both.

Over HTTP each request carries a fresh `X-Request-ID`, and the reply keeps it (`request_id`),
so a failing step names the line to look for in kvservice's access log.

Before any check, `identify` confirms the URL answers like a kvservice at all, so a wrong URL
(another service, a proxy's error page) is reported as such instead of as a broken kvservice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

DEFAULT_TIMEOUT_S = (2.0, 5.0)
"""(connect, read) seconds for one request."""


class KVUnreachable(Exception):
    """The kvservice did not answer: the connection failed or a timeout passed."""


class KVRefused(KVUnreachable):
    """The kvservice would not serve this client: no token, an unknown one, or one that may
    not do this (HTTP 401 or 403; RESP -NOAUTH, -WRONGPASS or -NOPERM)."""


@dataclass(frozen=True)
class Credentials:
    """What a client presents to a kvservice that asks for tokens, and whom it trusts."""

    # Left out of repr(), so that no log line or traceback shows a token.
    token: str | None = field(default=None, repr=False)
    """Sent with every request (HTTP `Authorization: Bearer`, RESP `AUTH`); None: none."""
    read_token: str | None = field(default=None, repr=False)
    """A token that may only read, for the checks that it cannot write; None: not checked."""
    ca_cert: str | None = None
    """A PEM file of the CA to verify the kvservice's TLS certificate with (https://,
    rediss://); None: the system's CAs."""


NO_CREDENTIALS = Credentials()
"""No tokens, the system's CAs."""


class Outcome(StrEnum):
    """What the kvservice said about one operation, independent of the transport."""

    STORED = "stored"
    CREATED = "created"
    FOUND = "found"
    DELETED = "deleted"
    NOT_FOUND = "not found"
    ALREADY_EXISTS = "already exists"
    PRECONDITION_FAILED = "precondition failed"
    INVALID = "invalid request"
    TOO_LARGE = "value too large"
    STORE_FULL = "store full"
    WATCHING = "watching"
    """A watch was opened: its events follow."""
    GONE = "resume position gone"
    """The position asked to resume from can no longer be served (HTTP 410)."""
    UNEXPECTED = "unexpected answer"
    UNSUPPORTED = "not supported by this transport"
    """Nothing was sent: the transport cannot express the request (see `Capability`)."""


class Capability(StrEnum):
    """What a transport may lack; the value completes "this transport has no ..."."""

    VERSIONS = "versions to condition writes on"
    CONTENT_TYPES = "content types"
    EXPIRY = "keys that expire"
    EXPIRY_ENTRIES = "history entries that tell an expiry from a delete"
    WATCH = "change feed to watch and resume from"


def describe_value(value: bytes | None) -> str:
    """A short, printable rendering of a value for reports; None is a delete."""
    if value is None:
        return "<deleted>"
    text = repr(value)
    if len(text) > 60:
        return f"{text[:40]}... ({len(value)} bytes)"
    return text


@dataclass(frozen=True)
class Reply:
    """The answer to put, create, get, delete or expiry."""

    outcome: Outcome
    value: bytes | None = None
    content_type: str | None = None
    version: str | None = None
    expires_at_ms: int | None = None
    """The key's deadline in Unix epoch ms, as `expiry` reads it (None: none, or not asked)."""
    evidence: str = ""
    request_id: str | None = None
    """The X-Request-ID the request was sent with (None: the transport has none)."""

    def __str__(self) -> str:
        parts = [self.outcome.value]
        if self.value is not None:
            parts.append(describe_value(self.value))
        if self.content_type is not None:
            parts.append(f"as {self.content_type}")
        if self.version is not None:
            parts.append(f"version {self.version}")
        if self.expires_at_ms is not None:
            parts.append(f"expiring at {self.expires_at_ms}")
        return _with_evidence(" ".join(parts), self.evidence, self.request_id)


def _with_evidence(text: str, evidence: str, request_id: str | None) -> str:
    """`text [evidence, request ID]`, leaving out what is empty."""
    notes = [evidence] if evidence else []
    if request_id is not None:
        notes.append(f"X-Request-ID {request_id}")
    return f"{text} [{'; '.join(notes)}]" if notes else text


@dataclass(frozen=True)
class HistoryEntry:
    """One write of a key: its value (None for a delete or an expiry) and when it was
    applied (for an expiry: the key's deadline)."""

    value: bytes | None
    timestamp_ms: int
    expired: bool = False
    """The entry records the key expiring (only where `Capability.EXPIRY_ENTRIES`)."""


@dataclass(frozen=True)
class HistoryReply:
    """The answer to history: the entries newest first when the outcome is FOUND."""

    outcome: Outcome
    entries: tuple[HistoryEntry, ...] = ()
    evidence: str = ""
    request_id: str | None = None
    position: str | None = None
    """The feed position to resume from (HTTP `KV-Position`; None: the transport gave none)."""

    @property
    def values(self) -> list[bytes | None]:
        """The entries' values, newest first."""
        return [entry.value for entry in self.entries]

    def __str__(self) -> str:
        if self.outcome is Outcome.FOUND:
            text = "[" + ", ".join(describe_value(value) for value in self.values) + "]"
        else:
            text = self.outcome.value
        return _with_evidence(text, self.evidence, self.request_id)


@dataclass(frozen=True)
class KeysReply:
    """The answer to list_keys: one page of keys when the outcome is FOUND, and the token
    that asks for the next page (None on the last)."""

    outcome: Outcome
    keys: tuple[str, ...] = ()
    next_page: str | None = None
    evidence: str = ""
    request_id: str | None = None

    def __str__(self) -> str:
        if self.outcome is Outcome.FOUND:
            more = "more to come" if self.next_page is not None else "last page"
            text = f"[{', '.join(self.keys)}] ({more})"
        else:
            text = self.outcome.value
        return _with_evidence(text, self.evidence, self.request_id)


class ChangeType(StrEnum):
    """What a change in the feed did to its key."""

    PUT = "put"
    """A write (PUT, POST, SET)."""
    DELETE = "delete"
    EXPIRED = "expired"


@dataclass(frozen=True)
class FeedChange:
    """One change as a watcher receives it: the key, its new value (None for a delete or an
    expiry), when it was applied, the version it gave the key (None for a delete or an
    expiry) and what kind of change it was."""

    key: str
    value: bytes | None
    timestamp_ms: int
    version: str | None
    type: ChangeType
    revision: int | None = None
    """The feed's own sequence number, when the transport shows it."""

    def __str__(self) -> str:
        text = f"{self.type.value} {self.key}"
        if self.type is ChangeType.PUT:
            text += f" = {describe_value(self.value)} version {self.version}"
        return text


@dataclass(frozen=True)
class FeedEvent:
    """One event of a watch: a change, a bookmark (a position and nothing else), or the
    error the stream ended with (`error`: what the service said)."""

    position: str | None
    """The event's id: the token to resume after it (None: the event had none)."""
    change: FeedChange | None = None
    error: str | None = None

    @property
    def is_bookmark(self) -> bool:
        """A position without a change or an error."""
        return self.change is None and self.error is None

    def __str__(self) -> str:
        if self.change is not None:
            return f"{self.change} at {self.position}"
        if self.error is not None:
            return f"error {self.error}"
        return f"bookmark {self.position}"


class Watch(Protocol):
    """An open watch: its outcome (WATCHING when events follow), then its events; close it
    (or use it as a context manager) when done."""

    @property
    def outcome(self) -> Outcome:
        """WATCHING, or why not: INVALID, GONE (see `restart_position`), UNSUPPORTED, ..."""
        ...

    @property
    def evidence(self) -> str:
        """What came back on the wire when it was opened."""
        ...

    @property
    def request_id(self) -> str | None:
        """The X-Request-ID the watch was opened with (None: the transport has none)."""
        ...

    @property
    def restart_position(self) -> str | None:
        """With GONE: the position the service says to start again from (None: it gave none)."""
        ...

    @property
    def ended(self) -> str | None:
        """Why no more events will come (None while the watch is open)."""
        ...

    def next_event(self, timeout_s: float) -> FeedEvent | None:
        """The next event, waiting at most `timeout_s`; None when none came in time or the
        stream has ended, after which `ended` says why and the watch is over."""
        ...

    def close(self) -> None:
        """Stop watching; `next_event` answers None afterwards."""
        ...

    def __enter__(self) -> Watch: ...

    def __exit__(self, *exc_info: object) -> None: ...


@dataclass(frozen=True)
class UnopenedWatch:
    """A `Watch` that was not opened: the outcome saying why, and no events."""

    outcome: Outcome
    evidence: str = ""
    request_id: str | None = None
    restart_position: str | None = None

    @property
    def ended(self) -> str | None:
        return f"it was not opened: {self.outcome.value}"

    def next_event(self, timeout_s: float) -> FeedEvent | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> UnopenedWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __str__(self) -> str:
        text = self.outcome.value
        if self.restart_position is not None:
            text += f", start again from {self.restart_position}"
        return _with_evidence(text, self.evidence, self.request_id)


class KVClient(Protocol):
    """The operations the checks need from a kvservice, over any transport."""

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this transport can express; requests needing more answer UNSUPPORTED."""
        ...

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
        """Write `value`; the conditions make a failed precondition change nothing. With
        `ttl_ms`, the key expires that many milliseconds after the write; without, it has
        no deadline (a plain write removes one)."""
        ...

    def create(self, key: str, value: bytes, *, content_type: str | None = None) -> Reply:
        """Write `value` only if the key holds none (ALREADY_EXISTS otherwise)."""
        ...

    def get(self, key: str) -> Reply:
        """Read the current value, its content type and version."""
        ...

    def delete(self, key: str, *, only_if_version: str | None = None) -> Reply:
        """Delete the current value."""
        ...

    def expiry(self, key: str) -> Reply:
        """The key's deadline: FOUND with `expires_at_ms` (None: it has none), NOT_FOUND when
        the key has no value."""
        ...

    def history(
        self, key: str, *, after: str | None = None, wait_ms: int | None = None
    ) -> HistoryReply:
        """The key's writes within the history window, newest first. With `after` (a feed
        position), only the writes after it; with `wait_ms` too, the long-poll: when there
        are none yet, wait up to that long for one (an empty list at the deadline). `wait_ms`
        without `after` waits for the next write. Needs `Capability.WATCH` for either."""
        ...

    def watch(
        self, *, key: str | None = None, prefix: str | None = None, resume: str | None = None
    ) -> Watch:
        """Watch `key` exactly, or every key starting with `prefix` (neither: every key), live,
        or from just after position `resume`. Needs `Capability.WATCH` (UNSUPPORTED else)."""
        ...

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        """One page of at most `limit` keys holding a value that start with `prefix`, in
        lexicographic order; `page` is the previous reply's `next_page` (None: the first)."""
        ...

    def identify(self) -> str | None:
        """None when the URL answers like a kvservice; otherwise a short reason why it does
        not ("status 404 text/html"). Raises KVUnreachable when nothing answers."""
        ...

    @property
    def credentials(self) -> Credentials:
        """The tokens this client knows."""
        ...

    def with_token(self, token: str | None) -> KVClient:
        """A client of the same kvservice presenting `token` (None: no token); the caller
        closes it."""
        ...

    def close(self) -> None:
        """Release connections; the client is not used afterwards."""
        ...
