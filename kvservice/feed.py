"""The change feed's hub: every watcher of the process, fed from the store, for every transport.

`ChangeFeed` is built once, in the composition root, with the store and `FeedSettings`, and
handed to each transport (HTTP's `/_watch` and long-poll, RESP's keyspace notifications). It
knows nothing of sockets or loops: it imports the store's port alone. It is the store's one
`ChangeListener`, and keeps for each watcher a queue of the changes it follows.

Theory of operation. `watch(selector, after, wake)` registers a watcher first, then, when
`after` is given, reads the store's first page of changes after it (`Store.changes`), so that
no change falls between the replay and the live feed, and a position the store cannot serve
is the caller's error at once (ResumeGone, InvalidPosition). It runs where the transport runs
its reads (on a worker when reads may block). Without `after` it starts live, at the hub's
head: every change the store has told of so far is before it. From then on:

- `changed` (the store's thread, in revision order, quickly) appends each change a watcher
  follows to its queue, and wakes the watcher when its transport had found nothing to take.
  A watcher only ever queues revisions after the last it queued: dedupe is by revision. A
  queue past `queue_changes` ends its watcher (`Ended("slow")`): a client that does not read
  is let go of, with its memory, rather than grow it; it resumes from its last position.
- A watcher that is behind (its first page was not the last, or the store said
  `interrupted`) reads the next page from the store on the hub's own threads, never on a
  transport's loop, once its queue is empty; live changes that arrive meanwhile are kept
  (up to the queue's bound, else read again) and queued after the page, deduped.
- `Watcher.take()` (non-blocking, on the transport's loop): the changes ready, in order; or
  a bookmark (the position to resume from) when `bookmark_interval_s` passed with nothing
  sent; or `Ended`; or None (nothing yet: it calls `wake` when there is). A timer thread
  wakes the watchers whose bookmark is due.
- `close()` (the drain) ends every watcher with `Ended("stopping")` and wakes it.

The head. `head` is the newest revision the store has *told* (`changed`), never one a page
merely showed: a store may make a change readable before it tells of it (Redis: the PUBLISH
in flight; the durable store with --fsync everysec: told after the commit), and a live
watcher's bookmark is `max(head, what it queued)`, so a head raised by another watcher's page
would name a position past a change that watcher has not been told yet. A page moves only
its own watcher's position (every change it follows up to the page's position is in it).

Lives. The hub reads the store's head after `interrupted()` (on a catch-up thread), and
before it hands out a position of its own (a watcher without `after`, `now`, the position
to start again from after ResumeGone): a head of another life (Redis lost its data), or
one behind the head as of before the read (its last writes lost), is taken as the hub's,
and every watcher whose position is of the old life or past the new head ends "gone": its
position can no longer be served. A head of the same life only tells that the life holds.
An `Ended("gone")` carries the position to start again from.

Outages. A catch-up read that fails as the store being away ends every watcher that is
behind at once ("unavailable"), not one read at a time: each would wait the store's timeout
in turn on the hub's few threads, and the last would learn of the outage minutes later. Their
clients resume from their last positions.

`subscribe` is for fire-and-forget listeners (RESP's keyspace notifications): called with
every change, in order, on the store's thread; they must not block.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from kvservice.store import (
    FEED_PAGE_CHANGES,
    Change,
    ChangeListener,
    ChangePage,
    FeedPosition,
    FeedSelector,
    FeedUnsupported,
    ResumeGone,
    StoreError,
)

logger = logging.getLogger("kvservice.feed")

_CATCH_UP_THREADS = 2
"""Threads that read catch-up pages for watchers that are behind: a handful of reads at a
time is plenty, and bounds what catching up can ask of the store at once."""


class FeedSource(Protocol):
    """What the hub asks of the store: the three feed methods of the `Store` port."""

    def feed_head(self) -> FeedPosition: ...

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage: ...

    def add_change_listener(self, listener: ChangeListener) -> None: ...


@dataclass(frozen=True)
class FeedSettings:
    """The bounds of the change feed; config.py's --max-watchers, --watch-queue,
    --watch-bookmark-interval and --watch-max-wait set them, with these defaults."""

    max_watchers: int = 2048
    """Watchers open at once, every transport together; one more is refused (WatchersFull)."""
    queue_changes: int = 1000
    """Changes queued for one watcher that its client has not taken; past it, it is ended."""
    bookmark_interval_s: float = 15.0
    """A watcher sent nothing for this long is sent a bookmark (its position)."""
    max_wait_s: float = 60.0
    """The longest a long-poll may ask to wait."""


class WatchersFull(Exception):
    """No watcher can be opened now: the cap is reached, or the server is stopping. The
    message is safe to show a client, who may retry after `retry_after_s`."""

    retry_after_s = 1


ENDED_REASONS = ("slow", "gone", "unavailable", "stopping")
"""Why a watcher ends: its client did not keep up (its queue overflowed); its position left
the history window while it caught up; the store could not be read while it caught up; the
server drains."""


@dataclass(frozen=True, slots=True)
class Ended:
    """A watcher has ended; its client resumes (elsewhere, or later) from its last position."""

    reason: str
    """One of ENDED_REASONS."""
    detail: str
    """What to tell the client, safe to show."""
    restart: FeedPosition | None = None
    """For "gone": the hub's head when it ended, to start again from (of the store's life)."""


WatcherOutput = list[Change] | FeedPosition | Ended | None
"""What `Watcher.take` gives: changes, a bookmark, the end, or nothing yet."""


@dataclass(slots=True, eq=False)
class Watcher:
    """One watcher: what it follows, what is queued for it, and where it stands. Made by
    `ChangeFeed.watch`; every field is the hub's, guarded by its lock."""

    feed: ChangeFeed
    selector: FeedSelector
    wake: Callable[[], None]
    kind: str
    bookmark_interval_s: float
    life: str
    """The store's life its position is of: its ids and bookmarks name it."""
    taken: FeedPosition
    """After the last change taken: where its client resumes from."""
    queued_through: int
    """The revision of the last change queued (or read past): only later ones are queued."""
    last_sent: float
    queue: deque[Change] = field(default_factory=deque)
    behind: bool = False
    """Changes it follows may be in the store and not in its queue: it reads them."""
    reading: bool = False
    live: list[Change] = field(default_factory=list)
    """Changes told while it is behind, queued after the page being read."""
    live_lost: bool = False
    """More were told while behind than `live` keeps: the store is read again."""
    armed: bool = False
    """Its transport found nothing to take: wake it when there is something."""
    ended: Ended | None = None
    closed: bool = False

    def take(self, limit: int = FEED_PAGE_CHANGES) -> WatcherOutput:
        """What there is for the client now (at most `limit` changes); non-blocking."""
        return self.feed.take(self, limit)

    @property
    def position(self) -> FeedPosition:
        """Where its client resumes from, as of what it has taken: a bookmark's position."""
        with self.feed.lock:
            return self.feed.position_of(self)

    def close(self) -> None:
        """The client has gone (or was answered): forget the watcher. Idempotent."""
        self.feed.forget(self)


@dataclass(frozen=True)
class FeedFigures:
    """What /_metrics reports of the feed."""

    watchers: dict[str, int]
    """Watchers open, by kind (sse, long-poll)."""
    events_sent: int
    bookmarks_sent: int
    ended: dict[str, int]
    """Watchers ended, by reason (ENDED_REASONS)."""
    refusals: int
    """Watches refused at --max-watchers (or while stopping)."""


class ChangeFeed:
    """The hub (see the module docstring)."""

    def __init__(
        self,
        store: FeedSource,
        settings: FeedSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.lock = threading.Lock()
        self._watchers: set[Watcher] = set()
        self._by_key: dict[str, set[Watcher]] = {}
        self._by_prefix: set[Watcher] = set()
        self._subscribers: list[Callable[[Change], None]] = []
        self._closed = False
        self._events_sent = 0
        self._bookmarks_sent = 0
        self._ended: dict[str, int] = dict.fromkeys(ENDED_REASONS, 0)
        self._refusals = 0
        self._readers = ThreadPoolExecutor(_CATCH_UP_THREADS, thread_name_prefix="feed-catch-up")
        self._due: list[tuple[float, int, Watcher]] = []
        self._sequence = itertools.count()
        self._timer_wakes = threading.Condition(self.lock)
        self.life = ""
        """The store's life, once its head was read (a store away at the start is asked
        again at the first watch); taken anew after an interruption (see Lives)."""
        self.head = 0
        """The newest revision the store told (or its head, as read at the start or after an
        interruption): every change up to it was told. Pages never move it (see The head)."""
        self._head_stale = False
        """An interruption was heard since the head was last read: read it again."""
        self._interruptions = 0
        self.unsupported: FeedUnsupported | None = None
        """Why the store keeps no feed (a Redis Cluster), or None: then every watch, page
        and position raises it, and the rest of the service runs as before."""
        try:
            store.add_change_listener(self)
        except FeedUnsupported as error:
            self.unsupported = error
        else:
            # Told of changes before the head is read: none falls between the two.
            with contextlib.suppress(StoreError):
                self._read_head()
        self._timer = threading.Thread(target=self._bookmarks, name="feed-bookmarks", daemon=True)
        self._timer.start()

    # -- what transports call ---------------------------------------------------------------

    def watch(
        self,
        selector: FeedSelector,
        after: FeedPosition | None,
        wake: Callable[[], None],
        *,
        kind: str = "sse",
        bookmark_interval_s: float | None = None,
    ) -> Watcher:
        """A watcher of `selector` from `after` (None: from now on), which calls `wake`
        (from any thread) when `take` has something after finding nothing. Raises
        WatchersFull, and, with `after`, ResumeGone, InvalidPosition (and StoreUnavailable)
        from reading its first page, which may block: call it where reads run; raises
        FeedUnsupported for a store that keeps no feed."""
        self._check_supported()
        if after is None or not self.life:
            self._read_head()  # its life: a watcher must not start in a dead one
        now = self.clock()
        with self.lock:
            if self._closed or len(self._watchers) >= self.settings.max_watchers:
                self._refusals += 1
                raise WatchersFull(
                    "The server is stopping; watch another, or retry shortly."
                    if self._closed
                    else f"The server has {self.settings.max_watchers} watchers open, its "
                    "limit; retry shortly."
                )
            start = FeedPosition(self.life, self.head) if after is None else after
            watcher = Watcher(
                self,
                selector,
                wake,
                kind,
                bookmark_interval_s or self.settings.bookmark_interval_s,
                life=start.life,
                taken=start,
                queued_through=start.revision,
                last_sent=now,
                behind=after is not None,
                reading=after is not None,
            )
            self._register(watcher)
        if after is not None:
            try:
                page = self.store.changes(selector, after, self._page_changes)
            except BaseException:
                self.forget(watcher)
                raise
            self._read(watcher, page)
        return watcher

    def changes(self, selector: FeedSelector, after: FeedPosition) -> ChangePage:
        """The changes after `after` that `selector` follows, one page, without a watcher
        (a long-poll that does not wait); raises as `Store.changes`, or FeedUnsupported."""
        self._check_supported()
        return self.store.changes(selector, after, self._page_changes)

    @property
    def now(self) -> FeedPosition:
        """The position after every change told so far: where a history read just now
        stands (read before the history, nothing it misses is after it). Reads the store's
        head (it may block: call it where reads run) for its life, which may be new (Redis
        lost its data: see Lives); raises StoreUnavailable if the store is away, and
        FeedUnsupported for a store that keeps no feed."""
        self._check_supported()
        self._read_head()
        with self.lock:
            return FeedPosition(self.life, self.head)

    def restart_after_gone(self) -> FeedPosition | None:
        """Where a client whose position is gone (ResumeGone at request time) starts again:
        the store's head, read now (where the request's reads run), for the position may be
        gone because the store has a new life the hub has not heard of yet; the hub's head if
        the store cannot be read; None if it never could."""
        with contextlib.suppress(StoreError):
            self._read_head()
        with self.lock:
            return FeedPosition(self.life, self.head) if self.life else None

    def _check_supported(self) -> None:
        if self.unsupported is not None:
            raise self.unsupported

    def _read_head(self) -> None:
        """Read the store's head; one of another life, or behind the head as of before the
        read (acknowledged writes lost), is the hub's from now on, and ends every watcher
        whose position it can no longer serve ("gone")."""
        with self.lock:
            interruptions, head_before = self._interruptions, self.head
        fresh = self.store.feed_head()
        with self.lock:
            if interruptions == self._interruptions:
                self._head_stale = False
            if not self.life:
                self.life, self.head = fresh.life, max(self.head, fresh.revision)
            elif fresh.life != self.life or fresh.revision < head_before:
                logger.warning(
                    "The change feed's store is at %s, the hub was at %s: watchers of the old "
                    "position start again.",
                    fresh.token,
                    FeedPosition(self.life, head_before).token,
                )
                self.life, self.head = fresh.life, fresh.revision
                for watcher in list(self._watchers):
                    if watcher.life != fresh.life:
                        self._end(watcher, "gone", str(ResumeGone.of_another_life()))
                    elif watcher.queued_through > fresh.revision:
                        self._end(
                            watcher,
                            "gone",
                            str(ResumeGone.ahead(watcher.queued_through, fresh.revision)),
                        )
            # Else the hub's head stays the newest told: the store's may be past changes it
            # has not told yet (see The head).

    def subscribe(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Call `listener` with every change from now on, in order, on the store's thread
        (it must not block); returns what unsubscribes it. Raises FeedUnsupported for a
        store that keeps no feed: no change would ever be told."""
        self._check_supported()
        with self.lock:
            self._subscribers = [*self._subscribers, listener]

        def unsubscribe() -> None:
            with self.lock:
                self._subscribers = [other for other in self._subscribers if other is not listener]

        return unsubscribe

    def figures(self) -> FeedFigures:
        """The feed's figures now, for the metrics."""
        with self.lock:
            watchers: dict[str, int] = {}
            for watcher in self._watchers:
                watchers[watcher.kind] = watchers.get(watcher.kind, 0) + 1
            return FeedFigures(
                watchers,
                self._events_sent,
                self._bookmarks_sent,
                dict(self._ended),
                self._refusals,
            )

    def close(self) -> None:
        """The server drains: every watcher ends ("stopping") and is woken; no more open."""
        with self.lock:
            self._closed = True
            for watcher in list(self._watchers):
                self._end(watcher, "stopping", "The server is stopping: resume from your last id.")
            self._timer_wakes.notify()
        self._readers.shutdown(wait=False, cancel_futures=True)

    # -- the store's calls (ChangeListener) ---------------------------------------------------

    def changed(self, change: Change) -> None:
        """Queue `change` for every watcher that follows it; tell the subscribers. On the
        store's thread, often inside its lock: nothing here blocks or calls the store. A bug
        here must not fail the store's write, nor lose the change silently: it is logged,
        and every watcher catches up from the store."""
        subscribers = self._subscribers
        try:
            with self.lock:
                self.head = max(self.head, change.revision)
                # Copies: a watcher the change ends (its queue overflows) leaves these sets.
                for watcher in tuple(self._by_key.get(change.key, ())):
                    self._offer(watcher, change)
                for watcher in tuple(self._by_prefix):
                    if watcher.selector.matches(change.key):
                        self._offer(watcher, change)
        except Exception:
            logger.exception("the change feed failed to take revision %d", change.revision)
            self.interrupted()
        for listener in subscribers:
            try:
                listener(change)
            except Exception:  # fire and forget: one subscriber's bug is not the others'
                logger.exception("a change feed subscriber failed on revision %d", change.revision)

    def interrupted(self) -> None:
        """Changes may have gone untold: every watcher catches up from the store, and the
        store's head is read again (its life may have changed: see Lives)."""
        with self.lock:
            self._interruptions += 1
            self._head_stale = True
            if not self._closed:
                self._readers.submit(self._read_head_after_interruption)
            for watcher in list(self._watchers):
                if watcher.ended is not None:
                    continue
                if watcher.reading:
                    watcher.live_lost = True  # the page being read may predate them
                elif not watcher.behind:
                    watcher.behind = True
                    watcher.live.clear()
                self._read_if_due(watcher)

    # -- the hub's own work, under its lock ------------------------------------------------

    @property
    def _page_changes(self) -> int:
        return min(FEED_PAGE_CHANGES, self.settings.queue_changes)

    def _register(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)
        key = watcher.selector.key
        if key is not None:
            self._by_key.setdefault(key, set()).add(watcher)
        else:
            self._by_prefix.add(watcher)
        self._schedule_bookmark(watcher, watcher.last_sent + watcher.bookmark_interval_s)

    def forget(self, watcher: Watcher) -> None:
        """Let go of `watcher` (its client has gone); idempotent."""
        with self.lock:
            watcher.closed = True
            watcher.queue.clear()
            watcher.live.clear()
            self._unregister(watcher)

    def _unregister(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        key = watcher.selector.key
        if key is not None:
            followers = self._by_key.get(key)
            if followers is not None:
                followers.discard(watcher)
                if not followers:
                    del self._by_key[key]
        else:
            self._by_prefix.discard(watcher)

    def _offer(self, watcher: Watcher, change: Change) -> None:
        if watcher.ended is not None:
            return
        if watcher.behind:
            if len(watcher.live) >= self.settings.queue_changes:
                watcher.live.clear()
                watcher.live_lost = True
            else:
                watcher.live.append(change)
            return
        self._queue(watcher, change)
        if len(watcher.queue) > self.settings.queue_changes:
            self._end(
                watcher,
                "slow",
                f"More than {self.settings.queue_changes} changes were waiting for this client: "
                "resume from your last id.",
            )
        else:
            self._notify(watcher)

    def _queue(self, watcher: Watcher, change: Change) -> None:
        if change.revision > watcher.queued_through:
            watcher.queue.append(change)
            watcher.queued_through = change.revision

    def _notify(self, watcher: Watcher) -> None:
        if watcher.armed:
            watcher.armed = False
            watcher.wake()

    def _end(self, watcher: Watcher, reason: str, detail: str) -> None:
        if watcher.ended is not None:
            return
        restart = FeedPosition(self.life, self.head) if reason == "gone" else None
        watcher.ended = Ended(reason, detail, restart)
        watcher.queue.clear()
        watcher.live.clear()
        self._ended[reason] += 1
        self._unregister(watcher)
        watcher.armed = False
        watcher.wake()

    def take(self, watcher: Watcher, limit: int) -> WatcherOutput:
        """`Watcher.take`."""
        now = self.clock()
        with self.lock:
            if watcher.ended is not None:
                return watcher.ended
            queue = watcher.queue
            if queue:
                changes = [queue.popleft() for _ in range(min(limit, len(queue)))]
                watcher.taken = FeedPosition(watcher.life, changes[-1].revision)
                watcher.last_sent = now
                self._events_sent += len(changes)
                self._read_if_due(watcher)
                return changes
            self._read_if_due(watcher)
            if now - watcher.last_sent >= watcher.bookmark_interval_s:
                watcher.last_sent = now
                self._bookmarks_sent += 1
                watcher.taken = self.position_of(watcher)
                return watcher.taken
            watcher.armed = True
            return None

    def position_of(self, watcher: Watcher) -> FeedPosition:
        """Where `watcher`'s client resumes from: when it is live and has taken all it was
        queued, after every change the store told (the head) and every one its own pages
        showed; else after the last change it took. Under the lock."""
        if watcher.behind or watcher.queue or watcher.ended is not None:
            return watcher.taken
        if watcher.life != self.life:  # the hub has just taken a new life: it ends "gone"
            return watcher.taken
        return FeedPosition(watcher.life, max(watcher.queued_through, self.head))

    # -- catching up ----------------------------------------------------------------------

    def _read_if_due(self, watcher: Watcher) -> None:
        """Read the next page for a watcher that is behind, once its queue is empty."""
        if watcher.behind and not watcher.reading and not watcher.queue and not self._closed:
            watcher.reading = True
            after = FeedPosition(watcher.life, watcher.queued_through)
            self._readers.submit(self._read_next, watcher, after)

    def _read_head_after_interruption(self) -> None:
        """On a catch-up thread: the store's head, as `interrupted()` asks."""
        if self._head_stale:
            with contextlib.suppress(StoreError):  # away: read again at the next one
                self._read_head()

    def _read_next(self, watcher: Watcher, after: FeedPosition) -> None:
        """On a catch-up thread: the next page for `watcher` (none once it has ended: an
        outage may have ended it while its read waited its turn)."""
        with self.lock:
            if watcher.ended is not None or watcher.closed:
                watcher.reading = False
                return
        try:
            page = self.store.changes(watcher.selector, after, self._page_changes)
        except ResumeGone as error:
            if self._head_stale:  # of another life? Then the restart is of the new one
                with contextlib.suppress(StoreError):
                    self._read_head()
            with self.lock:
                self._end(watcher, "gone", str(error))
            return
        except StoreError as error:
            with self.lock:
                # The store is away: every watcher behind would fail the same way, each after
                # the store's timeout, in turn; all are told now (see Outages).
                detail = f"{error} Resume from your last id."
                self._end(watcher, "unavailable", detail)
                for other in list(self._watchers):
                    if other.behind:
                        self._end(other, "unavailable", detail)
            return
        except Exception:
            logger.exception("reading the change feed failed")
            with self.lock:
                self._end(watcher, "unavailable", "The feed could not be read; it logged why.")
            return
        self._read(watcher, page)

    def _read(self, watcher: Watcher, page: ChangePage) -> None:
        """Queue a page read for `watcher`, then what was told meanwhile (deduped); it is
        caught up if the page reached the head and nothing told meanwhile was dropped."""
        with self.lock:
            watcher.reading = False
            if watcher.ended is not None or watcher.closed:
                return
            for change in page.changes:
                self._queue(watcher, change)
            # Only this watcher's: the page may show changes not yet told (see The head).
            watcher.queued_through = max(watcher.queued_through, page.position.revision)
            if page.caught_up and not watcher.live_lost:
                watcher.behind = False
                for change in watcher.live:
                    self._queue(watcher, change)
            else:
                # What was told so far was applied before the next read begins: it has it.
                watcher.live_lost = False
            watcher.live.clear()
            self._notify(watcher)
            self._read_if_due(watcher)

    # -- bookmarks ------------------------------------------------------------------------

    def _schedule_bookmark(self, watcher: Watcher, due: float) -> None:
        earliest = self._due[0][0] if self._due else None
        heapq.heappush(self._due, (due, next(self._sequence), watcher))
        if earliest is None or due < earliest:
            self._timer_wakes.notify()

    def _bookmarks(self) -> None:
        """The timer thread: wake each watcher whose bookmark is due (its `take` makes it)."""
        with self.lock:
            while not self._closed:
                now = self.clock()
                while self._due and self._due[0][0] <= now:
                    _, _, watcher = heapq.heappop(self._due)
                    if watcher.ended is not None or watcher.closed:
                        continue
                    due = watcher.last_sent + watcher.bookmark_interval_s
                    if due <= now:
                        self._notify(watcher)
                        due = now + watcher.bookmark_interval_s
                    heapq.heappush(self._due, (due, next(self._sequence), watcher))
                timeout = self._due[0][0] - now if self._due else None
                self._timer_wakes.wait(timeout)
