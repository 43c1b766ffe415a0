"""HTTPKVClient's change feed over real sockets: `watch` reading a streamed event stream as
it arrives, its refusals (410 with where to start again, 400, a body that is no event
stream), how a watch ends, and the long-poll's query and `KV-Position`."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from testclient.clients import ChangeType, FeedChange, FeedEvent, HTTPKVClient, Outcome
from testclient.clients.sse import MAX_LINE_BYTES

Piece = bytes | float
"""Bytes to send, or seconds to wait before the next piece."""

EVENT_STREAM = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-store")]
CHANGE_DATA = {
    "key": "k",
    "value": "AAE=",
    "encoding": "base64",
    "timestamp": 1733481234567,
    "etag": '"e1"',
    "type": "put",
    "revision": 2,
}


def event(name: str, data: object, event_id: str | None = None) -> bytes:
    """One event as kvservice sends it."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass(frozen=True)
class Request:
    """A request as the raw server read it."""

    target: str
    headers: dict[str, str]


@contextmanager
def serving(
    pieces: list[Piece],
    status: str = "200 OK",
    headers: list[tuple[str, str]] | None = None,
    seen: list[Request] | None = None,
) -> Iterator[str]:
    """A loopback HTTP/1.1 server answering every request with `pieces`, each its own chunk,
    sent as the loop reaches it (a float: seconds to wait first); yields the base URL. (The
    servers of tests/support buffer a WSGI body whole, which would hide the streaming.)"""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def answer(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096) or b"\r\n\r\n"
            lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            fields = dict(line.split(": ", 1) for line in lines[1:])
            if seen is not None:
                seen.append(Request(lines[0].split(" ")[1], fields))
            all_headers = [*(EVENT_STREAM if headers is None else headers)]
            all_headers.append(("Transfer-Encoding", "chunked"))
            start = f"HTTP/1.1 {status}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in all_headers)
            connection.sendall(start.encode("latin-1") + b"\r\n")
            for piece in pieces:
                if stop.is_set():
                    return
                if isinstance(piece, float):
                    stop.wait(piece)
                else:
                    connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            connection.sendall(b"0\r\n\r\n")

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = listener.accept()
                threading.Thread(target=answer, args=(connection,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        acceptor.join()
        listener.close()


@pytest.fixture
def client_for() -> Iterator[Callable[..., HTTPKVClient]]:
    """Serve pieces (as `serving` takes them) and return an HTTPKVClient pointed at them."""
    with ExitStack() as stack:

        def start(*args: Any, **kwargs: Any) -> HTTPKVClient:
            url = stack.enter_context(serving(*args, **kwargs))
            return stack.enter_context(HTTPKVClient(url, timeout=(1.0, 2.0)))

        yield start


def test_events_arrive_as_they_are_sent_and_carry_their_positions(client_for: Any) -> None:
    seen: list[Request] = []
    pieces: list[Piece] = [
        b"retry: 1000\n",
        event("bookmark", {"position": "L-1"}, "L-1"),
        0.3,
        event("change", CHANGE_DATA, "L-2"),
        3.0,
    ]
    client = client_for(pieces, seen=seen)

    with client.watch(prefix="pre", resume="L-0") as watch:
        bookmark = watch.next_event(1.0)
        started = time.monotonic()
        change = watch.next_event(2.0)
        waited = time.monotonic() - started

    assert watch.outcome is Outcome.WATCHING
    assert bookmark == FeedEvent("L-1")
    assert change == FeedEvent(
        "L-2", FeedChange("k", b"\x00\x01", 1733481234567, '"e1"', ChangeType.PUT, 2)
    )
    assert 0.2 < waited < 1.5  # handed out as it arrived, not at the end of the body
    [request] = seen
    assert request.target == "/_watch?prefix=pre"
    assert request.headers["Last-Event-ID"] == "L-0"
    assert request.headers["Accept"] == "text/event-stream"


def test_a_silent_stream_ends_the_watch_at_the_timeout(client_for: Any) -> None:
    client = client_for([event("bookmark", {"position": "p"}, "p"), 3.0])

    with client.watch(key="k") as watch:
        assert watch.next_event(1.0) == FeedEvent("p")
        started = time.monotonic()
        assert watch.next_event(0.3) is None
        assert time.monotonic() - started < 1.0

    assert watch.ended == "no event within 0.3 s"


def test_the_end_of_the_body_ends_the_watch(client_for: Any) -> None:
    client = client_for([event("bookmark", {"position": "p"}, "p")])

    with client.watch() as watch:
        assert watch.next_event(1.0) == FeedEvent("p")
        assert watch.next_event(1.0) is None

    assert watch.ended == "the service ended the stream"


def test_an_error_event_is_handed_out_and_ends_the_watch(client_for: Any) -> None:
    problem = {"type": "about:blank", "status": 410, "detail": "left the window"}
    client = client_for([event("error", problem), 3.0])

    with client.watch() as watch:
        assert watch.next_event(1.0) == FeedEvent(None, error="410: left the window")
        assert watch.next_event(1.0) is None

    assert watch.ended == "the service sent an error: 410: left the window"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({**CHANGE_DATA, "type": "renamed"}, "a known type"),
        ({**CHANGE_DATA, "timestamp": "1"}, "timestamp is not an integer"),
        ({key: CHANGE_DATA[key] for key in ("key", "value")}, "not the change object"),
        ({**CHANGE_DATA, "value": "not base64!"}, "not valid base64"),
    ],
)
def test_a_change_off_the_contract_ends_the_watch_saying_why(
    client_for: Any, data: dict[str, object], why: str
) -> None:
    client = client_for([event("change", data, "x"), 3.0])

    with client.watch() as watch:
        assert watch.next_event(1.0) is None

    assert watch.ended is not None
    assert watch.ended.startswith("unreadable event stream: ")
    assert why in watch.ended


def test_a_bookmark_whose_id_is_not_its_position_is_off_the_contract(client_for: Any) -> None:
    client = client_for([event("bookmark", {"position": "a"}, "b"), 3.0])

    with client.watch() as watch:
        assert watch.next_event(1.0) is None

    assert "is not its position" in (watch.ended or "")


def test_a_line_past_the_bound_ends_the_watch(client_for: Any) -> None:
    client = client_for([b"data: " + b"x" * MAX_LINE_BYTES, 3.0])

    with client.watch() as watch:
        assert watch.next_event(2.0) is None

    assert f"longer than {MAX_LINE_BYTES} bytes" in (watch.ended or "")


def test_gone_says_where_to_start_again(client_for: Any) -> None:
    problem = {"type": "x/resume-gone", "status": 410, "detail": "another life", "position": "N-9"}
    headers = [("Content-Type", "application/problem+json")]
    client = client_for([json.dumps(problem).encode()], "410 Gone", headers)

    with client.watch(resume="O-1") as watch:
        assert watch.next_event(0.5) is None

    assert watch.outcome is Outcome.GONE
    assert watch.restart_position == "N-9"
    assert watch.evidence == "HTTP 410 Gone: another life"


def test_a_200_that_is_not_an_event_stream_is_unexpected(client_for: Any) -> None:
    client = client_for([b"{}"], headers=[("Content-Type", "application/json")])

    watch = client.watch()

    assert watch.outcome is Outcome.UNEXPECTED
    assert "not text/event-stream" in watch.evidence


def test_the_long_poll_sends_after_and_wait_and_keeps_the_position(client_for: Any) -> None:
    seen: list[Request] = []
    body = json.dumps([{"value": "v", "timestamp": 5}]).encode()
    headers = [("Content-Type", "application/json"), ("KV-Position", "L-7")]
    client = client_for([body], headers=headers, seen=seen)

    reply = client.history("k", after="L-3", wait_ms=2500)

    assert (reply.outcome, reply.values, reply.position) == (Outcome.FOUND, [b"v"], "L-7")
    assert seen[0].target == "/k/history?after=L-3&wait=2500ms"


def test_a_long_poll_from_a_position_gone_is_gone(client_for: Any) -> None:
    problem = {"status": 410, "detail": "left the window", "position": "N-1"}
    client = client_for(
        [json.dumps(problem).encode()],
        "410 Gone",
        [("Content-Type", "application/problem+json"), ("KV-Position", "N-1")],
    )

    reply = client.history("k", after="O-1")

    assert (reply.outcome, reply.position) == (Outcome.GONE, "N-1")
