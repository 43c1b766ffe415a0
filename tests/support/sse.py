"""A Server-Sent Events client over a raw socket, for the change feed's tests: it sends the
request as given, reads the response head, then de-chunks the body and hands it to the test
client's event stream parser (`testclient.clients.sse`: one parser for the grammar), each
read bounded by a timeout."""

from __future__ import annotations

import json
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from testclient.clients.sse import EventStreamParser, SSEEvent


@dataclass(frozen=True)
class Event(SSEEvent):
    """An event, with its data read as JSON (every event of the feed carries JSON)."""

    @classmethod
    def of(cls, event: SSEEvent) -> Event:
        return cls(event.event, event.data, event.id)

    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    """One watch: `status` and `headers` once the head is read; `next_event()` each event."""

    def __init__(
        self,
        base_url: str,
        target: str,
        headers: dict[str, str] | None = None,
        *,
        timeout_s: float = 5.0,
        receive_buffer: int | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.socket()
        if receive_buffer is not None:  # before connecting: a small window that fills
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout_s)
        self.sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.buffer = b""
        self.body = b""
        self.ended = False
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.parser = EventStreamParser()
        self.events: deque[Event] = deque()
        if not self.chunked:
            length = int(self.headers.get("content-length", "0"))
            while len(self.buffer) < length:
                self._receive()
            self.body, self.buffer = self.buffer[:length], self.buffer[length:]
            self.ended = True

    def problem(self) -> Any:
        """The JSON body of a response that is not a stream."""
        return json.loads(self.body)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._receive()
        taken, _, self.buffer = self.buffer.partition(marker)
        return taken

    def _read_chunk(self) -> None:
        """Move one chunk of the body into `body`; the last marks the stream ended."""
        size = int(self._read_until(b"\r\n").split(b";")[0], 16)
        while len(self.buffer) < size + 2:
            self._receive()
        self.body += self.buffer[:size]
        self.buffer = self.buffer[size + 2 :]
        if size == 0:
            self.ended = True

    @property
    def retry(self) -> int | None:
        """The last `retry:` the stream gave (None: none)."""
        return self.parser.retry_ms

    def next_event(self) -> Event:
        """The next event (comments and a bare `retry:` block are noted and skipped)."""
        while not self.events:
            if self.ended:
                raise EOFError("the stream ended")
            self._read_chunk()
            body, self.body = self.body, b""
            self.events.extend(map(Event.of, self.parser.feed(body)))
        return self.events.popleft()

    def events_until(self, kind: str, count: int = 1) -> list[Event]:
        """Events until `count` of `kind` came (those and every other, in order)."""
        events: list[Event] = []
        while sum(event.event == kind for event in events) < count:
            events.append(self.next_event())
        return events

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
