"""The test client's Prometheus metrics: one registry per app, a few series per check.

The only module of testclient that imports prometheus_client. Every series has the labels
`check` (test_deletion, ...) and `kv_url` (the kvservice checked), so several test clients
can be scraped into one Prometheus:

    testclient_check_verdict{verdict}            1 for the last run's verdict, 0 for the others
                                                 (passed, failed, unreachable, skipped, not
                                                 kvservice): alert on verdict="passed" == 0
    testclient_check_duration_seconds            how long the last run took
    testclient_check_last_run_timestamp_seconds  when the last run finished (Unix seconds)
    testclient_check_runs_total                  runs, scheduled by the prober and on demand
    testclient_check_failures_total              runs that failed, could not reach the
                                                 kvservice, or found something else at its URL

A verdict gauge rather than a 1/0 "passed" gauge, so a dashboard tells a broken kvservice
(failed) from a network problem (unreachable) without parsing logs. Skipped runs (a check the
transport cannot express, such as versions over RESP) are not failures: they would fire on
every round of a RESP prober. The verdict and timing series appear once a check has run; the
counters start at 0 for every check, so `rate()` works from the first scrape.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

from testclient.checks import CheckResult, Verdict

FAILURE_VERDICTS = frozenset(
    {Verdict.FAILED, Verdict.UNREACHABLE, Verdict.UNAUTHORIZED, Verdict.NOT_KVSERVICE}
)
"""The verdicts `testclient_check_failures_total` counts."""

_LABELS = ("check", "kv_url")


class CheckMetrics:
    """The series above, in a registry of their own (not prometheus_client's global one, so
    two apps in one process, as in the tests, never share or clash)."""

    def __init__(self, kv_url: str, checks: Iterable[str]) -> None:
        self.kv_url = kv_url
        self.registry = CollectorRegistry()
        self._verdict = Gauge(
            "testclient_check_verdict",
            "1 for the verdict of the check's last run, 0 for the other verdicts",
            [*_LABELS, "verdict"],
            registry=self.registry,
        )
        self._duration = Gauge(
            "testclient_check_duration_seconds",
            "How long the check's last run took",
            _LABELS,
            registry=self.registry,
        )
        self._last_run = Gauge(
            "testclient_check_last_run_timestamp_seconds",
            "When the check's last run finished, in Unix seconds",
            _LABELS,
            registry=self.registry,
        )
        self._runs = Counter(
            "testclient_check_runs",
            "Runs of the check, scheduled and on demand",
            _LABELS,
            registry=self.registry,
        )
        self._failures = Counter(
            "testclient_check_failures",
            "Runs of the check that failed, were unreachable or found no kvservice",
            _LABELS,
            registry=self.registry,
        )
        for check in checks:
            self._runs.labels(check, kv_url)
            self._failures.labels(check, kv_url)

    def record(self, result: CheckResult, finished_at_s: float) -> None:
        """Count one run of a check and make it the check's last."""
        labels = (result.test, self.kv_url)
        for verdict in Verdict:
            self._verdict.labels(*labels, verdict.value).set(verdict is result.verdict)
        self._duration.labels(*labels).set(result.duration_ms / 1000)
        self._last_run.labels(*labels).set(finished_at_s)
        self._runs.labels(*labels).inc()
        if result.verdict in FAILURE_VERDICTS:
            self._failures.labels(*labels).inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every series, in the format a scraper's Accept header asks for (Prometheus text
        0.0.4 by default, OpenMetrics on request, as kvservice's), and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
