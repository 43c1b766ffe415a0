"""One pool of idle connections, shared by every `KVClient`: borrow, use, give back.

Checks run on several threads at once; a connection (a `requests.Session`, a RESP socket) is
used by one thread at a time. A borrower gets an idle one, or a new one when all are busy,
and gives it back when its exchange completed. One that failed mid-exchange is closed, since
where its stream stands is unknown; one that went stale while idle is dropped on the way out.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Connection = TypeVar("Connection")


class IdlePool(Generic[Connection]):
    """Idle connections made by `connect`, released with `close`; safe to share between threads."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        close: Callable[[Connection], None],
        is_stale: Callable[[Connection], bool] = lambda connection: False,
    ) -> None:
        self._connect = connect
        self._close = close
        self._is_stale = is_stale
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()

    @contextmanager
    def borrowed(self) -> Iterator[Connection]:
        """A live connection for one exchange; back to the pool only if the exchange completed."""
        connection = self._live_idle()
        if connection is None:
            connection = self._connect()
        try:
            yield connection
        except BaseException:
            self._close(connection)
            raise
        self._idle.put(connection)

    def close(self) -> None:
        """Close every idle connection; call it once no exchange is under way."""
        while True:
            try:
                self._close(self._idle.get_nowait())
            except queue.Empty:
                return

    def _live_idle(self) -> Connection | None:
        while True:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                return None
            if not self._is_stale(connection):
                return connection
            self._close(connection)
