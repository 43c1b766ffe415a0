"""kvservice replicas on one Redis, over real sockets: what must hold when they race, when
Redis is killed, when it is full, and when it is stopped for a while under load.

Every kvservice here is a process (`python -m kvservice --store redis://...`) and every Redis
a redis-server process, both on free loopback ports and stopped by PID. Each test prints the
figures docs/RELIABILITY.md quotes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from testclient.checks import CHECKS, Verdict, run_checks
from testclient.clients import HTTPKVClient
from tests.reliability.test_linearizability import assert_linearizable_under_concurrent_clients
from tests.support.processes import ServiceProcess, kvservice_process
from tests.support.redis_servers import RedisProcess, running_redis

DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


@contextmanager
def replicas(redis: RedisProcess, count: int, *args: str) -> Iterator[list[ServiceProcess]]:
    """`count` kvservice processes on `redis`."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(kvservice_process("--store", redis.url, *args))
            for _ in range(count)
        ]


# -- 1 and 2: replicas racing ----------------------------------------------------------------------


def test_two_replicas_on_one_redis_are_linearizable_and_history_agrees(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis, replicas(redis, 2) as (first, second):
        assert_linearizable_under_concurrent_clients([first.url, second.url])


def test_concurrent_create_only_posts_over_two_replicas_let_exactly_one_win(
    tmp_path: Path,
) -> None:
    with running_redis(tmp_path) as redis, replicas(redis, 2) as (first, second):
        start = threading.Barrier(20)

        def create(number: int) -> int:
            url = (first, second)[number % 2].url
            with requests.Session() as session:
                session.get(f"{url}/_health", timeout=5)  # connected before the race starts
                start.wait(10)
                return session.post(f"{url}/race", data=f"writer{number}", timeout=10).status_code

        with ThreadPoolExecutor(20) as pool:
            statuses = Counter(pool.map(create, range(20)))
        history = requests.get(f"{first.url}/race/history", timeout=5).json()
    print(f"\n20 create-only POSTs over 2 replicas: {dict(statuses)}; history {len(history)} entry")
    assert statuses == {201: 1, 409: 19}
    assert len(history) == 1


def test_the_test_clients_checks_pass_against_each_replica(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis, replicas(redis, 2) as services:
        for service in services:
            with HTTPKVClient(service.url) as client:
                results = run_checks(CHECKS, client)
            failed = [result.test for result in results if result.verdict is not Verdict.PASSED]
            assert not failed, f"{service.url}: {failed}"


# -- 3: kill -9 of Redis in the middle of a write load ---------------------------------------------


@dataclass(frozen=True)
class Write:
    key: str
    value: str
    status: int | None
    """None: no answer at all (which kvservice must never do: it answers 503)."""
    etag: str | None
    detail: str = ""


def write_until(url: str, writer: int, stop: threading.Event) -> list[Write]:
    """One writer's PUTs to keys of its own, one at a time, until `stop`."""
    writes: list[Write] = []
    with requests.Session() as session:
        while not stop.is_set():
            key, value = f"w{writer}k{len(writes) % 5}", f"w{writer}n{len(writes)}"
            try:
                response = session.put(f"{url}/{key}", data=value, timeout=10)
            except requests.RequestException as error:
                writes.append(Write(key, value, None, None, str(error)))
                continue
            detail = response.json().get("detail", "") if response.status_code >= 400 else ""
            writes.append(
                Write(key, value, response.status_code, response.headers.get("ETag"), detail)
            )
    return writes


def test_kill_9_of_redis_mid_write_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with (
        running_redis(tmp_path, *DURABLE) as redis,
        replicas(redis, 1, "--store-timeout", "1") as (kv,),
    ):
        stop = threading.Event()
        with ThreadPoolExecutor(4) as pool:
            writers = [pool.submit(write_until, kv.url, writer, stop) for writer in range(4)]
            time.sleep(1.0)
            redis.stop(signal.SIGKILL)
            time.sleep(1.0)
            redis.start()  # reads its append-only file
            time.sleep(0.5)
            stop.set()
            writes = [write for writer in writers for write in writer.result()]
        acknowledged = [write for write in writes if write.status == 204]
        statuses = Counter(write.status for write in writes)
        unknown = [write for write in writes if "may or may not" in write.detail]
        problems = [
            problem
            for key in sorted({write.key for write in writes})
            for problem in after_restart_problems(kv.url, [w for w in writes if w.key == key])
        ]
    print(
        f"\nkill -9 of Redis mid-load: {len(writes)} PUTs, statuses {dict(statuses)}, "
        f"{len(acknowledged)} acknowledged, {len(unknown)} reported as of unknown outcome; "
        f"after the restart, problems: {problems or 'none'}"
    )
    assert set(statuses) <= {204, 503}, statuses
    assert acknowledged and statuses[503] > 0, "the kill happened under load"
    assert not problems


def after_restart_problems(url: str, writes: list[Write]) -> list[str]:
    """What is wrong with one key after the restart, given its writes in the order made: its
    history must hold every acknowledged write, in order, and no write that was refused as
    'nothing was changed'; its value must be the last acknowledged one (with that ETag) or a
    later write whose outcome was unknown."""
    key = writes[0].key
    listed = [
        entry["value"] for entry in reversed(requests.get(f"{url}/{key}/history", timeout=5).json())
    ]
    acked = [write.value for write in writes if write.status == 204]
    refused = {write.value for write in writes if "nothing was changed" in write.detail}
    problems = []
    if [value for value in listed if value in acked] != acked:
        problems.append(f"{key}: history lacks an acknowledged write")
    if refused & set(listed):
        problems.append(f"{key}: history holds a write that was said to change nothing")
    positions = [n for n, write in enumerate(writes) if write.status == 204]
    if positions:
        last = writes[positions[-1]]
        later_unknown = {
            w.value for w in writes[positions[-1] + 1 :] if "may or may not" in w.detail
        }
        current = requests.get(f"{url}/{key}", timeout=5)
        if current.text not in {last.value} | later_unknown:
            problems.append(
                f"{key}: holds {current.text!r}, not the last acknowledged {last.value!r}"
            )
        elif current.text == last.value and current.headers["ETag"] != last.etag:
            problems.append(f"{key}: ETag {current.headers['ETag']} is not {last.etag}")
    return problems


# -- 4: Redis full ---------------------------------------------------------------------------------


def test_a_full_redis_gives_507_for_writes_while_reads_and_deletes_work(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis, replicas(redis, 1) as (kv,):
        stored: dict[str, str] = {}
        with requests.Session() as session:
            # Connections open and scripts loaded before the limit is measured from.
            assert session.put(f"{kv.url}/warm", data="up", timeout=5).status_code == 204
            stored["warm"] = "up"
            redis.limit_memory(256 * 1024)
            for number in range(100_000):
                key, value = f"full{number}", f"value{number}" * 20
                response = session.put(f"{kv.url}/{key}", data=value, timeout=5)
                if response.status_code == 507:
                    refusal = response.json()
                    break
                assert response.status_code == 204, response.text
                stored[key] = value
            else:
                raise AssertionError("Redis never filled up")
            # Redis checks used_memory against maxmemory before each write, and used memory
            # moves (buffers come and go), so a write after a refusal may fit again: whatever
            # it is told, it must be told the truth.
            after_full = {}
            for number in range(50):
                key, value = f"more{number}", f"value{number}" * 20
                after_full[key] = session.put(f"{kv.url}/{key}", data=value, timeout=5).status_code
                if after_full[key] == 204:
                    stored[key] = value
            served = sum(
                session.get(f"{kv.url}/{key}", timeout=5).text == value
                for key, value in stored.items()
            )
            deleted = session.delete(f"{kv.url}/warm", timeout=5).status_code
            after_delete = session.get(f"{kv.url}/warm", timeout=5).status_code
    print(
        f"\nRedis at maxmemory (256 KiB over what it held): {len(stored)} writes acknowledged, "
        "then "
        f"507 ({refusal['detail']!r}); 50 more: {Counter(after_full.values())}; {served} of "
        f"{len(stored)} read back; a delete: {deleted}"
    )
    assert refusal["type"] == "urn:kvservice:problem:store-full"
    assert set(after_full.values()) <= {204, 507} and 507 in after_full.values()
    assert served == len(stored), "nothing acknowledged was lost"
    assert (deleted, after_delete) == (204, 404)


# -- 5: Redis stopped for 5 s under load -----------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    sent_at: float
    answered_at: float
    status: int | None
    error: str = ""


def hammer(url: str, client: int, stop: threading.Event) -> list[Answer]:
    """GETs and PUTs on a few keys, one at a time, until `stop`."""
    answers: list[Answer] = []
    with requests.Session() as session:
        while not stop.is_set():
            sent_at = time.monotonic()
            key = f"h{client}k{len(answers) % 3}"
            try:
                if len(answers) % 2:
                    response = session.get(f"{url}/{key}", timeout=10)
                else:
                    response = session.put(f"{url}/{key}", data=f"v{len(answers)}", timeout=10)
                answers.append(Answer(sent_at, time.monotonic(), response.status_code))
            except requests.RequestException as error:
                answers.append(Answer(sent_at, time.monotonic(), None, str(error)))
    return answers


def test_redis_stopped_for_5_s_under_load_gives_only_503_then_full_service(
    tmp_path: Path,
) -> None:
    with (
        running_redis(tmp_path, *DURABLE) as redis,
        replicas(redis, 1, "--store-timeout", "1") as (kv,),
    ):
        stop = threading.Event()
        with ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(hammer, kv.url, client, stop) for client in range(8)]
            time.sleep(1.0)
            redis.stop()
            stopped_at = time.monotonic()
            time.sleep(5.0)
            restarting_at = time.monotonic()
            redis.start()
            back_at = time.monotonic()
            time.sleep(2.0)
            stop.set()
            answers = [answer for client in clients for answer in client.result()]
    while_down = [a for a in answers if stopped_at <= a.sent_at <= restarting_at]
    after = [a for a in answers if a.sent_at >= back_at + 1.0]
    first_failure_after_return = max(
        (a.sent_at - back_at for a in answers if a.sent_at >= back_at and a.status == 503),
        default=0.0,
    )
    statuses = Counter(a.status for a in answers)
    print(
        f"\nRedis stopped for 5 s under 8 clients: {len(answers)} requests, statuses "
        f"{dict(statuses)}; while down: {Counter(a.status for a in while_down)}; last 503 "
        f"{first_failure_after_return * 1000:.0f} ms after Redis was back; from 1 s after: "
        f"{Counter(a.status for a in after)}; sent while down, answered after the restart: "
        f"{Counter(a.status for a in answers if a.sent_at <= restarting_at < a.answered_at)}"
    )
    assert set(statuses) <= {200, 204, 404, 503}, "no 500, and never no answer at all"
    # Sent while Redis was down: 503, unless it was still waiting for Redis (--store-timeout)
    # when Redis came back, and then rightly succeeded.
    assert any(a.status == 503 for a in while_down)
    assert all(
        a.status == 503 or (a.status in (200, 204, 404) and a.answered_at > restarting_at)
        for a in while_down
    )
    assert after and all(a.status in (200, 204, 404) for a in after), "full service within 1 s"
