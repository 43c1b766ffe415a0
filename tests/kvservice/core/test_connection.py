"""The core's connection without sockets, as uvicorn's tests/protocols do: a fake asyncio
transport (`MockTransport`) records what is written and whether reading is paused, and a
clock moves only when told to. The transport plugged in is the tests' own (`lines.py`)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kvservice.core import ConnectionServer, ConnectionSettings
from kvservice.core.connection import Connection
from kvservice.execution import Execution, ExecutionPolicy
from kvservice.reply_budget import ReplyBudget
from tests.kvservice.core.lines import REFUSAL, LinesTransport

SETTINGS = ConnectionSettings(
    host="127.0.0.1", port=0, max_connections=4, idle_timeout_s=60.0, listen_backlog=16
)


class FakeClock:
    """Seconds that move only by `advance()`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MockTransport(asyncio.Transport):
    """An asyncio transport that keeps what is written; what the client has not read counts
    as buffered, and past `high_water` it pauses the protocol's writing, as asyncio's does,
    until `client_reads` takes it below `low_water`."""

    def __init__(self, high_water: int = 1 << 30, low_water: int = 0) -> None:
        super().__init__()
        self.high_water, self.low_water = high_water, low_water
        self.connection: Connection | None = None
        self.writes: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.reading = True
        self.closing = False
        self.aborted = False

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.buffered += len(data)
        if self.buffered > self.high_water and not self.paused and self.connection is not None:
            self.paused = True
            self.connection.pause_writing()

    def client_reads(self) -> None:
        """The client reads everything written so far."""
        self.buffered = 0
        if self.paused and self.connection is not None:
            self.paused = False
            self.connection.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True


@dataclasses.dataclass
class Harness:
    server: ConnectionServer
    transport: LinesTransport
    clock: FakeClock
    ids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def connect(self, mock: MockTransport | None = None) -> tuple[Connection, MockTransport]:
        connection = Connection(self.server, next(self.ids))
        mock = MockTransport() if mock is None else mock
        mock.connection = connection
        connection.connection_made(mock)
        return connection, mock


def scenario(
    body: Callable[[Harness], Coroutine[Any, Any, None]],
    *,
    execution: Execution = Execution.INLINE,
    reply_budget: ReplyBudget | None = None,
    batch_lines: int = 2,
    **settings: Any,
) -> None:
    """Run `body` on an event loop of its own, with a server that is never started."""
    transport = LinesTransport(batch_lines=batch_lines)
    clock = FakeClock()
    server = ConnectionServer(
        transport,
        dataclasses.replace(SETTINGS, **settings),
        execution=ExecutionPolicy.everything(execution),
        reply_budget=reply_budget,
        clock=clock,
    )
    try:
        asyncio.run(body(Harness(server, transport, clock)))
    finally:
        transport.gate.set()
        if server.workers is not None:
            server.workers.shutdown()


async def turns(count: int = 5) -> None:
    """Let the loop run what was scheduled (call_soon) for a few turns."""
    for _ in range(count):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait, on the loop, for work on a worker to be done."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


# -- reading and answering ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reads",
    [
        [b"hello\n"],
        [bytes([byte]) for byte in b"hello\n"],
        [b"hel", b"lo\nwor", b"ld\n"],
    ],
    ids=["whole", "byte by byte", "with trailing bytes"],
)
def test_a_request_is_answered_once_complete_however_it_is_split(reads: list[bytes]) -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        for data in reads:
            connection.data_received(data)
        expected = b"HELLO\n" + (b"WORLD\n" if len(reads) == 3 else b"")
        assert mock.written == expected
        assert mock.reading and not mock.closing

    scenario(body)


def test_the_replies_of_a_batch_go_out_in_one_write() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"a\nb\n")
        assert mock.writes == [b"A\nB\n"]

    scenario(body)


def test_a_batch_cut_short_serves_the_rest_on_later_turns_reading_paused_meanwhile() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"a\nb\nc\nd\ne\n")
        assert mock.writes == [b"A\nB\n"]
        assert not mock.reading
        await turns()
        assert mock.writes == [b"A\nB\n", b"C\nD\n", b"E\n"]
        assert mock.reading

    scenario(body, batch_lines=2)


def test_an_outcome_without_work_is_written_then_the_connection_closes() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"!x\na\n")
        assert mock.written == b"error\n"
        assert mock.closing and not mock.aborted
        assert harness.transport.ran_on == []

    scenario(body)


def test_after_close_nothing_more_is_served() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"a\nquit\nb\n")
        await turns()
        assert mock.written == b"A\nBYE\n"
        assert mock.closing and not mock.reading

    scenario(body, batch_lines=10)


# -- writing to a slow reader ------------------------------------------------------------------


def test_pieces_are_produced_as_the_client_reads_and_replies_after_them_wait() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect(MockTransport(high_water=32 * 1024))
        connection.data_received(b"stream 10\nafter\n")
        await turns()
        (stream,) = harness.transport.streams
        assert stream.produced == 3  # past the high-water mark: nothing more until read
        assert not mock.reading
        for _ in range(10):
            mock.client_reads()
            await turns()
        assert stream.produced == 10 and stream.closed
        assert mock.written == b"x" * (10 * 16 * 1024) + b"AFTER\n"
        assert mock.reading

    scenario(body, batch_lines=10)


def test_a_connection_lost_mid_stream_closes_its_pieces() -> None:
    async def body(harness: Harness) -> None:
        connection, _ = harness.connect(MockTransport(high_water=32 * 1024))
        connection.data_received(b"stream 10\n")
        (stream,) = harness.transport.streams
        connection.connection_lost(None)
        assert stream.closed and stream.produced < 10
        assert harness.server.figures.connected_clients == 0
        assert harness.transport.protocols[0].closed_calls == 1

    scenario(body)


# -- waiting for something other than the client (a change feed) -----------------------------


def _wake_from_another_thread(connection: Connection) -> None:
    waker = threading.Thread(target=connection.wake)
    waker.start()
    waker.join()


def test_a_stream_with_nothing_yet_waits_for_a_wake_then_goes_on() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"feed\n")
        (feed,) = harness.transport.feeds
        await turns()
        asks = feed.asks
        assert asks == 1 and mock.written == b"" and not mock.closing
        assert mock.reading  # to hear the client leave
        connection.data_received(b"after\n")  # waits behind the stream
        assert not mock.reading  # one read held at most
        feed.pending.append(b"news")
        await turns()
        assert feed.asks == asks and mock.written == b""  # not asked until woken
        _wake_from_another_thread(connection)
        await turns()
        assert mock.written == b"news"
        feed.ended = True
        connection.wake()  # on the loop's own thread too
        await turns()
        assert mock.written == b"newsAFTER\n"
        assert feed.closed

    scenario(body)


def test_connections_woken_together_from_another_thread_each_go_on() -> None:
    async def body(harness: Harness) -> None:
        pairs = [harness.connect() for _ in range(3)]
        for connection, _ in pairs:
            connection.data_received(b"feed\n")
        for feed in harness.transport.feeds:
            feed.pending.append(b"news")

        def wake_all() -> None:
            for connection, _ in pairs:
                connection.wake()

        waker = threading.Thread(target=wake_all)
        waker.start()
        waker.join()
        await turns()
        assert [mock.written for _, mock in pairs] == [b"news"] * 3

    scenario(body)


def test_a_stream_waiting_for_a_wake_is_not_charged_the_streaming_headroom() -> None:
    budget = ReplyBudget(64 * 1024)  # less than one streaming connection's headroom

    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"feed\n")
        await turns()
        assert not mock.closing and budget.held_bytes == 0
        (feed,) = harness.transport.feeds
        feed.pending.append(b"news")
        connection.wake()
        await turns()
        assert mock.written == b"news" and not mock.closing

    scenario(body, reply_budget=budget)


def test_a_parked_connection_is_not_idle_and_a_wake_answers_it() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"park\n")
        harness.clock.advance(61)
        connection.expire(harness.clock())
        assert not mock.closing
        _wake_from_another_thread(connection)  # the gate is shut: still parked
        await turns()
        assert mock.written == b""
        harness.transport.gate.set()
        _wake_from_another_thread(connection)
        await turns()
        assert mock.written == b"UNPARKED\n"
        harness.clock.advance(61)
        connection.expire(harness.clock())
        assert mock.aborted  # no longer parked: idle as any other

    scenario(body)


def test_a_wake_after_the_close_or_the_loops_end_does_nothing() -> None:
    woken: list[Connection] = []

    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"park\n")
        mock.abort()
        connection.connection_lost(None)
        connection.wake()
        await turns()
        assert mock.written == b""
        woken.append(connection)

    scenario(body)
    woken[0].wake()  # its loop has closed


def test_replies_that_do_not_fit_the_reply_budget_close_their_connection() -> None:
    budget = ReplyBudget(100_000)

    async def body(harness: Harness) -> None:
        small, small_mock = harness.connect()
        small.data_received(b"big 60000\n")
        large, large_mock = harness.connect()
        large.data_received(b"big 60000\n")  # the client reads nothing: both held
        assert not small_mock.closing
        assert large_mock.aborted
        assert budget.refusals == 1
        large.connection_lost(None)
        small_mock.client_reads()
        small.expire(harness.clock())  # the sweep settles what was read
        assert budget.held_bytes == 0

    scenario(body, reply_budget=budget)


# -- timeouts --------------------------------------------------------------------------------


def test_an_idle_connection_expires_after_the_idle_timeout() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"a\n")
        harness.clock.advance(59)
        connection.expire(harness.clock())
        assert not mock.closing
        harness.clock.advance(2)
        connection.expire(harness.clock())
        assert mock.aborted

    scenario(body)


def test_a_client_that_stops_reading_its_replies_expires_after_the_idle_timeout() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect(MockTransport(high_water=1000))
        connection.data_received(b"stream 3\n")
        assert not mock.reading
        harness.clock.advance(61)
        connection.expire(harness.clock())
        assert mock.aborted

    scenario(body)


def test_a_request_not_complete_within_the_request_timeout_is_told_and_closed() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"a\nhel")  # the request began with this read
        harness.clock.advance(3)
        connection.data_received(b"l")  # trickling does not restart it
        connection.expire(harness.clock())
        assert not mock.closing
        harness.clock.advance(3)
        connection.expire(harness.clock())
        assert mock.written == b"A\ntoo slow\n"
        assert mock.closing and not mock.aborted

    scenario(body, request_timeout_s=5.0)


def test_the_request_timeout_runs_from_the_request_not_the_connection() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        harness.clock.advance(10)  # idle, but within the idle timeout
        connection.data_received(b"hel")
        harness.clock.advance(4)
        connection.expire(harness.clock())
        assert not mock.closing

    scenario(body, request_timeout_s=5.0)


def test_without_a_request_timeout_a_partial_request_is_idle_until_the_idle_timeout() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"hel")
        harness.clock.advance(30)
        connection.expire(harness.clock())
        assert not mock.closing
        harness.clock.advance(31)
        connection.expire(harness.clock())
        assert mock.aborted and mock.written == b""

    scenario(body)


# -- the cap ---------------------------------------------------------------------------------


def test_a_connection_past_the_cap_is_told_the_transports_refusal_and_counted() -> None:
    async def body(harness: Harness) -> None:
        first, _ = harness.connect()
        second, second_mock = harness.connect()
        assert second_mock.written == REFUSAL and second_mock.closing
        second.connection_lost(None)
        figures = harness.server.figures
        assert (figures.connected_clients, figures.total_connections_received) == (1, 2)
        assert figures.rejected_connections == 1
        assert len(harness.transport.protocols) == 1  # no protocol for a refused one
        first.connection_lost(None)
        assert figures.connected_clients == 0

    scenario(body, max_connections=1)


# -- the execution policy ------------------------------------------------------------------------


def test_under_workers_work_runs_off_the_loop_one_at_a_time_in_order() -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"wait\n")
        assert connection.running and not mock.reading
        connection.data_received(b"after\n")  # a TLS transport may hand over bytes anyway
        await turns()
        assert mock.written == b""
        harness.transport.gate.set()
        await until(lambda: mock.written == b"WAIT\nAFTER\n")
        assert all(name.startswith("lines-worker") for name in harness.transport.ran_on)
        assert mock.reading

    scenario(body, execution=Execution.WORKERS)


@pytest.mark.parametrize("execution", list(Execution))
def test_work_that_raises_closes_its_connection_and_is_logged(
    execution: Execution, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(harness: Harness) -> None:
        connection, mock = harness.connect()
        connection.data_received(b"boom\n")
        await until(lambda: mock.aborted)
        assert mock.written == b""

    with caplog.at_level(logging.ERROR, logger="tests.core.lines"):
        scenario(body, execution=execution)
    assert "its work failed" in caplog.text
    assert "RuntimeError: boom" in caplog.text
