"""The history check: every write listed newest first, with epoch-millisecond timestamps."""

from __future__ import annotations

import itertools
import time

from testclient.checks.framework import (
    CheckRun,
    Expectation,
    all_outcomes_are,
    check,
    history_is,
)
from testclient.clients import KVClient, Outcome

CLOCK_TOLERANCE_MS = 10 * 60 * 1000
"""How far history timestamps may be from this client's clock (the two may be on different
hosts); far below the factor of 1000 that separates seconds from milliseconds."""


@check
def check_history(run: CheckRun, client: KVClient) -> None:
    """History lists every write newest first, with non-decreasing epoch-ms timestamps."""
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
