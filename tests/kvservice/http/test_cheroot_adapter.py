"""The cheroot adapter against the installed cheroot, without sockets: what it relies on of
cheroot's request and gateway (the attributes they read, the head they write, the framing of
a body, keep-alive) still holds. An upgrade of cheroot that changes any of it fails here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvservice.http.cheroot_adapter import STREAM_AFTER_BYTES, Gateway, Response
from kvservice.http.parser import ParserLimits, RequestHead, RequestParser
from kvservice.http.request_info import STREAM_STATE_ENVIRON

LIMITS = ParserLimits(max_header_bytes=8192, max_header_count=50, max_body_bytes=1 << 20)
PEER = ("127.0.0.1", "40000")
DATE = re.compile(rb"Date: [^\r]*\r\n")

StartResponse = Callable[..., Any]


def parsed(raw: bytes) -> tuple[RequestHead, bytes]:
    """The head and body the parser makes of one request."""
    parser = RequestParser(LIMITS)
    parser.receive_data(raw)
    head = parser.next_event()
    assert isinstance(head, RequestHead)
    body = b""
    while not isinstance(event := parser.next_event(), type(None)) and hasattr(event, "data"):
        body += event.data
    return head, body


def respond(app: Any, raw: bytes, *, tls: bool = False, close: bool = False) -> Response:
    head, body = parsed(raw)
    return Gateway(app, "kvservice", 8080, 10.0).respond(head, body, PEER, tls=tls, close=close)


def whole(response: Response) -> bytes:
    """Everything it writes, the streamed rest included, without the Date."""
    data = b"".join(response.written)
    if response.rest is not None:
        while (piece := response.rest.next_piece()) is not None:
            data += piece
    return DATE.sub(b"", data)


def echo_environ(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    keys = [
        "REQUEST_METHOD",
        "PATH_INFO",
        "QUERY_STRING",
        "REQUEST_URI",
        "SERVER_PROTOCOL",
        "SERVER_NAME",
        "SERVER_PORT",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "HTTP_HOST",
        "HTTP_X_A",
        "wsgi.url_scheme",
        "wsgi.input_terminated",
    ]
    lines = [f"{key}={environ.get(key)}" for key in keys]
    lines.append(f"body={environ['wsgi.input'].read()!r}")
    text = "\n".join(lines).encode()
    start_response("200 OK", [("Content-Length", str(len(text)))])
    return [text]


def test_the_environ_is_made_from_the_parsed_head() -> None:
    raw = (
        b"PUT /a%20b%2Fc?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    text = whole(respond(echo_environ, raw)).split(b"\r\n\r\n", 1)[1].decode()
    assert text.splitlines() == [
        "REQUEST_METHOD=PUT",
        "PATH_INFO=/a b%2Fc",  # an encoded slash stays one
        "QUERY_STRING=x=1",
        "REQUEST_URI=/a%20b%2Fc?x=1",
        "SERVER_PROTOCOL=HTTP/1.1",
        "SERVER_NAME=kvservice",
        "SERVER_PORT=8080",
        "REMOTE_ADDR=127.0.0.1",
        "REMOTE_PORT=40000",
        "CONTENT_LENGTH=2",
        "CONTENT_TYPE=text/plain",
        "HTTP_HOST=h",
        "HTTP_X_A=1",
        "wsgi.url_scheme=http",
        "wsgi.input_terminated=False",
        "body=b'hi'",
    ]
    over_tls = whole(respond(echo_environ, raw, tls=True))
    assert b"wsgi.url_scheme=https" in over_tls


def hello(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def test_the_head_cheroot_writes_is_the_one_clients_have_always_read() -> None:
    response = respond(hello, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert whole(response) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
        b"Server: kvservice\r\n\r\nhello"
    )
    assert response.keep_alive and response.rest is None


@pytest.mark.parametrize(
    ("request_bytes", "close", "connection_header", "keep_alive"),
    [
        (b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False, b"close", False),
        (b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n", True, b"close", False),
        (b"GET /k HTTP/1.0\r\n\r\n", False, None, False),
        (b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False, b"Keep-Alive", True),
    ],
    ids=["asked to close", "the server stops", "HTTP/1.0", "HTTP/1.0 kept alive"],
)
def test_keep_alive_is_cheroot_s_decision_from_the_request(
    request_bytes: bytes, close: bool, connection_header: bytes | None, keep_alive: bool
) -> None:
    response = respond(hello, request_bytes, close=close)
    data = whole(response)
    found = re.search(rb"\r\nConnection: ([^\r]*)\r\n", data)
    assert (found and found.group(1)) == connection_header
    if keep_alive:
        assert b"\r\nKeep-Alive: timeout=10.0\r\n" in data
    assert response.keep_alive is keep_alive


def asks_to_close(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    start_response("400 Bad Request", [("Content-Length", "0"), ("Connection", "close")])
    return [b""]


def test_an_app_that_says_connection_close_closes_it() -> None:
    response = respond(asks_to_close, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not response.keep_alive


def pieces(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    environ[STREAM_STATE_ENVIRON] = 1234
    for number in range(100):
        yield b"%04d" % number * 1000  # 4 KB a piece


def test_a_long_body_in_pieces_is_chunked_and_streamed_as_the_client_reads() -> None:
    response = respond(pieces, b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
    written = b"".join(response.written)
    assert b"Transfer-Encoding: chunked\r\n" in written
    assert len(written) < STREAM_AFTER_BYTES + 8192, "only the first pieces are made at once"
    assert response.rest is not None and response.rest.held_bytes == 1234
    data = whole(response)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body.endswith(b"\r\n0\r\n\r\n")
    assert body.count(b"\r\n") == 2 * 100 + 2  # each piece a chunk, then the last chunk
    assert response.rest.next_piece() is None and response.rest.held_bytes == 0


def test_a_head_request_gets_no_body_and_no_chunking() -> None:
    def head_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        return [b""]

    data = whole(respond(head_app, b"HEAD /k HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert data.endswith(b"\r\n\r\n") and b"chunked" not in data
