"""The Redis backend's change listeners: one thread per store follows the feed's channel and
calls every listener in revision order.

Theory of operation. The thread subscribes (redis-py's PubSub, on a connection of its own),
waits for Redis to confirm, and only then reads the feed's head: every change after the head
is then heard, and those at or before it, published before the head was read, are dropped.
From there revisions come one by one (the scripts give them out contiguously, `scripts.py`);
a message that skips some is a gap: the listeners are told `interrupted()` and given the
message. A lost connection (Redis restarted, the connection killed, a PING unanswered within
the store timeout), a message of another life (Redis's data gone) or one that is no change
(someone else publishing on the channel) interrupts too: the listeners are told at once, and
again once subscribed anew, after the new head was read, for changes made while no
subscription was live reach them only by catching up. Subscribing again backs off from
BACKOFF_FIRST_S to BACKOFF_MOST_S. Nothing is dropped silently: every change is either given
to the listeners or covered by an `interrupted()` after it.

redis-py's PubSub would reconnect by itself and resubscribe, hiding what it missed: here its
connections do not retry (`connection.topology`), and every error ends that subscription.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis.exceptions as redis_errors
from redis.client import PubSub

from kvservice.store.model import Change, ChangeListener, FeedPosition, StoreError
from kvservice.store.redis.connection import close_subscription
from kvservice.store.redis.scripts import published_change

logger = logging.getLogger("kvservice.store.redis")

POLL_S = 0.2
"""How long the thread waits for a message before looking whether the store is closing."""
PING_INTERVAL_S = 5.0
"""How long a quiet subscription waits before asking Redis whether it is still there."""
BACKOFF_FIRST_S = 0.05
BACKOFF_MOST_S = 2.0
"""The first and the longest waits before subscribing again after a failure."""


class _Lost(Exception):
    """The subscription can no longer be trusted to carry every change."""


class FeedSubscriber:
    """Follows the feed's channel for a store's listeners; see the module's docstring."""

    def __init__(
        self,
        subscribe: Callable[[], PubSub],
        channel: str,
        head: Callable[[], FeedPosition],
        timeout_s: float,
    ) -> None:
        """`subscribe` makes a PubSub on a connection of its own; `head` reads the feed's
        head (the store's `feed_head`); `timeout_s`: how long Redis may take to answer."""
        self._subscribe = subscribe
        self._channel = channel
        self._head = head
        self._timeout_s = timeout_s
        self._listeners: list[ChangeListener] = []
        self._lock = threading.Lock()
        self._live = threading.Event()
        """Set while a subscription is confirmed and its head read."""
        self._owed = False
        """Whether listeners are owed an `interrupted()` once subscribed (guarded by _lock)."""
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, listener: ChangeListener) -> None:
        """Tell `listener` of every change from now on. Waits up to the store timeout for the
        subscription; past it the listener is told `interrupted()` once one is made."""
        with self._lock:
            self._listeners.append(listener)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="redis-feed-subscriber", daemon=True
                )
                self._thread.start()
        if not self._live.wait(self._timeout_s):
            with self._lock:
                if not self._live.is_set():
                    self._owed = True

    def close(self) -> None:
        """Stop the thread (within POLL_S) and close its connection."""
        self._closing.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout_s + POLL_S * 2)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._closing.is_set():
            try:
                subscription = self._subscribe()
            except (redis_errors.RedisError, OSError) as error:
                logger.warning("The change feed's subscription could not be made: %s", error)
                self._closing.wait(delay)
                delay = min(delay * 2, BACKOFF_MOST_S)
                continue
            try:
                position = self._subscribed(subscription)
                delay = BACKOFF_FIRST_S
                self._follow(subscription, position)
            except Exception as error:
                if not isinstance(error, redis_errors.RedisError | OSError | StoreError | _Lost):
                    logger.exception("The change feed's subscriber failed")
                if self._live.is_set():
                    logger.warning("The change feed's subscription was lost: %s", error)
                    self._lost()
                else:
                    logger.warning("The change feed's subscription could not be made: %s", error)
                    self._closing.wait(delay)
                    delay = min(delay * 2, BACKOFF_MOST_S)
            finally:
                self._live.clear()
                close_subscription(subscription)

    def _subscribed(self, subscription: PubSub) -> FeedPosition:
        """Subscribe, wait for Redis to confirm, read the head: the position the messages
        go on from. Tells the listeners `interrupted()` if they are owed it."""
        subscription.subscribe(self._channel)
        deadline = time.monotonic() + self._timeout_s
        while True:
            message = subscription.get_message(timeout=POLL_S)
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise _Lost(f"Redis did not confirm the subscription within {self._timeout_s:g} s")
        position = self._head()
        with self._lock:
            self._live.set()
            owed, self._owed = self._owed, False
        if owed:
            self._interrupted()
        return position

    def _follow(self, subscription: PubSub, position: FeedPosition) -> None:
        """Relay messages until the subscription is lost or the store closes."""
        heard = time.monotonic()
        pinged: float | None = None
        while not self._closing.is_set():
            message = subscription.get_message(timeout=POLL_S)
            now = time.monotonic()
            if message is None:
                if pinged is None and now - heard > PING_INTERVAL_S:
                    subscription.ping()
                    pinged = now
                elif pinged is not None and now - pinged > self._timeout_s:
                    raise _Lost(f"Redis did not answer a PING within {self._timeout_s:g} s")
                continue
            heard, pinged = now, None
            if message["type"] != "message":
                continue  # a PING's answer
            try:
                life, change = published_change(message["data"])
            except ValueError as error:
                raise _Lost(f"a message on the feed's channel is no change: {error}") from error
            if life != position.life:
                raise _Lost("the feed has a new life: Redis lost its data")
            if change.revision <= position.revision:
                continue  # published before the head was read
            if change.revision > position.revision + 1:
                logger.warning(
                    "The change feed skipped from revision %d to %d: listeners catch up",
                    position.revision,
                    change.revision,
                )
                self._interrupted()
            self._changed(change)
            position = FeedPosition(life, change.revision)

    def _lost(self) -> None:
        """The subscription is gone: tell the listeners now, and again once one is made."""
        with self._lock:
            self._live.clear()
            self._owed = True
        self._interrupted()

    def _changed(self, change: Change) -> None:
        for listener in self._current():
            try:
                listener.changed(change)
            except Exception:
                logger.exception("A change listener failed on revision %d", change.revision)

    def _interrupted(self) -> None:
        for listener in self._current():
            try:
                listener.interrupted()
            except Exception:
                logger.exception("A change listener failed when told of an interruption")

    def _current(self) -> list[ChangeListener]:
        with self._lock:
            return list(self._listeners)
