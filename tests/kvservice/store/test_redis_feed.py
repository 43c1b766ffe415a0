"""The Redis backend's change feed, against real redis-server processes: revisions given in the
write's own script, contiguous and shared by replicas (two RedisStores on one Redis), tokens
that resume on another replica, the life kept in Redis and new once its data is gone, an
expiry noticed once whichever replica notices it, the feed cut to the window with ResumeGone
exact for a key, pages of bounded work, and listeners told of every change by the subscriber
thread, or told `interrupted()` when its subscription was killed (CLIENT KILL), Redis
restarted, or a revision skipped; and a cluster, which refuses the feed (FeedUnsupported).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

import kvservice.store.redis.scripts as redis_scripts
import kvservice.store.redis.store as redis_store_module
import kvservice.store.redis.subscriber as redis_subscriber
from kvservice.feed import ChangeFeed, Ended, FeedSettings
from kvservice.store import (
    Change,
    ChangePage,
    Expiry,
    FeedPosition,
    FeedSelector,
    FeedUnsupported,
    KeyNotFound,
    ResumeGone,
)
from kvservice.store.redis import RedisStore, history_key
from kvservice.store.redis.scripts import FEED_KEY, FORGOTTEN_KEY, PRUNED_KEY, REVISION_KEY
from tests.support.clock import START_MS, FakeClock
from tests.support.redis_servers import RedisClusterProcesses, RedisProcess, running_redis

WINDOW_MS = 120_000
EVERY_KEY = FeedSelector()
WAIT_S = 5.0


@pytest.fixture
def server(redis_server: RedisProcess) -> RedisProcess:
    redis_server.flush()
    return redis_server


_made: list[RedisStore] = []


def make_store(url: str, **options: object) -> RedisStore:
    """A store on `url`, closed after the test whatever becomes of it (its thread with it)."""
    settings: dict[str, object] = {"connections": 4, "timeout_s": 2.0, **options}
    store = RedisStore.from_url(url, **settings)  # type: ignore[arg-type]
    _made.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


@pytest.fixture
def replicas(server: RedisProcess) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two stores on one Redis, as two kvservice replicas are."""
    first, second = make_store(server.url), make_store(server.url)
    yield first, second
    first.close()
    second.close()


class Recorder:
    """A ChangeListener that keeps what it is told, for a test thread to wait on."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.interruptions = 0
        self._condition = threading.Condition()

    def changed(self, change: Change) -> None:
        with self._condition:
            self.changes.append(change)
            self._condition.notify_all()

    def interrupted(self) -> None:
        with self._condition:
            self.interruptions += 1
            self._condition.notify_all()

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        with self._condition:
            if not self._condition.wait_for(done, WAIT_S):
                raise AssertionError(
                    f"no {what} within {WAIT_S:g} s: {self.changes}, {self.interruptions}"
                )

    def revisions(self) -> list[int]:
        with self._condition:
            return [change.revision for change in self.changes]


def every_change(store: RedisStore, selector: FeedSelector, after: FeedPosition) -> ChangePage:
    """Every change after `after`, page by page, as one page."""
    changes: list[Change] = []
    while True:
        page = store.changes(selector, after)
        changes += page.changes
        after = page.position
        if page.caught_up:
            return ChangePage(changes, after, True)


# -- revisions, life, tokens --------------------------------------------------------------------


def test_every_change_takes_the_next_revision_whichever_replica_makes_it(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    first, second = replicas
    start = first.feed_head()
    assert start == second.feed_head() and start.revision == 0
    value = first.put("a", b"1", "text/plain")
    second.create("b", b"2")
    first.delete("a")
    assert second.feed_head() == FeedPosition(start.life, 3)
    page = second.changes(EVERY_KEY, start)
    assert page.caught_up and page.position == FeedPosition(start.life, 3)
    assert [(c.key, c.revision, c.data) for c in page.changes] == [
        ("a", 1, b"1"),
        ("b", 2, b"2"),
        ("a", 3, None),
    ]
    written = page.changes[0]
    assert (written.etag, written.content_type) == (value.etag, "text/plain")
    assert not written.expired
    assert page.changes[2].etag is None and page.changes[2].content_type is None


def test_a_token_from_one_replica_resumes_on_another(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    first, second = replicas
    first.put("k", b"1")
    token = first.changes(FeedSelector(key="k"), first.feed_head()).position.token
    first.put("k", b"2")
    first.put("other", b"x")
    page = second.changes(FeedSelector(key="k"), FeedPosition.parse(token))
    assert [change.data for change in page.changes] == [b"2"]
    assert page.position == second.feed_head(), "caught up: the head, past others' changes"


def test_the_life_is_kept_in_redis_and_new_once_its_data_is_gone(server: RedisProcess) -> None:
    store = make_store(server.url)
    store.put("k", b"v")
    life = store.feed_head().life
    store.close()
    again = make_store(server.url)
    assert again.feed_head().life == life, "another store on the same Redis: the same life"
    old = again.feed_head()
    server.flush_keys()
    assert again.feed_head().life != life
    with pytest.raises(ResumeGone, match="another life"):
        again.changes(EVERY_KEY, old)
    again.close()


def test_a_position_ahead_of_the_head_is_gone(replicas: tuple[RedisStore, RedisStore]) -> None:
    first, _ = replicas
    first.put("k", b"v")
    head = first.feed_head()
    with pytest.raises(ResumeGone, match="ahead"):
        first.changes(EVERY_KEY, FeedPosition(head.life, head.revision + 1))


def test_changes_carry_the_written_content_type_and_any_bytes(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    first, _ = replicas
    start = first.feed_head()
    data = bytes(range(256)) + b" 3 = 7 a "
    first.put("k", data, "text/plain; charset=utf-8")
    first.put("k", b"")
    changes = first.changes(EVERY_KEY, start).changes
    assert [(c.data, c.content_type) for c in changes] == [
        (data, "text/plain; charset=utf-8"),
        (b"", None),
    ]


# -- expiry -------------------------------------------------------------------------------------


def test_an_expiry_is_one_change_whichever_replica_notices_it(server: RedisProcess) -> None:
    clock = FakeClock()
    first = make_store(server.url, clock=clock)
    second = make_store(server.url, clock=clock)
    start = first.feed_head()
    first.put("k", b"v", expiry=Expiry(after_ms=1_000))
    first.put("s", b"v", expiry=Expiry(after_ms=1_000))
    clock.advance(1_000)
    with pytest.raises(KeyNotFound):
        second.get("k")  # noticed here
    first.history("k")  # already settled: nothing more
    assert second.sweep_expired(10) == 1 and first.sweep_expired(10) == 0
    changes = first.changes(EVERY_KEY, start).changes
    assert [(c.key, c.expired, c.timestamp_ms) for c in changes[2:]] == [
        ("k", True, START_MS + 1_000),
        ("s", True, START_MS + 1_000),
    ]
    assert len(changes) == 4
    first.close()
    second.close()


# -- the window ---------------------------------------------------------------------------------


def test_the_feed_is_cut_to_the_window_by_bounded_steps(server: RedisProcess) -> None:
    clock = FakeClock()
    store = make_store(server.url, clock=clock, history_window_ms=1_000)
    for number in range(20):
        store.put(f"k{number}", b"v")
    clock.advance(1_000)
    store.put("new", b"v")
    redis = server.client()
    trim = redis_scripts.FEED_TRIM_PER_CHANGE
    assert redis.xlen(FEED_KEY) == 21 - trim, "one change cuts FEED_TRIM_PER_CHANGE at most"
    store.sweep_expired(100)
    assert redis.xlen(FEED_KEY) == 1, "the sweep cuts the rest"
    assert redis.zscore(PRUNED_KEY, "k19") == 20
    store.close()


def test_resume_gone_is_exact_for_a_key_and_conservative_for_a_prefix(
    server: RedisProcess,
) -> None:
    clock = FakeClock()
    store = make_store(server.url, clock=clock, history_window_ms=1_000)
    start = store.feed_head()
    store.put("quiet", b"v")
    after_quiet = store.feed_head()
    store.put("busy", b"v")
    clock.advance(1_000)
    store.put("busy", b"new")
    store.sweep_expired(100)
    # "quiet" had no change after its position: however old, it is not gone.
    page = store.changes(FeedSelector(key="quiet"), after_quiet)
    assert page.changes == [] and page.caught_up
    with pytest.raises(ResumeGone, match="left the history window"):
        store.changes(FeedSelector(key="busy"), after_quiet)
    with pytest.raises(ResumeGone, match="left the history window"):
        store.changes(FeedSelector(key="quiet"), start)
    with pytest.raises(ResumeGone, match="left the history window"):
        store.changes(FeedSelector(prefix="qu"), after_quiet)
    page = store.changes(FeedSelector(key="busy"), FeedPosition(start.life, 2))
    assert [change.data for change in page.changes] == [b"new"]
    store.close()


def test_a_page_examines_a_bounded_part_of_the_feed(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(server.url)
    start = store.feed_head()
    for number in range(30):
        store.put(f"other{number}", b"v")
    store.put("k", b"v")
    monkeypatch.setattr("kvservice.store.redis.store.FEED_SCAN_MOST", 10)
    page = store.changes(FeedSelector(key="k"), start, limit=5)
    assert page.changes == [] and not page.caught_up
    assert page.position == FeedPosition(start.life, 10)
    everything = every_change(store, FeedSelector(key="k"), start)
    assert [change.revision for change in everything.changes] == [31]
    limited = store.changes(EVERY_KEY, start, limit=3)
    assert [change.revision for change in limited.changes] == [1, 2, 3]
    assert limited.position.revision == 3 and not limited.caught_up
    store.close()


# -- listeners ----------------------------------------------------------------------------------


def test_a_listener_on_one_replica_hears_the_writes_of_another_in_order(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    first, second = replicas
    recorder = Recorder()
    second.add_change_listener(recorder)
    for number in range(50):
        first.put(f"k{number % 5}", str(number).encode())
    recorder.wait_for(lambda: len(recorder.changes) == 50, "50 changes")
    assert recorder.revisions() == list(range(1, 51))
    assert [change.data for change in recorder.changes] == [str(n).encode() for n in range(50)]
    assert recorder.interruptions == 0


def test_a_killed_subscription_interrupts_and_changes_catch_up_with_nothing_lost(
    replicas: tuple[RedisStore, RedisStore], server: RedisProcess
) -> None:
    first, second = replicas
    recorder = Recorder()
    second.add_change_listener(recorder)
    first.put("k", b"before")
    recorder.wait_for(lambda: len(recorder.changes) == 1, "the first change")
    redis = server.client()
    assert redis.client_kill_filter(_type="pubsub") == 1
    for number in range(20):
        first.put("k", str(number).encode())
    recorder.wait_for(lambda: recorder.interruptions >= 2, "an interruption, then another")
    first.put("k", b"after")
    recorder.wait_for(lambda: recorder.revisions()[-1:] == [22], "the change after")
    heard = {change.revision for change in recorder.changes}
    caught_up = every_change(second, EVERY_KEY, FeedPosition(second.feed_head().life, 1))
    assert heard | {change.revision for change in caught_up.changes} == set(range(1, 23))


def test_a_restarted_redis_interrupts_the_listeners(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as server:
        store = make_store(server.url, timeout_s=1.0)
        recorder = Recorder()
        store.add_change_listener(recorder)
        store.put("k", b"v")
        recorder.wait_for(lambda: len(recorder.changes) == 1, "the change")
        life = store.feed_head().life
        server.stop()
        recorder.wait_for(lambda: recorder.interruptions == 1, "an interruption")
        server.start()
        recorder.wait_for(lambda: recorder.interruptions == 2, "one more, once subscribed")
        store.put("k", b"again")
        recorder.wait_for(lambda: len(recorder.changes) == 2, "the change after")
        assert store.feed_head().life != life, "Redis kept nothing: a new life"
        assert recorder.changes[-1].revision == 1
        store.close()


def test_a_skipped_revision_interrupts_the_listeners(
    replicas: tuple[RedisStore, RedisStore], server: RedisProcess
) -> None:
    first, second = replicas
    recorder = Recorder()
    second.add_change_listener(recorder)
    first.put("k", b"1")
    recorder.wait_for(lambda: len(recorder.changes) == 1, "the first change")
    server.client().incr(REVISION_KEY)  # a revision given out, its message never published
    first.put("k", b"3")
    recorder.wait_for(lambda: len(recorder.changes) == 2, "the change after the gap")
    assert recorder.interruptions == 1
    assert recorder.revisions() == [1, 3]


def test_close_stops_the_subscriber_thread(server: RedisProcess) -> None:
    store = make_store(server.url)
    store.add_change_listener(Recorder())
    assert any(thread.name == "redis-feed-subscriber" for thread in threading.enumerate())
    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 2
    assert server.client().pubsub_numsub("kv:changes:0") == [(b"kv:changes:0", 0)]


# -- a cluster ----------------------------------------------------------------------------------


def test_a_cluster_refuses_the_feed_and_still_serves_writes(
    redis_cluster: RedisClusterProcesses,
) -> None:
    redis_cluster.flush()
    store = make_store(redis_cluster.url)
    store.put("k", b"v")
    for call in (
        store.feed_head,
        lambda: store.changes(EVERY_KEY, FeedPosition("life", 0)),
        lambda: store.add_change_listener(Recorder()),
    ):
        with pytest.raises(FeedUnsupported, match="Redis Cluster"):
            call()
    assert store.get("k").data == b"v"
    store.close()


def test_replicas_writing_at_once_are_heard_in_one_order_by_each(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    recorders = [Recorder(), Recorder()]
    for store, recorder in zip(replicas, recorders, strict=True):
        store.add_change_listener(recorder)
    start = replicas[0].feed_head()

    def write(store: RedisStore, name: str) -> None:
        for number in range(100):
            store.put(f"{name}{number % 7}", f"{name}{number}".encode())

    writers = [
        threading.Thread(target=write, args=(store, name))
        for store, name in zip(replicas, ("a", "b"), strict=True)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    feed = every_change(replicas[1], EVERY_KEY, start).changes
    assert [change.revision for change in feed] == list(range(1, 201))
    for recorder in recorders:
        recorder.wait_for(partial(heard, recorder, 200), "200 changes")
        assert recorder.changes == feed and recorder.interruptions == 0


def heard(recorder: Recorder, count: int) -> bool:
    return len(recorder.changes) == count


def test_a_message_that_is_no_change_interrupts_and_the_feed_goes_on(
    replicas: tuple[RedisStore, RedisStore], server: RedisProcess
) -> None:
    first, second = replicas
    recorder = Recorder()
    second.add_change_listener(recorder)
    assert server.client().publish("kv:changes:0", b"not a change") == 1
    recorder.wait_for(lambda: recorder.interruptions == 2, "an interruption, then another")
    first.put("k", b"v")
    recorder.wait_for(lambda: len(recorder.changes) == 1, "the change after")


def test_a_listener_added_while_redis_is_away_is_told_once_it_is_back(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as server:
        server.stop()
        store = make_store(server.url, timeout_s=0.5)
        recorder = Recorder()
        store.add_change_listener(recorder)
        assert recorder.interruptions == 0
        server.start()
        recorder.wait_for(lambda: recorder.interruptions == 1, "an interruption once subscribed")
        store.put("k", b"v")
        recorder.wait_for(lambda: len(recorder.changes) == 1, "the change")
        store.close()


def test_a_redis_that_stops_answering_interrupts_the_listeners(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_subscriber, "PING_INTERVAL_S", 0.2)
    store = make_store(server.url, timeout_s=0.5)
    recorder = Recorder()
    store.add_change_listener(recorder)
    server.client().execute_command("CLIENT", "PAUSE", "2000", "ALL")  # type: ignore[no-untyped-call]
    started = time.monotonic()
    try:
        recorder.wait_for(lambda: recorder.interruptions >= 1, "an interruption")
        assert time.monotonic() - started < 1.9, "noticed by the unanswered PING, not the unpause"
    finally:
        server.client().execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    recorder.wait_for(lambda: recorder.interruptions >= 2, "one more, once subscribed again")


def test_a_feed_gone_back_in_revisions_takes_a_new_life(
    replicas: tuple[RedisStore, RedisStore], server: RedisProcess
) -> None:
    first, second = replicas
    recorder = Recorder()
    second.add_change_listener(recorder)
    for number in range(5):
        first.put("k", str(number).encode())
    recorder.wait_for(lambda: len(recorder.changes) == 5, "5 changes")
    old = first.feed_head()
    redis = server.client()
    # What a Redis restarted from an append-only file synced every second may do: come back
    # with its last writes lost, and its life.
    redis.set(REVISION_KEY, 2)
    redis.xdel(FEED_KEY, "3-0", "4-0", "5-0")
    redis.client_kill_filter(_type="pubsub")
    recorder.wait_for(lambda: recorder.interruptions >= 2, "an interruption, then another")
    assert first.feed_head().life != old.life
    with pytest.raises(ResumeGone, match="another life"):
        first.changes(EVERY_KEY, FeedPosition(old.life, 2))


def test_a_user_with_the_advised_permissions_can_watch(server: RedisProcess) -> None:
    """What the StoreMisconfigured of a refused command advises is enough for the feed too."""
    commands = {"EVALSHA", "SCRIPT", "SCAN", "INFO", "SUBSCRIBE", "PING"}
    commands |= set(re.findall(r"[A-Z]{3,}", redis_store_module._SCRIPT_COMMANDS))
    redis = server.client()
    redis.acl_setuser(
        "watcher",
        enabled=True,
        passwords=["+s3cret"],
        keys=["kv:*"],
        channels=["kv:changes:*"],
        commands=[f"+{command.lower()}" for command in commands],
    )
    try:
        store = make_store(f"redis://watcher:s3cret@127.0.0.1:{server.port}")
        recorder = Recorder()
        store.add_change_listener(recorder)
        store.put("k", b"v")
        store.delete("k")
        recorder.wait_for(lambda: len(recorder.changes) == 2, "both changes")
        assert recorder.interruptions == 0
    finally:
        redis.acl_deluser("watcher")


def test_a_key_with_nothing_left_is_forgotten_then_judged_conservatively(
    server: RedisProcess,
) -> None:
    clock = FakeClock()
    store = make_store(server.url, clock=clock, history_window_ms=100)
    life = store.feed_head().life
    store.put("gone", b"v")
    store.delete("gone")
    store.put("kept", b"v")
    clock.advance(100)
    store.put("kept", b"new")  # cuts revisions 1 to 3 from the feed
    redis = server.client()
    store.sweep_expired(10)
    assert redis.zscore(PRUNED_KEY, "gone") == 2, "its history is still there: remembered"
    deadline = time.monotonic() + WAIT_S
    while redis.exists(history_key("gone")) and time.monotonic() < deadline:
        time.sleep(0.1)  # a deleted key's history expires a second after the window
    store.sweep_expired(10)
    assert redis.zscore(PRUNED_KEY, "gone") is None
    assert redis.zscore(PRUNED_KEY, "kept") == 3, "a key with a value is remembered"
    assert redis.hget(FORGOTTEN_KEY, "revision") == b"2"
    with pytest.raises(ResumeGone):
        store.changes(FeedSelector(key="gone"), FeedPosition(life, 1))
    with pytest.raises(ResumeGone):
        store.changes(FeedSelector(key="never"), FeedPosition(life, 1))  # conservative
    assert store.changes(FeedSelector(key="never"), FeedPosition(life, 2)).caught_up
    page = store.changes(FeedSelector(key="kept"), FeedPosition(life, 3))
    assert [change.data for change in page.changes] == [b"new"]


def test_the_hub_takes_the_new_life_of_a_redis_that_lost_its_data(server: RedisProcess) -> None:
    """FLUSHALL: the subscriber hears a change of another life and interrupts; the hub takes
    the new life, ends the watchers of the old one "gone" with a position of the new, and a
    watcher opened afterwards is told every change of the new life, with its ids."""
    store = make_store(server.url)
    feed = ChangeFeed(store, FeedSettings())
    try:
        for number in range(5):
            store.put(f"k{number}", b"old")
        old_life = store.feed_head().life
        old = feed.watch(EVERY_KEY, FeedPosition(old_life, 5), lambda: None)
        server.client().flushall()
        store.put("n", b"new")  # of a new life
        deadline = time.monotonic() + WAIT_S
        while not isinstance(ended := old.take(), Ended):
            assert time.monotonic() < deadline, "the old life's watcher was not ended"
            time.sleep(0.01)
        new_life = store.feed_head().life
        assert new_life != old_life
        assert ended.reason == "gone"
        assert feed.now.life == new_life, "the hub still hands out positions of the dead life"
        assert ended.restart is not None
        assert ended.restart.life == new_life == feed.now.life
        fresh = feed.watch(EVERY_KEY, None, lambda: None)
        store.put("m", b"after")
        taken: list[Change] = []
        while not taken:
            assert time.monotonic() < deadline, "the new life's change was not told"
            output = fresh.take()
            if isinstance(output, list):
                taken += output
            time.sleep(0.01)
        assert [(change.key, change.revision) for change in taken] == [("m", 2)]
        assert fresh.position == FeedPosition(new_life, 2)
    finally:
        feed.close()
