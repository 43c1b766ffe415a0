"""The checks against a correct fake, broken fakes, an unreachable service and the real kvservice.

Every check must pass against the correct fake and the real kvservice, and fail, with a step
that says what went wrong, against a fake that breaks the promise it is about.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from testclient.checks import (
    CHECKS,
    CheckResult,
    CheckRun,
    Expectation,
    Verdict,
    overall_verdict,
    run_checks,
)
from testclient.clients import HTTPKVClient, KVClient
from tests.support.fakes import (
    AnonymousServedKV,
    BinaryGarbledKV,
    ContentTypeDroppedKV,
    CreateOverwritesKV,
    DeleteIgnoredKV,
    DeleteStillServedKV,
    ExpiresLateKV,
    ExpiryAsDeleteKV,
    ExpiryUnrecordedKV,
    FeedDropsAChangeKV,
    FeedDuplicatesAChangeKV,
    FeedReordersTwoChangesKV,
    FeedResumesFromStartKV,
    GetAfterDeleteFailsKV,
    HistoryMissingDeleteKV,
    HistoryOutOfOrderKV,
    HistoryTruncatedKV,
    InMemoryKV,
    JSONUnvalidatedKV,
    KeyUnvalidatedKV,
    ListingNeverEndsKV,
    ListsDeletedKeysKV,
    NeverExpiresKV,
    OversizeAcceptedKV,
    OverwriteIgnoredKV,
    OverwriteKeepsTTLKV,
    PageRepeatsItsStartKV,
    PageSkipsAKeyKV,
    PerThreadCacheKV,
    PreconditionIgnoredKV,
    ReadTokenWritesKV,
    SecondsTimestampsKV,
    StaleReadKV,
    TokensKV,
    UnreachableKV,
    VersionUnchangedKV,
    closed_port_url,
    silent_url,
)
from tests.support.tokens import READ_TOKEN

ALL_NAMES = list(CHECKS)


def failure_report(result: CheckResult) -> str:
    """Every step of a result, for assertion messages."""
    return "\n".join(
        f"{'ok  ' if step.passed else 'FAIL'} {step.step} | expected {step.expected} "
        f"| actual {step.actual}"
        for step in result.steps
    )


# -- a correct kvservice passes -------------------------------------------------------------


@pytest.mark.parametrize("fake", [InMemoryKV, TokensKV])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_check_passes_against_a_correct_fake(name: str, fake: type[KVClient]) -> None:
    result = CHECKS[name].function(fake())

    assert result.verdict is Verdict.PASSED, failure_report(result)
    assert result.test == name
    # Every step ran and passed, except test_tokens' without tokens (see the test below).
    if not (name == "test_tokens" and fake is InMemoryKV):
        assert result.steps and all(step.passed for step in result.steps)
    assert result.duration_ms >= 0


def test_tokens_without_tokens_passes_and_lists_what_it_could_not_check() -> None:
    """Given no token, the test client cannot tell a service that refuses requests without
    one: those steps, and the read token's, are skipped, saying why, never passed."""
    result = CHECKS["test_tokens"].function(InMemoryKV())

    assert result.verdict is Verdict.PASSED, failure_report(result)
    ran = [step.step for step in result.steps if step.passed]
    skipped = {step.step: step.actual for step in result.steps if step.skipped}
    assert ran == ["read without a token (the test client was given none)"]
    assert skipped == {
        "requests without a token, or with a wrong one, are refused": (
            "skipped: no token given (--kv-token): checked as a service without tokens"
        ),
        "a read token reads but cannot write": ("skipped: no read token given (--kv-read-token)"),
    }


def test_checks_leave_no_values_behind() -> None:
    kv = InMemoryKV()

    results = run_checks(ALL_NAMES, kv)

    assert overall_verdict(results) is Verdict.PASSED
    assert kv.live_keys() == []


def test_checks_can_run_concurrently_on_one_service() -> None:
    kv = InMemoryKV()
    results: list[CheckResult] = []

    def run_all() -> None:
        results.extend(run_checks(ALL_NAMES, kv))

    runners = [threading.Thread(target=run_all) for _ in range(3)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()

    assert len(results) == 3 * len(ALL_NAMES)
    assert all(result.passed for result in results), [r.test for r in results if not r.passed]


# -- a broken kvservice fails, and says where ------------------------------------------------


@dataclass(frozen=True)
class BrokenPromise:
    """A broken fake, the check that must catch it, and the steps that must fail."""

    fake: type[KVClient]
    check: str
    failing_steps: tuple[tuple[str, str], ...]
    """(a fragment of the step's text, a fragment of what came back), for each failing step."""


BROKEN_PROMISES = [
    BrokenPromise(
        DeleteIgnoredKV,
        "test_deletion",
        (
            ("after the delete", "found b'deleteme-"),
            ("delete tcdel", "deleted"),
            ("history of", "first difference: entry 0"),
        ),
    ),
    BrokenPromise(
        DeleteStillServedKV, "test_deletion", (("after the delete", "found b'deleteme-"),)
    ),
    BrokenPromise(GetAfterDeleteFailsKV, "test_deletion", (("after the delete", "HTTP 500"),)),
    BrokenPromise(
        HistoryMissingDeleteKV,
        "test_deletion",
        (("history of", "entry 0 (0 is newest) is b'deleteme-"),),
    ),
    BrokenPromise(
        HistoryOutOfOrderKV,
        "test_deletion",
        (("history of", "entry 0 (0 is newest) is b'deleteme-"),),
    ),
    BrokenPromise(
        HistoryOutOfOrderKV,
        "test_overwrite",
        (
            ("every write, newest first", "entry 0 (0 is newest) is b'first-"),
            ("newest entry is the value read", "newest entry b'seed-"),
            ("each concurrent write once", "below the concurrent writes"),
        ),
    ),
    BrokenPromise(
        HistoryOutOfOrderKV,
        "test_history",
        (("newest first, in the order applied", "stopped here"),),
    ),
    BrokenPromise(
        OverwriteIgnoredKV,
        "test_overwrite",
        (
            ("the second value", "found b'first-"),
            ("the last of the burst", "found b'first-"),
            ("every write, newest first", "entry 0 (0 is newest) is b'first-"),
            ("one of the 40 values", "found b'seed-"),
            ("each concurrent write once", "below the concurrent writes"),
        ),
    ),
    BrokenPromise(
        StaleReadKV,
        "test_overwrite",
        (
            ("the second value", "found b'first-"),
            ("the last of the burst", "found b'burst18-"),
            ("newest entry is the value read", "newest entry b't"),
        ),
    ),
    BrokenPromise(
        PerThreadCacheKV,
        "test_overwrite",
        (
            ("one of the 40 values", "found b'seed-"),
            ("newest entry is the value read", "newest entry b't"),
        ),
    ),
    BrokenPromise(
        HistoryTruncatedKV,
        "test_overwrite",
        (("each concurrent write once", "25 entries; below the concurrent writes: []"),),
    ),
    BrokenPromise(
        SecondsTimestampsKV, "test_history", (("Unix epoch milliseconds", "timestamps"),)
    ),
    BrokenPromise(
        CreateOverwritesKV,
        "test_create_only",
        (("create tcco", "created"), ("still the first value", "found b'two-")),
    ),
    BrokenPromise(
        PreconditionIgnoredKV,
        "test_conditional_writes",
        (
            ("at the old version", "stored"),
            ("holds no value (it does)", "stored"),
            ("delete tccw", "deleted"),
            ("the refused writes changed nothing", "not found"),
            ("the refused writes left no entries", "entry 0 (0 is newest) is <deleted>"),
            ("at the current version", "not found"),
        ),
    ),
    BrokenPromise(
        VersionUnchangedKV,
        "test_conditional_writes",
        (("only if tccw", 'stored version "1"; check stopped here'),),
    ),
    BrokenPromise(
        KeyUnvalidatedKV,
        "test_validation",
        (
            ("a key with a '-'", "stored"),
            ("a key of 256 characters", "stored"),
            ("a key with a non-ASCII letter", "stored"),
        ),
    ),
    BrokenPromise(
        OversizeAcceptedKV,
        "test_validation",
        (("1025-byte value", "stored"), ("still the 1024-byte value", "(1025 bytes)")),
    ),
    BrokenPromise(
        JSONUnvalidatedKV,
        "test_validation",
        (("malformed JSON", "stored"), ("refused JSON was not stored", "found")),
    ),
    BrokenPromise(
        BinaryGarbledKV,
        "test_binary_values",
        (("the same bytes", "found"), ("history of", "first difference: entry 0")),
    ),
    BrokenPromise(
        ContentTypeDroppedKV,
        "test_content_types",
        (
            ("as application/json", "as application/octet-stream"),
            ("as application/vnd.kvtest+json", "as application/octet-stream"),
            ("as text/plain; charset=utf-8", "as application/octet-stream"),
        ),
    ),
    BrokenPromise(
        ListsDeletedKeysKV,
        "test_listing",
        (
            ("each of the 5 live keys exactly once", "deleted but listed: tcls"),
            ("in one page of up to 100", "k2"),
        ),
    ),
    BrokenPromise(
        PageRepeatsItsStartKV,
        "test_listing",
        (("each of the 5 live keys exactly once", "listed more than once: tcls"),),
    ),
    BrokenPromise(
        PageSkipsAKeyKV,
        "test_listing",
        (("each of the 5 live keys exactly once", "missing: tcls"),),
    ),
    BrokenPromise(
        ReadTokenWritesKV,
        "test_tokens",
        (
            ("write with the read token", "served: stored"),
            ("delete with the read token", "served: deleted"),
            ("the value is still", "not found"),
        ),
    ),
    BrokenPromise(
        AnonymousServedKV,
        "test_tokens",
        (
            ("write without a token", "served: stored"),
            ("read without a token", "served: found b'no'"),
            ("nothing was written by them", "found b'no'"),
        ),
    ),
    BrokenPromise(
        ListingNeverEndsKV,
        "test_listing",
        (("to the last page", "9 pages and still more to come"),),
    ),
    BrokenPromise(
        ExpiresLateKV,
        "test_expiry",
        (
            ("after its deadline", "found b'expiring-"),
            ("an entry without a value at the deadline", "[b'expiring-"),
        ),
    ),
    BrokenPromise(
        NeverExpiresKV,
        "test_expiry",
        (
            ("after its deadline", "found b'expiring-"),
            ("an entry without a value at the deadline", "[b'expiring-"),
        ),
    ),
    BrokenPromise(
        ExpiryUnrecordedKV,
        "test_expiry",
        (("an entry without a value at the deadline", "[b'expiring-"),),
    ),
    BrokenPromise(
        ExpiryAsDeleteKV,
        "test_expiry",
        (("the newest entry says it is an expiry", "<deleted> at"),),
    ),
    BrokenPromise(
        OverwriteKeepsTTLKV,
        "test_expiry",
        (
            ("the plain overwrite removed it", "found expiring at"),
            ("the plain overwrite stays", "not found"),
        ),
    ),
    BrokenPromise(
        FeedDropsAChangeKV,
        "test_watch",
        (
            ("each write once, in order", "b'two' version"),
            ("exactly the writes made while none was open", "a is missing"),
        ),
    ),
    BrokenPromise(
        FeedDuplicatesAChangeKV,
        "test_watch",
        (
            ("each write once, in order", "(a repeat, where put"),
            ("every change carries its own position", "-2, "),
            ("exactly the writes made while none was open", "(a repeat, where put"),
        ),
    ),
    BrokenPromise(
        FeedReordersTwoChangesKV,
        "test_watch",
        (
            ("each write once, in order", "(out of order: put"),
            ("exactly the writes made while none was open", "(out of order: delete"),
        ),
    ),
    BrokenPromise(
        FeedResumesFromStartKV,
        "test_watch",
        (
            ("exactly the writes made while none was open", "change 0 is put tcwatch"),
            ("long-poll the history of tcwatch", "4 entries where 2 belong"),
            ("waiting up to 5000 ms: the write", "where b'six' belongs; check stopped"),
        ),
    ),
]


@pytest.mark.parametrize(
    "broken", BROKEN_PROMISES, ids=lambda broken: f"{broken.check}-{broken.fake.__name__}"
)
def test_a_broken_fake_fails_the_check_for_its_promise(broken: BrokenPromise) -> None:
    result = CHECKS[broken.check].function(broken.fake())

    assert result.verdict is Verdict.FAILED, failure_report(result)
    failed = result.failed_steps
    assert len(failed) == len(broken.failing_steps), failure_report(result)
    for step, (step_fragment, actual_fragment) in zip(failed, broken.failing_steps, strict=True):
        assert step_fragment in step.step, failure_report(result)
        assert actual_fragment in step.actual, failure_report(result)
        assert step.expected


def test_every_check_is_shown_failing_by_some_broken_fake() -> None:
    assert {broken.check for broken in BROKEN_PROMISES} == set(CHECKS)


def test_a_failing_step_records_expected_and_actual() -> None:
    result = CHECKS["test_deletion"].function(DeleteStillServedKV())

    [step] = result.failed_steps
    assert step.expected == "not found"
    assert step.actual.startswith("found b'deleteme-")


# -- an unreachable kvservice is reported as such --------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_closed_port_is_unreachable_not_failed(name: str) -> None:
    with HTTPKVClient(closed_port_url(), timeout=(1.0, 1.0)) as client:
        result = CHECKS[name].function(client)

    assert result.verdict is Verdict.UNREACHABLE, failure_report(result)
    [step] = result.steps
    assert step.step == "reach the kvservice"
    assert "no connection" in step.actual
    assert "Connection refused" in step.actual


def test_a_service_that_never_answers_is_unreachable() -> None:
    with silent_url() as url, HTTPKVClient(url, timeout=(1.0, 0.2)) as client:
        result = CHECKS["test_deletion"].function(client)

    assert result.verdict is Verdict.UNREACHABLE
    assert "timed out" in result.steps[-1].actual


def test_unreachable_midway_keeps_the_steps_that_passed() -> None:
    class GoneAfterFirstWrite(InMemoryKV):
        def get(self, key: str):  # type: ignore[no-untyped-def]
            return UnreachableKV().get(key)

    result = CHECKS["test_deletion"].function(GoneAfterFirstWrite())

    assert result.verdict is Verdict.UNREACHABLE
    assert [step.passed for step in result.steps] == [True, False]
    assert "GET /tcdel" in result.steps[-1].actual


def test_a_wrong_answer_outweighs_a_later_unreachable_service() -> None:
    unreachable = UnreachableKV()
    with CheckRun("test_example", unreachable) as run:
        run.expect("a step that failed", Expectation("this", "that", passed=False))
        unreachable.get("somekey")

    result = run.result()
    assert result.verdict is Verdict.FAILED
    assert overall_verdict([result]) is Verdict.FAILED


def test_a_refused_token_is_unauthorized_not_failed_nor_unreachable() -> None:
    results = run_checks(ALL_NAMES, TokensKV(token="not-the-token-at-all"))

    assert {result.verdict for result in results} == {Verdict.UNAUTHORIZED}
    assert overall_verdict(results) is Verdict.UNAUTHORIZED
    step = results[0].steps[-1]
    assert step.step == "be let in"
    assert "HTTP 401 Unauthorized" in step.actual


def test_a_read_token_where_a_write_token_belongs_is_unauthorized() -> None:
    result = CHECKS["test_deletion"].function(TokensKV(token=READ_TOKEN))

    assert result.verdict is Verdict.UNAUTHORIZED
    assert "HTTP 403 Forbidden" in result.steps[-1].actual


def test_overall_verdict_ranks_failed_over_unreachable_over_passed() -> None:
    passed = CHECKS["test_deletion"].function(InMemoryKV())
    failed = CHECKS["test_deletion"].function(DeleteIgnoredKV())
    unreachable = CHECKS["test_deletion"].function(UnreachableKV())

    assert overall_verdict([passed, passed]) is Verdict.PASSED
    assert overall_verdict([passed, unreachable]) is Verdict.UNREACHABLE
    assert overall_verdict([unreachable, failed, passed]) is Verdict.FAILED
    refused = CHECKS["test_deletion"].function(TokensKV(token=None))
    assert overall_verdict([passed, unreachable, refused]) is Verdict.UNAUTHORIZED
    assert overall_verdict([refused, failed]) is Verdict.FAILED


# -- the real kvservice passes ---------------------------------------------------------------


@pytest.fixture
def kv_client(kv_url: str) -> Iterator[KVClient]:
    """An HTTP client for a real kvservice on a loopback port."""
    with HTTPKVClient(kv_url) as client:
        yield client


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_check_passes_against_the_real_kvservice(name: str, kv_client: KVClient) -> None:
    result = CHECKS[name].function(kv_client)

    assert result.verdict is Verdict.PASSED, failure_report(result)


def test_concurrent_runs_pass_against_the_real_kvservice(kv_client: KVClient) -> None:
    results: list[CheckResult] = []
    runners = [
        threading.Thread(target=lambda: results.extend(run_checks(ALL_NAMES, kv_client)))
        for _ in range(2)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()

    assert len(results) == 2 * len(ALL_NAMES)
    assert all(result.passed for result in results), "\n\n".join(
        failure_report(result) for result in results if not result.passed
    )
