"""The expiry check: a key written with a time to live is served until its deadline, is gone
after it, and its history records the expiry at the deadline; a plain overwrite clears it.

Time is judged by the service's clock without trusting this client's to agree with it: the
deadline is read from the service and set against the write's own history timestamp (the
same clock), and the client only measures, on its monotonic clock, how long has passed since
it sent the write. A read answered sooner after the write than the time to live reached the
service before the deadline; waiting the time to live (plus `MARGIN_MS`) after the write was
acknowledged puts the service past it.
"""

from __future__ import annotations

import time

from testclient.checks.framework import (
    CheckRun,
    Expectation,
    check,
    outcome_is,
    request_ids_of,
    value_is,
)
from testclient.clients import (
    Capability,
    HistoryEntry,
    HistoryReply,
    KVClient,
    Outcome,
    describe_value,
)

TTL_MS = 300
"""Short, so that the check takes about a third of a second, and long enough for a read to
come back well before the deadline."""
MARGIN_MS = 50
"""How long past the deadline (by the service's clock) the check reads again: clocks tick at
slightly different rates."""
DEADLINE_SLACK_MS = 20
"""How far the deadline may be from the write's history timestamp plus the time to live: a
store may read its clock twice in one write."""


@check
def check_expiry(run: CheckRun, client: KVClient) -> None:
    """A key written with a TTL is served until its deadline, then gone; history shows it."""
    run.require_support(Capability.EXPIRY, "write keys with a time to live")
    key = run.fresh_key("exp")
    value = f"expiring-{run.tag}".encode()
    sent = time.monotonic()
    run.require(
        f"write {describe_value(value)} to a fresh key {key}, to expire in {TTL_MS} ms",
        outcome_is(client.put(key, value, ttl_ms=TTL_MS), Outcome.STORED),
    )
    acknowledged = time.monotonic()
    early_read = client.get(key)
    early_read_ms = (time.monotonic() - sent) * 1000

    expiry = client.expiry(key)
    run.require(
        f"read the deadline of {key}",
        Expectation(
            "found, with a deadline",
            str(expiry),
            expiry.outcome is Outcome.FOUND and expiry.expires_at_ms is not None,
            request_ids_of(expiry),
        ),
    )
    deadline = expiry.expires_at_ms or 0
    history = client.history(key)
    write = history.entries[0] if history.outcome is Outcome.FOUND and history.entries else None
    run.require(
        f"history of {key}: the write",
        Expectation(
            f"[{describe_value(value)}]",
            str(history),
            write is not None and write.value == value and len(history.entries) == 1,
            request_ids_of(history),
        ),
    )
    assert write is not None  # required just above
    ttl_as_served = deadline - write.timestamp_ms
    run.require(
        f"the deadline of {key} is {TTL_MS} ms after the write, by the service's clock",
        Expectation(
            f"{write.timestamp_ms + TTL_MS} (+-{DEADLINE_SLACK_MS} ms): the write's timestamp "
            f"{write.timestamp_ms} plus {TTL_MS} ms",
            f"{deadline} ({ttl_as_served:+} ms after the write)",
            abs(ttl_as_served - TTL_MS) <= DEADLINE_SLACK_MS,
        ),
    )
    early = f"read {key} before its deadline"
    if early_read_ms < ttl_as_served:
        run.expect(early, value_is(early_read, value))
    else:
        run.skip(early, f"the write and the read took {early_read_ms:.0f} ms, past the ttl")

    overwritten = _write_with_ttl_then_plainly(run, client)

    past_deadline_s = (ttl_as_served + MARGIN_MS) / 1000
    time.sleep(max(0.0, acknowledged + past_deadline_s - time.monotonic()))
    run.expect(
        f"read {key} after its deadline {deadline}",
        outcome_is(client.get(key), Outcome.NOT_FOUND),
    )
    history = client.history(key)
    recorded = run.expect(
        f"history of {key} after its deadline: an entry without a value at the deadline, "
        "above the write",
        _history_is_entries(history, [HistoryEntry(None, deadline), write]),
    )
    says_expired = f"history of {key}: the newest entry says it is an expiry, not a delete"
    if recorded and run.supports(Capability.EXPIRY_ENTRIES, says_expired):
        newest = history.entries[0]
        run.expect(says_expired, Expectation("<expired>", _describe_entry(newest), newest.expired))
    run.expect(
        f"read {overwritten} after the deadline its first write had: the plain overwrite stays",
        value_is(client.get(overwritten), b"plain"),
    )


def _write_with_ttl_then_plainly(run: CheckRun, client: KVClient) -> str:
    """A fresh key written with the ttl, then without: the second write leaves it without a
    deadline. Returns the key."""
    key = run.fresh_key("expow")
    run.require(
        f"write a fresh key {key} to expire in {TTL_MS} ms",
        outcome_is(client.put(key, b"timed", ttl_ms=TTL_MS), Outcome.STORED),
    )
    run.require(
        f"overwrite {key} without a ttl", outcome_is(client.put(key, b"plain"), Outcome.STORED)
    )
    expiry = client.expiry(key)
    run.expect(
        f"read the deadline of {key}: the plain overwrite removed it",
        Expectation(
            "found, without a deadline",
            str(expiry),
            expiry.outcome is Outcome.FOUND and expiry.expires_at_ms is None,
            request_ids_of(expiry),
        ),
    )
    return key


def _history_is_entries(history: HistoryReply, expected: list[HistoryEntry]) -> Expectation:
    """The history is exactly these values at these timestamps, newest first (whether an
    entry says it is an expiry is judged apart: not every transport can say)."""
    shown = [(entry.value, entry.timestamp_ms) for entry in history.entries]
    return Expectation(
        "[" + ", ".join(map(_describe_entry, expected)) + "] newest first",
        "[" + ", ".join(map(_describe_entry, history.entries)) + "]"
        if history.outcome is Outcome.FOUND
        else str(history),
        history.outcome is Outcome.FOUND
        and shown == [(entry.value, entry.timestamp_ms) for entry in expected],
        request_ids_of(history),
    )


def _describe_entry(entry: HistoryEntry) -> str:
    what = "<expired>" if entry.expired else describe_value(entry.value)
    return f"{what} at {entry.timestamp_ms}"
