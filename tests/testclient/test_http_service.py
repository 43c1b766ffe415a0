"""The test client's HTTP interface, served by kvservice's cheroot server on a loopback port.

Status codes must tell the three endings apart (200 passed, 502 answered wrongly, 503 not
reachable), bodies must have the documented JSON shape, and the test client's own errors
must be problem documents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from testclient.checks import CHECKS
from testclient.clients import HTTPKVClient, KVClient
from testclient.http_api import create_app
from tests.support.fakes import (
    DeleteStillServedKV,
    ExplodingKV,
    InMemoryKV,
    UnreachableKV,
    closed_port_url,
    serve_wsgi,
)

KV_URL = "http://kv.example:3000"
RESULT_FIELDS = {"test", "passed", "verdict", "kv_url", "duration_ms", "steps"}
STEP_FIELDS = {"step", "expected", "actual", "passed", "skipped", "request_ids"}
PROBLEM_FIELDS = {"type", "title", "status", "detail", "request_id"}

ServeTestClient = Callable[[KVClient], str]


class SwitchableKV:
    """Delegates to the client the current test installed, so one server serves every test."""

    def __init__(self) -> None:
        self.target: KVClient = InMemoryKV()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


@pytest.fixture(scope="module")
def served_app() -> Iterator[tuple[SwitchableKV, str]]:
    """The test client's app on a loopback port (stopping a server takes up to half a second)."""
    switchable = SwitchableKV()
    with serve_wsgi(create_app(switchable, KV_URL)) as url:
        yield switchable, url


@pytest.fixture
def serve_testclient(served_app: tuple[SwitchableKV, str]) -> Iterator[ServeTestClient]:
    """Point the served test client at a KV client; returns the test client's base URL."""
    switchable, url = served_app

    def serve(client: KVClient) -> str:
        switchable.target = client
        return url

    yield serve
    switchable.target = InMemoryKV()


def assert_problem(response: requests.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem.keys() == PROBLEM_FIELDS
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert problem["status"] == status
    assert "Traceback" not in response.text
    return problem


# -- the index and health ------------------------------------------------------------------------


def test_the_index_lists_every_check_and_the_kv_url(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(InMemoryKV())

    response = requests.get(url + "/", timeout=5)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    index = response.json()
    assert index["kv_url"] == KV_URL
    listed = {check["name"]: check for check in index["checks"]}
    assert list(listed) == [*CHECKS, "test_all"]
    for name, check in listed.items():
        assert check["path"] == f"/{name}"
        assert check["description"]


def test_health_answers_without_touching_the_kvservice(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(UnreachableKV())

    response = requests.get(url + "/_health", timeout=5)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- running checks: 200, 502, 503 ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_passing_check_is_200_with_every_step(
    serve_testclient: ServeTestClient, method: str
) -> None:
    url = serve_testclient(InMemoryKV())

    response = requests.request(method, url + "/test_deletion", timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    result = response.json()
    assert result.keys() == RESULT_FIELDS
    assert (result["test"], result["passed"], result["verdict"]) == (
        "test_deletion",
        True,
        "passed",
    )
    assert result["kv_url"] == KV_URL
    assert isinstance(result["duration_ms"], float)
    assert result["steps"]
    for step in result["steps"]:
        assert step.keys() == STEP_FIELDS
        assert step["passed"] is True


def test_a_wrong_answer_is_502_and_names_the_step(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(DeleteStillServedKV())

    response = requests.get(url + "/test_deletion", timeout=10)

    assert response.status_code == 502
    result = response.json()
    assert (result["passed"], result["verdict"]) == (False, "failed")
    [failed] = [step for step in result["steps"] if not step["passed"]]
    assert "after the delete" in failed["step"]
    assert failed["expected"] == "not found"
    assert failed["actual"].startswith("found b'deleteme-")


def test_an_unreachable_kvservice_is_503(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(HTTPKVClient(closed_port_url(), timeout=(1.0, 1.0)))

    response = requests.post(url + "/test_overwrite", timeout=10)

    assert response.status_code == 503
    result = response.json()
    assert (result["passed"], result["verdict"]) == (False, "unreachable")
    assert "Connection refused" in result["steps"][-1]["actual"]


def test_all_checks_pass_together(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(InMemoryKV())

    response = requests.get(url + "/test_all", timeout=10)

    assert response.status_code == 200
    summary = response.json()
    assert summary.keys() == {"test", "passed", "verdict", "kv_url", "duration_ms", "results"}
    assert (summary["test"], summary["passed"]) == ("test_all", True)
    assert [result["test"] for result in summary["results"]] == list(CHECKS)
    assert all(result.keys() == RESULT_FIELDS for result in summary["results"])


@pytest.mark.parametrize(
    ("client", "status", "verdict"),
    [(DeleteStillServedKV(), 502, "failed"), (UnreachableKV(), 503, "unreachable")],
    ids=["failed", "unreachable"],
)
def test_all_checks_answer_with_the_worst_ending(
    serve_testclient: ServeTestClient, client: KVClient, status: int, verdict: str
) -> None:
    url = serve_testclient(client)

    response = requests.post(url + "/test_all", timeout=10)

    assert response.status_code == status
    summary = response.json()
    assert (summary["passed"], summary["verdict"]) == (False, verdict)


def test_the_real_kvservice_passes_every_check(
    serve_testclient: ServeTestClient, kv_url: str
) -> None:
    with HTTPKVClient(kv_url) as client:
        url = serve_testclient(client)

        response = requests.get(url + "/test_all", timeout=30)

    assert response.status_code == 200, response.text
    assert response.json()["passed"] is True


# -- the test client's own errors ------------------------------------------------------------------


def test_an_unknown_check_is_a_404_problem(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(InMemoryKV())

    problem = assert_problem(requests.get(url + "/test_nothing", timeout=5), 404)

    assert "No check named 'test_nothing'" in str(problem["detail"])


def test_an_unknown_path_is_a_404_problem(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(InMemoryKV())

    assert_problem(requests.get(url + "/a/b", timeout=5), 404)


def test_a_wrong_method_is_a_405_problem_with_allow(serve_testclient: ServeTestClient) -> None:
    url = serve_testclient(InMemoryKV())

    response = requests.delete(url + "/test_deletion", timeout=5)

    problem = assert_problem(response, 405)
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert "DELETE is not allowed" in str(problem["detail"])


def test_a_bug_is_a_logged_500_problem_without_a_traceback(
    serve_testclient: ServeTestClient, caplog: pytest.LogCaptureFixture
) -> None:
    url = serve_testclient(ExplodingKV())

    with caplog.at_level(logging.ERROR, logger="testclient.http"):
        response = requests.get(url + "/test_deletion", timeout=5)

    assert_problem(response, 500)
    assert "a bug in the client" not in response.text
    [record] = [r for r in caplog.records if r.name == "testclient.http"]
    assert record.exc_info is not None and "a bug in the client" in str(record.exc_info[1])
