"""The checks: each proves one promise of a running kvservice through a `KVClient`.

A check is a plain function `(client) -> CheckResult`. Inside it a `CheckRun` records steps
(what was done, what was expected, what came back, whether that passed), hands out fresh
random keys and deletes them at the end, so checks can run concurrently with each other and
with other runs. `require` ends a check where the remaining steps would prove nothing;
`expect` records and carries on, so one run shows every broken promise it can see.

If the client raises `KVUnreachable`, the run ends there: the verdict is UNREACHABLE, unless
an earlier step had already shown a wrong answer (then FAILED: a wrong answer is evidence).

A step that needs what the client's transport cannot express (RESP has no versions and no
content types: `KVClient.capabilities`) is recorded as skipped, saying so, never as passed.
A check whose other steps all passed still passes and lists the skipped steps; a check that
could run nothing is SKIPPED, which no caller counts as a pass (exit code 4, HTTP 501).

`CHECKS` names every check; `run_checks` runs several at once.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from testclient.kv_client import (
    Capability,
    HistoryReply,
    KVClient,
    KVUnreachable,
    Outcome,
    Reply,
    describe_value,
)

MAX_KEY_LENGTH = 255
MAX_VALUE_BYTES = 1024
SEQUENTIAL_OVERWRITES = 20
WRITER_THREADS = 4
WRITES_PER_THREAD = 10
CLOCK_TOLERANCE_MS = 10 * 60 * 1000
"""How far history timestamps may be from this client's clock (the two may be on different
hosts); far below the factor of 1000 that separates seconds from milliseconds."""

ALL_CHECKS = "test_all"
"""The name that runs every check: an HTTP path and a CLI argument, never a registry key."""

_STOPPED_NOTE = "; check stopped here: the remaining steps depend on this one"


class Verdict(StrEnum):
    """How a check ended."""

    PASSED = "passed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    """Nothing failed, but the check could not run over the client's transport."""


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


class StopCheck(Exception):
    """A required step failed; the rest of the check would prove nothing."""


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
        self._steps.append(Step(step, expectation.expected, expectation.actual, expectation.passed))
        self._answered_wrongly |= not expectation.passed
        return expectation.passed

    def require(self, step: str, expectation: Expectation) -> None:
        """Record a step; if it failed, stop the check (raises StopCheck)."""
        if not expectation.passed:
            actual = expectation.actual + _STOPPED_NOTE
            expectation = Expectation(expectation.expected, actual, passed=False)
        if not self.expect(step, expectation):
            raise StopCheck(step)

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
        if isinstance(exc, KVUnreachable):
            self._unreachable = True
            self._steps.append(
                Step("reach the kvservice", "an answer", f"no answer: {exc}", passed=False)
            )
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
    return Expectation(outcome.value, str(reply), reply.outcome is outcome)


def all_outcomes_are(replies: Sequence[Reply], outcome: Outcome) -> Expectation:
    """Every reply has this outcome; the actual side counts them and shows the first odd one."""
    counts = Counter(reply.outcome.value for reply in replies)
    actual = ", ".join(f"{count} x {name}" for name, count in counts.items())
    odd = [reply for reply in replies if reply.outcome is not outcome]
    if odd:
        actual += f"; first other: {odd[0]}"
    return Expectation(f"{len(replies)} x {outcome.value}", actual, not odd)


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
    return Expectation(expected, str(reply), passed)


def history_is(history: HistoryReply, values: Sequence[bytes | None]) -> Expectation:
    """The history lists exactly these values, newest first; a failure names the difference."""
    expected = "[" + ", ".join(describe_value(value) for value in values) + "] newest first"
    if history.outcome is not Outcome.FOUND:
        return Expectation(expected, str(history), passed=False)
    if history.values == list(values):
        return Expectation(expected, str(history), passed=True)
    return Expectation(expected, f"{history}; {_first_difference(history.values, values)}", False)


def _first_difference(actual: Sequence[bytes | None], expected: Sequence[bytes | None]) -> str:
    for position, (got, wanted) in enumerate(zip(actual, expected, strict=False)):
        if got != wanted:
            return (
                f"first difference: entry {position} (0 is newest) is {describe_value(got)} "
                f"where {describe_value(wanted)} belongs"
            )
    return f"first difference: {len(actual)} entries where {len(expected)} belong"


# -- the checks ------------------------------------------------------------------------------


def check_deletion(client: KVClient) -> CheckResult:
    """After a delete, reads are exactly 'not found' and history shows the delete."""
    with CheckRun("test_deletion", client) as run:
        key = run.fresh_key("del")
        value = f"deleteme-{run.tag}".encode()
        run.require(
            f"write {describe_value(value)} to a fresh key {key}",
            outcome_is(client.put(key, value), Outcome.STORED),
        )
        run.require(f"read {key}", value_is(client.get(key), value))
        run.require(f"delete {key}", outcome_is(client.delete(key), Outcome.DELETED))
        run.expect(
            f"read {key} after the delete (an error or a timeout is not 'deleted')",
            outcome_is(client.get(key), Outcome.NOT_FOUND),
        )
        run.expect(
            f"delete {key} again (nothing left to delete)",
            outcome_is(client.delete(key), Outcome.NOT_FOUND),
        )
        run.expect(
            f"history of {key}: the delete above the write, nothing for the second delete",
            history_is(client.history(key), [None, value]),
        )
    return run.result()


def check_overwrite(client: KVClient) -> CheckResult:
    """The newest write is the one served: after overwrites, bursts and concurrent writers."""
    with CheckRun("test_overwrite", client) as run:
        key = run.fresh_key("ow")
        first, second = f"first-{run.tag}".encode(), f"second-{run.tag}".encode()
        run.require(
            f"write {describe_value(first)} to a fresh key {key}",
            outcome_is(client.put(key, first), Outcome.STORED),
        )
        run.require(
            f"overwrite {key} with {describe_value(second)}",
            outcome_is(client.put(key, second), Outcome.STORED),
        )
        run.expect(f"read {key}: the second value", value_is(client.get(key), second))

        burst = [f"burst{number}-{run.tag}".encode() for number in range(SEQUENTIAL_OVERWRITES)]
        run.require(
            f"overwrite {key} {len(burst)} times in a row",
            all_outcomes_are([client.put(key, value) for value in burst], Outcome.STORED),
        )
        run.expect(f"read {key}: the last of the burst", value_is(client.get(key), burst[-1]))
        run.expect(
            f"history of {key}: every write, newest first",
            history_is(client.history(key), [*reversed(burst), second, first]),
        )
        _check_concurrent_overwrites(run, client)
    return run.result()


def _check_concurrent_overwrites(run: CheckRun, client: KVClient) -> None:
    key = run.fresh_key("cc")
    seed = f"seed-{run.tag}".encode()
    run.require(
        f"write {describe_value(seed)} to a fresh key {key}",
        outcome_is(client.put(key, seed), Outcome.STORED),
    )
    writes_by_thread = [
        [f"t{thread}w{number}-{run.tag}".encode() for number in range(WRITES_PER_THREAD)]
        for thread in range(WRITER_THREADS)
    ]
    start_together = threading.Barrier(WRITER_THREADS)

    def write_all(values: list[bytes]) -> list[Reply]:
        start_together.wait(timeout=10)
        return [client.put(key, value) for value in values]

    with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="overwrite") as pool:
        replies = [reply for batch in pool.map(write_all, writes_by_thread) for reply in batch]
    run.require(
        f"overwrite {key} from {WRITER_THREADS} threads at once, {WRITES_PER_THREAD} writes each",
        all_outcomes_are(replies, Outcome.STORED),
    )

    written = {value for values in writes_by_thread for value in values}
    final = client.get(key)
    run.expect(
        f"read {key}: one of the {len(written)} values written concurrently",
        Expectation(
            f"found one of the values written concurrently (t<thread>w<n>-{run.tag})",
            str(final),
            final.outcome is Outcome.FOUND and final.value in written,
        ),
    )
    history = client.history(key)
    newest = history.values[0] if history.values else None
    run.expect(
        f"history of {key}: the newest entry is the value read",
        Expectation(
            f"newest entry {describe_value(final.value)}",
            f"newest entry {describe_value(newest)}" if history.values else str(history),
            history.outcome is Outcome.FOUND and bool(history.values) and newest == final.value,
        ),
    )
    problem = _interleaving_problem(history, writes_by_thread, seed)
    run.expect(
        f"history of {key}: each concurrent write once, each thread's in its own order",
        Expectation(
            f"{len(written)} concurrent writes above the seed, newest first",
            problem or f"{len(history.values)} entries in a valid order",
            problem is None,
        ),
    )


def _interleaving_problem(
    history: HistoryReply, writes_by_thread: list[list[bytes]], seed: bytes
) -> str | None:
    """What is wrong with the history of concurrent writes, or None if it is a valid order."""
    if history.outcome is not Outcome.FOUND:
        return str(history)
    written = sum(len(values) for values in writes_by_thread)
    newest_first, below = history.values[:written], history.values[written:]
    if below != [seed]:
        return f"{len(history.values)} entries; below the concurrent writes: {below!r}"
    missing: Counter[bytes | None] = Counter(
        value for values in writes_by_thread for value in values
    )
    missing.subtract(Counter(newest_first))
    if any(missing.values()):
        wrong = sorted(describe_value(value) for value, count in missing.items() if count)
        return f"missing or repeated: {', '.join(wrong[:5])}"
    oldest_first = newest_first[::-1]
    for thread, values in enumerate(writes_by_thread):
        if [value for value in oldest_first if value in values] != values:
            return f"thread {thread}'s writes are not in the order it made them"
    return None


def check_history(client: KVClient) -> CheckResult:
    """History lists every write newest first, with non-decreasing epoch-millisecond times."""
    with CheckRun("test_history", client) as run:
        never_written = run.fresh_key("hn")
        run.expect(
            f"history of a key never written ({never_written})",
            history_is(client.history(never_written), []),
        )
        key = run.fresh_key("hist")
        values = [f"h{number}-{run.tag}".encode() for number in range(5)]
        before_ms = time.time_ns() // 1_000_000
        run.require(
            f"write {key} {len(values)} times in quick succession (some in the same millisecond)",
            all_outcomes_are([client.put(key, value) for value in values], Outcome.STORED),
        )
        after_ms = time.time_ns() // 1_000_000
        history = client.history(key)
        run.require(
            f"history of {key}: all {len(values)} writes, newest first, in the order applied",
            history_is(history, values[::-1]),
        )
        timestamps = [entry.timestamp_ms for entry in history.entries]
        run.expect(
            f"history of {key}: timestamps never decrease from the oldest entry to the newest",
            Expectation(
                "each timestamp >= the one below it",
                f"timestamps newest first: {timestamps}",
                all(newer >= older for newer, older in itertools.pairwise(timestamps)),
            ),
        )
        earliest, latest = before_ms - CLOCK_TOLERANCE_MS, after_ms + CLOCK_TOLERANCE_MS
        run.expect(
            f"history of {key}: timestamps are Unix epoch milliseconds of the writes",
            Expectation(
                f"between {earliest} and {latest} (this client's clock +-10 min)",
                f"timestamps newest first: {timestamps}",
                all(earliest <= timestamp <= latest for timestamp in timestamps),
            ),
        )
    return run.result()


def check_create_only(client: KVClient) -> CheckResult:
    """Create-only writes succeed on an empty key and are refused on one holding a value."""
    with CheckRun("test_create_only", client) as run:
        key = run.fresh_key("co")
        first, second, third = (f"{name}-{run.tag}".encode() for name in ("one", "two", "three"))
        run.require(
            f"create {key} with {describe_value(first)}",
            outcome_is(client.create(key, first), Outcome.CREATED),
        )
        run.expect(f"read {key}", value_is(client.get(key), first))
        run.expect(
            f"create {key} again (it holds a value)",
            outcome_is(client.create(key, second), Outcome.ALREADY_EXISTS),
        )
        run.expect(f"read {key}: still the first value", value_is(client.get(key), first))
        run.require(f"delete {key}", outcome_is(client.delete(key), Outcome.DELETED))
        run.expect(
            f"create {key} after the delete (it holds no value)",
            outcome_is(client.create(key, third), Outcome.CREATED),
        )
        run.expect(f"read {key}: the new value", value_is(client.get(key), third))
    return run.result()


def check_conditional_writes(client: KVClient) -> CheckResult:
    """Writes conditioned on a version or on absence happen only when the condition holds."""
    with CheckRun("test_conditional_writes", client) as run:
        run.require_support(
            Capability.VERSIONS, "write and delete only if the key is at a given version"
        )
        key = run.fresh_key("cw")
        v1, v2, v3, v4, v5 = (f"v{number}-{run.tag}".encode() for number in range(1, 6))
        first = client.put(key, v1)
        run.require(
            f"write {describe_value(v1)} to a fresh key {key}",
            Expectation(
                "stored, with a version",
                str(first),
                first.outcome is Outcome.STORED and bool(first.version),
            ),
        )
        read = client.get(key)
        run.expect(
            f"read {key}: the version is the one the write returned",
            Expectation(
                f"found {describe_value(v1)} version {first.version}",
                str(read),
                read.outcome is Outcome.FOUND
                and read.value == v1
                and read.version == first.version,
            ),
        )
        second = client.put(key, v2, only_if_version=first.version)
        run.require(
            f"write {describe_value(v2)} only if {key} is still at version {first.version}",
            Expectation(
                f"stored, with a version other than {first.version}",
                str(second),
                second.outcome is Outcome.STORED
                and bool(second.version)
                and second.version != first.version,
            ),
        )
        run.expect(
            f"write {describe_value(v3)} only if {key} is at the old version {first.version}",
            outcome_is(
                client.put(key, v3, only_if_version=first.version), Outcome.PRECONDITION_FAILED
            ),
        )
        run.expect(
            f"write {describe_value(v4)} only if {key} holds no value (it does)",
            outcome_is(client.put(key, v4, only_if_absent=True), Outcome.PRECONDITION_FAILED),
        )
        run.expect(
            f"delete {key} only if it is at the old version {first.version}",
            outcome_is(
                client.delete(key, only_if_version=first.version), Outcome.PRECONDITION_FAILED
            ),
        )
        run.expect(
            f"read {key}: still {describe_value(v2)}, the refused writes changed nothing",
            value_is(client.get(key), v2),
        )
        run.expect(
            f"history of {key}: the refused writes left no entries",
            history_is(client.history(key), [v2, v1]),
        )
        run.expect(
            f"delete {key} only if it is at the current version {second.version}",
            outcome_is(client.delete(key, only_if_version=second.version), Outcome.DELETED),
        )
        run.expect(
            f"write {describe_value(v5)} only if {key} holds no value (it was just deleted)",
            outcome_is(client.put(key, v5, only_if_absent=True), Outcome.STORED),
        )
    return run.result()


def check_validation(client: KVClient) -> CheckResult:
    """Invalid keys, oversized values and malformed JSON are refused and change nothing."""
    with CheckRun("test_validation", client) as run:
        invalid_keys = {
            "with a '-' (keys are [A-Za-z0-9])": f"tc-bad-{run.tag}",
            f"of {MAX_KEY_LENGTH + 1} characters": f"tclong{run.tag}".ljust(
                MAX_KEY_LENGTH + 1, "x"
            ),
            "with a non-ASCII letter": f"tc\u00e9{run.tag}",
        }
        for description, key in invalid_keys.items():
            run.expect(
                f"write to a key {description}",
                outcome_is(client.put(run.track(key), b"x"), Outcome.INVALID),
            )
        longest = run.track(f"tclong{run.tag}".ljust(MAX_KEY_LENGTH, "x"))
        run.expect(
            f"write to a key of {MAX_KEY_LENGTH} characters, the longest allowed",
            outcome_is(client.put(longest, b"x"), Outcome.STORED),
        )

        key = run.fresh_key("val")
        run.expect(
            f"write an empty value to {key}", outcome_is(client.put(key, b""), Outcome.STORED)
        )
        run.expect(f"read {key}: the empty value", value_is(client.get(key), b""))
        largest = (run.tag.encode() * MAX_VALUE_BYTES)[:MAX_VALUE_BYTES]
        run.expect(
            f"write a {MAX_VALUE_BYTES}-byte value to {key}, the largest allowed",
            outcome_is(client.put(key, largest), Outcome.STORED),
        )
        run.expect(
            f"write a {MAX_VALUE_BYTES + 1}-byte value to {key}",
            outcome_is(client.put(key, largest + b"!"), Outcome.TOO_LARGE),
        )
        run.expect(
            f"read {key}: still the {MAX_VALUE_BYTES}-byte value",
            value_is(client.get(key), largest),
        )

        if run.supports(
            Capability.CONTENT_TYPES,
            "write malformed JSON declared as application/json: refused, nothing stored",
        ):
            json_key = run.fresh_key("json")
            run.expect(
                f"write malformed JSON declared as application/json to {json_key}",
                outcome_is(
                    client.put(json_key, b'{"unterminated": ', content_type="application/json"),
                    Outcome.INVALID,
                ),
            )
            run.expect(
                f"read {json_key}: the refused JSON was not stored",
                outcome_is(client.get(json_key), Outcome.NOT_FOUND),
            )
    return run.result()


def check_binary_values(client: KVClient) -> CheckResult:
    """Arbitrary bytes round-trip exactly, in reads and in history."""
    with CheckRun("test_binary_values", client) as run:
        key = run.fresh_key("bin")
        every_byte = bytes(range(256))
        run.require(
            f"write all 256 byte values to {key}, without a content type",
            outcome_is(client.put(key, every_byte), Outcome.STORED),
        )
        read = client.get(key)
        run.expect(f"read {key}: the same bytes", value_is(read, every_byte))
        octet_stream_step = (
            f"read {key}: served as application/octet-stream, since no type was given"
        )
        if run.supports(Capability.CONTENT_TYPES, octet_stream_step):
            run.expect(
                octet_stream_step,
                Expectation(
                    "application/octet-stream",
                    str(read.content_type),
                    read.content_type == "application/octet-stream",
                ),
            )
        run.expect(
            f"history of {key}: the same bytes (not valid UTF-8: base64 in HTTP's JSON)",
            history_is(client.history(key), [every_byte]),
        )

        lookalikes = {
            "bytes that look like HTTP framing": b"\x00\r\n\r\nHTTP/1.1 200 OK\r\n\r\n0\r\n\r\n",
            "text that is also valid base64": b"aGVsbG8=",
        }
        for description, value in lookalikes.items():
            key = run.fresh_key("bin")
            run.require(
                f"write {description} to {key}",
                outcome_is(client.put(key, value), Outcome.STORED),
            )
            run.expect(f"read {key}: the same bytes", value_is(client.get(key), value))
            run.expect(
                f"history of {key}: the same bytes", history_is(client.history(key), [value])
            )
    return run.result()


def check_content_types(client: KVClient) -> CheckResult:
    """Values come back with the content type they were written with, JSON included."""
    with CheckRun("test_content_types", client) as run:
        run.require_support(
            Capability.CONTENT_TYPES, "write values with a content type and read the type back"
        )
        samples = (
            (
                "application/json",
                '{"name":"caf\u00e9","tags":["a","b"],"nested":{"n":1,"none":null}}'.encode(),
            ),
            ("application/vnd.kvtest+json", b"[1,2,3]"),
            ("text/plain; charset=utf-8", "h\u00e9llo w\u00f6rld".encode()),
        )
        for content_type, value in samples:
            key = run.fresh_key("ct")
            run.require(
                f"write {describe_value(value)} as {content_type} to {key}",
                outcome_is(client.put(key, value, content_type=content_type), Outcome.STORED),
            )
            run.expect(
                f"read {key}: the same bytes, as {content_type}",
                value_is(client.get(key), value, content_type),
            )
            run.expect(f"history of {key}: the same text", history_is(client.history(key), [value]))
    return run.result()


# -- the registry and running ----------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A registered check: the function and what it proves, in one line."""

    function: Callable[[KVClient], CheckResult]
    description: str


CHECKS: dict[str, Check] = {
    "test_deletion": Check(
        check_deletion,
        "delete really deletes: reads are then exactly 'not found', history shows the delete",
    ),
    "test_overwrite": Check(
        check_overwrite,
        "the newest write is served, after bursts and concurrent writers; history keeps order",
    ),
    "test_history": Check(
        check_history,
        "history lists every write newest first, with non-decreasing epoch-ms timestamps",
    ),
    "test_create_only": Check(
        check_create_only,
        "create-only writes succeed on an empty key and are refused (409) on a full one",
    ),
    "test_conditional_writes": Check(
        check_conditional_writes,
        "version and absence preconditions hold (412 otherwise) and failed ones change nothing",
    ),
    "test_validation": Check(
        check_validation,
        "bad keys (400), values over 1024 bytes (413) and malformed JSON (400) are refused",
    ),
    "test_binary_values": Check(
        check_binary_values,
        "arbitrary bytes round-trip exactly, in reads and in history",
    ),
    "test_content_types": Check(
        check_content_types,
        "values come back with the content type they were written with, JSON included",
    ),
}
"""Every check by name; the names are also the test client's HTTP paths and CLI arguments."""


def run_checks(
    names: Iterable[str], client: KVClient, checks: Mapping[str, Check] = CHECKS
) -> list[CheckResult]:
    """Run the named checks concurrently (they share nothing); results in the order named."""
    functions = [checks[name].function for name in names]
    if not functions:
        return []
    with ThreadPoolExecutor(len(functions), thread_name_prefix="check") as pool:
        return list(pool.map(lambda function: function(client), functions))


def overall_verdict(results: Iterable[CheckResult]) -> Verdict:
    """FAILED if any check failed, else UNREACHABLE if any could not reach it, else SKIPPED if
    any could not run over the transport, else PASSED."""
    verdicts = {result.verdict for result in results}
    for verdict in (Verdict.FAILED, Verdict.UNREACHABLE, Verdict.SKIPPED):
        if verdict in verdicts:
            return verdict
    return Verdict.PASSED
