"""The background sweeper: it gives an expired key's memory back though nobody reads it,
keeps going through an unavailable store or a bug, and stops when told."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from kvservice.store import Expiry, StoreError, StoreMisconfigured, StoreUnavailable
from kvservice.store.memory import MemoryStore
from kvservice.store.sweeper import Sweeper
from tests.support.clock import START_MS, FakeClock

WAIT_S = 5.0


def eventually(condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds within WAIT_S (polled)."""
    give_up = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


def fill(store: MemoryStore) -> None:
    """1,000 keys due at START_MS + 1,000, 500 due later, 500 that never expire."""
    for number in range(1_000):
        store.put(f"due{number}", b"x" * 500, expiry=Expiry(at_ms=START_MS + 1_000))
    for number in range(500):
        store.put(f"later{number}", b"x" * 500, expiry=Expiry(at_ms=START_MS + 60_000))
        store.put(f"plain{number}", b"x" * 500)


def test_the_sweeper_gives_memory_back_though_nobody_reads() -> None:
    clock = FakeClock()
    swept, twin = MemoryStore(clock=clock), MemoryStore(clock=clock)
    fill(swept)
    fill(twin)
    clock.advance(1_000)
    while twin.sweep_expired(100_000):  # what removing every due key gives back, at once
        pass
    assert twin.stats().used_bytes < swept.stats().used_bytes

    sweeper = Sweeper(swept, interval_s=0.01, batch=64)
    sweeper.start()
    try:
        assert eventually(lambda: swept.stats().used_bytes == twin.stats().used_bytes)
    finally:
        sweeper.stop()
    assert sweeper.removed == 1_000
    assert swept.stats() == twin.stats()


def test_a_stopped_sweeper_sweeps_no_more() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    fill(store)
    sweeper = Sweeper(store, interval_s=0.01)
    sweeper.start()
    sweeper.stop()
    clock.advance(1_000)
    time.sleep(0.1)
    assert sweeper.removed == 0
    assert store.sweep_expired(100_000) == 1_000, "every due key was still there"


class FlakyStore:
    """A store whose sweep_expired raises each of `errors` in turn, then removes `due` keys
    a batch at a time."""

    def __init__(self, errors: list[Exception], due: int) -> None:
        self.errors = errors
        self.due = due
        self.calls = 0

    def sweep_expired(self, limit: int) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        removed, self.due = min(limit, self.due), self.due - min(limit, self.due)
        return removed


@pytest.mark.parametrize("refusal", [StoreUnavailable("away"), StoreMisconfigured("away")])
def test_the_sweeper_outlives_an_unavailable_store_and_a_bug_and_says_so_once(
    caplog: pytest.LogCaptureFixture, refusal: StoreError
) -> None:
    store = FlakyStore([refusal] * 3 + [RuntimeError("a bug")], due=5)
    sweeper = Sweeper(store, interval_s=0.01, batch=2)
    with caplog.at_level(logging.INFO, logger="kvservice.store.sweeper"):
        sweeper.start()
        try:
            assert eventually(lambda: sweeper.removed == 5)
        finally:
            sweeper.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("cannot sweep expired keys: away") == 1
    assert "sweeping expired keys failed" in messages
    assert "sweeping expired keys again" in messages
    assert store.calls >= 4 + 3  # four failures, then batches of 2, 2, 1
