"""schemathesis drives running services with requests generated from docs/openapi/.

Every response must conform to the document: a documented status code, content type,
schema and headers (schemathesis's checks), no 5xx but the documented 507, and refusals
for data the document calls invalid. Three runs, each bounded and seeded:

- every kvservice operation, stateless: EXAMPLES_PER_OPERATION generated requests (plus
  schemathesis's example and boundary-value phases) against a `python -m kvservice` process
  whose small budget and one-second window make generated writes fill the store (507) and
  empty it again;
- kvservice, stateful: sequences that follow the document's links (write, then read, list
  history, delete with the returned ETag), each on a fresh store so that replays agree;
- the test client, stateless, running its checks against a real kvservice.

The figures (statuses per operation) are printed at the end of the module.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from kvservice.config import duration_s
from kvservice.store.memory import MemoryStore
from testclient.clients import HTTPKVClient
from testclient.http_api import create_app as create_testclient_app
from tests.reliability.test_openapi import (
    KVSERVICE_DOCUMENT,
    TESTCLIENT_DOCUMENT,
    load_document,
)
from tests.support.fakes import serve_wsgi
from tests.support.processes import ServiceProcess, kvservice_process
from tests.support.servers import kv_app_with_metrics

SEED = 20240605
EXAMPLES_PER_OPERATION = 50
TESTCLIENT_EXAMPLES_PER_OPERATION = 5
STATEFUL_SCENARIOS = 15
STATEFUL_STEPS = 10
DEADLINE = timedelta(seconds=3)
"""Per generated request, check included; loopback requests take milliseconds."""
REQUEST_TIMEOUT_S = 5.0
SMALL_BUDGET = ("--max-bytes", "8192", "--history-window", "1", "--watch-max-wait", "200ms")
MAX_WAIT_S = 0.2
"""A long-poll waits at most this long (--watch-max-wait), so a generated one stays quick."""

StatusCounts = collections.defaultdict[str, collections.Counter[int]]


def _config(examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": examples, "deterministic": True, "database": "none"},
            "checks": {
                # 507 is the documented answer to a full store; any other 5xx fails.
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "507"]},
                # Valid requests may still be answered otherwise, as the contract says: a
                # read whose If-None-Match holds (304), a missing key, a taken key, a stale
                # ETag, a resume position gone (another life, out of the window), a JSON
                # value over 1024 bytes, a full store.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "304", "404", "409", "410", "412", "413", "507"]
                },
                "negative_data_rejection": {
                    "expected-statuses": ["400", "404", "405", "413", "414", "431"]
                },
            },
            "operations": [
                {
                    # History outlives its key's value: after DELETE /k, /k/history is 200
                    # and lists the delete. GET /k itself must still be 404.
                    "include-path": "/{key}/history",
                    "checks": {"use_after_free": {"enabled": False}},
                },
                {
                    # An event stream is answered for as long as the client listens: a
                    # request-response fuzzer cannot read it (test_watch_http.py does).
                    "include-operation-id": "watch",
                    "enabled": False,
                },
            ],
        }
    )


KVSERVICE = schemathesis.openapi.from_path(
    KVSERVICE_DOCUMENT, config=_config(EXAMPLES_PER_OPERATION)
)
TESTCLIENT = schemathesis.openapi.from_path(
    TESTCLIENT_DOCUMENT, config=_config(TESTCLIENT_EXAMPLES_PER_OPERATION)
)
_SCHEMAS = load_document(KVSERVICE_DOCUMENT)["components"]["schemas"]
_HEADER_PATTERNS = {
    "If-Match": re.compile(_SCHEMAS["EntityTagCondition"]["pattern"]),
    "If-None-Match": re.compile(_SCHEMAS["EntityTagCondition"]["pattern"]),
    "Last-Event-ID": re.compile(_SCHEMAS["Position"]["pattern"]),
}


def _mislabelled_positive(case: schemathesis.Case[Any]) -> bool:
    """schemathesis's boundary-value phase cannot draw header values for a pattern that needs
    characters other than letters and digits; it then sends a placeholder ("", "0") that does
    not match the pattern and still calls the case valid. Such a case cannot test acceptance."""
    if case.meta is None or case.meta.generation.mode is not schemathesis.GenerationMode.POSITIVE:
        return False
    headers: Mapping[str, str] = case.headers or {}
    return any(
        name in headers and not pattern.fullmatch(headers[name])
        for name, pattern in _HEADER_PATTERNS.items()
    )


def _deadline_refused_by_design(case: schemathesis.Case[Any]) -> bool:
    """The deadline parameters exclude each other, and PATCH needs one of them: a 400 the
    document says but OpenAPI cannot express (no schema ties query parameters together), so
    such a case cannot test acceptance either."""
    given = {"ttl", "expires_at"} & set(case.query or {})
    return len(given) == 2 or (case.method.upper() == "PATCH" and not given)


def _wait_refused_by_design(case: schemathesis.Case[Any]) -> bool:
    """A long-poll's `wait` past --watch-max-wait is a 400 the document says (the bound is
    the server's configuration, which no schema can know); `key` with `prefix` likewise."""
    query = case.query or {}
    wait = query.get("wait")
    try:
        too_long = isinstance(wait, str) and duration_s(wait) > MAX_WAIT_S
    except ValueError:
        too_long = False
    return too_long or {"key", "prefix"} <= set(query)


def _excluded_checks(case: schemathesis.Case[Any]) -> list[Any]:
    if (
        _mislabelled_positive(case)
        or _deadline_refused_by_design(case)
        or _wait_refused_by_design(case)
    ):
        return [positive_data_acceptance]
    return []


@pytest.fixture(scope="module")
def status_counts(request: pytest.FixtureRequest) -> Iterator[StatusCounts]:
    """Statuses seen per operation, printed when the module is done."""
    counts: StatusCounts = collections.defaultdict(collections.Counter)
    yield counts
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nschemathesis statuses per operation:")
        for label, statuses in sorted(counts.items()):
            figures = " ".join(f"{status}:{n}" for status, n in sorted(statuses.items()))
            print(f"  {label:32} {sum(statuses.values()):5} requests  {figures}")


# -- kvservice, one operation at a time -------------------------------------------------------


@pytest.fixture(scope="module")
def small_kv() -> Iterator[ServiceProcess]:
    """A kvservice whose budget generated writes soon fill and whose window soon empties."""
    with kvservice_process(*SMALL_BUDGET) as service:
        yield service


@KVSERVICE.parametrize()
@hypothesis.settings(deadline=DEADLINE)
def test_kvservice_answers_as_documented(
    case: schemathesis.Case[Any], small_kv: ServiceProcess, status_counts: StatusCounts
) -> None:
    response = case.call_and_validate(
        base_url=small_kv.url, timeout=REQUEST_TIMEOUT_S, excluded_checks=_excluded_checks(case)
    )
    status_counts[case.operation.label][response.status_code] += 1


# -- kvservice, following the document's links ------------------------------------------------


class _SwappableApp:
    """A WSGI app that forwards to whichever kvservice app was installed last."""

    def __init__(self) -> None:
        self.app = kv_app_with_metrics(MemoryStore())
        self._lock = threading.Lock()

    def install(self, app: Callable[..., Iterable[bytes]]) -> None:
        with self._lock:
            self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)


def test_kvservice_sequences_follow_the_documented_links(status_counts: StatusCounts) -> None:
    swappable = _SwappableApp()
    with serve_wsgi(swappable) as url:

        class Workflow(KVSERVICE.as_state_machine()):  # type: ignore[misc]
            def setup(self) -> None:
                # A fresh store per scenario: hypothesis replays scenarios and needs the same
                # answers. A long window keeps the answers independent of the clock.
                swappable.install(
                    kv_app_with_metrics(MemoryStore(max_bytes=8192, history_window_ms=60_000))
                )

            def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
                return {"base_url": url, "timeout": REQUEST_TIMEOUT_S}

            def validate_response(
                self,
                response: schemathesis.Response,
                case: schemathesis.Case[Any],
                additional_checks: Any = None,
                **kwargs: Any,
            ) -> None:
                case.validate_response(
                    response,
                    additional_checks=additional_checks,
                    excluded_checks=_excluded_checks(case),
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )

            def after_call(
                self, response: schemathesis.Response, case: schemathesis.Case[Any]
            ) -> None:
                super().after_call(response, case)
                status_counts[f"stateful {case.operation.label}"][response.status_code] += 1

        Workflow.run(
            settings=hypothesis.settings(
                max_examples=STATEFUL_SCENARIOS,
                stateful_step_count=STATEFUL_STEPS,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
        )
    assert status_counts["stateful GET /{key}"][200] > 0, "no link led from a write to a read"


# -- the test client --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def testclient_url() -> Iterator[str]:
    """The test client's app on a loopback port, checking a real kvservice process."""
    with (
        kvservice_process() as kv,
        HTTPKVClient(kv.url) as client,
        serve_wsgi(create_testclient_app(client, kv.url)) as url,
    ):
        yield url


@TESTCLIENT.parametrize()
@hypothesis.settings(deadline=timedelta(seconds=30))
def test_testclient_answers_as_documented(
    case: schemathesis.Case[Any], testclient_url: str, status_counts: StatusCounts
) -> None:
    response = case.call_and_validate(base_url=testclient_url, timeout=30)
    status_counts[f"testclient {case.operation.label}"][response.status_code] += 1


# -- the run can fail -------------------------------------------------------------------------


def _answering_wrongly(status: str, content_type: str) -> Callable[..., Iterable[bytes]]:
    """A kvservice app whose every answer has this status line and Content-Type."""
    app = kv_app_with_metrics(MemoryStore())

    def wrong(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(_: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [(name, value) for name, value in headers if name.lower() != "content-type"]
            return start_response(status, [*kept, ("Content-Type", content_type)], exc_info)

        body: Iterable[bytes] = app(environ, start)
        return body

    return wrong


@pytest.mark.parametrize(
    ("status", "content_type", "failure"),
    [
        ("404 Not Found", "text/html", "Undocumented Content-Type"),
        ("500 Internal Server Error", "application/problem+json", "Server error"),
        ("418 I'm a teapot", "application/problem+json", "Undocumented status code"),
    ],
)
def test_an_answer_off_the_document_fails(status: str, content_type: str, failure: str) -> None:
    case = KVSERVICE["/{key}"]["GET"].Case(path_parameters={"key": "missing"})
    with (
        serve_wsgi(_answering_wrongly(status, content_type)) as url,
        pytest.raises(schemathesis.errors.FailureGroup, match=failure),
    ):
        case.call_and_validate(base_url=url, timeout=REQUEST_TIMEOUT_S)
