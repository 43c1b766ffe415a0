"""The in-memory backend, the default: values, per-key write history, the history window and
a memory budget, all in this process.

Every public method takes one lock, so the store is safe under a server's thread pool: writes
are applied in one total order, history records them in that order, and a read never sees a
value that its key's newest history entry disagrees with.

Expiry is exact and cheap: all writes get non-decreasing timestamps from one clock, so a
single store-wide queue of records, in write order, tells which key holds the oldest entry.
Pruning pops from its front until the oldest entry is inside the window. A key's history is
a list whose pruned front is skipped by an index and cut off only once it is half the list,
so pruning costs O(1) per entry, amortised, however long the key's history (a deque would
too, but an empty one costs 624 bytes against a list's 56, on every key).
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import deque

from kvservice.store.model import (
    DEFAULT_PAGE_KEYS,
    NO_CONDITION,
    Clock,
    HistoryEntry,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Precondition,
    PreconditionFailed,
    StoreFull,
    StoreStats,
    Value,
    system_clock_ms,
)
from kvservice.store.sorted_keys import SortedKeys

# CPython's cost of the structures behind a key (dict slot, record, Value, ETag, key header,
# its slot in the sorted key list) and behind a history entry (entry object, timestamp, list
# and queue slots), measured with tracemalloc on CPython 3.11. Charging them keeps the budget
# close to real memory even when values are tiny.
KEY_OVERHEAD_BYTES = 250
ENTRY_OVERHEAD_BYTES = 100


class _Record:
    """Everything the store holds for one key: its value, and its history oldest first in
    `history[first:]` (the entries before `first` have been pruned)."""

    __slots__ = ("first", "history", "key", "value")

    def __init__(self, key: str) -> None:
        self.key = key
        self.value: Value | None = None
        self.history: list[HistoryEntry] = []
        self.first = 0

    def entries(self) -> list[HistoryEntry]:
        """The history inside the window, newest first."""
        return self.history[: self.first - 1 if self.first else None : -1]

    def drop_oldest(self) -> HistoryEntry:
        """Prune the oldest entry; amortised O(1): the front is cut once it is half the list."""
        oldest = self.history[self.first]
        self.first += 1
        if 2 * self.first >= len(self.history):
            del self.history[: self.first]
            self.first = 0
        return oldest


class MemoryStore:
    """An in-memory key-value store with a write history per key and a memory budget."""

    def __init__(
        self,
        *,
        history_window_ms: int = 120_000,
        max_bytes: int = 256 * 1024 * 1024,
        max_value_bytes: int = 1024,
        clock: Clock = system_clock_ms,
    ) -> None:
        if history_window_ms <= 0 or max_bytes <= 0 or max_value_bytes < 0:
            raise ValueError("history_window_ms and max_bytes must be positive")
        self.history_window_ms = history_window_ms
        self.max_bytes = max_bytes
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._keys_with_values = SortedKeys()
        # The record of each history entry, in write order. Records, not keys: a request's
        # key is a new string each time, and the queue would keep one alive per entry.
        self._expiry_queue: deque[_Record] = deque()
        self._used_bytes = 0
        self._last_timestamp_ms = 0
        self._etag_prefix = secrets.token_hex(4)
        self._writes = 0
        self._full_refusals = 0

    may_block = False
    """Everything is in this process: no call waits on a network or a disk."""
    may_be_unavailable = False
    """There is nothing to reach."""
    copies_on_read = False
    """Reads return the store's own values and entries."""

    def check_ready(self) -> None:
        """Always ready: there is nothing to reach."""

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        """The key's current value; raises KeyNotFound."""
        with self._lock:
            record = self._records.get(key)
            if record is None or record.value is None:
                raise KeyNotFound.of(key)
            return record.value

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; [] if none."""
        with self._lock:
            self._prune(self._now_ms())
            record = self._records.get(key)
            return record.entries() if record else []

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """Up to `limit` keys holding a value that start with `prefix`, in lexicographic
        order, strictly after `after`."""
        with self._lock:
            # One more than asked for tells whether another page follows.
            found = list(
                itertools.islice(self._keys_with_values.starting(prefix, after), limit + 1)
            )
        if len(found) > limit:
            return KeyPage(found[:limit], found[limit - 1])
        return KeyPage(found, None)

    def stats(self) -> StoreStats:
        """Keys holding a value, bytes charged against the budget, the budget, history entries
        in the window and writes refused for the budget."""
        with self._lock:
            self._prune(self._now_ms())
            return StoreStats(
                len(self._keys_with_values),
                self._used_bytes,
                self.max_bytes,
                history_entries=len(self._expiry_queue),
                full_refusals=self._full_refusals,
            )

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
    ) -> Value:
        """Set the key's value; raises PreconditionFailed, StoreFull."""
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

        Deletes are never refused for lack of memory: they are how a full store gets room back.
        """
        with self._lock:
            now_ms = self._now_ms()
            self._prune(now_ms)
            record = self._records.get(key)
            if record is None or record.value is None:
                raise KeyNotFound.of(key)
            if not precondition.holds_for(record.value.etag):
                raise PreconditionFailed.of(key)
            self._used_bytes -= _value_cost(record.value)
            record.value = None
            self._keys_with_values.discard(key)
            self._append_history(record, HistoryEntry(None, now_ms))

    def _write(
        self,
        key: str,
        data: bytes,
        content_type: str | None,
        precondition: Precondition,
        *,
        create_only: bool,
    ) -> Value:
        with self._lock:
            now_ms = self._now_ms()
            self._prune(now_ms)
            record = self._records.get(key)
            current = record.value if record else None
            if create_only and current is not None:
                raise KeyExists.of(key)
            if not precondition.holds_for(current.etag if current else None):
                raise PreconditionFailed.of(key)

            self._writes += 1
            value = Value(data, content_type, f"{self._etag_prefix}-{self._writes:x}")
            added = _value_cost(value) + ENTRY_OVERHEAD_BYTES + len(data)
            freed = _value_cost(current) if current else 0
            if record is None:
                added += KEY_OVERHEAD_BYTES + len(key)
            if self._used_bytes + added - freed > self.max_bytes:
                self._full_refusals += 1
                raise StoreFull(
                    f"Storing {len(data)} more bytes would exceed the memory budget of "
                    f"{self.max_bytes} bytes; delete keys or wait for history to expire."
                )
            if record is None:
                record = self._records[key] = _Record(key)
                self._used_bytes += KEY_OVERHEAD_BYTES + len(key)
            self._used_bytes += _value_cost(value) - freed
            record.value = value
            if current is None:
                self._keys_with_values.add(record.key)
            self._append_history(record, HistoryEntry(data, now_ms))
            return value

    # -- for a backend that keeps this store's state elsewhere (kvservice.store.durable) -----

    def newest_entry(self, key: str) -> HistoryEntry | None:
        """The key's newest history entry (its last write and the timestamp it got), or None;
        O(1), unlike `history`, and without pruning."""
        with self._lock:
            record = self._records.get(key)
            return record.history[-1] if record and len(record.history) > record.first else None

    def restore_value(self, key: str, value: Value) -> None:
        """Set the key's value as it was recorded (its ETag included), with no history entry
        and no budget check: rebuilding the state a store had, not a client's write."""
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = _Record(key)
                self._used_bytes += KEY_OVERHEAD_BYTES + len(key)
            if record.value is not None:
                self._used_bytes -= _value_cost(record.value)
            else:
                self._keys_with_values.add(key)
            record.value = value
            self._used_bytes += _value_cost(value)

    def restore_history(self, key: str, entry: HistoryEntry) -> None:
        """Append a recorded history entry to the key, charging it as a write would. Entries
        must come in write order, every key's together; later writes never get an earlier
        timestamp."""
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = _Record(key)
                self._used_bytes += KEY_OVERHEAD_BYTES + len(key)
            self._append_history(record, entry)
            self._last_timestamp_ms = max(self._last_timestamp_ms, entry.timestamp_ms)

    # -- internals (lock held) --------------------------------------------------------------

    def _now_ms(self) -> int:
        # Timestamps never decrease, even if the wall clock steps back.
        self._last_timestamp_ms = max(self._clock(), self._last_timestamp_ms)
        return self._last_timestamp_ms

    def _append_history(self, record: _Record, entry: HistoryEntry) -> None:
        record.history.append(entry)
        self._expiry_queue.append(record)
        self._used_bytes += _entry_cost(entry)

    def _prune(self, now_ms: int) -> None:
        """Drop history entries outside the window and forget keys left with nothing."""
        cutoff_ms = now_ms - self.history_window_ms
        queue = self._expiry_queue
        while queue:
            record = queue[0]
            if record.history[record.first].timestamp_ms > cutoff_ms:
                return
            queue.popleft()
            self._used_bytes -= _entry_cost(record.drop_oldest())
            if record.value is None and not record.history:
                del self._records[record.key]
                self._used_bytes -= KEY_OVERHEAD_BYTES + len(record.key)


def _value_cost(value: Value) -> int:
    return len(value.data) + len(value.content_type or "")


def _entry_cost(entry: HistoryEntry) -> int:
    return ENTRY_OVERHEAD_BYTES + len(entry.data or b"")
