"""The execution policy: how every transport calls the store, decided here once from what the
store says about itself (`Store.may_block`, `Store.reads_may_block`), never by a transport.

A call that cannot block (the memory store: a dictionary and a lock held for microseconds)
runs inline, on the transport's event loop: a thread hand-off would cost more than the call.
A call that can wait on I/O (a Redis round trip, a disk sync) runs on worker threads, so that
no connection waits behind another connection's store call: the event loop that every
connection shares never makes one. The policy is per kind of call: the durable store's
writes wait for their commit, but with `--fsync everysec` its reads are memory's and run
inline; a transport says which kind its work is (`StoreCalls`), the core looks it up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kvservice.store import Store


class Execution(Enum):
    """Where a transport runs the requests that call the store."""

    INLINE = "inline"
    """On the transport's event loop thread: the store never blocks."""
    WORKERS = "workers"
    """On worker threads (--threads of them per transport): a call may wait on I/O."""


class StoreCalls(Enum):
    """What a transport's piece of work asks of the store."""

    READS = "reads"
    """Reads only (or nothing at all: PING, a health check)."""
    WRITES = "writes"
    """Writes, perhaps among reads."""


@dataclass(frozen=True)
class ExecutionPolicy:
    """Where each kind of work runs."""

    reads: Execution
    writes: Execution

    @classmethod
    def everything(cls, execution: Execution) -> ExecutionPolicy:
        """Every kind of work in one place."""
        return cls(reads=execution, writes=execution)

    def where(self, calls: StoreCalls) -> Execution:
        """Where work of kind `calls` runs."""
        return self.reads if calls is StoreCalls.READS else self.writes

    @property
    def needs_workers(self) -> bool:
        """Whether any kind of work runs on workers (a transport then keeps a pool)."""
        return Execution.WORKERS in (self.reads, self.writes)


INLINE_POLICY = ExecutionPolicy.everything(Execution.INLINE)
"""Everything on the loop: a store that never blocks."""
WORKERS_POLICY = ExecutionPolicy.everything(Execution.WORKERS)
"""Everything on workers: what serves an app that may wait on anything."""


def execution_for(store: Store) -> ExecutionPolicy:
    """The policy every transport follows for `store`."""
    return ExecutionPolicy(
        reads=Execution.WORKERS if store.reads_may_block else Execution.INLINE,
        writes=Execution.WORKERS if store.may_block else Execution.INLINE,
    )
