"""HTTP as a careful client expects it, over raw sockets: Expect: 100-continue answered when the
head arrives, Host required on HTTP/1.1, bare-LF lines answered at once, conditional reads,
and the header spellings on the wire."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.rawhttp import parse_responses, single_response

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
