"""Oversized input is refused fast, without being read into memory, on every method."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.processes import ServiceProcess, kvservice_process

TEN_MB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def kv() -> ServiceProcess:  # type: ignore[misc]
    with kvservice_process() as service:
        yield service


def send_and_time(
    kv: ServiceProcess, head: bytes, body_chunks: int, chunk: bytes
) -> tuple[bytes, float]:
    """Send `head`, then stream the body from another thread; return the response and the
    milliseconds from the end of the head to the first response byte."""
    sock = socket.create_connection(("127.0.0.1", kv.port), timeout=5)

    def stream_body() -> None:
        try:
            for _ in range(body_chunks):
                sock.sendall(chunk)
        except OSError:
            pass  # the server refused and closed: that is the point

    sock.sendall(head)
    started = time.perf_counter()
    sender = threading.Thread(target=stream_body)
    sender.start()
    try:
        first = sock.recv(65536)
        elapsed_ms = (time.perf_counter() - started) * 1000
        response = first
        while chunk_received := sock.recv(65536):
            response += chunk_received
    except ConnectionResetError:
        response, elapsed_ms = locals().get("response", b""), locals().get("elapsed_ms", -1.0)
    finally:
        sender.join()
        sock.close()
    return response, elapsed_ms


@pytest.mark.parametrize("method", ["PUT", "POST", "GET", "DELETE", "HEAD"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_ten_megabyte_body_is_413_fast_and_costs_no_memory(
    kv: ServiceProcess, method: str, framing: str
) -> None:
    rss_before = kv.rss_bytes()
    block = b"x" * 65536
    if framing == "content-length":
        head = b"%s /k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
            method.encode(),
            TEN_MB,
        )
        response, elapsed_ms = send_and_time(kv, head, TEN_MB // len(block), block)
    else:
        head = b"%s /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % method.encode()
        chunk = b"%x\r\n%s\r\n" % (len(block), block)
        response, elapsed_ms = send_and_time(kv, head, TEN_MB // len(block), chunk)
    growth = kv.rss_bytes() - rss_before
    print(
        f"\n{method} {framing} 10 MB: {response[:12]!r} after {elapsed_ms:.1f} ms; "
        f"RSS {growth / 1024:+.0f} KiB"
    )
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"application/problem+json" in response
    assert 0 <= elapsed_ms < 100
    assert growth < 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", b"431"),
        (b"GET /k HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 10_000 + b"\r\n", b"431"),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    ],
    ids=["100 KB header", "10,000 headers", "100 KB URL"],
)
def test_oversized_heads_are_refused(
    kv: ServiceProcess, request_bytes: bytes, status: bytes
) -> None:
    response, elapsed_ms = send_and_time(kv, request_bytes, 0, b"")
    print(f"\n{status.decode()}: after {elapsed_ms:.1f} ms")
    assert response[9:12] == status, response[:200]
    assert elapsed_ms < 100
