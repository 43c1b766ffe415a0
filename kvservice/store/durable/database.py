"""The file layer: the one place the durable store touches SQLite, behind a small Protocol
that a test can swap.

`Database` is what the journal needs of a connection: run a statement, iterate over rows,
close. `open_sqlite` is the production one, Python's own `sqlite3` in autocommit mode (the
journal says BEGIN and COMMIT itself). A test passes another `Connect` (the power-cut and
full-disk tests use `apsw` with a SQLite VFS of their own, in tests/support/), which is why
errors cross this seam as the three kinds the store acts on, never as a driver's exception:

- DiskFull: there was no room (SQLITE_FULL): the write was not stored;
- DiskFailed: an I/O error, a failed sync, a file that cannot be opened: what reached the
  disk is unknown until the file is read again;
- DataDamaged: the file is not a database, or a page of it is malformed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26


class DiskError(Exception):
    """The storage failed; the message says how (for logs and the refusal's wording)."""


class DiskFull(DiskError):
    """No room was left on the device: the transaction was not stored."""


class DiskFailed(DiskError):
    """An I/O error or a failed sync: the outcome on disk is unknown until it is read back."""


class DataDamaged(DiskError):
    """The file is not a SQLite database, or part of it is malformed."""


class Database(Protocol):
    """A connection in autocommit mode, used by one thread at a time."""

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows. Raises DiskError."""
        ...

    def rows(self, sql: str, parameters: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """Run one query and yield its rows as they are read (a whole table need not fit in
        a list). Raises DiskError."""
        ...

    def close(self) -> None:
        """Close the connection; never raises."""
        ...


Connect = Callable[[Path], Database]
"""Opens (creating if need be) the database file at a path."""


def translate(code: int, message: str) -> DiskError:
    """The DiskError for a SQLite result code (primary or extended) and its message."""
    primary = code & 0xFF
    if primary == SQLITE_FULL:
        return DiskFull(message)
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return DataDamaged(message)
    return DiskFailed(message)


class SqliteDatabase:
    """`Database` over Python's `sqlite3`."""

    def __init__(self, path: Path) -> None:
        try:
            # check_same_thread off: the store opens it on one thread and its writer thread
            # uses it; never two at once.
            self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise _translated(error) from error

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise _translated(error) from error

    def rows(self, sql: str, parameters: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        try:
            cursor = self._connection.execute(sql, parameters)
            while batch := cursor.fetchmany(10_000):
                yield from batch
        except sqlite3.Error as error:
            raise _translated(error) from error

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # after a failed disk: nothing more to lose
            self._connection.close()


def _translated(error: sqlite3.Error) -> DiskError:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by the module, not by SQLite (a closed connection, a bad call)
        return DiskFailed(str(error))
    return translate(code, str(error))


def open_sqlite(path: Path) -> Database:
    """The production `Connect`: the file through Python's sqlite3."""
    return SqliteDatabase(path)
