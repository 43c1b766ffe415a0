"""DurableStore: the memory store, kept on local disk.

Reads are the memory store's (`MemoryStore` holds the state; nothing is read from disk after
the start). Writes are applied to memory first; memory tells of each change it makes
(`on_change`, under its lock), which gives the change its place in the journal (`seq`) and
queues it, so memory and disk see changes in the same order and the memory store alone
judges preconditions, ETags, timestamps, deadlines and the budget. Each write then waits for
its commit: one writer thread takes every change queued since its last commit and commits
them in one transaction (group commit), so a burst of N writes costs one sync, not N.

Keys that expire: a deadline is journaled with the value (absolute, epoch ms), and an
expiry, whoever notices it (a read, a write, the sweeper), is journaled as a history row at
the deadline like any change; nobody waits for an expiry's commit but a read that could see
it (--fsync always). After a restart, a key whose deadline passed while the service was down
(or whose expiry had not been committed) is read back with its deadline and expired at start,
its entry stamped with the deadline, as if it had been noticed in time. An expiry noticed by
a read or the sweeper is therefore already implied by the file: a batch made of such
expiries alone that the disk refuses refuses nobody and rebuilds nothing (rebuilt memory
would hold the key again, due, and the next read would notice it again: a loop); its writes
are carried to the front of the next batch (so that a later write to the same key cannot
commit without the expiry before it) and count as durable for reads meanwhile. A client's
`expire` to a deadline already past is a client's write like any other (its entry is at the
time of the call, which no file implies).

What a client may see (`--fsync always`): a write is acknowledged only once its transaction
is synced, and a read that could see writes not yet synced (any write applied after the last
synced one) holds its reply until they are, so no client observes a write that a power cut
could take back. With `everysec` and `off` reads do not wait; writes still wait for their
commit (into the OS's cache), so `kill -9` loses nothing acknowledged, and a power cut loses
up to about a second (`everysec`) or what the OS had not written (`off`).

The change feed: revisions are the memory store's (given under its lock, journaled with
each history row), the life is the data file's, and the head survives a restart, so a resume
token stays good across one; keys expired at start get revisions after the old head. What
compaction pruned is kept per key (the memory store's records and tombstones, see
journal.py), so a restart judges a key's resume exactly: a key with no writes since a token
is never gone. Listeners are told of a change once its commit succeeded, by the writer
thread, in revision order: a watcher never sees a write the disk then refused. After a failed
commit the rebuilt memory goes on from the newest revision handed out, never reusing one a
page of `changes` may have shown (the refused changes leave a gap), and a clean close records
that revision, so a restart does not reuse it either. With `everysec` and `off` a watcher may
be told of a commit a power cut then takes back: a start after a stop that was not clean
under those policies gives the feed a new life (`Journal.begin_serving`), so older tokens
get 410 rather than resume into changes that took the lost revisions.

Faults: a commit that fails refuses every write of its batch and every write queued behind it
(they were judged against state that will not exist): StoreFull (507) when the disk is full,
StoreUnavailable (503) for an I/O error or a failed sync. Memory is then rebuilt from the
file, as a start does, so that no read shows a refused write (the expiries of those batches,
carried ones too, go with them: the rebuilt memory notices them again, each once); after a
failed sync the file is reopened first, so what is rebuilt is what SQLite's recovery makes
of the file, never SQLite's cached idea of a write that may not be on disk (PostgreSQL's
fsync lesson), and a batch of expiries alone is treated the same way, since its rows may be
in the file. While the disk refuses, new puts are refused at once (deletes are still tried:
they are how a client gives room back), the sweeper's calls remove nothing, a batch of
expiries alone is carried without being tried, and the writer probes the disk each second
with a small commit; the first that succeeds restores full service and commits what was
carried.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kvservice.store.durable.database import Connect, DiskError, DiskFull, open_sqlite
from kvservice.store.durable.journal import (
    DATA_FILE,
    SYNCHRONOUS,
    DataDirError,
    DirectoryLock,
    Write,
    damaged,
    now_s,
    open_journal,
    prepare_directory,
    refusal,
)
from kvservice.store.memory import MemoryStore
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
    KeyPage,
    Persistence,
    Precondition,
    StoreError,
    StoreFull,
    StoreStats,
    StoreUnavailable,
    Value,
    system_clock_ms,
)

logger = logging.getLogger("kvservice.store.durable")

T = TypeVar("T")

HOUSEKEEPING_INTERVAL_S = 1.0
"""How often the writer syncs (everysec), compacts, and probes a disk that refused."""
COMPACTION_STEPS = 100
"""The most compaction transactions of one housekeeping pass (of 10,000 rows each)."""
EXPIRED_AT_START_BATCH = 10_000
"""Keys expired per call while the start expires what passed while the service was down."""
READ_WAIT_S = 10.0
"""How long a read waits for the writes it could see to be synced before it answers 503."""

DISK_FULL = (
    "The disk under --data-dir is full: the write was not stored. Free disk space; writes "
    "resume by themselves once there is room."
)
DISK_FAILED = (
    "The disk under --data-dir failed to store the write (I/O error or failed sync): it was "
    "not acknowledged, and may or may not have been kept; what the disk kept is read back. "
    "Try again."
)
DISK_UNREADABLE = (
    "The data under --data-dir cannot be read back after a disk error; retrying each second."
)


@dataclass(eq=False)
class _Batch:
    """The writes one commit takes, and how it went (read by the writers waiting on it)."""

    writes: list[Write] = field(default_factory=list)
    done: bool = False
    refusal: tuple[type[StoreError], str] | None = None
    holds_client_writes: bool = False
    """Whether a client's write call made any of the writes. If not, they are expiries
    noticed by a read or the sweeper, which the file already implies (see the module)."""


class DurableStore:
    """A MemoryStore whose writes are acknowledged once committed to DIR (see the module)."""

    may_block = True
    """A write waits on its commit, a read (--fsync always) on the sync of what it saw."""

    @property
    def reads_may_block(self) -> bool:
        """Only with --fsync always, where a read waits for the sync of what it saw; otherwise
        reads are its memory store's, answered at once (a disk that fails makes them refuse,
        never wait)."""
        return self._hold_reads

    may_be_unavailable = False
    """The disk is local: a failing disk refuses writes, it is never away."""
    copies_on_read = False
    """Reads are served by its memory store, which returns its own objects."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "always",
        history_window_ms: int = 120_000,
        max_bytes: int = 256 * 1024 * 1024,
        max_value_bytes: int = 1024,
        clock: Clock = system_clock_ms,
        connect: Connect = open_sqlite,
        housekeeping_interval_s: float = HOUSEKEEPING_INTERVAL_S,
    ) -> None:
        if fsync not in SYNCHRONOUS:
            raise ValueError(f"fsync must be one of {', '.join(SYNCHRONOUS)}, not {fsync!r}")
        self.data_dir = data_dir
        self.fsync = fsync
        self.history_window_ms = history_window_ms
        self.max_bytes = max_bytes
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        self._connect = connect
        self._housekeeping_interval_s = housekeeping_interval_s
        self._hold_reads = fsync == "always"

        self._apply_lock = threading.Lock()  # memory changes and seq order; taken first
        self._lock = threading.Lock()  # the fields below
        self._queued = threading.Condition(self._lock)  # the writer waits for writes
        self._committed = threading.Condition(self._lock)  # clients wait for commits
        self._open_batch = _Batch()
        self._generation = 0  # changes when memory is rebuilt after a failed commit
        # Changes when a failed commit refuses the queue: a memory store told of changes
        # before that is being replaced, and what it says is no longer journaled.
        self._journal_epoch = 0
        self._applied_seq = 0
        # .batch: the batch of this thread's last change; .in_client_write: whether the thread
        # is applying a client's write (its changes are that client's, not noticed expiries).
        self._this_thread = threading.local()
        # Expiries whose commit the disk refused (or would have), oldest first: they go at the
        # front of the next batch tried, and count as durable for reads meanwhile.
        self._carried: list[Write] = []
        self._refusal: tuple[type[StoreError], str] | None = None
        self._closing = False
        self._commits = self._committed_writes = self._failed_commits = self._syncs = 0
        self._sync_seconds = 0.0
        self._last_commit_time_s = now_s()
        self._listeners: list[ChangeListener] = []
        # The newest revision a memory store replaced after a failed commit had given.
        self._revisions_handed_out = 0

        prepare_directory(data_dir)
        self._directory_lock = DirectoryLock(data_dir)
        try:
            self._journal = open_journal(data_dir / DATA_FILE, connect, fsync)
            if self._journal.dropped_wal_bytes:
                logger.warning(
                    "%s: recovered up to the last complete write; dropped the %d bytes after "
                    "it at the end of the log (a write cut short by a crash or power cut)",
                    data_dir,
                    self._journal.dropped_wal_bytes,
                )
            try:
                if self._journal.begin_serving():
                    logger.warning(
                        "%s is not known to have been closed cleanly by the last kvservice "
                        "to serve it, whose --fsync policy acknowledges writes before they are "
                        "synced (or which wrote an older format): the writes of its last "
                        "moments may be lost, with changes watchers were told of, so the "
                        "change feed begins a new life (older resume tokens get 410)",
                        data_dir,
                    )
            except DiskError as error:
                self._journal.close()
                raise refusal(self._journal.path, error) from error
            try:
                memory, last_seq = self._read_back()
            except DiskError as error:
                self._journal.close()
                raise damaged(self._journal.path, error) from error
        except BaseException:
            self._directory_lock.release()
            raise
        self._memory: MemoryStore | None = memory
        self._applied_seq = self._durable_seq = last_seq
        self._writer = threading.Thread(target=self._run_writer, name="kv-journal", daemon=True)
        self._writer.start()
        # What passed its deadline while the service was down goes now, journaled as it goes.
        while memory.sweep_expired(EXPIRED_AT_START_BATCH):
            pass

    def check_ready(self) -> None:
        """Ready unless the data could not be read back after a disk error."""
        if self._memory is None:
            raise StoreUnavailable(DISK_UNREADABLE)

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the file, release the directory."""
        with self._lock:
            self._closing = True
            self._queued.notify()
        self._writer.join(timeout=30)
        self._journal.close()
        self._directory_lock.release()

    # -- reads --------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        """The key's current value; raises KeyNotFound."""
        return self._read(lambda memory: memory.get(key))

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; [] if none."""
        return self._read(lambda memory: memory.history(key))

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """As `MemoryStore.keys`."""
        return self._read(lambda memory: memory.keys(prefix, after, limit))

    def stats(self) -> StoreStats:
        """The memory store's figures, and the journal's as `persistence`."""
        stats = self._read(lambda memory: memory.stats())
        return dataclasses.replace(stats, persistence=self.persistence())

    def persistence(self) -> Persistence:
        """The journal's figures."""
        with self._lock:
            return Persistence(
                fsync=self.fsync,
                pending_writes=self._applied_seq - self._durable_seq + len(self._carried),
                commits=self._commits,
                committed_writes=self._committed_writes,
                sync_seconds_total=self._sync_seconds,
                syncs=self._syncs,
                last_commit_ok=self._refusal is None and self._memory is not None,
                last_commit_time_s=self._last_commit_time_s,
                failed_commits=self._failed_commits,
                file_bytes=self._journal.file_bytes(),
            )

    def _read(self, read: Callable[[MemoryStore], T]) -> T:
        """`read` of memory; with --fsync always, answered only once every write it could
        have seen is synced, and read again if memory was rebuilt meanwhile."""
        for _ in range(3):
            generation = self._generation
            memory = self._memory
            if memory is None:
                raise StoreUnavailable(DISK_UNREADABLE)
            if not self._hold_reads:
                return read(memory)
            try:
                result: T | StoreError = read(memory)
            except StoreError as error:  # KeyNotFound is an observation too
                result = error
            if self._wait_until_synced(self._applied_seq, generation):
                if isinstance(result, StoreError):
                    raise result
                return result
        raise StoreUnavailable(DISK_FAILED)

    def _wait_until_synced(self, seq: int, generation: int) -> bool:
        """Whether every write up to `seq` is synced (or is a carried expiry, which the file
        implies) in the memory of `generation` (False: memory was rebuilt, read again). A
        rebuild takes seqs back to the file's last one, and changes the generation in the
        same step: that is what ends the wait for a seq that will never be synced."""
        if self._durable_seq >= seq and self._generation == generation:
            return True
        deadline = time.monotonic() + READ_WAIT_S
        with self._lock:
            while self._durable_seq < seq and self._generation == generation:
                if not self._committed.wait(deadline - time.monotonic()):
                    raise StoreUnavailable(
                        "The disk under --data-dir did not sync the writes this read could "
                        f"see within {READ_WAIT_S:.0f} s; try again."
                    )
            return self._generation == generation

    # -- the change feed ------------------------------------------------------------------------

    def feed_head(self) -> FeedPosition:
        """The memory store's head (a read)."""
        return self._read(lambda memory: memory.feed_head())

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        """As `MemoryStore.changes` (a read)."""
        return self._read(lambda memory: memory.changes(selector, after, limit))

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Tell `listener` of each change once committed, from the writer thread, in order."""
        with self._lock:
            self._listeners.append(listener)

    # -- writes -------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value (and deadline) once committed; raises as MemoryStore.put does,
        StoreFull for a full disk and StoreUnavailable for a failed one."""
        self._refuse_while_the_disk_does()
        return self._write(lambda memory: memory.put(key, data, content_type, precondition, expiry))

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value only if it has none, once committed; raises as `put` does."""
        self._refuse_while_the_disk_does()
        return self._write(
            lambda memory: memory.create(key, data, content_type, precondition, expiry)
        )

    def expire(
        self,
        key: str,
        expiry: Expiry,
        when: ExpireIf = ExpireIf.ALWAYS,
        precondition: Precondition = NO_CONDITION,
    ) -> ExpiryChange:
        """As `MemoryStore.expire`, once committed; refused while the disk refuses puts."""
        self._refuse_while_the_disk_does()
        return self._write(lambda memory: memory.expire(key, expiry, when, precondition))

    def sweep_expired(self, limit: int) -> int:
        """As `MemoryStore.sweep_expired`; the expiries are queued for the journal, and
        nobody waits for their commit (a restart would expire those keys again anyway).
        Removes nothing while the disk refuses writes: the keys found due would only be
        carried, and a read notices a due key by itself."""
        memory = self._memory
        if memory is None or self._refusal is not None:
            return 0
        return memory.sweep_expired(limit)

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        """Remove the key's value once committed; tried even while the disk refuses puts."""
        self._write(lambda memory: memory.delete(key, precondition))

    def _refuse_while_the_disk_does(self) -> None:
        refusal = self._refusal
        if refusal is not None:
            error_type, message = refusal
            raise error_type(message)

    def _write(self, apply: Callable[[MemoryStore], T]) -> T:
        """`apply` to memory, answered once the changes it made are committed (one that
        made none, an expire whose condition did not hold, is answered as a read)."""
        self._this_thread.batch = None
        with self._apply_lock:
            memory = self._memory
            if memory is None:
                raise StoreUnavailable(DISK_UNREADABLE)
            generation = self._generation
            self._this_thread.in_client_write = True
            try:
                result = apply(memory)
            finally:
                self._this_thread.in_client_write = False
        batch: _Batch | None = self._this_thread.batch
        if batch is None:
            if self._hold_reads and not self._wait_until_synced(self._applied_seq, generation):
                raise StoreUnavailable(DISK_FAILED)
            return result
        # Batches commit in order, and a failed one refuses every batch behind it: waiting
        # for the batch of the last change waits for all of this call's changes.
        with self._lock:
            while not batch.done:
                self._committed.wait()
        if batch.refusal is not None:
            error_type, message = batch.refusal
            raise error_type(message)
        return result

    def _journal_change(
        self, epoch: int, key: str, change: Change | None, value: Value | None
    ) -> None:
        """Queue a change memory made (its `on_change`, called under its lock, in order).
        The seq is taken as memory changes, so a read that sees the change also sees that a
        write is pending."""
        deadline_ms = value.expires_at_ms if value else None
        with self._lock:
            if epoch != self._journal_epoch:
                return  # told by a memory being replaced after a failed commit
            seq = self._applied_seq = self._applied_seq + 1
            write = Write(
                seq,
                key,
                value.data if value else None,
                value.content_type if value else None,
                value.etag if value else "",
                change.timestamp_ms if change else 0,
                deadline_ms,
                expired=change is not None and change.expired,
                recorded=change is not None,
                change=change,
            )
            batch = self._open_batch
            batch.writes.append(write)
            # Even an expiry a client's write noticed counts as the client's: that call may
            # be an expire() to a past deadline, whose entry no file implies.
            if getattr(self._this_thread, "in_client_write", False):
                batch.holds_client_writes = True
            self._queued.notify()
        self._this_thread.batch = batch

    # -- the writer thread --------------------------------------------------------------------

    def _run_writer(self) -> None:
        next_housekeeping = time.monotonic() + self._housekeeping_interval_s
        while True:
            with self._lock:
                while (
                    not self._open_batch.writes
                    and not (self._carried and self._refusal is None)
                    and not self._closing
                    and time.monotonic() < next_housekeeping
                ):
                    self._queued.wait(next_housekeeping - time.monotonic())
                batch = self._take_batch()
                closing = self._closing
            try:
                if batch.writes:
                    self._commit(batch)
                elif closing:
                    self._final_sync()
                    return
                if time.monotonic() >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = time.monotonic() + self._housekeeping_interval_s
            except Exception:  # a bug; writers waiting on an uncommitted batch must be answered
                logger.exception("the journal writer failed")
                if not batch.done:
                    self._fail(batch, (StoreUnavailable, DISK_FAILED), reopen=True)

    def _take_batch(self) -> _Batch:
        """The writes to try now (under `_lock`): the carried expiries, then the open batch.
        While the disk refuses, a batch of expiries alone is carried instead, untried, and
        what is returned is empty."""
        batch, self._open_batch = self._open_batch, _Batch()
        if self._refusal is not None and not batch.holds_client_writes:
            self._carry(batch)
            return _Batch()
        batch.writes[:0] = self._carried
        self._carried = []
        return batch

    def _carry(self, batch: _Batch) -> None:
        """Keep `batch`, expiries alone, for the front of the next batch tried, and count
        them as durable for reads (under `_lock`)."""
        if batch.writes:
            self._carried.extend(batch.writes)
            self._durable_seq = batch.writes[-1].seq
        batch.done = True
        self._committed.notify_all()

    def _commit(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            self._journal.append(batch.writes)
        except DiskError as error:
            logger.error("a commit of %d writes failed: %s", len(batch.writes), error)
            if isinstance(error, DiskFull) and not batch.holds_client_writes:
                # Nothing of it was stored, and the file implies all of it: nobody to refuse,
                # nothing to rebuild.
                with self._lock:
                    self._refusal = (StoreFull, DISK_FULL)
                    self._failed_commits += 1
                    self._carry(batch)
                return
            full = isinstance(error, DiskFull)
            self._fail(
                batch, (StoreFull, DISK_FULL) if full else (StoreUnavailable, DISK_FAILED), not full
            )
            return
        elapsed_s = time.perf_counter() - started
        # Before the writers are answered: a client that wrote finds its change told.
        for write in batch.writes:
            if write.change is not None:
                for listener in self._listeners:
                    listener.changed(write.change)
        with self._lock:
            self._durable_seq = batch.writes[-1].seq
            batch.done = True
            self._commits += 1
            self._committed_writes += len(batch.writes)
            if self.fsync == "always":
                self._syncs += 1
                self._sync_seconds += elapsed_s
            self._last_commit_time_s = now_s()
            if self._refusal is not None:
                logger.warning("%s takes writes again", self.data_dir)
                self._refusal = None
            self._committed.notify_all()

    def _fail(self, batch: _Batch, refusal: tuple[type[StoreError], str], reopen: bool) -> None:
        """Refuse `batch` and every write queued behind it; rebuild memory from the file.
        The expiries among them, carried ones included (`_take_batch` put those in `batch`),
        go too: the rebuilt memory holds those keys due, and notices each again once."""
        with self._apply_lock:
            with self._lock:
                later, self._open_batch = self._open_batch, _Batch()
                self._journal_epoch += 1
            if self._memory is not None:
                self._revisions_handed_out = self._memory.feed_head().revision
            memory, last_seq = self._rebuild(reopen)
            with self._lock:
                self._memory = memory
                if memory is not None:
                    self._durable_seq = last_seq
                self._applied_seq = self._durable_seq
                self._generation += 1
                self._refusal = refusal
                self._failed_commits += 1
                for refused in (batch, later):
                    refused.refusal = refusal
                    refused.done = True
                self._committed.notify_all()

    def _rebuild(self, reopen: bool) -> tuple[MemoryStore | None, int]:
        """Memory as the file holds it (reopened first after an I/O error), or None. Its
        feed goes on from the newest revision the memory it replaces handed out."""
        try:
            if reopen:
                self._journal.close()
                self._journal = open_journal(self.data_dir / DATA_FILE, self._connect, self.fsync)
            memory, last_seq = self._read_back()
            memory.restore_feed(self._revisions_handed_out, 0, 0)
            return memory, last_seq
        except (DiskError, DataDirError) as error:
            logger.error("%s: %s", DISK_UNREADABLE, error)
            return None, 0

    def _read_back(self) -> tuple[MemoryStore, int]:
        epoch = self._journal_epoch
        memory = MemoryStore(
            history_window_ms=self.history_window_ms,
            max_bytes=self.max_bytes,
            max_value_bytes=self.max_value_bytes,
            clock=self._clock,
            on_change=lambda key, change, value: self._journal_change(epoch, key, change, value),
            life=self._journal.life,
        )
        last_seq = self._journal.load(memory, self._clock() - self.history_window_ms)
        return memory, last_seq

    def _housekeeping(self) -> None:
        """Once a second: read back after a failure, probe a refusing disk, or sync
        (everysec) and compact."""
        if self._memory is None:
            with self._apply_lock:
                memory, last_seq = self._rebuild(reopen=True)
                with self._lock:
                    if memory is not None:
                        self._memory, self._applied_seq, self._durable_seq = (
                            memory,
                            last_seq,
                            last_seq,
                        )
                        self._generation += 1
            return
        try:
            if self._refusal is not None:
                self._journal.probe()
                with self._lock:
                    self._refusal = None
                logger.warning("%s takes writes again", self.data_dir)
                return
            if self.fsync == "everysec":
                started = time.perf_counter()
                self._journal.sync()
                with self._lock:
                    self._syncs += 1
                    self._sync_seconds += time.perf_counter() - started
            self._compact()
        except DiskError as error:
            logger.warning("%s: housekeeping failed: %s", self.data_dir, error)

    def _compact(self) -> None:
        """Delete history outside the window, a short transaction at a time, committing the
        writes that queue meanwhile between them."""
        cutoff_ms = self._clock() - self.history_window_ms
        compacted = False
        for _ in range(COMPACTION_STEPS):
            if self._journal.compact(cutoff_ms) == 0:
                break
            compacted = True
            with self._lock:
                batch = self._take_batch()
            if batch.writes:
                self._commit(batch)
        # Tombstones come of compaction, or of deletes, whose rows it deletes in turn:
        # bounding them after a compaction that deleted rows bounds them all.
        if compacted:
            self._journal.bound_tombstones()
        self._journal.shrink()

    def _final_sync(self) -> None:
        """Record the newest revision handed out and that nothing is lost, and sync (see
        `Journal.close_cleanly`); a disk that refuses leaves the file marked as stopped
        unclean."""
        memory = self._memory
        head = max(self._revisions_handed_out, memory.feed_head().revision if memory else 0)
        try:
            self._journal.close_cleanly(head)
        except DiskError as error:
            logger.warning("%s: the last sync failed: %s", self.data_dir, error)
