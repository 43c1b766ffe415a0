"""The execution policy: how every transport calls the store, decided here once from what the
store says about itself (`Store.may_block`), never by a transport.

A call that cannot block (the memory store: a dictionary and a lock held for microseconds)
runs inline, on the transport's event loop: a thread hand-off would cost more than the call.
A call that can wait on I/O (a Redis round trip, a disk sync) runs on worker threads, so that
no connection waits behind another connection's store call: the event loop that every
connection shares never makes one.
"""

from __future__ import annotations

from enum import Enum

from kvservice.store import Store


class Execution(Enum):
    """Where a transport runs the requests that call the store."""

    INLINE = "inline"
    """On the transport's event loop thread: the store never blocks."""
    WORKERS = "workers"
    """On worker threads (--threads of them per transport): a call may wait on I/O."""


def execution_for(store: Store) -> Execution:
    """The policy every transport follows for `store`."""
    return Execution.WORKERS if store.may_block else Execution.INLINE
