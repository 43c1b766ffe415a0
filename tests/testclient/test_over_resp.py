"""The test client over RESP: RespKVClient's outcomes, the checks over both transports against
one kvservice, what a transport without versions or content types reports, and failures.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import requests

from kvservice.http.app import create_app as create_kv_app
from kvservice.http.server import Server
from kvservice.store import Store
from kvservice.store.memory import MemoryStore
from testclient.__main__ import main
from testclient.checks import CHECKS, CheckResult, Verdict, overall_verdict, run_checks
from testclient.clients import (
    Capability,
    HTTPKVClient,
    KVClient,
    KVUnreachable,
    Outcome,
    RespKVClient,
    make_client,
)
from testclient.config import load_config
from testclient.http_api import create_app as create_testclient_app
from tests.support.fakes import (
    ExpiryAsDeleteKV,
    InMemoryKV,
    JSONUnvalidatedKV,
    closed_port_url,
    serve_wsgi,
)
from tests.support.rawresp import running_resp
from tests.support.servers import change_feed, http_settings
from tests.testclient.test_checks import BROKEN_PROMISES, BrokenPromise, failure_report

CAPABLE_EVERYWHERE = [
    "test_deletion",
    "test_overwrite",
    "test_history",
    "test_create_only",
    "test_validation",
    "test_binary_values",
    "test_listing",
    "test_expiry",
]
NEEDS_WHAT_RESP_LACKS = {
    "test_conditional_writes": "this transport has no versions to condition writes on",
    "test_content_types": "this transport has no content types",
    "test_watch": "this transport has no change feed to watch and resume from",
}


@dataclass(frozen=True)
class KVService:
    """One store behind both transports, as `kvservice --resp-port` runs it."""

    store: Store
    http_url: str
    resp_url: str


@pytest.fixture(scope="module")
def kv_service() -> Iterator[KVService]:
    store = MemoryStore()
    with change_feed(store) as feed:
        app = create_kv_app(store, feed=feed)
        http = Server(app, http_settings(threads=16, socket_timeout_s=2.0))
        http.start()
        with running_resp(store) as resp:
            yield KVService(store, f"http://127.0.0.1:{http.port}", resp.url)
        http.stop()


@pytest.fixture
def resp_client(kv_service: KVService) -> Iterator[RespKVClient]:
    with RespKVClient(kv_service.resp_url, timeout=(1.0, 2.0)) as client:
        yield client


# -- RespKVClient against the real service ---------------------------------------------------------


def test_outcomes_of_the_real_kvservice(resp_client: RespKVClient) -> None:
    client = resp_client

    stored = client.put("rkc1", b"\x00value\r\n")
    assert (stored.outcome, stored.version, stored.evidence) == (Outcome.STORED, None, "RESP +OK")
    read = client.get("rkc1")
    assert (read.outcome, read.value, read.content_type, read.version) == (
        Outcome.FOUND,
        b"\x00value\r\n",
        None,
        None,
    )
    assert read.evidence == "RESP bulk of 8 bytes"
    assert client.create("rkc1", b"x").outcome is Outcome.ALREADY_EXISTS
    assert client.create("rkc1", b"x").evidence == "RESP nil"
    assert client.put("rkc1", b"y", only_if_absent=True).outcome is Outcome.PRECONDITION_FAILED
    assert client.delete("rkc1").outcome is Outcome.DELETED
    assert client.delete("rkc1").outcome is Outcome.NOT_FOUND
    assert client.get("rkc1").outcome is Outcome.NOT_FOUND
    assert client.put("rkc1", b"z", only_if_absent=True).outcome is Outcome.STORED
    assert client.create("rkc2", b"new").outcome is Outcome.CREATED
    history = client.history("rkc1")
    assert (history.outcome, history.values) == (
        Outcome.FOUND,
        [b"z", None, b"\x00value\r\n"],
    )
    assert client.history("rkcnever").values == []


def test_refusals_map_to_their_outcomes(resp_client: RespKVClient) -> None:
    invalid = resp_client.put("bad-key", b"x")
    assert invalid.outcome is Outcome.INVALID
    assert invalid.evidence.startswith("RESP -INVALIDKEY The key has the character '-' at pos")
    assert resp_client.put("k" * 256, b"x").outcome is Outcome.INVALID
    assert resp_client.get("caf\u00e9").outcome is Outcome.INVALID
    assert resp_client.delete("a.b").outcome is Outcome.INVALID
    assert resp_client.history("a b").outcome is Outcome.INVALID
    too_large = resp_client.create("rkbig", b"x" * 1025)
    assert too_large.outcome is Outcome.TOO_LARGE
    assert too_large.evidence == "RESP -TOOLARGE The value is 1025 bytes; the limit is 1024 bytes."


def test_a_full_store_is_store_full() -> None:
    with running_resp(MemoryStore(max_bytes=3000)) as server, RespKVClient(server.url) as client:
        assert client.put("a", b"x" * 1000).outcome is Outcome.STORED
        full = client.put("b", b"x" * 1000)
    assert full.outcome is Outcome.STORE_FULL
    assert "memory budget of 3000 bytes" in full.evidence


def test_what_resp_cannot_express_is_unsupported_and_sends_nothing(
    resp_client: RespKVClient, kv_service: KVService
) -> None:
    replies = [
        resp_client.put("rkun", b"x", content_type="text/plain"),
        resp_client.put("rkun", b"x", only_if_version='"1"'),
        resp_client.create("rkun", b"x", content_type="application/json"),
        resp_client.delete("rkun", only_if_version='"1"'),
    ]

    assert [reply.outcome for reply in replies] == [Outcome.UNSUPPORTED] * 4
    assert replies[0].evidence == "RESP has no content types; nothing was sent"
    assert replies[1].evidence == "RESP has no versions to condition writes on; nothing was sent"
    assert kv_service.store.history("rkun") == []
    assert resp_client.capabilities == frozenset({Capability.EXPIRY})


def test_resp_has_no_feed_to_watch_or_long_poll_and_says_so(resp_client: RespKVClient) -> None:
    watch = resp_client.watch(prefix="rk")
    long_poll = resp_client.history("rkun", after="a-1", wait_ms=10)

    assert (watch.outcome, long_poll.outcome) == (Outcome.UNSUPPORTED, Outcome.UNSUPPORTED)
    assert (
        watch.evidence
        == long_poll.evidence
        == ("RESP has no change feed to watch and resume from; nothing was sent")
    )
    assert watch.next_event(0.01) is None


def test_keys_expire_with_set_px_and_report_it_with_pexpiretime(
    resp_client: RespKVClient,
) -> None:
    assert resp_client.expiry("rkttl").outcome is Outcome.NOT_FOUND
    assert resp_client.put("rkttl", b"v", ttl_ms=60_000).outcome is Outcome.STORED
    timed = resp_client.expiry("rkttl")
    assert timed.outcome is Outcome.FOUND and timed.expires_at_ms is not None
    assert abs(timed.expires_at_ms - time.time() * 1000 - 60_000) < 5_000
    assert timed.evidence == f"RESP :{timed.expires_at_ms}"
    created = resp_client.put("rkttl", b"w", only_if_absent=True, ttl_ms=1000)
    assert created.outcome is Outcome.PRECONDITION_FAILED, "NX and PX together"
    assert resp_client.put("rkttl", b"v").outcome is Outcome.STORED
    plain = resp_client.expiry("rkttl")
    assert (plain.outcome, plain.expires_at_ms, plain.evidence) == (
        Outcome.FOUND,
        None,
        "RESP :-1",
    )
    assert resp_client.expiry("bad-key").outcome is Outcome.INVALID


def test_one_client_serves_many_threads(resp_client: RespKVClient) -> None:
    def write_and_read(number: int) -> bool:
        key = f"rkthread{number}"
        value = f"value {number}".encode()
        return (
            resp_client.put(key, value).outcome is Outcome.STORED
            and resp_client.get(key).value == value
        )

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(write_and_read, range(200)))


def test_a_pooled_connection_the_server_closed_is_not_used() -> None:
    with running_resp(idle_timeout_s=0.2) as server, RespKVClient(server.url) as client:
        assert client.put("k", b"v").outcome is Outcome.STORED
        time.sleep(0.5)  # the server closes the idle pooled connection meanwhile

        assert client.get("k").value == b"v"


# -- RespKVClient against servers that misbehave ---------------------------------------------------


@contextmanager
def canned_resp(reply: bytes, close_after: bool = False) -> Iterator[str]:
    """A server that answers every command with `reply`; yields its redis:// URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    conn.sendall(reply)
                    if close_after:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"-INVALIDKEY any words at all\r\n", Outcome.INVALID),
        (b"-TOOLARGE any words at all\r\n", Outcome.TOO_LARGE),
        (b"-OOM any words at all\r\n", Outcome.STORE_FULL),
    ],
)
def test_an_error_is_told_apart_by_its_code_alone(reply: bytes, outcome: Outcome) -> None:
    with canned_resp(reply) as url, RespKVClient(url, timeout=(1.0, 1.0)) as client:
        assert client.put("k", b"v").outcome is outcome


@pytest.mark.parametrize(
    ("reply", "call", "evidence"),
    [
        (b"+OK\r\n", lambda c: c.get("k"), "RESP +OK"),
        (b":2\r\n", lambda c: c.delete("k"), "RESP :2"),
        (b"$1\r\nx\r\n", lambda c: c.put("k", b"v"), "RESP bulk of 1 bytes"),
        (b"-ERR out of cheese\r\n", lambda c: c.put("k", b"v"), "RESP -ERR out of cheese"),
        (b"-ERR max number of clients reached\r\n", lambda c: c.get("k"), "RESP -ERR max"),
        # The store's words without its code: the code, not the text, says what went wrong.
        (
            b"-ERR The value is 9 bytes; the limit is 4 bytes.\r\n",
            lambda c: c.put("k", b"v"),
            "-ERR",
        ),
        (b"HTTP/1.1 400 Bad Request\r\n", lambda c: c.get("k"), "unreadable RESP reply"),
        (b"$3\r\nabcde\r\n", lambda c: c.get("k"), "not followed by CRLF"),
        (b":1x\r\n", lambda c: c.delete("k"), "is not an integer"),
        (b"*1\r\n:5\r\n", lambda c: c.history("k"), "malformed: entry 0 is not [timestamp"),
        (b"*1\r\n*2\r\n$1\r\n5\r\n$-1\r\n", lambda c: c.history("k"), "malformed: entry 0"),
    ],
)
def test_an_answer_off_the_contract_is_unexpected(
    reply: bytes, call: Callable[[RespKVClient], object], evidence: str
) -> None:
    with canned_resp(reply) as url, RespKVClient(url, timeout=(1.0, 1.0)) as client:
        answer = call(client)

    assert answer.outcome is Outcome.UNEXPECTED  # type: ignore[attr-defined]
    assert evidence in answer.evidence  # type: ignore[attr-defined]


def test_a_closed_port_raises_kv_unreachable() -> None:
    url = closed_port_url().replace("http://", "redis://")
    with RespKVClient(url) as client, pytest.raises(KVUnreachable) as raised:
        client.get("k")

    assert f"GET k ({url}): no connection:" in str(raised.value)
    assert "Connection refused" in str(raised.value)


def test_a_server_that_never_answers_raises_kv_unreachable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}"
        with RespKVClient(url, timeout=(1.0, 0.2)) as client, pytest.raises(KVUnreachable) as e:
            client.put("k", b"v")

    assert "timed out (connect 1 s, read 0.2 s)" in str(e.value)


def test_a_connection_closed_before_the_reply_raises_kv_unreachable() -> None:
    for reply, message in [
        (b"", "the connection closed: before a reply"),
        (b"$10\r\nabc", "the connection closed: 3 bytes into a bulk string of 10"),
    ]:
        with (
            canned_resp(reply, close_after=True) as url,
            RespKVClient(url) as client,
            pytest.raises(KVUnreachable, match=message),
        ):
            client.get("k")


# -- the same checks over both transports, against one kvservice -----------------------------------


@pytest.fixture(scope="module")
def clients(kv_service: KVService) -> Iterator[dict[str, KVClient]]:
    http, resp = HTTPKVClient(kv_service.http_url), RespKVClient(kv_service.resp_url)
    yield {"http": http, "resp": resp}
    http.close()
    resp.close()


@pytest.mark.parametrize("transport", ["http", "resp"])
@pytest.mark.parametrize("name", CAPABLE_EVERYWHERE)
def test_the_checks_pass_over_both_transports(
    name: str, transport: str, clients: dict[str, KVClient]
) -> None:
    result = CHECKS[name].function(clients[transport])

    assert result.verdict is Verdict.PASSED, failure_report(result)
    assert result.failed_steps == []


@pytest.mark.parametrize("name", ["test_validation", "test_binary_values"])
def test_over_resp_the_steps_needing_content_types_are_skipped_visibly(
    name: str, clients: dict[str, KVClient]
) -> None:
    over_http = CHECKS[name].function(clients["http"])
    over_resp = CHECKS[name].function(clients["resp"])

    assert not any(step.skipped for step in over_http.steps)
    [skipped] = [step for step in over_resp.steps if step.skipped]
    assert (skipped.passed, skipped.actual) == (
        False,
        "skipped: this transport has no content types",
    )
    assert all(step.passed for step in over_resp.steps if not step.skipped)


@pytest.mark.parametrize("name", sorted(NEEDS_WHAT_RESP_LACKS))
def test_over_resp_a_check_that_needs_what_resp_lacks_is_skipped_not_passed(
    name: str, clients: dict[str, KVClient]
) -> None:
    over_http = CHECKS[name].function(clients["http"])
    over_resp = CHECKS[name].function(clients["resp"])

    assert over_http.verdict is Verdict.PASSED, failure_report(over_http)
    assert over_resp.verdict is Verdict.SKIPPED
    assert not over_resp.passed
    [step] = over_resp.steps
    assert (step.skipped, step.passed) == (True, False)
    assert step.actual == f"skipped: {NEEDS_WHAT_RESP_LACKS[name]}"
    assert overall_verdict([over_http, over_resp]) is Verdict.SKIPPED


def test_all_checks_over_both_transports_at_once(clients: dict[str, KVClient]) -> None:
    results: dict[str, list[CheckResult]] = {}

    def run(transport: str) -> None:
        results[transport] = run_checks(list(CHECKS), clients[transport])

    runners = [threading.Thread(target=run, args=(transport,)) for transport in clients]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()

    assert overall_verdict(results["http"]) is Verdict.PASSED
    verdicts = {result.test: result.verdict for result in results["resp"]}
    assert verdicts == {
        name: Verdict.SKIPPED if name in NEEDS_WHAT_RESP_LACKS else Verdict.PASSED
        for name in CHECKS
    }


# -- broken fakes still fail the checks on a transport without versions or content types -----------


class TransportWithoutExtras(InMemoryKV):
    """A correct kvservice seen through a transport like RESP: no versions, no content types,
    no history entry that tells an expiry from a delete."""

    capabilities = RespKVClient.capabilities


@pytest.mark.parametrize(
    "broken", BROKEN_PROMISES, ids=lambda broken: f"{broken.check}-{broken.fake.__name__}"
)
def test_a_broken_fake_still_fails_without_versions_or_content_types(
    broken: BrokenPromise,
) -> None:
    fake = type(
        f"Plain{broken.fake.__name__}",
        (broken.fake,),
        {"capabilities": RespKVClient.capabilities},
    )

    result = CHECKS[broken.check].function(fake())

    if broken.check in NEEDS_WHAT_RESP_LACKS:
        assert result.verdict is Verdict.SKIPPED, failure_report(result)
    elif broken.fake is JSONUnvalidatedKV:  # its promise cannot be seen without content types
        assert result.verdict is Verdict.PASSED
        assert [step.step for step in result.steps if step.skipped] == [
            "write malformed JSON declared as application/json: refused, nothing stored"
        ]
    elif broken.fake is ExpiryAsDeleteKV:  # nor this one where history shows expiries as deletes
        assert result.verdict is Verdict.PASSED
        skipped = [step.step for step in result.steps if step.skipped]
        assert len(skipped) == 1 and "the newest entry says it is an expiry" in skipped[0]
    else:
        assert result.verdict is Verdict.FAILED, failure_report(result)
        failed = result.failed_steps
        assert len(failed) == len(broken.failing_steps), failure_report(result)
        for step, (step_part, actual_part) in zip(failed, broken.failing_steps, strict=True):
            assert step_part in step.step and actual_part in step.actual, failure_report(result)


def test_a_correct_fake_without_extras_passes_what_it_can_and_skips_the_rest() -> None:
    results = run_checks(list(CHECKS), TransportWithoutExtras())

    assert {result.test: result.verdict for result in results} == {
        name: Verdict.SKIPPED if name in NEEDS_WHAT_RESP_LACKS else Verdict.PASSED
        for name in CHECKS
    }
    assert overall_verdict(results) is Verdict.SKIPPED


# -- choosing the client by URL, the CLI and the HTTP service --------------------------------------


def test_the_url_scheme_picks_the_client() -> None:
    assert isinstance(make_client("redis://127.0.0.1:6379", (1.0, 1.0)), RespKVClient)
    assert isinstance(make_client("http://127.0.0.1:3000", (1.0, 1.0)), HTTPKVClient)
    config = load_config(CHECKS, ["run", "--kv-url", "redis://kv:6379/"], environ={})
    assert config.kv_url == "redis://kv:6379"
    assert load_config(CHECKS, ["run"], {"KV_URL": "redis://kv/0"}).kv_url == "redis://kv/0"


@pytest.mark.parametrize(
    "url", ["rediss://kv:6379/2", "redis://kv:6379/1", "redis://:6379", "redis://kv:99999"]
)
def test_urls_the_client_cannot_use_are_usage_errors(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--kv-url", url]) == 2
    assert "usage: testclient" in capsys.readouterr().err


def test_run_over_resp_exits_4_and_says_what_it_skipped(
    kv_service: KVService, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--kv-url", kv_service.resp_url])

    report = capsys.readouterr().out
    assert code == 4, report
    assert re.search(
        r"^SKIPPED     test_conditional_writes  \([\d.]+ ms, 1 step skipped\)$", report, re.M
    )
    assert "  skip  write values with a content type and read the type back\n" in report
    assert "          skipped: this transport has no content types\n" in report
    assert "PASSED      test_validation  (" in report
    assert "FAIL" not in report
    assert report.rstrip().endswith(
        "12 checks: 9 passed, 0 failed, 0 unreachable, 3 skipped; overall skipped (8 steps skipped)"
    )


def test_run_over_resp_of_the_checks_it_can_run_exits_0(
    kv_service: KVService, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", *CAPABLE_EVERYWHERE, "--kv-url", kv_service.resp_url])

    report = capsys.readouterr().out
    assert code == 0, report
    assert ", 1 step skipped)" in report
    assert report.rstrip().endswith("overall passed (3 steps skipped)")


def test_run_over_an_unreachable_resp_port_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_port_url().replace("http://", "redis://")

    assert main(["run", "test_deletion", "--kv-url", url]) == 3
    assert "Connection refused" in capsys.readouterr().out


def test_the_http_service_answers_501_for_a_check_resp_cannot_run(kv_service: KVService) -> None:
    with (
        RespKVClient(kv_service.resp_url) as client,
        serve_wsgi(create_testclient_app(client, kv_service.resp_url)) as url,
    ):
        skipped = requests.post(f"{url}/test_content_types", timeout=10)
        passed = requests.post(f"{url}/test_binary_values", timeout=10)

    assert skipped.status_code == 501
    document = skipped.json()
    assert (document["verdict"], document["passed"], document["kv_url"]) == (
        "skipped",
        False,
        kv_service.resp_url,
    )
    assert document["steps"][0]["skipped"] is True
    assert passed.status_code == 200
    [skipped_step] = [step for step in passed.json()["steps"] if step["skipped"]]
    assert skipped_step["step"].endswith(
        "served as application/octet-stream, since no type was given"
    )
    assert skipped_step["passed"] is False
