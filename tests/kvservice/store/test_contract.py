"""The store contract: what every backend must do, each test run once per backend.

On a hand-driven clock: values, keys, history and its window edges, pruning, the budget,
ordering within a millisecond, preconditions, concurrent writers. A new backend is added to
`conftest.BACKENDS` and must pass this file unchanged; what only one backend promises (the
memory backend's byte accounting) is tested beside it, in that backend's own file. The change
feed's contract is test_contract_feed.py, run over the same backends.
"""

from __future__ import annotations

import contextlib
import threading

import pytest

from kvservice.store import (
    KEEP_EXPIRY,
    MATCH_ANY,
    NO_EXPIRY,
    ExpireIf,
    Expiry,
    ExpiryChange,
    HistoryEntry,
    InvalidKey,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Precondition,
    PreconditionFailed,
    Store,
    StoreFull,
    Value,
    ValueTooLarge,
    system_clock_ms,
    validate_key,
)
from tests.kvservice.store.conftest import WINDOW_MS, StoreFactory
from tests.support.clock import START_MS, FakeClock


def values(entries: list[HistoryEntry]) -> list[bytes | None]:
    return [entry.data for entry in entries]


# -- values -----------------------------------------------------------------------------------


def test_put_then_get_returns_bytes_and_type(store: Store) -> None:
    store.put("foo", b"hello world!", "text/plain")
    value = store.get("foo")
    assert (value.data, value.content_type) == (b"hello world!", "text/plain")


def test_get_unknown_key_raises(store: Store) -> None:
    with pytest.raises(KeyNotFound):
        store.get("nothing")


def test_overwrite_serves_newest(store: Store) -> None:
    store.put("k", b"v1")
    store.put("k", b"v2")
    assert store.get("k").data == b"v2"


def test_empty_value_is_a_value(store: Store) -> None:
    store.put("k", b"")
    assert store.get("k").data == b""


def test_value_limit_is_inclusive(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(max_value_bytes=4, clock=clock)
    store.put("k", b"1234")
    with pytest.raises(ValueTooLarge, match="5 bytes; the limit is 4"):
        store.put("k", b"12345")
    assert store.get("k").data == b"1234"


def test_delete_removes_value(store: Store) -> None:
    store.put("k", b"v")
    store.delete("k")
    with pytest.raises(KeyNotFound):
        store.get("k")


def test_delete_of_absent_key_raises_and_writes_no_history(store: Store) -> None:
    with pytest.raises(KeyNotFound):
        store.delete("k")
    store.put("k", b"v")
    store.delete("k")
    with pytest.raises(KeyNotFound):
        store.delete("k")
    assert values(store.history("k")) == [None, b"v"]


def test_etag_changes_on_every_write_even_with_same_bytes(store: Store) -> None:
    first = store.put("k", b"same")
    second = store.put("k", b"same")
    assert first.etag != second.etag
    assert store.get("k").etag == second.etag


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "Z9", "x" * 255, "AbC123"])
def test_valid_keys(key: str) -> None:
    validate_key(key)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("x" * 256, "256 characters long"),
        ("foo-bar", "'-' at position 3"),
        ("foo\xff", r"'\\xff' at position 3"),
        ("über", r"'\\xfc' at position 0"),
        ("a b", "' ' at position 1"),
    ],
)
def test_invalid_keys_say_why(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        validate_key(key)


def test_every_operation_validates_the_key(store: Store) -> None:
    for operation in (
        lambda: store.get("a-b"),
        lambda: store.put("a-b", b""),
        lambda: store.create("a-b", b""),
        lambda: store.delete("a-b"),
        lambda: store.history("a-b"),
    ):
        with pytest.raises(InvalidKey):
            operation()


# -- history ----------------------------------------------------------------------------------


def test_history_is_newest_first_with_deletes_as_none(store: Store, clock: FakeClock) -> None:
    store.put("k", b"v1")
    clock.advance(5)
    store.put("k", b"v2")
    clock.advance(5)
    store.delete("k")
    history = store.history("k")
    assert values(history) == [None, b"v2", b"v1"]
    assert [entry.timestamp_ms for entry in history] == [START_MS + 10, START_MS + 5, START_MS]


def test_history_of_unknown_key_is_empty(store: Store) -> None:
    assert store.history("unknown") == []


def test_writes_in_the_same_millisecond_keep_their_order(store: Store) -> None:
    for i in range(50):
        store.put("k", str(i).encode())
    assert values(store.history("k")) == [str(i).encode() for i in reversed(range(50))]


def test_timestamps_never_decrease_when_the_clock_steps_back(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"v1")
    clock.advance(-60_000)
    store.put("k", b"v2")
    newest, oldest = store.history("k")
    assert newest.data == b"v2"
    assert newest.timestamp_ms == oldest.timestamp_ms == START_MS


def test_window_edge(store: Store, clock: FakeClock) -> None:
    store.put("k", b"v")
    clock.advance(119_999)
    assert values(store.history("k")) == [b"v"]
    clock.advance(1)
    assert store.history("k") == []
    assert store.get("k").data == b"v", "expiry removes history, never the current value"


def test_expiry_keeps_the_newer_entries(store: Store, clock: FakeClock) -> None:
    store.put("k", b"old")
    clock.advance(60_000)
    store.put("k", b"new")
    clock.advance(60_000)
    assert values(store.history("k")) == [b"new"]


def test_a_deleted_key_keeps_its_history_for_the_window_and_no_longer_counts(
    store: Store, clock: FakeClock
) -> None:
    store.put("gone", b"v")
    store.delete("gone")
    store.put("kept", b"v")
    assert store.stats().keys == 1, "keys counts keys with a value, not those with history"
    assert values(store.history("gone")) == [None, b"v"]
    clock.advance(120_000)
    assert store.history("gone") == []
    assert store.stats().keys == 1


# -- memory budget ----------------------------------------------------------------------------


def test_a_full_store_refuses_writes_and_keeps_reads_deletes_and_history(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(clock=clock, budget_bytes=64 * 1024)
    keys, refused = fill(store)
    more = b"x" * 1000  # more than the write that did not fit, even as an overwrite
    with pytest.raises(StoreFull, match="memory"):
        store.put(refused, more)
    with pytest.raises(StoreFull):
        store.create(refused, more)
    with pytest.raises(KeyNotFound):
        store.get(refused)
    # A budget may be per server (each node of a cluster has its own): overwrites are refused
    # at least where the refused key would have gone, and a refused one changes nothing.
    on_full_server = []
    for key in keys:
        try:
            store.put(key, more)
        except StoreFull:
            on_full_server.append(key)
            assert store.get(key).data == value_of(key), "a refused write changes nothing"
            assert values(store.history(key)) == [value_of(key)]
    assert on_full_server
    full = on_full_server[0]
    store.delete(full)  # deletes succeed even where the store is full
    assert values(store.history(full)) == [None, value_of(full)]
    with pytest.raises(KeyNotFound):
        store.get(full)


def value_of(key: str) -> bytes:
    """What `fill` wrote to `key`."""
    return key.encode() * (100 // len(key) + 1)


def fill(store: Store, most_keys: int = 100_000) -> tuple[list[str], str]:
    """Write 100-odd-byte values to new keys until the store is full: the keys written, and
    the key whose write was refused."""
    keys: list[str] = []
    for number in range(most_keys):
        key = f"fill{number}"
        try:
            store.put(key, value_of(key))
        except StoreFull:
            assert keys, "the store was full before the first write"
            return keys, key
        keys.append(key)
    raise AssertionError(f"{most_keys} writes and the store is not full")


# -- create and preconditions -----------------------------------------------------------------


def test_create_only_when_absent(store: Store) -> None:
    store.create("k", b"first")
    with pytest.raises(KeyExists):
        store.create("k", b"second")
    assert store.get("k").data == b"first"
    store.delete("k")
    store.create("k", b"again")
    assert store.get("k").data == b"again"


def test_if_match_current_etag_allows_write(store: Store) -> None:
    etag = store.put("k", b"v1").etag
    store.put("k", b"v2", precondition=Precondition(if_match=frozenset({etag})))
    assert store.get("k").data == b"v2"


def test_if_match_stale_etag_fails_and_changes_nothing(store: Store) -> None:
    stale = store.put("k", b"v1").etag
    store.put("k", b"v2")
    with pytest.raises(PreconditionFailed):
        store.put("k", b"v3", precondition=Precondition(if_match=frozenset({stale})))
    with pytest.raises(PreconditionFailed):
        store.delete("k", precondition=Precondition(if_match=frozenset({stale})))
    assert store.get("k").data == b"v2"
    assert values(store.history("k")) == [b"v2", b"v1"]


def test_if_match_any_requires_a_value(store: Store) -> None:
    any_value = Precondition(if_match=frozenset({MATCH_ANY}))
    with pytest.raises(PreconditionFailed):
        store.put("k", b"v", precondition=any_value)
    store.put("k", b"v")
    store.put("k", b"w", precondition=any_value)


def test_if_none_match_any_means_create(store: Store) -> None:
    absent = Precondition(if_none_match=frozenset({MATCH_ANY}))
    store.put("k", b"v", precondition=absent)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"w", precondition=absent)


def test_existence_is_judged_before_preconditions(store: Store) -> None:
    """RFC 9110 13.2.1: preconditions apply only where the request would otherwise succeed."""
    with pytest.raises(KeyNotFound):
        store.delete("k", precondition=Precondition(if_match=frozenset({"nope"})))
    store.put("k", b"v")
    with pytest.raises(KeyExists):
        store.create("k", b"v", precondition=Precondition(if_match=frozenset({"nope"})))


# -- threads ----------------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing_and_history_agrees_with_get(
    make_store: StoreFactory,
) -> None:
    store = make_store(clock=system_clock_ms)  # real clock: many writes share a millisecond
    writers, writes_each = 8, 300

    def write(writer: int) -> None:
        for i in range(writes_each):
            store.put("shared", f"{writer}:{i}".encode())
            store.put(f"own{writer}", f"{i}".encode())

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    history = store.history("shared")
    assert len(history) == writers * writes_each
    assert history[0].data == store.get("shared").data
    assert [e.timestamp_ms for e in history] == sorted(
        (e.timestamp_ms for e in history), reverse=True
    )
    for writer in range(writers):
        own = [e.data for e in history if e.data and e.data.startswith(f"{writer}:".encode())]
        assert own == [f"{writer}:{i}".encode() for i in reversed(range(writes_each))]
        assert store.get(f"own{writer}").data == str(writes_each - 1).encode()


# -- listing keys -----------------------------------------------------------------------------


def test_an_empty_store_lists_nothing(store: Store) -> None:
    assert store.keys() == KeyPage([], None)


def test_keys_are_listed_in_lexicographic_order(store: Store) -> None:
    for key in ["b", "a", "B", "1", "ab", "A0"]:
        store.put(key, b"v")
    assert store.keys() == KeyPage(["1", "A0", "B", "a", "ab", "b"], None)


def test_only_keys_holding_a_value_are_listed(store: Store, clock: FakeClock) -> None:
    for key in ["a", "b", "c"]:
        store.put(key, b"v")
    store.delete("b")  # its history is still in the window
    assert store.keys().keys == ["a", "c"]
    store.create("b", b"again")
    assert store.keys().keys == ["a", "b", "c"]
    clock.advance(WINDOW_MS)
    assert store.keys().keys == ["a", "b", "c"], "expiry never removes a current value"


def test_a_prefix_lists_the_keys_that_start_with_it(store: Store) -> None:
    for key in ["user1", "user10", "user2", "users", "use", "video1", "User1"]:
        store.put(key, b"v")
    assert store.keys(prefix="user").keys == ["user1", "user10", "user2", "users"]
    assert store.keys(prefix="user1").keys == ["user1", "user10"]
    assert store.keys(prefix="use").keys == ["use", "user1", "user10", "user2", "users"]
    assert store.keys(prefix="nothing") == KeyPage([], None)
    assert store.keys(prefix="x" * 255) == KeyPage([], None)


def test_pages_follow_each_other_with_next_after(store: Store) -> None:
    for key in ["a", "b", "c", "d", "e"]:
        store.put(key, b"v")
    assert store.keys(limit=2) == KeyPage(["a", "b"], "b")
    assert store.keys(after="b", limit=2) == KeyPage(["c", "d"], "d")
    assert store.keys(after="d", limit=2) == KeyPage(["e"], None)


def test_a_page_that_ends_the_keys_exactly_is_the_last(store: Store) -> None:
    for key in ["a", "b", "c", "d"]:
        store.put(key, b"v")
    assert store.keys(after="b", limit=2) == KeyPage(["c", "d"], None)
    assert store.keys(limit=4) == KeyPage(["a", "b", "c", "d"], None)
    assert store.keys(limit=1) == KeyPage(["a"], "a")


def test_after_need_not_be_a_key_and_is_never_listed(store: Store) -> None:
    for key in ["a", "b", "c"]:
        store.put(key, b"v")
    assert store.keys(after="a").keys == ["b", "c"]
    assert store.keys(after="a0").keys == ["b", "c"]
    assert store.keys(after="c") == KeyPage([], None)
    assert store.keys(after="zzz") == KeyPage([], None)


def test_prefix_and_after_together(store: Store) -> None:
    for key in ["a1", "b1", "b2", "b3", "c1"]:
        store.put(key, b"v")
    assert store.keys(prefix="b", after="a9").keys == ["b1", "b2", "b3"], "after before the prefix"
    assert store.keys(prefix="b", after="b1").keys == ["b2", "b3"]
    assert store.keys(prefix="b", after="b3") == KeyPage([], None)
    assert store.keys(prefix="b", after="c") == KeyPage([], None), "after past the prefix"


UNLISTABLE = [
    ("a-b", None, "prefix has the character '-' at position 1"),
    ("x" * 256, None, "prefix is 256 characters long"),
    ("", "", "key is empty"),
    ("", "a b", "' ' at position 1"),
]
"""A prefix or an `after` no key can have, and what the refusal says."""


@pytest.mark.parametrize(("prefix", "after", "reason"), UNLISTABLE)
def test_a_prefix_or_after_no_key_can_have_is_refused(
    store: Store, prefix: str, after: str | None, reason: str
) -> None:
    with pytest.raises(InvalidKey, match=reason):
        store.keys(prefix=prefix, after=after)


def test_paging_a_quiet_store_lists_every_key_exactly_once(store: Store) -> None:
    written = {f"k{number}" for number in range(1000)} | {f"other{number}" for number in range(50)}
    for key in written:
        store.put(key, b"v")
    for prefix, limit in [("", 7), ("k", 13), ("k", 1000), ("other", 3)]:
        listed: list[str] = []
        after = None
        for _ in range(len(written) + 1):
            page = store.keys(prefix=prefix, after=after, limit=limit)
            assert len(page.keys) <= limit
            listed += page.keys
            if page.next_after is None:
                break
            after = page.next_after
        assert listed == sorted(key for key in written if key.startswith(prefix))


def test_listing_while_keys_come_and_go_never_breaks_and_keeps_order(
    make_store: StoreFactory,
) -> None:
    store = make_store(clock=system_clock_ms)
    stable = {f"stable{number:03d}" for number in range(200)}
    for key in stable:
        store.put(key, b"v")
    stop = threading.Event()

    def churn() -> None:
        number = 0
        while not stop.is_set():
            store.put(f"churn{number % 300:03d}", b"v")
            with contextlib.suppress(KeyNotFound):
                store.delete(f"churn{(number + 150) % 300:03d}")
            number += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(20):
            listed: list[str] = []
            after = None
            while True:
                page = store.keys(after=after, limit=17)
                listed += page.keys
                if page.next_after is None:
                    break
                after = page.next_after
            assert listed == sorted(set(listed)), "in order, each key once"
            assert stable <= set(listed), "keys present all along are all listed"
    finally:
        stop.set()
        writer.join()


# -- keys that expire -------------------------------------------------------------------------

DEADLINE_MS = START_MS + 1_000
"""The deadline most expiry tests give a key: one second after the clock's start."""


def expired_at(deadline_ms: int) -> HistoryEntry:
    """The history entry that records a key expiring at `deadline_ms`."""
    return HistoryEntry(None, deadline_ms, expired=True)


def test_a_key_is_served_until_its_deadline_and_gone_at_it(store: Store, clock: FakeClock) -> None:
    written = store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    assert written.expires_at_ms == DEADLINE_MS
    clock.advance(999)  # one millisecond before the deadline
    assert store.get("k").data == b"v"
    assert store.get("k").expires_at_ms == DEADLINE_MS
    assert store.keys().keys == ["k"]
    assert store.stats().keys == 1
    assert values(store.history("k")) == [b"v"]
    clock.advance(1)  # at the deadline
    with pytest.raises(KeyNotFound):
        store.get("k")
    assert store.keys().keys == []
    assert store.stats().keys == 0
    assert store.history("k") == [expired_at(DEADLINE_MS), HistoryEntry(b"v", START_MS)]


def test_after_ms_counts_from_the_stores_own_clock(store: Store, clock: FakeClock) -> None:
    clock.advance(5_000)
    written = store.put("k", b"v", expiry=Expiry(after_ms=250))
    assert written.expires_at_ms == START_MS + 5_250
    assert store.get("k").expires_at_ms == START_MS + 5_250
    clock.advance(249)
    assert store.get("k").data == b"v"
    clock.advance(1)
    with pytest.raises(KeyNotFound):
        store.get("k")


def test_a_plain_write_removes_the_deadline(store: Store, clock: FakeClock) -> None:
    store.put("k", b"v1", expiry=Expiry(at_ms=DEADLINE_MS))
    overwritten = store.put("k", b"v2")
    assert overwritten.expires_at_ms is None
    clock.advance(10_000)
    assert store.get("k").data == b"v2"
    assert store.get("k").expires_at_ms is None
    assert values(store.history("k")) == [b"v2", b"v1"]


def test_keep_expiry_keeps_the_deadline_and_a_key_without_one_gets_none(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"v1", expiry=Expiry(at_ms=DEADLINE_MS))
    kept = store.put("k", b"v2", expiry=KEEP_EXPIRY)
    assert kept.expires_at_ms == DEADLINE_MS
    assert store.put("plain", b"v", expiry=KEEP_EXPIRY).expires_at_ms is None
    clock.advance(1_000)
    with pytest.raises(KeyNotFound):
        store.get("k")
    assert store.history("k") == [
        expired_at(DEADLINE_MS),
        HistoryEntry(b"v2", START_MS),
        HistoryEntry(b"v1", START_MS),
    ]
    assert store.get("plain").data == b"v"


@pytest.mark.parametrize("before_now_ms", [60_000, 1, 0])
def test_a_write_with_a_deadline_not_after_now_deletes_the_key_at_once(
    store: Store, clock: FakeClock, before_now_ms: int
) -> None:
    store.put("k", b"old")
    clock.advance(10)
    store.put("k", b"v", expiry=Expiry(at_ms=clock.now_ms - before_now_ms))
    with pytest.raises(KeyNotFound):
        store.get("k")
    assert store.keys().keys == []
    assert store.stats().keys == 0
    # The expiry is recorded now: history timestamps never go back to the past deadline.
    assert store.history("k") == [
        expired_at(clock.now_ms),
        HistoryEntry(b"v", clock.now_ms),
        HistoryEntry(b"old", START_MS),
    ]


def test_expire_with_a_deadline_not_after_now_deletes_the_key(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"v")
    clock.advance(10)
    assert store.expire("k", Expiry(at_ms=START_MS)) == ExpiryChange(True, None)
    with pytest.raises(KeyNotFound):
        store.get("k")
    assert store.history("k") == [expired_at(START_MS + 10), HistoryEntry(b"v", START_MS)]
    store.put("k2", b"v")
    assert store.expire("k2", Expiry(after_ms=0)) == ExpiryChange(True, None)
    assert store.keys().keys == []


def test_expire_sets_and_removes_a_deadline_keeping_the_etag_and_the_history(
    store: Store, clock: FakeClock
) -> None:
    written = store.put("k", b"v", "text/plain")
    change = store.expire("k", Expiry(at_ms=DEADLINE_MS))
    assert change.applied
    assert change.value == Value(b"v", "text/plain", written.etag, DEADLINE_MS)
    assert store.get("k") == change.value
    assert store.expire("k", NO_EXPIRY) == ExpiryChange(
        True, Value(b"v", "text/plain", written.etag, None)
    )
    clock.advance(5_000)
    assert store.get("k").data == b"v", "the deadline was removed"
    store.expire("k", Expiry(after_ms=100))
    assert store.get("k").expires_at_ms == START_MS + 5_100
    assert store.get("k").etag == written.etag
    assert values(store.history("k")) == [b"v"], "changing a deadline records nothing"


@pytest.mark.parametrize(
    ("current_ms", "new_ms", "when", "applies"),
    [
        (None, DEADLINE_MS, ExpireIf.NO_DEADLINE, True),
        (DEADLINE_MS, DEADLINE_MS + 1, ExpireIf.NO_DEADLINE, False),
        (None, DEADLINE_MS, ExpireIf.HAS_DEADLINE, False),
        (DEADLINE_MS, DEADLINE_MS + 1, ExpireIf.HAS_DEADLINE, True),
        (DEADLINE_MS, DEADLINE_MS + 1, ExpireIf.LATER, True),
        (DEADLINE_MS, DEADLINE_MS, ExpireIf.LATER, False),
        (DEADLINE_MS, DEADLINE_MS - 1, ExpireIf.LATER, False),
        (None, DEADLINE_MS, ExpireIf.LATER, False),  # no deadline counts as an infinite one
        (DEADLINE_MS, DEADLINE_MS - 1, ExpireIf.EARLIER, True),
        (DEADLINE_MS, DEADLINE_MS, ExpireIf.EARLIER, False),
        (DEADLINE_MS, DEADLINE_MS + 1, ExpireIf.EARLIER, False),
        (None, DEADLINE_MS, ExpireIf.EARLIER, True),
        (DEADLINE_MS, DEADLINE_MS - 1, ExpireIf.EARLIER_THAN_ITS_OWN, True),
        (DEADLINE_MS, DEADLINE_MS, ExpireIf.EARLIER_THAN_ITS_OWN, False),
        (None, DEADLINE_MS, ExpireIf.EARLIER_THAN_ITS_OWN, False),
        (DEADLINE_MS, None, ExpireIf.ALWAYS, True),
    ],
)
def test_expire_applies_only_as_its_condition_allows(
    store: Store, current_ms: int | None, new_ms: int | None, when: ExpireIf, applies: bool
) -> None:
    written = store.put("k", b"v", expiry=Expiry(at_ms=current_ms))
    change = store.expire("k", Expiry(at_ms=new_ms), when)
    expected_ms = new_ms if applies else current_ms
    assert change == ExpiryChange(applies, Value(b"v", None, written.etag, expected_ms))
    assert store.get("k").expires_at_ms == expected_ms


def test_expire_of_a_key_without_a_value_raises(store: Store, clock: FakeClock) -> None:
    with pytest.raises(KeyNotFound):
        store.expire("nothing", Expiry(after_ms=100))
    store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    clock.advance(1_000)
    with pytest.raises(KeyNotFound):
        store.expire("k", Expiry(after_ms=100))
    assert store.history("k") == [expired_at(DEADLINE_MS), HistoryEntry(b"v", START_MS)]


def test_expire_honours_its_precondition(store: Store) -> None:
    written = store.put("k", b"v")
    with pytest.raises(PreconditionFailed):
        store.expire("k", Expiry(at_ms=DEADLINE_MS), precondition=if_match("stale"))
    assert store.get("k").expires_at_ms is None
    change = store.expire("k", Expiry(at_ms=DEADLINE_MS), precondition=if_match(written.etag))
    assert change.applied
    assert store.get("k").expires_at_ms == DEADLINE_MS


def test_an_expired_key_has_no_value_for_writes_and_preconditions(
    store: Store, clock: FakeClock
) -> None:
    written = store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    clock.advance(1_000)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"w", precondition=if_match(written.etag))
    with pytest.raises(PreconditionFailed):
        store.put("k", b"w", precondition=if_match(MATCH_ANY))
    with pytest.raises(KeyNotFound):
        store.delete("k")
    created = store.create("k", b"again")
    assert created.expires_at_ms is None
    with pytest.raises(KeyExists):
        store.create("k", b"twice")
    assert store.history("k") == [
        HistoryEntry(b"again", DEADLINE_MS),
        expired_at(DEADLINE_MS),
        HistoryEntry(b"v", START_MS),
    ]


def test_create_with_if_none_match_any_on_an_expired_key(store: Store, clock: FakeClock) -> None:
    store.put("k", b"v", expiry=Expiry(after_ms=10))
    clock.advance(10)
    store.put("k", b"new", precondition=Precondition(if_none_match=frozenset({MATCH_ANY})))
    assert store.get("k").data == b"new"


def test_many_keys_expiring_in_the_same_millisecond(store: Store, clock: FakeClock) -> None:
    due = [f"due{number:03d}" for number in range(200)]
    for key in due:
        store.put(key, b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    store.put("later", b"v", expiry=Expiry(at_ms=DEADLINE_MS + 1))
    store.put("plain", b"v")
    clock.advance(999)
    assert len(store.keys(limit=1_000).keys) == 202
    clock.advance(1)
    assert store.keys(limit=1_000).keys == ["later", "plain"]
    assert store.stats().keys == 2
    for key in due[::50]:
        assert store.history(key) == [expired_at(DEADLINE_MS), HistoryEntry(b"v", START_MS)]
    assert store.sweep_expired(1_000) == len(due) - len(due[::50])
    assert store.get("later").data == b"v"


def test_the_listing_never_shows_an_expired_key_and_pages_past_them(
    store: Store, clock: FakeClock
) -> None:
    for number in range(30):
        expiry = Expiry(at_ms=DEADLINE_MS) if number % 3 else NO_EXPIRY
        store.put(f"k{number:02d}", b"v", expiry=expiry)
    clock.advance(1_000)
    kept = [f"k{number:02d}" for number in range(0, 30, 3)]
    listed: list[str] = []
    after = None
    while True:
        page = store.keys(after=after, limit=3)
        listed += page.keys
        if page.next_after is None:
            break
        after = page.next_after
    assert listed == kept
    assert store.keys(prefix="k1", limit=100).keys == ["k12", "k15", "k18"]


def test_pages_over_many_due_keys_may_come_back_short_and_paging_on_lists_every_live_key(
    store: Store, clock: FakeClock
) -> None:
    # A backend may bound the keys one page examines: skipping many keys past their deadline
    # (not yet swept) it returns fewer than `limit` keys, even none, with a `next_after` to
    # go on from. Paging on until it is None must list each live key once, in order.
    live = []
    for number in range(2_500):
        key = f"k{number:04d}"
        if number % 500 == 250:
            store.put(key, b"v")
            live.append(key)
        else:
            store.put(key, b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    clock.advance(1_000)
    for limit in (1, 2, 3_000):
        listed: list[str] = []
        after = None
        for _ in range(2_500):  # a page per key at the most
            page = store.keys(after=after, limit=limit)
            assert len(page.keys) <= limit
            listed += page.keys
            if page.next_after is None:
                break
            assert after is None or page.next_after > after, "a page must move on"
            after = page.next_after
        assert listed == live, f"limit={limit}"


def test_history_shows_the_expiry_at_the_deadline_though_nobody_read_the_key(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    clock.advance(60_000)  # long past the deadline, and nobody looked at "k"
    store.put("other", b"v")
    store.put("k", b"new")
    assert store.history("k") == [
        HistoryEntry(b"new", START_MS + 60_000),
        expired_at(DEADLINE_MS),
        HistoryEntry(b"v", START_MS),
    ]


def test_an_expiry_recorded_late_leaves_the_window_with_its_deadline(
    store: Store, clock: FakeClock
) -> None:
    store.put("k", b"v", expiry=Expiry(at_ms=DEADLINE_MS))
    clock.advance(60_000)
    store.put("other", b"v")  # written before anyone noticed "k" expire
    assert store.history("k")[0] == expired_at(DEADLINE_MS)
    clock.advance(DEADLINE_MS + WINDOW_MS - 1 - clock.now_ms)
    assert store.history("k") == [expired_at(DEADLINE_MS)]
    assert store.stats().history_entries in (2, None)
    clock.advance(1)
    assert store.history("k") == [], "the expiry is inside the window exactly as long as a write"
    assert values(store.history("other")) == [b"v"]
    assert store.stats().history_entries in (1, None)


def test_sweep_expired_removes_at_most_its_limit_and_counts_what_it_removed(
    store: Store, clock: FakeClock
) -> None:
    for number in range(5):
        store.put(f"due{number}", b"v", expiry=Expiry(at_ms=DEADLINE_MS + number))
    store.put("notyet", b"v", expiry=Expiry(at_ms=DEADLINE_MS + 10_000))
    store.put("plain", b"v")
    assert store.sweep_expired(10) == 0
    clock.advance(1_004)
    assert store.sweep_expired(2) == 2
    assert store.sweep_expired(10) == 3
    assert store.sweep_expired(10) == 0
    assert store.keys().keys == ["notyet", "plain"]
    for number in range(5):
        assert store.history(f"due{number}") == [
            expired_at(DEADLINE_MS + number),
            HistoryEntry(b"v", START_MS),
        ]


def test_an_expired_key_gives_its_value_bytes_back(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(clock=clock, budget_bytes=64 * 1024)
    big = b"x" * 1000
    written = 0
    refused = ""
    with pytest.raises(StoreFull):
        for number in range(1_000):
            refused = f"ttl{number}"
            store.put(refused, big, expiry=Expiry(at_ms=DEADLINE_MS))
            written += 1
    assert written, "the store was full before the first write"
    with pytest.raises(StoreFull):  # where it was refused: a cluster's budget is per node
        store.put(refused, big)
    clock.advance(1_000)  # the expired writes' history stays: only the values come back
    while store.sweep_expired(100):
        pass
    assert store.stats().keys == 0
    store.put(refused, big)
    assert store.get(refused).data == big


def if_match(etag: str) -> Precondition:
    return Precondition(if_match=frozenset({etag}))
