"""Subscriptions without IO (Redis's pubsub.c): which connections follow which channels and
patterns, and how a keyspace notification reaches them.

`PubSub`, one per server, is told of every change of the store's feed (`changed`, the
listener of `ChangeFeed.subscribe`, called on the store's write path, often inside the
store's lock). It only queues the change, with the `notify-keyspace-events` setting of the
moment, and signals its dispatcher: a thread of its own (`start`, `stop`, with the server),
which computes the notifications (`keyspace_events`) and hands each to the connections
subscribed to its channel, then to those whose pattern matches it (`patterns.GlobPattern`,
bounded time), in the order the changes were made, as Redis does. Matching is what a client
can make expensive (patterns of 2 KB, built to be slow), so it never runs where every
client's reads and writes wait, and the patterns all connections follow together are capped
(MAX_FOLLOWED_PATTERNS). A dispatcher that falls MAX_QUEUED_CHANGES behind does not drop
notifications silently: every subscriber is ended (overflowed, as below), with a line in the
log, and counted (`overflows`). With `notify-keyspace-events` at its default, "", a change
costs one attribute read.

Redis writes a change's notifications to a subscriber before the reply of the command that
made it. So that a subscriber sees the same order, a connection with subscriptions waits,
before it runs a command and before it sends its reply, until the dispatcher has handled
every change queued so far (`mark`, `caught_up`): the wait costs the loop nothing (the
dispatcher wakes the connection), and only subscribers wait.

`Subscriber`, one per connection that subscribes, holds its channels and patterns and its
state (`SubscriberState`), and queues its messages until the connection's protocol takes
them (`take`, on the loop), waking the connection (`wake`, thread-safe) when the first one
arrives. Like Redis's, notifications are fire and forget: a connection that falls behind by
`max_pending` messages, or whose queued messages do not fit the reply budget (they are
unsent replies like any other: `kvservice.reply_budget`, charged as they are queued and
given back as they are taken), is not slowed down for, or caught up with: it is closed
(Redis's `client-output-buffer-limit pubsub`), and nothing more is queued for it.

What subscriptions hold is bounded too, for the whole server: a subscription costs its name
and about SUBSCRIPTION_BYTES besides (measured), so channels longer than any notification's
(MAX_CHANNEL_BYTES) are refused, as they could never carry anything, and all connections
together follow at most MAX_FOLLOWED_BYTES; past it a new subscription is refused.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from enum import Enum

from kvservice.reply_budget import ReplyBudget
from kvservice.resp.codec import Push
from kvservice.resp.keyspace_events import KEYSPACE_PREFIX, KeyspaceEvents
from kvservice.resp.patterns import GlobPattern
from kvservice.store import MAX_KEY_LENGTH, Change

logger = logging.getLogger("kvservice.resp")

MAX_SUBSCRIPTIONS = 1_000
"""Channels and patterns one connection may follow together (Redis has no bound): what a
connection may make the server hold."""
MAX_PATTERNS = 32
"""Patterns one connection may follow (Redis has no bound). Every pattern is matched against
every notification; a channel costs nothing more (one lookup)."""
MAX_FOLLOWED_PATTERNS = 1_024
"""Distinct patterns all connections together may follow (Redis has no bound); past it,
PSUBSCRIBE of a new one is refused. The dispatcher matches each against both channels of
every change: a 2 KB pattern built to be slow costs about 244 us to compile (once, the first
change after it is followed) and 3.4 us a change after (measured, 1,024 of them: 250 ms once,
then 3.5 ms a change). Without the cap, 512 connections of MAX_PATTERNS each made the first
change cost 4 to 6.5 s and every later one about 60 ms: notifications would lag that much
and subscribers' replies wait that long, though no longer every client's writes."""
MAX_QUEUED_CHANGES = 10_000
"""Changes waiting for the dispatcher before it is taken to be unable to keep up: every
subscriber is ended, rather than notifications dropped silently (a change with its setting,
about 200 bytes besides the value the store holds anyway)."""
MAX_PENDING_MESSAGES = 10_000
"""Messages queued for a connection that has not taken them (a few hundred bytes each: no
values are sent) before it is closed; their bytes are charged to the reply budget besides."""
MAX_CHANNEL_BYTES = len(KEYSPACE_PREFIX) + MAX_KEY_LENGTH
"""The longest channel a notification is published on (a keyspace channel of the longest
key): kvservice has no PUBLISH, so a longer one could never carry anything, and is refused
rather than held (Redis has no bound: 1,000 channels of 2 KB cost 2.5 MB a connection)."""
SUBSCRIPTION_BYTES = 200
"""What a subscription is counted besides its name: its entries in the connection's and the
server's tables (measured: 114 bytes with tracemalloc, about 170 of RSS with the allocator's
waste)."""
MAX_FOLLOWED_BYTES = 16 * 1024 * 1024
"""What the subscriptions of all connections together may hold (names and SUBSCRIPTION_BYTES
each); past it, a new subscription is refused (Redis counts them in maxmemory-clients). Without
it, 512 connections of MAX_SUBSCRIPTIONS channels of MAX_CHANNEL_BYTES would hold about
230 MiB (1.3 GB before channels were bounded in length)."""

Message = tuple[bytes | None, bytes, bytes]
"""A notification as one subscriber receives it: the pattern it matched (None: it follows
the channel itself), the channel, the message."""


def message_bytes(message: Message) -> int:
    """What a queued message is charged to the reply budget: its tuple and place in the
    queue, its channel and payload (shared by the queues that hold them, but each will hold
    them once encoded) and its pattern."""
    pattern, channel, payload = message
    return _QUEUED_MESSAGE_BYTES + len(channel) + len(payload) + len(pattern or b"")


_QUEUED_MESSAGE_BYTES = 72
"""A message's tuple (64 bytes) and its slot in the queue (8)."""


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
    """Every subscription of one server, its `notify-keyspace-events` setting, and the
    dispatcher that delivers the notifications of the changes queued by `changed`."""

    def __init__(
        self,
        max_pending: int = MAX_PENDING_MESSAGES,
        max_queued_changes: int = MAX_QUEUED_CHANGES,
        max_followed_patterns: int = MAX_FOLLOWED_PATTERNS,
        reply_budget: ReplyBudget | None = None,
        max_followed_bytes: int = MAX_FOLLOWED_BYTES,
    ) -> None:
        """`reply_budget`: what subscribers' queued messages are charged to (None: only
        `max_pending` bounds them)."""
        self.max_pending = max_pending
        self.max_queued_changes = max_queued_changes
        self.max_followed_patterns = max_followed_patterns
        self.reply_budget = reply_budget
        self.max_followed_bytes = max_followed_bytes
        self.followed_bytes = 0
        """What every subscription holds now, as MAX_FOLLOWED_BYTES counts it."""
        self.events = KeyspaceEvents()
        self.overflows = 0
        """Times the dispatcher fell MAX_QUEUED_CHANGES behind and ended every subscriber."""
        self._channels: dict[bytes, tuple[Subscriber, ...]] = {}
        """Who follows each channel: a tuple, 170 bytes less than a dict for the one
        follower most channels have (each connection follows a channel once)."""
        self._patterns: dict[bytes, tuple[GlobPattern, dict[Subscriber, None]]] = {}
        self._lock = threading.Lock()
        """The subscriptions: commands run on workers, the dispatcher on its thread."""
        self._queue: deque[tuple[int, KeyspaceEvents, Change]] = deque()
        self._queued = threading.Condition(threading.Lock())
        """The queue, the marks, the waiters: taken briefly, on the write path too."""
        self._queued_mark = 0
        """The changes queued so far (each one's mark is its number)."""
        self._dispatched_mark = 0
        """The changes dispatched (or dropped by an overflow) so far."""
        self._overflowed = False
        """The queue passed its bound: the dispatcher is to end every subscriber."""
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._dispatching = threading.Lock()
        """One dispatch at a time: the order of notifications is the order of changes."""
        self._stopping = False
        self._thread: threading.Thread | None = None

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

    # -- the write path --------------------------------------------------------------------

    def changed(self, change: Change) -> None:
        """Queue a change's notifications for the dispatcher (any thread; never blocks on a
        subscriber, matches nothing). Past the queue's bound, the queue is dropped and the
        dispatcher told to end every subscriber."""
        if not self._publishing:  # the default: one attribute read per change
            return
        with self._queued:
            self._queued_mark += 1
            if len(self._queue) >= self.max_queued_changes:
                self._queue.clear()
                self._overflowed = True
            else:
                self._queue.append((self._queued_mark, self._events, change))
            self._queued.notify()

    # -- the dispatcher --------------------------------------------------------------------

    def start(self) -> None:
        """Run the dispatcher on a thread of its own, until `stop`."""
        self._stopping = False
        self._thread = threading.Thread(
            target=self._dispatch_until_stopped, name="kvservice-resp-notifications", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the dispatcher once it has delivered what was queued."""
        with self._queued:
            self._stopping = True
            self._queued.notify()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _dispatch_until_stopped(self) -> None:
        while True:
            with self._queued:
                while not (self._queue or self._overflowed or self._stopping):
                    self._queued.wait()
                if self._stopping and not self._queue:
                    return
            try:
                self.dispatch()
            except Exception:  # a bug here must not end the notifications of every change
                logger.exception("the keyspace notification dispatcher failed")

    def dispatch(self) -> None:
        """Deliver the notifications of every change queued, in order (the dispatcher's
        thread; a test may call it directly)."""
        with self._dispatching:
            with self._queued:
                queued, self._queue = self._queue, deque()
                overflowed, self._overflowed = self._overflowed, False
                dropped_through = self._queued_mark - len(queued)
            if overflowed:
                self._end_every_subscriber()
                self._dispatched(dropped_through)
            for mark, events, change in queued:
                try:
                    for channel, payload in events.notifications(change):
                        self.publish(channel, payload)
                finally:  # a bug must not leave subscribers waiting for this change
                    self._dispatched(mark)

    def _end_every_subscriber(self) -> None:
        self.overflows += 1
        with self._lock:
            subscribers = {
                subscriber
                for followers in (
                    *self._channels.values(),
                    *(entry[1] for entry in self._patterns.values()),
                )
                for subscriber in followers
            }
        logger.warning(
            "ending %d subscribers: keyspace notifications fell %d changes behind the "
            "writes, the most the dispatcher may",
            len(subscribers),
            self.max_queued_changes,
        )
        for subscriber in subscribers:
            subscriber.overflow()

    def _dispatched(self, mark: int) -> None:
        """Changes up to `mark` are delivered: wake the connections that waited for them."""
        with self._queued:
            self._dispatched_mark = max(self._dispatched_mark, mark)
            due = [wake for waited, wake in self._waiters if waited <= self._dispatched_mark]
            if due:
                self._waiters = [
                    (waited, wake)
                    for waited, wake in self._waiters
                    if waited > self._dispatched_mark
                ]
        for wake in due:
            wake()

    @property
    def mark(self) -> int:
        """The changes queued so far: `caught_up` with it, every one has been delivered."""
        return self._queued_mark

    def caught_up(self, mark: int, wake: Callable[[], None]) -> bool:
        """Whether the changes up to `mark` are delivered; if not, `wake` is called once
        they are (from the dispatcher's thread)."""
        with self._queued:
            if self._dispatched_mark >= mark:
                return True
            self._waiters.append((mark, wake))
            return False

    def publish(self, channel: bytes, payload: bytes) -> int:
        """Hand a message to every subscriber of `channel`, then to every one of a pattern
        that matches it; how many received it."""
        with self._lock:
            globs = [(pattern, entry[0]) for pattern, entry in self._patterns.items()]
        # Matched off the lock (a first match compiles: 0.25 ms for a pattern built to be
        # slow), so that (P)SUBSCRIBE and a closing connection, on the loop, never wait for it.
        matched = [pattern for pattern, glob in globs if glob.matches(channel)]
        received = 0
        with self._lock:  # who follows now: one who left meanwhile is not told
            for subscriber in self._channels.get(channel, ()):
                subscriber.deliver((None, channel, payload))
                received += 1
            for pattern in matched:
                for subscriber in self._patterns.get(pattern, (None, {}))[1]:
                    subscriber.deliver((pattern, channel, payload))
                    received += 1
        return received

    # -- subscriptions ---------------------------------------------------------------------

    def follow(self, subscriber: Subscriber, channel: bytes) -> bool:
        """Follow `channel` (once per subscriber: `Subscriber.subscribe` sees to it); False
        (and nothing followed) if the subscriptions would hold more than
        `max_followed_bytes`."""
        with self._lock:
            if not self._hold(channel):
                return False
            self._channels[channel] = (*self._channels.get(channel, ()), subscriber)
            return True

    def unfollow(self, subscriber: Subscriber, channel: bytes) -> None:
        with self._lock:
            subscribers = self._channels.get(channel, ())
            if subscriber in subscribers:
                self.followed_bytes -= len(channel) + SUBSCRIPTION_BYTES
                left = tuple(other for other in subscribers if other is not subscriber)
                if left:
                    self._channels[channel] = left
                else:
                    del self._channels[channel]

    def follow_pattern(self, subscriber: Subscriber, pattern: bytes) -> bool:
        """Follow `pattern`; False (and nothing followed) if it is a new one and the server
        follows `max_followed_patterns` already, or the subscriptions would hold more than
        `max_followed_bytes`."""
        with self._lock:
            entry = self._patterns.get(pattern)
            if entry is None and len(self._patterns) >= self.max_followed_patterns:
                return False
            if not self._hold(pattern):
                return False
            if entry is None:
                entry = self._patterns[pattern] = (GlobPattern(pattern), {})
            entry[1][subscriber] = None
            return True

    def unfollow_pattern(self, subscriber: Subscriber, pattern: bytes) -> None:
        with self._lock:
            entry = self._patterns.get(pattern)
            if entry is not None and subscriber in entry[1]:
                self.followed_bytes -= len(pattern) + SUBSCRIPTION_BYTES
                del entry[1][subscriber]
                if not entry[1]:
                    del self._patterns[pattern]

    def _hold(self, name: bytes) -> bool:
        """Count one more subscription to `name` if it fits `max_followed_bytes` (under the
        lock)."""
        held = self.followed_bytes + len(name) + SUBSCRIPTION_BYTES
        if held > self.max_followed_bytes:
            return False
        self.followed_bytes = held
        return True


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
        self._pending_bytes = 0
        """What `_pending` is charged to the hub's reply budget."""
        self.over_budget = False
        """It overflowed because its messages did not fit the reply budget (not the count)."""
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

    def subscribe(self, channel: bytes) -> int | None:
        """Follow `channel` (again is nothing new); the count, or None if the server's
        subscriptions hold as much as they may (MAX_FOLLOWED_BYTES). Check `full` first."""
        with self._changing:
            if channel not in self.channels and self.state is not SubscriberState.CLOSED:
                if not self.hub.follow(self, channel):
                    return None
                self.channels[channel] = None
                self._counted()
            return self.count

    def psubscribe(self, pattern: bytes) -> int | None:
        """Follow the channels `pattern` matches; the count, or None if the server follows
        as many distinct patterns as it may (MAX_FOLLOWED_PATTERNS), or its subscriptions
        hold as much as they may (MAX_FOLLOWED_BYTES). Check `patterns_full` first."""
        with self._changing:
            if pattern not in self.patterns and self.state is not SubscriberState.CLOSED:
                if not self.hub.follow_pattern(self, pattern):
                    return None
                self.patterns[pattern] = None
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
                self._drop_pending()  # what it unsubscribed from is not sent any more

    def deliver(self, message: Message) -> None:
        """Queue a message and wake the connection (any thread); past the bound, drop the
        queue and overflow instead."""
        size = message_bytes(message)
        budget = self.hub.reply_budget
        with self._lock:
            if self.state is not SubscriberState.SUBSCRIBED:
                return
            overflowed = len(self._pending) >= self.hub.max_pending
            if not overflowed and budget is not None and not budget.reserve(size):
                overflowed = self.over_budget = True
            if overflowed:
                self.state = SubscriberState.OVERFLOWED
                self._drop_pending()
            else:
                self._pending.append(message)
                self._pending_bytes += size
            if self._woken and not overflowed:  # the overflow wakes it again, to be closed
                return
            self._woken = True
        self.wake()

    def overflow(self) -> None:
        """Be ended as if its queue had overflowed (the dispatcher fell behind), and woken to
        be closed."""
        with self._lock:
            if self.state is not SubscriberState.SUBSCRIBED:
                return
            self.state = SubscriberState.OVERFLOWED
            self._drop_pending()
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
            if taken:
                self._give_back(sum(map(message_bytes, taken)))
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
                self._drop_pending()

    def _drop_pending(self) -> None:
        """Drop the queue, giving its charge back (under `_lock`)."""
        self._pending.clear()
        self._give_back(self._pending_bytes)

    def _give_back(self, size: int) -> None:
        """Release `size` bytes of the queue's charge (under `_lock`)."""
        self._pending_bytes -= size
        budget = self.hub.reply_budget
        if budget is not None and size:
            budget.release(size)
