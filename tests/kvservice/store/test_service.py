"""The service in front of the backends: it judges what a client asks before any backend is
asked, and passes on unchanged what a backend says of itself.

The contract suite (test_contract.py) runs every backend behind the service; here its
invalid-input cases run against a `DelegatingStore` (test_store_port.py), which writes down
every call it is given, to show that none of them reaches a backend: a backend implements
primitives only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.kvservice.store.test_contract as contract
from kvservice.execution import execution_for
from kvservice.store import (
    FEED_PAGE_CHANGES,
    MAX_PAGE_KEYS,
    Change,
    Clock,
    Closable,
    FeedSelector,
    InvalidKey,
    Store,
    StoreUnavailable,
)
from kvservice.store.durable import DurableStore
from kvservice.store.memory import MemoryStore
from kvservice.store.redis import RedisStore
from kvservice.store.service import StoreService
from tests.kvservice.store.conftest import WINDOW_MS
from tests.kvservice.test_store_port import DelegatingStore
from tests.support.clock import FakeClock
from tests.support.processes import free_port


def test_the_contracts_invalid_keys_and_listings_never_reach_the_backend() -> None:
    backend = DelegatingStore()
    service = StoreService(backend)
    contract.test_every_operation_validates_the_key(service)
    for prefix, after, reason in contract.UNLISTABLE:
        contract.test_a_prefix_or_after_no_key_can_have_is_refused(service, prefix, after, reason)
    assert backend.calls == []


def test_a_value_over_the_backends_limit_never_reaches_it() -> None:
    backends: list[DelegatingStore] = []

    def make_store(
        *,
        clock: Clock,
        history_window_ms: int = WINDOW_MS,
        max_value_bytes: int = 1024,
        budget_bytes: int | None = None,
    ) -> Store:
        inner = MemoryStore(max_value_bytes=max_value_bytes, clock=clock)
        backends.append(DelegatingStore(inner))
        return StoreService(backends[-1])

    contract.test_value_limit_is_inclusive(make_store, FakeClock())
    assert [backend.calls for backend in backends] == [["put", "get"]], "not the refused put"


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_KEYS + 1])
def test_a_page_limit_out_of_bounds_is_the_callers_bug_and_never_reaches_the_backend(
    limit: int,
) -> None:
    backend = DelegatingStore()
    with pytest.raises(ValueError, match=f"from 1 to {MAX_PAGE_KEYS}, not {limit}"):
        StoreService(backend).keys(limit=limit)
    assert backend.calls == []


def test_valid_calls_reach_the_backend_once_each() -> None:
    backend = DelegatingStore()
    service = StoreService(backend)
    service.put("k", b"v")
    service.create("n", b"v")
    service.get("k")
    service.history("k")
    service.keys(prefix="k", after="k", limit=MAX_PAGE_KEYS)
    service.delete("k")
    service.stats()
    service.check_ready()
    assert backend.calls == [
        "put",
        "create",
        "get",
        "history",
        "keys",
        "delete",
        "stats",
        "check_ready",
    ]


def test_what_a_backend_says_of_itself_passes_through(tmp_path: Path) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}"
    backends: list[Store] = [
        MemoryStore(max_value_bytes=7),
        DurableStore(tmp_path / "data", fsync="off", max_value_bytes=8),
        RedisStore.from_url(unreachable, connections=1, timeout_s=0.5, max_value_bytes=9),
    ]
    for backend in backends:
        service = StoreService(backend)
        traits = (
            "max_value_bytes",
            "may_block",
            "reads_may_block",
            "may_be_unavailable",
            "copies_on_read",
        )
        assert [getattr(service, trait) for trait in traits] == [
            getattr(backend, trait) for trait in traits
        ], type(backend).__name__
        assert execution_for(service) == execution_for(backend)
        assert isinstance(service, Closable)
        service.close()
    assert [execution_for(backend).writes.value for backend in backends] == [
        "inline",
        "workers",
        "workers",
    ], "the three backends differ, so the check above compares something"


def test_a_durable_backends_figures_and_close_pass_through(tmp_path: Path) -> None:
    service = StoreService(DurableStore(tmp_path / "data", fsync="off"))
    service.put("k", b"v")
    persistence = service.stats().persistence
    assert persistence is not None and persistence.committed_writes == 1
    service.close()
    # Closing released the directory: another store may open it now, and finds the write.
    reopened = DurableStore(tmp_path / "data", fsync="off")
    try:
        assert reopened.get("k").data == b"v"
    finally:
        reopened.close()


def test_an_unreachable_backends_readiness_passes_through() -> None:
    backend = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}", connections=1, timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="could not be connected to"):
        StoreService(backend).check_ready()
    backend.close()


def test_closing_a_backend_with_nothing_to_close_is_nothing() -> None:
    backend = DelegatingStore()
    assert not isinstance(backend, Closable)
    StoreService(backend).close()
    assert backend.calls == []


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        (FeedSelector(key="a-b"), "key has the character '-' at position 1"),
        (FeedSelector(key=""), "key is empty"),
        (FeedSelector(prefix="a b"), "prefix has the character ' ' at position 1"),
        (FeedSelector(prefix="x" * 256), "prefix is 256 characters long"),
    ],
)
def test_a_selector_no_key_can_match_never_reaches_the_backend(
    selector: FeedSelector, reason: str
) -> None:
    backend = DelegatingStore()
    service = StoreService(backend)
    with pytest.raises(InvalidKey, match=reason):
        service.changes(selector, service.feed_head())
    assert backend.calls == ["feed_head"]


@pytest.mark.parametrize("limit", [0, -1, FEED_PAGE_CHANGES + 1])
def test_a_feed_page_limit_out_of_bounds_is_the_callers_bug(limit: int) -> None:
    backend = DelegatingStore()
    service = StoreService(backend)
    with pytest.raises(ValueError, match=f"from 1 to {FEED_PAGE_CHANGES}, not {limit}"):
        service.changes(FeedSelector(), service.feed_head(), limit=limit)
    assert backend.calls == ["feed_head"]


def test_the_feeds_valid_calls_reach_the_backend() -> None:
    backend = DelegatingStore()
    service = StoreService(backend)

    class Listener:
        def changed(self, change: Change) -> None: ...

        def interrupted(self) -> None: ...

    service.add_change_listener(Listener())
    head = service.feed_head()
    service.changes(FeedSelector(key="k"), head, limit=FEED_PAGE_CHANGES)
    service.changes(FeedSelector(prefix=""), head, limit=1)
    assert backend.calls == ["add_change_listener", "feed_head", "changes", "changes"]
