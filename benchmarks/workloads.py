"""The workloads: what each run asks of a server, and what it must find there first.

wrk generates the requests (`workloads.lua`); this module names the workloads, builds their
script arguments and prepares the data they need over HTTP: the key pool that get, put and
mix choose from, and a freshly written key for each history run.

Every value is VALUE, 100 bytes of text, sent as application/octet-stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.loader import Request, require_success, send_all

VALUE = b"0123456789" * 10
"""The value every write stores; workloads.lua sends the same 100 bytes."""
CONTENT_TYPE = "application/octet-stream"
POOL_SIZE = 1000
"""Keys k0 .. k999, written before the runs; get, put and mix choose among them at random."""
DELETE_DURATION_SHARE = 2 / 3
"""Delete runs are shorter than post runs so that they stay within the keys a post run made
even when deleting is 1.5x as fast as creating; past that they get 404s, counted as non-2xx."""


@dataclass(frozen=True)
class Slot:
    """Where a run sits in the schedule."""

    repeat: int
    connections: int


Writer = Callable[[Sequence[str]], None]
"""Stores VALUE under each of the keys, in order (a key may repeat: each write is a new
history entry). Over HTTP for the benchmark, straight into a Store for the profiler."""


def http_writer(host: str, port: int) -> Writer:
    """A Writer sending PUTs to the server at host:port, on one connection, in order."""

    def write(keys: Sequence[str]) -> None:
        requests = [Request("PUT", f"/{key}", VALUE, CONTENT_TYPE) for key in keys]
        require_success(send_all(host, port, requests, connections=1), "preparing the data")

    return write


def _no_preparation(write: Writer, slot: Slot) -> None:
    """Nothing to prepare."""


@dataclass(frozen=True)
class Workload:
    """One kind of load: its wrk script arguments and what must be in place before a run."""

    name: str
    description: str
    script_args: Callable[[Slot], list[str]]
    prepare: Callable[[Writer, Slot], None] = _no_preparation
    """Writes what one run needs, just before it."""
    duration_share: float = 1.0
    requires: str | None = None
    """A workload that must run first in the same slot (delete needs post's keys)."""


def fill_pool(write: Writer) -> None:
    """Write the key pool that get, put and mix use."""
    write([f"k{index}" for index in range(POOL_SIZE)])


def _sequence_prefix(slot: Slot) -> str:
    # The post and delete runs of one slot share it; no two slots do.
    return f"p{slot.repeat}c{slot.connections}"


def history_key(entries: int, slot: Slot) -> str:
    """The key a history run of that slot reads."""
    return f"h{entries}r{slot.repeat}c{slot.connections}"


def _history_workload(entries: int) -> Workload:
    def write_history(write: Writer, slot: Slot) -> None:
        write([history_key(entries, slot)] * entries)

    return Workload(
        f"history{entries}",
        f"GET /<key>/history of a key written {entries} times just before the run",
        lambda slot: ["history", history_key(entries, slot)],
        prepare=write_history,
    )


WORKLOADS = (
    Workload("get", "GET of a random key of the pool", lambda slot: ["get", str(POOL_SIZE)]),
    Workload("put", "PUT of a random key of the pool", lambda slot: ["put", str(POOL_SIZE)]),
    Workload(
        "post",
        "POST creating a new key per request",
        lambda slot: ["post", _sequence_prefix(slot)],
    ),
    Workload(
        "delete",
        "DELETE of the keys the post run just created, in the same order",
        lambda slot: ["delete", _sequence_prefix(slot)],
        duration_share=DELETE_DURATION_SHARE,
        requires="post",
    ),
    _history_workload(1),
    _history_workload(100),
    _history_workload(1000),
    Workload(
        "mix",
        "90% GET, 10% PUT of random keys of the pool",
        lambda slot: ["mix", str(POOL_SIZE)],
    ),
)
"""Every workload, in the order a repeat runs them."""


def select_workloads(names: list[str] | None) -> list[Workload]:
    """The named workloads (all if None) in schedule order, plus any they require."""
    if names is None:
        return list(WORKLOADS)
    known = {workload.name: workload for workload in WORKLOADS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; known: {', '.join(known)}")
    required = {known[name].requires for name in names}
    wanted = set(names) | {name for name in required if name is not None}
    return [workload for workload in WORKLOADS if workload.name in wanted]
