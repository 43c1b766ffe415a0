"""A disk in memory that SQLite writes through (an `apsw` VFS), for the durable store's
power-cut and full-disk tests: it remembers what was synced, so a test can cut the power.

`SimulatedDisk` holds the files. Each file has its current bytes, the bytes its last sync
made durable, and the writes and truncations since (pending). `crash(mode)` returns the disk
a restart would find after a power cut now, in one of `CRASH_MODES`:

- `synced`: only what was synced;
- `some_unsynced`: plus the first few pending operations, in order (the OS wrote some back);
- `torn`: plus the first few, and the next one cut part way (a torn write);
- `zero_tail`: the pending writes' sizes reached the disk, their bytes did not (zeros);
- `delete_undone`: files deleted without syncing their directory come back.

`hold_syncs` makes syncs wait until `release_syncs`: a slow disk, to see what waits on it;
`fail_syncs` makes the next syncs fail with an I/O error, the disk working on after them.

A file created but never synced does not survive a crash (SQLite's unix VFS syncs the
directory at a new journal's first sync, so that is when its name becomes durable). SQLite
does not rename its files; an unsynced delete undone is the equivalent here.

`cut_after` makes the Nth mutating operation (write, truncate, sync, delete) fail with an
I/O error, and every operation after it: the moment the power goes. `capacity_bytes` makes
writes past it fail with SQLITE_FULL: a full disk.

Python's `sqlite3` cannot take a VFS written in Python, so the store runs on `apsw` here
(`ApswDatabase`, a `Database` of kvservice's file layer), with `locking_mode=EXCLUSIVE`: a
Python VFS has no shared memory, and SQLite then keeps the WAL index in the process's heap.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from kvservice.store.durable.database import Connect, translate

SQLITE_IOERR = 10
RESULT_CODES = {apsw.FullError: 13, apsw.CorruptError: 11, apsw.IOError: SQLITE_IOERR}
CRASH_MODES = ("synced", "some_unsynced", "torn", "zero_tail", "delete_undone")

_names = itertools.count()


class _File:
    __slots__ = ("data", "durable", "pending")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable: bytes | None = None  # None: the file's name is not durable yet
        self.pending: list[tuple[int, bytes] | int] = []  # (offset, bytes) or a new size


def _apply(data: bytearray, operation: tuple[int, bytes] | int, zeros: bool = False) -> None:
    if isinstance(operation, int):
        del data[operation:]
        return
    offset, chunk = operation
    if len(data) < offset:
        data.extend(bytes(offset - len(data)))
    data[offset : offset + len(chunk)] = bytes(len(chunk)) if zeros else chunk


class SimulatedDisk:
    """Files by name, with what is durable of each; see the module."""

    def __init__(self, capacity_bytes: int | None = None, cut_after: int | None = None) -> None:
        self.files: dict[str, _File] = {}
        self.deleted_unsynced: dict[str, bytes] = {}
        self.capacity_bytes = capacity_bytes
        self.cut_after = cut_after
        self.operations = 0
        self.sync_waiting = threading.Event()
        """Set when a sync waits because `hold_syncs` was called."""
        self._syncs_allowed = threading.Event()
        self._syncs_allowed.set()
        self._failing_syncs = 0
        self.vfs_name = f"simulated{next(_names)}"
        self._vfs = _VFS(self.vfs_name, self)

    @property
    def used_bytes(self) -> int:
        return sum(len(file.data) for file in self.files.values())

    @property
    def cut(self) -> bool:
        """Whether the power is off."""
        return self.cut_after is not None and self.operations >= self.cut_after

    def mutate(self) -> None:
        """Count a mutating operation; PowerCut from the cut on."""
        if self.cut:
            raise apsw.IOError("the power is off")
        self.operations += 1
        if self.cut:
            raise apsw.IOError("the power went")

    def check_power(self) -> None:
        if self.cut:
            raise apsw.IOError("the power is off")

    def fail_syncs(self, count: int) -> None:
        """Make the next `count` syncs fail with an I/O error (the disk goes on working)."""
        self._failing_syncs = count

    def hold_syncs(self) -> None:
        """Make every sync wait (up to 10 s) until `release_syncs`: a slow disk."""
        self.sync_waiting.clear()
        self._syncs_allowed.clear()

    def release_syncs(self) -> None:
        self._syncs_allowed.set()

    def before_sync(self) -> None:
        """Wait while syncs are held; fail a sync that `fail_syncs` asked to."""
        if not self._syncs_allowed.is_set():
            self.sync_waiting.set()
            self._syncs_allowed.wait(10)
        if self._failing_syncs:
            self._failing_syncs -= 1
            raise apsw.IOError("the simulated disk failed a sync")

    def connect(self) -> Connect:
        """The `Connect` that opens databases on this disk."""
        return lambda path: ApswDatabase(path, self.vfs_name)

    def crash(self, mode: str, rng: random.Random) -> SimulatedDisk:
        """The disk a restart finds after a power cut now (see CRASH_MODES)."""
        after = SimulatedDisk()
        for name, file in self.files.items():
            if file.durable is None and mode != "some_unsynced":
                continue
            data = bytearray(file.durable or b"")
            applied = rng.randint(0, len(file.pending)) if mode in ("some_unsynced", "torn") else 0
            if mode == "zero_tail":
                applied = len(file.pending)
            for operation in file.pending[:applied]:
                _apply(data, operation, zeros=mode == "zero_tail")
            if mode == "torn" and applied < len(file.pending):
                operation = file.pending[applied]
                if isinstance(operation, tuple):
                    offset, chunk = operation
                    _apply(data, (offset, chunk[: rng.randint(0, len(chunk))]))
            restored = _File()
            restored.data = data
            restored.durable = bytes(data)
            after.files[name] = restored
        if mode == "delete_undone":
            for name, durable in self.deleted_unsynced.items():
                restored = _File()
                restored.data = bytearray(durable)
                restored.durable = durable
                after.files.setdefault(name, restored)
        return after


class _VFS(apsw.VFS):
    def __init__(self, name: str, disk: SimulatedDisk) -> None:
        self.disk = disk
        super().__init__(name, base="")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        key = name.filename() if isinstance(name, apsw.URIFilename) else str(name)
        self.disk.check_power()
        file = self.disk.files.get(key)
        if file is None:
            if not flags[0] & apsw.SQLITE_OPEN_CREATE:
                raise apsw.CantOpenError(f"no file {key}")
            file = self.disk.files[key] = _File()
            self.disk.deleted_unsynced.pop(key, None)
        # apsw takes any object with a VFS file's methods, not only a VFSFile.
        return _OpenFile(self.disk, file)  # type: ignore[return-value]

    def xAccess(self, pathname: str, flags: int) -> bool:
        return pathname in self.disk.files

    def xDelete(self, filename: str, syncdir: bool) -> None:
        self.disk.mutate()
        file = self.disk.files.pop(filename, None)
        if file is not None and file.durable is not None and not syncdir:
            self.disk.deleted_unsynced[filename] = file.durable

    def xFullPathname(self, name: str) -> str:
        return name


class _OpenFile:
    """An open file of the simulated disk, as apsw asks of a VFS file."""

    def __init__(self, disk: SimulatedDisk, file: _File) -> None:
        self.disk = disk
        self.file = file

    def xRead(self, amount: int, offset: int) -> bytes:
        self.disk.check_power()
        return bytes(self.file.data[offset : offset + amount])

    def xWrite(self, data: bytes, offset: int) -> None:
        growth = max(0, offset + len(data) - len(self.file.data))
        capacity = self.disk.capacity_bytes
        if capacity is not None and growth and self.disk.used_bytes + growth > capacity:
            raise apsw.FullError("the simulated disk is full")
        self.disk.mutate()
        chunk = bytes(data)
        _apply(self.file.data, (offset, chunk))
        self.file.pending.append((offset, chunk))

    def xTruncate(self, newsize: int) -> None:
        self.disk.mutate()
        del self.file.data[newsize:]
        self.file.pending.append(newsize)

    def xSync(self, flags: int) -> None:
        self.disk.before_sync()
        self.disk.mutate()
        self.file.durable = bytes(self.file.data)
        self.file.pending.clear()

    def xFileSize(self) -> int:
        self.disk.check_power()
        return len(self.file.data)

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return int(apsw.SQLITE_IOCAP_POWERSAFE_OVERWRITE)

    def xClose(self) -> None:
        pass


class ApswDatabase:
    """kvservice's `Database` over apsw, on a VFS of the test's."""

    def __init__(self, path: Path, vfs_name: str) -> None:
        self._connection = _call(lambda: apsw.Connection(str(path), vfs=vfs_name))
        # A VFS in Python has no shared memory: the WAL index lives in the heap instead.
        self.execute("PRAGMA locking_mode = EXCLUSIVE")

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = _call(lambda: list(self._connection.execute(sql, parameters)))
        return rows

    def rows(self, sql: str, parameters: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self.execute(sql, parameters)

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            self._connection.close()


def _call(operation: Callable[[], Any]) -> Any:
    try:
        return operation()
    except apsw.Error as error:
        # An exception our VFS raised comes back as it was, without SQLite's result code.
        code = getattr(error, "extendedresult", None)
        if code is None:
            code = next(
                (code for kind, code in RESULT_CODES.items() if isinstance(error, kind)),
                SQLITE_IOERR,
            )
        raise translate(code, str(error)) from error
