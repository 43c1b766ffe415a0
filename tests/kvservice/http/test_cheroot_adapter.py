"""The cheroot adapter without sockets: an upgrade guard (what the adapter relies on in cheroot:
names, signatures, the environ of a sample request, the bytes of sample responses), then the
Bottle app answered through it (GET, PUT, HEAD, a 404 problem, a streamed history, keep-alive
and close, HTTP/1.0, a failing app)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi

from kvservice.http.app import create_app
from kvservice.http.cheroot_adapter import CherootGateway, Peer, Response, ServerInfo
from kvservice.http.parser import (
    Data,
    EndOfMessage,
    ParserLimits,
    RequestHead,
    RequestParser,
    Signal,
)
from kvservice.store.memory import MemoryStore

INFO = ServerInfo("127.0.0.1", 8080, server_name="kvservice", keep_alive_timeout_s=7.0)
PEER = Peer("10.0.0.2", 5555)
DATE = ("Date", "Sun, 06 Dec 2026 07:00:00 GMT")
"""Given by the sample apps, so that cheroot adds none and the bytes are fixed."""


def parsed(raw: bytes) -> tuple[RequestHead, bytes]:
    """The head and decoded body of the one request in `raw`, as the parser reads them."""
    parser = RequestParser(ParserLimits(16384, 100, 1 << 20))
    parser.receive_data(raw)
    head = parser.next_event()
    assert isinstance(head, RequestHead), head
    body = b""
    while not isinstance(event := parser.next_event(), EndOfMessage):
        assert isinstance(event, Data), event
        body += event.data
    assert parser.next_event() is Signal.PAUSED
    return head, body


def answer(gateway: CherootGateway, raw: bytes, peer: Peer = PEER) -> Response:
    return gateway.respond(*parsed(raw), peer)


def whole(response: Response) -> bytes:
    """All of a response's bytes, a streamed body's rest included."""
    return response.produced + b"".join(response.rest or ())


def split(data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers (lower-cased names) and the body, de-chunked if chunked."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    headers = {name.lower(): value for name, value in headers.items()}
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                assert rest == b"\r\n", "the last chunk, no trailers"
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return status_line.encode(), headers, body


# -- the upgrade guard: what the adapter relies on in cheroot ----------------------------------


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_cheroot_names_and_signatures_the_adapter_calls_are_there() -> None:
    assert parameters(cheroot_server.HTTPRequest.__init__)[:3] == ["self", "server", "conn"]
    assert parameters(cheroot_server.HTTPRequest.ensure_headers_sent) == ["self"]
    assert parameters(cheroot_server.HTTPRequest.send_headers) == ["self"]
    assert parameters(cheroot_server.HTTPRequest.write) == ["self", "chunk"]
    assert parameters(cheroot_wsgi.Gateway_10.__init__) == ["self", "req"]
    assert parameters(cheroot_wsgi.Gateway_10.start_response) == [
        "self",
        "status",
        "headers",
        "exc_info",
    ]
    assert parameters(cheroot_wsgi.Gateway_10.write) == ["self", "chunk"]
    assert cheroot_wsgi.Gateway_10.version == (1, 0)
    assert cheroot_server.HTTPServer.version.startswith("Cheroot/")


def sample_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [DATE, ("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_the_environ_of_a_sample_request_is_what_cheroot_built_before() -> None:
    gateway = CherootGateway(sample_app, INFO)
    head, body = parsed(
        b"PUT http://authority.test:81/a%20b%2Fc?q=1 HTTP/1.1\r\nHost: other\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 5\r\nX-Request-ID: r1\r\n"
        b"Expect: 100-continue\r\n\r\nhello"
    )
    environ = dict(gateway.environ(head, body, Peer("10.0.0.2", 5555, https=True)))
    assert environ.pop("wsgi.input").read() == b"hello"
    environ.pop("wsgi.errors")
    assert environ == {
        "ACTUAL_SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "5",
        "CONTENT_TYPE": "text/plain",
        "HTTPS": "on",
        "HTTP_HOST": "authority.test:81",
        "HTTP_X_REQUEST_ID": "r1",
        "PATH_INFO": "/a b%2Fc",
        "QUERY_STRING": "q=1",
        "REMOTE_ADDR": "10.0.0.2",
        "REMOTE_PORT": "5555",
        "REQUEST_METHOD": "PUT",
        "REQUEST_URI": "/a%20b%2Fc?q=1",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "kvservice",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": f"{cheroot_server.HTTPServer.version} Server",
        "wsgi.input_terminated": False,
        "wsgi.multiprocess": False,
        "wsgi.multithread": True,
        "wsgi.run_once": False,
        "wsgi.url_scheme": "https",
        "wsgi.version": (1, 0),
    }


def closing_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [DATE, ("Content-Length", "2"), ("Connection", "Close")])
    return [b"ok"]


def pieces_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [DATE, ("Content-Type", "text/plain")])
    return [b"abc", b"", b"de"]


SAMPLES = {
    "a length": (
        sample_app,
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nServer: kvservice\r\n\r\nok",
        True,
    ),
    "no length: chunked": (
        pieces_app,
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\nServer: kvservice\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        True,
    ),
    "no length on HTTP/1.0: close": (
        pieces_app,
        b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Server: kvservice\r\n\r\nabcde",
        False,
    ),
    "HTTP/1.0 kept alive": (
        sample_app,
        b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=7.0\r\n"
        b"Server: kvservice\r\n\r\nok",
        True,
    ),
    "the app's Connection: close": (
        closing_app,
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 07:00:00 GMT\r\nContent-Length: 2\r\n"
        b"Connection: Close\r\nServer: kvservice\r\n\r\nok",
        False,
    ),
    "Connection: close": (
        sample_app,
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nConnection: close\r\nServer: kvservice\r\n\r\nok",
        False,
    ),
}


@pytest.mark.parametrize(("app", "raw", "expected", "keep_alive"), SAMPLES.values(), ids=SAMPLES)
def test_the_bytes_of_sample_responses_are_cheroots(
    app: Callable[[WSGIEnvironment, StartResponse], list[bytes]],
    raw: bytes,
    expected: bytes,
    keep_alive: bool,
) -> None:
    response = answer(CherootGateway(app, INFO), raw)
    assert (response.produced, response.rest, response.keep_alive) == (expected, None, keep_alive)


# -- the Bottle app through the adapter ----------------------------------------------------------


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(max_value_bytes=4096)


@pytest.fixture
def gateway(store: MemoryStore) -> CherootGateway:
    return CherootGateway(create_app(store), INFO)


def test_put_then_get_then_head(gateway: CherootGateway, store: MemoryStore) -> None:
    put = answer(gateway, b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert (put.status, put.keep_alive, put.rest) == (204, True, None)
    assert store.get("k").data == b"hello"
    status, headers, body = split(whole(answer(gateway, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")))
    assert (status, headers["content-length"], body) == (b"HTTP/1.1 200 OK", "5", b"hello")
    head = answer(gateway, b"HEAD /k HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = split(head.produced)
    assert (status, headers["content-length"], body, head.keep_alive) == (
        b"HTTP/1.1 200 OK",
        "5",
        b"",
        True,
    )


def test_a_chunked_request_body_is_given_whole(gateway: CherootGateway, store: MemoryStore) -> None:
    raw = b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert answer(gateway, raw).status == 204
    assert store.get("c").data == b"abc"


def test_a_missing_key_is_a_404_problem(gateway: CherootGateway) -> None:
    response = answer(gateway, b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = split(whole(response))
    assert status == b"HTTP/1.1 404 Not Found"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "urn:kvservice:problem:key-not-found"
    assert response.keep_alive


def test_connection_close_and_http10(gateway: CherootGateway) -> None:
    closing = answer(gateway, b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (closing.status, closing.keep_alive) == (200, False)
    assert b"\r\nConnection: close\r\n" in closing.produced
    old = answer(gateway, b"GET /_health HTTP/1.0\r\n\r\n")
    assert (old.status, old.keep_alive) == (200, False)
    kept = answer(gateway, b"GET /_health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert (kept.status, kept.keep_alive) == (200, True)
    assert b"\r\nConnection: Keep-Alive\r\n" in kept.produced


def test_an_app_that_asks_to_close_closes(store: MemoryStore) -> None:
    """The app says `Connection: close` on a body it could not read; the connection goes."""
    too_big = b"x" * 5000
    gateway = CherootGateway(create_app(store), INFO)
    raw = b"PUT /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"%x\r\n%s\r\n0\r\n\r\n" % (len(too_big), too_big)
    response = answer(gateway, raw)
    assert (response.status, response.keep_alive) == (413, False)


def test_a_long_history_is_streamed_as_it_is_asked_for(
    gateway: CherootGateway, store: MemoryStore
) -> None:
    value = b"v" * 1000
    for _ in range(100):
        store.put("h", value)
    response = answer(gateway, b"GET /h/history HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.rest is not None, "a body of about 100 KB is not produced whole"
    assert len(response.produced) < 64 * 1024
    assert response.stream_state_bytes > 0, "the app says what its snapshot holds"
    assert response.keep_alive
    status, headers, body = split(whole(response))
    assert (status, headers["transfer-encoding"]) == (b"HTTP/1.1 200 OK", "chunked")
    assert [entry["value"] for entry in json.loads(body)] == [value.decode()] * 100


def test_a_long_body_of_known_length_never_gives_an_empty_piece() -> None:
    """An empty piece tells the transport "nothing yet: wait for a wake" (an event stream's);
    a body that is simply done must end instead, or its connection waits for ever."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "100000")])
        return [b"x" * 50_000, b"", b"x" * 50_000]

    response = answer(CherootGateway(app, INFO), b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.rest is not None
    pieces = list(response.rest)
    assert all(pieces) and len(response.produced) + sum(map(len, pieces)) > 100_000


class Endless:
    """A WSGI body of many pieces (2 MB), with the close() a server must call (PEP 3333)."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 20_000

    def close(self) -> None:
        self.closed = True


def test_closing_a_stream_early_closes_the_apps_iterable() -> None:
    body = Endless()

    def endless(environ: WSGIEnvironment, start_response: StartResponse) -> Endless:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    response = answer(CherootGateway(endless, INFO), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.rest is not None
    next(response.rest)
    assert not body.closed
    response.rest.close()
    assert body.closed


def test_an_app_that_fails_is_a_500_problem_and_closes() -> None:
    def failing(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        raise RuntimeError("boom")

    response = answer(CherootGateway(failing, INFO), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = split(response.produced)
    assert (status, response.keep_alive) == (b"HTTP/1.1 500 Internal Server Error", False)
    assert headers["content-type"] == "application/problem+json"
    assert b"boom" not in body, "no cause leaks to the client"


def test_a_chunked_body_answered_unread_closes_the_connection(gateway: CherootGateway) -> None:
    """The app refuses the key before reading the body: as on a server that reads the body as
    the app asks, the connection closes (and the response says so)."""
    chunked = b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    response = answer(gateway, b"PUT /bad-key HTTP/1.1\r\nHost: x\r\n" + chunked)
    assert (response.status, response.keep_alive) == (400, False)
    assert b"\r\nConnection: close\r\n" in response.produced
    read = answer(gateway, b"PUT /k HTTP/1.1\r\nHost: x\r\n" + chunked)
    assert read.keep_alive, "a body read whole keeps it"


def test_closing_after_a_response_whatever_the_request_said(gateway: CherootGateway) -> None:
    """The server stops: a response to a kept-alive request says it closes."""
    head, body = parsed(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
    response = gateway.respond(head, body, PEER, close=True)
    assert (response.status, response.keep_alive) == (200, False)
    assert b"\r\nConnection: close\r\n" in response.produced
