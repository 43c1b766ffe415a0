"""The store contract for the change feed (issue 21), each test run once per backend, as
test_contract.py is: revisions, pages of a key or a prefix, where a resume is gone, the
listener, expiries as changes. A new backend passes this file unchanged too. What a backend
promises of its own life (a durable store keeps it across a restart, a fresh memory store
has a new one) is tested beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from kvservice.store import (
    FEED_PAGE_CHANGES,
    Change,
    ChangePage,
    Expiry,
    FeedPosition,
    FeedSelector,
    KeyNotFound,
    ResumeGone,
    Store,
)
from tests.kvservice.store.conftest import BACKENDS, WINDOW_MS, StoreFactory, served
from tests.support.clock import START_MS, FakeClock

EVERY_KEY = FeedSelector()
DEADLINE_MS = START_MS + 1_000
WITHOUT_A_FEED = ("redis-cluster",)
"""Backends that refuse the feed (FeedUnsupported, tested in test_redis_feed.py): a Redis
Cluster has no one order of its nodes' writes."""


@pytest.fixture(params=[name for name in BACKENDS if name not in WITHOUT_A_FEED])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Each backend that keeps a feed, behind the service (conftest's `make_store`, less
    WITHOUT_A_FEED)."""
    return served(BACKENDS[request.param](request))


def keys_of(page: ChangePage) -> list[str]:
    return [change.key for change in page.changes]


def revisions_of(changes: list[Change]) -> list[int]:
    return [change.revision for change in changes]


def every_change(store: Store, selector: FeedSelector, after: FeedPosition) -> list[Change]:
    """Every change `selector` follows after `after`, page after page."""
    changes: list[Change] = []
    for _ in range(10_000):
        page = store.changes(selector, after)
        changes += page.changes
        if page.caught_up:
            return changes
        after = page.position
    raise AssertionError("the feed never caught up")


def test_every_write_gets_the_next_revision_store_wide(store: Store, clock: FakeClock) -> None:
    start = store.feed_head()
    first = store.put("a", b"1", "text/plain")
    clock.advance(5)
    second = store.create("b", b"2")
    store.delete("a")
    store.put("b", b"3")
    page = store.changes(EVERY_KEY, start)
    assert page.changes == [
        Change(
            key="a",
            revision=start.revision + 1,
            data=b"1",
            timestamp_ms=START_MS,
            etag=first.etag,
            content_type="text/plain",
        ),
        Change(
            key="b",
            revision=start.revision + 2,
            data=b"2",
            timestamp_ms=START_MS + 5,
            etag=second.etag,
        ),
        Change(key="a", revision=start.revision + 3, data=None, timestamp_ms=START_MS + 5),
        Change(
            key="b",
            revision=start.revision + 4,
            data=b"3",
            timestamp_ms=START_MS + 5,
            etag=store.get("b").etag,
        ),
    ]
    assert page.caught_up
    assert page.position == store.feed_head() == FeedPosition(start.life, start.revision + 4)


def test_a_new_deadline_is_not_a_change(store: Store) -> None:
    store.put("k", b"v")
    head = store.feed_head()
    store.expire("k", Expiry(at_ms=DEADLINE_MS))
    store.expire("k", Expiry())
    assert store.feed_head() == head
    assert store.changes(EVERY_KEY, head) == ChangePage([], head, caught_up=True)


def test_a_position_at_the_head_has_nothing_to_replay(store: Store) -> None:
    store.put("k", b"v")
    head = store.feed_head()
    assert store.changes(EVERY_KEY, head) == ChangePage([], head, caught_up=True)
    assert store.changes(FeedSelector(key="k"), head) == ChangePage([], head, caught_up=True)


def test_a_prefix_pages_its_keys_changes_in_order(store: Store) -> None:
    start = store.feed_head()
    for key, data in [("user1", b"a"), ("video1", b"b"), ("user2", b"c"), ("use", b"d")]:
        store.put(key, data)
    store.put("user1", b"e")
    store.delete("user2")
    page = store.changes(FeedSelector(prefix="user"), start)
    assert keys_of(page) == ["user1", "user2", "user1", "user2"]
    assert [change.data for change in page.changes] == [b"a", b"c", b"e", None]
    assert revisions_of(page.changes) == [start.revision + n for n in (1, 3, 5, 6)]
    assert page.caught_up and page.position == store.feed_head()
    assert keys_of(store.changes(EVERY_KEY, start)) == [
        "user1",
        "video1",
        "user2",
        "use",
        "user1",
        "user2",
    ]


def test_a_key_is_followed_exactly_and_a_prefix_by_prefix(store: Store) -> None:
    start = store.feed_head()
    for key in ["user", "user1", "use", "user"]:
        store.put(key, b"v")
    assert keys_of(store.changes(FeedSelector(key="user"), start)) == ["user", "user"]
    assert keys_of(store.changes(FeedSelector(prefix="user"), start)) == ["user", "user1", "user"]
    assert keys_of(store.changes(FeedSelector(key="nobody"), start)) == []


@pytest.mark.parametrize("selector", [FeedSelector(prefix="k"), FeedSelector(key="k")])
def test_a_limit_cuts_a_page_and_the_next_page_goes_on_from_its_position(
    store: Store, selector: FeedSelector
) -> None:
    start = store.feed_head()
    for number in range(5):
        store.put("k", b"%d" % number)
        store.put("other", b"v")
    first = store.changes(selector, start, limit=2)
    assert [change.data for change in first.changes] == [b"0", b"1"]
    assert not first.caught_up
    assert first.position == FeedPosition(start.life, first.changes[-1].revision)
    second = store.changes(selector, first.position, limit=2)
    assert [change.data for change in second.changes] == [b"2", b"3"]
    assert not second.caught_up
    last = store.changes(selector, second.position, limit=2)
    assert [change.data for change in last.changes] == [b"4"]
    assert last.caught_up
    assert last.position == store.feed_head()


def test_paging_a_busy_feed_gives_every_change_once(store: Store) -> None:
    start = store.feed_head()
    for number in range(FEED_PAGE_CHANGES + 10):
        store.put(f"k{number % 7}", b"v")
    changes = every_change(store, EVERY_KEY, start)
    assert revisions_of(changes) == list(
        range(start.revision + 1, start.revision + FEED_PAGE_CHANGES + 11)
    )


def test_a_prefix_whose_changes_left_the_window_is_gone(store: Store, clock: FakeClock) -> None:
    token = store.feed_head()
    store.put("a", b"v")
    clock.advance(WINDOW_MS)  # "a"'s write has left the window
    store.put("b", b"v")
    with pytest.raises(ResumeGone, match="left the history window"):
        store.changes(EVERY_KEY, token)
    with pytest.raises(ResumeGone):
        store.changes(FeedSelector(prefix="a"), token)


def test_a_key_is_gone_only_when_its_own_changes_left_the_window(
    store: Store, clock: FakeClock
) -> None:
    store.put("quiet", b"v")
    token = store.feed_head()  # "quiet" has no write after it, ever
    store.put("busy", b"1")
    store.put("deleted", b"v")
    store.delete("deleted")  # the store holds nothing of it once this leaves the window
    clock.advance(WINDOW_MS)
    store.put("busy", b"2")
    clock.advance(WINDOW_MS)  # every write above has left the window
    store.put("other", b"v")
    head = store.feed_head()
    assert store.changes(FeedSelector(key="quiet"), token) == ChangePage([], head, True)
    assert store.changes(FeedSelector(key="never"), token) == ChangePage([], head, True)
    for gone in ("busy", "deleted"):
        with pytest.raises(ResumeGone, match="left the history window"):
            store.changes(FeedSelector(key=gone), token)


def test_a_key_whose_changes_since_are_all_held_is_never_gone(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"old")
    token = store.feed_head()
    clock.advance(WINDOW_MS - 1)
    store.put("k", b"new")  # inside the window; "old" (before the token) leaves it next
    clock.advance(1)
    store.put("other", b"v")
    page = store.changes(FeedSelector(key="k"), token)
    assert [change.data for change in page.changes] == [b"new"]
    with pytest.raises(ResumeGone):
        store.changes(EVERY_KEY, FeedPosition(token.life, token.revision - 1))


def test_a_position_of_another_life_is_gone(store: Store) -> None:
    store.put("k", b"v")
    head = store.feed_head()
    other_life = "x" + head.life[1:] if head.life[0] != "x" else "y" + head.life[1:]
    for position in (FeedPosition(other_life, head.revision), FeedPosition(other_life, 0)):
        with pytest.raises(ResumeGone, match="another life"):
            store.changes(EVERY_KEY, position)
        with pytest.raises(ResumeGone, match="another life"):
            store.changes(FeedSelector(key="k"), position)


def test_a_position_ahead_of_the_head_is_gone(store: Store) -> None:
    store.put("k", b"v")
    head = store.feed_head()
    ahead = FeedPosition(head.life, head.revision + 1)
    with pytest.raises(ResumeGone, match="ahead"):
        store.changes(EVERY_KEY, ahead)
    with pytest.raises(ResumeGone, match="ahead"):
        store.changes(FeedSelector(key="k"), ahead)


def test_a_token_round_trips(store: Store) -> None:
    store.put("k", b"v")
    head = store.feed_head()
    assert FeedPosition.parse(head.token) == head


class Recorder:
    """A ChangeListener that writes down what it is told."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.interruptions = 0

    def changed(self, change: Change) -> None:
        self.changes.append(change)

    def interrupted(self) -> None:
        self.interruptions += 1


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """A listener may be told from a thread of the store's own (Redis): wait, bounded."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_listener_is_told_every_change_once_in_order_from_many_writers(
    store: Store,
) -> None:
    recorder = Recorder()
    store.add_change_listener(recorder)
    start = store.feed_head()
    writers, writes_each = 4, 50

    def write(writer: int) -> None:
        for number in range(writes_each):
            store.put(f"w{writer}", b"%d" % number)
            if number % 10 == 9:
                store.delete(f"w{writer}")

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = writers * (writes_each + writes_each // 10)
    wait_for(lambda: len(recorder.changes) >= total, f"{total} changes")
    assert revisions_of(recorder.changes) == list(
        range(start.revision + 1, start.revision + total + 1)
    )
    assert recorder.changes == every_change(store, EVERY_KEY, start)
    assert recorder.interruptions == 0


def test_the_listener_is_told_nothing_of_refused_writes(store: Store) -> None:
    recorder = Recorder()
    store.add_change_listener(recorder)
    store.put("k", b"v")
    with pytest.raises(KeyNotFound):
        store.delete("nothing")
    store.put("k", b"w")
    wait_for(lambda: len(recorder.changes) >= 2, "2 changes")
    assert [change.data for change in recorder.changes] == [b"v", b"w"]


def test_expiries_are_changes_stamped_with_the_deadline_numbered_when_noticed(
    store: Store, clock: FakeClock
) -> None:
    start = store.feed_head()
    store.put("read", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    store.put("swept", b"v", expiry=Expiry(at_ms=DEADLINE_MS + 1))
    clock.advance(5_000)
    store.put("other", b"v")  # before anyone noticed either expiry
    with pytest.raises(KeyNotFound):
        store.get("read")
    while store.sweep_expired(10):
        pass
    changes = store.changes(EVERY_KEY, start).changes
    base = start.revision
    assert changes[2:] == [
        Change(
            key="other",
            revision=base + 3,
            data=b"v",
            timestamp_ms=START_MS + 5_000,
            etag=store.get("other").etag,
        ),
        Change(key="read", revision=base + 4, data=None, timestamp_ms=DEADLINE_MS, expired=True),
        Change(
            key="swept", revision=base + 5, data=None, timestamp_ms=DEADLINE_MS + 1, expired=True
        ),
    ]
    key_page = store.changes(FeedSelector(key="read"), start)
    assert key_page.changes[-1] == Change(
        key="read", revision=base + 4, data=None, timestamp_ms=DEADLINE_MS, expired=True
    )


def test_an_expiry_noticed_by_a_write_or_by_expire_is_a_change(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    store.put("now", b"v")
    start = store.feed_head()
    clock.advance(1_500)
    store.put("k", b"again")  # notices the expiry first
    store.expire("now", Expiry(at_ms=START_MS))  # a deadline already past deletes the key
    changes = store.changes(EVERY_KEY, start).changes
    assert [(change.key, change.data, change.expired) for change in changes] == [
        ("k", None, True),
        ("k", b"again", False),
        ("now", None, True),
    ]
    # The expiry a write noticed is stamped with the deadline; one expire() made, with the
    # time of the call (as history records them).
    assert [change.timestamp_ms for change in changes] == [DEADLINE_MS] + 2 * [START_MS + 1_500]
    assert revisions_of(changes) == [start.revision + n for n in (1, 2, 3)]
