"""Raw-socket HTTP for tests that need bytes no well-behaved client library would send."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RawResponse:
    """One parsed HTTP/1.1 response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(base_url: str, request: bytes, timeout_s: float = 3.0) -> tuple[bytes, bool]:
    """Send `request` on a fresh connection; return every byte received and whether the
    server closed the connection (False: it was still open when `timeout_s` ran out)."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True
    return received, True


def parse_responses(data: bytes) -> list[RawResponse]:
    """Split a byte stream into responses framed by Content-Length (all ours are)."""
    responses = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"incomplete response head: {data!r}"
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        responses.append(RawResponse(int(status_line.split()[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


def single_response(base_url: str, request: bytes) -> tuple[RawResponse, bool]:
    """Send `request`, insist on exactly one response, and say whether the server closed."""
    data, closed = exchange(base_url, request, timeout_s=1.0)
    responses = parse_responses(data)
    assert len(responses) == 1, f"expected exactly one response, got {len(responses)}: {data!r}"
    return responses[0], closed
