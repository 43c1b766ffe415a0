"""The change feed's hub (`kvservice.feed`) against a memory store with a feed
(`tests/support/feeds.py`): what each watcher takes, in order and once, live and resumed;
its bounds; bookmarks; catching up off the caller's thread; the drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvservice.feed import ChangeFeed, Ended, FeedSettings, Watcher, WatchersFull
from kvservice.store import Change, FeedPosition, FeedSelector, ResumeGone, StoreUnavailable
from tests.support.feeds import FeedingMemoryStore

EVERY_KEY = FeedSelector()


class SecondsClock:
    """Monotonic seconds that move only by `advance()`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Wakes:
    """A watcher's wake: counts the calls and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self, timeout_s: float = 3.0) -> None:
        assert self.event.wait(timeout_s), "the watcher was not woken"
        self.event.clear()


@pytest.fixture
def store() -> FeedingMemoryStore:
    return FeedingMemoryStore()


@pytest.fixture
def clock() -> SecondsClock:
    return SecondsClock()


def hub(
    store: FeedingMemoryStore, clock: SecondsClock | None = None, **settings: Any
) -> ChangeFeed:
    return ChangeFeed(
        store, FeedSettings(**settings), clock=time.monotonic if clock is None else clock
    )


@pytest.fixture
def feed(store: FeedingMemoryStore, clock: SecondsClock) -> Iterator[ChangeFeed]:
    feed = hub(store, clock)
    yield feed
    feed.close()


def write(store: FeedingMemoryStore, *keys: str) -> list[int]:
    """Put each key (its value: the key), returning the revisions they got."""
    for key in keys:
        store.put(key, key.encode())
    return [change.revision for change in store.feed[-len(keys) :]]


def revisions(output: object) -> list[int]:
    assert isinstance(output, list), output
    return [change.revision for change in output if isinstance(change, Change)]


def take_all(watcher: Watcher, wakes: Wakes, until_revision: int) -> list[int]:
    """Take until `until_revision` has come, waiting for wakes in between."""
    taken: list[int] = []
    while not taken or taken[-1] < until_revision:
        output = watcher.take()
        if output is None:
            wakes.wait()
        else:
            taken += revisions(output)
    return taken


def test_a_watcher_without_a_position_starts_live_and_takes_each_change_once_in_order(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    write(store, "before")
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, None, wakes)
    assert watcher.take() is None
    assert watcher.position == store.feed_head()
    written = write(store, "a", "b", "c")
    assert wakes.count == 1  # woken once: it had found nothing
    assert revisions(watcher.take()) == written
    assert watcher.take() is None
    assert watcher.position == store.feed_head()


def test_a_watcher_from_a_position_replays_exactly_what_it_missed_then_goes_live(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    first, _, *missed = write(store, "a", "b", "c", "d")
    watcher = feed.watch(EVERY_KEY, FeedPosition(store.life, first + 1), Wakes())
    assert revisions(watcher.take()) == missed
    live = write(store, "e")
    assert revisions(watcher.take()) == live


def test_a_key_or_a_prefix_selects_the_changes(store: FeedingMemoryStore, feed: ChangeFeed) -> None:
    by_key = feed.watch(FeedSelector(key="ab"), None, Wakes())
    by_prefix = feed.watch(FeedSelector(prefix="a"), None, Wakes())
    ab, _, a = write(store, "ab", "b", "a")
    assert revisions(by_key.take()) == [ab]
    assert revisions(by_prefix.take()) == [ab, a]


def test_a_change_made_while_the_first_page_is_read_comes_after_it_once(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    (start,) = write(store, "a")
    replayed = write(store, "b")
    store.read_gate = threading.Event()
    watchers: list[Watcher] = []
    opening = threading.Thread(
        target=lambda: watchers.append(
            feed.watch(EVERY_KEY, FeedPosition(store.life, start), Wakes())
        )
    )
    opening.start()
    while not store.read_threads:
        time.sleep(0.001)
    meanwhile = write(store, "c")  # after the page was taken, before the watcher is live
    store.read_gate.set()
    opening.join()
    assert revisions(watchers[0].take()) == replayed + meanwhile


def test_a_change_told_live_and_also_in_the_first_page_is_taken_once(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    start = store.feed_head()
    store.before_read = lambda: write(store, "a")
    watcher = feed.watch(EVERY_KEY, start, Wakes())
    assert revisions(watcher.take()) == [start.revision + 1]
    assert watcher.take() is None


@pytest.mark.parametrize("case", ["another life", "ahead of the head", "left the window"])
def test_a_position_the_store_cannot_serve_is_refused_and_opens_no_watcher(
    store: FeedingMemoryStore, feed: ChangeFeed, case: str
) -> None:
    write(store, "a", "b")
    position = {
        "another life": FeedPosition("other", 1),
        "ahead of the head": FeedPosition(store.life, 9),
        "left the window": FeedPosition(store.life, 0),
    }[case]
    store.forget_through(1)
    with pytest.raises(ResumeGone):
        feed.watch(EVERY_KEY, position, Wakes())
    assert feed.figures().watchers == {}


def test_a_watcher_that_does_not_take_is_ended_and_lets_go_of_its_queue(
    store: FeedingMemoryStore, clock: SecondsClock
) -> None:
    feed = hub(store, clock, queue_changes=3)
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, None, wakes)
    write(store, "a", "b", "c")
    assert watcher.take() is not None
    write(store, "a", "b", "c", "d")
    output = watcher.take()
    assert isinstance(output, Ended) and output.reason == "slow"
    assert not watcher.queue and wakes.count >= 1
    figures = feed.figures()
    assert figures.ended["slow"] == 1 and figures.watchers == {}
    write(store, "e")
    assert watcher.take() == output and not watcher.queue  # ended for good, holding nothing
    feed.close()


def test_a_watcher_ended_by_a_change_does_not_keep_it_from_the_others(
    store: FeedingMemoryStore, clock: SecondsClock
) -> None:
    feed = hub(store, clock, queue_changes=1)
    for selector in (EVERY_KEY, FeedSelector(key="k")):
        idle = feed.watch(selector, None, Wakes())
        taking = [feed.watch(selector, None, Wakes()) for _ in range(3)]
        first = write(store, "k")
        assert all(revisions(watcher.take()) == first for watcher in taking)
        second = write(store, "k")  # the idle one overflows, among the others
        assert isinstance(idle.take(), Ended)
        assert all(revisions(watcher.take()) == second for watcher in taking)
    feed.close()


def test_a_watcher_more_than_a_page_behind_catches_up_off_the_callers_thread(
    store: FeedingMemoryStore,
) -> None:
    feed = hub(store, queue_changes=3)
    start = store.feed_head()
    written = write(store, *[f"k{index}" for index in range(10)])
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, start, wakes)
    later = write(store, "z")  # told while it is behind: after the pages, once
    assert take_all(watcher, wakes, later[-1]) == written + later
    caught_up_by = set(store.read_threads[1:])
    assert caught_up_by and all(name.startswith("feed-catch-up") for name in caught_up_by)
    feed.close()


def test_a_watcher_whose_position_leaves_the_window_while_it_catches_up_is_ended(
    store: FeedingMemoryStore,
) -> None:
    feed = hub(store, queue_changes=3)
    start = store.feed_head()
    write(store, *[f"k{index}" for index in range(10)])
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, start, wakes)
    store.forget_through(8)
    assert len(revisions(watcher.take())) == 3
    output = watcher.take()
    while output is None:
        wakes.wait()
        output = watcher.take()
    assert isinstance(output, Ended) and output.reason == "gone"
    feed.close()


def test_after_an_interruption_a_watcher_catches_up_from_the_store_once(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, None, wakes)
    assert watcher.take() is None
    told = write(store, "a")
    listeners, store.listeners = store.listeners, []
    untold = write(store, "b", "c")
    store.listeners = listeners
    feed.interrupted()
    assert take_all(watcher, wakes, untold[-1]) == told + untold
    live = write(store, "d")
    assert take_all(watcher, wakes, live[-1]) == live


def test_a_watcher_sent_nothing_for_the_interval_takes_a_bookmark_of_the_head(
    store: FeedingMemoryStore, clock: SecondsClock
) -> None:
    feed = hub(store, clock, bookmark_interval_s=5)
    watcher = feed.watch(FeedSelector(key="mine"), None, Wakes())
    write(store, "other", "other")  # not followed, but the bookmark moves past them
    clock.advance(4.9)
    assert watcher.take() is None
    clock.advance(0.1)
    assert watcher.take() == store.feed_head()
    assert watcher.take() is None  # the next one an interval later
    assert feed.figures().bookmarks_sent == 1
    feed.close()


def test_the_timer_wakes_a_watcher_whose_bookmark_is_due(store: FeedingMemoryStore) -> None:
    feed = hub(store, bookmark_interval_s=0.05)
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, None, wakes)
    assert watcher.take() is None
    wakes.wait(2)
    assert watcher.take() == store.feed_head()
    feed.close()


def test_past_max_watchers_a_watch_is_refused_until_one_closes(
    store: FeedingMemoryStore, clock: SecondsClock
) -> None:
    feed = hub(store, clock, max_watchers=1)
    first = feed.watch(EVERY_KEY, None, Wakes(), kind="long-poll")
    with pytest.raises(WatchersFull, match="1 watchers"):
        feed.watch(EVERY_KEY, None, Wakes())
    assert feed.figures().watchers == {"long-poll": 1}
    first.close()
    feed.watch(EVERY_KEY, None, Wakes())
    assert feed.figures().refusals == 1
    feed.close()


def test_close_ends_every_watcher_wakes_it_and_opens_no_more(
    store: FeedingMemoryStore, clock: SecondsClock
) -> None:
    feed = hub(store, clock)
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, None, wakes)
    feed.close()
    output = watcher.take()
    assert isinstance(output, Ended) and output.reason == "stopping"
    assert wakes.count == 1
    with pytest.raises(WatchersFull, match="stopping"):
        feed.watch(EVERY_KEY, None, Wakes())


def test_a_subscriber_hears_every_change_in_order_until_it_unsubscribes(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    heard: list[int] = []
    unsubscribe = feed.subscribe(lambda change: heard.append(change.revision))
    written = write(store, "a", "b")
    store.delete("a")
    unsubscribe()
    write(store, "c")
    assert heard == [*written, written[-1] + 1]


def test_a_subscriber_that_fails_neither_fails_the_write_nor_deafens_the_others(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    def failing(change: Change) -> None:
        raise RuntimeError("a bug")

    heard: list[int] = []
    feed.subscribe(failing)
    feed.subscribe(lambda change: heard.append(change.revision))
    assert write(store, "a") == heard


# -- the head, lives and outages ---------------------------------------------------------------


def test_a_page_read_for_one_watcher_does_not_move_anothers_bookmark_past_an_untold_change(
    store: FeedingMemoryStore, clock: SecondsClock
) -> None:
    """A change readable before it is told (Redis: its PUBLISH in flight): another watcher's
    page shows it; a live watcher's bookmark must not name a position past it."""
    feed = hub(store, clock, bookmark_interval_s=1)
    poller = feed.watch(FeedSelector(key="a"), None, Wakes(), kind="long-poll")
    assert poller.take() is None
    told, store.listeners = store.listeners, []
    (untold,) = write(store, "a")
    feed.watch(FeedSelector(prefix="b"), FeedPosition(store.life, 0), Wakes())  # a page read
    assert feed.now.revision < untold  # a history read's position, from the store's head
    feed.watch(FeedSelector(prefix="b"), None, Wakes())  # a live start, which reads it too
    clock.advance(1)
    bookmark = poller.take()
    assert isinstance(bookmark, FeedPosition) and bookmark.revision < untold
    store.listeners = told
    for listener in told:
        listener.changed(store.feed[-1])
    assert revisions(store.changes(FeedSelector(key="a"), bookmark).changes) == [untold]
    assert revisions(poller.take()) == [untold]
    feed.close()


def test_after_an_interruption_the_hub_takes_the_stores_new_life_and_ends_the_old_watchers(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    write(store, "a", "b", "c")
    wakes = Wakes()
    watcher = feed.watch(EVERY_KEY, None, wakes)
    assert watcher.take() is None
    store.life, store.feed = "newlife", []  # the store lost its data (FLUSHALL)
    feed.interrupted()
    wakes.wait()
    ended = watcher.take()
    assert isinstance(ended, Ended) and ended.reason == "gone"
    assert ended.restart == FeedPosition("newlife", 0) == feed.now
    fresh = feed.watch(EVERY_KEY, None, Wakes())
    assert fresh.position == FeedPosition("newlife", 0)
    feed.close()


def test_after_an_interruption_a_head_gone_back_ends_the_watchers_past_it(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    write(store, "a", "b")
    behind_it = feed.watch(FeedSelector(key="a"), FeedPosition(store.life, 1), Wakes())
    write(store, "c")
    wakes = Wakes()
    past_it = feed.watch(EVERY_KEY, None, wakes)
    del store.feed[2:]  # its last write lost (an append-only file synced every second)
    feed.interrupted()
    wakes.wait()
    ended = past_it.take()
    assert isinstance(ended, Ended) and ended.reason == "gone"
    assert ended.restart == FeedPosition(store.life, 2) == feed.now
    assert not isinstance(behind_it.take(), Ended)
    feed.close()


def test_a_catch_up_read_that_finds_the_store_away_ends_every_watcher_behind_at_once(
    store: FeedingMemoryStore, feed: ChangeFeed
) -> None:
    watchers = [feed.watch(EVERY_KEY, None, Wakes()) for _ in range(10)]
    store.away = StoreUnavailable("The store did not answer.")
    feed.interrupted()
    for watcher in watchers:
        deadline = time.monotonic() + 3
        while not isinstance(output := watcher.take(), Ended):
            assert time.monotonic() < deadline, "a watcher was not told"
            time.sleep(0.01)
        assert output.reason == "unavailable"
    assert store.reads <= 2, "one failed read tells them all"
    feed.close()
