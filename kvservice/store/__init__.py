"""The store port: the `Store` Protocol every backend satisfies, and the names its users need.

Transports depend on this module alone, never on a backend's class: a backend is any object
with these methods and attributes (`mypy --strict` checks the adapters against the Protocol,
and a test passes them a backend that inherits from nothing). Transports are given the
service (`service.py`: `StoreService`, the Store that validates every argument and words the
client's errors once) wrapped around one backend. The backends live beside it: `memory.py`
(the default), `durable/` (the memory store kept on local disk: its journal and file layer)
and `redis/` (Redis or Redis Cluster: scripts, connections, the store).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kvservice.store.model import (
    DEFAULT_PAGE_KEYS,
    FEED_PAGE_CHANGES,
    KEEP_EXPIRY,
    MATCH_ANY,
    MAX_KEY_LENGTH,
    MAX_PAGE_KEYS,
    NO_CONDITION,
    NO_EXPIRY,
    Change,
    ChangeListener,
    ChangePage,
    Clock,
    ExpireIf,
    Expiry,
    ExpiryChange,
    FeedPosition,
    FeedSelector,
    FeedUnsupported,
    HistoryEntry,
    InvalidKey,
    InvalidPosition,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Persistence,
    Precondition,
    PreconditionFailed,
    ResumeGone,
    StoreError,
    StoreFull,
    StoreMisconfigured,
    StoreStats,
    StoreUnavailable,
    Value,
    ValueTooLarge,
    system_clock_ms,
    too_large,
    validate_key,
    validate_prefix,
)

__all__ = [
    "DEFAULT_PAGE_KEYS",
    "FEED_PAGE_CHANGES",
    "KEEP_EXPIRY",
    "MATCH_ANY",
    "MAX_KEY_LENGTH",
    "MAX_PAGE_KEYS",
    "NO_CONDITION",
    "NO_EXPIRY",
    "Change",
    "ChangeListener",
    "ChangePage",
    "Clock",
    "Closable",
    "ExpireIf",
    "Expiry",
    "ExpiryChange",
    "FeedPosition",
    "FeedSelector",
    "FeedUnsupported",
    "HistoryEntry",
    "InvalidKey",
    "InvalidPosition",
    "KeyExists",
    "KeyNotFound",
    "KeyPage",
    "Persistence",
    "Precondition",
    "PreconditionFailed",
    "ResumeGone",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreMisconfigured",
    "StoreStats",
    "StoreUnavailable",
    "Value",
    "ValueTooLarge",
    "system_clock_ms",
    "too_large",
    "validate_key",
    "validate_prefix",
]


class Store(Protocol):
    """A key-value store with a write history per key; every method is atomic.

    A key may carry a deadline (`Value.expires_at_ms`): from it on, every read finds no value,
    and the key's history holds an expiry entry stamped with the deadline itself, whether or
    not anyone read the key; the store removes expired keys without scanning those that
    have no deadline, and returns their memory.

    What a client chose is validated once, by `StoreService` (`service.py`), which is what
    transports are given: it raises InvalidKey for a key, prefix or `after` no key can be and
    ValueTooLarge for a value over `max_value_bytes`, before the backend is called. A backend
    may assume valid input: keys of 1-255 [A-Za-z0-9], prefixes that could begin one, values
    within its `max_value_bytes`, 1 <= `limit` <= MAX_PAGE_KEYS. Errors are StoreError
    subclasses whose message is safe to show a client; anything else is a bug. A store that
    `may_be_unavailable` raises StoreUnavailable from any method when its service cannot be
    reached.
    """

    @property
    def max_value_bytes(self) -> int:
        """The largest value accepted; a transport may refuse larger bodies before reading."""
        ...

    @property
    def may_block(self) -> bool:
        """Whether a call can wait on I/O (a network round trip, a disk sync). The execution
        policy (`kvservice.execution`) then runs calls where no other client waits on them."""
        ...

    @property
    def reads_may_block(self) -> bool:
        """Whether a read (get, history, keys, stats) can wait on I/O; False lets the execution
        policy run reads inline even where writes go to workers (`may_block`)."""
        ...

    @property
    def copies_on_read(self) -> bool:
        """Whether what a read returns is a copy made for the caller (a reply from another
        service) rather than the store's own objects: a reply streamed from a copy holds its
        bytes until it is sent, so the reply budget charges them."""
        ...

    @property
    def may_be_unavailable(self) -> bool:
        """Whether a call can raise StoreUnavailable because a service the data lives in is
        away (taking up to its timeout); a liveness check must then not call the store."""
        ...

    def check_ready(self) -> None:
        """Raise StoreUnavailable unless the store can serve requests now, StoreMisconfigured
        if its service could lose acknowledged data (a readiness probe; also run at start)."""
        ...

    def get(self, key: str) -> Value:
        """The key's current value; raises KeyNotFound."""
        ...

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; [] if none."""
        ...

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """Up to `limit` (>= 1) keys holding a value that start with `prefix`, in lexicographic
        order, strictly after `after`, and the `after` of the next page (None on the last).

        Raises InvalidKey for a prefix no key can start with, or an `after` that is no key.
        """
        ...

    def stats(self) -> StoreStats:
        """Keys holding a value, bytes charged against the budget, and the budget."""
        ...

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value, and its deadline as `expiry` says (by default: none); raises
        PreconditionFailed, ValueTooLarge, StoreFull."""
        ...

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value only if it has none; raises KeyExists, and as `put` does."""
        ...

    def expire(
        self,
        key: str,
        expiry: Expiry,
        when: ExpireIf = ExpireIf.ALWAYS,
        precondition: Precondition = NO_CONDITION,
    ) -> ExpiryChange:
        """Set the deadline of the key's value (`NO_EXPIRY`: remove it) if `when` allows, keeping
        the value and its ETag and recording no history entry; a deadline not after now deletes
        the key at once, recorded as an expiry. Raises KeyNotFound, PreconditionFailed."""
        ...

    def sweep_expired(self, limit: int) -> int:
        """Remove up to `limit` keys whose deadline has passed, recording each expiry at its
        deadline, and return how many it removed; touches no key without a deadline. Run
        periodically (`kvservice.store.sweeper`) so that memory comes back unread."""
        ...

    def feed_head(self) -> FeedPosition:
        """The position after the newest change: where a watcher without a token starts (it
        replays nothing)."""
        ...

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        """The changes `selector` follows whose revision is after `after`'s, oldest first, at
        most `limit` (1 <= limit <= FEED_PAGE_CHANGES). The feed reaches back as far as the
        history window.

        Raises ResumeGone when `after` is of another life of the store, ahead of its head,
        or when changes the selector follows after it may have left the window: exactly for
        a key (a key with no writes since `after` is never gone, however old `after` is),
        conservatively for a prefix (some change after `after` left the window).
        """
        ...

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Tell `listener` of every change from now on, in revision order (`ChangeListener`),
        and when its notifications may have missed some."""
        ...

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        """Remove the key's value and record the delete; raises KeyNotFound, PreconditionFailed.

        Deletes are never refused for lack of memory: they are how a full store gets room back.
        """
        ...


@runtime_checkable
class Closable(Protocol):
    """A store with something to finish before the process exits (a journal, connections)."""

    def close(self) -> None: ...
