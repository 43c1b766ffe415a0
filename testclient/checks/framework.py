"""What a check is made of: a `CheckRun` recording steps, the expectations steps are judged
by, verdicts, and the registry (`@check`, `CHECKS`, `run_checks`).

A check is a plain function `(run, client) -> None` registered with `@check`. Inside it the
`CheckRun` records steps (what was done, what was expected, what came back, whether that
passed), hands out fresh random keys and deletes them at the end, so checks can run
concurrently with each other and with other runs. `require` ends a check where the remaining
steps would prove nothing; `expect` records and carries on, so one run shows every broken
promise it can see.

Before the checks, `run_checks` asks the client to `identify` the service once: a URL that
answers like something else (another server's 404 page, a plain Redis) gives every check the
verdict NOT_KVSERVICE with a single step saying what answered, and no check runs against it.

Each step keeps the request IDs of the replies it judged (`Step.request_ids`; HTTP only), so a
failing step can be found in kvservice's access log.

If the client raises `KVUnreachable`, the run ends there: the verdict is UNREACHABLE, unless
an earlier step had already shown a wrong answer (then FAILED: a wrong answer is evidence).
If it raises `KVRefused` (the kvservice refused the client's token), the verdict is
UNAUTHORIZED in the same way: the kvservice did not answer the question, it said who may ask.

A step that needs what the client's transport cannot express (RESP has no versions and no
content types: `KVClient.capabilities`) is recorded as skipped, saying so, never as passed.
A check whose other steps all passed still passes and lists the skipped steps; a check that
could run nothing is SKIPPED, which no caller counts as a pass (exit code 4, HTTP 501).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from testclient.clients import (
    Capability,
    HistoryReply,
    KVClient,
    KVRefused,
    KVUnreachable,
    Outcome,
    Reply,
    describe_value,
)

ALL_CHECKS = "test_all"
"""The name that runs every check: an HTTP path and a CLI argument, never a registry key."""

_STOPPED_NOTE = "; check stopped here: the remaining steps depend on this one"


class Verdict(StrEnum):
    """How a check ended."""

    PASSED = "passed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    UNAUTHORIZED = "unauthorized"
    """The kvservice refused the test client's token, or asked for one it was not given."""
    SKIPPED = "skipped"
    """Nothing failed, but the check could not run over the client's transport."""
    NOT_KVSERVICE = "not kvservice"
    """The URL answered, but not like a kvservice (`KVClient.identify`); nothing was checked."""


@dataclass(frozen=True)
class Step:
    """One thing a check did: what, what it expected, what came back, and whether it passed.

    A skipped step was not run (the transport lacks what it needs): it did not pass either.
    """

    step: str
    expected: str
    actual: str
    passed: bool
    skipped: bool = False
    request_ids: tuple[str, ...] = ()
    """The X-Request-IDs of the requests whose replies this step judged."""


@dataclass(frozen=True)
class CheckResult:
    """The steps of one check run and its verdict."""

    test: str
    verdict: Verdict
    steps: tuple[Step, ...]
    duration_ms: float

    @property
    def passed(self) -> bool:
        """True when every step passed."""
        return self.verdict is Verdict.PASSED

    @property
    def failed_steps(self) -> list[Step]:
        """The steps that ran and did not pass, in order."""
        return [step for step in self.steps if not (step.passed or step.skipped)]


@dataclass(frozen=True)
class Expectation:
    """An expected result set against the actual one."""

    expected: str
    actual: str
    passed: bool
    request_ids: tuple[str, ...] = ()


class StopCheck(Exception):
    """A required step failed; the rest of the check would prove nothing."""


def unreachable_step(error: KVUnreachable) -> Step:
    """The step that ends a check the kvservice did not answer."""
    return Step("reach the kvservice", "an answer", f"no answer: {error}", passed=False)


def refused_step(error: KVRefused) -> Step:
    """The step that ends a check the kvservice would not serve with the client's token."""
    return Step("be let in", "an answer", f"refused the token: {error}", passed=False)


class CheckRun:
    """Records one check's steps and cleans up its keys; use as a context manager."""

    def __init__(self, name: str, client: KVClient) -> None:
        self.name = name
        self.client = client
        self.tag = secrets.token_hex(4)
        self._steps: list[Step] = []
        self._keys: list[str] = []
        self._answered_wrongly = False
        self._unreachable = False
        self._refused = False
        self._started = time.perf_counter()
        self._duration_ms = 0.0

    def fresh_key(self, label: str) -> str:
        """A new random key (deleted when the run ends); `label` says which check made it."""
        return self.track(f"tc{label}{secrets.token_hex(8)}")

    def track(self, key: str) -> str:
        """Delete `key` when the run ends (for keys that were not made by `fresh_key`)."""
        self._keys.append(key)
        return key

    def expect(self, step: str, expectation: Expectation) -> bool:
        """Record a step; returns whether it passed."""
        self._steps.append(
            Step(
                step,
                expectation.expected,
                expectation.actual,
                expectation.passed,
                request_ids=expectation.request_ids,
            )
        )
        self._answered_wrongly |= not expectation.passed
        return expectation.passed

    def require(self, step: str, expectation: Expectation) -> None:
        """Record a step; if it failed, stop the check (raises StopCheck)."""
        if not expectation.passed:
            actual = expectation.actual + _STOPPED_NOTE
            expectation = dataclasses.replace(expectation, actual=actual)
        if not self.expect(step, expectation):
            raise StopCheck(step)

    def skip(self, step: str, why: str) -> None:
        """Record `step` as skipped, saying why; the caller leaves it out."""
        self._steps.append(Step(step, "to run", f"skipped: {why}", passed=False, skipped=True))

    def supports(self, capability: Capability, step: str) -> bool:
        """Whether the client's transport has `capability`; if not, `step` is recorded as
        skipped, saying why, and the caller leaves it out."""
        if capability in self.client.capabilities:
            return True
        self._steps.append(
            Step(
                step,
                f"a transport with {capability.value}",
                f"skipped: this transport has no {capability.value}",
                passed=False,
                skipped=True,
            )
        )
        return False

    def require_support(self, capability: Capability, step: str) -> None:
        """As `supports`, but without the capability the check ends here (raises StopCheck)."""
        if not self.supports(capability, step):
            raise StopCheck(step)

    def __enter__(self) -> CheckRun:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if isinstance(exc, KVRefused):
            self._refused = True
            self._steps.append(refused_step(exc))
        elif isinstance(exc, KVUnreachable):
            self._unreachable = True
            self._steps.append(unreachable_step(exc))
        else:
            self._clean_up()  # an unreachable service cannot be cleaned up; don't wait on it
        self._duration_ms = round((time.perf_counter() - self._started) * 1000, 1)
        return isinstance(exc, StopCheck | KVUnreachable)

    def _clean_up(self) -> None:
        try:
            for key in self._keys:
                self.client.delete(key)
        except KVUnreachable:
            pass  # the verdict is already decided; leftovers age out of the history window

    def result(self) -> CheckResult:
        """The verdict and steps, once the `with` block has ended."""
        if self._answered_wrongly:
            verdict = Verdict.FAILED
        elif self._refused:
            verdict = Verdict.UNAUTHORIZED
        elif self._unreachable:
            verdict = Verdict.UNREACHABLE
        elif all(step.skipped for step in self._steps):
            verdict = Verdict.SKIPPED
        else:
            verdict = Verdict.PASSED
        return CheckResult(self.name, verdict, tuple(self._steps), self._duration_ms)


# -- expectations ----------------------------------------------------------------------------


def outcome_is(reply: Reply, outcome: Outcome) -> Expectation:
    """The reply has exactly this outcome."""
    return Expectation(outcome.value, str(reply), reply.outcome is outcome, request_ids_of(reply))


def all_outcomes_are(replies: Sequence[Reply], outcome: Outcome) -> Expectation:
    """Every reply has this outcome; the actual side counts them and shows the first odd one."""
    counts = Counter(reply.outcome.value for reply in replies)
    actual = ", ".join(f"{count} x {name}" for name, count in counts.items())
    odd = [reply for reply in replies if reply.outcome is not outcome]
    if odd:
        actual += f"; first other: {odd[0]}"
    return Expectation(
        f"{len(replies)} x {outcome.value}", actual, not odd, request_ids_of(*replies)
    )


def value_is(reply: Reply, value: bytes, content_type: str | None = None) -> Expectation:
    """The reply found exactly these bytes (and this content type, when one is given)."""
    expected = f"{Outcome.FOUND.value} {describe_value(value)}"
    if content_type is not None:
        expected += f" as {content_type}"
    passed = (
        reply.outcome is Outcome.FOUND
        and reply.value == value
        and (content_type is None or reply.content_type == content_type)
    )
    return Expectation(expected, str(reply), passed, request_ids_of(reply))


def history_is(history: HistoryReply, values: Sequence[bytes | None]) -> Expectation:
    """The history lists exactly these values, newest first; a failure names the difference."""
    expected = "[" + ", ".join(describe_value(value) for value in values) + "] newest first"
    ids = request_ids_of(history)
    if history.outcome is not Outcome.FOUND:
        return Expectation(expected, str(history), False, ids)
    if history.values == list(values):
        return Expectation(expected, str(history), True, ids)
    difference = _first_difference(history.values, values)
    return Expectation(expected, f"{history}; {difference}", False, ids)


def request_ids_of(*replies: Reply | HistoryReply) -> tuple[str, ...]:
    """The request IDs of these replies, for an Expectation built by hand."""
    return tuple(reply.request_id for reply in replies if reply.request_id is not None)


def _first_difference(actual: Sequence[bytes | None], expected: Sequence[bytes | None]) -> str:
    for position, (got, wanted) in enumerate(zip(actual, expected, strict=False)):
        if got != wanted:
            return (
                f"first difference: entry {position} (0 is newest) is {describe_value(got)} "
                f"where {describe_value(wanted)} belongs"
            )
    return f"first difference: {len(actual)} entries where {len(expected)} belong"


# -- the registry and running ----------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A registered check: the function and what it proves, in one line."""

    function: Callable[[KVClient], CheckResult]
    description: str


CheckFunction = Callable[["CheckRun", KVClient], None]
"""A check's body: it records its steps on the run, through the client."""

CHECKS: dict[str, Check] = {}
"""Every check by name, in the order registered; the names are also the test client's HTTP
paths and CLI arguments. Filled by `@check`."""


def check(function: CheckFunction) -> CheckFunction:
    """Register a check: `check_deletion` becomes "test_deletion", described by the first line
    of its docstring. The registered function runs it in a fresh `CheckRun`."""
    name = "test_" + function.__name__.removeprefix("check_")
    if name in CHECKS or name == ALL_CHECKS:
        raise ValueError(f"a check named {name} is already registered")
    description = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
    if not description:
        raise ValueError(f"{function.__name__} has no docstring to describe it")

    def run_check(client: KVClient) -> CheckResult:
        with CheckRun(name, client) as run:
            function(run, client)
        return run.result()

    CHECKS[name] = Check(run_check, description)
    return function


def run_checks(
    names: Iterable[str], client: KVClient, checks: Mapping[str, Check] = CHECKS
) -> list[CheckResult]:
    """Confirm the client reaches a kvservice, then run the named checks concurrently (they
    share nothing); results in the order named."""
    names = list(names)
    functions = [checks[name].function for name in names]
    if not functions:
        return []
    refusal = _identity_refusal(client)
    if refusal is not None:
        return [CheckResult(name, refusal[0], (refusal[1],), 0.0) for name in names]
    with ThreadPoolExecutor(len(functions), thread_name_prefix="check") as pool:
        return list(pool.map(lambda function: function(client), functions))


def _identity_refusal(client: KVClient) -> tuple[Verdict, Step] | None:
    """None when the client reaches a kvservice; else every check's verdict and only step."""
    step = "confirm the URL answers like a kvservice"
    try:
        reason = client.identify()
    except KVRefused as error:  # over RESP, INFO needs AUTH first
        return Verdict.UNAUTHORIZED, refused_step(error)
    except KVUnreachable as error:
        return Verdict.UNREACHABLE, unreachable_step(error)
    if reason is None:
        return None
    return Verdict.NOT_KVSERVICE, Step(step, "a kvservice", reason, passed=False)


def overall_verdict(results: Iterable[CheckResult]) -> Verdict:
    """FAILED if any check failed, else NOT_KVSERVICE if the URL is not a kvservice, else
    UNAUTHORIZED if its token was refused, else UNREACHABLE if any could not reach it, else
    SKIPPED if any could not run over the transport, else PASSED."""
    verdicts = {result.verdict for result in results}
    worst_first = (
        Verdict.FAILED,
        Verdict.NOT_KVSERVICE,
        Verdict.UNAUTHORIZED,
        Verdict.UNREACHABLE,
        Verdict.SKIPPED,
    )
    for verdict in worst_first:
        if verdict in verdicts:
            return verdict
    return Verdict.PASSED
