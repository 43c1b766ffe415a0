"""Subscriptions without IO (Redis's pubsub.c): which connections follow which channels and
patterns, and how a keyspace notification reaches them.

`PubSub`, one per server, is told of every change of the store's feed (`changed`, the
listener of `ChangeFeed.subscribe`, called from whichever thread applied the change) and
hands each notification (`keyspace_events`) to the connections subscribed to its channel,
then to those whose pattern matches it (`patterns.GlobPattern`, bounded time), as Redis
does. With `notify-keyspace-events` at its default, "", a change costs one attribute read.

`Subscriber`, one per connection that subscribes, holds its channels and patterns and its
state (`SubscriberState`), and queues its messages until the connection's protocol takes
them (`take`, on the loop), waking the connection (`wake`, thread-safe) when the first one
arrives. Like Redis's, notifications are fire and forget: a connection that falls behind by
`max_pending` messages is not slowed down for, or caught up with: it is closed (Redis's
`client-output-buffer-limit pubsub`), and nothing more is queued for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum

from kvservice.resp.codec import Push
from kvservice.resp.keyspace_events import KeyspaceEvents
from kvservice.resp.patterns import GlobPattern
from kvservice.store import Change

MAX_SUBSCRIPTIONS = 1_000
"""Channels and patterns one connection may follow together (Redis has no bound): what a
connection may make the server hold."""
MAX_PATTERNS = 32
"""Patterns one connection may follow. Every pattern is matched against every notification,
while the write that made it waits (0.2 us a pattern and channel, two channels a change):
512 connections of 1,000 patterns each would add about 190 ms to every write, 32 each add
6 ms. A channel costs a write nothing more (one lookup)."""
MAX_PENDING_MESSAGES = 10_000
"""Messages queued for a connection that has not taken them (a few hundred bytes each: no
values are sent) before it is closed."""

Message = tuple[bytes | None, bytes, bytes]
"""A notification as one subscriber receives it: the pattern it matched (None: it follows
the channel itself), the channel, the message."""


def message_push(message: Message) -> Push:
    """A message as Redis sends it: `message`, or `pmessage` with the pattern first."""
    pattern, channel, payload = message
    if pattern is None:
        return Push([b"message", channel, payload])
    return Push([b"pmessage", pattern, channel, payload])


class SubscriberState(Enum):
    """Where a connection stands with its subscriptions. Transitions: IDLE -> SUBSCRIBED on
    the first subscription, SUBSCRIBED -> IDLE when the last one goes, SUBSCRIBED ->
    OVERFLOWED when its queue passes the bound, and any -> CLOSED with the connection."""

    IDLE = "idle"
    """No channel, no pattern: commands run as usual, nothing is queued."""
    SUBSCRIBED = "subscribed"
    """At least one: messages are queued; under RESP2 only the subscribe family, PING, QUIT
    and RESET run."""
    OVERFLOWED = "overflowed"
    """Its queue passed `max_pending`: it is dropped, nothing more is queued, and the
    connection is to close."""
    CLOSED = "closed"
    """The connection closed: it follows nothing."""


class PubSub:
    """Every subscription of one server, and its `notify-keyspace-events` setting."""

    def __init__(self, max_pending: int = MAX_PENDING_MESSAGES) -> None:
        self.max_pending = max_pending
        self.events = KeyspaceEvents()
        self._channels: dict[bytes, dict[Subscriber, None]] = {}
        self._patterns: dict[bytes, tuple[GlobPattern, dict[Subscriber, None]]] = {}
        self._lock = threading.Lock()
        """Commands run on workers and changes arrive from any thread."""

    @property
    def events(self) -> KeyspaceEvents:
        """The `notify-keyspace-events` setting (CONFIG SET); read by every change without a
        lock: it is replaced whole."""
        return self._events

    @events.setter
    def events(self, events: KeyspaceEvents) -> None:
        self._events, self._publishing = events, events.publishes

    @property
    def figures(self) -> tuple[int, int]:
        """Channels and patterns at least one connection follows (INFO's pubsub_channels,
        pubsub_patterns)."""
        with self._lock:
            return len(self._channels), len(self._patterns)

    def changed(self, change: Change) -> None:
        """Publish a change's notifications (any thread; never blocks on a subscriber)."""
        if not self._publishing:  # the default: one attribute read per change
            return
        for channel, payload in self._events.notifications(change):
            self.publish(channel, payload)

    def publish(self, channel: bytes, payload: bytes) -> int:
        """Hand a message to every subscriber of `channel`, then to every one of a pattern
        that matches it; how many received it."""
        received = 0
        with self._lock:
            for subscriber in self._channels.get(channel, ()):
                subscriber.deliver((None, channel, payload))
                received += 1
            for pattern, (glob, subscribers) in self._patterns.items():
                if glob.matches(channel):
                    for subscriber in subscribers:
                        subscriber.deliver((pattern, channel, payload))
                        received += 1
        return received

    def follow(self, subscriber: Subscriber, channel: bytes) -> None:
        with self._lock:
            self._channels.setdefault(channel, {})[subscriber] = None

    def unfollow(self, subscriber: Subscriber, channel: bytes) -> None:
        with self._lock:
            subscribers = self._channels.get(channel)
            if subscribers is not None:
                subscribers.pop(subscriber, None)
                if not subscribers:
                    del self._channels[channel]

    def follow_pattern(self, subscriber: Subscriber, pattern: bytes) -> None:
        with self._lock:
            entry = self._patterns.get(pattern)
            if entry is None:
                entry = self._patterns[pattern] = (GlobPattern(pattern), {})
            entry[1][subscriber] = None

    def unfollow_pattern(self, subscriber: Subscriber, pattern: bytes) -> None:
        with self._lock:
            entry = self._patterns.get(pattern)
            if entry is not None:
                entry[1].pop(subscriber, None)
                if not entry[1]:
                    del self._patterns[pattern]


class Subscriber:
    """One connection's subscriptions and the messages waiting for it. Its subscriptions
    change from the connection's own commands, one at a time, and from its close, which may
    come while a command runs on a worker: under `_changing`, so a subscription made as the
    connection closes is not left behind in the hub. `deliver` comes from any thread (under
    the hub's lock), so the queue has a lock of its own, taken last."""

    def __init__(self, hub: PubSub, wake: Callable[[], None]) -> None:
        self.hub = hub
        self.wake = wake
        """Makes the connection take its messages: thread-safe, never blocks."""
        self.state = SubscriberState.IDLE
        self.channels: dict[bytes, None] = {}
        self.patterns: dict[bytes, None] = {}
        self._pending: list[Message] = []
        self._woken = False
        """A wake is on its way: the messages after it need no other."""
        self._lock = threading.Lock()
        self._changing = threading.RLock()

    @property
    def count(self) -> int:
        """Channels and patterns followed: the number every confirmation ends with."""
        return len(self.channels) + len(self.patterns)

    @property
    def pending(self) -> bool:
        """Whether messages wait to be taken."""
        return bool(self._pending)

    @property
    def full(self) -> bool:
        """Whether it follows MAX_SUBSCRIPTIONS: a new channel or pattern is refused."""
        return self.count >= MAX_SUBSCRIPTIONS

    @property
    def patterns_full(self) -> bool:
        """Whether it follows MAX_PATTERNS patterns (or is `full`): a new one is refused."""
        return len(self.patterns) >= MAX_PATTERNS or self.full

    def subscribe(self, channel: bytes) -> int:
        """Follow `channel` (again is nothing new); the count. Check `full` first."""
        with self._changing:
            if channel not in self.channels and self.state is not SubscriberState.CLOSED:
                self.channels[channel] = None
                self.hub.follow(self, channel)
                self._counted()
            return self.count

    def psubscribe(self, pattern: bytes) -> int:
        """Follow the channels `pattern` matches; the count. Check `patterns_full` first."""
        with self._changing:
            if pattern not in self.patterns and self.state is not SubscriberState.CLOSED:
                self.patterns[pattern] = None
                self.hub.follow_pattern(self, pattern)
                self._counted()
            return self.count

    def unsubscribe(self, channel: bytes) -> int:
        """Stop following `channel` (if it did); the count."""
        with self._changing:
            if channel in self.channels:
                del self.channels[channel]
                self.hub.unfollow(self, channel)
                self._counted()
            return self.count

    def punsubscribe(self, pattern: bytes) -> int:
        """Stop following `pattern` (if it did); the count."""
        with self._changing:
            if pattern in self.patterns:
                del self.patterns[pattern]
                self.hub.unfollow_pattern(self, pattern)
                self._counted()
            return self.count

    def _counted(self) -> None:
        """The state after a subscription came or went."""
        with self._lock:
            if self.state is SubscriberState.IDLE and self.count:
                self.state = SubscriberState.SUBSCRIBED
            elif self.state is SubscriberState.SUBSCRIBED and not self.count:
                self.state = SubscriberState.IDLE
                self._pending.clear()  # what it unsubscribed from is not sent any more

    def deliver(self, message: Message) -> None:
        """Queue a message and wake the connection (any thread); past the bound, drop the
        queue and overflow instead."""
        with self._lock:
            if self.state is not SubscriberState.SUBSCRIBED:
                return
            overflowed = len(self._pending) >= self.hub.max_pending
            if overflowed:
                self.state = SubscriberState.OVERFLOWED
                self._pending.clear()
            else:
                self._pending.append(message)
            if self._woken and not overflowed:  # the overflow wakes it again, to be closed
                return
            self._woken = True
        self.wake()

    def take(self, limit: int | None = None) -> list[Message]:
        """The oldest messages queued (at most `limit`), now off the queue (on the loop)."""
        with self._lock:
            self._woken = False
            if limit is None or len(self._pending) <= limit:
                taken, self._pending = self._pending, []
            else:
                taken, self._pending = self._pending[:limit], self._pending[limit:]
        return taken

    def reset(self) -> None:
        """Follow nothing any more, without a word (RESET)."""
        with self._changing:
            for channel in list(self.channels):
                self.unsubscribe(channel)
            for pattern in list(self.patterns):
                self.punsubscribe(pattern)

    def close(self) -> None:
        """Follow nothing, for good: the connection closed."""
        with self._changing:
            self.reset()
            with self._lock:
                self.state = SubscriberState.CLOSED
                self._pending.clear()
