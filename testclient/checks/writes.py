"""Checks that writes take: delete really deletes, and the newest write is the one served."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from testclient.checks.framework import (
    CheckRun,
    Expectation,
    all_outcomes_are,
    check,
    history_is,
    outcome_is,
    value_is,
)
from testclient.clients import HistoryReply, KVClient, Outcome, Reply, describe_value

SEQUENTIAL_OVERWRITES = 20
WRITER_THREADS = 4
WRITES_PER_THREAD = 10


@check
def check_deletion(run: CheckRun, client: KVClient) -> None:
    """Delete really deletes: reads are then exactly 'not found', history shows the delete."""
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


@check
def check_overwrite(run: CheckRun, client: KVClient) -> None:
    """The newest write is served, after bursts and concurrent writers; history keeps order."""
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
