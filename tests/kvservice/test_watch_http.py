"""Watching keys over HTTP, on real sockets: `/_watch` (Server-Sent Events) and the history's
long-poll (`after=`, `wait=`, `KV-Position`), served by kvservice's transport on the core with
the change feed's hub, as the composition root builds them."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import kvservice.http.app as app_module
from kvservice.execution import execution_for
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.http.app import create_app
from kvservice.http.server import Server
from kvservice.metrics import Metrics
from kvservice.store import Change, FeedPosition, StoreUnavailable
from kvservice.store.memory import MemoryStore
from kvservice.store.service import StoreService
from tests.support.clock import FakeClock
from tests.support.feeds import FeedingMemoryStore
from tests.support.processes import kvservice_process
from tests.support.rawresp import RespConnection, running_resp
from tests.support.servers import http_settings
from tests.support.sse import Event, EventStream


@dataclasses.dataclass
class Watched:
    """A kvservice with a change feed: its URL, its store and its hub."""

    url: str
    store: MemoryStore
    feed: ChangeFeed
    server: Server

    def put(self, key: str, value: str) -> None:
        assert requests.put(f"{self.url}/{key}", data=value.encode(), timeout=5).status_code == 204

    def head(self) -> FeedPosition:
        return self.store.feed_head()


StartWatched = Callable[..., Watched]


@pytest.fixture
def start_watched() -> Iterator[StartWatched]:
    started: list[Watched] = []

    def start(
        store: MemoryStore | None = None, *, socket_timeout_s: float = 5.0, **feed: Any
    ) -> Watched:
        store = store or MemoryStore()
        hub = ChangeFeed(store, FeedSettings(**feed))
        served = StoreService(store)
        settings = http_settings(
            threads=4, socket_timeout_s=socket_timeout_s, execution=execution_for(served)
        )
        metrics = Metrics(served)
        metrics.watch_feed(hub.figures)
        server = Server(create_app(served, metrics_page=metrics.render, feed=hub), settings)
        server.start()
        watched = Watched(f"http://127.0.0.1:{server.port}", store, hub, server)
        started.append(watched)
        return watched

    yield start
    for watched in started:
        watched.feed.close()
        watched.server.stop()


@pytest.fixture
def watched(start_watched: StartWatched) -> Watched:
    return start_watched()


def changes(events: list[Event]) -> list[dict[str, Any]]:
    return [event.json() for event in events if event.event == "change"]


# -- the event stream -------------------------------------------------------------------------


def test_a_stream_sends_each_change_once_in_order_after_a_retry_and_a_bookmark(
    watched: Watched,
) -> None:
    watched.put("k0", "before")  # before the watch: not replayed
    with EventStream(watched.url, "/_watch?prefix=k") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["x-accel-buffering"] == "no"
        assert stream.headers["transfer-encoding"] == "chunked"
        first = stream.next_event()
        assert stream.retry == 1000
        assert first.event == "bookmark" and first.id == watched.head().token
        assert first.json() == {"position": first.id}
        for index in range(20):
            watched.put(f"k{index % 3}", f"v{index}")
        watched.put("other", "not followed")
        assert requests.delete(f"{watched.url}/k1", timeout=5).status_code == 204
        events = stream.events_until("change", 21)
    start = FeedPosition.parse(first.id).revision
    got = changes(events)
    assert [change["revision"] for change in got] == [
        *range(start + 1, start + 21),
        start + 22,
    ]
    assert [event.id for event in events if event.event == "change"] == [
        FeedPosition(watched.store.life, change["revision"]).token for change in got
    ]
    assert got[0] == {
        "key": "k0",
        "value": "v0",
        "timestamp": got[0]["timestamp"],
        "etag": got[0]["etag"],
        "type": "put",
        "revision": start + 1,
    }
    last_of_k2 = [change for change in got if change["key"] == "k2"][-1]
    assert last_of_k2["etag"] == requests.get(f"{watched.url}/k2", timeout=5).headers["ETag"]
    assert got[-1] == {**got[-1], "key": "k1", "value": None, "etag": None, "type": "delete"}


def test_a_binary_value_comes_base64_as_in_the_history(watched: Watched) -> None:
    with EventStream(watched.url, "/_watch?key=bin") as stream:
        stream.next_event()
        requests.put(f"{watched.url}/bin", data=b"\xff\x00", timeout=5)
        (change,) = changes(stream.events_until("change"))
    assert change["value"] == "/wA=" and change["encoding"] == "base64"


@pytest.mark.parametrize("how", ["Last-Event-ID", "after", "Last-Event-ID over after"])
def test_a_resumed_stream_sends_exactly_the_changes_missed(watched: Watched, how: str) -> None:
    with EventStream(watched.url, "/_watch?key=k") as stream:
        stream.next_event()
        watched.put("k", "seen")
        (seen,) = stream.events_until("change")
    for value in ("missed1", "missed2"):
        watched.put("k", value)
    watched.put("j", "not followed")
    assert seen.id is not None
    target, headers = {
        "Last-Event-ID": ("/_watch?key=k", {"Last-Event-ID": seen.id}),
        "after": (f"/_watch?key=k&after={seen.id}", {}),
        "Last-Event-ID over after": ("/_watch?key=k&after=bogus", {"Last-Event-ID": seen.id}),
    }[how]
    with EventStream(watched.url, target, headers) as resumed:
        assert resumed.status == 200
        replayed = changes(resumed.events_until("change", 2))
        watched.put("k", "live")
        (live,) = changes(resumed.events_until("change"))
    assert [change["value"] for change in replayed] == ["missed1", "missed2"]
    assert live["value"] == "live"


def test_the_token_is_the_same_in_both_interfaces(watched: Watched) -> None:
    with EventStream(watched.url, "/_watch?key=k") as stream:
        stream.next_event()
        watched.put("k", "one")
        (event,) = stream.events_until("change")
    watched.put("k", "two")
    answer = requests.get(f"{watched.url}/k/history", params={"after": event.id}, timeout=5)
    assert [entry["value"] for entry in answer.json()] == ["two"]
    watched.put("k", "three")
    position = answer.headers["KV-Position"]
    with EventStream(watched.url, "/_watch?key=k", {"Last-Event-ID": position}) as resumed:
        (change,) = changes(resumed.events_until("change"))
    assert change["value"] == "three"


def test_an_idle_stream_gets_bookmarks_of_the_head(start_watched: StartWatched) -> None:
    watched = start_watched(bookmark_interval_s=0.2)
    with EventStream(watched.url, "/_watch?key=mine") as stream:
        stream.next_event()
        watched.put("other", "x")
        watched.put("other", "y")
        bookmark = stream.next_event()
    assert bookmark.event == "bookmark"
    assert bookmark.id == watched.head().token == bookmark.json()["position"]


def test_a_position_gone_is_a_410_of_the_request_itself_saying_the_head(
    start_watched: StartWatched,
) -> None:
    clock = FakeClock()
    watched = start_watched(MemoryStore(history_window_ms=1000, clock=clock))
    watched.put("k", "a")
    watched.put("k", "b")
    clock.advance(2000)  # both leave the window
    for token in (FeedPosition("anotherlife", 1).token, FeedPosition(watched.store.life, 1).token):
        with EventStream(watched.url, f"/_watch?key=k&after={token}") as stream:
            assert stream.status == 410
            assert stream.headers["content-type"] == "application/problem+json"
            problem = stream.problem()
        poll = requests.get(
            f"{watched.url}/k/history", params={"after": token, "wait": "5s"}, timeout=5
        )
        assert poll.status_code == 410
        for answer in (problem, poll.json()):
            assert answer["type"].endswith("resume-gone")
            assert answer["position"] == watched.head().token


@pytest.mark.parametrize(
    "query",
    [
        "key=a&prefix=a",
        "key=a-b",
        "prefix=%FF",
        "after=notatoken",
        "limit=3",
    ],
)
def test_a_bad_watch_is_a_400(watched: Watched, query: str) -> None:
    with EventStream(watched.url, f"/_watch?{query}") as stream:
        assert stream.status == 400
        assert stream.problem()["status"] == 400


def test_past_max_watchers_a_watch_is_a_503_with_retry_after(
    start_watched: StartWatched,
) -> None:
    watched = start_watched(max_watchers=1)
    with EventStream(watched.url, "/_watch") as first:
        assert first.status == 200
        with EventStream(watched.url, "/_watch") as second:
            assert second.status == 503
            assert second.headers["retry-after"] == "1"
            assert second.problem()["type"].endswith("watchers-full")
        poll = requests.get(f"{watched.url}/k/history", params={"wait": "5s"}, timeout=5)
        assert poll.status_code == 503
    deadline = time.monotonic() + 3
    while watched.feed.figures().watchers:  # the first one's close reaches the hub
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with EventStream(watched.url, "/_watch") as third:
        assert third.status == 200


def test_a_watcher_that_does_not_read_is_ended_and_holds_no_more(
    start_watched: StartWatched,
) -> None:
    watched = start_watched(queue_changes=20)
    value = b"x" * 1000
    with EventStream(watched.url, "/_watch", receive_buffer=4096) as stream:
        stream.next_event()
        for index in range(20_000):  # 20 MB: far more than the socket buffers hold
            watched.store.put(f"k{index}", value)
            if watched.feed.figures().ended["slow"]:
                break
        figures = watched.feed.figures()
        assert figures.ended["slow"] == 1
        assert figures.watchers == {}  # let go of: its queue with it
        events = stream.events_until("error")
        with pytest.raises(EOFError):
            stream.next_event()
    error = events[-1].json()
    assert error["type"].endswith("watch-too-slow") and error["status"] == 503
    revisions = [change["revision"] for change in changes(events)]
    assert revisions == sorted(set(revisions))  # what came, came in order, once


def test_a_stream_and_a_long_poll_are_not_closed_by_the_idle_timeout(
    start_watched: StartWatched,
) -> None:
    watched = start_watched(socket_timeout_s=0.3)
    with EventStream(watched.url, "/_watch?key=k") as stream:
        stream.next_event()
        started = time.monotonic()
        poll = requests.get(f"{watched.url}/k/history", params={"wait": "1.5s"}, timeout=5)
        assert time.monotonic() - started >= 1.4
        assert poll.status_code == 200 and poll.json() == []
        watched.put("k", "late")
        (change,) = changes(stream.events_until("change"))
    assert change["value"] == "late"


def test_watchers_cost_no_thread_and_a_write_reaches_each(start_watched: StartWatched) -> None:
    watched = start_watched()
    threads = threading.active_count()
    streams = [EventStream(watched.url, "/_watch?prefix=k") for _ in range(30)]
    try:
        for stream in streams:
            stream.next_event()
        assert threading.active_count() == threads
        assert requests.get(f"{watched.url}/_health", timeout=2).status_code == 200
        watched.put("k", "to all")
        for stream in streams:
            (change,) = changes(stream.events_until("change"))
            assert change["value"] == "to all"
    finally:
        for stream in streams:
            stream.close()


def test_a_write_over_resp_reaches_a_stream(watched: Watched) -> None:
    with (
        running_resp(watched.store) as resp,
        EventStream(watched.url, "/_watch?key=k") as stream,
        RespConnection(resp.port) as client,
    ):
        stream.next_event()
        assert client.ask("SET", "k", "over resp") == b"+OK\r\n"
        (change,) = changes(stream.events_until("change"))
    assert change["value"] == "over resp" and change["type"] == "put"


def test_the_drain_ends_each_stream_and_the_server_stops_promptly(watched: Watched) -> None:
    with EventStream(watched.url, "/_watch") as stream:
        stream.next_event()
        started = time.monotonic()
        watched.feed.close()
        watched.server.stop()
        stopped_in = time.monotonic() - started
        (error,) = [event for event in stream.events_until("error") if event.event == "error"]
        with pytest.raises(EOFError):
            stream.next_event()
    assert error.json()["type"].endswith("server-stopping")
    assert stopped_in < 1.5


# -- the long-poll ----------------------------------------------------------------------------


def test_the_drain_answers_a_parked_long_poll_at_once(watched: Watched) -> None:
    answers: list[requests.Response] = []
    poll = threading.Thread(
        target=lambda: answers.append(
            requests.get(f"{watched.url}/k/history", params={"wait": "30s"}, timeout=10)
        )
    )
    poll.start()
    deadline = time.monotonic() + 3
    while not watched.feed.figures().watchers:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    watched.feed.close()
    poll.join(5)
    assert time.monotonic() - started < 1
    (answer,) = answers
    assert answer.status_code == 200 and answer.json() == []
    assert answer.headers["KV-Position"] == watched.head().token


def test_every_history_answer_says_where_to_resume_from(watched: Watched) -> None:
    watched.put("k", "one")
    answer = requests.get(f"{watched.url}/k/history", timeout=5)
    assert answer.headers["KV-Position"] == watched.head().token
    watched.put("k", "two")
    after = requests.get(
        f"{watched.url}/k/history", params={"after": answer.headers["KV-Position"]}, timeout=5
    )
    assert [entry["value"] for entry in after.json()] == ["two"]
    assert after.headers["KV-Position"] == watched.head().token


def test_a_long_poll_with_something_newer_answers_at_once(watched: Watched) -> None:
    start = watched.head().token
    for value in ("one", "two"):
        watched.put("k", value)
    started = time.monotonic()
    answer = requests.get(
        f"{watched.url}/k/history", params={"after": start, "wait": "30s"}, timeout=5
    )
    assert time.monotonic() - started < 1
    assert [entry["value"] for entry in answer.json()] == ["two", "one"]  # newest first
    assert answer.headers["KV-Position"] == watched.head().token


def test_a_long_poll_answers_when_a_write_arrives(watched: Watched) -> None:
    start = watched.head().token
    writer = threading.Timer(0.3, lambda: watched.put("k", "arrived"))
    writer.start()
    started = time.monotonic()
    answer = requests.get(
        f"{watched.url}/k/history", params={"after": start, "wait": "10s"}, timeout=5
    )
    waited = time.monotonic() - started
    assert 0.25 < waited < 3
    assert [entry["value"] for entry in answer.json()] == ["arrived"]
    assert answer.headers["KV-Position"] == watched.head().token


def test_a_long_poll_without_a_position_waits_for_the_next_change(watched: Watched) -> None:
    watched.put("k", "old")
    threading.Timer(0.2, lambda: watched.put("k", "new")).start()
    answer = requests.get(f"{watched.url}/k/history", params={"wait": "10s"}, timeout=5)
    assert [entry["value"] for entry in answer.json()] == ["new"]


def test_a_long_poll_answers_nothing_at_the_deadline_with_the_position(watched: Watched) -> None:
    start = watched.head()
    watched.put("other", "x")
    started = time.monotonic()
    answer = requests.get(
        f"{watched.url}/k/history", params={"after": start.token, "wait": "500ms"}, timeout=5
    )
    assert 0.45 < time.monotonic() - started < 2
    assert answer.status_code == 200 and answer.json() == []
    assert answer.headers["KV-Position"] == watched.head().token


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"wait": "2m"}, "at most 60s"),
        ({"wait": "soon"}, "wait must be a duration"),
        ({"after": "nope"}, "is not a resume token"),
        ({"since": "1"}, "Unknown query parameter"),
    ],
)
def test_a_bad_long_poll_is_a_400_saying_why(
    watched: Watched, params: dict[str, str], says: str
) -> None:
    answer = requests.get(f"{watched.url}/k/history", params=params, timeout=5)
    assert answer.status_code == 400 and says in answer.json()["detail"]


class ReadsBlock(FeedingMemoryStore):
    """A store whose reads may block, as Redis's do: the execution policy then serves reads
    on workers, and the feed's pages must never be read on the event loop."""

    reads_may_block = True


def test_with_reads_that_block_no_page_is_read_on_the_loop(start_watched: StartWatched) -> None:
    store = ReadsBlock()
    watched = start_watched(store, queue_changes=3)
    start = watched.head().token
    for index in range(10):
        watched.put(f"k{index}", "v")
    with EventStream(watched.url, f"/_watch?after={start}") as stream:
        got = changes(stream.events_until("change", 10))
    poll = requests.get(f"{watched.url}/k9/history", params={"after": start}, timeout=5)
    assert [change["key"] for change in got] == [f"k{index}" for index in range(10)]
    assert [entry["value"] for entry in poll.json()] == ["v"]
    first, *catching_up = store.read_threads
    assert first.startswith("http-worker")  # where the request's reads run
    assert catching_up and all(name.startswith("feed-catch-up") for name in catching_up[:-1])
    assert not any(name.startswith("http-serve") for name in store.read_threads)


def test_the_metrics_count_watchers_events_and_endings(start_watched: StartWatched) -> None:
    watched = start_watched(queue_changes=1)

    def metric(line_start: str) -> float:
        page = requests.get(f"{watched.url}/_metrics", timeout=5).text
        (line,) = [line for line in page.splitlines() if line.startswith(line_start)]
        return float(line.rsplit(" ", 1)[1])

    with EventStream(watched.url, "/_watch?key=k") as stream:
        stream.next_event()
        assert metric('kvservice_watchers{kind="sse"}') == 1
        watched.put("k", "one")
        stream.events_until("change")
        assert metric("kvservice_watch_events_sent_total") == 1
        # The client reads no more: once the socket's buffers are full nothing is taken,
        # and the second change queued behind a queue of one ends the watcher. (Two writes
        # alone may each be taken as it comes, the loop woken between them.)
        value = b"x" * 1000
        deadline = time.monotonic() + 10
        while watched.feed.figures().ended["slow"] == 0 and time.monotonic() < deadline:
            watched.store.put("k", value)
        stream.events_until("error")
    assert metric('kvservice_watch_ended_total{reason="slow"}') == 1
    assert metric('kvservice_watchers{kind="sse"}') == 0


def test_sigterm_ends_the_streams_then_the_process_exits() -> None:
    with kvservice_process() as service:
        stream = EventStream(service.url, "/_watch")
        stream.next_event()
        started = time.monotonic()
        service.process.send_signal(15)
        (error,) = [event for event in stream.events_until("error") if event.event == "error"]
        with pytest.raises((EOFError, ConnectionError)):
            stream.next_event()
        assert service.process.wait(5) == 0
        stream.close()
    assert error.json()["type"].endswith("server-stopping")
    assert time.monotonic() - started < 3


# -- endings, lives, HEAD ---------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", [MemoryStore, ReadsBlock])
def test_a_streams_error_event_carries_its_own_request_id(
    start_watched: StartWatched, store_kind: type[MemoryStore]
) -> None:
    """The stream's body runs on the loop, outside any request: with reads on workers there
    is no request there at all, inline there is whichever request the loop served last."""
    watched = start_watched(store_kind())
    with EventStream(watched.url, "/_watch", {"X-Request-ID": "watcher-1"}) as stream:
        stream.next_event()
        requests.put(f"{watched.url}/a", data=b"x", headers={"X-Request-ID": "other-2"}, timeout=5)
        watched.feed.close()
        (error,) = [event for event in stream.events_until("error") if event.event == "error"]
    assert error.json()["request_id"] == "watcher-1"
    assert error.json()["type"].endswith("server-stopping")


def test_a_long_poll_ended_by_the_store_away_is_a_503_with_retry_after(
    start_watched: StartWatched,
) -> None:
    store = FeedingMemoryStore()
    watched = start_watched(store)
    start = watched.head().token
    answers: list[requests.Response] = []
    poll = threading.Thread(
        target=lambda: answers.append(
            requests.get(
                f"{watched.url}/k/history", params={"after": start, "wait": "30s"}, timeout=10
            )
        )
    )
    poll.start()
    deadline = time.monotonic() + 3
    while not watched.feed.figures().watchers:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    store.away = StoreUnavailable("The store did not answer.")
    watched.feed.interrupted()  # its watcher catches up, and cannot
    poll.join(5)
    (answer,) = answers
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.json()["type"].endswith("store-unavailable")


def test_positions_handed_out_are_of_the_stores_life_even_before_the_hub_heard_of_it(
    start_watched: StartWatched,
) -> None:
    store = FeedingMemoryStore()
    watched = start_watched(store)
    watched.put("k", "a")
    old = watched.head().token
    store.life, store.feed = "newlife", []  # the store lost its data; no one told the hub
    answer = requests.get(f"{watched.url}/k/history", timeout=5)
    assert answer.headers["KV-Position"] == "newlife.0"
    with EventStream(watched.url, f"/_watch?key=k&after={old}") as stream:
        assert stream.status == 410
        problem = stream.problem()
    poll = requests.get(f"{watched.url}/k/history", params={"after": old}, timeout=5)
    assert poll.status_code == 410
    assert problem["position"] == poll.json()["position"] == "newlife.0"


@pytest.mark.parametrize(
    ("query", "status"),
    [("after=anotherlife.1", 410), ("after=notatoken", 400), ("key=a&prefix=a", 400), ("", 200)],
)
def test_head_of_a_watch_answers_the_status_a_get_would_without_a_body(
    watched: Watched, query: str, status: int
) -> None:
    answer = requests.head(f"{watched.url}/_watch?{query}", timeout=5)
    assert answer.status_code == status
    assert answer.content == b""
    assert watched.feed.figures().watchers == {}  # HEAD opened none, or let it go at once
    with EventStream(watched.url, f"/_watch?{query}") as stream:
        assert stream.status == status


def test_the_change_events_kept_for_other_watchers_are_bounded_and_hold_no_change() -> None:
    """One change's event is made once for every watcher sent it; what is kept is its text,
    within a bound in bytes, never the change (whose value the store lets go of)."""
    change = Change(b"v" * 200, 1, False, key="k", revision=1)
    references = sys.getrefcount(change)
    first = app_module._change_event("life", change)
    assert app_module._change_event("life", change) is first
    assert sys.getrefcount(change) == references, "the change itself is kept"
    texts = app_module._EventTexts(max_bytes=1000)
    for revision in range(1, 21):
        made = texts.get("life", Change(b"v" * 200, 1, False, key="k", revision=revision))
        assert texts.held_bytes <= 1000
    assert texts.get("life", Change(b"w", 1, False, key="k", revision=20)) is made
