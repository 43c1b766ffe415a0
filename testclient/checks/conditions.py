"""Checks of conditional writes: create-only, and writes conditioned on a version or absence."""

from __future__ import annotations

from testclient.checks.framework import (
    CheckRun,
    Expectation,
    check,
    history_is,
    outcome_is,
    value_is,
)
from testclient.clients import Capability, KVClient, Outcome, describe_value


@check
def check_create_only(run: CheckRun, client: KVClient) -> None:
    """Create-only writes succeed on an empty key and are refused (409) on a full one."""
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


@check
def check_conditional_writes(run: CheckRun, client: KVClient) -> None:
    """Version and absence preconditions hold (412 otherwise) and failed ones change nothing."""
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
            read.outcome is Outcome.FOUND and read.value == v1 and read.version == first.version,
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
        outcome_is(client.put(key, v3, only_if_version=first.version), Outcome.PRECONDITION_FAILED),
    )
    run.expect(
        f"write {describe_value(v4)} only if {key} holds no value (it does)",
        outcome_is(client.put(key, v4, only_if_absent=True), Outcome.PRECONDITION_FAILED),
    )
    run.expect(
        f"delete {key} only if it is at the old version {first.version}",
        outcome_is(client.delete(key, only_if_version=first.version), Outcome.PRECONDITION_FAILED),
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
