"""The test client's HTTP adapter: a Bottle app that runs checks and answers with their steps.

The only module of testclient that imports bottle. The status code tells the four endings
apart, so `curl --fail` and scripts need not parse the body: 200 every step passed, 502 the
kvservice answered wrongly, 503 it could not be checked (no answer, a timeout, or the URL
answered like something other than a kvservice: the verdict says which), 501 a check could
not run over the kvservice URL's transport (nothing failed, but not everything was checked).
Errors of the test client itself (unknown check, wrong method, a bug) are problem+json
documents, never Bottle's HTML page or a traceback.

`GET /` is the list of checks as JSON for curl and scripts, and the page (testclient/web/)
for a browser, by the request's Accept header (`prefers_html`). Every run, on demand here or
scheduled by the prober, is recorded in one `ResultBook`: `GET /_results` gives each check's
last result (what the page shows), `GET /_metrics` the Prometheus metrics.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

import bottle

from kvservice.http.problems import answer_errors_with_problems
from testclient.checks import ALL_CHECKS, CHECKS, Check, Verdict, overall_verdict, run_checks
from testclient.clients import KVClient
from testclient.documents import result_document, run_document
from testclient.results import ResultBook, Trigger

logger = logging.getLogger("testclient.http")

STATUS_BY_VERDICT = {
    Verdict.PASSED: 200,
    Verdict.FAILED: 502,
    Verdict.UNREACHABLE: 503,
    Verdict.UNAUTHORIZED: 503,  # the kvservice did not serve the test client; the body says why
    Verdict.SKIPPED: 501,
    Verdict.NOT_KVSERVICE: 503,
}
"""The response status for each way a run can end."""

STATIC_FILES = {"page.css": "text/css", "page.js": "text/javascript"}
"""The page's files under /_static/, from testclient/web/, and their content types."""


def create_app(
    client: KVClient,
    kv_url: str,
    checks: Mapping[str, Check] = CHECKS,
    book: ResultBook | None = None,
) -> bottle.Bottle:
    """Build the WSGI app that runs `checks` through `client` (which talks to `kv_url`) and
    records every run in `book` (one of its own by default; the prober shares it)."""
    book = book or ResultBook(kv_url, checks)
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
    app.route("/_results", ["GET", "HEAD"], lambda: _json_response(results_document(book, checks)))
    app.route("/_metrics", ["GET", "HEAD"], lambda: _metrics(book))
    app.route("/_static/<name>", ["GET", "HEAD"], _static)
    app.route(f"/{ALL_CHECKS}", ["GET", "POST"], lambda: _run_all(client, book, checks))
    app.route(
        "/<name:re:test_[A-Za-z0-9_]+>",
        ["GET", "POST"],
        lambda name: _run_one(client, book, checks, name),
    )
    return app


# -- routes ---------------------------------------------------------------------------------


def _index(kv_url: str, checks: Mapping[str, Check]) -> bytes:
    # Caches must keep the HTML and the JSON answer apart.
    bottle.response.set_header("Vary", "Accept")
    if prefers_html(bottle.request.get_header("Accept", "")):
        return _page(kv_url)
    listed = [
        {"name": name, "path": f"/{name}", "description": check.description}
        for name, check in checks.items()
    ]
    listed.append(
        {"name": ALL_CHECKS, "path": f"/{ALL_CHECKS}", "description": "every check, at once"}
    )
    return _json_response({"kv_url": kv_url, "checks": listed})


def _run_one(client: KVClient, book: ResultBook, checks: Mapping[str, Check], name: str) -> bytes:
    if name not in checks:
        raise bottle.HTTPError(
            404, f"No check named {name!r}; GET / lists them: {', '.join(checks)}, {ALL_CHECKS}."
        )
    [result] = run_checks([name], client, checks)
    book.record([result], Trigger.ON_DEMAND)
    document = result_document(result, book.kv_url)
    return _json_response(document, STATUS_BY_VERDICT[result.verdict])


def _run_all(client: KVClient, book: ResultBook, checks: Mapping[str, Check]) -> bytes:
    started = time.perf_counter()
    results = run_checks(checks, client, checks)
    book.record(results, Trigger.ON_DEMAND)
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    document = run_document(results, book.kv_url, duration_ms)
    return _json_response(document, STATUS_BY_VERDICT[overall_verdict(results)])


def results_document(book: ResultBook, checks: Mapping[str, Check]) -> dict[str, Any]:
    """Every check with its description and its last run (null if it never ran), for the
    page: when it finished (Unix seconds), its age, what started it, and its result."""
    now = book.now()
    last_runs = book.last_runs()
    listed = []
    for name, check in checks.items():
        last = last_runs.get(name)
        listed.append(
            {
                "name": name,
                "path": f"/{name}",
                "description": check.description,
                "last": None
                if last is None
                else {
                    "finished_at": last.finished_at_s,
                    "age_s": round(max(now - last.finished_at_s, 0.0), 1),
                    "trigger": last.trigger.value,
                    "result": result_document(last.result, book.kv_url),
                },
            }
        )
    return {"kv_url": book.kv_url, "now": now, "checks": listed}


def _metrics(book: ResultBook) -> bytes:
    page, content_type = book.metrics.exposition(bottle.request.headers.get("Accept"))
    bottle.response.content_type = content_type
    bottle.response.set_header("Cache-Control", "no-store")
    return page


# -- the page ---------------------------------------------------------------------------------


def prefers_html(accept: str) -> bool:
    """Whether an Accept header ranks text/html above application/json: a browser's does
    ("text/html,...,*/*;q=0.8"); curl's "*/*", an empty one or "application/json" do not.
    A tie goes to JSON, the answer scripts have always had."""
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def _quality(accept: str, media_type: str) -> float:
    """The q of the most specific range in `accept` matching `media_type` (RFC 9110 12.5.1)."""
    kind = media_type.split("/")[0]
    best_specificity, best_q = -1, 0.0
    for item in accept.split(","):
        range_, *parameters = (part.strip() for part in item.split(";"))
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(range_.lower(), -1)
        if specificity <= best_specificity:
            continue
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best_specificity, best_q = specificity, q
    return best_q


def _page(kv_url: str) -> bytes:
    template = resources.files("testclient.web").joinpath("page.html").read_text("utf-8")
    bottle.response.content_type = "text/html; charset=utf-8"
    bottle.response.set_header("Cache-Control", "no-store")
    return template.replace("{{kv_url}}", html.escape(kv_url)).encode("utf-8")


def _static(name: str) -> bytes:
    if name not in STATIC_FILES:
        raise bottle.HTTPError(
            404, f"No file {name!r}; the page's files are {', '.join(STATIC_FILES)}."
        )
    bottle.response.content_type = f"{STATIC_FILES[name]}; charset=utf-8"
    return resources.files("testclient.web").joinpath(name).read_bytes()


# -- responses ------------------------------------------------------------------------------


def _json_response(document: Mapping[str, Any], status: int = 200) -> bytes:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    # Every GET runs the checks anew; a cached answer would be a stale verdict.
    bottle.response.set_header("Cache-Control", "no-store")
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
