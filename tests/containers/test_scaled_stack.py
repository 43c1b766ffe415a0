"""The scaled stack (docs/scaled/docker-compose.yml) while it runs: the test client through the
load balancer, a replica killed under load, Redis stopped and started under load.

`scripts/test-containers` brings the stack up and runs this file with the stack's addresses
and container ids in the environment; without them (any other run) it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

HEALTHY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Stack:
    lb_url: str
    testclient_url: str
    replicas: list[str]
    """Container ids of kv1, kv2, kv3."""
    redis: str
    """Container id of redis."""


@pytest.fixture(scope="module")
def stack() -> Stack:
    names = ("SCALED_LB_URL", "SCALED_TESTCLIENT_URL", "SCALED_REPLICAS", "SCALED_REDIS")
    if not all(os.environ.get(name) for name in names):
        pytest.skip("runs from scripts/test-containers against a running scaled stack")
    return Stack(
        os.environ["SCALED_LB_URL"],
        os.environ["SCALED_TESTCLIENT_URL"],
        os.environ["SCALED_REPLICAS"].split(),
        os.environ["SCALED_REDIS"],
    )


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def wait_until(what: str, ready: object) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} after {HEALTHY_TIMEOUT_S} s"
        time.sleep(0.2)


def healthy(container: str) -> bool:
    return docker("inspect", "--format", "{{.State.Health.Status}}", container) == "healthy"


@dataclass(frozen=True)
class Answer:
    key: str
    sent_at: float
    answered_at: float
    status: int | None
    body: str = ""


def load(url: str, client: int, stop: threading.Event) -> list[Answer]:
    """PUTs and GETs of keys of its own through the load balancer, one at a time."""
    answers: list[Answer] = []
    with requests.Session() as session:
        while not stop.is_set():
            sent_at = time.monotonic()
            key = f"scaled{client}n{len(answers)}"
            try:
                response = session.put(f"{url}/{key}", data=key, timeout=10)
                answered_at = time.monotonic()
                answers.append(
                    Answer(key, sent_at, answered_at, response.status_code, response.text[:300])
                )
            except requests.RequestException as error:
                answers.append(Answer(key, sent_at, time.monotonic(), None, str(error)))
    return answers


class UnderLoad:
    """Clients writing through the load balancer on threads, between `start()` and `stop()`."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(load, url, n, self._stop) for n in range(clients)]

    def stop(self) -> list[Answer]:
        self._stop.set()
        answers = [answer for future in self._futures for answer in future.result()]
        self._pool.shutdown()
        return answers


def acknowledged_but_missing(url: str, answers: list[Answer]) -> list[str]:
    """The keys whose acknowledged write is not served back (each key was written once)."""
    keys = [answer.key for answer in answers if answer.status == 204]
    with requests.Session() as session:
        return [key for key in keys if session.get(f"{url}/{key}", timeout=10).text != key]


def test_the_test_clients_checks_pass_through_the_load_balancer(stack: Stack) -> None:
    response = requests.get(f"{stack.testclient_url}/test_all", timeout=60)
    failed = [r["test"] for r in response.json()["results"] if not r["passed"]]
    assert response.status_code == 200, failed


def test_traffic_keeps_flowing_when_a_replica_is_killed(stack: Stack) -> None:
    victim = stack.replicas[0]
    traffic = UnderLoad(stack.lb_url)
    time.sleep(1.0)
    pid = docker("inspect", "--format", "{{.State.Pid}}", victim)
    killed_at = time.monotonic()
    subprocess.run(["kill", "-KILL", pid], check=False)  # a crash, as the host sees one
    time.sleep(4.0)
    answers = traffic.stop()
    statuses = Counter(answer.status for answer in answers)
    after = [answer for answer in answers if answer.sent_at > killed_at + 2.0]
    at_the_kill = [
        answer for answer in answers if killed_at - 0.1 <= answer.sent_at <= killed_at + 2.0
    ]
    print(
        f"\none of 3 replicas killed under 4 clients: {len(answers)} PUTs through haproxy, "
        f"statuses {dict(statuses)}; in the 2 s after the kill "
        f"{Counter(a.status for a in at_the_kill)}, from 2 s on {Counter(a.status for a in after)}"
        f"; unanswered: {[a.body for a in answers if not a.status]}"
    )
    assert after and all(answer.status == 204 for answer in after)
    # Only a request in flight on the killed replica can fail (haproxy does not resend what
    # may have been applied); there are four clients, so at most four.
    assert sum(count for status, count in statuses.items() if status != 204) <= 4
    assert not acknowledged_but_missing(stack.lb_url, answers)
    wait_until("the killed replica restarted and healthy", lambda: healthy(victim))


def test_redis_down_gives_503_and_back_gives_service_with_no_acknowledged_write_lost(
    stack: Stack,
) -> None:
    traffic = UnderLoad(stack.lb_url)
    time.sleep(1.0)
    docker("stop", "--time", "0", stack.redis)  # SIGKILL at once, and no automatic restart
    stopped_at = time.monotonic()
    time.sleep(3.0)
    starting_at = time.monotonic()
    docker("start", stack.redis)
    wait_until("redis healthy again", lambda: healthy(stack.redis))
    back_at = time.monotonic()
    time.sleep(2.0)
    answers = traffic.stop()
    down = [a for a in answers if stopped_at + 0.5 <= a.sent_at <= starting_at]
    after = [a for a in answers if a.sent_at > back_at + 1.0]
    print(
        f"\nRedis killed for 3 s under 4 clients: {len(answers)} PUTs through haproxy, "
        f"statuses {dict(Counter(a.status for a in answers))}; while down "
        f"{Counter(a.status for a in down)}, from 1 s after it was back "
        f"{Counter(a.status for a in after)}; unanswered: "
        f"{[a.body for a in answers if not a.status]}"
    )
    assert {a.status for a in answers} <= {204, 503}, "never a 500, never no answer"
    # Sent while Redis was down: kvservice's own 503 problem until the load balancer's
    # readiness checks take the replicas out, then the load balancer's; or a 204 if it was
    # still waiting for Redis (--store-timeout) when Redis came back, and rightly succeeded.
    assert any(a.status == 503 for a in down)
    assert all(
        (a.status == 503 and ("store-unavailable" in a.body or "is ready" in a.body))
        or (a.status == 204 and a.answered_at > starting_at)
        for a in down
    ), "a 503 problem, kvservice's or the load balancer's, while Redis is down"
    assert after and all(a.status == 204 for a in after)
    lost = acknowledged_but_missing(stack.lb_url, answers)
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
