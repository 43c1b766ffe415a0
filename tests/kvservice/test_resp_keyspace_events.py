"""Keyspace notifications without sockets: the `notify-keyspace-events` setting
(`keyspace_events`), and subscriptions (`pubsub`): who receives a change's notifications, in
which order, the subscriber's states, its bounded queue and its wakes, with changes told by
hand as the change feed tells them, and the dispatcher's order, its bound and its thread."""

from __future__ import annotations

import threading

import pytest

from kvservice.reply_budget import ReplyBudget
from kvservice.resp.codec import Error, Push, Replies, encode
from kvservice.resp.commands import ServerState, Session, execute
from kvservice.resp.commands.pubsub import (
    CHANNEL_TOO_LONG,
    TOO_MANY_PATTERNS_ON_THE_SERVER,
    TOO_MANY_SUBSCRIPTIONS,
)
from kvservice.resp.keyspace_events import KeyspaceEvents, event_of
from kvservice.resp.pubsub import (
    MAX_CHANNEL_BYTES,
    MAX_PATTERNS,
    MAX_SUBSCRIPTIONS,
    SUBSCRIPTION_BYTES,
    PubSub,
    Subscriber,
    SubscriberState,
)
from kvservice.store import Change
from kvservice.store.memory import MemoryStore

WRITE = Change(
    key="k", revision=1, data=b"v", timestamp_ms=0, etag='"e"', content_type="text/plain"
)
DELETE = Change(key="k", revision=2, data=None, timestamp_ms=0)
EXPIRY = Change(key="k", revision=3, data=None, timestamp_ms=0, expired=True)


def events(letters: str) -> KeyspaceEvents:
    parsed = KeyspaceEvents.parse(letters.encode())
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("", ""),
        ("KEA", "AKE"),
        ("Kg$lshzxetd", "AK"),
        ("AKEmn", "AKEm"),  # Redis drops `n` when it writes `A`
        ("xE$K", "$xKE"),
        ("mn$E", "$nEm"),
        ("dtmEK", "tdKEm"),
        ("KEAA", "AKE"),
        ("e", "e"),
    ],
)
def test_the_setting_is_given_back_in_redis_order(given: str, shown: str) -> None:
    assert str(events(given)) == shown


@pytest.mark.parametrize("given", ["Kq", "k", "KE ", "a", "\xe9"])
def test_a_letter_redis_does_not_know_is_refused(given: str) -> None:
    assert KeyspaceEvents.parse(given.encode("latin-1")) is None


def test_each_change_is_redis_event() -> None:
    assert [event_of(change) for change in (WRITE, DELETE, EXPIRY)] == [b"set", b"del", b"expired"]


@pytest.mark.parametrize(
    ("letters", "expected"),
    [
        ("KE$", [(b"__keyspace@0__:k", b"set"), (b"__keyevent@0__:set", b"k")]),
        ("K$", [(b"__keyspace@0__:k", b"set")]),
        ("E$", [(b"__keyevent@0__:set", b"k")]),
        ("$", []),
        ("KEg", []),
        ("KElshzetdmn", []),
        ("", []),
    ],
)
def test_a_write_is_published_on_the_channels_the_setting_names(
    letters: str, expected: list[tuple[bytes, bytes]]
) -> None:
    assert list(events(letters).notifications(WRITE)) == expected


@pytest.mark.parametrize(
    ("letters", "publishes"),
    [
        ("KE$", True),
        ("Kg", True),
        ("Ex", True),
        ("$gx", False),
        ("KElshzetdmn", False),
        ("", False),
    ],
)
def test_a_setting_publishes_only_with_a_channel_kind_and_one_of_our_classes(
    letters: str, publishes: bool
) -> None:
    assert events(letters).publishes is publishes


def test_deletes_and_expiries_need_their_own_classes() -> None:
    assert list(events("KEg").notifications(DELETE)) == [
        (b"__keyspace@0__:k", b"del"),
        (b"__keyevent@0__:del", b"k"),
    ]
    assert list(events("KEg").notifications(EXPIRY)) == []
    assert list(events("KEx").notifications(EXPIRY)) == [
        (b"__keyspace@0__:k", b"expired"),
        (b"__keyevent@0__:expired", b"k"),
    ]
    assert list(events("KEA").notifications(DELETE)) != []


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def told(hub: PubSub, change: Change) -> None:
    """The change told as the feed tells it, then dispatched as the dispatcher's thread
    would."""
    hub.changed(change)
    hub.dispatch()


def state(follower: Subscriber) -> SubscriberState:
    return follower.state


def subscriber(hub: PubSub) -> tuple[Subscriber, Wakes]:
    wakes = Wakes()
    return Subscriber(hub, wakes), wakes


def test_channel_subscribers_then_pattern_subscribers_keyspace_then_keyevent() -> None:
    hub = PubSub()
    hub.events = events("KEA")
    first, _ = subscriber(hub)
    second, _ = subscriber(hub)
    first.subscribe(b"__keyevent@0__:set")
    first.psubscribe(b"__key*")
    second.subscribe(b"__keyspace@0__:k")
    told(hub, WRITE)
    assert first.take() == [
        (b"__key*", b"__keyspace@0__:k", b"set"),
        (None, b"__keyevent@0__:set", b"k"),
        (b"__key*", b"__keyevent@0__:set", b"k"),
    ]
    assert second.take() == [(None, b"__keyspace@0__:k", b"set")]
    assert first.take() == []


def test_nothing_is_published_with_notifications_off() -> None:
    hub = PubSub()
    follower, wakes = subscriber(hub)
    follower.psubscribe(b"*")
    told(hub, WRITE)
    assert (follower.take(), wakes.count) == ([], 0)


def test_states_follow_the_count_and_the_connection() -> None:
    hub = PubSub()
    hub.events = events("KEA")
    follower, _ = subscriber(hub)
    assert state(follower) is SubscriberState.IDLE
    assert follower.subscribe(b"a") == 1
    assert follower.psubscribe(b"a") == 2
    assert follower.subscribe(b"a") == 2
    assert hub.figures == (1, 1)
    assert state(follower) is SubscriberState.SUBSCRIBED
    assert follower.unsubscribe(b"b") == 2
    assert follower.unsubscribe(b"a") == 1
    assert follower.punsubscribe(b"a") == 0
    assert state(follower) is SubscriberState.IDLE
    assert hub.figures == (0, 0)
    follower.psubscribe(b"*")
    follower.reset()
    assert state(follower) is SubscriberState.IDLE
    told(hub, WRITE)
    assert follower.take() == []
    follower.subscribe(b"__keyspace@0__:k")
    follower.close()
    assert state(follower) is SubscriberState.CLOSED
    told(hub, WRITE)
    assert follower.take() == []
    assert follower.subscribe(b"x") == 0  # a closed connection follows nothing
    assert follower.psubscribe(b"x") == 0
    assert hub.figures == (0, 0)  # and leaves nothing behind in the hub


def test_one_wake_until_the_messages_are_taken() -> None:
    hub = PubSub()
    hub.events = events("KEA")
    follower, wakes = subscriber(hub)
    follower.psubscribe(b"*")
    told(hub, WRITE)
    told(hub, DELETE)
    assert wakes.count == 1
    assert len(follower.take(limit=3)) == 3
    assert follower.pending
    told(hub, WRITE)
    assert wakes.count == 2
    assert len(follower.take()) == 3


def test_a_queue_past_its_bound_overflows_and_queues_nothing_more() -> None:
    hub = PubSub(max_pending=5)
    hub.events = events("KE$")
    follower, wakes = subscriber(hub)
    follower.psubscribe(b"*")
    told(hub, WRITE)
    told(hub, WRITE)
    assert state(follower) is SubscriberState.SUBSCRIBED
    told(hub, WRITE)  # the sixth message
    assert state(follower) is SubscriberState.OVERFLOWED
    assert follower.take() == []
    told(hub, WRITE)
    assert follower.take() == []
    assert wakes.count == 2  # the overflow wakes it too, to be closed


def test_queued_messages_are_charged_to_the_reply_budget_and_given_back() -> None:
    """Unsent notifications are unsent replies: charged as they are queued, given back as
    they are taken or dropped; one that does not fit overflows the queue, well before its
    count would."""
    budget = ReplyBudget(1000)
    hub = PubSub(reply_budget=budget)
    hub.events = events("KE$")
    follower, _ = subscriber(hub)
    follower.psubscribe(b"*")
    told(hub, WRITE)
    both = budget.held_bytes
    follower.take(limit=1)
    assert 0 < budget.held_bytes < both
    follower.take()
    assert budget.held_bytes == 0
    for _ in range(10):
        told(hub, WRITE)
    assert state(follower) is SubscriberState.OVERFLOWED
    assert follower.over_budget
    assert budget.held_bytes == 0  # the queue dropped gave its charge back
    other, _ = subscriber(hub)
    other.psubscribe(b"*")
    told(hub, WRITE)
    other.close()
    assert budget.held_bytes == 0


def test_what_subscriptions_hold_is_bounded_for_the_whole_server() -> None:
    """Channels and patterns count their names and SUBSCRIPTION_BYTES each against the
    server's bound, whichever connection follows them, and give them back when they go."""
    name = b"c" * 100
    hub = PubSub(max_followed_bytes=3 * (len(name) + SUBSCRIPTION_BYTES))
    first, _ = subscriber(hub)
    second, _ = subscriber(hub)
    assert first.subscribe(name) == 1
    assert second.subscribe(name) == 1  # the same channel costs each follower
    assert first.psubscribe(name) == 2
    assert second.subscribe(b"d" * 100) is None  # a fourth does not fit
    assert second.psubscribe(name) is None
    assert hub.figures == (1, 1)
    first.close()
    assert second.subscribe(b"d" * 100) == 2
    second.close()
    assert hub.followed_bytes == 0


def test_a_channel_longer_than_any_notification_s_is_refused() -> None:
    session = Session(1)
    longest = b"c" * MAX_CHANNEL_BYTES
    assert execute(MemoryStore(), session, [b"SUBSCRIBE", longest, longest + b"c", b"d"]) == (
        Replies([Push([b"subscribe", longest, 1]), CHANNEL_TOO_LONG])
    )


def test_changes_wait_for_the_dispatcher_which_delivers_them_in_order() -> None:
    hub = PubSub()
    hub.events = events("K$g")
    follower, wakes = subscriber(hub)
    follower.psubscribe(b"*")
    changes = [
        Change(key=f"k{n}", revision=n + 1, data=b"v", timestamp_ms=0) for n in range(50)
    ] + [DELETE]
    for change in changes:
        hub.changed(change)
    assert (follower.take(), wakes.count) == ([], 0)  # the write path delivered nothing
    waited: list[int] = []
    assert not hub.caught_up(hub.mark, lambda: waited.append(1))
    hub.dispatch()
    assert waited == [1]
    assert hub.caught_up(hub.mark, lambda: waited.append(2))
    expected = [(b"*", b"__keyspace@0__:" + c.key.encode(), event_of(c)) for c in changes]
    assert follower.take() == expected


def test_a_change_is_told_under_the_setting_it_was_made_under() -> None:
    hub = PubSub()
    hub.events = events("K$")
    follower, _ = subscriber(hub)
    follower.psubscribe(b"*")
    hub.changed(WRITE)
    hub.events = events("E$")
    hub.dispatch()
    assert follower.take() == [(b"*", b"__keyspace@0__:k", b"set")]


def test_a_dispatcher_past_its_bound_ends_every_subscriber_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = PubSub(max_queued_changes=3)
    hub.events = events("K$")
    first, first_wakes = subscriber(hub)
    second, _ = subscriber(hub)
    first.psubscribe(b"*")
    second.subscribe(b"__keyspace@0__:k")
    for _ in range(4):  # the fourth finds three queued
        hub.changed(WRITE)
    waited: list[int] = []
    assert not hub.caught_up(hub.mark, lambda: waited.append(1))
    later, _ = subscriber(hub)
    hub.dispatch()
    assert (state(first), state(second)) == (SubscriberState.OVERFLOWED,) * 2
    assert (first.take(), first_wakes.count, hub.overflows) == ([], 1, 1)
    assert waited == [1]  # what the overflow dropped is waited for no more
    assert "ending 2 subscribers" in caplog.text
    later.psubscribe(b"*")  # and it carries on
    told(hub, WRITE)
    assert later.take() == [(b"*", b"__keyspace@0__:k", b"set")]
    assert hub.overflows == 1


def test_the_dispatcher_thread_delivers_until_stopped() -> None:
    hub = PubSub()
    hub.events = events("K$")
    delivered = threading.Event()
    follower = Subscriber(hub, delivered.set)
    follower.psubscribe(b"*")
    hub.start()
    try:
        hub.changed(WRITE)
        assert delivered.wait(5)
        assert follower.take() == [(b"*", b"__keyspace@0__:k", b"set")]
    finally:
        hub.stop()
    delivered.clear()
    hub.changed(WRITE)
    assert not delivered.wait(0.2)  # nobody dispatches any more
    assert follower.take() == []


def test_past_the_servers_distinct_patterns_psubscribe_is_refused() -> None:
    store = MemoryStore()
    server = ServerState()
    server.pubsub.max_followed_patterns = 2
    first, second = Session(1, server), Session(2, server)
    execute(store, first, [b"PSUBSCRIBE", b"a*", b"b*"])
    reply = execute(store, second, [b"PSUBSCRIBE", b"a*", b"c*", b"b*"])
    assert reply == Replies([Push([b"psubscribe", b"a*", 1]), TOO_MANY_PATTERNS_ON_THE_SERVER])
    assert "follows 1024 distinct patterns" in str(TOO_MANY_PATTERNS_ON_THE_SERVER)
    execute(store, first, [b"PUNSUBSCRIBE", b"b*"])
    assert execute(store, second, [b"PSUBSCRIBE", b"c*"]) == Replies(
        [Push([b"psubscribe", b"c*", 2])]
    )


def test_the_confirmations_are_pushes_and_the_bounds_are_refused() -> None:
    store = MemoryStore()
    session = Session(1, ServerState())
    reply = execute(store, session, [b"SUBSCRIBE", b"a", b"b"])
    assert reply == Replies([Push([b"subscribe", b"a", 1]), Push([b"subscribe", b"b", 2])])
    assert encode(reply, 3).startswith(b">3\r\n$9\r\nsubscribe\r\n")
    assert encode(reply, 2).startswith(b"*3\r\n$9\r\nsubscribe\r\n")

    patterns = [b"p%d" % n for n in range(MAX_PATTERNS + 1)]
    reply = execute(store, session, [b"PSUBSCRIBE", *patterns])
    assert isinstance(reply, Replies)
    assert reply.replies[-2] == Push([b"psubscribe", patterns[-2], 2 + MAX_PATTERNS])
    assert reply.replies[-1] == TOO_MANY_SUBSCRIPTIONS
    again = execute(store, session, [b"PSUBSCRIBE", patterns[0]])
    assert again == Replies([Push([b"psubscribe", patterns[0], 2 + MAX_PATTERNS])])

    channels = [b"c%d" % n for n in range(MAX_SUBSCRIPTIONS)]
    reply = execute(store, session, [b"SUBSCRIBE", *channels])
    assert isinstance(reply, Replies)
    assert reply.replies[-1] == TOO_MANY_SUBSCRIPTIONS
    assert reply.replies[-2] == Push([b"subscribe", channels[-3 - MAX_PATTERNS], MAX_SUBSCRIPTIONS])
    assert "at most 1000 channels and patterns, 32 of them patterns" in str(reply.replies[-1])
    session.protocol = 3  # where INFO runs while subscribed
    info = execute(store, session, [b"INFO", b"stats"])
    assert isinstance(info, bytes)
    followed = b"\r\npubsub_channels:%d\r\npubsub_patterns:%d\r\n"
    assert followed % (MAX_SUBSCRIPTIONS - MAX_PATTERNS, MAX_PATTERNS) in info


@pytest.mark.parametrize(
    ("command", "label"),
    [
        ([b"GET", b"k"], "get"),
        ([b"CONFIG", b"GET", b"x"], "config|get"),
        ([b"client", b"id"], "client|id"),
        ([b"COMMAND"], "command"),
    ],
)
def test_subscribed_resp2_refuses_other_commands_naming_them_as_redis_does(
    command: list[bytes], label: str
) -> None:
    store = MemoryStore()
    session = Session(1, ServerState())
    execute(store, session, [b"SUBSCRIBE", b"a"])
    assert execute(store, session, command) == Error(
        "ERR",
        f"Can't execute '{label}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
        "are allowed in this context",
    )
    session.protocol = 3
    assert not isinstance(execute(store, session, command), Error)
