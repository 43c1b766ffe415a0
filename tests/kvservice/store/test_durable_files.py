"""The data files cut and garbled: the durable store starts with every complete acknowledged
write, or refuses with DataDirError saying why; never another exception, never a wrong value.

A store writes acknowledged writes one commit each; its files are copied while it runs (what
`kill -9` leaves). Then, on copies: the WAL cut at every byte offset of its last frames (a
frame is a page and its 24-byte header), the WAL with zeros or garbage appended, the data
file (checkpointed, no WAL) cut at every byte offset of its last page, and with zeros or
garbage appended.
"""

from __future__ import annotations

import logging
import random
import shutil
import struct
from pathlib import Path

import pytest

from kvservice.store import KeyNotFound
from kvservice.store.durable import DataDirError, DurableStore
from kvservice.store.durable.journal import (
    DATA_FILE,
    WAL_FRAME_HEADER_BYTES,
    WAL_HEADER_BYTES,
    WAL_SUFFIX,
)
from tests.support.clock import FakeClock

KEYS = ("a", "b", "c")
WRITES = 6
CUT_FRAMES = 2
"""The WAL is cut at every offset of this many frames at its end."""

State = dict[str, tuple[bytes, str, list[bytes | None]] | None]


def state_of(store: DurableStore) -> State:
    state: State = {}
    for key in KEYS:
        history = [entry.data for entry in store.history(key)]
        try:
            value = store.get(key)
            state[key] = (value.data, value.etag, history)
        except KeyNotFound:
            state[key] = None if not history else (b"", "", history)
    return state


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[State]]:
    """A crash image with its WAL, a checkpointed data file, and the state after each write."""
    root = tmp_path_factory.mktemp("files")
    clock = FakeClock()
    store = DurableStore(root / "live", clock=clock, housekeeping_interval_s=3600)
    states = [state_of(store)]
    for number in range(WRITES):
        clock.advance(1)
        if number == 4:
            store.delete("a")
        else:
            store.put(KEYS[number % len(KEYS)], bytes([65 + number]) * (150 * number))
        states.append(state_of(store))
    crash_image = root / "crash"
    crash_image.mkdir()
    for name in (DATA_FILE, DATA_FILE + WAL_SUFFIX):
        shutil.copy(root / "live" / name, crash_image / name)
    store.close()  # checkpoints: the data file alone holds everything
    assert not (root / "live" / (DATA_FILE + WAL_SUFFIX)).exists()
    return crash_image, root / "live", states


def start_on(data_dir: Path) -> State | str:
    """The state a store started on `data_dir` shows, or why it refused."""
    try:
        store = DurableStore(data_dir, clock=FakeClock(), housekeeping_interval_s=3600)
    except DataDirError as error:
        return str(error)
    try:
        return state_of(store)
    finally:
        store.close()


def copy_with(source: Path, target: Path, name: str, content: bytes) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    (target / name).write_bytes(content)
    return target


def commit_ends(wal: bytes) -> list[int]:
    """The offset just past each commit frame of a WAL."""
    (page_bytes,) = struct.unpack_from(">I", wal, 8)
    frame_bytes = WAL_FRAME_HEADER_BYTES + page_bytes
    ends = []
    for start in range(WAL_HEADER_BYTES, len(wal) - frame_bytes + 1, frame_bytes):
        (database_pages,) = struct.unpack_from(">I", wal, start + 4)
        if database_pages:  # only a commit frame records the database's size
            ends.append(start + frame_bytes)
    return ends


def test_a_wal_cut_anywhere_in_its_last_frames_recovers_every_complete_write(
    written: tuple[Path, Path, list[State]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crash_image, _, states = written
    wal_name = DATA_FILE + WAL_SUFFIX
    wal = (crash_image / wal_name).read_bytes()
    ends = commit_ends(wal)
    assert len(ends) == WRITES  # one commit per write (the schema is in the data file)
    assert start_on(copy_with(crash_image, tmp_path / "whole", wal_name, wal)) == states[-1]
    frame_bytes = WAL_FRAME_HEADER_BYTES + struct.unpack_from(">I", wal, 8)[0]
    refused = 0
    for cut in range(len(wal) - CUT_FRAMES * frame_bytes, len(wal)):
        complete = sum(end <= cut for end in ends)
        outcome = start_on(copy_with(crash_image, tmp_path / "cut", wal_name, wal[:cut]))
        if isinstance(outcome, str):
            refused += 1
            assert "damaged" in outcome or "cut" in outcome, outcome
        else:
            assert outcome == states[complete], f"cut at {cut}"
    assert refused == 0  # a torn WAL tail is what a power cut leaves: always recovered

    caplog.set_level(logging.WARNING)
    start_on(copy_with(crash_image, tmp_path / "cut", wal_name, wal[: ends[-1] - 100]))
    dropped = ends[-1] - 100 - ends[-2]
    assert f"dropped the {dropped} bytes after it" in caplog.text


@pytest.mark.parametrize("tail", ["zeros", "garbage"])
def test_a_wal_with_bytes_appended_recovers_everything(
    written: tuple[Path, Path, list[State]], tmp_path: Path, tail: str
) -> None:
    crash_image, _, states = written
    wal_name = DATA_FILE + WAL_SUFFIX
    wal = (crash_image / wal_name).read_bytes()
    for size in (1, 24, 4096, 4120, 10_000):
        extra = bytes(size) if tail == "zeros" else random.Random(size).randbytes(size)
        outcome = start_on(copy_with(crash_image, tmp_path / "extra", wal_name, wal + extra))
        assert outcome == states[-1], f"{size} bytes of {tail}"


def test_a_data_file_cut_anywhere_in_its_last_page_is_refused(
    written: tuple[Path, Path, list[State]], tmp_path: Path
) -> None:
    _, checkpointed, states = written
    data = (checkpointed / DATA_FILE).read_bytes()
    assert start_on(checkpointed) == states[-1]
    page_bytes = struct.unpack_from(">H", data, 16)[0]
    for cut in range(len(data) - page_bytes, len(data)):
        outcome = start_on(copy_with(checkpointed, tmp_path / "cut", DATA_FILE, data[:cut]))
        assert isinstance(outcome, str) and "the file was cut" in outcome, f"cut at {cut}"


@pytest.mark.parametrize("tail", ["zeros", "garbage"])
def test_a_data_file_with_bytes_appended_keeps_everything(
    written: tuple[Path, Path, list[State]], tmp_path: Path, tail: str
) -> None:
    _, checkpointed, states = written
    data = (checkpointed / DATA_FILE).read_bytes()
    for size in (1, 4096, 10_000):
        extra = bytes(size) if tail == "zeros" else random.Random(size).randbytes(size)
        outcome = start_on(copy_with(checkpointed, tmp_path / "extra", DATA_FILE, data + extra))
        assert outcome == states[-1], f"{size} bytes of {tail}"
