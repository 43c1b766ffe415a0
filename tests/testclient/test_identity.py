"""Before any check the test client confirms its URL answers like a kvservice, and says so
plainly when something else answers, instead of pasting another server's page into a step.
Against real servers on loopback sockets: plain http.server, kvservice, redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from kvservice.store.memory import MemoryStore
from testclient.__main__ import main
from testclient.checks import CHECKS, Verdict, run_checks
from testclient.clients import HTTPKVClient, RespKVClient
from testclient.http_api import create_app
from tests.support.fakes import closed_port_url, serve_wsgi
from tests.support.foreign import foreign_http_server
from tests.support.rawresp import running_resp
from tests.support.redis_servers import RedisProcess


@pytest.fixture
def html_404_url() -> Iterator[str]:
    with foreign_http_server() as url:
        yield url


def test_kvservice_is_recognised(kv_url: str) -> None:
    with HTTPKVClient(kv_url) as client:
        assert client.identify() is None


@pytest.mark.parametrize(
    ("status", "content_type", "body", "reason"),
    [
        (404, "text/html", b"<h1>Not Found</h1>", "status 404 text/html to GET /_health"),
        (200, "text/html", b"<p>all good</p>", "status 200 text/html to GET /_health"),
        (200, "application/json", b"{oops", "status 200 application/json that is not JSON"),
        (200, "application/json", b'{"healthy": true}', 'without "status": "ok"'),
        (200, "application/json", b'{"status": "ok"}', 'without "service": "kvservice"'),
    ],
    ids=["html-404", "html-200", "bad-json", "other-json", "another-service-ok"],
)
def test_another_http_server_is_named_for_what_it_answered(
    status: int, content_type: str, body: bytes, reason: str
) -> None:
    with foreign_http_server(status, content_type, body) as url, HTTPKVClient(url) as client:
        said = client.identify()

    assert said is not None
    assert said.startswith(f"{url} answered like something else: ")
    assert reason in said


def test_no_check_runs_against_something_else(html_404_url: str) -> None:
    with HTTPKVClient(html_404_url) as client:
        results = run_checks(CHECKS, client)

    assert {result.verdict for result in results} == {Verdict.NOT_KVSERVICE}
    for result in results:
        [step] = result.steps
        assert step.actual.startswith(f"{html_404_url} answered like something else: status 404")
        assert "<h1>" not in step.actual


def test_run_exits_5_and_says_what_answered_once(
    html_404_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--kv-url", html_404_url])

    report = capsys.readouterr().out
    assert code == 5
    assert report.count(f"{html_404_url} answered like something else: status 404 text/html") == 1
    assert "<h1>" not in report
    assert report.rstrip().endswith(f"{len(CHECKS)} not kvservice; overall not kvservice")


def test_an_unreachable_url_is_still_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--kv-url", closed_port_url(), "--connect-timeout", "1"])

    assert code == 3
    assert "/_health: no connection" in capsys.readouterr().out


def test_the_test_clients_own_http_service_is_not_kvservice(
    kv_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its /_health also says {"status": "ok"}: a run against it must not check it as a
    kvservice (nine failures), but say what answered."""
    with HTTPKVClient(kv_url) as client, serve_wsgi(create_app(client, kv_url)) as testclient_url:
        code = main(["run", "--kv-url", testclient_url])

    report = capsys.readouterr().out
    assert code == 5
    assert (
        f"{testclient_url} answered like something else: status 200 application/json without "
        '"service": "kvservice" to GET /_health'
    ) in report
    assert report.rstrip().endswith(f"{len(CHECKS)} not kvservice; overall not kvservice")


def test_the_http_service_answers_503_not_kvservice(html_404_url: str) -> None:
    with HTTPKVClient(html_404_url) as client, serve_wsgi(create_app(client, html_404_url)) as url:
        response = requests.post(url + "/test_deletion", timeout=10)

    assert response.status_code == 503
    result = response.json()
    assert result["verdict"] == "not kvservice"
    assert "answered like something else: status 404" in result["steps"][0]["actual"]


# -- over RESP: INFO server names kvservice -----------------------------------------------------


def test_kvservice_over_resp_is_recognised() -> None:
    with running_resp(MemoryStore()) as resp, RespKVClient(resp.url) as client:
        assert client.identify() is None


def test_a_real_redis_is_not_kvservice(redis_server: RedisProcess) -> None:
    with RespKVClient(redis_server.url) as client:
        said = client.identify()

    assert said == (
        f"{redis_server.url} answered like something else: "
        "INFO server gives server_name 'redis', not kvservice"
    )


def test_an_http_server_on_a_redis_url_is_not_kvservice(html_404_url: str) -> None:
    resp_url = html_404_url.replace("http://", "redis://")
    with RespKVClient(resp_url, timeout=(1.0, 2.0)) as client:
        said = client.identify()

    assert said is not None
    assert said.startswith(f"{resp_url} answered like something else: b'<!DOCTYPE HTML>")
