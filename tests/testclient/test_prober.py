"""The prober: rounds on a schedule that never overlap, results recorded and logged, and a
clean stop; with a fake clock and a fake wait, so no test waits for real time."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testclient.checks import CHECKS, Check, CheckResult, Verdict
from testclient.clients import KVClient
from testclient.config import load_config
from testclient.prober import Prober
from testclient.results import ResultBook, Trigger
from tests.support.fakes import DeleteStillServedKV, InMemoryKV
from tests.support.processes import start_service


class FakeTime:
    """A monotonic clock that moves only when a round works or the prober waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.round_starts: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def slow_checks(time_: FakeTime, durations_s: list[float]) -> dict[str, Check]:
    """One check whose n-th run takes durations_s[n] seconds of fake time."""

    def run(client: KVClient) -> CheckResult:
        time_.round_starts.append(time_.now)
        time_.now += durations_s[len(time_.round_starts) - 1]
        return CheckResult("test_slow", Verdict.PASSED, (), 0.0)

    return {"test_slow": Check(run, "takes a while")}


def test_rounds_start_an_interval_apart_and_a_slow_round_delays_the_next() -> None:
    fake = FakeTime()
    checks = slow_checks(fake, [5.0, 45.0, 10.0, 1.0])
    book = ResultBook("http://kv.example:3000", checks)
    prober = Prober(InMemoryKV(), book, 30.0, checks, clock=fake.clock, wait=fake.wait)

    prober.run(rounds=4)

    # 5 s round: wait 25. 45 s round: no wait, the next starts as it ends. Then 20.
    assert fake.waits == [25.0, 0.0, 20.0]
    assert fake.round_starts == [1000.0, 1030.0, 1075.0, 1105.0]
    starts = fake.round_starts
    assert all(later - earlier >= 30.0 for earlier, later in itertools.pairwise(starts))


def test_each_round_records_every_check_as_scheduled() -> None:
    book = ResultBook("http://kv.example:3000", CHECKS, clock=lambda: 1_700_000_000.0)
    fake = FakeTime()
    prober = Prober(InMemoryKV(), book, 30.0, clock=fake.clock, wait=fake.wait)

    prober.run(rounds=2)

    last = book.last_runs()
    assert list(last) == list(CHECKS)
    assert {run.trigger for run in last.values()} == {Trigger.SCHEDULED}
    assert {run.result.verdict for run in last.values()} == {Verdict.PASSED}
    assert {run.finished_at_s for run in last.values()} == {1_700_000_000.0}
    [runs] = [
        m
        for m in text_string_to_metric_families(book.metrics.exposition()[0].decode())
        if m.name == "testclient_check_runs"
    ]
    assert {s.value for s in runs.samples if s.name.endswith("_total")} == {2.0}


def test_a_failing_round_is_logged_with_its_failing_step(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    book = ResultBook("http://kv.example:3000", CHECKS)
    prober = Prober(DeleteStillServedKV(), book, 30.0, clock=fake.clock, wait=fake.wait)

    with caplog.at_level(logging.INFO, logger="testclient.results"):
        prober.run(rounds=1)

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "testclient.results"
    ]
    assert "test_deletion failed in" in warnings[0] and "(scheduled)" in warnings[0]
    assert any("after the delete" in line and "expected not found" in line for line in warnings)
    assert book.last_runs()["test_deletion"].result.verdict is Verdict.FAILED


def test_a_bug_in_a_round_is_logged_and_the_next_round_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    calls: list[int] = []

    def explode(client: KVClient) -> CheckResult:
        calls.append(1)
        raise RuntimeError("a bug in a check")

    checks = {"test_bug": Check(explode, "raises")}
    prober = Prober(
        InMemoryKV(), ResultBook("u", checks), 30.0, checks, clock=fake.clock, wait=fake.wait
    )

    with caplog.at_level(logging.ERROR, logger="testclient.prober"):
        prober.run(rounds=2)

    assert len(calls) == 2
    assert [r.getMessage() for r in caplog.records] == ["a prober round failed"] * 2


def test_stop_ends_the_wait_between_rounds_at_once() -> None:
    book = ResultBook("http://kv.example:3000", CHECKS)
    prober = Prober(InMemoryKV(), book, 3600.0)  # the real clock and the stop event's wait
    prober.start()
    deadline = time.monotonic() + 10
    while len(book.last_runs()) < len(CHECKS) and time.monotonic() < deadline:
        time.sleep(0.01)

    stopping = time.monotonic()
    prober.stop()

    assert time.monotonic() - stopping < 1.0
    assert not any(thread.name == "prober" for thread in threading.enumerate())
    assert len(book.last_runs()) == len(CHECKS)


def test_serve_with_an_interval_probes_and_stops_cleanly_on_sigterm(kv_url: str) -> None:
    service = start_service(
        "testclient", "serve", "--kv-url", kv_url, "--interval", "0.2", capture=True
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            metrics = requests.get(service.url + "/_metrics", timeout=5).text
            runs = [
                sample.value
                for family in text_string_to_metric_families(metrics)
                for sample in family.samples
                if sample.name == "testclient_check_runs_total"
                and sample.labels["check"] == "test_deletion"
            ]
            if runs and runs[0] >= 2:  # two scheduled rounds, nothing asked on demand
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the prober did not run twice in 15 s: {metrics}")
    finally:
        _, stderr = service.stop(signal.SIGTERM)

    assert service.process.returncode == 0, stderr
    assert "probing every 0.2 s" in stderr
    assert "received SIGTERM" in stderr
    assert "test_deletion passed in" in stderr and "(scheduled)" in stderr


def test_the_interval_is_off_by_default_and_set_by_flag_or_environment() -> None:
    assert load_config(CHECKS, ["serve"], {}).interval_s is None
    assert load_config(CHECKS, ["serve"], {"TESTCLIENT_INTERVAL": "30"}).interval_s == 30.0
    assert load_config(CHECKS, ["serve", "--interval", "2.5"], {}).interval_s == 2.5
    assert load_config(CHECKS, ["serve"], {"TESTCLIENT_INTERVAL": ""}).interval_s is None
