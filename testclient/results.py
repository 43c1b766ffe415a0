"""The last result of every check, wherever it ran: the prober's rounds and on-demand runs
through the HTTP service both record here, and the page, `/_results` and `/_metrics` read it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from testclient.checks import CheckResult
from testclient.metrics import CheckMetrics

logger = logging.getLogger("testclient.results")


class Trigger(StrEnum):
    """What started a run."""

    SCHEDULED = "scheduled"
    ON_DEMAND = "on demand"


@dataclass(frozen=True)
class LastRun:
    """A check's most recent result, when it finished (Unix seconds) and what started it."""

    result: CheckResult
    finished_at_s: float
    trigger: Trigger


class ResultBook:
    """Records results: keeps the last of each check, counts them in the metrics and logs
    them (failures at WARNING, with each failed step's expected and actual). Thread-safe.

    `clock` gives Unix seconds (time.time); tests pass a fake one.
    """

    def __init__(
        self, kv_url: str, checks: Collection[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.kv_url = kv_url
        self.metrics = CheckMetrics(kv_url, checks)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, LastRun] = {}

    def record(self, results: Iterable[CheckResult], trigger: Trigger) -> None:
        """Record the results of one run, finished now."""
        finished_at_s = self._clock()
        for result in results:
            _log(result, trigger)
            with self._lock:
                self._last[result.test] = LastRun(result, finished_at_s, trigger)
                self.metrics.record(result, finished_at_s)

    def last_runs(self) -> dict[str, LastRun]:
        """The last run of every check that has run, by name."""
        with self._lock:
            return dict(self._last)

    def now(self) -> float:
        """The book's clock, in Unix seconds (what "age" is measured against)."""
        return self._clock()


def _log(result: CheckResult, trigger: Trigger) -> None:
    level = logging.INFO if result.passed else logging.WARNING
    logger.log(
        level,
        "%s %s in %.1f ms (%s)",
        result.test,
        result.verdict.value,
        result.duration_ms,
        trigger.value,
    )
    for step in result.failed_steps:
        logger.log(level, "  %s: expected %s, got %s", step.step, step.expected, step.actual)
