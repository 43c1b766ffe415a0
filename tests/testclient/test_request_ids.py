"""Every HTTP request of the test client carries a fresh X-Request-ID, and the step that
judged the reply records it, so a failure names the line to grep for in kvservice's log."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import requests

from testclient.checks import CHECKS, Verdict, run_checks
from testclient.clients import HTTPKVClient
from testclient.http_api import create_app
from tests.support.fakes import serve_wsgi

Environ = dict[str, Any]


def recording_health_then(
    status: str, seen: list[str]
) -> Callable[[Environ, Callable[..., Any]], Iterable[bytes]]:
    """A kvservice look-alike: a correct /_health, then `status` for everything else;
    records the X-Request-ID of every request."""

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(environ.get("HTTP_X_REQUEST_ID", ""))
        if environ["PATH_INFO"] == "/_health":
            body = b'{"status":"ok","service":"kvservice"}'
            start_response("200 OK", [("Content-Type", "application/json")])
        else:
            body = b""
            start_response(status, [("Content-Length", "0")])
        return [body]

    return app


def test_each_request_has_a_fresh_id_and_the_reply_keeps_it() -> None:
    seen: list[str] = []
    with (
        serve_wsgi(recording_health_then("204 No Content", seen)) as url,
        HTTPKVClient(url) as client,
    ):
        first, second = client.put("key", b"1"), client.delete("key")

    assert seen == [first.request_id, second.request_id]
    assert first.request_id != second.request_id
    assert all(len(request_id) == 32 for request_id in seen)
    assert f"X-Request-ID {first.request_id}" in str(first)


def test_a_failing_step_names_the_request_it_judged() -> None:
    seen: list[str] = []
    with (
        serve_wsgi(recording_health_then("500 Internal Server Error", seen)) as url,
        HTTPKVClient(url) as client,
    ):
        [result] = run_checks(["test_deletion"], client)

    assert result.verdict is Verdict.FAILED
    [failed, *_] = result.failed_steps
    [request_id] = failed.request_ids
    assert request_id in seen
    assert f"X-Request-ID {request_id}" in failed.actual


def test_the_json_of_a_run_lists_request_ids(kv_url: str) -> None:
    with HTTPKVClient(kv_url) as client, serve_wsgi(create_app(client, kv_url, CHECKS)) as url:
        result = requests.post(url + "/test_deletion", timeout=10).json()

    assert result["passed"] is True
    ids = [request_id for step in result["steps"] for request_id in step["request_ids"]]
    assert ids and len(set(ids)) == len(ids)
