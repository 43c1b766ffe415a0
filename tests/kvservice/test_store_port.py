"""The store port holds: adapters take any object with the Store Protocol's methods, and no
transport module imports a backend.

`DelegatingStore` inherits from nothing and is handed to both transports; `mypy --strict`
(which checks this file) accepts it only because the adapters are typed against the Protocol.
"""

from __future__ import annotations

import ast
from pathlib import Path

import requests

from kvservice.http.app import create_app
from kvservice.resp.server import RespServer
from kvservice.store import (
    DEFAULT_PAGE_KEYS,
    FEED_PAGE_CHANGES,
    NO_CONDITION,
    NO_EXPIRY,
    ChangeListener,
    ChangePage,
    ExpireIf,
    Expiry,
    ExpiryChange,
    FeedPosition,
    FeedSelector,
    HistoryEntry,
    KeyPage,
    Precondition,
    Store,
    StoreStats,
    Value,
)
from kvservice.store.memory import MemoryStore
from tests.support.fakes import serve_wsgi
from tests.support.rawresp import RespConnection
from tests.support.servers import resp_test_settings

KVSERVICE = Path(__file__).resolve().parents[2] / "kvservice"
BACKEND_MODULES = ("kvservice.store.memory", "kvservice.store.sorted_keys", "kvservice.store.redis")


class DelegatingStore:
    """A backend of its own class, not a MemoryStore subclass: it counts calls and passes
    them on to a MemoryStore it holds (a fresh one unless given)."""

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
    def reads_may_block(self) -> bool:
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
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        self.calls.append("put")
        return self._inner.put(key, data, content_type, precondition, expiry)

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        self.calls.append("create")
        return self._inner.create(key, data, content_type, precondition, expiry)

    def expire(
        self,
        key: str,
        expiry: Expiry,
        when: ExpireIf = ExpireIf.ALWAYS,
        precondition: Precondition = NO_CONDITION,
    ) -> ExpiryChange:
        self.calls.append("expire")
        return self._inner.expire(key, expiry, when, precondition)

    def sweep_expired(self, limit: int) -> int:
        self.calls.append("sweep_expired")
        return self._inner.sweep_expired(limit)

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        self.calls.append("delete")
        self._inner.delete(key, precondition)

    def feed_head(self) -> FeedPosition:
        self.calls.append("feed_head")
        return self._inner.feed_head()

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        self.calls.append("changes")
        return self._inner.changes(selector, after, limit)

    def add_change_listener(self, listener: ChangeListener) -> None:
        self.calls.append("add_change_listener")
        self._inner.add_change_listener(listener)


def test_both_transports_serve_a_backend_that_inherits_from_nothing() -> None:
    backend = DelegatingStore()
    as_port: Store = backend  # mypy --strict checks that the class satisfies the Protocol
    with serve_wsgi(create_app(backend)) as url:
        assert requests.put(f"{url}/k", data=b"over http", timeout=5).status_code == 204
        assert requests.get(f"{url}/_keys", timeout=5).json() == {"keys": ["k"], "next": None}
    server = RespServer(backend, resp_test_settings())
    server.start()
    try:
        with RespConnection(server.port) as conn:
            assert conn.ask("GET", "k") == b"$9\r\nover http\r\n"
    finally:
        server.stop()
    assert backend.calls == ["put", "keys", "get"]
    assert as_port is backend


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    names |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    return names


def test_no_transport_module_imports_a_backend() -> None:
    transports = sorted((KVSERVICE / "http").glob("*.py")) + sorted(
        (KVSERVICE / "resp").glob("*.py")
    )
    assert transports
    offending = {
        str(path.relative_to(KVSERVICE)): sorted(_backends_in(_imports(path)))
        for path in transports
        if _backends_in(_imports(path))
    }
    assert offending == {}


def _backends_in(modules: set[str]) -> set[str]:
    """The backend modules (a backend package's own modules included) among `modules`."""
    return {
        module
        for module in modules
        if any(module == backend or module.startswith(backend + ".") for backend in BACKEND_MODULES)
    }


def test_the_store_package_imports_nothing_but_the_standard_library_and_itself() -> None:
    allowed_third_party = {"redis"}  # only the Redis backend, which is an optional extra
    store = KVSERVICE / "store"
    for path in sorted(store.rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "kvservice":
                assert name.startswith("kvservice.store"), f"{path.name} imports {name}"
            elif path.relative_to(store).parts[0] != "redis":
                assert top not in allowed_third_party and _is_standard_library(top), (
                    f"{path.name} imports {name}"
                )


def _is_standard_library(module: str) -> bool:
    import sys

    return module in sys.stdlib_module_names or module == "__future__"
