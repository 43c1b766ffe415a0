"""The tests' two tokens, one that writes and one that reads, and one store served with them
over HTTP and RESP (optionally over TLS), as the test client's token and TLS tests need."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from kvservice.auth import Access, Tokens
from kvservice.http.app import create_app
from kvservice.http.bearer import BearerTokens
from kvservice.http.server import Server
from kvservice.store.memory import MemoryStore
from kvservice.tls import server_context
from tests.support.certificates import Certificates
from tests.support.rawresp import running_resp
from tests.support.servers import change_feed, http_settings

WRITE_TOKEN = "write-0123456789abcdef"
READ_TOKEN = "read-0123456789abcdef"


def reader_and_writer() -> Tokens:
    """READ_TOKEN named reader and WRITE_TOKEN named writer."""
    return Tokens.of((READ_TOKEN, Access.READ, "reader"), (WRITE_TOKEN, Access.WRITE, "writer"))


@contextmanager
def serving_with_tokens(certificates: Certificates | None = None) -> Iterator[dict[str, str]]:
    """One store with `reader_and_writer`, over HTTP and RESP (HTTPS and RESP over TLS with
    `certificates`): the URL of each, as "http" and "resp"."""
    store, tokens = MemoryStore(), reader_and_writer()
    settings, resp_tls = http_settings(threads=4), None
    if certificates is not None:
        cert, key = str(certificates.cert), str(certificates.key)
        settings = dataclasses.replace(settings, tls=server_context(cert, key, alpn=["http/1.1"]))
        resp_tls = server_context(cert, key)
    with change_feed(store) as feed:
        http = Server(BearerTokens(create_app(store, feed=feed), tokens), settings)
        http.start()
        try:
            with running_resp(store, tokens=tokens, tls=resp_tls) as resp:
                secure = "s" if certificates is not None else ""
                yield {
                    "http": f"http{secure}://127.0.0.1:{http.port}",
                    "resp": f"redis{secure}://127.0.0.1:{resp.port}",
                }
        finally:
            http.stop()
