"""The clients the checks talk to a kvservice through: the `KVClient` protocol and its types,
one client per transport, and `CLIENTS`, the client for each URL scheme."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from testclient.clients.http import HTTPKVClient
from testclient.clients.protocol import (
    DEFAULT_TIMEOUT_S,
    NO_CREDENTIALS,
    Capability,
    ChangeType,
    Credentials,
    FeedChange,
    FeedEvent,
    HistoryEntry,
    HistoryReply,
    KeysReply,
    KVClient,
    KVRefused,
    KVUnreachable,
    Outcome,
    Reply,
    UnopenedWatch,
    Watch,
    describe_value,
)
from testclient.clients.resp import RespKVClient

__all__ = [
    "CLIENTS",
    "DEFAULT_TIMEOUT_S",
    "NO_CREDENTIALS",
    "Capability",
    "ChangeType",
    "ClientFactory",
    "Credentials",
    "FeedChange",
    "FeedEvent",
    "HTTPKVClient",
    "HistoryEntry",
    "HistoryReply",
    "KVClient",
    "KVRefused",
    "KVUnreachable",
    "KeysReply",
    "Outcome",
    "Reply",
    "RespKVClient",
    "UnopenedWatch",
    "Watch",
    "describe_value",
    "make_client",
]

ClientFactory = Callable[[str, tuple[float, float], Credentials], KVClient]
"""Makes the client from the kvservice URL, the (connect, read) timeouts and the tokens."""

CLIENTS: dict[str, ClientFactory] = {
    "http": HTTPKVClient,
    "https": HTTPKVClient,
    "redis": RespKVClient,
    "rediss": RespKVClient,
}
"""URL scheme -> the client for it; `--kv-url` accepts exactly these schemes."""


def make_client(
    kv_url: str, timeout: tuple[float, float], credentials: Credentials = NO_CREDENTIALS
) -> KVClient:
    """The client for `kv_url`'s scheme (one of CLIENTS; config.py has checked it)."""
    return CLIENTS[urlsplit(kv_url).scheme](kv_url, timeout, credentials)
