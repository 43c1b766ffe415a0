"""Hand-written `KVClient` fakes: one correct kvservice in memory, and broken ones.

`InMemoryKV` keeps every promise of the kvservice contract, keys that expire by the wall
clock included, and the change feed (`FakeWatch`, and the long-poll in `history`). Each
broken fake breaks exactly one, named in its docstring, so a check that passes the correct
fake and fails the broken one is shown to test that promise. At the end, loopback endpoints
for transport tests: any WSGI app served on a free port, a port nobody listens on, and one
that never answers.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from kvservice.http.server import Server
from testclient.clients import (
    Capability,
    ChangeType,
    Credentials,
    FeedChange,
    FeedEvent,
    HistoryEntry,
    HistoryReply,
    KeysReply,
    KVClient,
    KVRefused,
    KVUnreachable,
    Outcome,
    Reply,
    UnopenedWatch,
    Watch,
)
from tests.support.servers import http_settings
from tests.support.tokens import READ_TOKEN, WRITE_TOKEN

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.ASCII)


@dataclass(frozen=True)
class StoredValue:
    """A key's current value as the fake holds it."""

    data: bytes
    content_type: str | None
    version: str


class InMemoryKV:
    """A correct kvservice behind the `KVClient` protocol; thread-safe like the real one."""

    key_pattern = re.compile(r"[A-Za-z0-9]{1,255}")
    max_value_bytes = 1024
    capabilities = frozenset(Capability)
    credentials = Credentials()
    """A kvservice without tokens: the client knows none, and needs none."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._values: dict[str, StoredValue] = {}
        self._history: dict[str, list[HistoryEntry]] = {}  # oldest first
        self._writes = 0
        self._last_ms = 0
        self._deadlines: dict[str, int] = {}
        self._life = secrets.token_hex(4)
        self._feed: list[FeedChange] = []  # oldest first; a change's revision is its index + 1
        self._changed = threading.Condition(self._lock)

    watch_class: type[FakeWatch]  # set below, once FakeWatch is defined

    # -- the protocol ------------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: bytes,
        *,
        content_type: str | None = None,
        only_if_version: str | None = None,
        only_if_absent: bool = False,
        ttl_ms: int | None = None,
    ) -> Reply:
        refusal = self._refusal(key, value, content_type)
        if refusal is not None:
            return refusal
        with self._lock:
            self._expire_due()
            if not self._holds(self._values.get(key), only_if_version, only_if_absent):
                return Reply(Outcome.PRECONDITION_FAILED)
            version = self._write(key, value, content_type)
            self._set_deadline(key, None if ttl_ms is None else self._last_ms + ttl_ms)
            return Reply(Outcome.STORED, version=version)

    def create(self, key: str, value: bytes, *, content_type: str | None = None) -> Reply:
        refusal = self._refusal(key, value, content_type)
        if refusal is not None:
            return refusal
        with self._lock:
            self._expire_due()
            if key in self._values:
                return Reply(Outcome.ALREADY_EXISTS)
            self._set_deadline(key, None)
            return Reply(Outcome.CREATED, version=self._write(key, value, content_type))

    def get(self, key: str) -> Reply:
        if not self.key_pattern.fullmatch(key):
            return Reply(Outcome.INVALID)
        with self._lock:
            self._expire_due()
            current = self._values.get(key)
        if current is None:
            return Reply(Outcome.NOT_FOUND)
        return Reply(
            Outcome.FOUND,
            value=current.data,
            content_type=current.content_type or DEFAULT_CONTENT_TYPE,
            version=current.version,
        )

    def delete(self, key: str, *, only_if_version: str | None = None) -> Reply:
        if not self.key_pattern.fullmatch(key):
            return Reply(Outcome.INVALID)
        with self._lock:
            self._expire_due()
            current = self._values.get(key)
            if current is None:
                return Reply(Outcome.NOT_FOUND)
            if not self._holds(current, only_if_version, only_if_absent=False):
                return Reply(Outcome.PRECONDITION_FAILED)
            self._erase(key)
            self._deadlines.pop(key, None)
        return Reply(Outcome.DELETED)

    def expiry(self, key: str) -> Reply:
        if not self.key_pattern.fullmatch(key):
            return Reply(Outcome.INVALID)
        with self._lock:
            self._expire_due()
            if key not in self._values:
                return Reply(Outcome.NOT_FOUND)
            return Reply(Outcome.FOUND, expires_at_ms=self._deadlines.get(key))

    def history(
        self, key: str, *, after: str | None = None, wait_ms: int | None = None
    ) -> HistoryReply:
        if not self.key_pattern.fullmatch(key):
            return HistoryReply(Outcome.INVALID)
        if after is not None or wait_ms is not None:
            return self._long_poll(key, after, wait_ms)
        with self._lock:
            self._expire_due()
            oldest_first = list(self._history.get(key, ()))
            head = self._token(len(self._feed))
        return HistoryReply(Outcome.FOUND, tuple(reversed(oldest_first)), position=head)

    def watch(
        self, *, key: str | None = None, prefix: str | None = None, resume: str | None = None
    ) -> Watch:
        if (key is not None and prefix is not None) or not all(
            re.fullmatch(r"[A-Za-z0-9]{0,255}", text or "") for text in (key, prefix)
        ):
            return UnopenedWatch(Outcome.INVALID)
        with self._lock:
            self._expire_due()
            after = self._resume_revision(resume)
            if isinstance(after, Reply):
                return UnopenedWatch(after.outcome, restart_position=after.version)

            def matches(changed: str) -> bool:
                return changed == key if key is not None else changed.startswith(prefix or "")

            return self.watch_class(self, matches, after)

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        if not re.fullmatch(r"[A-Za-z0-9]{0,255}", prefix):
            return KeysReply(Outcome.INVALID)
        with self._lock:
            self._expire_due()
            matching = sorted(key for key in self._listed() if key.startswith(prefix))
        after = [key for key in matching if page is None or key > page]
        return self._page(after, limit)

    def identify(self) -> str | None:
        return None

    def with_token(self, token: str | None) -> KVClient:
        return self  # without tokens, any token (or none) is served alike

    def close(self) -> None:
        pass

    # -- for tests ---------------------------------------------------------------------------

    def live_keys(self) -> list[str]:
        """Keys that currently hold a value."""
        with self._lock:
            return sorted(self._values)

    # -- the change feed ---------------------------------------------------------------------

    def _token(self, revision: int) -> str:
        return f"{self._life}-{revision}"

    def _resume_revision(self, token: str | None) -> int | Reply:
        """The revision a watch or a long-poll starts after: the head without a token; a
        Reply when the token is refused (INVALID, or GONE with the head's token as the
        version: where to start again)."""
        head = len(self._feed)
        if token is None:
            return head
        life, _, revision = token.rpartition("-")
        if not life or not revision.isdigit():
            return Reply(Outcome.INVALID)
        if life != self._life or int(revision) > head:
            return Reply(Outcome.GONE, version=self._token(head))
        return int(revision)

    def _long_poll(self, key: str, after: str | None, wait_ms: int | None) -> HistoryReply:
        deadline = time.monotonic() + (wait_ms or 0) / 1000
        with self._changed:
            self._expire_due()
            start = self._resume_revision(after)
            if isinstance(start, Reply):
                return HistoryReply(start.outcome, position=start.version)
            while True:
                found = [
                    (revision, change)
                    for revision, change in enumerate(self._feed[start:], start + 1)
                    if change.key == key
                ]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    break
                self._changed.wait(remaining)
            position = self._token(found[-1][0] if found else len(self._feed))
        entries = tuple(
            HistoryEntry(change.value, change.timestamp_ms, change.type is ChangeType.EXPIRED)
            for _, change in reversed(found)
        )
        return HistoryReply(Outcome.FOUND, entries, position=position)

    def _publish(self, change: FeedChange) -> None:
        """Append a change to the feed and wake its watchers (the lock is held)."""
        self._feed.append(change)
        self._changed.notify_all()

    # -- the parts broken fakes override -----------------------------------------------------

    def _listed(self) -> list[str]:
        return list(self._values)

    def _page(self, keys: list[str], limit: int) -> KeysReply:
        """The first `limit` of `keys` and the token of the page after them."""
        more = len(keys) > limit
        return KeysReply(Outcome.FOUND, tuple(keys[:limit]), keys[limit - 1] if more else None)

    def _refusal(self, key: str, value: bytes, content_type: str | None) -> Reply | None:
        if not self.key_pattern.fullmatch(key):
            return Reply(Outcome.INVALID)
        if len(value) > self.max_value_bytes:
            return Reply(Outcome.TOO_LARGE)
        if content_type and _is_json(content_type):
            try:
                json.loads(value.decode("utf-8"))
            except ValueError:
                return Reply(Outcome.INVALID)
        return None

    def _holds(
        self, current: StoredValue | None, only_if_version: str | None, only_if_absent: bool
    ) -> bool:
        if only_if_version is not None and (current is None or current.version != only_if_version):
            return False
        return not (only_if_absent and current is not None)

    def _write(self, key: str, value: bytes, content_type: str | None) -> str:
        self._writes += 1
        version = self._new_version(key)
        self._values[key] = StoredValue(value, content_type, version)
        self._record(key, value, version)
        return version

    def _new_version(self, key: str) -> str:
        return f'"{self._writes}"'

    def _erase(self, key: str) -> None:
        del self._values[key]
        self._record(key, None)

    def _record(self, key: str, value: bytes | None, version: str | None = None) -> None:
        self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)
        timestamp_ms = self._timestamp_ms()
        self._history.setdefault(key, []).append(HistoryEntry(value, timestamp_ms))
        change_type = ChangeType.DELETE if value is None else ChangeType.PUT
        self._publish(FeedChange(key, value, timestamp_ms, version, change_type))

    def _timestamp_ms(self) -> int:
        return self._last_ms

    def _set_deadline(self, key: str, deadline_ms: int | None) -> None:
        """What a write does to the key's deadline: sets it, or (a plain write) removes it."""
        if deadline_ms is None:
            self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = deadline_ms

    def _expire_due(self) -> None:
        """Remove every key whose deadline has passed, recording each expiry at its
        deadline. (A fake: it looks at every key with a deadline, on every call.)"""
        now_ms = time.time_ns() // 1_000_000
        for key, deadline_ms in list(self._deadlines.items()):
            if now_ms >= self._removed_at_ms(deadline_ms):
                del self._deadlines[key]
                del self._values[key]
                self._record_expiry(key, deadline_ms)

    def _removed_at_ms(self, deadline_ms: int) -> int:
        return deadline_ms

    def _record_expiry(self, key: str, deadline_ms: int) -> None:
        self._history[key].append(HistoryEntry(None, deadline_ms, expired=True))
        self._publish(FeedChange(key, None, deadline_ms, None, ChangeType.EXPIRED))


class FakeWatch:
    """A correct watch of an `InMemoryKV`: a bookmark at its starting position, then each
    matching change after it, in order, once. The broken watches below override `_emit`."""

    outcome = Outcome.WATCHING
    evidence = ""
    request_id = None
    restart_position = None

    def __init__(self, kv: InMemoryKV, matches: Callable[[str], bool], after: int) -> None:
        self.ended: str | None = None
        self._kv = kv
        self._matches = matches
        self._after = after  # the revision of the last change looked at
        self._ready: deque[FeedEvent] = deque([FeedEvent(kv._token(after))])
        self._emitted = 0  # changes handed to _emit so far

    def next_event(self, timeout_s: float) -> FeedEvent | None:
        deadline = time.monotonic() + timeout_s
        with self._kv._changed:
            while not self._ready and self.ended is None:
                self._take_new_changes()
                remaining = deadline - time.monotonic()
                if self._ready or remaining <= 0:
                    break
                self._kv._changed.wait(remaining)
        if not self._ready and self.ended is None:
            self.ended = f"no event within {timeout_s:g} s"
        return self._ready.popleft() if self._ready and self.ended is None else None

    def _take_new_changes(self) -> None:
        feed = self._kv._feed
        for revision, change in enumerate(feed[self._after :], self._after + 1):
            if self._matches(change.key):
                self._emit(self._emitted, FeedEvent(self._kv._token(revision), change))
                self._emitted += 1
        self._after = len(feed)

    def _emit(self, number: int, event: FeedEvent) -> None:
        """Hand out `event`, the watch's change number `number` (from 0)."""
        self._ready.append(event)

    def close(self) -> None:
        self.ended = self.ended or "closed by the client"

    def __str__(self) -> str:
        return self.outcome.value

    def __enter__(self) -> FakeWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


InMemoryKV.watch_class = FakeWatch


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return _JSON_MEDIA_TYPE.fullmatch(media_type) is not None


# -- broken fakes: each breaks one promise --------------------------------------------------


class DeleteIgnoredKV(InMemoryKV):
    """Answers every delete with 'deleted' and does nothing."""

    def delete(self, key: str, *, only_if_version: str | None = None) -> Reply:
        return Reply(Outcome.DELETED, evidence="HTTP 204 No Content")


class DeleteStillServedKV(InMemoryKV):
    """Applies deletes, but reads come from a cache that deletes do not invalidate."""

    def __init__(self) -> None:
        super().__init__()
        self._read_cache: dict[str, Reply] = {}

    def get(self, key: str) -> Reply:
        reply = super().get(key)
        if reply.outcome is Outcome.FOUND:
            self._read_cache[key] = reply
        elif reply.outcome is Outcome.NOT_FOUND and key in self._read_cache and self._deleted(key):
            return self._read_cache[key]
        return reply

    def _deleted(self, key: str) -> bool:
        """Whether the key's newest entry is a delete (expiries do reach the cache)."""
        with self._lock:
            newest = self._history[key][-1]
        return newest.value is None and not newest.expired


class GetAfterDeleteFailsKV(InMemoryKV):
    """Reading a key whose value was deleted fails with a server error instead of 'not found'."""

    def get(self, key: str) -> Reply:
        reply = super().get(key)
        if reply.outcome is Outcome.NOT_FOUND and self._history.get(key):
            return Reply(Outcome.UNEXPECTED, evidence="HTTP 500 Internal Server Error: boom")
        return reply


class HistoryMissingDeleteKV(InMemoryKV):
    """Deletes drop the value but write no history entry."""

    def _erase(self, key: str) -> None:
        del self._values[key]


class HistoryOutOfOrderKV(InMemoryKV):
    """History lists entries oldest first."""

    def history(self, key: str, **options: Any) -> HistoryReply:
        reply = super().history(key, **options)
        return HistoryReply(reply.outcome, tuple(reversed(reply.entries)), reply.evidence)


class OverwriteIgnoredKV(InMemoryKV):
    """Acknowledges writes to a key that holds a value, but keeps the first value."""

    def _write(self, key: str, value: bytes, content_type: str | None) -> str:
        current = self._values.get(key)
        if current is not None:
            return current.version
        return super()._write(key, value, content_type)


class StaleReadKV(InMemoryKV):
    """Reads serve the value of the write before the newest one (a lagging replica)."""

    def get(self, key: str) -> Reply:
        reply = super().get(key)
        with self._lock:
            writes = self._history.get(key, [])
            previous = writes[-2].value if len(writes) >= 2 else None
        if reply.outcome is not Outcome.FOUND or previous is None:
            return reply
        return Reply(Outcome.FOUND, previous, reply.content_type, reply.version)


class PerThreadCacheKV(InMemoryKV):
    """Each thread reads its own last write of a key, unaware of other threads' writes."""

    def __init__(self) -> None:
        super().__init__()
        self._own_writes = threading.local()

    def put(self, key: str, value: bytes, **options: Any) -> Reply:
        reply = super().put(key, value, **options)
        if reply.outcome is Outcome.STORED:
            self._cache()[key] = super().get(key)
        return reply

    def get(self, key: str) -> Reply:
        return self._cache().get(key) or super().get(key)

    def _cache(self) -> dict[str, Reply]:
        if not hasattr(self._own_writes, "replies"):
            self._own_writes.replies = {}
        cache: dict[str, Reply] = self._own_writes.replies
        return cache


class HistoryTruncatedKV(InMemoryKV):
    """History keeps only a key's newest 25 writes, however recent the older ones are."""

    def history(self, key: str, **options: Any) -> HistoryReply:
        reply = super().history(key, **options)
        return HistoryReply(reply.outcome, reply.entries[:25], reply.evidence)


class SecondsTimestampsKV(InMemoryKV):
    """History timestamps are Unix epoch seconds, not milliseconds."""

    def _timestamp_ms(self) -> int:
        return self._last_ms // 1000


class CreateOverwritesKV(InMemoryKV):
    """Create-only writes overwrite an existing value and answer 'created'."""

    def create(self, key: str, value: bytes, *, content_type: str | None = None) -> Reply:
        reply = super().put(key, value, content_type=content_type)
        return Reply(Outcome.CREATED, version=reply.version) if reply.version else reply


class PreconditionIgnoredKV(InMemoryKV):
    """Ignores version and absence conditions: every write and delete goes through."""

    def _holds(
        self, current: StoredValue | None, only_if_version: str | None, only_if_absent: bool
    ) -> bool:
        return True


class VersionUnchangedKV(InMemoryKV):
    """Gives a key the same version on every write, so conditions cannot tell writes apart."""

    def _new_version(self, key: str) -> str:
        return '"1"'


class KeyUnvalidatedKV(InMemoryKV):
    """Accepts any non-empty key."""

    key_pattern = re.compile(r".+", re.DOTALL)


class OversizeAcceptedKV(InMemoryKV):
    """Accepts values of any size."""

    max_value_bytes = 1 << 30


class JSONUnvalidatedKV(InMemoryKV):
    """Stores malformed JSON declared as application/json."""

    def _refusal(self, key: str, value: bytes, content_type: str | None) -> Reply | None:
        return super()._refusal(key, value, None)


class BinaryGarbledKV(InMemoryKV):
    """Stores values as text: bytes that are not UTF-8 are replaced."""

    def _write(self, key: str, value: bytes, content_type: str | None) -> str:
        text = value.decode("utf-8", errors="replace").encode("utf-8")
        return super()._write(key, text, content_type)


class ContentTypeDroppedKV(InMemoryKV):
    """Serves every value as application/octet-stream, whatever type it was written with."""

    def get(self, key: str) -> Reply:
        reply = super().get(key)
        if reply.outcome is not Outcome.FOUND:
            return reply
        return Reply(Outcome.FOUND, reply.value, DEFAULT_CONTENT_TYPE, reply.version)


class ExpiresLateKV(InMemoryKV):
    """Reports the right deadline, but serves the key for a second after it."""

    def _removed_at_ms(self, deadline_ms: int) -> int:
        return deadline_ms + 1000


class NeverExpiresKV(InMemoryKV):
    """Reports the deadline a write asked for, and never removes the key."""

    def _removed_at_ms(self, deadline_ms: int) -> int:
        return 2**62


class ExpiryUnrecordedKV(InMemoryKV):
    """Removes a key at its deadline, but writes no history entry for it."""

    def _record_expiry(self, key: str, deadline_ms: int) -> None:
        pass


class ExpiryAsDeleteKV(InMemoryKV):
    """Records an expiry in the history as if the key had been deleted."""

    def _record_expiry(self, key: str, deadline_ms: int) -> None:
        self._history[key].append(HistoryEntry(None, deadline_ms))


class OverwriteKeepsTTLKV(InMemoryKV):
    """A plain write keeps the deadline the key had (as if every write were KEEPTTL)."""

    def _set_deadline(self, key: str, deadline_ms: int | None) -> None:
        if deadline_ms is not None:
            super()._set_deadline(key, deadline_ms)


HTML_PAYLOAD = b"<script>pwned=1</script><img src=x onerror=pwned=2>"
"""Markup a page that shows a value as HTML would run: the <img>'s onerror sets `pwned`."""


class ServesHTMLKV(InMemoryKV):
    """Reads of a key holding a value serve HTML_PAYLOAD instead (markup from the service
    under test, which anything showing it must show as text)."""

    def get(self, key: str) -> Reply:
        reply = super().get(key)
        if reply.outcome is not Outcome.FOUND:
            return reply
        return Reply(Outcome.FOUND, HTML_PAYLOAD, "text/html", reply.version)


class DropsAChangeWatch(FakeWatch):
    """Never hands out its second change."""

    def _emit(self, number: int, event: FeedEvent) -> None:
        if number != 1:
            super()._emit(number, event)


class DuplicatesAChangeWatch(FakeWatch):
    """Hands out its second change twice."""

    def _emit(self, number: int, event: FeedEvent) -> None:
        super()._emit(number, event)
        if number == 1:
            super()._emit(number, event)


class ReordersTwoChangesWatch(FakeWatch):
    """Hands out its second change after its third."""

    def __init__(self, kv: InMemoryKV, matches: Callable[[str], bool], after: int) -> None:
        super().__init__(kv, matches, after)
        self._held: FeedEvent | None = None

    def _emit(self, number: int, event: FeedEvent) -> None:
        if number == 1:
            self._held = event
            return
        super()._emit(number, event)
        if number == 2 and self._held is not None:
            super()._emit(1, self._held)


class FeedDropsAChangeKV(InMemoryKV):
    """A watch loses one change: the second it has for its watcher."""

    watch_class = DropsAChangeWatch


class FeedDuplicatesAChangeKV(InMemoryKV):
    """A watch hands out one change twice: the second it has for its watcher."""

    watch_class = DuplicatesAChangeWatch


class FeedReordersTwoChangesKV(InMemoryKV):
    """A watch hands out its second and third changes the wrong way round."""

    watch_class = ReordersTwoChangesWatch


class FeedResumesFromStartKV(InMemoryKV):
    """A watch (or a long-poll) asked to resume from a position (Last-Event-ID, after=)
    replays the whole feed instead, as a server that ignores the token and starts from its
    oldest change."""

    def _resume_revision(self, token: str | None) -> int | Reply:
        return 0 if token is not None else super()._resume_revision(token)


# -- not a kvservice at all -----------------------------------------------------------------


class ListsDeletedKeysKV(InMemoryKV):
    """Listing still shows keys that were deleted (a stale index)."""

    def __init__(self) -> None:
        super().__init__()
        self._ever_written: set[str] = set()

    def _write(self, key: str, value: bytes, content_type: str | None) -> str:
        self._ever_written.add(key)
        return super()._write(key, value, content_type)

    def _listed(self) -> list[str]:
        return list(self._ever_written)


class PageRepeatsItsStartKV(InMemoryKV):
    """Each following page starts at the key the last one ended with: `after` taken as >=."""

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        with self._lock:
            matching = sorted(key for key in self._values if key.startswith(prefix))
        return self._page([key for key in matching if page is None or key >= page], limit)


class PageSkipsAKeyKV(InMemoryKV):
    """The token of the next page is one key too far: a key at each page boundary is lost."""

    def _page(self, keys: list[str], limit: int) -> KeysReply:
        more = len(keys) > limit
        return KeysReply(Outcome.FOUND, tuple(keys[:limit]), keys[limit] if more else None)


class ListingNeverEndsKV(InMemoryKV):
    """Every page says more is to come, even the one past the last key."""

    def _page(self, keys: list[str], limit: int) -> KeysReply:
        return KeysReply(Outcome.FOUND, tuple(keys[:limit]), keys[-1] if keys else "zzzz")


class UnreachableKV(InMemoryKV):
    """Every operation fails like a refused connection."""

    def __init__(self, reason: str = "no connection: [Errno 111] Connection refused") -> None:
        super().__init__()
        self.reason = reason

    def put(self, key: str, value: bytes, **options: Any) -> Reply:
        raise KVUnreachable(f"PUT /{key}: {self.reason}")

    def create(self, key: str, value: bytes, **options: Any) -> Reply:
        raise KVUnreachable(f"POST /{key}: {self.reason}")

    def get(self, key: str) -> Reply:
        raise KVUnreachable(f"GET /{key}: {self.reason}")

    def delete(self, key: str, **options: Any) -> Reply:
        raise KVUnreachable(f"DELETE /{key}: {self.reason}")

    def expiry(self, key: str) -> Reply:
        raise KVUnreachable(f"HEAD /{key}: {self.reason}")

    def history(self, key: str, **options: Any) -> HistoryReply:
        raise KVUnreachable(f"GET /{key}/history: {self.reason}")

    def watch(self, **options: Any) -> Watch:
        raise KVUnreachable(f"GET /_watch: {self.reason}")

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        raise KVUnreachable(f"GET /_keys?prefix={prefix}: {self.reason}")

    def identify(self) -> str | None:
        raise KVUnreachable(f"GET /_health: {self.reason}")


class TokensKV:
    """A correct kvservice with a write and a read token, seen through one of them (or none):
    no token or an unknown one is refused, a read token reads but cannot write."""

    capabilities = frozenset(Capability)
    access_of: ClassVar[dict[str, int]] = {WRITE_TOKEN: 2, READ_TOKEN: 1}
    """What each token may do: 2 read and write, 1 read; missing: nothing."""

    def __init__(self, token: str | None = WRITE_TOKEN, backend: InMemoryKV | None = None):
        self.token = token
        self.backend = backend or InMemoryKV()

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.token, READ_TOKEN)

    def with_token(self, token: str | None) -> KVClient:
        return type(self)(token, self.backend)

    def identify(self) -> str | None:
        return None  # /_health is open to every client, with or without a token

    def _allow(self, needed: int) -> InMemoryKV:
        access = self.access_of.get(self.token or "", 0)
        if access == 0:
            raise KVRefused("HTTP 401 Unauthorized: This service needs a token")
        if access < needed:
            raise KVRefused("HTTP 403 Forbidden: The token may read, not write.")
        return self.backend

    def put(self, key: str, value: bytes, **options: Any) -> Reply:
        return self._allow(2).put(key, value, **options)

    def create(self, key: str, value: bytes, **options: Any) -> Reply:
        return self._allow(2).create(key, value, **options)

    def get(self, key: str) -> Reply:
        return self._allow(1).get(key)

    def delete(self, key: str, **options: Any) -> Reply:
        return self._allow(2).delete(key, **options)

    def expiry(self, key: str) -> Reply:
        return self._allow(1).expiry(key)

    def history(self, key: str, **options: Any) -> HistoryReply:
        return self._allow(1).history(key, **options)

    def watch(self, **options: Any) -> Watch:
        return self._allow(1).watch(**options)

    def list_keys(self, prefix: str, *, limit: int, page: str | None = None) -> KeysReply:
        return self._allow(1).list_keys(prefix, limit=limit, page=page)

    def close(self) -> None:
        pass


class ReadTokenWritesKV(TokensKV):
    """Breaks: a read token may write too."""

    access_of: ClassVar[dict[str, int]] = {WRITE_TOKEN: 2, READ_TOKEN: 2}


class AnonymousServedKV(TokensKV):
    """Breaks: a request without a token is served as if it had the write token."""

    access_of: ClassVar[dict[str, int]] = {WRITE_TOKEN: 2, READ_TOKEN: 1, "": 2}


class ExplodingKV(InMemoryKV):
    """Reads raise an exception no client should raise: a bug, not a kvservice answer."""

    def get(self, key: str) -> Reply:
        raise RuntimeError("a bug in the client")


# -- loopback endpoints ---------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@contextmanager
def serve_wsgi(app: WSGIApp) -> Iterator[str]:
    """Serve `app` with kvservice's server on a free 127.0.0.1 port; yields the base URL."""
    server = Server(app, http_settings(threads=8, socket_timeout_s=2.0))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def silent_url() -> Iterator[str]:
    """A loopback URL that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # the kernel completes handshakes; nobody ever reads
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
