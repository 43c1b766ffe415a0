"""`RedisStore`: the Store contract on Redis or Redis Cluster. Each operation is one command or
one script (`scripts.py`, which also says where deadlines live and how the change feed is
kept) on the server that holds the key (`connection.py`); this module says what every reply
and every failure means to a client. Change listeners are told by a subscriber thread
(`subscriber.py`). On a cluster the feed's methods raise FeedUnsupported."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.exceptions as redis_errors

from kvservice.store.model import (
    DEFAULT_PAGE_KEYS,
    FEED_PAGE_CHANGES,
    MATCH_ANY,
    NO_CONDITION,
    NO_EXPIRY,
    ChangeListener,
    ChangePage,
    Clock,
    ExpireIf,
    Expiry,
    ExpiryChange,
    FeedPosition,
    FeedSelector,
    FeedUnsupported,
    HistoryEntry,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Precondition,
    PreconditionFailed,
    ResumeGone,
    StoreFull,
    StoreMisconfigured,
    StoreStats,
    StoreUnavailable,
    Value,
)
from kvservice.store.redis.connection import LOOKUP, BoundedLookup, Server, Topology, topology
from kvservice.store.redis.scripts import (
    CHANGES,
    COUNT,
    DEADLINES_KEY,
    DELETE,
    EXPIRE,
    FEED_CHANNEL,
    FEED_HEAD,
    FEED_KEY,
    FEED_SCAN_MOST,
    GET,
    HISTORY,
    HISTORY_TTL_MARGIN_MS,
    INDEX_KEY,
    LIFE_KEY,
    LIST,
    LISTING_CHUNK,
    LISTING_EXAMINES,
    PRUNED_KEY,
    REVISION_KEY,
    SWEEP,
    SWEEP_SLOTS_PER_CALL,
    UNEXPIRED,
    WRITE,
    Script,
    change_of,
    deadlines_key,
    history_key,
    key_slot,
    slot_deadlines_key,
    value_key,
)
from kvservice.store.redis.subscriber import FeedSubscriber

logger = logging.getLogger("kvservice.store.redis")

_SCRIPT_COMMANDS = (
    "DEL, EXISTS, GET, HDEL, HGET, HMGET, HSET, INCR, LINDEX, LPOP, LRANGE, PERSIST, PEXPIRE, "
    "PEXPIREAT, PUBLISH, RPUSH, SET, TIME, XADD, XRANGE, XTRIM, ZADD, ZCARD, ZCOUNT, ZRANGE, "
    "ZRANGEBYSCORE, ZREM and ZSCORE"
)
"""What the scripts of `scripts.py` call: Redis's ACLs check those too."""
_SCAN_COUNT = 1000
_FILTER_BATCH = 1000
"""How many scanned keys of a cluster one script checks for a passed deadline."""
_SAFE_POLICIES = ("noeviction",)

FULL_SWEEP_INTERVAL_S = 10.0
"""How often a cluster's sweep visits every slot's deadlines set, rather than only those of
the slots this store knows hold deadlines: the longest a deadline another replica set waits
for this replica's sweep (a read of the key settles it at once, whoever set it)."""

POLICY_RECHECK_S = 1.0
"""How often Redis's maxmemory-policy is checked again while serving: the longest an operator's
switch to an evicting policy goes unnoticed (INFO memory once a second per replica)."""


@dataclass(frozen=True)
class _Verdict:
    """The last check of Redis's eviction policy: when, and the refusal it called for."""

    at: float
    """time.monotonic() of the check."""
    refusal: str | None
    """The StoreMisconfigured message; None: safe to serve."""

    def enforce(self) -> None:
        if self.refusal is not None:
            raise StoreMisconfigured(self.refusal)


class _Effect(Enum):
    """What a command may have done though its reply did not come in time, as a client is
    told: every script on a key, reads too, first settles a deadline that has passed."""

    NONE = "nothing was changed"
    SETTLES = (
        "no value was written, though one past its deadline may have been removed and its "
        "expiry recorded"
    )
    WRITES = (
        "the write may or may not have been applied: read the key to find out before writing "
        "it again"
    )


class RedisStore:
    """The Store contract on Redis or Redis Cluster; safe to share between threads."""

    may_block = True
    reads_may_block = True
    """Every call is a round trip to Redis."""
    copies_on_read = True
    """Every value and key read is a copy of Redis's reply."""
    may_be_unavailable = True
    """Redis may be down, unreachable or silent; calls then raise StoreUnavailable."""

    def __init__(
        self,
        topology: Topology,
        *,
        description: str,
        history_window_ms: int = 120_000,
        max_value_bytes: int = 1024,
        timeout_s: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        """Use `topology`; `clock` None takes the time from Redis (the production choice)."""
        if history_window_ms <= 0 or max_value_bytes < 0:
            raise ValueError("history_window_ms must be positive")
        self.description = description
        self.history_window_ms = history_window_ms
        self.max_value_bytes = max_value_bytes
        self.timeout_s = timeout_s
        self._topology = topology
        self._clock = clock
        self._verdict: _Verdict | None = None
        self._verdict_lock = threading.Lock()  # guards the claim to check, never a network call
        self._checking = False
        self._full_refusals = 0
        self._full_refusals_lock = threading.Lock()
        self._deadline_slots: set[int] = set()
        """Cluster slots this store knows hold deadlines: a hint for the sweep, never the truth."""
        self._full_sweep_due = 0.0
        """time.monotonic() at which the cluster's sweep next visits every slot."""
        self._subscriber: FeedSubscriber | None = None
        self._subscriber_lock = threading.Lock()
        if topology.cluster:
            slot_deadlines_key(0)  # names every slot's set now, not in the first request

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connections: int,
        timeout_s: float = 2.0,
        history_window_ms: int = 120_000,
        max_value_bytes: int = 1024,
        clock: Clock | None = None,
        lookup: BoundedLookup = LOOKUP,
    ) -> RedisStore:
        """A store on `redis://[user:password@]host:port[/db]`, `rediss://...` (TLS), or
        `redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for TLS), with at most
        `connections` connections to each server. Connects lazily: nothing is sent yet."""
        servers, description = topology(url, connections, timeout_s, lookup)
        return cls(
            servers,
            description=description,
            history_window_ms=history_window_ms,
            max_value_bytes=max_value_bytes,
            timeout_s=timeout_s,
            clock=clock,
        )

    def close(self) -> None:
        """Stop telling listeners, and close every connection."""
        with self._subscriber_lock:
            subscriber = self._subscriber
        if subscriber is not None:
            subscriber.close()
        self._topology.close()

    # -- readiness and figures --------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise StoreMisconfigured if a server would evict keys, StoreUnavailable if one
        cannot be reached. The verdict on the eviction policy is remembered for
        POLICY_RECHECK_S, so operations need not ask each time, yet an operator's
        `CONFIG SET maxmemory-policy allkeys-lru` at runtime is noticed within that time."""
        for server in self._topology.primaries():
            info = _info(self._execute(server, ("INFO", "memory"), effect=_Effect.NONE))
            policy = info.get("maxmemory_policy", "")
            if policy not in _SAFE_POLICIES:
                refusal = StoreMisconfigured(
                    f"Redis at {server.address} has maxmemory-policy {policy or 'unknown'}: it "
                    "would evict keys, losing writes kvservice acknowledged. Set "
                    "maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, or in "
                    "redis.conf); Redis then refuses writes at maxmemory, which kvservice "
                    "answers with 507."
                )
                if self._verdict_changed(refusal):
                    logger.error("%s", refusal)
                self._verdict = _Verdict(time.monotonic(), str(refusal))
                raise refusal
        if self._verdict_changed(None):
            logger.info("Redis's maxmemory-policy is noeviction again: serving")
        self._verdict = _Verdict(time.monotonic(), None)

    def stats(self) -> StoreStats:
        """Keys holding a value, Redis's used memory and its maxmemory (0: no limit), summed
        over a cluster's primaries. On a cluster the count scans every key (and checks the
        deadline of each)."""
        self._ensure_checked()
        used = limit = 0
        for server in self._topology.primaries():
            info = _info(self._execute(server, ("INFO", "memory"), effect=_Effect.NONE))
            used += int(info.get("used_memory", 0))
            limit += int(info.get("maxmemory", 0))
        if self._topology.cluster:
            scanned = [
                key for server in self._topology.primaries() for key in self._scan_keys(server, "")
            ]
            count = sum(
                len(self._unexpired(scanned[start : start + _FILTER_BATCH]))
                for start in range(0, len(scanned), _FILTER_BATCH)
            )
        else:
            count = int(
                self._script(
                    COUNT, "", [INDEX_KEY, DEADLINES_KEY], [self._clock_arg()], _Effect.NONE
                )
            )
        return StoreStats(count, used, limit, full_refusals=self._full_refusals)

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        """The key's current value; raises KeyNotFound."""
        self._ensure_checked()
        fields = self._script(
            GET, key, self._keys_of(key), self._key_arguments(key), _Effect.SETTLES
        )
        value = _value(fields)
        if value is None:
            raise KeyNotFound.of(key)
        return value

    def history(self, key: str) -> list[HistoryEntry]:
        """Every write to the key inside the history window, newest first; [] if none."""
        self._ensure_checked()
        entries = self._script(
            HISTORY, key, self._keys_of(key), self._key_arguments(key), _Effect.SETTLES
        )
        return [_history_entry(entry) for entry in entries]

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = DEFAULT_PAGE_KEYS
    ) -> KeyPage:
        """Up to `limit` keys holding a value that start with `prefix`, in lexicographic
        order, strictly after `after`, none of them past its deadline. A single Redis reads
        its index; a cluster is scanned, and the deadlines of the page's candidates checked.

        Either way a listing examines at most LISTING_EXAMINES keys (or `limit` + 1): one that
        meets more keys past their deadline (not yet swept) comes back short, even empty, with
        `next_after` the last key it examined."""
        self._ensure_checked()
        most = max(limit + 1, LISTING_EXAMINES)
        if self._topology.cluster:
            found, stopped_at = self._unexpired_page(prefix, after, limit, most)
        else:
            low = f"({after}" if after is not None and after >= prefix else f"[{prefix}"
            high = f"[{prefix}\xff" if prefix else "+"
            members, last_examined = self._script(
                LIST,
                "",
                [INDEX_KEY, DEADLINES_KEY],
                [low, high.encode("latin-1"), limit + 1, self._clock_arg(), most],
                _Effect.NONE,
            )
            found = [member.decode() for member in members]
            stopped_at = None if last_examined is None else last_examined.decode()
        if len(found) > limit:
            return KeyPage(found[:limit], found[limit - 1])
        return KeyPage(found, stopped_at)

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value, and its deadline as `expiry` says (by default: none); raises
        PreconditionFailed, StoreFull."""
        return self._write(key, data, content_type, precondition, expiry, create_only=False)

    def create(
        self,
        key: str,
        data: bytes,
        content_type: str | None = None,
        precondition: Precondition = NO_CONDITION,
        expiry: Expiry = NO_EXPIRY,
    ) -> Value:
        """Set the key's value only if it has none; raises KeyExists, and as `put` does."""
        return self._write(key, data, content_type, precondition, expiry, create_only=True)

    def expire(
        self,
        key: str,
        expiry: Expiry,
        when: ExpireIf = ExpireIf.ALWAYS,
        precondition: Precondition = NO_CONDITION,
    ) -> ExpiryChange:
        """As `Store.expire`, in one script (EXPIRE) on Redis's clock."""
        self._ensure_checked()
        arguments = [
            *self._key_arguments(key),
            _expiry_spec(expiry),
            when.value,
            _condition(precondition.if_match),
            _condition(precondition.if_none_match),
        ]
        outcome, *fields = self._script(EXPIRE, key, self._keys_of(key), arguments, _Effect.WRITES)
        if outcome == b"missing":
            raise KeyNotFound.of(key)
        if outcome == b"precondition":
            raise PreconditionFailed.of(key)
        value = _value(fields)
        self._note_deadline(key, None if value is None else value.expires_at_ms)
        return ExpiryChange(outcome != b"skipped", value)

    def sweep_expired(self, limit: int) -> int:
        """Remove up to `limit` keys whose deadline has passed, recording each expiry at its
        deadline, and return how many it removed. It reads the deadline sets only, never a
        key without a deadline: one script on a single Redis; on a cluster one script per
        SWEEP_SLOTS_PER_CALL slots of each primary, until `limit` keys are removed, visiting
        every slot every FULL_SWEEP_INTERVAL_S and otherwise those known to hold deadlines."""
        self._ensure_checked()
        if not self._topology.cluster:
            return int(self._sweep([DEADLINES_KEY], limit, INDEX_KEY)[0])
        every_slot = time.monotonic() >= self._full_sweep_due
        if every_slot:
            self._full_sweep_due = time.monotonic() + FULL_SWEEP_INTERVAL_S
        removed = 0
        for slots in self._sweep_batches(every_slot):
            if removed >= limit:
                break
            reply = self._sweep([slot_deadlines_key(slot) for slot in slots], limit - removed, "")
            removed += int(reply[0])
            holding = {slots[int(position) - 1] for position in reply[2:]}
            for slot in slots[: int(reply[1])]:
                # A deadline given to an emptied slot meanwhile waits for the next full sweep.
                if slot in holding:
                    self._deadline_slots.add(slot)
                else:
                    self._deadline_slots.discard(slot)
        return removed

    def delete(self, key: str, precondition: Precondition = NO_CONDITION) -> None:
        """Remove the key's value and record the delete; raises KeyNotFound, PreconditionFailed.

        Deletes are allowed when Redis is at maxmemory: they are how a full store gets room back.
        """
        self._ensure_checked()
        arguments = [
            *self._key_arguments(key),
            _condition(precondition.if_match),
            _condition(precondition.if_none_match),
        ]
        outcome = self._script(DELETE, key, self._keys_of(key), arguments, _Effect.WRITES)
        if outcome[0] == b"missing":
            raise KeyNotFound.of(key)
        if outcome[0] == b"precondition":
            raise PreconditionFailed.of(key)

    def _write(
        self,
        key: str,
        data: bytes,
        content_type: str | None,
        precondition: Precondition,
        expiry: Expiry,
        *,
        create_only: bool,
    ) -> Value:
        self._ensure_checked()
        etag = secrets.token_hex(8)
        arguments = [
            *self._key_arguments(key),
            data,
            "" if content_type is None else "=" + content_type,
            etag,
            "1" if create_only else "0",
            _condition(precondition.if_match),
            _condition(precondition.if_none_match),
            _expiry_spec(expiry),
        ]
        outcome = self._script(WRITE, key, self._keys_of(key), arguments, _Effect.WRITES)
        if outcome[0] == b"exists":
            raise KeyExists.of(key)
        if outcome[0] == b"precondition":
            raise PreconditionFailed.of(key)
        value = Value(data, content_type, etag, _deadline(outcome[1]))
        self._note_deadline(key, value.expires_at_ms)
        return value

    # -- the change feed --------------------------------------------------------------------

    def feed_head(self) -> FeedPosition:
        """The position after the newest change, of the feed's life (made now if it has none:
        SET NX in Redis, so every replica shares it). Raises FeedUnsupported on a cluster."""
        revision_key, _, _, life_key = self._feed_keys()
        self._ensure_checked()
        life, head = self._script(
            FEED_HEAD,
            "",
            [revision_key, life_key],
            [secrets.token_urlsafe(9)],
            _Effect.NONE,
        )
        return FeedPosition(life.decode(), int(head))

    def changes(
        self, selector: FeedSelector, after: FeedPosition, limit: int = FEED_PAGE_CHANGES
    ) -> ChangePage:
        """As `Store.changes`, in one script (CHANGES) that reads at most FEED_SCAN_MOST of
        the feed's entries: a page may come back short, even empty, and not caught up."""
        keys = self._feed_keys()
        self._ensure_checked()
        reply = self._script(
            CHANGES,
            "",
            keys,
            [
                after.life,
                after.revision,
                "" if selector.key is None else selector.key,
                selector.prefix,
                limit,
                max(limit, FEED_SCAN_MOST),
            ],
            _Effect.NONE,
        )
        verdict = reply[0].decode()
        if verdict == "life":
            raise ResumeGone.of_another_life()
        if verdict == "ahead":
            raise ResumeGone.ahead(after.revision, int(reply[1]))
        if verdict == "gone":
            raise ResumeGone.left_the_window()
        reached, head, changes = int(reply[1]), int(reply[2]), reply[3]
        return ChangePage(
            [change_of(change) for change in changes],
            FeedPosition(after.life, reached),
            reached == head,
        )

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Tell `listener` of every change from now on, by a thread that subscribes to the
        feed's channel (`subscriber.py`). Waits up to the store timeout for the subscription;
        a listener added while Redis is away is told `interrupted()` once it is back."""
        self._feed_keys()
        with self._subscriber_lock:
            if self._subscriber is None:
                server = self._topology.primaries()[0]
                self._subscriber = FeedSubscriber(
                    server.subscription,
                    self._feed_channel(),
                    self.feed_head,
                    self.timeout_s,
                )
            subscriber = self._subscriber
        subscriber.add(listener)

    def _feed_keys(self) -> list[str]:
        """The feed's keys, as the scripts take them; raises FeedUnsupported on a cluster."""
        if self._topology.cluster:
            raise FeedUnsupported(
                f"The store at {self.description} is a Redis Cluster, which cannot keep a change "
                "feed: writes to keys on different nodes have no one order that a resume "
                "position could name. Watching needs a single Redis (with replicas for "
                "failover)."
            )
        return [REVISION_KEY, FEED_KEY, PRUNED_KEY, LIFE_KEY]

    def _feed_channel(self) -> str:
        """The feed's channel; '' on a cluster, where the scripts keep no feed."""
        if self._topology.cluster:
            return ""
        return FEED_CHANNEL.format(database=self._topology.primaries()[0].database)

    # -- talking to Redis -------------------------------------------------------------------

    def _keys_of(self, key: str) -> list[str]:
        """The KEYS of a script on one key: its hash, history, deadlines set, [the index and
        the feed's keys]."""
        cluster = self._topology.cluster
        keys = [value_key(key), history_key(key), deadlines_key(key, cluster)]
        return keys if cluster else [*keys, INDEX_KEY, *self._feed_keys()]

    def _key_arguments(self, key: str) -> list[Any]:
        """The ARGV every script on one key starts with."""
        window = self.history_window_ms
        return [key, window, self._clock_arg(), window + HISTORY_TTL_MARGIN_MS, *self._feed()]

    def _feed(self) -> list[str]:
        """The feed's channel and a fresh life for it, should it have none, as the scripts
        take them ('' and '' on a cluster: no feed)."""
        channel = self._feed_channel()
        return [channel, secrets.token_urlsafe(9) if channel else ""]

    def _sweep(self, sets: list[str], limit: int, index: str) -> list[Any]:
        """Run the sweep script over deadline sets of one server (see SWEEP for its reply)."""
        window = self.history_window_ms
        arguments = [
            limit,
            window,
            self._clock_arg(),
            window + HISTORY_TTL_MARGIN_MS,
            index,
            *self._feed(),
        ]
        keys = sets[:1] if self._topology.cluster else [*sets[:1], *self._feed_keys()]
        reply: list[Any] = self._script(SWEEP, "", keys, [*arguments, *sets[1:]], _Effect.SETTLES)
        return reply

    def _sweep_batches(self, every_slot: bool) -> list[list[int]]:
        """The slots each sweep script on a cluster visits, in batches of one primary's: every
        slot, or those known to hold deadlines."""
        slots = None if every_slot else self._deadline_slots.copy()
        return [
            group[start : start + SWEEP_SLOTS_PER_CALL]
            for group in self._topology.slots_by_primary(slots)
            for start in range(0, len(group), SWEEP_SLOTS_PER_CALL)
        ]

    def _note_deadline(self, key: str, deadline_ms: int | None) -> None:
        """Remember that the key's slot holds a deadline, for the cluster's sweep."""
        if deadline_ms is not None and self._topology.cluster:
            self._deadline_slots.add(key_slot(key))

    def _unexpired_page(
        self, prefix: str, after: str | None, limit: int, most: int
    ) -> tuple[list[str], str | None]:
        """A cluster's listing: up to `limit` + 1 scanned keys whose deadline has not passed,
        their deadlines checked in batches of LISTING_CHUNK or more, and at most `most` of
        them; and the last key checked if it stopped there with more to check (else None)."""
        candidates = sorted(
            key
            for server in self._topology.primaries()
            for key in self._scan_keys(server, prefix)
            if after is None or key > after
        )
        found: list[str] = []
        checked = 0
        while len(found) <= limit and checked < min(most, len(candidates)):
            size = min(max(limit + 1 - len(found), LISTING_CHUNK), _FILTER_BATCH, most - checked)
            batch = candidates[checked : checked + size]
            checked += len(batch)
            found += self._unexpired(batch)
        stopped = len(found) <= limit and checked < len(candidates)
        return found, candidates[checked - 1] if stopped else None

    def _unexpired(self, keys: list[str]) -> list[str]:
        """Those of a cluster's scanned keys whose deadline has not passed, in their order: a
        hash may outlive its deadline (briefly on Redis's clock, until settled on an injected
        one). One script per primary holding some of them."""
        by_primary: dict[str, list[str]] = {}
        for key in keys:
            by_primary.setdefault(self._topology.server_for(value_key(key)).address, []).append(key)
        kept: set[bytes] = set()
        for group in by_primary.values():
            sets = [deadlines_key(key, True) for key in group]
            pairs = [part for key, name in zip(group, sets, strict=True) for part in (key, name)]
            kept.update(
                self._script(UNEXPIRED, "", sets[:1], [self._clock_arg(), *pairs], _Effect.NONE)
            )
        return [key for key in keys if key.encode() in kept]

    def _clock_arg(self) -> str:
        return "" if self._clock is None else str(self._clock())

    def _ensure_checked(self) -> None:
        """Refuse the operation while Redis would evict; check again every POLICY_RECHECK_S.

        One caller at a time re-checks, and nobody waits for it: while it asks, the others go
        by the previous verdict, or, before there is one, ask as well (each within the store
        timeout). Nothing holds a lock across the network call: one silent Redis must not
        queue requests behind one another's timeouts."""
        verdict = self._verdict
        if verdict is not None and time.monotonic() - verdict.at < POLICY_RECHECK_S:
            verdict.enforce()
            return
        with self._verdict_lock:
            claimed, self._checking = not self._checking, True
        if not claimed and verdict is not None:
            verdict.enforce()  # stale by less than one check's timeout
            return
        try:
            self.check_ready()
        finally:
            if claimed:
                self._checking = False

    def _verdict_changed(self, refusal: StoreMisconfigured | None) -> bool:
        previous = self._verdict
        if previous is None:
            return refusal is not None
        return (previous.refusal is None) != (refusal is None)

    def _scan_keys(self, server: Server, prefix: str) -> list[str]:
        """Every key holding a value on one server that starts with `prefix` (a SCAN walk)."""
        pattern = f"kv:{{{prefix}*}}"
        found: list[str] = []
        cursor: Any = 0
        while True:
            cursor, names = self._execute(
                server,
                ("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT),
                effect=_Effect.NONE,
            )
            found += [name.decode()[4:-1] for name in names]
            if int(cursor) == 0:
                return found

    def _script(
        self, script: Script, key: str, keys: list[str], arguments: Sequence[Any], effect: _Effect
    ) -> Any:
        """Run a script on the server for `key`: EVALSHA, loading it on NOSCRIPT; in a cluster,
        relearning the slot map and retrying once on MOVED or ASK (it did not run). `effect`:
        what it may have done, should its reply not come in time."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *arguments)
        for attempt in range(2):
            server = self._topology.server_for(keys[0])
            try:
                try:
                    return self._execute(server, command, effect=effect)
                except redis_errors.NoScriptError:
                    self._execute(server, ("SCRIPT", "LOAD", script.source), effect=_Effect.NONE)
                    return self._execute(server, command, effect=effect)
            except (redis_errors.MovedError, redis_errors.AskError):
                self._topology.refresh()
                if attempt:
                    raise StoreUnavailable(
                        f"The Redis Cluster at {self.description} is moving the key's slot; "
                        "nothing was changed: try again."
                    ) from None
        raise AssertionError("unreachable")

    def _execute(self, server: Server, command: Sequence[Any], *, effect: _Effect) -> Any:
        """Send one command and read its reply, turning every way Redis can fail into a
        StoreError that says what became of the command."""
        name = str(command[0])
        try:
            connection = server.pool.get_connection()
        except (redis_errors.RedisError, OSError) as error:
            # Not reached, or it refused the connection's handshake (a wrong password, or
            # protected mode): either way no command was sent. Only a timeout waited: a
            # refusal comes back at once, and must not read as a server that was slow.
            self._topology_lost()
            failure = (
                f"gave no connection within {self.timeout_s:g} s"
                if isinstance(error, redis_errors.TimeoutError | TimeoutError)
                else "could not be connected to"
            )
            raise StoreUnavailable(
                f"Redis at {server.address} {failure} ({_reason(error)}); nothing was changed."
            ) from error
        try:
            try:
                connection.send_command(*command)  # type: ignore[no-untyped-call]
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
                connection.disconnect()  # type: ignore[no-untyped-call]
                raise StoreUnavailable(
                    f"Redis at {server.address} could not be sent {name} ({_reason(error)}); "
                    "nothing was changed."
                ) from error
            try:
                return connection.read_response()
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
                connection.disconnect()  # type: ignore[no-untyped-call]
                self._topology_lost()
                raise StoreUnavailable(
                    f"Redis at {server.address} did not answer {name} within {self.timeout_s:g} s "
                    f"({_reason(error)}); {effect.value}."
                ) from error
        except redis_errors.ResponseError as error:
            refusal = _refusal(error, server.address)
            if refusal is error:
                raise
            if isinstance(refusal, StoreFull):
                with self._full_refusals_lock:
                    self._full_refusals += 1
            if isinstance(refusal, StoreUnavailable):
                self._topology_lost()  # a failover (READONLY) or a slot that moved away
            raise refusal from error
        finally:
            server.pool.release(connection)

    def _topology_lost(self) -> None:
        if self._topology.cluster:
            self._topology.refresh()  # a node went away: the slot map may have changed


def _refusal(error: redis_errors.ResponseError, address: str) -> Exception:
    """What an error reply from Redis means here. NOSCRIPT, MOVED and ASK pass through to
    `_script`, which retries them. An error nothing here expects is still Redis's doing, not
    the client's: logged, and answered as the store being unavailable."""
    if isinstance(
        error, redis_errors.NoScriptError | redis_errors.MovedError | redis_errors.AskError
    ):
        return error
    if isinstance(error, redis_errors.OutOfMemoryError):
        return StoreFull(
            f"Redis at {address} is at its memory limit (maxmemory); delete keys or wait for "
            "history to expire."
        )
    if "non local key" in str(error):
        # A script touched a key it could not declare (the sweep's other slots) in a slot
        # this node no longer holds: the slot moved, and the store's map is out of date.
        return StoreUnavailable(
            f"Redis at {address} no longer holds a slot the store sent it ({error}); "
            "the cluster's slot map is relearnt: try again."
        )
    unavailable = (
        redis_errors.BusyLoadingError,  # LOADING: restarting, reading its append-only file
        redis_errors.ReadOnlyError,  # READONLY: a replica, after a failover
        redis_errors.ClusterDownError,
        redis_errors.TryAgainError,
        redis_errors.MasterDownError,
    )
    if isinstance(error, unavailable):
        return StoreUnavailable(
            f"Redis at {address} cannot serve now ({error}); nothing was changed."
        )
    if isinstance(error, redis_errors.NoPermissionError | redis_errors.AuthenticationError):
        return StoreMisconfigured(
            f"Redis at {address} does not let kvservice's user run its commands ({error}); "
            "it needs EVALSHA, SCRIPT, SCAN and INFO, and the commands its scripts run: "
            f"{_SCRIPT_COMMANDS}, on the keys kv:*; and to watch, SUBSCRIBE and PING on the "
            f"channels {FEED_CHANNEL.format(database='*')}"
        )
    logger.error("Redis at %s answered an error kvservice does not expect: %s", address, error)
    return StoreUnavailable(f"Redis at {address} answered with an error: {error}.")


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _condition(tags: frozenset[str] | None) -> str:
    """A precondition as the scripts read it: '' none, '*' any value, '=' and tags by line."""
    if tags is None:
        return ""
    if MATCH_ANY in tags:
        return "*"
    return "=" + "\n".join(sorted(tags))


def _history_entry(entry: bytes) -> HistoryEntry:
    stamp, _, rest = entry.partition(b":")
    return HistoryEntry(rest[1:] if rest[:1] == b"=" else None, int(stamp), rest == b"~")


def _expiry_spec(expiry: Expiry) -> str:
    """An expiry as the scripts read it: '' none, 'k' keep, '@' and a time, '+' and a delay."""
    if expiry.keep:
        return "k"
    if expiry.at_ms is not None:
        return f"@{expiry.at_ms}"
    if expiry.after_ms is not None:
        return f"+{expiry.after_ms}"
    return ""


def _deadline(reply: bytes | None) -> int | None:
    return None if reply is None else int(reply)


def _value(fields: list[Any]) -> Value | None:
    """A value from a script's reply (data, content type, ETag, deadline); None if no ETag."""
    if not fields or fields[2] is None:
        return None
    data, content_type, etag, deadline = fields
    # A type written to Redis by other means may be any bytes: the transports judge the
    # text (HTTP serves one that is no field value as application/octet-stream).
    content_type_text = None if content_type is None else content_type.decode("utf-8", "replace")
    return Value(data, content_type_text, etag.decode(), _deadline(deadline))


def _info(reply: bytes) -> dict[str, str]:
    """An INFO reply's `name:value` lines."""
    fields = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon and not line.startswith("#"):
            fields[name] = value.strip()
    return fields
