"""The in-memory backend, the default: values, per-key write history, the history window and
a memory budget, all in this process.

Every public method takes one lock, so the store is safe under a server's thread pool: writes
are applied in one total order, history records them in that order, and a read never sees a
value that its key's newest history entry disagrees with.

The history window is exact and cheap: writes get non-decreasing timestamps from one clock,
so a store-wide queue of records, in write order, tells which key holds the oldest entry.
Pruning pops from its front until the oldest entry is inside the window, at most PRUNE_BATCH
entries per call: every write, delete and `expire`, `history`, `stats` and `sweep_expired`
prune, and a wave of entries leaving the window together (a burst of writes, or the expiries
of keys that shared a deadline, all stamped with it) leaves a batch per call, the sweeper
draining it while no request comes, rather than in one call that holds the store for every
entry. Until pruned, an entry is still charged to the budget and counted by `stats`;
`history` leaves out a key's entries outside the window itself, so it stays exact. A key's
history is a list whose pruned front is skipped by an index and cut off only once it is half
the list, so pruning costs O(1) per entry, amortised, however long the key's history (a
deque would too, but an empty one costs 624 bytes against a list's 56, on every key).

Keys that expire: a key's deadline is its value's `expires_at_ms`, and the keys that have one
are also in `_deadlines`, sorted by (deadline, key), so the keys due are found at its front
without looking at a key that has none. Every access checks the key it touches first (a read
at or after the deadline finds nothing and records the expiry), listings skip due keys
(examining at most max(limit + 1, MIN_KEYS_EXAMINED) keys: a page over many due keys not
yet swept comes back short, with the cursor to go on from), and `sweep_expired` takes them
from the front of `_deadlines` a bounded batch at a time.
An expiry is stamped with the deadline itself, which may be earlier than entries already in
the queue: such a late entry goes to a heap of its own (`_late_entries`, charged for its
slot), and pruning drains both in timestamp order. Each slot of either structure stands for
one entry of its record, and within one key entries stay in timestamp order (the key is
checked before any write to it): dropping the record's oldest entry for each slot at or
before the cutoff therefore drops exactly the entries outside the window, however late an
expiry was noticed.

The change feed: every change (a write, a delete, an expiry, whoever noticed it) gets the
next revision, store-wide, under the lock, and a key's history holds its changes themselves
(`Change`, which `history` shows as HistoryEntry), so a key's history is also its feed. The
store-wide feed (`_feed`) is the same objects in revision order; its front is dropped once
the key's history has dropped it, so it reaches back as far as the window (an expiry noticed
late, pruned from its key before the feed's front passes it, waits there and is never
served: a change outside the window is not in the feed). `changes` answers ResumeGone
exactly for a key (`_Record.pruned_revision`: the newest revision pruned from its history)
and conservatively for a prefix (`_pruned_revision`: the newest pruned from any); a key the
store has forgotten (no value, no history left) leaves a tombstone with its newest pruned
revision, charged to the budget, the oldest of them let go past MAX_TOMBSTONES (a key with
none is judged by the newest let go: conservative for positions older than that). Listeners
are told of each change inside the lock, right after it is applied, from the thread that
applied it.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import secrets
import threading
from collections import deque
from collections.abc import Callable

from kvservice.store.model import (
    DEFAULT_PAGE_KEYS,
    FEED_PAGE_CHANGES,
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
    HistoryEntry,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Precondition,
    PreconditionFailed,
    ResumeGone,
    StoreFull,
    StoreStats,
    Value,
    system_clock_ms,
)
from kvservice.store.sorted_keys import SortedItems, SortedKeys

# CPython's cost of the structures behind a key (dict slot, record, Value, ETag, key header,
# its slot in the sorted key list) and behind a history entry (entry object, timestamp, list
# and queue slots), measured with tracemalloc on CPython 3.11. Charging them keeps the budget
# close to real memory even when values are tiny.
KEY_OVERHEAD_BYTES = 250
ENTRY_OVERHEAD_BYTES = 175
"""An entry is its change: 146 bytes measured over 50,000 writes to one key (144 a delete),
twice the 73 a HistoryEntry cost before the feed (then charged 100): the Change object's
four more slots (32), its revision (32) and its slot in the store-wide feed (9). The ETag is
not kept per entry: it is made from the revision when the feed shows the change."""
LATE_ENTRY_EXTRA_BYTES = 60
"""What an entry recorded late is charged beyond ENTRY_OVERHEAD_BYTES, for its heap slot: a
(timestamp, arrival, record) tuple and the arrival number instead of a queue slot. Measured
as above: 157 bytes an entry over 50,000 expiries recorded late (a delete's entry: 64)."""

PRUNE_BATCH = 1_000
"""The most history entries one call prunes (about a millisecond under the lock): a wave of
entries leaving the window together (every expiry of keys that shared a deadline, or a burst
of writes) goes a batch per call, not in one call that holds every other client."""
MIN_KEYS_EXAMINED = 1_000
"""A listing examines at most max(limit + 1, this) keys: due keys it skips count, so a page
over many keys past their deadline (not yet swept) comes back short rather than walking them."""
MIN_CHANGES_EXAMINED = 10_000
"""A page of a prefix's changes examines at most max(limit + 1, this) changes of the feed:
one over a prefix that few of them match comes back short (not caught up), its position the
last change examined, rather than walking the whole window under the lock."""

UNKNOWN_ETAG = ""
"""What a write's history entry holds for an ETag the durable file did not keep (format 2)."""

MAX_TOMBSTONES = 100_000
"""Forgotten keys whose newest pruned revision the store remembers, so that `changes` of such
a key stays exact (a key with no writes since a position is never gone); past it the oldest
goes, and a resume from before its revision is judged conservatively for keys not held."""
TOMBSTONE_BYTES = 120
"""What a tombstone is charged besides its key's characters: the key's string, kept alive,
its dict slot and its revision's int, 119 bytes measured as above over 100,000 keys."""

StateListener = Callable[[str, Change | None, Value | None], None]
"""Told of each change to a key, under the store's lock and in the order they happen: the
change it recorded (None for a new deadline, which records none) and the key's value after
it (None: it has none). A client's writes, deletes and deadlines, and every expiry, whoever
noticed it; never what the `restore_` methods rebuild. (The durable store journals what it
is told; watchers are `ChangeListener`s, told of recorded changes only.)"""


class _Record:
    """Everything the store holds for one key: its value, and its history (its changes)
    oldest first in `history[first:]` (the entries before `first` have been pruned), and
    the revision of the newest change pruned (0: none)."""

    __slots__ = ("first", "history", "key", "pruned_revision", "value")

    def __init__(self, key: str, pruned_revision: int = 0) -> None:
        self.key = key
        self.value: Value | None = None
        self.history: list[Change] = []
        self.first = 0
        self.pruned_revision = pruned_revision

    def entries_after(self, cutoff_ms: int) -> list[HistoryEntry]:
        """The history stamped after `cutoff_ms` (the window), newest first: entries outside
        the window may still wait to be pruned, and are left out here."""
        entries: list[HistoryEntry] = []
        for change in reversed(self.history[self.first :]):
            if change.timestamp_ms <= cutoff_ms:
                break
            entries.append(change)  # the store's own: a history read copies no entry
        return entries

    def changes_after(self, revision: int) -> list[Change]:
        """The changes held with a revision after `revision`, oldest first."""
        start = bisect.bisect_right(
            self.history, revision, lo=self.first, key=lambda change: change.revision
        )
        return self.history[start:]

    def drop_oldest(self) -> Change:
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
        on_change: StateListener | None = None,
        life: str | None = None,
    ) -> None:
        if history_window_ms <= 0 or max_bytes <= 0 or max_value_bytes < 0:
            raise ValueError("history_window_ms and max_bytes must be positive")
        self.history_window_ms = history_window_ms
        self.max_bytes = max_bytes
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._keys_with_values = SortedKeys()
        # The record of each history entry, in write order. Records, not keys: a request's
        # key is a new string each time, and the queue would keep one alive per entry.
        self._window_queue: deque[_Record] = deque()
        self._window_queue_newest_ms = 0
        # History entries stamped before the newest in the window queue (expiries noticed
        # after their deadline), as (timestamp, arrival, record): a heap pruned with it.
        self._late_entries: list[tuple[int, int, _Record]] = []
        self._late_arrivals = itertools.count()
        # (deadline, key) of every key whose value has a deadline; the key is the record's own
        # string, for the same reason as above.
        self._deadlines: SortedItems[tuple[int, str]] = SortedItems()
        self._used_bytes = 0
        self._last_timestamp_ms = 0
        self._full_refusals = 0
        # The change feed: `life` names this store's life (a fresh one for a fresh store),
        # `_revision` is the newest change's, `_feed[_feed_first:]` the changes held in
        # revision order (the same objects as the keys' histories).
        self.life = secrets.token_urlsafe(9) if life is None else life
        # A value's ETag is its write's revision after a prefix of this process's own: it
        # never repeats (a store's revisions do not, and a restarted one has a new prefix), and
        # history need not keep one string per entry, but for entries restored from a file.
        self._etag_prefix = secrets.token_hex(4)
        self._revision = 0
        self._feed: list[Change] = []
        self._feed_first = 0
        self._pruned_revision = 0  # the newest revision pruned from any key's history
        # Keys forgotten (no value, no history left) -> the newest revision pruned from them,
        # oldest first, at most MAX_TOMBSTONES; a key not there is judged by the floor: the
        # newest revision of a tombstone let go (or of what a restart did not restore).
        self._tombstones: dict[str, int] = {}
        self._tombstone_floor = 0
        self._listeners: list[ChangeListener] = []

    may_block = False
    reads_may_block = False
    """Everything is in this process: no call waits on a network or a disk."""
    may_be_unavailable = False
    """There is nothing to reach."""
    copies_on_read = False
    """Reads return the store's own values and bytes (history entries and changes are made
    for the caller, around the store's own bytes: nothing a reply holds is a copy of them)."""

    def check_ready(self) -> None:
        """Always ready: there is nothing to reach."""

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        """The key's current value; raises KeyNotFound."""
        with self._lock:
            value = self._current_value(self._records.get(key), self._now_ms())
            if value is None:
                raise KeyNotFound.of(key)
            return value

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; [] if none."""
        with self._lock:
            now_ms = self._now_ms()
            # The expiry is recorded before pruning, which drops it if its deadline is
            # already outside the window.
            self._current_value(self._records.get(key), now_ms)
            self._prune(now_ms)
            record = self._records.get(key)
            return record.entries_after(now_ms - self.history_window_ms) if record else []

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """Up to `limit` keys holding a value that start with `prefix`, in lexicographic
        order, strictly after `after`. At most max(limit + 1, MIN_KEYS_EXAMINED) keys are
        examined: a page that skipped that many due keys comes back short, its `next_after`
        the last key examined."""
        with self._lock:
            now_ms = self._now_ms()
            # Due keys are skipped, not removed: the listing must not change the set it walks
            # (the sweeper removes them). One more than asked for tells whether another page
            # follows.
            bound = max(limit + 1, MIN_KEYS_EXAMINED)
            found: list[str] = []
            examined = 0
            last_examined = None
            for key in itertools.islice(self._keys_with_values.starting(prefix, after), bound):
                examined += 1
                last_examined = key
                if self._deadlines and self._is_due(self._records[key], now_ms):
                    continue
                found.append(key)
                if len(found) > limit:
                    return KeyPage(found[:limit], found[limit - 1])
        return KeyPage(found, last_examined if examined == bound else None)

    def stats(self) -> StoreStats:
        """Keys holding a value, bytes charged against the budget, the budget, history entries
        held and writes refused for the budget.

        The entries held are those in the window and those past it still waiting to be
        pruned (after a wave: up to PRUNE_BATCH go per call); both are charged to the budget
        until pruned, so the count is what the bytes stand for."""
        with self._lock:
            now_ms = self._now_ms()
            self._prune(now_ms)
            # Keys due but not yet removed hold no value: counted at the front of _deadlines.
            due = self._deadlines.count_below((now_ms + 1, ""))
            return StoreStats(
                len(self._keys_with_values) - due,
                self._used_bytes,
                self.max_bytes,
                history_entries=len(self._window_queue) + len(self._late_entries),
                full_refusals=self._full_refusals,
            )

    # -- the change feed --------------------------------------------------------------------

    def feed_head(self) -> FeedPosition:
        """The position after the newest change."""
        with self._lock:
            return FeedPosition(self.life, self._revision)

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        """As `Store.changes`: a key's page from its own history (noticing its expiry, as a
        read of it does), a prefix's from the store-wide feed, examining at most
        max(limit + 1, MIN_CHANGES_EXAMINED) changes of it."""
        with self._lock:
            now_ms = self._now_ms()
            if selector.key is not None:
                self._current_value(self._records.get(selector.key), now_ms)
            self._prune(now_ms)
            if after.life != self.life:
                raise ResumeGone.of_another_life()
            if after.revision > self._revision:
                raise ResumeGone.ahead(after.revision, self._revision)
            cutoff_ms = now_ms - self.history_window_ms
            if selector.key is not None:
                return self._key_changes(selector.key, after.revision, limit, cutoff_ms)
            return self._prefix_changes(selector, after.revision, limit, cutoff_ms)

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Tell `listener` of every change from now on, inside the lock, right after it is
        applied, from the thread that applied it (this store never calls `interrupted`)."""
        with self._lock:
            self._listeners.append(listener)

    def _key_changes(self, key: str, after: int, limit: int, cutoff_ms: int) -> ChangePage:
        record = self._records.get(key)
        if record is None:
            if after < self._tombstones.get(key, self._tombstone_floor):
                raise ResumeGone.left_the_window()
            return ChangePage([], FeedPosition(self.life, self._revision), caught_up=True)
        if after < record.pruned_revision:
            raise ResumeGone.left_the_window()
        changes = record.changes_after(after)
        if changes and changes[0].timestamp_ms <= cutoff_ms:  # outside, not yet pruned
            raise ResumeGone.left_the_window()
        return self._page(changes, limit)

    def _prefix_changes(
        self, selector: FeedSelector, after: int, limit: int, cutoff_ms: int
    ) -> ChangePage:
        if after < self._pruned_revision:
            raise ResumeGone.left_the_window()
        feed = self._feed
        start = bisect.bisect_right(
            feed, after, lo=self._feed_first, key=lambda change: change.revision
        )
        found: list[Change] = []
        examined = feed[start : start + max(limit + 1, MIN_CHANGES_EXAMINED)]
        for change in examined:
            if change.timestamp_ms <= cutoff_ms:  # outside the window, not yet pruned
                raise ResumeGone.left_the_window()
            if selector.matches(change.key):
                found.append(change)
                if len(found) > limit:
                    break
        if len(found) <= limit and start + len(examined) < len(feed):
            # The bound stopped the walk: nothing the selector follows up to the last change
            # examined lies beyond what was found.
            shown = [self._public(change) for change in found]
            return ChangePage(shown, FeedPosition(self.life, examined[-1].revision), False)
        return self._page(found, limit)

    def _page(self, changes: list[Change], limit: int) -> ChangePage:
        """The first `limit` of `changes`, which hold every change followed up to the head."""
        shown = [self._public(change) for change in changes[:limit]]
        if len(changes) > limit:
            return ChangePage(shown, FeedPosition(self.life, changes[limit - 1].revision), False)
        return ChangePage(shown, FeedPosition(self.life, self._revision), caught_up=True)

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value, and its deadline as `expiry` says (by default: none); raises
        PreconditionFailed, StoreFull."""
        return self._write(key, data, content_type, precondition, expiry, create_only=False)

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value only if it has none; raises KeyExists, and as `put` does."""
        return self._write(key, data, content_type, precondition, expiry, create_only=True)

    def expire(
        self,
        key: str,
        expiry: Expiry,
        when: ExpireIf = ExpireIf.ALWAYS,
        precondition: Precondition = NO_CONDITION,
    ) -> ExpiryChange:
        """As `Store.expire`, under the store's lock, on its clock."""
        with self._lock:
            now_ms = self._now_ms()
            record, current = self._held_value(key, precondition, now_ms)
            deadline_ms = expiry.deadline_ms(now_ms, current.expires_at_ms)
            if not when.allows(current.expires_at_ms, deadline_ms):
                return ExpiryChange(False, current)
            if deadline_ms is not None and deadline_ms <= now_ms:
                self._expire(record, now_ms)
                return ExpiryChange(True, None)
            value = dataclasses.replace(current, expires_at_ms=deadline_ms)
            self._set_value(record, value)
            self._changed(record, None, value)
            return ExpiryChange(True, value)

    def sweep_expired(self, limit: int) -> int:
        """Remove up to `limit` keys whose deadline has passed, recording each expiry at its
        deadline, and return how many it removed. The due keys are the front of the sorted
        deadlines: a key without a deadline is never looked at. Like every call that
        prunes, it then drops up to PRUNE_BATCH history entries outside the window, so the
        sweeper also drains what a wave left to prune while no request comes."""
        removed = 0
        with self._lock:
            now_ms = self._now_ms()
            while removed < limit:
                first = self._deadlines.first()
                if first is None or first[0] > now_ms:
                    break
                self._expire(self._records[first[1]], first[0])
                removed += 1
            self._prune(now_ms)
        return removed

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        """Remove the key's value and record the delete; raises KeyNotFound, PreconditionFailed.

        Deletes are never refused for lack of memory: they are how a full store gets room back.
        """
        with self._lock:
            now_ms = self._now_ms()
            record, _ = self._held_value(key, precondition, now_ms)
            self._set_value(record, None)
            self._record(record, now_ms)

    def _held_value(
        self, key: str, precondition: Precondition, now_ms: int
    ) -> tuple[_Record, Value]:
        """The key's record and its current value, for a change to it (lock held, history
        pruned); raises KeyNotFound, or PreconditionFailed if `precondition` does not hold."""
        self._prune(now_ms)
        record = self._records.get(key)
        current = self._current_value(record, now_ms)
        if record is None or current is None:
            raise KeyNotFound.of(key)
        if not precondition.holds_for(current.etag):
            raise PreconditionFailed.of(key)
        return record, current

    def _write(
        self,
        key: str,
        data: bytes,
        content_type: str | None,
        precondition: Precondition,
        expiry: Expiry,
        *,
        create_only: bool,
    ) -> Value:
        with self._lock:
            now_ms = self._now_ms()
            self._prune(now_ms)
            record = self._records.get(key)
            current = self._current_value(record, now_ms)
            if create_only and current is not None:
                raise KeyExists.of(key)
            if not precondition.holds_for(current.etag if current else None):
                raise PreconditionFailed.of(key)

            deadline_ms = expiry.deadline_ms(now_ms, current.expires_at_ms if current else None)
            value = Value(data, content_type, self._etag_of(self._revision + 1), deadline_ms)
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
                record = self._records[key] = self._new_record(key)
                self._used_bytes += KEY_OVERHEAD_BYTES + len(key)
            self._set_value(record, value)
            self._record(record, now_ms)
            if deadline_ms is not None and deadline_ms <= now_ms:
                self._expire(record, now_ms)
            return value

    # -- for a backend that keeps this store's state elsewhere (kvservice.store.durable) -----
    # It learns of changes through `on_change`, and rebuilds the state with these four.

    def restore_value(self, key: str, value: Value) -> None:
        """Set the key's value as it was recorded (its ETag included), with no history entry
        and no budget check: rebuilding the state a store had, not a client's write."""
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = self._new_record(key)
                self._used_bytes += KEY_OVERHEAD_BYTES + len(key)
            self._set_value(record, value)

    def restore_history(self, change: Change) -> None:
        """Append a recorded change to its key's history and the feed, charging it as a write
        would. Changes must come in revision order; later writes never get an earlier
        timestamp. A write's ETag None is one the file did not keep (the feed shows None)."""
        with self._lock:
            record = self._records.get(change.key)
            if record is None:
                record = self._records[change.key] = self._new_record(change.key)
                self._used_bytes += KEY_OVERHEAD_BYTES + len(change.key)
            if change.data is not None and change.etag is None:  # the file did not keep it
                change = dataclasses.replace(change, etag=UNKNOWN_ETAG)
            elif change.data is not None and change.etag == self._etag_of(change.revision):
                change = dataclasses.replace(change, etag=None)  # made again when shown
            self._append_history(record, change)
            self._last_timestamp_ms = max(self._last_timestamp_ms, change.timestamp_ms)
            self._revision = max(self._revision, change.revision)

    def restore_pruned(self, key: str, revision: int) -> None:
        """After `restore_value` and `restore_history`: the newest revision pruned from the
        key's history, as the backend kept it; a key the store holds nothing of gets a
        tombstone (charged and bounded as any), so that its resume stays exact."""
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                record.pruned_revision = max(record.pruned_revision, revision)
            elif key in self._tombstones:
                self._tombstones[key] = max(self._tombstones[key], revision)
            else:
                self._bury(_Record(key, revision))

    def restore_feed(self, head: int, pruned_revision: int, key_floor: int) -> None:
        """After the other restores: the feed's head (the newest revision ever given), the
        newest revision the store no longer holds (a prefix's resume from before it is
        gone), and the newest pruned from a key the backend no longer knows of: every key's
        resume from before `key_floor` is gone, whatever `restore_pruned` said of it."""
        with self._lock:
            self._revision = max(self._revision, head)
            self._pruned_revision = max(self._pruned_revision, pruned_revision)
            self._tombstone_floor = max(self._tombstone_floor, key_floor)
            for record in self._records.values():
                record.pruned_revision = max(record.pruned_revision, key_floor)
            for key, revision in self._tombstones.items():
                self._tombstones[key] = max(revision, key_floor)

    # -- internals (lock held) --------------------------------------------------------------

    def _now_ms(self) -> int:
        # Timestamps never decrease, even if the wall clock steps back.
        self._last_timestamp_ms = max(self._clock(), self._last_timestamp_ms)
        return self._last_timestamp_ms

    @staticmethod
    def _is_due(record: _Record, now_ms: int) -> bool:
        value = record.value
        return (
            value is not None and value.expires_at_ms is not None and value.expires_at_ms <= now_ms
        )

    def _current_value(self, record: _Record | None, now_ms: int) -> Value | None:
        """The record's value at `now_ms`: None if it has none, or if its deadline has come,
        in which case the expiry is recorded (at the deadline) first."""
        if record is None:
            return None
        if self._is_due(record, now_ms):
            assert record.value is not None and record.value.expires_at_ms is not None
            self._expire(record, record.value.expires_at_ms)
        return record.value

    def _expire(self, record: _Record, at_ms: int) -> None:
        """Remove the record's value as an expiry stamped `at_ms`, returning its bytes."""
        self._set_value(record, None)
        self._record(record, at_ms, expired=True)

    def _set_value(self, record: _Record, value: Value | None) -> None:
        """Replace the record's value, keeping the budget, the listing and the deadlines in
        step with it."""
        old = record.value
        if old is not None:
            self._used_bytes -= _value_cost(old)
            if old.expires_at_ms is not None:
                self._deadlines.discard((old.expires_at_ms, record.key))
        if value is not None:
            self._used_bytes += _value_cost(value)
            if value.expires_at_ms is not None:
                self._deadlines.add((value.expires_at_ms, record.key))
        if old is None and value is not None:
            self._keys_with_values.add(record.key)
        elif old is not None and value is None:
            self._keys_with_values.discard(record.key)
        record.value = value

    def _record(self, record: _Record, timestamp_ms: int, *, expired: bool = False) -> None:
        """Record the change the key's value (just set) stands for, with the next revision,
        in its history and the feed, and tell the listeners."""
        self._revision += 1
        value = record.value
        change = (
            Change(
                key=record.key,
                revision=self._revision,
                data=value.data,
                timestamp_ms=timestamp_ms,
                etag=None,
                content_type=value.content_type,
            )
            if value is not None
            else Change(
                key=record.key,
                revision=self._revision,
                data=None,
                timestamp_ms=timestamp_ms,
                expired=expired,
            )
        )
        self._append_history(record, change)
        if self._on_change is not None or self._listeners:
            told = self._public(change)
            self._changed(record, told, value)
            for listener in self._listeners:
                listener.changed(told)

    def _etag_of(self, revision: int) -> str:
        return f"{self._etag_prefix}-{revision:x}"

    def _public(self, change: Change) -> Change:
        """The change as the feed shows it: a write's ETag, which history keeps only where
        it is not `_etag_of` its revision (restored from an older format; UNKNOWN_ETAG
        where the file did not say, shown as None)."""
        if change.data is None or (change.etag is not None and change.etag != UNKNOWN_ETAG):
            return change
        etag = None if change.etag == UNKNOWN_ETAG else self._etag_of(change.revision)
        return dataclasses.replace(change, etag=etag)

    def _changed(self, record: _Record, change: Change | None, value: Value | None) -> None:
        if self._on_change is not None:
            self._on_change(record.key, change, value)

    def _append_history(self, record: _Record, entry: Change) -> None:
        record.history.append(entry)
        self._feed.append(entry)
        if entry.timestamp_ms >= self._window_queue_newest_ms:
            self._window_queue.append(record)
            self._window_queue_newest_ms = entry.timestamp_ms
        else:
            heapq.heappush(
                self._late_entries, (entry.timestamp_ms, next(self._late_arrivals), record)
            )
            self._used_bytes += LATE_ENTRY_EXTRA_BYTES
        self._used_bytes += _entry_cost(entry)

    def _prune(self, now_ms: int, batch: int = PRUNE_BATCH) -> int:
        """Drop up to `batch` history entries outside the window, forget keys left with
        nothing, and return how many it dropped; then up to `batch` of the feed's front."""
        dropped = self._prune_history(now_ms, batch)
        self._prune_feed(batch)
        return dropped

    def _prune_history(self, now_ms: int, batch: int) -> int:
        """Drop up to `batch` history entries outside the window (as `_prune`).

        The late entries outside the window go first. The window queue is in timestamp
        order, so then its front record has an entry outside the window exactly when the
        front slot stands for one: its front tells whether anything more is to go. A call
        that stops at `batch` leaves the rest for the next, in the same order (late entries
        first), which keeps that reasoning true however the work is split.
        """
        cutoff_ms = now_ms - self.history_window_ms
        dropped = 0
        late = self._late_entries
        while late and late[0][0] <= cutoff_ms:
            if dropped == batch:
                return dropped
            self._drop_oldest(heapq.heappop(late)[2])
            self._used_bytes -= LATE_ENTRY_EXTRA_BYTES
            dropped += 1
        queue = self._window_queue
        while queue and dropped < batch:
            record = queue[0]
            if record.history[record.first].timestamp_ms > cutoff_ms:
                break
            queue.popleft()
            self._drop_oldest(record)
            dropped += 1
        return dropped

    def _prune_feed(self, batch: int) -> None:
        """Drop up to `batch` changes from the feed's front that their keys' histories have
        dropped (held: its revision is at least the oldest its key holds)."""
        feed = self._feed
        for _ in range(batch):
            if self._feed_first == len(feed):
                break
            change = feed[self._feed_first]
            record = self._records.get(change.key)
            if (
                record is not None
                and record.first < len(record.history)
                and record.history[record.first].revision <= change.revision
            ):
                break
            self._feed_first += 1
        if 2 * self._feed_first >= len(feed):
            del feed[: self._feed_first]
            self._feed_first = 0

    def _new_record(self, key: str) -> _Record:
        """A record for a key the store holds nothing of, knowing what was pruned from it."""
        pruned_revision = self._tombstones.pop(key, None)
        if pruned_revision is None:
            return _Record(key, self._tombstone_floor)
        self._used_bytes -= TOMBSTONE_BYTES + len(key)
        return _Record(key, pruned_revision)

    def _bury(self, record: _Record) -> None:
        """Remember what was pruned from a key being forgotten, so that a resume of that key
        stays exact (the oldest tombstone goes past MAX_TOMBSTONES, raising the floor)."""
        self._tombstones[record.key] = record.pruned_revision
        self._used_bytes += TOMBSTONE_BYTES + len(record.key)
        if len(self._tombstones) > MAX_TOMBSTONES:
            oldest = next(iter(self._tombstones))
            self._tombstone_floor = max(self._tombstone_floor, self._tombstones.pop(oldest))
            self._used_bytes -= TOMBSTONE_BYTES + len(oldest)

    def _drop_oldest(self, record: _Record) -> None:
        change = record.drop_oldest()
        self._used_bytes -= _entry_cost(change)
        record.pruned_revision = change.revision
        self._pruned_revision = max(self._pruned_revision, change.revision)
        if record.value is None and not record.history:
            del self._records[record.key]
            self._used_bytes -= KEY_OVERHEAD_BYTES + len(record.key)
            self._bury(record)


def _value_cost(value: Value) -> int:
    return len(value.data) + len(value.content_type or "")


def _entry_cost(entry: Change) -> int:
    return ENTRY_OVERHEAD_BYTES + len(entry.data or b"")
