"""What only the durable backend promises (the contract suite covers the rest): a restart
gives back values, ETags, the history window and the budget; the directory is one process's;
a file it cannot trust stops the start; backups restore exactly; the file stays bounded; a
read never shows a write before it is synced; a full disk refuses writes and recovers. The
change feed across a restart: the life is kept unless told changes may have been lost (then
a new one), a revision is never given twice, and each key's resume is judged exactly.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvservice.store import (
    Change,
    Expiry,
    FeedPosition,
    FeedSelector,
    HistoryEntry,
    KeyNotFound,
    Precondition,
    PreconditionFailed,
    ResumeGone,
    Store,
    StoreFull,
    StoreUnavailable,
    Value,
)
from kvservice.store.durable import DataDirError, DurableStore, backup, journal
from kvservice.store.durable.journal import DATA_FILE, FORMAT_VERSION
from tests.support.clock import FakeClock
from tests.support.simulated_disk import SimulatedDisk

WINDOW_MS = 60_000
KEYS = [f"key{number}" for number in range(20)] + ["kept", "unsure", "resumed"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def open_store(data_dir: Path, clock: FakeClock, **options: object) -> DurableStore:
    return DurableStore(data_dir, history_window_ms=WINDOW_MS, clock=clock, **options)  # type: ignore[arg-type]


@pytest.fixture
def store(data_dir: Path, clock: FakeClock) -> Iterator[DurableStore]:
    opened = open_store(data_dir, clock)
    yield opened
    opened.close()


Snapshot = dict[str, tuple[Value | None, list[HistoryEntry]]]


def snapshot(store: Store) -> Snapshot:
    """Every key's value (None: none) and history, as a client can read them."""
    state: Snapshot = {}
    for key in KEYS:
        try:
            value: Value | None = store.get(key)
        except KeyNotFound:
            value = None
        shown = [HistoryEntry(e.data, e.timestamp_ms, e.expired) for e in store.history(key)]
        state[key] = (value, shown)
    return state


def write_some(store: Store, clock: FakeClock) -> None:
    """Puts, overwrites and deletes, some of whose history expires."""
    for round_number in range(3):
        for number, key in enumerate(KEYS):
            store.put(key, b"%d-%d" % (round_number, number) * number, "text/plain")
            if number % 7 == 0:
                store.delete(key)
        clock.advance(WINDOW_MS // 2)


def test_a_restart_gives_back_values_etags_history_and_the_budget(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock)
    write_some(store, clock)
    before, stats_before = snapshot(store), store.stats()
    etag = store.get("key3").etag
    store.close()

    reopened = open_store(data_dir, clock)
    try:
        assert snapshot(reopened) == before
        after = reopened.stats()
        assert (after.keys, after.used_bytes, after.history_entries) == (
            stats_before.keys,
            stats_before.used_bytes,
            stats_before.history_entries,
        )
        # An ETag from before the restart still matches; a stale one still does not.
        reopened.put("key3", b"new", precondition=Precondition(if_match=frozenset({etag})))
        with pytest.raises(PreconditionFailed):
            reopened.put("key3", b"newer", precondition=Precondition(if_match=frozenset({etag})))
    finally:
        reopened.close()


def test_history_that_expired_while_down_is_gone(data_dir: Path, clock: FakeClock) -> None:
    store = open_store(data_dir, clock)
    store.put("old", b"1")
    clock.advance(WINDOW_MS - 1000)
    store.put("young", b"2")
    store.delete("old")
    store.close()
    clock.advance(2000)  # the first writes leave the window while nothing runs

    reopened = open_store(data_dir, clock)
    try:
        assert reopened.history("old") == [HistoryEntry(None, clock.now_ms - 2000)]
        assert [entry.data for entry in reopened.history("young")] == [b"2"]
        assert reopened.stats().history_entries == 2
    finally:
        reopened.close()


def test_a_second_store_on_the_same_directory_is_refused(
    store: DurableStore, data_dir: Path, clock: FakeClock
) -> None:
    with pytest.raises(DataDirError, match="in use by another kvservice"):
        open_store(data_dir, clock)


def test_a_file_of_a_newer_format_is_refused(data_dir: Path, clock: FakeClock) -> None:
    open_store(data_dir, clock).close()
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        connection.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    with pytest.raises(DataDirError, match="written by a newer kvservice"):
        open_store(data_dir, clock)


def test_a_foreign_sqlite_file_is_refused(data_dir: Path, clock: FakeClock) -> None:
    data_dir.mkdir()
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        connection.execute("CREATE TABLE notes (text)")
    with pytest.raises(DataDirError, match="not kvservice's data file"):
        open_store(data_dir, clock)


def test_a_damaged_page_stops_the_start(data_dir: Path, clock: FakeClock) -> None:
    store = open_store(data_dir, clock)
    for number in range(300):
        store.put(f"key{number}", bytes(500))
    store.close()  # checkpointed: everything is in the data file, no WAL
    path = data_dir / DATA_FILE
    data = bytearray(path.read_bytes())
    data[3 * 4096 : 4 * 4096] = b"\xa5" * 4096  # a page in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(DataDirError, match="is damaged"):
        open_store(data_dir, clock)


def test_a_backup_taken_while_serving_restores_every_key_etag_and_entry(
    store: DurableStore, tmp_path: Path, data_dir: Path, clock: FakeClock
) -> None:
    write_some(store, clock)
    started = threading.Event()

    def keep_writing() -> None:
        for number in range(300):
            store.put("busy", b"%d" % number)
            started.set()

    writing = threading.Thread(target=keep_writing)
    writing.start()
    assert started.wait(5)
    report = backup(data_dir, tmp_path / "copy.sqlite3")
    writing.join()
    assert report.bytes > 0
    store.put("after", b"not in the backup")
    expected = snapshot(store)

    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    (tmp_path / "copy.sqlite3").rename(restored_dir / DATA_FILE)
    restored = open_store(restored_dir, clock)
    try:
        assert snapshot(restored) == expected  # KEYS: neither "busy" nor "after"
        # Of the writes that went on during the backup, a prefix: the copy is of one commit.
        busy = restored.history("busy")
        assert [entry.data for entry in busy] == [b"%d" % n for n in reversed(range(len(busy)))]
        assert restored.get("busy").data == busy[0].data
        # A token of the original names changes the copy never had: another life, never a gap.
        assert restored.feed_head().life != store.feed_head().life
        with pytest.raises(ResumeGone, match="another life"):
            restored.changes(FeedSelector(key="after"), store.feed_head())
    finally:
        restored.close()


def test_compaction_keeps_the_file_to_the_window_and_current_values(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock, housekeeping_interval_s=0.01)
    try:
        for number in range(4000):
            store.put(KEYS[number % len(KEYS)], b"%d" % number)
            clock.advance(WINDOW_MS // 500)  # the window holds the last 500 writes
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and history_rows(data_dir) > 501:
            time.sleep(0.02)
        assert history_rows(data_dir) <= 501
    finally:
        store.close()


def history_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (count,) = connection.execute("SELECT count(*) FROM history").fetchone()
    return int(count)


def test_a_read_never_shows_a_write_before_it_is_synced(tmp_path: Path, clock: FakeClock) -> None:
    disk = SimulatedDisk()
    store = open_store(tmp_path / "data", clock, connect=disk.connect())
    try:
        store.put("key", b"old")
        disk.hold_syncs()
        writer = threading.Thread(target=store.put, args=("key", b"new"))
        writer.start()
        assert disk.sync_waiting.wait(5)
        read: list[bytes] = []
        reader = threading.Thread(target=lambda: read.append(store.get("key").data))
        reader.start()
        reader.join(0.3)
        assert read == []  # the reply waits for the sync of what it saw
        disk.release_syncs()
        writer.join(5)
        reader.join(5)
        assert read == [b"new"]
    finally:
        disk.release_syncs()
        store.close()


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers(
    tmp_path: Path, clock: FakeClock
) -> None:
    disk = SimulatedDisk()
    store = open_store(
        tmp_path / "data", clock, connect=disk.connect(), housekeeping_interval_s=0.05
    )
    acknowledged: dict[str, bytes] = {}
    try:
        disk.capacity_bytes = disk.used_bytes + 200_000
        with pytest.raises(StoreFull, match="disk under --data-dir is full"):
            for number in range(10_000):
                key = f"k{number}"
                store.put(key, b"x" * 900)
                acknowledged[key] = b"x" * 900
        assert len(acknowledged) > 10
        with pytest.raises(StoreFull):  # refused at once while the disk is full
            store.put("more", b"y")
        assert all(store.get(key).data == data for key, data in acknowledged.items())
        assert store.stats().keys == len(acknowledged)  # nothing refused is shown

        disk.capacity_bytes = None  # space returns
        deadline = time.monotonic() + 5
        while True:
            try:
                store.put("more", b"y")
                break
            except StoreFull:
                assert time.monotonic() < deadline, "writes did not resume"
                time.sleep(0.02)
        acknowledged["more"] = b"y"
    finally:
        store.close()
    reopened = open_store(tmp_path / "data", clock, connect=disk.connect())
    try:
        assert {key: reopened.get(key).data for key in acknowledged} == acknowledged
        assert reopened.stats().keys == len(acknowledged)
    finally:
        reopened.close()


def test_a_failed_sync_refuses_the_write_and_memory_shows_only_what_the_file_holds(
    tmp_path: Path, clock: FakeClock
) -> None:
    disk = SimulatedDisk()
    data_dir = tmp_path / "data"
    store = open_store(data_dir, clock, connect=disk.connect(), housekeeping_interval_s=0.05)
    try:
        kept = store.put("kept", b"1")
        disk.fail_syncs(1)
        with pytest.raises(StoreUnavailable, match="may or may not have been kept"):
            store.put("unsure", b"2")
        shown = snapshot(store)  # memory as rebuilt from the file, not as it was before
        deadline = time.monotonic() + 5
        while True:  # full service comes back by itself once a probe commits
            try:
                store.put("resumed", b"3")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "writes did not resume"
                time.sleep(0.02)
        assert store.get("kept") == kept
    finally:
        store.close()
    reopened = open_store(data_dir, clock, connect=disk.connect())
    try:
        on_disk = snapshot(reopened)
        assert on_disk["unsure"] == shown["unsure"]  # memory was never ahead of the file
        assert on_disk["kept"][0] == kept
        assert reopened.get("resumed").data == b"3"
    finally:
        reopened.close()


def test_a_file_grown_by_a_burst_shrinks_once_its_history_leaves_the_window(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock, housekeeping_interval_s=0.01)
    try:
        for number in range(3000):  # about 3 MB of history, all inside the window
            store.put(KEYS[number % len(KEYS)], bytes(1000))
        time.sleep(0.1)
        peak = (data_dir / DATA_FILE).stat().st_size + wal_size(data_dir)
        clock.advance(WINDOW_MS + 1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and history_rows(data_dir) > 0:
            time.sleep(0.02)
        time.sleep(0.2)  # a housekeeping pass after the last delete gives the pages back
    finally:
        store.close()  # checkpoints: what is left is the data file alone
    assert peak > 2_000_000
    assert (data_dir / DATA_FILE).stat().st_size < peak // 10


def wal_size(data_dir: Path) -> int:
    wal = data_dir / (DATA_FILE + "-wal")
    return wal.stat().st_size if wal.exists() else 0


# -- the change feed ----------------------------------------------------------------------------


def test_a_restart_keeps_the_life_and_the_revisions_and_goes_on_from_the_head(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock)
    try:
        store.put("k", b"1", "text/plain")
        store.put("other", b"v")
        store.delete("k")
        store.put("dies", b"v", expiry=Expiry(at_ms=clock.now_ms + 1_000))
        before = store.changes(FeedSelector(), FeedPosition(store.feed_head().life, 0))
    finally:
        store.close()
    clock.advance(5_000)  # "dies" passes its deadline while the store is down
    reopened = open_store(data_dir, clock)
    try:
        head = reopened.feed_head()
        assert head.life == before.position.life
        old_head = before.position.revision
        after = reopened.changes(FeedSelector(), FeedPosition(head.life, 0))
        assert after.changes[: len(before.changes)] == before.changes, "with their revisions"
        assert after.changes[len(before.changes) :] == [
            Change(
                key="dies",
                revision=old_head + 1,
                data=None,
                timestamp_ms=clock.now_ms - 4_000,
                expired=True,
            )
        ], "expired at start, after the old head"
        written = reopened.put("k", b"2")
        assert reopened.feed_head().revision == old_head + 2
        assert written.etag not in {change.etag for change in before.changes}
        page = reopened.changes(FeedSelector(key="k"), before.position)
        assert [(change.data, change.revision) for change in page.changes] == [(b"2", old_head + 2)]
    finally:
        reopened.close()


def test_a_resume_from_before_what_compaction_deleted_is_gone_after_a_restart(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock, housekeeping_interval_s=0.01)
    try:
        token = store.feed_head()
        store.put("k", b"v")
        clock.advance(WINDOW_MS)
        store.put("later", b"v")
        deadline = time.monotonic() + 5
        while oldest_revision(data_dir) == 1:  # the writer compacts the file
            assert time.monotonic() < deadline, "the history was never compacted"
            time.sleep(0.01)
    finally:
        store.close()
    reopened = open_store(data_dir, clock)
    try:
        with pytest.raises(ResumeGone, match="left the history window"):
            reopened.changes(FeedSelector(), token)
        with pytest.raises(ResumeGone):
            reopened.changes(FeedSelector(key="k"), token)
        assert reopened.changes(FeedSelector(), FeedPosition(token.life, 1)).changes[0].key == (
            "later"
        )
    finally:
        reopened.close()


def oldest_revision(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (oldest,) = connection.execute("SELECT min(revision) FROM history").fetchone()
    return int(oldest)


def test_listeners_are_told_once_a_change_is_committed(data_dir: Path, clock: FakeClock) -> None:
    disk = SimulatedDisk()
    store = open_store(data_dir, clock, connect=disk.connect(), housekeeping_interval_s=0.05)
    told: list[Change] = []

    class Recorder:
        def changed(self, change: Change) -> None:
            told.append(change)

        def interrupted(self) -> None:
            raise AssertionError("a durable store is never interrupted")

    store.add_change_listener(Recorder())
    try:
        store.put("kept", b"v")
        disk.capacity_bytes = disk.used_bytes
        with pytest.raises(StoreFull):
            store.put("refused", b"x" * 100_000)
        disk.capacity_bytes = None
        assert [change.key for change in told] == ["kept"], "not the write the disk refused"
        deadline = time.monotonic() + 5
        while True:  # the disk is probed before writes are taken again
            try:
                store.put("after", b"v")
                break
            except StoreFull:
                assert time.monotonic() < deadline, "writes did not resume"
                time.sleep(0.02)
        assert [change.key for change in told] == ["kept", "after"]
        # A page of changes may have shown the refused write's revision (--fsync everysec
        # reads do not wait): it is never given to another change.
        assert told[1].revision == told[0].revision + 2
        everything = FeedPosition(store.feed_head().life, 0)
        assert told == store.changes(FeedSelector(), everything).changes
    finally:
        store.close()


def test_a_file_of_the_format_before_the_feed_gets_revisions_in_write_order(
    data_dir: Path, clock: FakeClock
) -> None:
    data_dir.mkdir()
    now = clock.now_ms
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        for statement in (
            "CREATE TABLE history (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, data BLOB,"
            " timestamp_ms INTEGER NOT NULL, expired INTEGER NOT NULL DEFAULT 0)",
            "CREATE TABLE current (key TEXT PRIMARY KEY, data BLOB NOT NULL, content_type TEXT,"
            " etag TEXT NOT NULL, seq INTEGER NOT NULL, expires_at_ms INTEGER) WITHOUT ROWID",
            "PRAGMA application_id = 1802916726",
            "PRAGMA user_version = 2",
            # seqs with gaps (a deadline change journals no history row), out of key order
            f"INSERT INTO history VALUES (3, 'b', x'31', {now}, 0)",
            f"INSERT INTO history VALUES (7, 'a', x'32', {now}, 0)",
            f"INSERT INTO history VALUES (8, 'b', NULL, {now}, 0)",
            f"INSERT INTO history VALUES (12, 'a', x'33', {now}, 0)",
            "INSERT INTO current VALUES ('a', x'33', 'text/plain', 'old-12', 12, NULL)",
        ):
            connection.execute(statement)
    store = open_store(data_dir, clock)
    try:
        head = store.feed_head()
        assert head.revision == 4
        assert store.changes(FeedSelector(), FeedPosition(head.life, 0)).changes == [
            Change(key="b", revision=1, data=b"1", timestamp_ms=now),
            Change(key="a", revision=2, data=b"2", timestamp_ms=now),
            Change(key="b", revision=3, data=None, timestamp_ms=now),
            Change(
                key="a",
                revision=4,
                data=b"3",
                timestamp_ms=now,
                etag="old-12",
                content_type="text/plain",
            ),
        ], "the current value's row gets its ETag; older writes' are not known"
        assert store.get("a").etag == "old-12"
        assert store.put("a", b"4").etag != "old-12"
    finally:
        store.close()
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
    assert version == FORMAT_VERSION == 4
    reopened = open_store(data_dir, clock)
    try:
        assert reopened.feed_head() == FeedPosition(head.life, 5), "the life made once, kept"
    finally:
        reopened.close()


def recorder(store: DurableStore) -> list[Change]:
    """The changes `store` tells its listeners of, as they are told."""
    told: list[Change] = []

    class Recorder:
        def changed(self, change: Change) -> None:
            told.append(change)

        def interrupted(self) -> None:
            raise AssertionError("a durable store is never interrupted")

    store.add_change_listener(Recorder())
    return told


def test_a_crash_that_may_have_lost_told_changes_begins_a_new_life(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The real file layer; the crash is the data directory copied as it was at its last
    sync (the start's mark is synced; with everysec the later commits are not)."""
    data_dir, crashed_dir = tmp_path / "data", tmp_path / "crashed"
    store = open_store(data_dir, clock, fsync="everysec")
    for number in range(1, 6):
        store.put("p", b"old%d" % number)
    store.close()
    store = open_store(data_dir, clock, fsync="everysec", housekeeping_interval_s=3600)
    try:
        told = recorder(store)
        crashed_dir.mkdir()
        for name in (DATA_FILE, DATA_FILE + "-wal"):  # SQLite rebuilds the -shm
            if (data_dir / name).exists():
                shutil.copyfile(data_dir / name, crashed_dir / name)
        for number in range(6, 9):  # acknowledged and told, never synced
            store.put("p", b"lost%d" % number)
        token = FeedPosition(store.feed_head().life, told[-1].revision)
    finally:
        store.close()

    restarted = open_store(crashed_dir, clock, fsync="everysec")
    try:
        assert restarted.get("p").data == b"old5", "the crash took the last writes back"
        for number in range(6, 10):
            restarted.put("p", b"new%d" % number)
        assert restarted.feed_head().life != token.life
        with pytest.raises(ResumeGone, match="another life"):
            restarted.changes(FeedSelector(key="p"), token)
    finally:
        restarted.close()


@pytest.mark.parametrize("fsync", ["always", "everysec", "off"])
def test_a_power_cut_keeps_the_life_only_where_nothing_told_can_be_lost(
    tmp_path: Path, clock: FakeClock, fsync: str
) -> None:
    """The simulated disk: a power cut keeps what was synced, nothing more."""
    disk = SimulatedDisk()
    data_dir = tmp_path / "data"
    store = open_store(data_dir, clock, fsync=fsync, connect=disk.connect())
    try:
        told = recorder(store)
        store.put("p", b"v")
        token = FeedPosition(store.feed_head().life, told[-1].revision)
        after_the_cut = disk.crash("synced", random.Random(0))
    finally:
        store.close()
    restarted = open_store(data_dir, clock, fsync=fsync, connect=after_the_cut.connect())
    try:
        restarted.put("p", b"after")
        if fsync == "always":  # the write was synced before it was told
            page = restarted.changes(FeedSelector(key="p"), token)
            assert [change.data for change in page.changes] == [b"after"]
        else:  # its revision went to "after": the token would skip it
            with pytest.raises(ResumeGone, match="another life"):
                restarted.changes(FeedSelector(key="p"), token)
    finally:
        restarted.close()


@pytest.mark.parametrize("fsync", ["everysec", "off"])
def test_a_clean_stop_keeps_the_life_whatever_the_policy(
    data_dir: Path, clock: FakeClock, fsync: str
) -> None:
    store = open_store(data_dir, clock, fsync=fsync)
    try:
        store.put("p", b"v")
        token = store.feed_head()
    finally:
        store.close()
    for _ in range(2):
        reopened = open_store(data_dir, clock, fsync=fsync)
        try:
            assert reopened.changes(FeedSelector(key="p"), token).changes == []
            token = reopened.feed_head()
        finally:
            reopened.close()


def test_a_revision_a_refused_write_took_is_not_given_again_after_a_restart(
    data_dir: Path, clock: FakeClock
) -> None:
    disk = SimulatedDisk()
    store = open_store(data_dir, clock, connect=disk.connect(), housekeeping_interval_s=3600)
    try:
        kept = store.put("kept", b"v")
        disk.capacity_bytes = disk.used_bytes
        with pytest.raises(StoreFull):  # a page of changes may have shown its revision
            store.put("refused", b"x" * 100_000)
        disk.capacity_bytes = None
        handed_out = store.feed_head().revision
    finally:
        store.close()
    reopened = open_store(data_dir, clock, connect=disk.connect())
    try:
        told = recorder(reopened)
        assert handed_out == 2 and reopened.get("kept") == kept
        reopened.put("after", b"v")
        assert [change.revision for change in told] == [3]
    finally:
        reopened.close()


def test_a_backup_restored_keeps_its_own_life_across_restarts(
    data_dir: Path, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(data_dir, clock, fsync="everysec")
    try:
        store.put("k", b"v")
        backup(data_dir, tmp_path / "copy.sqlite3")
        original = store.feed_head()
    finally:
        store.close()
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    (tmp_path / "copy.sqlite3").rename(restored_dir / DATA_FILE)
    lives = []
    for _ in range(2):
        restored = open_store(restored_dir, clock, fsync="everysec")
        lives.append(restored.feed_head().life)
        restored.close()
    assert lives[0] != original.life, "the copy is a life of its own"
    assert lives[1] == lives[0], "made once, by the backup"
    assert "closed cleanly" not in caplog.text


def test_a_restart_keeps_each_keys_pruned_revision_so_a_key_with_no_writes_since_resumes(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock, housekeeping_interval_s=0.01)
    try:
        store.put("quiet", b"v")
        store.put("forgotten", b"v")
        store.delete("forgotten")
        token = store.feed_head()
        store.put("busy", b"v")
        store.put("vanished", b"v")
        store.delete("vanished")
        clock.advance(WINDOW_MS)
        store.put("later", b"v")  # every write before it has left the window
        wait_for_compaction(data_dir, through=token.revision + 3)
        check_resumes_from(store, token)  # as an uninterrupted process answers
    finally:
        store.close()
    reopened = open_store(data_dir, clock)
    try:
        check_resumes_from(reopened, token)
    finally:
        reopened.close()


def test_a_restart_judges_each_key_by_its_own_rows_left_out_of_the_window(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock, housekeeping_interval_s=3600)  # no compaction
    try:
        store.put("quiet", b"v")
        store.put("forgotten", b"v")
        store.delete("forgotten")
        token = store.feed_head()
        store.put("busy", b"v")
        store.put("vanished", b"v")
        store.delete("vanished")
    finally:
        store.close()
    clock.advance(WINDOW_MS)  # the window passes while the store is down
    reopened = open_store(data_dir, clock)
    try:
        reopened.put("later", b"v")
        check_resumes_from(reopened, token)
    finally:
        reopened.close()


def check_resumes_from(store: Store, token: FeedPosition) -> None:
    """Keys with no writes since `token` resume with nothing; keys whose writes since left
    the window are gone; so is a prefix (judged by the newest revision pruned of any)."""
    for key in ("quiet", "forgotten", "never-written"):
        assert store.changes(FeedSelector(key=key), token).changes == [], key
    for key in ("busy", "vanished"):
        with pytest.raises(ResumeGone, match="left the history window"):
            store.changes(FeedSelector(key=key), token)
    with pytest.raises(ResumeGone):
        store.changes(FeedSelector(prefix="q"), token)


def wait_for_compaction(data_dir: Path, through: int) -> None:
    deadline = time.monotonic() + 5
    while oldest_revision(data_dir) <= through:  # the writer compacts the file
        assert time.monotonic() < deadline, "the history was never compacted"
        time.sleep(0.01)


def test_past_max_tombstones_the_file_lets_the_lowest_go_and_raises_the_floor(
    data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "MAX_TOMBSTONES", 2)
    store = open_store(data_dir, clock, housekeeping_interval_s=0.01)
    try:
        start = store.feed_head()
        for key in ["a", "b", "c"]:  # tombstones a: 2, b: 4, c: 6; a's goes
            store.put(key, b"v")
            store.delete(key)
        clock.advance(WINDOW_MS)
        store.put("later", b"v")
        wait_for_compaction(data_dir, through=6)
        deadline = time.monotonic() + 5
        while tombstones(data_dir) != {"b": 4, "c": 6}:
            assert time.monotonic() < deadline, f"tombstones: {tombstones(data_dir)}"
            time.sleep(0.01)
    finally:
        store.close()
    reopened = open_store(data_dir, clock)
    try:
        after_a = FeedPosition(start.life, 2)
        for key in ["a", "nobody"]:  # judged by the floor: a's revision
            with pytest.raises(ResumeGone):
                reopened.changes(FeedSelector(key=key), start)
            assert reopened.changes(FeedSelector(key=key), after_a).changes == []
        with pytest.raises(ResumeGone):  # its own tombstone
            reopened.changes(FeedSelector(key="c"), after_a)
    finally:
        reopened.close()


def tombstones(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        return dict(connection.execute("SELECT key, revision FROM tombstones"))


def test_a_file_of_the_format_before_per_key_pruning_is_judged_by_its_pruned_revision(
    data_dir: Path, clock: FakeClock
) -> None:
    data_dir.mkdir()
    now = clock.now_ms
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        for statement in (
            "CREATE TABLE history (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, data BLOB,"
            " timestamp_ms INTEGER NOT NULL, expired INTEGER NOT NULL DEFAULT 0,"
            " revision INTEGER NOT NULL DEFAULT 0, etag TEXT, content_type TEXT)",
            "CREATE TABLE current (key TEXT PRIMARY KEY, data BLOB NOT NULL, content_type TEXT,"
            " etag TEXT NOT NULL, seq INTEGER NOT NULL, expires_at_ms INTEGER) WITHOUT ROWID",
            "CREATE TABLE feed (name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
            "INSERT INTO feed VALUES ('life', 'formerlife'), ('pruned_revision', 5)",
            "PRAGMA application_id = 1802916726",
            "PRAGMA user_version = 3",
            f"INSERT INTO history VALUES (8, 'a', x'31', {now}, 0, 6, 'old-8', NULL)",
            f"INSERT INTO history VALUES (9, 'b', x'32', {now}, 0, 7, 'old-9', NULL)",
            "INSERT INTO current VALUES ('a', x'31', NULL, 'old-8', 8, NULL)",
            "INSERT INTO current VALUES ('b', x'32', NULL, 'old-9', 9, NULL)",
        ):
            connection.execute(statement)
    store = open_store(data_dir, clock)
    try:
        head = store.feed_head()
        assert head.revision == 7
        assert head.life != "formerlife", "format 3 did not say it was stopped cleanly"
        assert [
            (change.key, change.revision)
            for change in store.changes(FeedSelector(), FeedPosition(head.life, 5)).changes
        ] == [("a", 6), ("b", 7)]
        for key in ["a", "nobody"]:  # what format 3 pruned is not known per key
            with pytest.raises(ResumeGone):
                store.changes(FeedSelector(key=key), FeedPosition(head.life, 4))
        assert store.changes(FeedSelector(key="nobody"), FeedPosition(head.life, 5)).changes == []
        assert store.get("a").etag == "old-8"
    finally:
        store.close()
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
    assert version == FORMAT_VERSION == 4
    reopened = open_store(data_dir, clock)
    try:
        assert reopened.feed_head() == head, "the life renewed once, at the upgrade"
    finally:
        reopened.close()
