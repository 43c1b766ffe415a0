"""The event stream parser: each case fed whole, byte by byte, and in two halves at every
split, as the standard's examples and kvservice's events come."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testclient.clients.sse import EventStreamError, EventStreamParser, SSEEvent

Feeder = Callable[[EventStreamParser, bytes], list[SSEEvent]]


def whole(parser: EventStreamParser, stream: bytes) -> list[SSEEvent]:
    return parser.feed(stream)


def byte_by_byte(parser: EventStreamParser, stream: bytes) -> list[SSEEvent]:
    return [
        event for index in range(len(stream)) for event in parser.feed(stream[index : index + 1])
    ]


def halves(stream: bytes) -> Iterator[tuple[bytes, bytes]]:
    for split in range(len(stream) + 1):
        yield stream[:split], stream[split:]


FEEDERS = [whole, byte_by_byte]

CHANGE = (
    b"retry: 1000\n"
    b'id: L-1\nevent: bookmark\ndata: {"position":"L-1"}\n\n'
    b"id: L-2\nevent: change\n"
    b'data: {"key":"k","value":"v","timestamp":1,"etag":"\\"e\\"","type":"put"}\n\n'
)


@pytest.mark.parametrize("feed", FEEDERS)
def test_kvservice_events_come_out_with_their_ids_and_types(feed: Feeder) -> None:
    parser = EventStreamParser()

    events = feed(parser, CHANGE)

    assert events == [
        SSEEvent("bookmark", '{"position":"L-1"}', "L-1"),
        SSEEvent(
            "change", '{"key":"k","value":"v","timestamp":1,"etag":"\\"e\\"","type":"put"}', "L-2"
        ),
    ]
    assert (parser.retry_ms, parser.last_event_id) == (1000, "L-2")


def test_every_split_of_a_stream_gives_the_same_events() -> None:
    stream = b"\xef\xbb\xbfid: 1\r\ndata: a\r\ndata:b\r\r: note\ndata\n\nid: 2\rdata: c\r\n\r\n"
    expected = [
        SSEEvent("message", "a\nb", "1"),
        SSEEvent("message", "", None),  # one empty data line is data: an empty string
        SSEEvent("message", "c", "2"),
    ]

    for first, second in halves(stream):
        parser = EventStreamParser()
        assert parser.feed(first) + parser.feed(second) == expected, (first, second)


@pytest.mark.parametrize("feed", FEEDERS)
def test_lines_end_with_crlf_lf_or_cr_and_a_split_crlf_is_one_end(feed: Feeder) -> None:
    stream = b"data: one\r\n\r\ndata: two\n\ndata: three\r\rdata: four\r"
    parser = EventStreamParser()

    events = feed(parser, stream)
    events += parser.feed(b"\n")  # the LF of the CR above: one line end, not an empty line

    assert [event.data for event in events] == ["one", "two", "three"]
    assert parser.feed(b"\n") == [SSEEvent("message", "four")]


@pytest.mark.parametrize("feed", FEEDERS)
def test_comments_unknown_fields_and_bad_retries_are_ignored(feed: Feeder) -> None:
    parser = EventStreamParser()

    events = feed(parser, b": keep-alive\nretry: soon\nunknown: x\ndata:  two spaces\n\n")

    assert events == [SSEEvent("message", " two spaces")]
    assert parser.retry_ms is None


@pytest.mark.parametrize("feed", FEEDERS)
def test_an_event_without_data_is_not_dispatched_but_its_id_is_kept(feed: Feeder) -> None:
    parser = EventStreamParser()

    events = feed(parser, b"id: 7\nevent: change\n\ndata: x\n\n")

    assert events == [SSEEvent("message", "x")]  # the type and the own id did not carry over
    assert parser.last_event_id == "7"


def test_an_id_with_a_nul_is_ignored() -> None:
    parser = EventStreamParser()

    assert parser.feed(b"id: 1\n\nid: a\x00b\ndata: x\n\n") == [SSEEvent("message", "x")]
    assert parser.last_event_id == "1"


def test_an_unfinished_event_is_held_until_its_empty_line() -> None:
    parser = EventStreamParser()

    assert parser.feed(b"id: 1\ndata: x\n") == []
    assert parser.feed(b"\ntrailing") == [SSEEvent("message", "x", "1")]


@pytest.mark.parametrize("feed", FEEDERS)
def test_a_line_longer_than_the_bound_is_refused(feed: Feeder) -> None:
    parser = EventStreamParser(max_line_bytes=16)

    with pytest.raises(EventStreamError, match="longer than 16 bytes"):
        feed(parser, b"data: " + b"x" * 11 + b"\n\n")


def test_a_long_line_is_refused_before_its_end_arrives() -> None:
    parser = EventStreamParser(max_line_bytes=16)
    parser.feed(b"data: " + b"x" * 10)

    with pytest.raises(EventStreamError):
        parser.feed(b"x")


def test_an_event_whose_data_lines_add_up_past_the_bound_is_refused() -> None:
    parser = EventStreamParser(max_line_bytes=16)

    with pytest.raises(EventStreamError, match="more than 16 characters of data"):
        parser.feed(b"data: 12345\n" * 3)
