"""Results as JSON documents: the one shape the HTTP service, `run --format json`, the
prober's last results and the page all share. Pure functions; no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from testclient.checks import ALL_CHECKS, CheckResult, Verdict, overall_verdict


def result_document(result: CheckResult, kv_url: str) -> dict[str, Any]:
    """One check's result: its verdict and every step (with the request IDs it judged)."""
    return {
        "test": result.test,
        "passed": result.passed,
        "verdict": result.verdict.value,
        "kv_url": kv_url,
        "duration_ms": result.duration_ms,
        "steps": [dataclasses.asdict(step) for step in result.steps],
    }


def run_document(results: Sequence[CheckResult], kv_url: str, duration_ms: float) -> dict[str, Any]:
    """Several checks run together: the worst verdict, and one result document each."""
    verdict = overall_verdict(results)
    return {
        "test": ALL_CHECKS,
        "passed": verdict is Verdict.PASSED,
        "verdict": verdict.value,
        "kv_url": kv_url,
        "duration_ms": duration_ms,
        "results": [result_document(result, kv_url) for result in results],
    }
