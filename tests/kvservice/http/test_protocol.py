"""HTTP's protocol code on the core, without sockets (uvicorn's `tests/protocols/test_http.py`
way): bytes fed to an `HttpProtocol`, the steps it asks the core for, and what they write;
and, over a real socket, a streamed body that fails half way."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kvservice.core import After, Outcome, Work
from kvservice.execution import INLINE_POLICY, Execution, ExecutionPolicy, StoreCalls
from kvservice.http.cheroot_adapter import ServerInfo
from kvservice.http.parser import ParserLimits
from kvservice.http.protocol import HttpProtocol, HttpTransport
from kvservice.http.request_info import PARKING_ENVIRON, REQUEST_ID_ENVIRON, Parking
from kvservice.http.server import RequestLog, RequestRecord, Server
from tests.support.servers import http_settings

LIMITS = ParserLimits(
    max_header_bytes=4096, max_header_count=20, max_body_bytes=1000, max_continued_body_bytes=100
)
GET = b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class FakeConnection:
    """What the core tells a protocol of its connection (`core.ConnectionInfo`)."""

    id: int = 1
    peer: str = "127.0.0.1:40000"
    opened: float = 0.0
    stopping: bool = False
    policy: ExecutionPolicy = INLINE_POLICY

    def runs_inline(self, calls: StoreCalls) -> bool:
        return self.policy.where(calls) is Execution.INLINE

    wakes: int = 0

    def wake(self) -> None:
        self.wakes += 1


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["REQUEST_METHOD"].encode() + b" " + environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise RuntimeError("a bug")


def protocol(
    app: Any = echo, execution: Execution | ExecutionPolicy = Execution.INLINE
) -> tuple[HttpProtocol, FakeConnection, HttpTransport]:
    info = ServerInfo("127.0.0.1", 8080, keep_alive_timeout_s=10.0)
    transport = HttpTransport(app, LIMITS, info, tls=False)
    if isinstance(execution, Execution):
        execution = ExecutionPolicy.everything(execution)
    connection = FakeConnection(policy=execution)
    return HttpProtocol(transport, connection), connection, transport


def written(outcome: Outcome) -> bytes:
    assert all(isinstance(reply, bytes) for reply in outcome.replies)
    return b"".join(reply for reply in outcome.replies if isinstance(reply, bytes))


def step(http: HttpProtocol, data: bytes) -> Outcome | Work | None:
    http.received(data)
    return http.next_step()


def test_a_whole_request_is_answered_inline_and_the_connection_read_on() -> None:
    http, _, _ = protocol()
    outcome = step(http, b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert isinstance(outcome, Outcome)
    assert written(outcome).startswith(b"HTTP/1.1 200 OK\r\n")
    assert written(outcome).endswith(b"\r\n\r\nPUT hi")
    assert outcome.after is After.READ
    assert not http.mid_request


def test_on_workers_the_request_is_work_and_counted_while_it_runs() -> None:
    http, _, transport = protocol(execution=Execution.WORKERS)
    work = step(http, GET)
    assert isinstance(work, Work)
    assert transport.on_workers == 1
    assert written(work.run()).endswith(b"GET ")
    assert transport.on_workers == 0


def test_nothing_is_asked_for_until_the_request_is_whole() -> None:
    http, _, _ = protocol()
    for byte in GET[:-1]:
        assert step(http, bytes([byte])) is None
        assert http.mid_request
    assert isinstance(step(http, GET[-1:]), Outcome)


def test_pipelined_requests_are_served_one_after_the_other() -> None:
    http, _, _ = protocol()
    first = step(http, GET * 3)
    assert isinstance(first, Outcome) and first.after is After.CONTINUE
    second = http.next_step()
    assert isinstance(second, Outcome) and second.after is After.CONTINUE
    third = http.next_step()
    assert isinstance(third, Outcome) and third.after is After.READ
    assert http.next_step() is None


def test_100_continue_is_said_once_before_the_body() -> None:
    http, _, _ = protocol()
    head = b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    told = step(http, head)
    assert isinstance(told, Outcome)
    assert (written(told), told.after) == (b"HTTP/1.1 100 Continue\r\n\r\n", After.READ)
    assert http.next_step() is None
    answered = step(http, b"hi")
    assert isinstance(answered, Outcome) and written(answered).endswith(b"PUT hi")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /k HTTP/1.1\r\n\r\n", 400),
        (b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
        (b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n", 413),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n", 414),
        (b"GET /k HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 30 + b"\r\n", 431),
        (b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /k HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_a_refused_request_is_answered_with_a_problem_and_closed(
    request_bytes: bytes, status: int
) -> None:
    http, _, transport = protocol()
    outcome = step(http, request_bytes)
    assert isinstance(outcome, Outcome)
    answer = written(outcome)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close\r\n" in answer and b"application/problem+json" in answer
    assert outcome.after is After.CLOSE
    assert transport.refusals == {status: 1}


def test_a_refused_head_request_gets_no_body() -> None:
    http, _, _ = protocol()
    outcome = step(http, b"HEAD /k HTTP/1.1\r\n\r\n")
    assert isinstance(outcome, Outcome) and written(outcome).endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /k HTTP/1.0\r\n\r\n", b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
    ids=["HTTP/1.0", "Connection: close"],
)
def test_a_request_that_does_not_keep_the_connection_closes_it(request_bytes: bytes) -> None:
    http, _, _ = protocol()
    outcome = step(http, request_bytes + GET)
    assert isinstance(outcome, Outcome) and outcome.after is After.CLOSE


def test_while_the_server_stops_a_response_says_it_closes() -> None:
    http, connection, _ = protocol()
    connection.stopping = True
    outcome = step(http, GET)
    assert isinstance(outcome, Outcome) and outcome.after is After.CLOSE
    assert b"\r\nConnection: close\r\n" in written(outcome)


def test_a_request_that_times_out_is_told_408_and_counted() -> None:
    http, _, transport = protocol()
    assert step(http, b"HEAD /k HTTP/1.1\r\nHo") is None
    assert http.mid_request
    answer = http.timed_out()
    assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"\r\n\r\n")
    assert transport.refusals == {408: 1}


def test_an_app_that_fails_is_answered_500_and_the_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, _, _ = protocol(failing)
    outcome = step(http, GET)
    assert isinstance(outcome, Outcome) and outcome.after is After.CLOSE
    assert written(outcome).startswith(b"HTTP/1.1 500 ")
    assert any(record.exc_info for record in caplog.records), "the cause is logged"


def test_the_transport_s_own_answers() -> None:
    _, _, transport = protocol()
    assert transport.refusal.startswith(b"HTTP/1.1 503 ")
    assert transport.in_the_clear.startswith(b"HTTP/1.1 400 ")
    assert b"HTTPS only" in transport.in_the_clear


def breaks_midway(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    for number in range(40):
        yield b"%04d" % number * 1000
    raise RuntimeError("a bug, half way through a long body")


def test_a_body_that_fails_half_way_closes_its_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over a real socket: the client cannot take a cut body for a whole one (no last
    chunk), and the next client is served."""
    server = Server(breaks_midway, http_settings(threads=2, serve_inline=True), observers=())
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(GET)
            received = b""
            while chunk := client.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert not received.endswith(b"\r\n0\r\n\r\n"), "a cut body must not look whole"
        assert any("its reply failed" in record.getMessage() for record in caplog.records)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as other:
            other.sendall(GET)
            assert other.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.stop()


def test_reads_are_answered_on_the_loop_and_writes_go_to_a_worker_when_only_writes_may_block() -> (
    None
):
    policy = ExecutionPolicy(reads=Execution.INLINE, writes=Execution.WORKERS)
    http, _, _ = protocol(execution=policy)
    for read in (GET, b"HEAD /k HTTP/1.1\r\nHost: x\r\n\r\n"):
        answered = step(http, read)
        assert isinstance(answered, Outcome), read
    for write in (b"PUT", b"POST", b"DELETE", b"PATCH"):
        request = write + b" /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        work = step(http, request)
        assert isinstance(work, Work), write
        assert work.calls is StoreCalls.WRITES
        assert written(work.run()).startswith(b"HTTP/1.1 200 OK\r\n")


class Waited:
    """What the parking app waits on: closed once it is done with it."""

    closed = False

    def close(self) -> None:
        self.closed = True


class ParkingApp:
    """Parks a request the first time it runs it and answers it the next time; notes each
    run's request ID."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.parking: Parking | None = None
        self.waited = Waited()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.runs.append(environ[REQUEST_ID_ENVIRON])
        parking = environ[PARKING_ENVIRON]
        assert isinstance(parking, Parking)
        self.parking = parking
        if parking.resumed is None:
            parking.park(self.waited)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Length", "8")])
        return [b"answered"]


def test_a_parked_request_is_run_again_when_woken_not_when_bytes_arrive() -> None:
    app = ParkingApp()
    http, connection, _ = protocol(RequestLog(app, []))
    parked = step(http, GET)
    assert isinstance(parked, Outcome) and parked.replies == [] and parked.after is After.READ
    assert http.parked
    for _ in range(10):
        assert step(http, GET) is None  # pipelined: held, not served
    assert len(app.runs) == 1
    assert http.next_step() is None  # nor when the core asks again without a wake
    assert app.parking is not None
    app.parking.wake()
    assert connection.wakes == 1
    answered = http.next_step()
    assert isinstance(answered, Outcome)
    assert written(answered).endswith(b"\r\n\r\nanswered")
    assert answered.after is After.CONTINUE  # the pipelined requests, once it is written
    assert len(app.runs) == 2
    assert app.waited.closed
    assert not http.parked


def test_a_parked_request_holds_one_request_s_worth_of_what_its_client_sends() -> None:
    app = ParkingApp()
    http, _, _ = protocol(RequestLog(app, []))
    step(http, GET)
    most_held = LIMITS.max_header_bytes + LIMITS.max_body_bytes
    held = 0
    while held + 1000 < most_held:
        assert step(http, b"x" * 1000) is None
        held += 1000
        assert not http.full, held
    step(http, b"x" * 1000)
    assert http.full  # the core reads no more until it is answered
    assert app.parking is not None
    app.parking.wake()
    assert isinstance(http.next_step(), Outcome)
    assert not http.full


@pytest.mark.parametrize("sent_id", [None, "client-id-1"])
def test_a_parked_request_is_logged_once_whole_under_one_id(sent_id: str | None) -> None:
    app = ParkingApp()
    records: list[RequestRecord] = []
    http, _, _ = protocol(RequestLog(app, [records.append]))
    header = b"" if sent_id is None else b"X-Request-ID: " + sent_id.encode() + b"\r\n"
    step(http, b"GET /k HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
    time.sleep(0.05)
    assert records == []
    assert app.parking is not None
    app.parking.wake()
    answered = http.next_step()
    assert isinstance(answered, Outcome)
    assert len(records) == 1
    (record,) = records
    assert record.duration_s >= 0.05  # from the first run, not the last
    assert app.runs == [record.request_id] * 2
    if sent_id is not None:
        assert record.request_id == sent_id
    assert f"X-Request-ID: {record.request_id}".encode() in written(answered)
