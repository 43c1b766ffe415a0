"""The service layer: what a client may ask of the store, judged once, in front of every backend.

`StoreService` is the `Store` every transport is given (`kvservice.__main__.build_store` wraps
the backend --store names). Each method checks its arguments (the key, a prefix and `after`,
the value's size against the backend's `max_value_bytes`, a page's `limit`) and raises the
StoreError whose message a client reads, worded in `model.py`; then it makes one call to the
backend. A backend implements primitives and may assume valid input, as cosmicpython's
`service_layer/handlers.py` validates before its repositories (`adapters/repository.py`) are
asked anything.

What the backend says of itself (`max_value_bytes`, `may_block`, `reads_may_block`,
`may_be_unavailable`, `copies_on_read`), `check_ready`, `stats` and `close` pass through
unchanged: the execution policy, the readiness probe and the metrics read them from the
service as from the backend.

A new capability is one method here: validate what the client chose, then delegate.
"""

from __future__ import annotations

from kvservice.store import Closable, Store
from kvservice.store.model import (
    DEFAULT_PAGE_KEYS,
    FEED_PAGE_CHANGES,
    MAX_PAGE_KEYS,
    NO_CONDITION,
    NO_EXPIRY,
    ChangeListener,
    ChangePage,
    ExpireIf,
    Expiry,
    ExpiryChange,
    FeedPosition,
    FeedSelector,
    HistoryEntry,
    KeyPage,
    Precondition,
    StoreStats,
    Value,
    too_large,
    validate_key,
    validate_prefix,
)


class StoreService:
    """The Store port over `backend`: arguments validated here, everything else the backend's."""

    def __init__(self, backend: Store) -> None:
        self.backend = backend

    # -- what the backend says of itself, unchanged ------------------------------------------

    @property
    def max_value_bytes(self) -> int:
        """The backend's: the largest value `put` and `create` accept."""
        return self.backend.max_value_bytes

    @property
    def may_block(self) -> bool:
        """The backend's: the execution policy reads it here."""
        return self.backend.may_block

    @property
    def reads_may_block(self) -> bool:
        """The backend's: the execution policy reads it here."""
        return self.backend.reads_may_block

    @property
    def copies_on_read(self) -> bool:
        """The backend's: the reply budget reads it here."""
        return self.backend.copies_on_read

    @property
    def may_be_unavailable(self) -> bool:
        """The backend's: the liveness check reads it here."""
        return self.backend.may_be_unavailable

    def check_ready(self) -> None:
        """The backend's readiness."""
        self.backend.check_ready()

    def stats(self) -> StoreStats:
        """The backend's figures (a durable backend's `persistence` among them)."""
        return self.backend.stats()

    def close(self) -> None:
        """Close the backend if it has something to finish (a journal, connections)."""
        if isinstance(self.backend, Closable):
            self.backend.close()

    # -- reads --------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        """The key's current value; raises InvalidKey, KeyNotFound."""
        validate_key(key)
        return self.backend.get(key)

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; raises InvalidKey."""
        validate_key(key)
        return self.backend.history(key)

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """A page of keys, as `Store.keys`; raises InvalidKey for a prefix no key can start
        with or an `after` that is no key. A `limit` outside 1..MAX_PAGE_KEYS is the caller's
        bug (ValueError): each transport words its own page limits, in its own syntax."""
        validate_prefix(prefix)
        if after is not None:
            validate_key(after)
        if not 1 <= limit <= MAX_PAGE_KEYS:
            raise ValueError(f"limit must be from 1 to {MAX_PAGE_KEYS}, not {limit}")
        return self.backend.keys(prefix, after, limit)

    # -- the change feed ----------------------------------------------------------------------

    def feed_head(self) -> FeedPosition:
        """The backend's head: where a watcher without a token starts."""
        return self.backend.feed_head()

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        """A page of changes, as `Store.changes`; raises InvalidKey for a key or prefix no key
        can be, ResumeGone. A `limit` outside 1..FEED_PAGE_CHANGES is the caller's bug
        (ValueError), as for `keys`."""
        if selector.key is not None:
            validate_key(selector.key)
        else:
            validate_prefix(selector.prefix)
        if not 1 <= limit <= FEED_PAGE_CHANGES:
            raise ValueError(f"limit must be from 1 to {FEED_PAGE_CHANGES}, not {limit}")
        return self.backend.changes(selector, after, limit)

    def add_change_listener(self, listener: ChangeListener) -> None:
        """The backend tells `listener` of its changes."""
        self.backend.add_change_listener(listener)

    # -- writes -------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value; raises InvalidKey, ValueTooLarge, and what the backend raises."""
        self._check_write(key, data)
        return self.backend.put(key, data, content_type, precondition, expiry)

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value only if it has none; raises as `put` does, and KeyExists."""
        self._check_write(key, data)
        return self.backend.create(key, data, content_type, precondition, expiry)

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        """Remove the key's value; raises InvalidKey, and what the backend raises."""
        validate_key(key)
        self.backend.delete(key, precondition)

    def expire(
        self,
        key: str,
        expiry: Expiry,
        when: ExpireIf = ExpireIf.ALWAYS,
        precondition: Precondition = NO_CONDITION,
    ) -> ExpiryChange:
        """Set or remove the key's deadline, as `Store.expire`; raises InvalidKey, and what the
        backend raises. KEEP_EXPIRY is the caller's bug (ValueError): it is for writes."""
        validate_key(key)
        if expiry.keep:
            raise ValueError("expire() sets or removes a deadline; KEEP_EXPIRY is for writes")
        return self.backend.expire(key, expiry, when, precondition)

    def sweep_expired(self, limit: int) -> int:
        """Remove up to `limit` (>= 1, else ValueError) keys whose deadline has passed."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return self.backend.sweep_expired(limit)

    def _check_write(self, key: str, data: bytes) -> None:
        validate_key(key)
        max_value_bytes = self.backend.max_value_bytes
        if len(data) > max_value_bytes:
            raise too_large(len(data), max_value_bytes)
