"""HTTP as a careful client expects it, over raw sockets: Expect: 100-continue answered when the
head arrives, Host required on HTTP/1.1, bare-LF lines answered at once, conditional reads,
the header spellings on the wire, and the hostile input of issue 23 (request targets, control
characters in fields, repeated singleton fields, Transfer-Encoding lists, empty lines before a
request, the absolute form), each in both serving modes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests

from kvservice.auth import Tokens
from kvservice.http.app import create_app
from kvservice.http.bearer import BearerTokens
from kvservice.http.parser import EMPTY_LINES_BEFORE_REQUEST
from kvservice.http.server import RequestRecord, Server
from kvservice.store import KeyNotFound, Store
from kvservice.store.memory import MemoryStore
from kvservice.store.redis import RedisStore
from tests.support.rawhttp import exchange, parse_responses, single_response
from tests.support.redis_servers import RedisProcess
from tests.support.servers import http_settings
from tests.support.tokens import READ_TOKEN, WRITE_TOKEN, reader_and_writer

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def connect(kv_url: str) -> socket.socket:
    address = urlsplit(kv_url)
    assert address.hostname and address.port
    return socket.create_connection((address.hostname, address.port), timeout=3)


def receive(sock: socket.socket, until: bytes) -> bytes:
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- Expect: 100-continue --------------------------------------------------------------------


def test_expect_100_continue_is_answered_as_soon_as_the_head_arrives(kv_url: str) -> None:
    with connect(kv_url) as sock:
        started = time.monotonic()
        sock.sendall(
            b"PUT /cont HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert receive(sock, b"\r\n\r\n") == CONTINUE
        assert time.monotonic() - started < 0.5
        sock.sendall(b"hello")
        [response] = parse_responses(receive(sock, b"\r\n\r\n"))
    assert response.status == 204, "one interim response, then the final one"
    assert requests.get(f"{kv_url}/cont", timeout=5).content == b"hello"


def test_a_value_declared_too_large_is_refused_before_it_is_sent(kv_url: str) -> None:
    with connect(kv_url) as sock:
        started = time.monotonic()
        sock.sendall(
            b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        data = receive(sock, b"}")
        elapsed = time.monotonic() - started
    [response] = parse_responses(data)
    assert (response.status, response.headers["connection"]) == (413, "close")
    assert response.json()["detail"] == (
        "The request body of 5000 bytes would exceed the limit of 1024 bytes."
    )
    assert elapsed < 0.5, "no waiting for a body the client will not send"


def test_expect_on_a_chunked_body_is_answered_too(kv_url: str) -> None:
    with connect(kv_url) as sock:
        sock.sendall(
            b"PUT /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert receive(sock, b"\r\n\r\n") == CONTINUE
        sock.sendall(b"3\r\nabc\r\n0\r\n\r\n")
        [response] = parse_responses(receive(sock, b"\r\n\r\n"))
    assert response.status == 204


def test_a_body_sent_with_its_head_gets_no_interim_response(kv_url: str) -> None:
    response, closed = single_response(
        kv_url,
        b"PUT /eager HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\nhi",
    )
    assert (response.status, closed) == (204, True)


def test_an_upload_as_curl_sends_it_takes_no_expect_timeout(kv_url: str) -> None:
    """curl sends Expect: 100-continue with a body of 1 KiB or more and waits up to 1 s for
    the interim response before sending the body anyway."""
    body = b"x" * 1024
    with connect(kv_url) as sock:
        started = time.monotonic()
        sock.sendall(
            b"PUT /curl HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\nExpect: 100-continue\r\n\r\n"
        )
        assert receive(sock, b"\r\n\r\n") == CONTINUE
        sock.sendall(body)
        [response] = parse_responses(receive(sock, b"\r\n\r\n"))
        assert response.status == 204
        assert time.monotonic() - started < 0.5


# -- Host, bare LF --------------------------------------------------------------------------


def test_an_http11_request_without_host_is_400(kv_url: str) -> None:
    response, closed = single_response(kv_url, b"GET /_health HTTP/1.1\r\n\r\n")
    assert (response.status, closed) == (400, True)
    assert "must have a Host header" in response.json()["detail"]
    ok, _ = single_response(kv_url, b"GET /_health HTTP/1.0\r\n\r\n")
    assert ok.status == 200, "HTTP/1.0 has no Host requirement"


def test_two_host_headers_are_400(kv_url: str) -> None:
    response, closed = single_response(
        kv_url, b"GET /_health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    )
    assert (response.status, closed) == (400, True)


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /_health HTTP/1.1\nHost: x\n\n",
        b"GET /_health HTTP/1.1\r\nHost: x\n\r\n",
        b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\n\r\nhello",
    ],
    ids=["every line", "one header line", "before a body"],
)
def test_lines_ended_by_a_bare_lf_get_a_prompt_400(kv_url: str, request_: bytes) -> None:
    started = time.monotonic()
    response, closed = single_response(kv_url, request_)
    assert (response.status, closed) == (400, True)
    assert time.monotonic() - started < 0.5, "not a wait for a CRLF that never comes"


# -- conditional reads ----------------------------------------------------------------------


def test_if_none_match_with_the_current_etag_is_304_with_the_etag(kv_url: str) -> None:
    etag = requests.put(f"{kv_url}/cached", data=b"v1", timeout=5).headers["ETag"]
    for method in ("GET", "HEAD"):
        fresh = requests.request(method, f"{kv_url}/cached", headers={"If-None-Match": etag})
        assert fresh.status_code == 304
        assert fresh.headers["ETag"] == etag
        assert fresh.content == b""
    any_value = requests.get(f"{kv_url}/cached", headers={"If-None-Match": "*"}, timeout=5)
    assert any_value.status_code == 304
    stale = requests.get(f"{kv_url}/cached", headers={"If-None-Match": '"old"'}, timeout=5)
    assert (stale.status_code, stale.content) == (200, b"v1")


def test_a_failing_if_match_on_a_read_is_412(kv_url: str) -> None:
    etag = requests.put(f"{kv_url}/matched", data=b"v1", timeout=5).headers["ETag"]
    assert requests.get(f"{kv_url}/matched", headers={"If-Match": etag}).status_code == 200
    refused = requests.get(f"{kv_url}/matched", headers={"If-Match": '"old"'}, timeout=5)
    assert refused.status_code == 412
    assert refused.json()["type"] == "urn:kvservice:problem:precondition-failed"
    missing = requests.get(f"{kv_url}/nothing", headers={"If-None-Match": "*"}, timeout=5)
    assert missing.status_code == 404, "existence is judged first"


# -- header spellings -----------------------------------------------------------------------


def test_the_etag_header_is_spelled_etag_and_an_empty_201_has_no_content_type(
    kv_url: str,
) -> None:
    with connect(kv_url) as sock:
        sock.sendall(b"POST /spelled HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv")
        head = receive(sock, b"\r\n\r\n").split(b"\r\n\r\n")[0]
        sock.sendall(b"GET /spelled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        read = receive(sock, b"\r\n\r\nv")
    assert head.startswith(b"HTTP/1.1 201 ")
    assert b"\r\nETag: " in head
    assert b"\r\ncontent-type:" not in head.lower()
    assert b"\r\nETag: " in read and b"\r\nEtag" not in read


# -- pipelining ------------------------------------------------------------------------------


def test_thousands_of_pipelined_requests_are_all_answered_in_order(kv_url: str) -> None:
    requests.put(f"{kv_url}/piped", data=b"v", timeout=5)
    count = 3000
    pipeline = b"GET /piped HTTP/1.1\r\nHost: x\r\n\r\n" * (count - 1)
    pipeline += b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(kv_url) as sock:
        sock.settimeout(10)
        sock.sendall(pipeline)
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    responses = parse_responses(data)
    assert len(responses) == count
    assert all(response.body == b"v" for response in responses[:-1])
    assert responses[-1].json()["status"] == "ok"


# -- hostile input, round two (issue 23): each case in both serving modes ---------------------


@dataclass
class Served:
    """A kvservice over `store`, and what its access log was told."""

    url: str
    store: Store
    records: list[RequestRecord]


ServeKV = Callable[..., Served]


@pytest.fixture(params=[True, False], ids=["on the event loop", "by workers"])
def serve(
    request: pytest.FixtureRequest, background_stops: list[threading.Thread]
) -> Iterator[ServeKV]:
    """Start kvservice on a store (a MemoryStore by default), with tokens or not, served on
    the event loop or by workers (the fixture's parameter)."""
    servers: list[Server] = []

    def start(*, store: Store | None = None, tokens: Tokens | None = None) -> Served:
        store = store or MemoryStore()
        records: list[RequestRecord] = []
        app: Any = create_app(store)
        if tokens is not None:
            app = BearerTokens(app, tokens)
        settings = http_settings(threads=4, socket_timeout_s=2.0, serve_inline=request.param)
        server = Server(app, settings, observers=[records.append])
        server.start()
        servers.append(server)
        return Served(f"http://127.0.0.1:{server.port}", store, records)

    yield start
    for server in servers:
        stop = threading.Thread(target=server.stop)
        stop.start()
        background_stops.append(stop)


def put(target: bytes, *fields: bytes, body: bytes = b"v") -> bytes:
    """A PUT of `body` to `target` with these extra header lines, closing the connection."""
    head = b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    length = b"Content-Length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in fields) + length + b"\r\n" + body


def assert_refused(url: str, request_: bytes, status: int = 400, detail: str = "") -> None:
    """`request_` gets one `status` problem, and the connection closes."""
    response, closed = single_response(url, request_)
    assert (response.status, closed) == (status, True), response.body
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    "target",
    [
        b"/ta\tb",
        b"/tab\t",
        b"/ta\rb",
        b"/\ttab",
        b"/ta\x00b",
        b"/ta\x01b",
        b"/ta\x1bb",
        b"/ta\x0bb",
        b"/ta\x0cb",
        b"/ta\x7fb",
        b"/t\xc3\xa9b",
        b"/tab#x",
        b"/ta%zzb",
        b"/tab%4",
        b"/ta\\b",
        b"/ta{b}",
        b"/ta|b",
        b"/ta^b",
        b'/ta"b',
        b"/ta<b>",
        b"/ta`b",
        b"http://x/ta\tb",
    ],
)
def test_a_target_byte_outside_rfc_3986_is_400_and_writes_nothing(
    serve: ServeKV, target: bytes
) -> None:
    """urlsplit drops tabs and CRs: `/ta\\tb` wrote the key `tab` (RFC 9112 section 3)."""
    served = serve()
    assert_refused(served.url, put(target), 400)
    assert served.store.keys().keys == [], "nothing is written under any key"


def test_whitespace_around_the_request_line_parts_is_400(serve: ServeKV) -> None:
    served = serve()
    for request_line in (b" PUT /tab HTTP/1.1", b"PUT  /tab HTTP/1.1", b"PUT /tab HTTP/1.1\t"):
        request_ = request_line + b"\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        assert_refused(served.url, request_, 400, "Malformed request line")
    assert served.store.keys().keys == []


def test_targets_of_rfc_3986_characters_still_route(serve: ServeKV) -> None:
    served = serve()
    response, _ = single_response(served.url, put(b"/t%41b"))
    assert response.status == 204
    assert served.store.get("tAb").data == b"v"
    punctuated, _ = single_response(served.url, put(b"/a-b_c.d~e!$&'()*+,;=:@[]"))
    assert punctuated.json()["type"] == "urn:kvservice:problem:invalid-key", (
        "the transport lets every RFC 3986 character through; the store judges keys"
    )
    query, _ = single_response(
        served.url, b"GET /_keys?prefix=t&limit=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert query.json()["keys"] == ["tAb"]


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        (b"text/plain\r", "CR, LF or NUL"),
        (b"text/plain\x00", "CR, LF or NUL"),
        (b"text/plain\rSet-Cookie: x=1", "CR, LF or NUL"),
        (b"text/\x01plain", "control character"),
        (b"text/plain\x1b[31m", "control character"),
        (b"text/plain\x7f", "control character"),
        (b"text/plain\x0b", "control character"),
        (b"text/pl\xe4in", "beyond ASCII"),  # was stored, and sent back as two bytes
        (b"text/plain; title=\xff", "beyond ASCII"),
    ],
)
def test_a_content_type_with_a_control_character_is_400_and_not_stored(
    serve: ServeKV, content_type: bytes, detail: str
) -> None:
    """It was stored, and every later GET of the key was a 500 with a traceback (or echoed
    the control character)."""
    served = serve()
    assert_refused(served.url, put(b"/poisoned", b"Content-Type: " + content_type), 400, detail)
    assert served.store.keys().keys == []


def test_a_content_type_with_a_tab_is_stored_and_served(serve: ServeKV) -> None:
    served = serve()
    response, _ = single_response(served.url, put(b"/typed", b"Content-Type: text/plain;\tq=1"))
    assert response.status == 204
    read, _ = single_response(served.url, b"GET /typed HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read.headers["content-type"] == "text/plain;\tq=1"


def test_json_nested_deeper_than_the_parser_recurses_is_400_not_500(serve: ServeKV) -> None:
    """1,000 `[` in a 1 KiB value made json.loads raise RecursionError: a 500 and a
    traceback in the log for one request."""
    served = serve()
    body = b"[" * 1000
    request_ = (
        b"PUT /deep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    response, _ = single_response(served.url, request_)  # the body was read: it may stay open
    assert response.status == 400, response.body
    assert "nested too deeply" in response.json()["detail"]
    assert served.store.keys().keys == []


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"\r", b"a\x00"])
def test_cr_or_nul_in_any_header_value_is_400(serve: ServeKV, value: bytes) -> None:
    served = serve()
    request_ = b"GET /_health HTTP/1.1\r\nHost: x\r\nX-Note: " + value + b"\r\n\r\n"
    assert_refused(served.url, request_, 400, "CR, LF or NUL")


@pytest.mark.parametrize(
    "stored", ["text/plain\r", "a\r\nSet-Cookie: x=1", "a\x00", "t\x01", "€", "text/pl\xe4in"]
)
def test_a_stored_content_type_that_is_no_field_value_never_makes_a_read_fail(
    serve: ServeKV, stored: str
) -> None:
    """Defence in depth: a type stored before types were checked, or by other means, is
    answered as application/octet-stream rather than with a 500."""
    store = MemoryStore()
    store.put("old", b"v", stored)
    served = serve(store=store)
    for method in (b"GET", b"HEAD"):
        response, _ = single_response(
            served.url, method + b" /old HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert response.status == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.body == (b"v" if method == b"GET" else b"")


def test_on_redis_the_type_is_checked_alike_and_a_poisoned_one_is_served_safely(
    serve: ServeKV, redis_server: RedisProcess
) -> None:
    redis_server.flush()
    store = RedisStore.from_url(redis_server.url, connections=4, timeout_s=2.0)
    try:
        served = serve(store=store)
        assert_refused(served.url, put(b"/r", b"Content-Type: text/\x01plain"), 400)
        assert_refused(served.url, put(b"/r", b"Content-Type: text/plain\r"), 400)
        with pytest.raises(KeyNotFound):
            store.get("r")
        response, _ = single_response(served.url, put(b"/r", b"Content-Type: text/plain;\tq=1"))
        assert response.status == 204
        assert store.get("r").content_type == "text/plain;\tq=1", "stored as validated"
        store.put("r", b"v", "text/plain\r\nSet-Cookie: x=1")  # as another writer could
        read, _ = single_response(served.url, b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (read.status, read.headers["content-type"]) == (200, "application/octet-stream")
        # Bytes that are no UTF-8 at all, written by another client of the same Redis.
        redis.Redis.from_url(redis_server.url).hset("kv:{r}", "t", b"text/\xff")
        read, _ = single_response(served.url, b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (read.status, read.headers["content-type"]) == (200, "application/octet-stream")
    finally:
        store.close()


@pytest.mark.parametrize(
    "fields",
    [
        [f"Authorization: Bearer {READ_TOKEN}", f"Authorization: Bearer {WRITE_TOKEN}"],
        [f"Authorization: Bearer {WRITE_TOKEN}", f"Authorization: Bearer {READ_TOKEN}"],
        [f"Authorization: Bearer {WRITE_TOKEN}", f"authorization: Bearer {WRITE_TOKEN}"],
        [f"Authorization: Bearer {WRITE_TOKEN}", "Content-Type: a/b", "Content-Type: c/d"],
        [f"Authorization: Bearer {WRITE_TOKEN}", "Host: y"],
    ],
    ids=["read then write", "write then read", "the same twice", "two types", "two hosts"],
)
def test_a_repeated_singleton_header_is_400(serve: ServeKV, fields: list[str]) -> None:
    """A proxy that checks the first Authorization line and a server that takes the last
    would disagree on who the caller is."""
    served = serve(tokens=reader_and_writer())
    assert_refused(served.url, put(b"/k", *(line.encode() for line in fields)), 400, "Duplicate")
    assert served.store.keys().keys == []


def test_repeated_list_headers_are_joined(serve: ServeKV) -> None:
    served = serve()
    etag = requests.put(f"{served.url}/listed", data=b"v1", timeout=5).headers["ETag"]
    request_ = put(b"/listed", b'If-Match: "nope"', b"If-Match: " + etag.encode(), body=b"v2")
    response, _ = single_response(served.url, request_)
    assert response.status == 204, "either tag of the joined list may match"
    assert served.store.get("listed").data == b"v2"


CHUNKED_BODY = b"1\r\nv\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "codings",
    [
        [b"chunked, chunked"],
        [b"chunked,chunked"],
        [b"CHUNKED ,\tChunked"],
        [b"chunked", b"chunked"],
        [b"chunked", b"Chunked"],
        [b"chunked, chunked", b"chunked"],
        [b"chunked, gzip"],
        [b"chunked", b"gzip"],
    ],
)
def test_chunked_twice_or_not_last_is_400_on_one_line_or_two(
    serve: ServeKV, codings: list[bytes]
) -> None:
    """RFC 9112 6.1 forbids chunked twice, 6.3 chunked anywhere but last: framed alike
    whether the codings share one Transfer-Encoding line or not."""
    served = serve()
    head = b"PUT /te HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(b"Transfer-Encoding: " + coding + b"\r\n" for coding in codings)
    assert_refused(served.url, head + b"\r\n" + CHUNKED_BODY, 400)
    assert served.store.keys().keys == []


@pytest.mark.parametrize(
    ("one_line", "two_lines", "status"),
    [
        (b"gzip, chunked", [b"gzip", b"chunked"], 501),
        (b"chunked, chunked", [b"chunked", b"chunked"], 400),
        (b" chunked , ", [b"chunked", b""], 204),
    ],
)
def test_codings_on_one_line_or_two_are_answered_alike(
    serve: ServeKV, one_line: bytes, two_lines: list[bytes], status: int
) -> None:
    served = serve()
    answers = []
    for codings in ([one_line], two_lines):
        head = b"PUT /te HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += b"".join(b"Transfer-Encoding: " + coding + b"\r\n" for coding in codings)
        response, _ = single_response(served.url, head + b"\r\n" + CHUNKED_BODY)
        answers.append(response.status)
    assert answers == [status, status]


@pytest.mark.parametrize("empty_lines", [1, 2, EMPTY_LINES_BEFORE_REQUEST])
def test_empty_lines_before_a_request_are_ignored(serve: ServeKV, empty_lines: int) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line;
    a client may send one after a body (or split one over reads)."""
    served = serve()
    with connect(served.url) as sock:
        sock.sendall(b"\r\n" * empty_lines)
        time.sleep(0.05)  # a read of empty lines alone, then the request
        sock.sendall(put(b"/afterempty", body=b"v") + b"\r\n" * empty_lines)
        [response] = parse_responses(receive(sock, b"\r\n\r\n"))
    assert response.status == 204
    assert served.store.get("afterempty").data == b"v"
    piped = b"GET /afterempty HTTP/1.1\r\nHost: x\r\n\r\n" + b"\r\n" * empty_lines
    piped += b"GET /afterempty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data, _ = exchange(served.url, piped, timeout_s=1.0)
    assert [response.body for response in parse_responses(data)] == [b"v", b"v"]


def test_more_empty_lines_than_are_ignored_are_400(serve: ServeKV) -> None:
    served = serve()
    request_ = b"\r\n" * (EMPTY_LINES_BEFORE_REQUEST + 1) + put(b"/manyempty")
    assert_refused(served.url, request_, 400)
    assert served.store.keys().keys == []


def test_the_absolute_form_is_served_as_its_path(serve: ServeKV) -> None:
    """RFC 9112 3.2.2: a server MUST accept the absolute form; its authority replaces Host."""
    served = serve()
    response, _ = single_response(served.url, put(b"http://example.test/abs", body=b"v"))
    assert response.status == 204
    assert served.store.get("abs").data == b"v"
    for target in (b"http://example.test/abs", b"HTTPS://example.test:8443/abs?"):
        read, _ = single_response(served.url, b"GET " + target + b" HTTP/1.1\r\nHost: y\r\n\r\n")
        assert (read.status, read.body) == (200, b"v")
    keys, _ = single_response(served.url, b"GET http://h/_keys?limit=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert keys.json()["keys"] == ["abs"]
    assert [record.target for record in served.records] == [
        "/abs",
        "/abs",
        "/abs",
        "/_keys?limit=1",
    ]
    assert {record.route for record in served.records} == {"/{key}", "/_keys"}


def test_the_absolute_form_authority_replaces_host(serve: ServeKV) -> None:
    """What the app sees as the host is the target's authority, not the Host header."""
    served = serve()
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ["HTTP_HOST"])
        start_response("204 No Content", [])
        return []

    server = Server(app, http_settings(threads=2, socket_timeout_s=2.0))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        single_response(url, b"GET http://authority.test:81/x HTTP/1.1\r\nHost: other\r\n\r\n")
        single_response(url, b"GET /x HTTP/1.1\r\nHost: other\r\n\r\n")
    finally:
        server.stop()
    assert seen == ["authority.test:81", "other"]
    assert served.url  # the parametrized server is unused: the app here shows the environ


@pytest.mark.parametrize(
    "target",
    [
        b"http://user@h/abs",
        b"http://user:pw@h/abs",
        b"http:///abs",
        b"http://",
        b"ftp://h/abs",
        b"http:/abs",
        b"abs",
        b"http://h/a\x00bs",
        b"http://h/abs#x",
        b"*",
    ],
)
def test_targets_in_no_form_a_server_accepts_are_400(serve: ServeKV, target: bytes) -> None:
    served = serve()
    assert_refused(served.url, put(target), 400)
    assert served.store.keys().keys == []


def test_the_token_check_sees_the_absolute_forms_path(serve: ServeKV) -> None:
    served = serve(tokens=reader_and_writer())
    health, _ = single_response(served.url, b"GET http://h/_health HTTP/1.1\r\nHost: h\r\n\r\n")
    assert health.status == 200, "an open path, however the target is written"
    refused, _ = single_response(served.url, put(b"http://h/_health/../k"))
    assert refused.status == 401
    auth = f"Authorization: Bearer {READ_TOKEN}".encode()
    forbidden, _ = single_response(served.url, put(b"http://h/k", auth))
    assert forbidden.status == 403
    assert served.store.keys().keys == []
    assert [(record.target, record.status) for record in served.records] == [
        ("/_health", 200),
        ("/_health/../k", 401),
        ("/k", 403),
    ]
