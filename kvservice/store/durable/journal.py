"""The data directory and the journal in it: one SQLite file in WAL mode holding every write
inside the history window and every key's current value.

Layout of DIR: `kvservice.sqlite3` (with SQLite's `-wal` and `-shm` beside it while it is
open) and `LOCK`, which the serving process holds with flock(2) so that a second kvservice on
the same directory is refused at start instead of overwriting the first one's writes.

Schema (format 4, in `PRAGMA user_version`; `PRAGMA application_id` marks the file as ours):
- `history(seq, key, data, timestamp_ms, expired, revision, etag, content_type)`: one row
  per write, in write order (seq), data NULL for a delete or an expiry (expired 1,
  timestamp_ms its deadline: such a row may come after rows stamped later), with its change
  feed revision and the ETag and content type of the value written (NULL for a delete or an
  expiry). Rows outside the history window are deleted in the background (`compact`), so
  the file holds the window's history plus current values, however many writes it saw.
- `current(key, data, content_type, etag, seq, expires_at_ms, pruned_revision)`: each key's
  value, as a client last wrote it, and its deadline (absolute, epoch ms; NULL: none). A key
  whose deadline passed stays here until its expiry is journaled; reading back restores it
  with its deadline, and the store expires it at start, at that deadline. `pruned_revision`
  is the newest revision `compact` deleted of the key's rows (0: none): the memory store's
  per-key record, so that a restart judges a key's resume exactly.
- `tombstones(key, revision)`: the same for keys without a value (a delete moves the key's
  `pruned_revision` here, a new value takes it back), the memory store's tombstones; at
  most MAX_TOMBSTONES, past which the lowest revisions go (`bound_tombstones`).
- `feed(name, value)`: the change feed's `life`, `pruned_revision` (the newest revision
  `compact` deleted of any key: a prefix's resume from before it is gone),
  `tombstone_floor` (the newest of a key the file no longer knows of: every key's resume
  from before it is gone), `closed_head` (the newest revision handed out, written at a
  clean close) and `may_lose_commits` (see below). The head is the newest revision of a
  history row, `pruned_revision` or `closed_head`, so commits write nothing more than their
  rows (a row of its own would add a page to each commit's WAL frames).
A format 1 file (before deadlines) is brought to format 2, a format 2 file (before the
change feed) to format 3, and a format 3 file (before per-key pruned revisions) to format 4,
when it is opened: format 2's history rows get revisions 1, 2, ... in write order (seq), the
life a new one, and a row that wrote a key's current value gets that value's ETag and
content type (those of older rows are not known: NULL, as for a delete); format 3's keys are
all judged by its `pruned_revision` (its `tombstone_floor`), and since it did not say
whether it was stopped cleanly, its feed begins a new life.

The change feed's life never sees a revision twice. A process serving the file under
`everysec` or `off` tells watchers of commits that a power cut can take back, and a restart
would give their revisions to new writes; so `begin_serving` sets `may_lose_commits` (synced)
under those policies, `close_cleanly` clears it (synced, with `closed_head`, after the last
commit), and a start that finds it set gives the feed a new life: older tokens get
ResumeGone, never a resume into other changes. A crash under `always` loses nothing told,
and keeps the life; so does a clean stop under any policy.

A batch of writes is one transaction (`append`): group commit. With `--fsync always`
(`synchronous=FULL`) the commit returns only once the WAL is synced; `everysec`
(`synchronous=NORMAL`) leaves the WAL to the OS and `sync` checkpoints, which syncs it, about
once a second; `off` never syncs (but for the start's mark and the clean close: above).

Recovery is SQLite's: the WAL's frames are checksummed and salted, and a torn or garbled tail
is ignored from the first frame that does not verify, so the file reads back as of the last
complete commit. `open_journal` says how many bytes of the WAL that dropped; damage SQLite
reports anywhere else (a malformed page, a file shorter than its header says, a file that is
no database) refuses the start with DataDirError, as does a file of a newer format.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvservice.store.durable.database import Connect, Database, DataDamaged, DiskError
from kvservice.store.memory import MAX_TOMBSTONES, MemoryStore
from kvservice.store.model import Change, Value

logger = logging.getLogger("kvservice.store.durable")

DATA_FILE = "kvservice.sqlite3"
WAL_SUFFIX = "-wal"
LOCK_FILE = "LOCK"
APPLICATION_ID = 0x6B765376  # "kvSv"
FORMAT_VERSION = 4
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
WAL_MAGICS = (0x377F0682, 0x377F0683)
SQLITE_HEADER = b"SQLite format 3\x00"

SYNCHRONOUS = {"always": "FULL", "everysec": "NORMAL", "off": "OFF"}
"""The SQLite `synchronous` level of each --fsync policy."""

NEW_LIFE = "lower(hex(randomblob(9)))"
"""SQL for a new life of the change feed: 18 hex digits, URL-safe as a token needs."""
CREATE_FEED = (
    "CREATE TABLE feed (name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    # The life is made with the file (and anew in a backup's copy, or after a stop that
    # may have lost commits: `begin_serving`).
    f"INSERT INTO feed VALUES ('life', {NEW_LIFE}), ('pruned_revision', 0)",
)
"""The feed table as format 3 made it."""
CREATE_TOMBSTONES = (
    "CREATE TABLE tombstones (key TEXT PRIMARY KEY, revision INTEGER NOT NULL) WITHOUT ROWID"
)
SCHEMA = (
    "CREATE TABLE history (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, data BLOB,"
    " timestamp_ms INTEGER NOT NULL, expired INTEGER NOT NULL DEFAULT 0,"
    " revision INTEGER NOT NULL DEFAULT 0, etag TEXT, content_type TEXT)",
    "CREATE TABLE current (key TEXT PRIMARY KEY, data BLOB NOT NULL, content_type TEXT,"
    " etag TEXT NOT NULL, seq INTEGER NOT NULL, expires_at_ms INTEGER,"
    " pruned_revision INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    *CREATE_FEED,
    CREATE_TOMBSTONES,
    "INSERT INTO feed VALUES ('tombstone_floor', 0), ('closed_head', 0), ('may_lose_commits', 0)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {FORMAT_VERSION}",
)
FIRST_FEED_FORMAT = 3
"""The first format with a change feed (its life, its revisions)."""
UPGRADES = {
    1: (
        "ALTER TABLE history ADD COLUMN expired INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE current ADD COLUMN expires_at_ms INTEGER",
        "PRAGMA user_version = 2",
    ),
    2: (
        "ALTER TABLE history ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE history ADD COLUMN etag TEXT",
        "ALTER TABLE history ADD COLUMN content_type TEXT",
        "UPDATE history SET revision = numbered.revision FROM"
        " (SELECT seq, row_number() OVER (ORDER BY seq) AS revision FROM history) AS numbered"
        " WHERE history.seq = numbered.seq",
        "UPDATE history SET etag = current.etag, content_type = current.content_type"
        " FROM current WHERE current.seq = history.seq AND history.data IS NOT NULL",
        *CREATE_FEED,
        "PRAGMA user_version = 3",
    ),
    3: (
        "ALTER TABLE current ADD COLUMN pruned_revision INTEGER NOT NULL DEFAULT 0",
        CREATE_TOMBSTONES,
        # Format 3 kept no key's pruned revision: every key is judged by the newest pruned
        # revision of all, as format 3 judged them.
        "INSERT INTO feed SELECT 'tombstone_floor', value FROM feed WHERE name = 'pruned_revision'",
        # Nor whether it was stopped cleanly: taken as not, so this start begins a new life.
        "INSERT INTO feed VALUES ('closed_head', 0), ('may_lose_commits', 1)",
        "PRAGMA user_version = 4",
    ),
}
"""Format N -> the statements that bring a file of that format to format N + 1."""

INSERT_HISTORY = (
    "INSERT INTO history (seq, key, data, timestamp_ms, expired, revision, etag, content_type)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_CURRENT = (
    "INSERT INTO current (key, data, content_type, etag, seq, expires_at_ms, pruned_revision)"
    " VALUES (?, ?, ?, ?, ?, ?, coalesce((SELECT revision FROM tombstones WHERE key = ?), 0))"
    " ON CONFLICT (key) DO UPDATE SET data = excluded.data,"
    " content_type = excluded.content_type, etag = excluded.etag, seq = excluded.seq,"
    " expires_at_ms = excluded.expires_at_ms"
)
"""A key's value; a key given one again takes back its tombstone's revision (the row stays,
harmless: the larger of the two is what counts)."""
BURY_CURRENT = (
    "INSERT INTO tombstones (key, revision) SELECT key, pruned_revision FROM current"
    " WHERE key = ? AND pruned_revision > 0"
    " ON CONFLICT (key) DO UPDATE SET revision = max(revision, excluded.revision)"
)
"""Before a key's value goes: what was pruned from it, kept as its tombstone."""
DELETE_CURRENT = "DELETE FROM current WHERE key = ?"


class DataDirError(Exception):
    """The data directory cannot be served: the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Write:
    """One change as it goes to disk: its history entry (when `recorded`) and the key's value
    after it (data None for a delete or an expiry)."""

    seq: int
    key: str
    data: bytes | None
    content_type: str | None
    etag: str
    timestamp_ms: int
    expires_at_ms: int | None = None
    """The value's deadline after the change (epoch ms), or None."""
    expired: bool = False
    """Whether the entry records an expiry (timestamp_ms is then the deadline)."""
    recorded: bool = True
    """False for a new deadline: the value is rewritten, the history gets no row."""
    change: Change | None = None
    """The change the history row records (its revision), for the feed; None when not
    `recorded`."""


class DirectoryLock:
    """An exclusive flock(2) on DIR/LOCK, held until `release` (or the process ends)."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise DataDirError(f"cannot create {path}: {error.strerror}") from error
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            raise DataDirError(
                f"{data_dir} is in use by another kvservice (pid {holder}); two processes "
                "on one data directory would overwrite each other's writes"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Let another process take the directory."""
        os.close(self._fd)


def prepare_directory(data_dir: Path) -> None:
    """Create DIR if it is missing; DataDirError if it cannot hold our files."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataDirError(f"cannot create {data_dir}: {error.strerror}") from error
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise DataDirError(f"{data_dir} is not writable by this user (uid {os.getuid()})")


class Journal:
    """The open data file: appends batches, compacts, syncs, and reads itself back."""

    def __init__(self, path: Path, connect: Connect, fsync: str) -> None:
        self.path = path
        self.fsync = fsync
        self.dropped_wal_bytes = 0
        """Bytes at the end of the WAL that recovery left out (a torn or garbled tail)."""
        wal_bytes = _size(path.with_name(path.name + WAL_SUFFIX))
        if wal_bytes == 0:
            _check_not_cut(path)
        self._db: Database = connect(path)
        try:
            self._check_format()
            for pragma in (
                "PRAGMA busy_timeout = 10000",  # a backup may hold a read lock a moment
                "PRAGMA journal_mode = WAL",
                f"PRAGMA synchronous = {SYNCHRONOUS[fsync]}",
                # A WAL that a checkpoint has emptied is cut to nothing: a tail left from an
                # earlier cycle can never be mistaken for damage, and the file stays small.
                "PRAGMA journal_size_limit = 0",
            ):
                self._db.execute(pragma)
            if wal_bytes:
                self.dropped_wal_bytes = self._unrecovered_bytes(path, wal_bytes)
        except DiskError:
            self._db.close()
            raise

    def _check_format(self) -> None:
        (application_id,) = self._db.execute("PRAGMA application_id")[0]
        (version,) = self._db.execute("PRAGMA user_version")[0]
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_schema")}
        if application_id == 0 and version == 0 and not tables:
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
            self._db.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                self._db.execute(statement)
            self._db.execute("COMMIT")
            sync_directory(self.path.parent)  # the new file's name survives a power cut too
            return
        if application_id != APPLICATION_ID:
            raise DataDirError(f"{self.path} is a SQLite file, but not kvservice's data file")
        if version > FORMAT_VERSION:
            raise DataDirError(
                f"{self.path} is in format {version}, written by a newer kvservice; this one "
                f"reads format {FORMAT_VERSION}: run the newer version, or restore a backup"
            )
        if not {"history", "current"} <= tables:
            raise DataDirError(f"{self.path} lacks the history or current table: damaged")
        if version < FORMAT_VERSION:
            self._upgrade(version)

    @property
    def life(self) -> str:
        """The change feed's life (made with the file, renewed by `begin_serving`)."""
        return str(self._db.execute("SELECT value FROM feed WHERE name = 'life'")[0][0])

    def begin_serving(self) -> bool:
        """Mark the file as served under this --fsync policy, synced before any write is
        taken; True if the change feed began a new life: the last process to serve it did so
        under a policy that acknowledges commits before they are synced (`everysec`, `off`)
        and stopped without `close_cleanly`, so commits it had told of may be lost and their
        revisions would be given again (see the module)."""
        renewed = False

        def mark() -> Iterator[None]:
            nonlocal renewed
            (may_have_lost,) = self._db.execute(
                "SELECT value FROM feed WHERE name = 'may_lose_commits'"
            )[0]
            if may_have_lost:
                self._db.execute(f"UPDATE feed SET value = {NEW_LIFE} WHERE name = 'life'")
                renewed = True
            self._db.execute(
                "UPDATE feed SET value = ? WHERE name = 'may_lose_commits'",
                (int(self.fsync != "always"),),
            )
            yield None

        self._synced_transaction(mark())
        return renewed

    def close_cleanly(self, head: int) -> None:
        """After the last commit: record `head`, the newest revision handed out (a refused
        write's may be newer than the file's newest row, and a page may have shown it), and
        that no commit is lost, in one synced transaction; then checkpoint, synced too."""

        def mark() -> Iterator[None]:
            self._db.execute(
                "UPDATE feed SET value = max(value, ?) WHERE name = 'closed_head'", (head,)
            )
            self._db.execute("UPDATE feed SET value = 0 WHERE name = 'may_lose_commits'")
            yield None

        self._synced_transaction(mark(), checkpoint=True)

    def _synced_transaction(self, steps: Iterator[None], checkpoint: bool = False) -> None:
        """A transaction synced at its commit whatever the --fsync policy, and with it every
        commit before it (they are earlier in the same log); with `checkpoint`, the data
        file then synced with them (SQLite syncs it at a checkpoint unless `off`)."""
        self._db.execute("PRAGMA synchronous = FULL")
        try:
            self._transaction(steps)
            if checkpoint:
                self.sync()
        finally:
            self._db.execute(f"PRAGMA synchronous = {SYNCHRONOUS[self.fsync]}")

    def _upgrade(self, version: int) -> None:
        """Bring a file of an older format to this one, in one transaction."""

        def statements() -> Iterator[None]:
            for older in range(version, FORMAT_VERSION):
                for statement in UPGRADES[older]:
                    self._db.execute(statement)
                    yield None
            if version < FIRST_FEED_FORMAT:  # the life is this upgrade's: nobody was told of it
                self._db.execute("UPDATE feed SET value = 0 WHERE name = 'may_lose_commits'")

        self._transaction(statements())
        logger.warning("%s: upgraded from format %d to %d", self.path, version, FORMAT_VERSION)

    def _unrecovered_bytes(self, path: Path, wal_bytes: int) -> int:
        """How much of the WAL SQLite's recovery left out: its size less the header and the
        frames up to the last complete commit (what a checkpoint reports as the log)."""
        header = _read_head(path.with_name(path.name + WAL_SUFFIX), WAL_HEADER_BYTES)
        if len(header) < WAL_HEADER_BYTES or struct.unpack(">I", header[:4])[0] not in WAL_MAGICS:
            return wal_bytes
        page_bytes = struct.unpack(">I", header[8:12])[0]
        try:
            _, frames, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")[0]
        except DiskError as error:  # a full disk refuses the copy; the count is then unknown
            logger.warning("%s: cannot count the log's frames: %s", path, error)
            return 0
        kept = WAL_HEADER_BYTES + max(frames, 0) * (WAL_FRAME_HEADER_BYTES + page_bytes)
        return max(0, wal_bytes - kept)  # type: ignore[no-any-return]  # frames: from SQLite

    # -- reading back -------------------------------------------------------------------------

    def load(self, memory: MemoryStore, cutoff_ms: int) -> int:
        """Restore every current value, the history after `cutoff_ms` and the feed's head
        into `memory`; the last write's seq (0 for none). Raises DataDamaged if a page is
        malformed. What is gone of the feed: what `compact` deleted, and the rows outside the
        window, left out here (by revision, not by seq: a late expiry may be either), each
        known for the store and for its key."""
        for key, data, content_type, etag, expires_at_ms, pruned_revision in self._db.rows(
            "SELECT key, data, content_type, etag, expires_at_ms, pruned_revision FROM current"
        ):
            memory.restore_value(key, Value(bytes(data), content_type, etag, expires_at_ms))
            if pruned_revision:
                memory.restore_pruned(key, pruned_revision)
        for key, data, timestamp_ms, expired, revision, etag, content_type in self._db.rows(
            "SELECT key, data, timestamp_ms, expired, revision, etag, content_type FROM history"
            " WHERE timestamp_ms > ? ORDER BY seq",
            (cutoff_ms,),
        ):
            memory.restore_history(
                Change(
                    key=key,
                    revision=revision,
                    data=_bytes_or_none(data),
                    timestamp_ms=timestamp_ms,
                    etag=etag,
                    content_type=content_type,
                    expired=bool(expired),
                )
            )
        # Oldest first: past the memory store's bound, the lowest go.
        for key, revision in self._db.rows(
            "SELECT key, revision FROM tombstones ORDER BY revision"
        ):
            memory.restore_pruned(key, revision)
        for key, revision in self._db.rows(
            "SELECT key, max(revision) FROM history WHERE timestamp_ms <= ? GROUP BY key",
            (cutoff_ms,),
        ):
            memory.restore_pruned(key, revision)
        feed = dict(self._db.execute("SELECT name, value FROM feed"))
        (newest_row, newest_left_out) = self._db.execute(
            "SELECT coalesce(max(revision), 0),"
            " coalesce((SELECT max(revision) FROM history WHERE timestamp_ms <= ?), 0)"
            " FROM history",
            (cutoff_ms,),
        )[0]
        compacted = int(feed["pruned_revision"])
        head = max(compacted, int(feed["closed_head"]), int(newest_row))
        pruned_revision = max(compacted, int(newest_left_out))
        memory.restore_feed(head, pruned_revision, int(feed["tombstone_floor"]))
        (last_seq,) = self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM history), 0),"
            " coalesce((SELECT max(seq) FROM current), 0))"
        )[0]
        return int(last_seq)

    # -- writing ------------------------------------------------------------------------------

    def append(self, writes: list[Write]) -> None:
        """Commit the writes in one transaction (synced as --fsync says); DiskError if not."""
        self._transaction(self._write_rows(writes))

    def _write_rows(self, writes: list[Write]) -> Iterator[None]:
        for write in writes:
            if write.recorded:
                self._db.execute(
                    INSERT_HISTORY,
                    (
                        write.seq,
                        write.key,
                        write.data,
                        write.timestamp_ms,
                        int(write.expired),
                        write.change.revision if write.change else 0,
                        write.change.etag if write.change else None,
                        write.change.content_type if write.change else None,
                    ),
                )
            if write.data is None:
                self._db.execute(BURY_CURRENT, (write.key,))
                self._db.execute(DELETE_CURRENT, (write.key,))
            else:
                self._db.execute(
                    UPSERT_CURRENT,
                    (
                        write.key,
                        write.data,
                        write.content_type,
                        write.etag,
                        write.seq,
                        write.expires_at_ms,
                        write.key,
                    ),
                )
            yield None

    def _transaction(self, steps: Iterator[None]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for _ in steps:
                pass
            self._db.execute("COMMIT")
        except DiskError:
            # SQLite may have rolled it back already, or the disk is gone: reading back tells.
            with contextlib.suppress(DiskError):
                self._db.execute("ROLLBACK")
            raise

    def compact(self, cutoff_ms: int, max_rows: int = 10_000) -> int:
        """Delete up to `max_rows` of the oldest history rows at or before `cutoff_ms` (one
        short transaction, so that commits wait little); the number deleted. Rows are in
        timestamp order but for expiries journaled after their deadline, which the condition
        catches wherever they are; current values, and their deadlines, are never touched.
        The newest revision deleted is kept for the store, and for each key (its current
        row's `pruned_revision`, or its tombstone)."""

        oldest = (
            "SELECT seq, key, revision FROM history WHERE timestamp_ms <= ? ORDER BY seq LIMIT ?"
        )
        by_key = f"SELECT key, max(revision) AS revision FROM ({oldest}) GROUP BY key"

        def delete() -> Iterator[None]:
            self._db.execute(
                "UPDATE feed SET value = max(value, coalesce((SELECT max(revision) FROM"
                f" ({oldest})), 0)) WHERE name = 'pruned_revision'",
                (cutoff_ms, max_rows),
            )
            self._db.execute(
                "UPDATE current SET pruned_revision = max(current.pruned_revision,"
                f" pruned.revision) FROM ({by_key}) AS pruned WHERE current.key = pruned.key",
                (cutoff_ms, max_rows),
            )
            self._db.execute(
                f"INSERT INTO tombstones (key, revision) SELECT key, revision FROM ({by_key})"
                " WHERE key NOT IN (SELECT key FROM current)"
                " ON CONFLICT (key) DO UPDATE SET revision = max(revision, excluded.revision)",
                (cutoff_ms, max_rows),
            )
            self._db.execute(
                f"DELETE FROM history WHERE seq IN (SELECT seq FROM ({oldest}))",
                (cutoff_ms, max_rows),
            )
            yield None

        self._transaction(delete())
        (deleted,) = self._db.execute("SELECT changes()")[0]
        return int(deleted)

    def bound_tombstones(self) -> None:
        """Past MAX_TOMBSTONES tombstones, let the lowest revisions go down to nine tenths of
        it (so that this sort is rare), raising `tombstone_floor` to the newest let go: those
        keys are then judged by it, as the memory store judges the keys it let go."""
        (count,) = self._db.execute("SELECT count(*) FROM tombstones")[0]
        if count <= MAX_TOMBSTONES:
            return
        excess = count - (MAX_TOMBSTONES - MAX_TOMBSTONES // 10)
        lowest = "SELECT key, revision FROM tombstones ORDER BY revision LIMIT ?"

        def let_go() -> Iterator[None]:
            self._db.execute(
                "UPDATE feed SET value = max(value, (SELECT max(revision) FROM"
                f" ({lowest}))) WHERE name = 'tombstone_floor'",
                (excess,),
            )
            self._db.execute(
                f"DELETE FROM tombstones WHERE key IN (SELECT key FROM ({lowest}))", (excess,)
            )
            yield None

        self._transaction(let_go())

    def shrink(self, max_pages: int = 100_000) -> None:
        """Give free pages back to the file system once they are half the file, up to
        `max_pages` of them, in one transaction (one sync)."""
        (free,) = self._db.execute("PRAGMA freelist_count")[0]
        (pages,) = self._db.execute("PRAGMA page_count")[0]
        if not free or 2 * free < pages:
            return

        def vacuum() -> Iterator[None]:
            # Python's sqlite3 steps this pragma once, which frees one page; apsw steps it to
            # the end. Either way, at most `free` pages go.
            for _ in range(min(free, max_pages)):
                self._db.execute("PRAGMA incremental_vacuum(1)")
            yield None

        self._transaction(vacuum())

    def sync(self) -> None:
        """Sync the WAL and copy it into the data file (a checkpoint that waits on nobody)."""
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def probe(self) -> None:
        """Commit a small write and take it back: DiskError while the disk still refuses."""
        room = 64 * 1024  # a batch's worth of room, not just a page's

        def write_and_erase() -> Iterator[None]:
            self._db.execute(
                "INSERT INTO history (seq, key, data, timestamp_ms) VALUES (-1, '', ?, 0)",
                (bytes(room),),
            )
            self._db.execute("DELETE FROM history WHERE seq = -1")
            yield None

        self._transaction(write_and_erase())

    def file_bytes(self) -> dict[str, int]:
        """The size of the data file and of its WAL."""
        return {
            "data": _size(self.path),
            "wal": _size(self.path.with_name(self.path.name + WAL_SUFFIX)),
        }

    def close(self) -> None:
        self._db.close()


def open_journal(path: Path, connect: Connect, fsync: str) -> Journal:
    """The journal at `path`, checked; DataDirError when it cannot be served as it is."""
    try:
        return Journal(path, connect, fsync)
    except DiskError as error:
        raise refusal(path, error) from error


def refusal(path: Path, error: DiskError) -> DataDirError:
    """The refusal to start on a data file whose opening or reading failed."""
    if isinstance(error, DataDamaged):
        return damaged(path, error)
    return DataDirError(f"cannot open {path}: {error}")


def damaged(path: Path, error: Exception) -> DataDirError:
    """The refusal for a data file SQLite reports as damaged."""
    return DataDirError(
        f"{path} is damaged ({error}); refusing to start on part of the data: restore it "
        "from a backup (see docs/durability.md)"
    )


def _check_not_cut(path: Path) -> None:
    """With no WAL to complete it, the data file must be as long as its header says."""
    head = _read_head(path, 100)
    if not head:
        return  # a new file
    if len(head) < 100 or not head.startswith(SQLITE_HEADER):
        raise DataDirError(f"{path} is not a SQLite database (its first bytes are wrong)")
    (page_bytes,) = struct.unpack_from(">H", head, 16)
    page_bytes = 65536 if page_bytes == 1 else page_bytes
    change_counter, pages = struct.unpack_from(">II", head, 24)
    (valid_for,) = struct.unpack_from(">I", head, 92)
    if change_counter == valid_for and _size(path) < pages * page_bytes:
        raise DataDirError(
            f"{path} is {_size(path)} bytes, shorter than the {pages * page_bytes} its header "
            "declares: the file was cut; restore it from a backup (see docs/durability.md)"
        )


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that the names just made or renamed in it are durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_head(path: Path, count: int) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(count)
    except FileNotFoundError:
        return b""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _bytes_or_none(data: bytes | None) -> bytes | None:
    return None if data is None else bytes(data)


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup holds."""

    keys: int
    history_entries: int
    bytes: int


def backup(data_dir: Path, target: Path) -> BackupReport:
    """Copy DIR's data file to `target` with SQLite's online backup API: a consistent copy as
    of one commit, taken while a kvservice serves DIR (it reads; it takes no lock but
    SQLite's own). The copy is a self-contained file (no WAL); it appears under its name only
    once complete and synced. Start a kvservice on a directory holding it as DATA_FILE to
    restore.

    The copy's change feed gets a life of its own: its revisions go on from the backup's
    while the original's go on from its own, so a token the original hands out after the
    backup would name different changes on the copy. On the copy it is ResumeGone (410):
    a client starts again from the restored head, never across a silent gap."""
    source_path = (data_dir / DATA_FILE).resolve()
    if not source_path.exists():
        raise DataDirError(f"{data_dir} holds no {DATA_FILE}: nothing to back up")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        # mode=rw: never create a file that is not there; read-only would fail on a WAL
        # file whose -shm the serving process has not made yet.
        source = sqlite3.connect(f"{source_path.as_uri()}?mode=rw", uri=True)
        try:
            source.execute("PRAGMA busy_timeout = 10000")
            copy = sqlite3.connect(partial, isolation_level=None)
            try:
                source.backup(copy)
                copy.execute(f"UPDATE feed SET value = {NEW_LIFE} WHERE name = 'life'")
                # The copy is one commit, synced below before it gets its name: nothing it
                # holds can be lost, whatever the policy the original serves under.
                copy.execute("UPDATE feed SET value = 0 WHERE name = 'may_lose_commits'")
                copy.execute("PRAGMA journal_mode = DELETE")  # one file, no WAL beside it
                (application_id,) = copy.execute("PRAGMA application_id").fetchone()
                if application_id != APPLICATION_ID:
                    raise DataDirError(f"{source_path} is not kvservice's data file")
                (keys,) = copy.execute("SELECT count(*) FROM current").fetchone()
                (entries,) = copy.execute("SELECT count(*) FROM history").fetchone()
            finally:
                copy.close()
        finally:
            source.close()
        with open(partial, "rb") as file:
            os.fsync(file.fileno())
        os.replace(partial, target)
        sync_directory(target.parent)  # the rename itself survives a power cut
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise DataDirError(f"backup of {source_path} failed: {error}") from error
    return BackupReport(keys, entries, _size(target))


def now_s() -> int:
    """Unix time in whole seconds (for `last save` figures)."""
    return int(time.time())
