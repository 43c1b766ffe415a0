"""The test client's HTTP adapter: a Bottle app that runs checks and answers with their steps.

The only module of testclient that imports bottle. The status code tells the four endings
apart, so `curl --fail` and scripts need not parse the body: 200 every step passed, 502 the
kvservice answered wrongly, 503 it could not be reached or timed out, 501 a check could not
run over the kvservice URL's transport (nothing failed, but not everything was checked).
Errors of the test client itself (unknown check, wrong method, a bug) are problem+json
documents, never Bottle's HTML page or a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import bottle

from kvservice.http.problems import answer_errors_with_problems
from testclient.checks import (
    ALL_CHECKS,
    CHECKS,
    Check,
    CheckResult,
    Verdict,
    overall_verdict,
    run_checks,
)
from testclient.clients import KVClient

logger = logging.getLogger("testclient.http")

STATUS_BY_VERDICT = {
    Verdict.PASSED: 200,
    Verdict.FAILED: 502,
    Verdict.UNREACHABLE: 503,
    Verdict.UNAUTHORIZED: 503,  # the kvservice did not serve the test client; the body says why
    Verdict.SKIPPED: 501,
}
"""The response status for each way a run can end."""


def create_app(
    client: KVClient, kv_url: str, checks: Mapping[str, Check] = CHECKS
) -> bottle.Bottle:
    """Build the WSGI app that runs `checks` through `client` (which talks to `kv_url`)."""
    app = bottle.Bottle(catchall=True)
    app.uninstall(True)  # no JSON or template plugins: routes return bytes they serialized
    answer_errors_with_problems(
        app,
        not_found=lambda: f"No resource at {bottle.request.path!r}; GET / lists the checks.",
        failed="The test client failed while answering; it logged why.",
        logger=logger,
    )

    app.route("/", ["GET", "HEAD"], lambda: _index(kv_url, checks))
    app.route("/_health", ["GET", "HEAD"], lambda: _json_response({"status": "ok"}))
    app.route(f"/{ALL_CHECKS}", ["GET", "POST"], lambda: _run_all(client, kv_url, checks))
    app.route(
        "/<name:re:test_[A-Za-z0-9_]+>",
        ["GET", "POST"],
        lambda name: _run_one(client, kv_url, checks, name),
    )
    return app


# -- routes ---------------------------------------------------------------------------------


def _index(kv_url: str, checks: Mapping[str, Check]) -> bytes:
    listed = [
        {"name": name, "path": f"/{name}", "description": check.description}
        for name, check in checks.items()
    ]
    listed.append(
        {"name": ALL_CHECKS, "path": f"/{ALL_CHECKS}", "description": "every check, at once"}
    )
    return _json_response({"kv_url": kv_url, "checks": listed})


def _run_one(client: KVClient, kv_url: str, checks: Mapping[str, Check], name: str) -> bytes:
    if name not in checks:
        raise bottle.HTTPError(
            404, f"No check named {name!r}; GET / lists them: {', '.join(checks)}, {ALL_CHECKS}."
        )
    [result] = run_checks([name], client, checks)
    _log(result)
    return _json_response(result_document(result, kv_url), STATUS_BY_VERDICT[result.verdict])


def _run_all(client: KVClient, kv_url: str, checks: Mapping[str, Check]) -> bytes:
    started = time.perf_counter()
    results = run_checks(checks, client, checks)
    for result in results:
        _log(result)
    verdict = overall_verdict(results)
    document = {
        "test": ALL_CHECKS,
        "passed": verdict is Verdict.PASSED,
        "verdict": verdict.value,
        "kv_url": kv_url,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "results": [result_document(result, kv_url) for result in results],
    }
    return _json_response(document, STATUS_BY_VERDICT[verdict])


def result_document(result: CheckResult, kv_url: str) -> dict[str, Any]:
    """One check's result as the JSON document the HTTP interface answers with."""
    return {
        "test": result.test,
        "passed": result.passed,
        "verdict": result.verdict.value,
        "kv_url": kv_url,
        "duration_ms": result.duration_ms,
        "steps": [dataclasses.asdict(step) for step in result.steps],
    }


def _log(result: CheckResult) -> None:
    level = logging.INFO if result.passed else logging.WARNING
    logger.log(level, "%s %s in %.1f ms", result.test, result.verdict.value, result.duration_ms)
    for step in result.failed_steps:
        logger.log(level, "  %s: expected %s, got %s", step.step, step.expected, step.actual)


# -- responses ------------------------------------------------------------------------------


def _json_response(document: Mapping[str, Any], status: int = 200) -> bytes:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    # Every GET runs the checks anew; a cached answer would be a stale verdict.
    bottle.response.set_header("Cache-Control", "no-store")
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
