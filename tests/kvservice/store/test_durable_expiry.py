"""Keys that expire, across restarts of the durable backend (the contract suite covers a
running store): deadlines are kept as absolute times, with writes and with `expire`; a key
whose deadline passed while the service was down is expired at start, its entry at the
deadline; expiries are journaled, so the entry outlives compaction of the write before it;
a file of the format before deadlines is upgraded in place; on a full disk, expiries
(noticed by reads, or by the sweeper) refuse nobody and rebuild nothing, alone or beside a
client's refused write, and a restart derives them again once. Real files (the full-disk
cases on tests/support's simulated disk), a hand-driven clock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvservice.store import (
    NO_EXPIRY,
    Expiry,
    HistoryEntry,
    KeyNotFound,
    StoreError,
    StoreFull,
    Value,
)
from kvservice.store.durable import DurableStore
from kvservice.store.durable.database import Connect, open_sqlite
from kvservice.store.durable.journal import DATA_FILE, FORMAT_VERSION
from tests.support.clock import START_MS, FakeClock
from tests.support.simulated_disk import SimulatedDisk

WINDOW_MS = 60_000
DEADLINE_MS = START_MS + 5_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def open_store(
    data_dir: Path,
    clock: FakeClock,
    housekeeping_interval_s: float = 1.0,
    connect: Connect = open_sqlite,
) -> DurableStore:
    return DurableStore(
        data_dir,
        history_window_ms=WINDOW_MS,
        clock=clock,
        connect=connect,
        housekeeping_interval_s=housekeeping_interval_s,
    )


@pytest.fixture
def disk(caplog: pytest.LogCaptureFixture) -> SimulatedDisk:
    """A disk of tests/support that a test can fill; the commits it refuses are logged as
    errors, not shown."""
    caplog.set_level(logging.CRITICAL)
    return SimulatedDisk()


def expired_at(deadline_ms: int) -> HistoryEntry:
    return HistoryEntry(None, deadline_ms, expired=True)


def current_rows(data_dir: Path) -> dict[str, int | None]:
    """Each key of the file's `current` table and its deadline, as the file holds them."""
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        rows = connection.execute("SELECT key, expires_at_ms FROM current").fetchall()
    return dict(rows)


def test_a_deadline_is_kept_as_an_absolute_time_across_a_restart(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock)
    written = store.put("k", b"v", expiry=Expiry(after_ms=5_000))
    store.put("plain", b"v")
    store.close()
    clock.advance(4_999)  # the service was down most of the time to live

    reopened = open_store(data_dir, clock)
    try:
        assert reopened.get("k") == written
        assert reopened.get("k").expires_at_ms == DEADLINE_MS
        clock.advance(1)
        with pytest.raises(KeyNotFound):
            reopened.get("k")
        assert reopened.get("plain").expires_at_ms is None
    finally:
        reopened.close()


def test_a_key_whose_deadline_passed_while_down_is_expired_at_start(
    data_dir: Path, clock: FakeClock
) -> None:
    store = open_store(data_dir, clock)
    store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    store.put("plain", b"v")
    store.close()
    clock.advance(30_000)

    reopened = open_store(data_dir, clock)
    try:  # nothing here reads "k" itself
        assert reopened.stats().keys == 1
        assert reopened.keys().keys == ["plain"]
    finally:
        reopened.close()
    assert current_rows(data_dir) == {"plain": None}, "the start expired it, and journaled that"

    again = open_store(data_dir, clock)
    try:
        assert again.history("k") == [expired_at(DEADLINE_MS), HistoryEntry(b"v", START_MS)]
    finally:
        again.close()


def test_expire_is_journaled_and_keeps_the_etag(data_dir: Path, clock: FakeClock) -> None:
    store = open_store(data_dir, clock)
    written = store.put("k", b"v")
    store.put("persisted", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    store.expire("k", Expiry(at_ms=DEADLINE_MS))
    store.expire("persisted", NO_EXPIRY)
    store.close()
    assert current_rows(data_dir) == {"k": DEADLINE_MS, "persisted": None}

    reopened = open_store(data_dir, clock)
    try:
        assert reopened.get("k").etag == written.etag
        assert reopened.get("k").expires_at_ms == DEADLINE_MS
        assert reopened.get("persisted").expires_at_ms is None
        assert [entry.data for entry in reopened.history("k")] == [b"v"]
    finally:
        reopened.close()


def test_an_expiry_outlives_the_compaction_of_the_write_before_it(
    data_dir: Path, clock: FakeClock
) -> None:
    deadline_ms = START_MS + 50_000
    store = open_store(data_dir, clock, housekeeping_interval_s=0.01)
    try:
        store.put("k", b"old", expiry=Expiry(at_ms=deadline_ms))
        clock.advance(55_000)
        assert store.sweep_expired(10) == 1
        store.put("k", b"new")
        clock.advance(10_000)  # "old" leaves the window; its expiry, at the deadline, does not
        cutoff_ms = clock.now_ms - WINDOW_MS
        wait_until = time.monotonic() + 5
        while time.monotonic() < wait_until and oldest_row_ms(data_dir) <= cutoff_ms:
            time.sleep(0.02)
        assert oldest_row_ms(data_dir) > cutoff_ms, "compaction ran"
    finally:
        store.close()

    reopened = open_store(data_dir, clock)
    try:
        assert reopened.history("k") == [
            HistoryEntry(b"new", START_MS + 55_000),
            expired_at(deadline_ms),
        ]
    finally:
        reopened.close()


def oldest_row_ms(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (oldest,) = connection.execute("SELECT min(timestamp_ms) FROM history").fetchone()
    return int(oldest)


def test_a_file_of_the_format_before_deadlines_is_upgraded(
    data_dir: Path, clock: FakeClock
) -> None:
    data_dir.mkdir()
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        for statement in (
            "CREATE TABLE history (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, data BLOB,"
            " timestamp_ms INTEGER NOT NULL)",
            "CREATE TABLE current (key TEXT PRIMARY KEY, data BLOB NOT NULL, content_type TEXT,"
            " etag TEXT NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID",
            "PRAGMA application_id = 1802916726",
            "PRAGMA user_version = 1",
            f"INSERT INTO history VALUES (1, 'k', x'7631', {START_MS})",
            "INSERT INTO current VALUES ('k', x'7631', 'text/plain', 'old-1', 1)",
        ):
            connection.execute(statement)

    store = open_store(data_dir, clock)
    try:
        value = store.get("k")
        assert (value.data, value.etag, value.expires_at_ms) == (b"v1", "old-1", None)
        assert store.history("k") == [HistoryEntry(b"v1", START_MS)]
        store.put("k", b"v2", expiry=Expiry(at_ms=DEADLINE_MS))
    finally:
        store.close()
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
    assert version == FORMAT_VERSION == 4
    assert current_rows(data_dir) == {"k": DEADLINE_MS}


PROBE_INTERVAL_S = 0.05
"""How often the store probes a disk that refused, in tests where space comes back."""


@pytest.fixture
def full_disk_store(
    data_dir: Path, clock: FakeClock, disk: SimulatedDisk
) -> Iterator[DurableStore]:
    """--fsync always (the default) on a disk that has just filled up, 100 keys whose
    deadline has passed, no probe of the disk meanwhile."""
    store = open_store(data_dir, clock, housekeeping_interval_s=10, connect=disk.connect())
    for number in range(100):
        store.put(f"t{number}", b"x" * 100, expiry=Expiry(after_ms=1_000))
    store.put("kept", b"k")
    disk.capacity_bytes = disk.used_bytes + 20_000
    with pytest.raises(StoreFull):
        for number in range(10_000):
            store.put(f"filler{number}", b"y" * 900)
    clock.advance(2_000)
    try:
        yield store
    finally:
        disk.capacity_bytes = None
        store.close()


def test_a_read_of_an_expired_key_on_a_full_disk_is_404_not_503(
    full_disk_store: DurableStore,
) -> None:
    failed_before = full_disk_store.persistence().failed_commits
    for number in range(10):  # before the fix: the 3rd on were 503, after 3 rebuilds each
        with pytest.raises(KeyNotFound):
            full_disk_store.get(f"t{number}")
    assert full_disk_store.persistence().failed_commits == failed_before


def test_sweeping_on_a_full_disk_does_not_rebuild_memory_again_and_again(
    full_disk_store: DurableStore,
) -> None:
    failed_before = full_disk_store.persistence().failed_commits
    removed = []
    for _ in range(10):  # a second of the sweeper's work, at its batch size
        removed.append(full_disk_store.sweep_expired(200))
        time.sleep(0.02)
    assert full_disk_store.persistence().failed_commits - failed_before <= 1
    assert removed == [0] * 10, "while the disk refuses, a sweep leaves due keys to reads"
    assert full_disk_store.get("kept").data == b"k"
    with pytest.raises(KeyNotFound):
        full_disk_store.get("t0")


def write_once_writes_resume(store: DurableStore, key: str, data: bytes) -> None:
    """Put, retrying while the disk is still refused (until the writer's probe succeeds)."""
    give_up = time.monotonic() + 5
    while True:
        try:
            store.put(key, data)
            return
        except StoreFull:
            assert time.monotonic() < give_up, "writes did not resume"
            time.sleep(0.02)


def history_after_a_restart(
    data_dir: Path, clock: FakeClock, disk: SimulatedDisk, key: str
) -> list[HistoryEntry]:
    """The key's history as a start on the same files tells it."""
    reopened = open_store(data_dir, clock, connect=disk.connect())
    try:
        return reopened.history(key)
    finally:
        reopened.close()


EXPIRED_ONCE = [expired_at(DEADLINE_MS), HistoryEntry(b"v", START_MS)]
"""The history of "t", written at the start with DEADLINE_MS, once it has expired."""


def test_a_first_failed_commit_of_expiries_alone_refuses_puts_but_keeps_reads(
    data_dir: Path, clock: FakeClock, disk: SimulatedDisk
) -> None:
    store = open_store(data_dir, clock, PROBE_INTERVAL_S, disk.connect())
    try:
        store.put("t", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
        disk.capacity_bytes = disk.used_bytes  # full, and nothing has been refused yet
        clock.advance(6_000)
        for _ in range(5):
            with pytest.raises(KeyNotFound):
                store.get("t")
        assert store.history("t") == EXPIRED_ONCE
        persistence = store.persistence()
        assert (persistence.failed_commits, persistence.pending_writes) == (1, 1)
        with pytest.raises(StoreFull):  # the disk said it is full: puts refused at once
            store.put("other", b"v")

        disk.capacity_bytes = None
        write_once_writes_resume(store, "other", b"v")
        assert store.persistence().pending_writes == 0  # the carried expiry is committed
    finally:
        store.close()
    assert history_after_a_restart(data_dir, clock, disk, "t") == EXPIRED_ONCE


def test_an_expiry_in_the_batch_of_a_refused_write_is_noticed_again_once(
    data_dir: Path, clock: FakeClock, disk: SimulatedDisk
) -> None:
    store = open_store(data_dir, clock, PROBE_INTERVAL_S, disk.connect())
    answers: dict[str, object] = {}

    def answer(name: str, call: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                answers[name] = call()
            except StoreError as error:
                answers[name] = error

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def wait_for_pending(count: int) -> None:
        give_up = time.monotonic() + 5
        while store.persistence().pending_writes < count:
            assert time.monotonic() < give_up, "the write was not queued"
            time.sleep(0.005)

    try:
        store.put("t", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
        clock.advance(6_000)
        disk.hold_syncs()  # the writer holds in the commit of "first"; the next batch fills
        threads = [answer("first", lambda: store.put("first", b"1"))]
        assert disk.sync_waiting.wait(5)
        threads.append(answer("read", lambda: store.get("t")))  # queues the expiry
        wait_for_pending(2)
        threads.append(answer("refused", lambda: store.put("refused", b"2")))
        wait_for_pending(3)
        disk.capacity_bytes = disk.used_bytes  # the batch of the expiry and "refused" fails
        disk.release_syncs()
        for thread in threads:
            thread.join(5)

        assert isinstance(answers["first"], Value)
        assert isinstance(answers["refused"], StoreFull)
        assert isinstance(answers["read"], KeyNotFound), answers["read"]
        with pytest.raises(KeyNotFound):
            store.get("refused")
        assert store.history("t") == EXPIRED_ONCE
        assert store.persistence().failed_commits == 1

        disk.capacity_bytes = None
        write_once_writes_resume(store, "t", b"again")  # a later write to the same key
    finally:
        disk.release_syncs()
        store.close()
    assert history_after_a_restart(data_dir, clock, disk, "t") == [
        HistoryEntry(b"again", clock.now_ms),
        *EXPIRED_ONCE,
    ]


def test_a_restart_derives_the_expiries_a_full_disk_kept_from_the_file_once(
    data_dir: Path, clock: FakeClock, disk: SimulatedDisk
) -> None:
    store = open_store(data_dir, clock, PROBE_INTERVAL_S, disk.connect())
    try:
        store.put("t", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
        store.put("kept", b"k")
        disk.capacity_bytes = disk.used_bytes
        clock.advance(6_000)
        with pytest.raises(KeyNotFound):
            store.get("t")
        assert store.persistence().pending_writes == 1  # carried, not on disk
    finally:
        store.close()  # on the full disk: the expiry never reaches the file
    disk.capacity_bytes = None
    clock.advance(1_000)

    reopened = open_store(data_dir, clock, connect=disk.connect())
    try:  # the start expires it again, at the deadline, not at the time of the restart
        assert reopened.history("t") == EXPIRED_ONCE
        assert reopened.get("kept").data == b"k"
    finally:
        reopened.close()
    again = open_store(data_dir, clock, connect=disk.connect())
    try:  # and journaled that once: a third start finds nothing more to expire
        assert again.history("t") == EXPIRED_ONCE
        assert again.persistence().commits == 0
    finally:
        again.close()


def test_a_delete_tried_while_the_disk_refuses_commits_the_carried_expiries_with_it(
    data_dir: Path, clock: FakeClock, disk: SimulatedDisk
) -> None:
    # No probe during the test: the delete is what is tried.
    store = open_store(data_dir, clock, housekeeping_interval_s=10, connect=disk.connect())
    try:
        store.put("t", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
        store.put("gone", b"g")
        disk.capacity_bytes = disk.used_bytes
        clock.advance(6_000)
        with pytest.raises(KeyNotFound):
            store.get("t")
        disk.capacity_bytes = None
        store.delete("gone")
        assert store.persistence().pending_writes == 0
        store.put("after", b"a")  # the delete's commit took writes again
    finally:
        store.close()
    reopened = open_store(data_dir, clock, connect=disk.connect())
    try:
        assert reopened.history("t") == EXPIRED_ONCE
        assert reopened.keys().keys == ["after"]
        assert reopened.persistence().commits == 0, "nothing was left to expire at start"
    finally:
        reopened.close()
