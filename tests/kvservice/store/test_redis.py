"""What only the Redis backend promises, against real redis-server processes: its layout,
history trimmed and expiring by itself, Redis's clock, ETags shared between replicas, the
eviction policy it refuses, every fault it turns into a clear StoreUnavailable, and where
deadlines live (an expiry recorded once by replicas racing to notice it, Redis's own expiry
of the hash, a sweep that reads no key without a deadline, on a cluster too, deadlines exact
to the millisecond past 2^53, and listings that examine a bounded number of keys past theirs).

Faults are real: a closed port, a server stopped and started again on its port, a server told
to hold writes (CLIENT PAUSE) so that a write is sent and its reply never comes in time.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions as redis_errors

import kvservice.store.redis.connection as redis_connection
import kvservice.store.redis.scripts as redis_scripts
import kvservice.store.redis.store as redis_store_module
from kvservice.store import (
    KEEP_EXPIRY,
    NO_EXPIRY,
    ExpireIf,
    Expiry,
    HistoryEntry,
    KeyExists,
    KeyNotFound,
    KeyPage,
    Precondition,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
    system_clock_ms,
)
from kvservice.store.redis import (
    POLICY_RECHECK_S,
    BoundedLookup,
    RedisStore,
    deadlines_key,
    history_key,
    slot_deadlines_key,
    value_key,
)
from kvservice.store.redis.scripts import Script, key_slot
from kvservice.store.sweeper import Sweeper
from tests.support.clock import START_MS, FakeClock
from tests.support.processes import free_port
from tests.support.redis_servers import (
    RedisClusterProcesses,
    RedisProcess,
    running_cluster,
    running_redis,
)

WINDOW_MS = 120_000


@pytest.fixture
def server(redis_server: RedisProcess) -> RedisProcess:
    redis_server.flush()
    return redis_server


def make_store(url: str, **options: object) -> RedisStore:
    settings: dict[str, object] = {"connections": 4, "timeout_s": 2.0, **options}
    return RedisStore.from_url(url, **settings)  # type: ignore[arg-type]


@pytest.fixture
def store(server: RedisProcess) -> Iterator[RedisStore]:
    store = make_store(server.url)
    yield store
    store.close()


# -- layout -------------------------------------------------------------------------------------


def test_a_value_and_its_history_live_under_the_keys_hash_tag(
    store: RedisStore, server: RedisProcess
) -> None:
    store.put("k", b"v", "text/plain")
    redis = server.client()
    assert redis.hgetall(value_key("k")) == {
        b"d": b"v",
        b"t": b"text/plain",
        b"e": store.get("k").etag.encode(),
    }
    assert value_key("k") == "kv:{k}" and history_key("k") == "kv:{k}:h"
    assert redis.llen(history_key("k")) == 1
    assert WINDOW_MS < redis.pttl(history_key("k")) <= WINDOW_MS + 1000
    assert redis.zrange("kv:keys", 0, -1) == [b"k"]
    store.delete("k")
    assert redis.exists(value_key("k")) == 0
    assert redis.zrange("kv:keys", 0, -1) == []


def test_a_write_trims_the_keys_history_to_the_window(server: RedisProcess) -> None:
    clock = FakeClock()
    store = make_store(server.url, clock=clock)
    for number in range(5):
        store.put("k", str(number).encode())
    clock.advance(WINDOW_MS)
    store.put("k", b"new")
    assert server.client().llen(history_key("k")) == 1, "old entries are removed, not just hidden"
    store.close()


def test_a_deleted_keys_history_goes_away_by_itself(server: RedisProcess) -> None:
    store = make_store(server.url, history_window_ms=200)
    store.put("gone", b"v")
    store.delete("gone")
    redis = server.client()
    assert redis.exists(history_key("gone")) == 1
    deadline = time.monotonic() + 5
    while redis.exists(history_key("gone")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis.exists(history_key("gone")) == 0, "its TTL is the window plus a second"
    assert store.history("gone") == []
    store.close()


def test_timestamps_come_from_redis_when_no_clock_is_given(store: RedisStore) -> None:
    before = system_clock_ms()
    store.put("k", b"v")
    after = system_clock_ms()
    [entry] = store.history("k")
    assert before - 50 <= entry.timestamp_ms <= after + 50


# -- replicas: two stores on one Redis ----------------------------------------------------------


def test_an_etag_from_one_replica_works_on_another(server: RedisProcess) -> None:
    first, second = make_store(server.url), make_store(server.url)
    etag = first.put("k", b"v1").etag
    assert second.get("k").etag == etag
    second.put("k", b"v2", precondition=Precondition(if_match=frozenset({etag})))
    assert first.get("k").data == b"v2"
    first.close()
    second.close()


def test_create_only_from_many_threads_on_two_replicas_lets_exactly_one_win(
    server: RedisProcess,
) -> None:
    replicas = [make_store(server.url, connections=20), make_store(server.url, connections=20)]
    start = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(number: int) -> None:
        start.wait(5)
        try:
            replicas[number % 2].create("race", f"writer{number}".encode())
            result = "created"
        except KeyExists:
            result = "exists"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create, args=(number,)) for number in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 19
    assert len(replicas[0].history("race")) == 1
    for replica in replicas:
        replica.close()


def test_scripts_are_loaded_again_after_redis_forgets_them(
    store: RedisStore, server: RedisProcess
) -> None:
    store.put("k", b"v1")
    server.client().script_flush()
    store.put("k", b"v2")
    assert [entry.data for entry in store.history("k")] == [b"v2", b"v1"]


# -- the budget is Redis's ----------------------------------------------------------------------


def test_an_evicting_server_is_refused(tmp_path: Path) -> None:
    with running_redis(tmp_path, "--maxmemory-policy", "allkeys-lru") as evicting:
        store = make_store(evicting.url)
        with pytest.raises(
            StoreMisconfigured, match="maxmemory-policy allkeys-lru: it would evict"
        ):
            store.check_ready()
        with pytest.raises(StoreMisconfigured, match="noeviction"):
            store.put("k", b"v")
        assert evicting.client().exists(value_key("k")) == 0
        store.close()


def test_an_eviction_policy_set_at_runtime_is_noticed_and_refused_until_undone(
    server: RedisProcess,
) -> None:
    """An operator's CONFIG SET maxmemory-policy allkeys-lru while serving: within
    POLICY_RECHECK_S writes (and reads) are refused, saying why, none of them reaching Redis;
    once noeviction is back, the store serves again by itself."""
    store = make_store(server.url)
    store.put("before", b"v")
    server.client().config_set("maxmemory-policy", "allkeys-lru")
    try:
        time.sleep(POLICY_RECHECK_S + 0.1)
        with pytest.raises(StoreMisconfigured, match="maxmemory-policy allkeys-lru"):
            store.put("during", b"v")
        with pytest.raises(StoreMisconfigured, match="noeviction"):
            store.get("before")
        assert server.client().exists(value_key("during")) == 0
    finally:
        server.client().config_set("maxmemory-policy", "noeviction")
    time.sleep(POLICY_RECHECK_S + 0.1)
    store.put("after", b"v")
    assert store.get("after").data == b"v"
    store.close()


def test_at_maxmemory_writes_are_507_and_reads_and_deletes_work(
    store: RedisStore, server: RedisProcess
) -> None:
    store.put("kept", b"x" * 100)
    server.limit_memory(0)  # full now
    with pytest.raises(StoreFull, match=r"127\.0\.0\.1:\d+ is at its memory limit \(maxmemory\)"):
        store.put("more", b"x")
    assert store.get("kept").data == b"x" * 100
    store.delete("kept")
    with pytest.raises(KeyNotFound):
        store.get("kept")


# -- faults -------------------------------------------------------------------------------------


def test_a_server_that_is_not_there_is_unavailable_at_once_saying_it_refused() -> None:
    """A refusal comes back at once: the detail must not speak of waiting for the timeout."""
    store = make_store(f"redis://127.0.0.1:{free_port()}", timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refusal:
        store.put("k", b"v")
    assert re.fullmatch(
        r"Redis at 127\.0\.0\.1:\d+ could not be connected to \(.*Connection refused.*\); "
        r"nothing was changed\.",
        str(refusal.value),
    ), str(refusal.value)
    with pytest.raises(StoreUnavailable):
        store.get("k")
    assert time.monotonic() - started < 3
    store.close()


def test_a_server_that_takes_no_connection_is_unavailable_within_the_timeout() -> None:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    waits until its timeout, as for a host that is down or a firewall that drops packets."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        try:
            for waiting in queued:
                waiting.setblocking(False)
                waiting.connect_ex(("127.0.0.1", port))
            store = make_store(f"redis://127.0.0.1:{port}", timeout_s=0.5)
            started = time.monotonic()
            with pytest.raises(
                StoreUnavailable, match=r"gave no connection within 0\.5 s .*nothing was changed"
            ):
                store.get("k")
            assert time.monotonic() - started < 2
            store.close()
        finally:
            for waiting in queued:
                waiting.close()


def test_a_write_sent_without_a_reply_says_its_outcome_is_unknown(tmp_path: Path) -> None:
    """It is unknown: the same timeout hides a write that was applied and one that was not."""
    with running_redis(tmp_path, "--enable-debug-command", "yes") as server:
        store = make_store(server.url, timeout_s=0.5)
        store.put("warm", b"up")  # the scripts are loaded
        # The whole server is busy for 1.5 s: the write waits in its socket, then runs.
        busy = threading.Thread(
            target=server.client().execute_command, args=("DEBUG", "SLEEP", "1.5")
        )
        busy.start()
        time.sleep(0.1)
        with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
            store.put("slept", b"sent")
        busy.join()
        assert store.get("slept").data == b"sent", "applied after all"
        # Writes are held for 1.5 s: Redis drops the held write when the client gives up.
        server.client().execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # type: ignore[no-untyped-call]
        with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
            store.put("paused", b"sent")
        time.sleep(1.6)
        with pytest.raises(KeyNotFound):
            store.get("paused")
        store.close()


def test_a_read_not_answered_in_time_says_it_may_have_recorded_an_expiry(tmp_path: Path) -> None:
    """A read settles a passed deadline: when its reply is late, the key may have been
    changed after all (its value removed, its expiry recorded), and the detail says so."""
    with running_redis(tmp_path, "--enable-debug-command", "yes") as server:
        clock = FakeClock()
        store = make_store(server.url, timeout_s=0.5, clock=clock)
        store.put("k", b"v", expiry=Expiry(after_ms=10))
        clock.advance(10)
        busy = threading.Thread(
            target=server.client().execute_command, args=("DEBUG", "SLEEP", "1.5")
        )
        busy.start()
        time.sleep(0.1)
        with pytest.raises(StoreUnavailable) as late:
            store.get("k")
        busy.join()
        assert "nothing was changed" not in str(late.value)
        assert "expiry recorded" in str(late.value), str(late.value)
        assert store.history("k")[0] == HistoryEntry(None, START_MS + 10, expired=True)
        store.close()


def test_the_store_recovers_by_itself_when_redis_returns(tmp_path: Path) -> None:
    with running_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as server:
        store = make_store(server.url, timeout_s=1.0)
        store.put("k", b"before")
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.get("k")
        server.start()
        assert store.get("k").data == b"before", "pooled connections were replaced"
        store.put("k", b"after")
        store.close()


def test_a_password_comes_from_the_url_and_a_wrong_one_is_a_clear_503(tmp_path: Path) -> None:
    with running_redis(tmp_path, "--requirepass", "s3cret") as server:
        right = make_store(f"redis://:s3cret@127.0.0.1:{server.port}")
        right.put("k", b"v")
        assert right.get("k").data == b"v"
        for url in (server.url, f"redis://:wrong@127.0.0.1:{server.port}"):
            wrong = make_store(url)
            with pytest.raises(
                StoreUnavailable, match=r"could not be connected to .*nothing was changed"
            ):
                wrong.get("k")
            wrong.close()
        right.close()


def test_a_host_lookup_that_hangs_is_cut_off_at_the_timeout() -> None:
    """A DNS server that never answers cannot be made on loopback here, so the resolver is a
    stand-in that sleeps; everything after it (the pool, the store, the 503) is real."""
    release = threading.Event()

    def hanging(host: str, port: int) -> str:
        release.wait(10)
        return "127.0.0.1"

    store = make_store("redis://redis.invalid:6379", timeout_s=0.5, lookup=BoundedLookup(hanging))
    started = time.monotonic()
    with pytest.raises(
        StoreUnavailable, match=r"cannot look redis\.invalid up: no answer within 0\.5 s"
    ):
        store.get("k")
    assert time.monotonic() - started < 1.5
    release.set()
    store.close()


def test_a_lookup_that_fails_falls_back_on_the_last_address_that_answered(
    server: RedisProcess,
) -> None:
    answers = iter(["127.0.0.1"])

    def flaky(host: str, port: int) -> str:
        try:
            return next(answers)
        except StopIteration:
            raise OSError("the name is gone") from None

    lookup = BoundedLookup(flaky)
    assert lookup.address("redis", server.port, 1.0) == "127.0.0.1"
    assert lookup.address("redis", server.port, 1.0) == "127.0.0.1", "the last good one"
    with pytest.raises(Exception, match="cannot look other up: the name is gone"):
        lookup.address("other", server.port, 1.0)
    store = make_store(f"redis://redis:{server.port}", lookup=lookup)
    store.put("k", b"v")  # connects to the last good address of "redis"
    assert store.get("k").data == b"v"
    store.close()


def test_credentials_never_appear_in_the_description() -> None:
    store = make_store("redis://user:secret@127.0.0.1:1/0")
    assert "secret" not in store.description and "user" not in store.description
    store.close()
    with pytest.raises(ValueError, match="is not a redis://, rediss://"):
        make_store("http://127.0.0.1:1")


# -- cluster ------------------------------------------------------------------------------------


def test_a_clusters_keys_are_spread_over_every_primary_and_listed_from_all(
    redis_cluster: RedisClusterProcesses,
) -> None:
    redis_cluster.flush()
    store = make_store(redis_cluster.url, connections=4)
    keys = [f"spread{number}" for number in range(60)]
    for key in keys:
        store.put(key, b"v")
    per_node = [len(node.client().keys("kv:{*}")) for node in redis_cluster.nodes]
    assert all(count > 0 for count in per_node), per_node
    assert sum(per_node) == len(keys)
    assert store.keys(prefix="spread", limit=1000).keys == sorted(keys)
    assert store.stats().keys == len(keys)
    pool = store._topology.primaries()[0].pool  # the nodes' connections bound their lookups too
    assert issubclass(pool.connection_class, redis_connection.Connection)
    store.close()


# -- expiry: deadlines, replicas noticing them, the sweep ---------------------------------------


@pytest.fixture(params=["redis", "redis-cluster"])
def servers(request: pytest.FixtureRequest) -> RedisProcess | RedisClusterProcesses:
    """A flushed single Redis, then a flushed cluster."""
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    servers: RedisProcess | RedisClusterProcesses = request.getfixturevalue(name)
    servers.flush()
    return servers


def nodes_of(servers: RedisProcess | RedisClusterProcesses) -> list[RedisProcess]:
    return servers.nodes if isinstance(servers, RedisClusterProcesses) else [servers]


def on_its_node(
    servers: RedisProcess | RedisClusterProcesses, command: tuple[object, ...]
) -> object:
    """Run a command about one Redis key on the node that holds it, behind the store's back."""
    for node in nodes_of(servers):
        try:
            return node.client().execute_command(*command)  # type: ignore[no-untyped-call]
        except redis_errors.MovedError:
            continue
    raise AssertionError(f"no node holds {command[1]!r}")


def test_replicas_noticing_an_expiry_together_record_it_once_at_the_deadline(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    """Two stores on one Redis are two replicas: at the deadline, 24 threads on both read,
    list, sweep and write the key at once; the expiry is recorded exactly once, at the
    deadline, before the new write."""
    clock = FakeClock()
    replicas = [make_store(servers.url, clock=clock, connections=12) for _ in range(2)]
    deadline = START_MS + 1_000
    replicas[0].put("k", b"v", expiry=Expiry(at_ms=deadline))
    assert replicas[1].get("k").expires_at_ms == deadline
    clock.advance(999)
    assert replicas[1].get("k").data == b"v", "one millisecond before, it is there"
    clock.advance(1)
    actions = [
        lambda store: store.history("k"),
        lambda store: store.keys(),
        lambda store: store.sweep_expired(10),
        lambda store: store.create("k", b"new"),
        lambda store: store.get("k"),
        lambda store: store.delete("k"),
    ]
    start = threading.Barrier(24)

    def act(number: int) -> None:
        start.wait(5)
        with contextlib.suppress(KeyNotFound, KeyExists):
            actions[number % len(actions)](replicas[number % 2])

    threads = [threading.Thread(target=act, args=(number,)) for number in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replica in replicas:
        history = replica.history("k")
        assert history[-2:] == [
            HistoryEntry(None, deadline, expired=True),
            HistoryEntry(b"v", START_MS),
        ], history
        assert [entry.expired for entry in history].count(True) == 1
    raw = on_its_node(servers, ("LRANGE", history_key("k"), 0, -1))
    assert isinstance(raw, list) and raw[1] == f"{deadline}:~".encode()
    for replica in replicas:
        replica.close()


def test_on_redis_clock_redis_removes_the_hash_itself_and_the_expiry_is_still_recorded(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    """Nobody reads the key: Redis's own PEXPIREAT frees the hash after the deadline, and the
    deadlines set, which outlives it, gives the history its entry at the deadline."""
    store = make_store(servers.url)
    deadline = store.put("k", b"v", expiry=Expiry(after_ms=300)).expires_at_ms
    assert deadline is not None
    assert on_its_node(servers, ("PEXPIRETIME", value_key("k"))) == deadline
    wait_until = time.monotonic() + 5
    while on_its_node(servers, ("EXISTS", value_key("k"))) and time.monotonic() < wait_until:
        time.sleep(0.05)
    assert on_its_node(servers, ("EXISTS", value_key("k"))) == 0, "Redis removed it"
    assert on_its_node(servers, ("ZSCORE", deadlines_key("k", "cluster" in servers.url), "k"))
    [expiry, write] = store.history("k")
    assert expiry == HistoryEntry(None, deadline, expired=True)
    assert write.data == b"v" and write.timestamp_ms < deadline
    assert store.keys().keys == []
    store.close()


def test_on_redis_clock_a_plain_write_and_no_expiry_take_redis_own_deadline_away(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    first, second = make_store(servers.url), make_store(servers.url)
    value = first.put("k", b"v", expiry=Expiry(after_ms=60_000))
    change = second.expire("k", Expiry(after_ms=120_000), ExpireIf.LATER)
    assert change.applied and change.value is not None
    assert change.value.etag == value.etag, "a deadline is not a new value"
    assert change.value.expires_at_ms == first.get("k").expires_at_ms
    assert on_its_node(servers, ("PEXPIRETIME", value_key("k"))) == change.value.expires_at_ms
    second.expire("k", NO_EXPIRY)
    assert on_its_node(servers, ("PEXPIRETIME", value_key("k"))) == -1
    assert first.get("k").expires_at_ms is None
    first.put("k", b"v2", expiry=Expiry(after_ms=60_000))
    second.put("k", b"v3")
    assert on_its_node(servers, ("PEXPIRETIME", value_key("k"))) == -1
    assert first.get("k").expires_at_ms is None
    first.close()
    second.close()


def test_the_listing_leaves_out_a_passed_deadline_before_any_sweep(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    clock = FakeClock()
    store = make_store(servers.url, clock=clock)
    store.put("a", b"1")
    store.put("b", b"2", expiry=Expiry(after_ms=10))
    store.put("c", b"3")
    clock.advance(9)
    assert store.keys().keys == ["a", "b", "c"]
    assert store.stats().keys == 3
    clock.advance(1)
    assert store.keys().keys == ["a", "c"]
    assert store.keys(limit=1).keys == ["a"]
    assert store.keys(after="a", limit=1).keys == ["c"]
    assert store.stats().keys == 2
    store.close()


def test_the_sweep_reads_no_key_without_a_deadline(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    """1,000 keys without a deadline and 10 with: Redis's own count of keys it looked up and
    found (keyspace_hits) while sweeping stays far below 1,000. A sweep that walked the keys
    would find each of them."""
    clock = FakeClock()
    store = make_store(servers.url, clock=clock, connections=8)
    for number in range(1_000):
        store.put(f"plain{number}", b"v")
    for number in range(10):
        store.put(f"brief{number}", b"v", expiry=Expiry(after_ms=5))
    clock.advance(5)
    for node in nodes_of(servers):
        node.client().config_resetstat()
    assert store.sweep_expired(100) == 10
    hits = sum(int(node.client().info("stats")["keyspace_hits"]) for node in nodes_of(servers))
    assert hits <= 10 * 10, hits
    assert store.sweep_expired(100) == 0
    assert len(store.keys(limit=2_000).keys) == 1_000
    store.close()


def test_a_clusters_deadlines_live_in_their_keys_slot_and_the_sweep_reaches_every_primary(
    redis_cluster: RedisClusterProcesses,
) -> None:
    redis_cluster.flush()
    client = redis_cluster.nodes[0].client()
    keyslot = "CLUSTER", "KEYSLOT"
    for key in ("a", "k", "Z9", "spread17", "x" * 255):
        slot = client.execute_command(*keyslot, value_key(key))  # type: ignore[no-untyped-call]
        assert client.execute_command(*keyslot, deadlines_key(key, True)) == slot  # type: ignore[no-untyped-call]
    for slot in (0, 1, 5460, 5461, 10922, 16383):
        assert client.execute_command(*keyslot, slot_deadlines_key(slot)) == slot  # type: ignore[no-untyped-call]
    clock = FakeClock()
    store = make_store(redis_cluster.url, clock=clock)
    keys = [f"spread{number}" for number in range(60)]
    for key in keys:
        store.put(key, b"v", expiry=Expiry(after_ms=1))  # all in the same millisecond
    clock.advance(1)
    assert store.sweep_expired(25) == 25, "the limit holds across primaries"
    assert store.sweep_expired(1_000) == 35
    assert store.sweep_expired(1_000) == 0
    for node in redis_cluster.nodes:
        assert node.client().keys("kv:*:deadlines") == [], "every deadline was settled"
        assert node.client().keys("kv:{*}") == [], "every value was removed"
    for key in keys:
        assert store.history(key)[0] == HistoryEntry(None, START_MS + 1, expired=True)
    store.close()


def test_a_deadline_past_redis_own_range_is_kept_by_the_store_alone(store: RedisStore) -> None:
    """PEXPIREAT refuses times past a 64-bit count of milliseconds, and would do so after the
    script wrote the value: such a deadline is kept in the deadlines set only."""
    far = 10**19
    assert store.put("k", b"v", expiry=Expiry(at_ms=far)).expires_at_ms == far
    assert store.get("k").expires_at_ms == far
    assert store.expire("k", Expiry(at_ms=far * 10)).applied
    assert store.get("k").expires_at_ms == far * 10


def test_a_cluster_sweep_visits_every_slot_only_now_and_then(
    redis_cluster: RedisClusterProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between full sweeps a replica visits only the slots it knows hold deadlines: with none,
    it sends no script at all; one it set itself it sweeps at once; one another replica set
    waits for its next full sweep (a read would settle it at once)."""
    monkeypatch.setattr(redis_store_module, "FULL_SWEEP_INTERVAL_S", 1.0)
    redis_cluster.flush()
    clock = FakeClock()
    writer, sweeper = (make_store(redis_cluster.url, clock=clock) for _ in range(2))
    assert writer.sweep_expired(1_000) == 0  # its full sweep: the next is a second away
    for number in range(30):
        writer.put(f"other{number}", b"v", expiry=Expiry(after_ms=1))
    clock.advance(1)
    assert sweeper.sweep_expired(1_000) == 30, "the first sweep visits every slot"
    for node in redis_cluster.nodes:
        node.client().config_resetstat()
    assert sweeper.sweep_expired(1_000) == 0
    for node in redis_cluster.nodes:
        assert "cmdstat_evalsha" not in node.client().info("commandstats"), "nothing known"
    writer.put("mine", b"v", expiry=Expiry(after_ms=1))
    writer.put("late", b"v", expiry=Expiry(after_ms=1))
    clock.advance(1)
    assert sweeper.sweep_expired(1_000) == 0, "their slots are not known to this replica yet"
    assert writer.sweep_expired(1) == 1, "the replica that set a deadline knows its slot"
    time.sleep(1.1)
    assert sweeper.sweep_expired(1_000) == 1, "found by its next full sweep"
    writer.close()
    sweeper.close()


def test_the_permission_advice_names_every_command_the_scripts_run() -> None:
    """Redis's ACLs check the commands a script runs: a StoreMisconfigured that lists fewer
    sends an operator round again."""
    sources = [value.source for value in vars(redis_scripts).values() if isinstance(value, Script)]
    called = set(re.findall(r"redis\.call\('([A-Z]+)'", "".join(sources)))
    advised = set(re.findall(r"[A-Z]{3,}", redis_store_module._SCRIPT_COMMANDS))
    assert called == advised


def test_the_sweeper_settles_expired_keys_on_redis_though_nobody_reads_them(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    """On Redis's clock, with the composition root's sweeper: 500 keys expire together and
    their deadlines are gone within a second, leaving each history its expiry entry."""
    store = make_store(servers.url)
    keys = [f"wave{number}" for number in range(500)]
    deadlines = {
        key: store.put(key, b"v", expiry=Expiry(after_ms=200)).expires_at_ms for key in keys
    }
    sweeper = Sweeper(store)
    sweeper.start()
    try:
        wait_until = time.monotonic() + 5
        while sweeper.removed < len(keys) and time.monotonic() < wait_until:
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert sweeper.removed == len(keys)
    for node in nodes_of(servers):
        assert node.client().keys("kv:*deadlines") == []
        assert node.client().keys("kv:{*}") == []
    for key in keys[::50]:
        expiry = store.history(key)[0]
        assert (expiry.data, expiry.timestamp_ms, expiry.expired) == (None, deadlines[key], True)
    store.close()


def test_a_sweep_after_a_slot_moved_relearns_the_cluster_and_then_sweeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep names the deadline sets of many slots in one script, sent to the primary the
    store's slot map says holds them; once one of those slots moved, that primary refuses
    the script (a non-local key). The sweep then says the store is unavailable and relearns
    the map, and the next one sweeps every primary again."""
    monkeypatch.setattr(redis_store_module, "FULL_SWEEP_INTERVAL_S", 0.0)  # every slot, always
    with running_cluster(tmp_path) as cluster:
        clock = FakeClock()
        store = make_store(cluster.url, clock=clock)
        keys = [f"moving{number}" for number in range(60)]
        for key in keys:
            store.put(key, b"v", expiry=Expiry(after_ms=1))
        clock.advance(1)
        # The last slot of the first primary, holding no key, moves to the second.
        source, target = cluster.nodes[0], cluster.nodes[1]
        [first_range] = [
            (low, high)
            for low, high, (_, port, *_), *_ in source.client().execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            if port == source.port
        ]
        moved = first_range[1]
        assert moved not in {key_slot(key) for key in keys}
        target_id = target.client().execute_command("CLUSTER", "MYID").decode()  # type: ignore[no-untyped-call]
        for node in (target, source, cluster.nodes[2]):
            node.client().execute_command("CLUSTER", "SETSLOT", moved, "NODE", target_id)  # type: ignore[no-untyped-call]
        with pytest.raises(StoreUnavailable, match="non local key"):
            store.sweep_expired(1_000)
        removed = store.sweep_expired(1_000)
        assert removed > 0 and store.keys().keys == []
        store.close()


# -- expiry: exact deadlines, bounded listings -------------------------------------------------


def test_a_deadline_read_back_fits_a_signed_64_bit_integer(
    servers: RedisProcess | RedisClusterProcesses,
) -> None:
    """Lua's numbers are doubles, exact to 2^53 only: deadlines past that are carried as
    digits, written, read, compared and added to exactly."""
    clock = FakeClock()
    store = make_store(servers.url, clock=clock)
    written = store.put("k", b"v", expiry=Expiry(at_ms=2**63 - 1))
    assert written.expires_at_ms == 2**63 - 1
    assert store.get("k").expires_at_ms == 2**63 - 1
    later = store.expire("k", Expiry(at_ms=2**63 - 1 + 1), ExpireIf.LATER)
    assert later.applied, "one millisecond later, though both are the same double"
    assert store.get("k").expires_at_ms == 2**63
    assert not store.expire("k", Expiry(at_ms=2**63 - 1), ExpireIf.LATER).applied
    assert store.expire("k", Expiry(at_ms=2**63 - 1), ExpireIf.EARLIER).applied
    assert store.put("k", b"w", expiry=KEEP_EXPIRY).expires_at_ms == 2**63 - 1
    far = 2**62 + 1
    assert store.put("k", b"v", expiry=Expiry(after_ms=far)).expires_at_ms == START_MS + far
    assert store.get("k").expires_at_ms == START_MS + far
    assert store.keys().keys == ["k"]
    store.close()


def test_a_deadline_whose_digits_are_missing_or_stale_is_read_from_its_score(
    store: RedisStore, server: RedisProcess
) -> None:
    """The deadlines set says whether and about when; the hash's digits only say exactly,
    when they agree with it: a hash written by an older kvservice has none, and one whose
    deadline an older kvservice changed has stale ones."""
    deadline = 4_102_444_800_123
    store.put("k", b"v", expiry=Expiry(at_ms=deadline))
    server.client().hdel(value_key("k"), "x")
    assert store.get("k").expires_at_ms == deadline
    server.client().hset(value_key("k"), "x", str(deadline + 1_000))
    assert store.get("k").expires_at_ms == deadline
    assert store.put("k", b"w", expiry=KEEP_EXPIRY).expires_at_ms == deadline


def test_a_listing_examines_a_bounded_number_of_keys_past_their_deadline(
    server: RedisProcess,
) -> None:
    """5,000 keys past their deadline, not yet swept, before the one live key: a one-key page
    examines at most LISTING_EXAMINES of them (its script holds Redis, for every replica),
    and comes back short, saying where the next page starts; paging on reaches the live key."""
    clock = FakeClock()
    store = make_store(server.url, clock=clock)
    for number in range(5_000):
        store.put(f"k{number:05d}", b"v", expiry=Expiry(at_ms=START_MS + 1_000))
    store.put("z", b"v")
    clock.advance(1_000)
    client = server.client()
    client.config_resetstat()
    page = store.keys(limit=1)
    stats = client.info("commandstats")
    calls = {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("zscore", "zrange")
    }
    examines, chunk = redis_scripts.LISTING_EXAMINES, redis_scripts.LISTING_CHUNK
    assert calls["zscore"] <= examines and calls["zrange"] <= examines // chunk, calls
    assert page == KeyPage([], f"k{examines - 1:05d}")
    pages = [page]
    while pages[-1].next_after is not None and len(pages) < 10:
        pages.append(store.keys(after=pages[-1].next_after, limit=1))
    assert [key for page in pages for key in page.keys] == ["z"]
    assert len(pages) == 5_000 // redis_scripts.LISTING_EXAMINES + 1
    assert store.keys(limit=1).keys == [], "a listing writes nothing"
    store.close()


def test_a_clusters_listing_checks_a_bounded_number_of_keys_past_their_deadline(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """As on a single Redis: the deadlines of the candidates are checked in batches, and at
    most LISTING_EXAMINES of them for a one-key page."""
    redis_cluster.flush()
    clock = FakeClock()
    store = make_store(redis_cluster.url, clock=clock, connections=8)
    for number in range(3_000):
        store.put(f"k{number:05d}", b"v", expiry=Expiry(at_ms=START_MS + 1_000))
    store.put("z", b"v")
    clock.advance(1_000)
    for node in redis_cluster.nodes:
        node.client().config_resetstat()
    page = store.keys(limit=1)
    scripts = sum(
        node.client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        for node in redis_cluster.nodes
    )
    assert scripts < 100, scripts
    assert page == KeyPage([], f"k{redis_scripts.LISTING_EXAMINES - 1:05d}")
    pages = [page]
    while pages[-1].next_after is not None and len(pages) < 10:
        pages.append(store.keys(after=pages[-1].next_after, limit=1))
    assert [key for page in pages for key in page.keys] == ["z"]
    store.close()
