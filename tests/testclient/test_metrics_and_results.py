"""The test client's /_metrics (Prometheus text, parsed with prometheus_client's own parser),
/_results (each check's last run, for the page) and GET / for browsers versus scripts; over
real sockets, with a fake clock for the time of the last run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
import requests
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from testclient.checks import CHECKS
from testclient.clients import KVClient
from testclient.http_api import create_app, prefers_html
from testclient.results import ResultBook
from tests.support.fakes import DeleteStillServedKV, InMemoryKV, UnreachableKV, serve_wsgi

KV_URL = "http://kv.example:3000"
NOW_S = 1_700_000_000.0
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

Serve = Callable[..., str]


class FakeWallClock:
    """Unix seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = NOW_S

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture
def serve(clock: FakeWallClock) -> Iterator[Serve]:
    """Serve a test client app for a KV client, with a book on the fake clock; returns its URL."""
    with ExitStack() as stack:

        def start(client: KVClient, kv_url: str = KV_URL) -> str:
            book = ResultBook(kv_url, CHECKS, clock=clock)
            return stack.enter_context(serve_wsgi(create_app(client, kv_url, CHECKS, book)))

        yield start


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /_metrics by (name, sorted labels)."""
    response = requests.get(url + "/_metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4  # what Prometheus reads
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def labels(check: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"check": check, "kv_url": KV_URL, **extra}.items()))


# -- /_metrics --------------------------------------------------------------------------------


def test_before_any_run_the_counters_are_zero_and_there_is_no_verdict(serve: Serve) -> None:
    url = serve(InMemoryKV())

    found = samples(url)

    for name in CHECKS:
        assert found[("testclient_check_runs_total", labels(name))] == 0
        assert found[("testclient_check_failures_total", labels(name))] == 0
    assert not [key for key in found if key[0] == "testclient_check_verdict"]


def test_a_passing_run_sets_verdict_duration_time_and_counts(serve: Serve) -> None:
    url = serve(InMemoryKV())

    result = requests.post(url + "/test_deletion", timeout=10).json()
    found = samples(url)

    verdicts = {
        dict(key[1])["verdict"]: value
        for key, value in found.items()
        if key[0] == "testclient_check_verdict" and dict(key[1])["check"] == "test_deletion"
    }
    assert verdicts == {
        "passed": 1,
        "failed": 0,
        "unreachable": 0,
        "skipped": 0,
        "unauthorized": 0,
        "not kvservice": 0,
    }
    duration = found[("testclient_check_duration_seconds", labels("test_deletion"))]
    assert duration == pytest.approx(result["duration_ms"] / 1000)
    assert found[("testclient_check_last_run_timestamp_seconds", labels("test_deletion"))] == NOW_S
    assert found[("testclient_check_runs_total", labels("test_deletion"))] == 1
    assert found[("testclient_check_failures_total", labels("test_deletion"))] == 0
    assert found[("testclient_check_runs_total", labels("test_overwrite"))] == 0


@pytest.mark.parametrize(
    ("client", "verdict"),
    [(DeleteStillServedKV(), "failed"), (UnreachableKV(), "unreachable")],
    ids=["failed", "unreachable"],
)
def test_a_check_that_does_not_pass_moves_the_failures_counter(
    serve: Serve, client: KVClient, verdict: str
) -> None:
    url = serve(client)

    requests.post(url + "/test_deletion", timeout=10)
    requests.post(url + "/test_all", timeout=10)
    found = samples(url)

    assert found[("testclient_check_runs_total", labels("test_deletion"))] == 2
    assert found[("testclient_check_failures_total", labels("test_deletion"))] == 2
    key = ("testclient_check_verdict", labels("test_deletion", verdict=verdict))
    assert found[key] == 1
    assert found[("testclient_check_verdict", labels("test_deletion", verdict="passed"))] == 0


def test_each_app_has_its_own_registry(serve: Serve) -> None:
    first = serve(InMemoryKV())
    second = serve(InMemoryKV(), "http://other.example:3000")

    requests.post(first + "/test_deletion", timeout=10)

    assert samples(first)[("testclient_check_runs_total", labels("test_deletion"))] == 1
    other = dict(labels("test_deletion"), kv_url="http://other.example:3000")
    assert samples(second)[("testclient_check_runs_total", tuple(sorted(other.items())))] == 0


# -- /_results --------------------------------------------------------------------------------


def test_results_say_never_run_then_the_last_result_and_its_age(
    serve: Serve, clock: FakeWallClock
) -> None:
    url = serve(DeleteStillServedKV())

    before = requests.get(url + "/_results", timeout=5).json()
    requests.post(url + "/test_deletion", timeout=10)
    clock.now += 42
    after = requests.get(url + "/_results", timeout=5).json()

    assert [check["name"] for check in before["checks"]] == list(CHECKS)
    assert all(check["last"] is None for check in before["checks"])
    assert all(
        check["description"] == CHECKS[check["name"]].description for check in before["checks"]
    )
    deletion = after["checks"][0]
    assert deletion["last"]["age_s"] == 42
    assert deletion["last"]["finished_at"] == NOW_S
    assert deletion["last"]["trigger"] == "on demand"
    assert deletion["last"]["result"]["verdict"] == "failed"
    assert any(not step["passed"] for step in deletion["last"]["result"]["steps"])
    assert after["checks"][1]["last"] is None


# -- GET /: the page for browsers, JSON for scripts -------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("text/*, application/json;q=0.5", True),
        ("*/*", False),
        ("", False),
        ("application/json", False),
        ("application/json, text/html", False),
        ("text/html;q=0.4, application/json;q=0.5", False),
        ("text/html;q=0, */*", False),
    ],
)
def test_prefers_html(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_a_browser_gets_the_page_and_curl_gets_json(serve: Serve) -> None:
    url = serve(InMemoryKV(), "http://kv.example:3000/<b>bold</b>")

    page = requests.get(url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=5)
    listing = requests.get(url + "/", headers={"Accept": "*/*"}, timeout=5)

    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Vary"] == "Accept"
    assert "&lt;b&gt;bold&lt;/b&gt;" in page.text and "<b>bold" not in page.text
    assert '<script src="_static/page.js"' in page.text
    assert listing.headers["Content-Type"] == "application/json"
    assert listing.json()["kv_url"] == "http://kv.example:3000/<b>bold</b>"


def test_the_page_files_are_served_and_nothing_else(serve: Serve) -> None:
    url = serve(InMemoryKV())

    script = requests.get(url + "/_static/page.js", timeout=5)
    style = requests.get(url + "/_static/page.css", timeout=5)
    other = requests.get(url + "/_static/__init__.py", timeout=5)

    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "textContent" in script.text and ".innerHTML" not in script.text
    assert style.headers["Content-Type"] == "text/css; charset=utf-8"
    assert other.status_code == 404
    assert other.headers["Content-Type"] == "application/problem+json"
