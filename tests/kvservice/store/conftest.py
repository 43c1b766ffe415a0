"""The store backends the contract suite runs against, each behind one `make_store` factory.

A backend is a `StoreFactory`: keyword settings in, a fresh, empty store out. `budget_bytes`
asks for a store that refuses writes (StoreFull) once it holds about that much more; each
backend maps it onto its own budget (the memory backend's max_bytes, Redis's maxmemory, on
each node of a cluster). The contract suite gets every backend as transports do: behind the
service (`StoreService`), which judges the client's input before a backend sees it
(test_service.py shows that invalid input never reaches one). The Redis backends run on
real servers, started once per session; the durable backend on a directory of the test's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pytest

from kvservice.store import NO_EXPIRY, Clock, Expiry, Store
from kvservice.store.durable import DurableStore
from kvservice.store.memory import MemoryStore
from kvservice.store.redis import RedisStore
from kvservice.store.service import StoreService
from tests.support.clock import FakeClock
from tests.support.redis_servers import RedisClusterProcesses, RedisProcess

DEFAULT_MAX_BYTES = MemoryStore().max_bytes
WINDOW_MS = 120_000
"""The history window the contract tests assume unless they ask for another."""


class StoreFactory(Protocol):
    """Makes a fresh, empty store of one backend."""

    def __call__(
        self,
        *,
        clock: Clock,
        history_window_ms: int = WINDOW_MS,
        max_value_bytes: int = 1024,
        budget_bytes: int | None = None,
    ) -> Store: ...


def memory_store(
    *,
    clock: Clock,
    history_window_ms: int = WINDOW_MS,
    max_value_bytes: int = 1024,
    budget_bytes: int | None = None,
) -> Store:
    """The in-memory backend; the budget is its `max_bytes`."""
    if budget_bytes is None:
        return MemoryStore(
            history_window_ms=history_window_ms, max_value_bytes=max_value_bytes, clock=clock
        )
    return MemoryStore(
        history_window_ms=history_window_ms,
        max_value_bytes=max_value_bytes,
        max_bytes=budget_bytes,
        clock=clock,
    )


def durable_store(request: pytest.FixtureRequest) -> StoreFactory:
    """The durable backend on a fresh directory (--fsync always), closed after the test; the
    budget is its memory store's `max_bytes`."""

    def make(
        *,
        clock: Clock,
        history_window_ms: int = WINDOW_MS,
        max_value_bytes: int = 1024,
        budget_bytes: int | None = None,
    ) -> Store:
        data_dir = request.getfixturevalue("tmp_path") / f"data{len(made)}"
        store = DurableStore(
            data_dir,
            history_window_ms=history_window_ms,
            max_value_bytes=max_value_bytes,
            clock=clock,
            max_bytes=DEFAULT_MAX_BYTES if budget_bytes is None else budget_bytes,
        )
        made.append(store)
        request.addfinalizer(store.close)
        return store

    made: list[DurableStore] = []
    return make


def spend_once(store: Store) -> None:
    """Run every operation of a Redis store, on keys that reach every node of the test
    cluster, so that what a server spends once (hundreds of kilobytes on its first writes,
    tens on each script's first run, a connection) is not charged to a budget measured next."""
    warmup_keys = [f"warmup{number}" for number in range(8)]
    for key in warmup_keys:
        store.put(key, b"", expiry=Expiry(after_ms=60_000))
        store.get(key)
        store.history(key)
        store.expire(key, NO_EXPIRY)
    store.keys()
    store.stats()
    store.sweep_expired(1)
    for key in warmup_keys:
        store.delete(key)


def redis_store(
    servers: RedisProcess | RedisClusterProcesses, request: pytest.FixtureRequest
) -> StoreFactory:
    """The Redis backend on `servers`, flushed for each store; the budget is maxmemory, over
    what the store holds before its first key."""

    def make(
        *,
        clock: Clock,
        history_window_ms: int = WINDOW_MS,
        max_value_bytes: int = 1024,
        budget_bytes: int | None = None,
    ) -> Store:
        servers.flush()
        store = RedisStore.from_url(
            servers.url,
            connections=16,
            timeout_s=5.0,
            history_window_ms=history_window_ms,
            max_value_bytes=max_value_bytes,
            clock=clock,
        )
        request.addfinalizer(store.close)
        if budget_bytes is not None:
            spend_once(store)
            servers.flush_keys()
            servers.limit_memory(budget_bytes)
        return store

    return make


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], StoreFactory]] = {
    "memory": lambda request: memory_store,
    "durable": durable_store,
    "redis": lambda request: redis_store(request.getfixturevalue("redis_server"), request),
    "redis-cluster": lambda request: redis_store(request.getfixturevalue("redis_cluster"), request),
}
"""Backend name -> how to get its factory (a backend on a server starts it, once)."""


@pytest.fixture(params=list(BACKENDS))
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Each backend's factory in turn, behind the service: every test that uses it runs once
    per backend."""
    return served(BACKENDS[request.param](request))


def served(make_backend: StoreFactory) -> StoreFactory:
    """`make_backend`'s stores behind the service, as the composition root serves them."""

    def make(
        *,
        clock: Clock,
        history_window_ms: int = WINDOW_MS,
        max_value_bytes: int = 1024,
        budget_bytes: int | None = None,
    ) -> Store:
        return StoreService(
            make_backend(
                clock=clock,
                history_window_ms=history_window_ms,
                max_value_bytes=max_value_bytes,
                budget_bytes=budget_bytes,
            )
        )

    return make


@pytest.fixture
def clock() -> FakeClock:
    """The clock the stores under test read."""
    return FakeClock()


@pytest.fixture
def store(make_store: StoreFactory, clock: FakeClock) -> Store:
    """A fresh store of each backend, on the fake clock, with a 120 s window."""
    return make_store(clock=clock)
