"""Keys that expire, across restarts of the durable backend (the contract suite covers a
running store): deadlines are kept as absolute times, with writes and with `expire`; a key
whose deadline passed while the service was down is expired at start, its entry at the
deadline; expiries are journaled, so the entry outlives compaction of the write before it;
a file of the format before deadlines is upgraded in place. Real files, a hand-driven clock.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from kvservice.store import NO_EXPIRY, Expiry, HistoryEntry, KeyNotFound
from kvservice.store.durable import DurableStore
from kvservice.store.durable.journal import DATA_FILE, FORMAT_VERSION
from tests.support.clock import START_MS, FakeClock

WINDOW_MS = 60_000
DEADLINE_MS = START_MS + 5_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def open_store(
    data_dir: Path, clock: FakeClock, housekeeping_interval_s: float = 1.0
) -> DurableStore:
    return DurableStore(
        data_dir,
        history_window_ms=WINDOW_MS,
        clock=clock,
        housekeeping_interval_s=housekeeping_interval_s,
    )


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
    assert version == FORMAT_VERSION == 2
    assert current_rows(data_dir) == {"k": DEADLINE_MS}
