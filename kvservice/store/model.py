"""What every store backend speaks: values, history entries, preconditions, pages of keys,
figures, the errors a store raises, and the key rules.

Standard library only; nothing here knows of a transport or of a particular backend.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

Clock = Callable[[], int]
"""Returns the current time in Unix epoch milliseconds."""

KEY_PATTERN = re.compile(r"[A-Za-z0-9]{1,255}")
MAX_KEY_LENGTH = 255
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9]{0,255}")
MATCH_ANY = "*"
DEFAULT_PAGE_KEYS = 1000
"""How many keys `Store.keys` returns when the caller names no limit."""
MAX_PAGE_KEYS = 10_000
"""The most keys a transport asks `Store.keys` for in one page."""


def system_clock_ms() -> int:
    """Wall-clock time in Unix epoch milliseconds."""
    return time.time_ns() // 1_000_000


class StoreError(Exception):
    """Base class of every error the store raises; the message is safe to show a client."""


class InvalidKey(StoreError):
    """The key is not 1-255 characters of [A-Za-z0-9]."""


class ValueTooLarge(StoreError):
    """The value is longer than the store's `max_value_bytes`."""


class KeyNotFound(StoreError):
    """The key has no current value."""

    @classmethod
    def of(cls, key: str) -> KeyNotFound:
        """The error for `key`, worded once for every backend and transport."""
        return cls(f"The key {key!r} has no value.")


class KeyExists(StoreError):
    """A create-only write found the key already holding a value."""

    @classmethod
    def of(cls, key: str) -> KeyExists:
        """The error for `key`, worded once for every backend and transport."""
        return cls(f"The key {key!r} already has a value.")


class PreconditionFailed(StoreError):
    """The caller's condition on the key's current version does not hold."""

    @classmethod
    def of(cls, key: str) -> PreconditionFailed:
        """The error for `key`, worded once for every backend and transport."""
        return cls(f"The precondition on {key!r} does not hold.")


class StoreFull(StoreError):
    """The write would take the store past its memory budget."""


class StoreUnavailable(StoreError):
    """The service the store keeps its data in could not be reached or did not answer in
    time. The message says whether the operation may have been applied; the caller may try
    again after `retry_after_s`."""

    retry_after_s = 1


class StoreMisconfigured(StoreError):
    """The service behind the store is set up so that it could lose acknowledged data (Redis
    that evicts keys): at start the process refuses to run, later requests are refused."""


@dataclass(frozen=True, slots=True)
class Value:
    """A stored value; `etag` changes on every write and never repeats across restarts."""

    data: bytes
    content_type: str | None
    etag: str
    expires_at_ms: int | None = None
    """When the key expires, in Unix epoch milliseconds; None: it does not. Reads at or after
    it find no value. Setting or removing it (`Store.expire`) keeps the ETag: the bytes did
    not change."""


@dataclass(frozen=True, slots=True, eq=False)
class HistoryEntry:
    """One write: the bytes written, or None for a delete or an expiry, and when it was
    applied (for an expiry: the deadline itself, whenever the store noticed it).

    A store may hand out a `Change` (which is a HistoryEntry that also knows its key,
    revision and ETag) as a history entry: the memory store keeps one object per write and
    a history read then copies nothing. Two entries are equal when what a history shows of
    them is: their data, timestamp and `expired`."""

    data: bytes | None
    timestamp_ms: int
    expired: bool = False
    """True for the entry that records the key expiring (`data` is then None)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HistoryEntry):
            return NotImplemented
        return (self.data, self.timestamp_ms, self.expired) == (
            other.data,
            other.timestamp_ms,
            other.expired,
        )

    def __hash__(self) -> int:
        return hash((self.data, self.timestamp_ms, self.expired))


class ResumeGone(StoreError):
    """A change feed's resume position can no longer be served: changes after it that the
    watcher asked for may have left the history window, or it is of another life of the
    store (a fresh in-memory store after a restart). The client starts again from now."""

    @classmethod
    def left_the_window(cls) -> ResumeGone:
        """Changes after the position have left the history window; worded once."""
        return cls(
            "Changes after this position have left the history window: start again from "
            "the current position."
        )

    @classmethod
    def of_another_life(cls) -> ResumeGone:
        """The position is of another life of the store; worded once."""
        return cls(
            "This position is from another life of the store (its data was lost, as an "
            "in-memory store's is at a restart): start again from the current position."
        )

    @classmethod
    def ahead(cls, revision: int, head: int) -> ResumeGone:
        """The position is past the feed's head; worded once."""
        return cls(
            f"This position (revision {revision}) is ahead of the store's newest change "
            f"({head}): start again from the current position."
        )


class InvalidPosition(StoreError):
    """A resume token that is not one the store hands out."""


class FeedUnsupported(StoreError):
    """The store cannot keep a change feed (a Redis Cluster: no one order of the writes of
    every node); transports answer 501 Not Implemented."""


FEED_PAGE_CHANGES = 1000
"""The most changes `Store.changes` returns in one page."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Change(HistoryEntry):
    """One write as the change feed carries it: a history entry (the bytes written or None
    for a delete or an expiry, when it was applied (an expiry: its deadline), whether it was
    an expiry) with its key, its revision (the feed position that only grows, store-wide),
    and the ETag and content type of the value written (None for a delete or an expiry).
    Made with keywords: a history entry's fields come first."""

    key: str
    revision: int
    etag: str | None = None
    content_type: str | None = None

    def __eq__(self, other: object) -> bool:
        """Another change equals it field for field; a plain HistoryEntry as history shows."""
        if isinstance(other, Change):
            return (
                self.key,
                self.revision,
                self.data,
                self.timestamp_ms,
                self.expired,
                self.etag,
                self.content_type,
            ) == (
                other.key,
                other.revision,
                other.data,
                other.timestamp_ms,
                other.expired,
                other.etag,
                other.content_type,
            )
        return HistoryEntry.__eq__(self, other)

    __hash__ = HistoryEntry.__hash__  # equal to a HistoryEntry: the same hash


@dataclass(frozen=True, slots=True)
class FeedSelector:
    """Which keys a watcher follows: `key` exactly, or (key None) every key that starts with
    `prefix` ("" for every key)."""

    key: str | None = None
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.key is not None and self.prefix:
            raise ValueError("a FeedSelector names a key or a prefix, not both")

    def matches(self, key: str) -> bool:
        """Whether a change to `key` is one the watcher follows."""
        return key == self.key if self.key is not None else key.startswith(self.prefix)


_TOKEN_SEPARATOR = "."


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """A position in the change feed: every change up to `revision` (inclusive) of the
    store's life `life` is before it. Its token (`token`, `parse`) is URL-safe and is what a
    client holds: an SSE event's id, the long-poll's `after=`."""

    life: str
    """Names this life of the store: URL-safe, without a ".". A store that keeps its data
    keeps its life (durable, Redis); a fresh in-memory store has a new one."""
    revision: int
    """The revision of the last change before this position (0: before the first)."""

    @property
    def token(self) -> str:
        return f"{self.life}{_TOKEN_SEPARATOR}{self.revision}"

    @classmethod
    def parse(cls, token: str) -> FeedPosition:
        """The position a token names; raises InvalidPosition for what no store hands out."""
        life, separator, revision = token.rpartition(_TOKEN_SEPARATOR)
        if (
            not separator
            or not _LIFE_PATTERN.fullmatch(life)
            or not revision.isascii()
            or not revision.isdigit()
            or len(revision) > 19
        ):
            raise InvalidPosition(
                f"{token[:80]!r} is not a resume token: use an event's id or a KV-Position."
            )
        return cls(life, int(revision))


_LIFE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ChangeListener(Protocol):
    """What a store tells of its changes as they happen (`Store.add_change_listener`): the
    watchers' hub, in `kvservice.feed`."""

    def changed(self, change: Change) -> None:
        """A change was applied. Called once per change, in revision order, from whichever
        thread applied it (or the store's own): must neither block nor call the store."""
        ...

    def interrupted(self) -> None:
        """Changes may have been applied without `changed` being called (a replica lost its
        subscription to the shared store for a while): whoever follows the feed must catch up
        with `Store.changes` from its own position. Called from any thread, like `changed`."""
        ...


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Changes after a position, oldest first, and where the next page starts."""

    changes: list[Change]
    position: FeedPosition
    """Resume from here: after the last change of the page, or, when `caught_up`, the feed's
    head as of the call (past changes other watchers follow: nothing the selector follows
    lies between)."""
    caught_up: bool
    """Whether the page holds every change the selector follows up to the head: False when
    `limit` cut it short (ask again from `position`)."""


@dataclass(frozen=True, slots=True)
class Expiry:
    """What a write (`Store.put`, `Store.create`) or `Store.expire` does to the key's deadline.

    At most one field is set. None of them (`NO_EXPIRY`) removes the deadline, as Redis's SET
    and PERSIST do; `at_ms` sets an absolute deadline; `after_ms` one that many milliseconds
    after the store's now (its clock, the one its history timestamps come from); `keep`
    (Redis's KEEPTTL; not for `expire`) leaves the deadline the key has. A deadline not after
    the store's now deletes the key at once, recorded as an expiry.
    """

    at_ms: int | None = None
    after_ms: int | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if (self.at_ms is not None) + (self.after_ms is not None) + self.keep > 1:
            raise ValueError("an Expiry sets at most one of at_ms, after_ms and keep")

    def deadline_ms(self, now_ms: int, current_ms: int | None) -> int | None:
        """The deadline this gives a key whose deadline is `current_ms` (None: none), now."""
        if self.keep:
            return current_ms
        if self.after_ms is not None:
            return now_ms + self.after_ms
        return self.at_ms


NO_EXPIRY = Expiry()
"""Remove the deadline (what a plain write does)."""
KEEP_EXPIRY = Expiry(keep=True)
"""Keep the key's deadline (Redis's KEEPTTL)."""


class ExpireIf(Enum):
    """When `Store.expire` applies its change, given the key's current deadline (Redis's
    EXPIRE options NX, XX, GT and LT; no deadline counts as an infinite one)."""

    ALWAYS = "always"
    NO_DEADLINE = "nx"
    """Only if the key has no deadline (NX)."""
    HAS_DEADLINE = "xx"
    """Only if the key has one (XX)."""
    LATER = "gt"
    """Only if the new deadline is later than the current one (GT); never for a key without."""
    EARLIER = "lt"
    """Only if the new deadline is earlier than the current one (LT); always for one without."""
    EARLIER_THAN_ITS_OWN = "xxlt"
    """Only if the key has a deadline and the new one is earlier (XX and LT together)."""

    def allows(self, current_ms: int | None, new_ms: int | None) -> bool:
        """Whether the change from `current_ms` to `new_ms` (None: no deadline) applies."""
        infinite = float("inf")
        current = infinite if current_ms is None else current_ms
        new = infinite if new_ms is None else new_ms
        return {
            ExpireIf.ALWAYS: True,
            ExpireIf.NO_DEADLINE: current_ms is None,
            ExpireIf.HAS_DEADLINE: current_ms is not None,
            ExpireIf.LATER: current_ms is not None and new > current,
            ExpireIf.EARLIER: new < current,
            ExpireIf.EARLIER_THAN_ITS_OWN: current_ms is not None and new < current,
        }[self]


@dataclass(frozen=True, slots=True)
class ExpiryChange:
    """What `Store.expire` did: whether the change applied, and the key's value after it (None
    when the new deadline had passed and the key was deleted)."""

    applied: bool
    value: Value | None


@dataclass(frozen=True, slots=True)
class KeyPage:
    """Keys holding a value, in lexicographic order, and where the next page starts.

    `next_after` is the `after` that asks for the following page, or None on the last page.
    """

    keys: list[str]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class Persistence:
    """How a store that keeps its data on disk is doing (None in `StoreStats` for one that
    keeps nothing): what `INFO persistence` and /_metrics report."""

    fsync: str
    """When a commit is synced: always, everysec or off (--fsync)."""
    pending_writes: int
    """Writes applied in memory and waiting for their commit."""
    commits: int
    """Transactions committed since start (group commit: each holds every write queued)."""
    committed_writes: int
    """Writes those transactions held; divided by `commits`, the mean batch size."""
    sync_seconds_total: float
    """Time spent committing with a sync (--fsync always) or in the periodic sync (everysec)."""
    syncs: int
    """Commits or periodic checkpoints that synced."""
    last_commit_ok: bool
    """Whether the last commit succeeded; False while the disk refuses writes."""
    last_commit_time_s: int
    """Unix time of the last successful commit (or of the start)."""
    failed_commits: int
    """Commits that failed (disk full, I/O error) since start; their writes were refused
    (but for expiries alone, which a durable store keeps for its next commit)."""
    file_bytes: dict[str, int]
    """The size of each file of the data directory, by kind (data, wal)."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Figures for health checks and metrics."""

    keys: int
    """Keys holding a value (not those with only history left)."""
    used_bytes: int
    """Bytes the store holds, as its budget counts them."""
    max_bytes: int
    """The budget: writes that would take `used_bytes` past it are refused with StoreFull."""
    history_entries: int | None = None
    """History entries held, every key's together: those inside the window, and those past it
    still waiting to be pruned and charged until they are (the memory store prunes a bounded
    batch per call); None where counting them would mean reading every key (Redis)."""
    full_refusals: int = 0
    """Writes this process's store refused with StoreFull since it started."""
    persistence: Persistence | None = None
    """What a store that keeps its data on disk reports of it; None for one that keeps none."""


@dataclass(frozen=True)
class Precondition:
    """Conditions on a key's current ETag, in the sense of RFC 9110's If-Match/If-None-Match.

    Each field is None (no condition) or a set of ETags, where MATCH_ANY stands for any
    current value.
    """

    if_match: frozenset[str] | None = None
    if_none_match: frozenset[str] | None = None

    def holds_for(self, current_etag: str | None) -> bool:
        """Whether the conditions hold when the key's current ETag is `current_etag`."""
        if self.if_match is not None and not _matches(self.if_match, current_etag):
            return False
        return self.if_none_match is None or not _matches(self.if_none_match, current_etag)


NO_CONDITION = Precondition()


def _matches(etags: frozenset[str], current_etag: str | None) -> bool:
    return current_etag is not None and (MATCH_ANY in etags or current_etag in etags)


def validate_key(key: str) -> None:
    """Raise InvalidKey, saying why, unless `key` is 1-255 characters of [A-Za-z0-9]."""
    if KEY_PATTERN.fullmatch(key):
        return
    if not key:
        raise InvalidKey("The key is empty; keys are 1-255 characters of [A-Za-z0-9].")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"The key is {len(key)} characters long; keys are at most {MAX_KEY_LENGTH}."
        )
    position, char = next((i, c) for i, c in enumerate(key) if not KEY_PATTERN.fullmatch(c))
    raise InvalidKey(
        f"The key has the character {char!a} at position {position}; "
        "keys are 1-255 characters of [A-Za-z0-9]."
    )


def validate_prefix(prefix: str) -> None:
    """Raise InvalidKey, saying why, unless `prefix` could begin a key: 0-255 of [A-Za-z0-9]."""
    if PREFIX_PATTERN.fullmatch(prefix):
        return
    if len(prefix) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"The prefix is {len(prefix)} characters long; keys are at most {MAX_KEY_LENGTH}."
        )
    position, char = next((i, c) for i, c in enumerate(prefix) if not KEY_PATTERN.fullmatch(c))
    raise InvalidKey(
        f"The prefix has the character {char!a} at position {position}; "
        "keys are 1-255 characters of [A-Za-z0-9]."
    )


def too_large(size: int, max_value_bytes: int) -> ValueTooLarge:
    """The error for a value of `size` bytes over the limit; every backend words it alike."""
    return ValueTooLarge(f"The value is {size} bytes; the limit is {max_value_bytes} bytes.")
