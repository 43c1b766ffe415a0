"""A store backend for tests that ask what reached a backend: `DelegatingStore`."""

from __future__ import annotations

from kvservice.store import (
    DEFAULT_PAGE_KEYS,
    NO_CONDITION,
    HistoryEntry,
    KeyPage,
    Precondition,
    StoreStats,
    Value,
)
from kvservice.store.memory import MemoryStore


class DelegatingStore:
    """A backend of its own class, not a MemoryStore subclass: it writes down the name of
    every call it is given and passes it on to a MemoryStore it holds (a fresh one by
    default)."""

    def __init__(self, inner: MemoryStore | None = None) -> None:
        self._inner = MemoryStore() if inner is None else inner
        self.calls: list[str] = []

    @property
    def max_value_bytes(self) -> int:
        return self._inner.max_value_bytes

    @property
    def may_block(self) -> bool:
        return False

    @property
    def copies_on_read(self) -> bool:
        return False

    @property
    def may_be_unavailable(self) -> bool:
        return False

    def check_ready(self) -> None:
        self.calls.append("check_ready")

    def get(self, key: str) -> Value:
        self.calls.append("get")
        return self._inner.get(key)

    def history(self, key: str) -> list[HistoryEntry]:
        self.calls.append("history")
        return self._inner.history(key)

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        self.calls.append("keys")
        return self._inner.keys(prefix, after, limit)

    def stats(self) -> StoreStats:
        self.calls.append("stats")
        return self._inner.stats()

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
    ) -> Value:
        self.calls.append("put")
        return self._inner.put(key, data, content_type, precondition)

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
    ) -> Value:
        self.calls.append("create")
        return self._inner.create(key, data, content_type, precondition)

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        self.calls.append("delete")
        self._inner.delete(key, precondition)
