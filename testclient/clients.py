"""Which `KVClient` talks to a kvservice URL: one factory per URL scheme."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from testclient.kv_client import HTTPKVClient, KVClient
from testclient.resp_client import RespKVClient

ClientFactory = Callable[[str, tuple[float, float]], KVClient]
"""Makes the client from the kvservice URL and the (connect, read) timeouts."""

CLIENTS: dict[str, ClientFactory] = {
    "http": HTTPKVClient,
    "https": HTTPKVClient,
    "redis": RespKVClient,
}
"""URL scheme -> the client for it; `--kv-url` accepts exactly these schemes."""


def make_client(kv_url: str, timeout: tuple[float, float]) -> KVClient:
    """The client for `kv_url`'s scheme (one of CLIENTS; config.py has checked it)."""
    return CLIENTS[urlsplit(kv_url).scheme](kv_url, timeout)
