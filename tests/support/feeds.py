"""A memory store whose change feed the hub's tests control: `FeedingMemoryStore` is
`MemoryStore` whose every change (told through its `on_change`, in order, under its lock)
joins a feed of the tests' own, which `forget_through` cuts short as the history window
would, and whose listeners a test may hold back (`listeners`: changes then go untold, as a
replica's are when it loses its subscription); `changes` raises ResumeGone as the port says.
`read_gate`, when set, blocks every `changes` call until it opens (a store whose reads
block; the page is what the feed held when the call began), and `read_threads` names the
thread of each call; `before_read` runs once at the start of the next call (a write that
is both told live and in the page). `away`, when set, is raised by every `changes` and
`feed_head` (the store cannot be reached); `reads` counts the `changes` calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kvservice.store import (
    FEED_PAGE_CHANGES,
    Change,
    ChangeListener,
    ChangePage,
    FeedPosition,
    FeedSelector,
    ResumeGone,
    StoreUnavailable,
    Value,
)
from kvservice.store.memory import MemoryStore


class FeedingMemoryStore(MemoryStore):
    def __init__(self, **options: Any) -> None:
        super().__init__(on_change=self._feed_change, **options)
        self.feed: list[Change] = []
        self.forgotten_through = 0
        self.listeners: list[ChangeListener] = []
        self.read_gate: threading.Event | None = None
        self.read_threads: list[str] = []
        self.before_read: Callable[[], object] | None = None
        self.away: StoreUnavailable | None = None
        self.reads = 0

    def _feed_change(self, key: str, change: Change | None, value: Value | None) -> None:
        if change is None:  # a new deadline: not a change
            return
        self.feed.append(change)
        for listener in self.listeners:
            listener.changed(change)

    def forget_through(self, revision: int) -> None:
        """Changes up to `revision` leave the feed, as the window would prune them."""
        self.forgotten_through = revision

    def feed_head(self) -> FeedPosition:
        if self.away is not None:
            raise self.away
        return FeedPosition(self.life, len(self.feed))

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        self.read_threads.append(threading.current_thread().name)
        self.reads += 1
        if self.away is not None:
            raise self.away
        if self.before_read is not None:
            before_read, self.before_read = self.before_read, None
            before_read()
        feed = list(self.feed)
        if self.read_gate is not None:  # what is written meanwhile is not in this page
            self.read_gate.wait(10)
        head = len(feed)
        if after.life != self.life:
            raise ResumeGone("The position is of another life of the store.")
        if after.revision > head:
            raise ResumeGone("The position is ahead of the feed's head.")
        newer = [change for change in feed[after.revision :] if selector.matches(change.key)]
        if after.revision < self.forgotten_through and any(
            selector.matches(change.key) for change in feed[after.revision : self.forgotten_through]
        ):
            raise ResumeGone("Changes after the position have left the history window.")
        page = newer[:limit]
        if len(newer) > limit:
            return ChangePage(page, FeedPosition(self.life, page[-1].revision), caught_up=False)
        return ChangePage(page, FeedPosition(self.life, head), caught_up=True)

    def add_change_listener(self, listener: ChangeListener) -> None:
        self.listeners.append(listener)
