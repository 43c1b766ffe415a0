"""HTTPKVClient over real sockets: status tables, wire details, history parsing, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from testclient.clients import HTTPKVClient, KVUnreachable, Outcome
from tests.support.fakes import closed_port_url, serve_wsgi

Environ = dict[str, Any]


def canned(
    status: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    seen: list[Environ] | None = None,
) -> Callable[[Environ, Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app giving the same answer to every request, recording each request's environ."""

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if seen is not None:
            environ["test.body"] = environ["wsgi.input"].read()
            seen.append(environ)
        start_response(status, [*(headers or []), ("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.fixture
def client_for() -> Iterator[Callable[..., HTTPKVClient]]:
    """Serve an app on a loopback port and return an HTTPKVClient pointed at it."""
    with ExitStack() as stack:

        def start(app: Callable[..., Iterable[bytes]]) -> HTTPKVClient:
            url = stack.enter_context(serve_wsgi(app))
            return stack.enter_context(HTTPKVClient(url, timeout=(1.0, 2.0)))

        yield start


# -- status codes become outcomes, per operation ----------------------------------------------


def test_a_success_code_of_another_operation_is_unexpected(client_for: Any) -> None:
    client = client_for(canned("200 OK", body=b"fine"))

    reply = client.put("key", b"value")

    assert reply.outcome is Outcome.UNEXPECTED
    assert reply.evidence == "HTTP 200 OK"


def test_an_error_answer_carries_its_problem_detail(client_for: Any) -> None:
    problem = b'{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"boom"}'
    client = client_for(
        canned("500 Internal Server Error", [("Content-Type", "application/problem+json")], problem)
    )

    reply = client.get("key")

    assert reply.outcome is Outcome.UNEXPECTED
    assert reply.evidence == "HTTP 500 Internal Server Error: boom"
    assert "HTTP 500" in str(reply)


def test_a_non_problem_error_body_is_quoted(client_for: Any) -> None:
    client = client_for(
        canned("502 Bad Gateway", [("Content-Type", "text/html")], b"<h1>proxy</h1>")
    )

    assert client.delete("key").evidence == "HTTP 502 Bad Gateway: <h1>proxy</h1>"


def test_created_needs_the_location_of_the_key(client_for: Any) -> None:
    client = client_for(canned("201 Created", [("Location", "/elsewhere"), ("ETag", '"1"')]))

    reply = client.create("key", b"value")

    assert reply.outcome is Outcome.UNEXPECTED
    assert "Location is '/elsewhere', not '/key'" in reply.evidence


def test_a_write_reports_its_version(client_for: Any) -> None:
    client = client_for(canned("204 No Content", [("ETag", '"abc-1"')]))

    reply = client.put("key", b"value")

    assert reply.outcome is Outcome.STORED
    assert reply.version == '"abc-1"'


# -- what goes on the wire ----------------------------------------------------------------------


def test_requests_carry_the_key_quoted_the_body_and_the_conditions(client_for: Any) -> None:
    seen: list[Environ] = []
    client = client_for(canned("204 No Content", seen=seen))

    client.put("a/b", b"\x00value", content_type="text/plain", only_if_version='"7"')
    client.put("key", b"", only_if_absent=True)
    client.delete("key", only_if_version='"8"')

    put, conditional_put, delete = seen
    assert put["REQUEST_URI"] == "/a%2Fb"
    assert put["test.body"] == b"\x00value"
    assert put["CONTENT_TYPE"] == "text/plain"
    assert put["HTTP_IF_MATCH"] == '"7"'
    assert conditional_put["HTTP_IF_NONE_MATCH"] == "*"
    assert "HTTP_IF_MATCH" not in conditional_put
    assert (delete["REQUEST_METHOD"], delete["HTTP_IF_MATCH"]) == ("DELETE", '"8"')


# -- history parsing ----------------------------------------------------------------------------


def history_app(body: bytes, content_type: str = "application/json") -> Any:
    return canned("200 OK", [("Content-Type", content_type)], body)


def test_history_decodes_text_base64_and_deletes(client_for: Any) -> None:
    body = (
        b'[{"value":null,"timestamp":3},'
        b'{"value":"/w==","encoding":"base64","timestamp":2},'
        b'{"value":"caf\xc3\xa9","timestamp":1}]'
    )
    client = client_for(history_app(body))

    history = client.history("key")

    assert history.outcome is Outcome.FOUND
    assert history.values == [None, b"\xff", "caf\u00e9".encode()]
    assert [entry.timestamp_ms for entry in history.entries] == [3, 2, 1]


def test_history_tells_an_expiry_from_a_delete(client_for: Any) -> None:
    body = b'[{"value":null,"timestamp":5,"expired":true},{"value":null,"timestamp":4}]'
    client = client_for(history_app(body))

    history = client.history("key")

    assert [(entry.value, entry.expired) for entry in history.entries] == [
        (None, True),
        (None, False),
    ]


@pytest.mark.parametrize(
    ("headers", "outcome", "deadline"),
    [
        ([("KV-Expires-At", "1605097943904")], Outcome.FOUND, 1605097943904),
        ([], Outcome.FOUND, None),
        ([("KV-Expires-At", "soon")], Outcome.UNEXPECTED, None),
        ([("KV-Expires-At", "-1")], Outcome.UNEXPECTED, None),
    ],
)
def test_expiry_reads_the_deadline_header(
    client_for: Any, headers: list[tuple[str, str]], outcome: Outcome, deadline: int | None
) -> None:
    seen: list[Environ] = []
    client = client_for(canned("200 OK", headers, seen=seen))

    reply = client.expiry("key")

    assert (reply.outcome, reply.expires_at_ms) == (outcome, deadline)
    assert seen[0]["REQUEST_METHOD"] == "HEAD"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "malformed"),
        (b'{"value":"x","timestamp":1}', "expected a JSON list"),
        (b'[{"value":"x"}]', "not an object with value and timestamp"),
        (b'[{"value":"x","timestamp":1,"extra":1}]', "not an object with value and timestamp"),
        (b'[{"value":"x","timestamp":"1"}]', "timestamp that is not an integer"),
        (b'[{"value":"x","timestamp":true}]', "timestamp that is not an integer"),
        (b'[{"value":1,"timestamp":1}]', "neither a string nor null"),
        (b'[{"value":"x","encoding":"hex","timestamp":1}]', "unknown encoding"),
        (b'[{"value":"***","encoding":"base64","timestamp":1}]', "not valid base64"),
        (b'[{"value":null,"encoding":"base64","timestamp":1}]', "a delete with an encoding"),
        (b'[{"value":null,"timestamp":1,"expired":false}]', "an expiry but not"),
        (b'[{"value":"x","timestamp":1,"expired":true}]', "an expiry but not"),
    ],
)
def test_history_off_the_contract_is_unexpected(
    client_for: Any, body: bytes, complaint: str
) -> None:
    client = client_for(history_app(body))

    history = client.history("key")

    assert history.outcome is Outcome.UNEXPECTED
    assert complaint in history.evidence


def test_history_must_be_served_as_json(client_for: Any) -> None:
    client = client_for(history_app(b"[]", content_type="text/plain"))

    history = client.history("key")

    assert history.outcome is Outcome.UNEXPECTED
    assert "Content-Type is 'text/plain'" in history.evidence


# -- transport failures and threads --------------------------------------------------------------


def test_a_closed_port_raises_kv_unreachable() -> None:
    url = closed_port_url()
    with HTTPKVClient(url) as client, pytest.raises(KVUnreachable) as raised:
        client.get("key")

    assert str(raised.value).startswith(f"GET {url}/key: no connection")
    assert "Connection refused" in str(raised.value)


def test_a_slow_answer_raises_kv_unreachable(client_for: Any) -> None:
    answered = threading.Event()

    def slow(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        answered.wait(3)
        start_response("204 No Content", [])
        return [b""]

    client = client_for(slow)
    client.timeout = (1.0, 0.2)
    try:
        with pytest.raises(KVUnreachable, match=r"timed out \(connect 1 s, read 0.2 s\)"):
            client.put("key", b"value")
    finally:
        answered.set()


def test_one_client_serves_many_threads(kv_url: str) -> None:
    with HTTPKVClient(kv_url) as client:

        def write_and_read(number: int) -> bool:
            key = f"threads{number}"
            stored = client.put(key, str(number).encode()).outcome is Outcome.STORED
            return stored and client.get(key).value == str(number).encode()

        results: list[bool] = []
        workers = [
            threading.Thread(target=lambda n=n: results.append(write_and_read(n)))
            for n in range(16)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    assert results == [True] * 16


def test_outcomes_of_the_real_kvservice(kv_url: str) -> None:
    with HTTPKVClient(kv_url) as client:
        written = client.put("outcomes", b"v1")
        assert written.outcome is Outcome.STORED and written.version
        assert client.create("outcomes", b"v2").outcome is Outcome.ALREADY_EXISTS
        assert client.create("outcomesnew", b"v").outcome is Outcome.CREATED
        stale = client.put("outcomes", b"v3", only_if_version='"stale"')
        assert stale.outcome is Outcome.PRECONDITION_FAILED
        assert client.put("outcomes", b"x" * 1025).outcome is Outcome.TOO_LARGE
        assert client.put("bad-key", b"v").outcome is Outcome.INVALID
        assert client.get("outcomes").version == written.version
        assert client.delete("outcomes").outcome is Outcome.DELETED
        assert client.delete("outcomes").outcome is Outcome.NOT_FOUND
        assert client.get("outcomes").outcome is Outcome.NOT_FOUND
        assert client.history("outcomes").values == [None, b"v1"]
        assert client.history("bad-key").outcome is Outcome.INVALID
        assert client.expiry("outcomes").outcome is Outcome.NOT_FOUND
        assert client.put("outcomes", b"v", ttl_ms=60_000).outcome is Outcome.STORED
        deadline = client.expiry("outcomes").expires_at_ms
        assert deadline is not None and abs(deadline - time.time() * 1000 - 60_000) < 5_000
        assert client.put("outcomes", b"v").outcome is Outcome.STORED
        plain = client.expiry("outcomes")
        assert (plain.outcome, plain.expires_at_ms) == (Outcome.FOUND, None)
