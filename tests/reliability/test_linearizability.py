"""Linearizability: the checker's own tests, then a concurrent workload against a real kvservice.

The checker's tests feed hand-made histories (times in milliseconds) and expect doctored ones
to be refused with the offending key named; then random histories, checked against references:
histories the real Store produces must pass with the order of writes it applied, and on small
ones the checker must agree with a brute-force search that replays every order on a Store.

The workload runs eight client threads with a random mix of plain and conditional writes, reads
and deletes on three keys, records every call and return, and asks the checker for a
linearization; then /history must list every acknowledged write exactly once, in an order that
is itself a valid linearization.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import combinations, permutations

import pytest

from kvservice.store import (
    KeyExists,
    KeyNotFound,
    Precondition,
    PreconditionFailed,
    Store,
    StoreError,
    Value,
)
from kvservice.store.memory import MemoryStore
from testclient.clients import HTTPKVClient, KVUnreachable, Outcome, Reply
from tests.reliability.linearizability import (
    CheckResult,
    Kind,
    Operation,
    check_linearizable,
    describe,
)

S = Outcome  # short names keep the hand-written histories readable
SEED = 5  # every random choice in this file derives from it

# -- building histories ---------------------------------------------------------------------


def op(
    kind: Kind,
    call_ms: float,
    return_ms: float | None,
    outcome: Outcome | None,
    value: str | None = None,
    etag: str | None = None,
    *,
    key: str = "k",
    if_match: str | None = None,
    if_none_match_any: bool = False,
    client: str = "c",
) -> Operation:
    """An operation with times in milliseconds; `return_ms` None for one that got no answer."""
    return Operation(
        key=key,
        kind=kind,
        call_ns=int(call_ms * 1_000_000),
        return_ns=None if return_ms is None else int(return_ms * 1_000_000),
        outcome=outcome,
        value=None if value is None else value.encode(),
        etag=etag,
        if_match=if_match,
        if_none_match_any=if_none_match_any,
        client=client,
    )


def refused(result: CheckResult, key: str = "k") -> str:
    """Assert the checker refused exactly `key`, naming it; returns the explanation."""
    assert not result.ok, result.explain()
    assert set(result.violations) == {key}
    explanation = result.explain()
    assert f"key {key!r}: not linearizable" in explanation
    return explanation


def order(result: CheckResult, key: str = "k") -> list[str]:
    """The linearization found for `key`, one `KIND value-or-outcome` per operation."""
    assert result.ok, result.explain()
    return [
        f"{found.kind.value} {(found.value or b'').decode() or found.outcome}"
        for found in result.linearizations[key].operations
    ]


# -- accepted histories ---------------------------------------------------------------------


def test_a_sequential_history_over_every_kind_of_request_is_linearizable() -> None:
    history = [
        op(Kind.GET, 0, 1, S.NOT_FOUND),
        op(Kind.PUT, 2, 3, S.STORED, "a", '"e1"'),
        op(Kind.GET, 4, 5, S.FOUND, "a", '"e1"'),
        op(Kind.PUT, 6, 7, S.STORED, "b", '"e2"', if_match='"e1"'),
        op(Kind.PUT, 8, 9, S.PRECONDITION_FAILED, "x", if_match='"e1"'),
        op(Kind.PUT, 10, 11, S.PRECONDITION_FAILED, "y", if_none_match_any=True),
        op(Kind.CREATE, 12, 13, S.ALREADY_EXISTS, "z"),
        op(Kind.DELETE, 14, 15, S.PRECONDITION_FAILED, if_match='"e1"'),
        op(Kind.DELETE, 16, 17, S.DELETED, if_match='"e2"'),
        op(Kind.DELETE, 18, 19, S.NOT_FOUND),
        op(Kind.PUT, 20, 21, S.PRECONDITION_FAILED, "w", if_match='"e2"'),
        op(Kind.CREATE, 22, 23, S.CREATED, "c", '"e3"'),
        op(Kind.DELETE, 24, 25, S.DELETED),
        op(Kind.PUT, 26, 27, S.STORED, "d", '"e4"', if_none_match_any=True),
        op(Kind.PUT, 28, 29, S.TOO_LARGE, "too large"),
    ]
    result = check_linearizable(history)
    assert result.ok, result.explain()
    assert list(result.linearizations["k"].operations) == history
    writes = result.linearizations["k"].writes
    assert [write.written for write in writes] == [b"a", b"b", None, b"c", None, b"d"]


def test_overlapping_writes_may_take_effect_in_either_order() -> None:
    result = check_linearizable(
        [
            op(Kind.PUT, 0, 10, S.STORED, "a", '"e1"'),
            op(Kind.PUT, 2, 8, S.STORED, "b", '"e2"'),
            op(Kind.GET, 3, 4, S.FOUND, "b", '"e2"'),
            op(Kind.GET, 5, 6, S.FOUND, "a", '"e1"'),
        ]
    )
    assert order(result) == ["PUT b", "GET b", "PUT a", "GET a"]


def test_a_read_overlapping_a_write_may_see_the_old_or_the_new_value() -> None:
    result = check_linearizable(
        [
            op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
            op(Kind.PUT, 2, 9, S.STORED, "b", '"e2"'),
            op(Kind.GET, 3, 4, S.FOUND, "a", '"e1"'),
            op(Kind.GET, 5, 6, S.FOUND, "b", '"e2"'),
            op(Kind.DELETE, 7, 12, S.DELETED),
            op(Kind.GET, 8, 10, S.FOUND, "b", '"e2"'),
            op(Kind.GET, 11, 13, S.NOT_FOUND),
        ]
    )
    assert order(result) == [
        "PUT a",
        "GET a",
        "PUT b",
        "GET b",
        "GET b",
        "DELETE deleted",
        "GET not found",
    ]


def test_two_overlapping_creates_only_one_wins() -> None:
    result = check_linearizable(
        [
            op(Kind.CREATE, 0, 5, S.ALREADY_EXISTS, "a"),
            op(Kind.CREATE, 1, 4, S.CREATED, "b", '"e1"'),
        ]
    )
    assert order(result) == ["POST b", "POST a"]


def test_a_write_with_no_answer_may_have_taken_effect_and_a_read_reveals_its_etag() -> None:
    result = check_linearizable(
        [
            op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
            op(Kind.PUT, 2, None, None, "lost"),  # timed out
            op(Kind.GET, 10, 11, S.FOUND, "lost", '"e2"'),
            op(Kind.PUT, 12, 13, S.STORED, "b", '"e3"', if_match='"e2"'),
            op(Kind.PUT, 14, 15, S.PRECONDITION_FAILED, "c", if_match='"e1"'),
        ]
    )
    assert order(result) == ["PUT a", "PUT lost", "GET lost", "PUT b", "PUT c"]
    assert [write.written for write in result.linearizations["k"].writes] == [b"a", b"lost", b"b"]


def test_a_write_with_no_answer_may_also_never_have_happened() -> None:
    result = check_linearizable(
        [
            op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
            op(Kind.DELETE, 2, None, Outcome.UNEXPECTED),  # a 500: outcome unknown
            op(Kind.PUT, 3, None, None, "lost"),
            op(Kind.GET, 10, 11, S.FOUND, "a", '"e1"'),
            op(Kind.GET, 12, None, None),
        ],
        expected_writes={"k": [b"a"]},
    )
    assert order(result) == ["PUT a", "GET a"]


def test_an_unseen_etag_cannot_be_one_another_write_returned() -> None:
    result = check_linearizable(
        [
            op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
            op(Kind.PUT, 2, None, None, "lost"),
            op(Kind.GET, 10, 11, S.FOUND, "lost", '"e1"'),
        ]
    )
    assert "it returned ETag \"e1\", but the key holds b'lost' with an ETag no answer" in refused(
        result
    )


def test_two_lost_writes_cannot_have_had_the_same_etag() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, None, None, "x"),
                op(Kind.GET, 10, 11, S.FOUND, "x", '"e1"'),
                op(Kind.PUT, 12, None, None, "y"),
                op(Kind.GET, 20, 21, S.FOUND, "y", '"e1"'),
            ]
        )
    )
    # No lost write can have the tag that was also read with another value.
    assert "it returned ETag \"e1\", but the key holds b'x' with an ETag no answer" in explanation


def test_a_write_with_no_answer_cannot_take_effect_before_it_was_called() -> None:
    result = check_linearizable(
        [
            op(Kind.GET, 0, 1, S.FOUND, "lost", '"e1"'),
            op(Kind.PUT, 2, None, None, "lost"),
        ]
    )
    assert "it read b'lost', but the key is absent" in refused(result)


# -- doctored histories ---------------------------------------------------------------------


def test_refuses_a_stale_read_after_a_completed_write() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
                op(Kind.PUT, 2, 3, S.STORED, "b", '"e2"'),
                op(Kind.GET, 4, 5, S.FOUND, "a", '"e1"'),
            ]
        )
    )
    assert "The longest consistent order places 2 of them" in explanation
    assert (
        "#2 c GET -> found b'a' \"e1\" [4.000..5.000 ms]: it read b'a', but the key holds b'b'"
        in (explanation)
    )


def test_refuses_a_read_of_a_value_never_written() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, 5, S.STORED, "a", '"e1"'),
                op(Kind.GET, 1, 6, S.FOUND, "ghost", '"e1"'),
            ]
        )
    )
    assert "it read b'ghost', but the key holds b'a' with \"e1\"" in explanation


def test_refuses_a_lost_write() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
                op(Kind.GET, 2, 3, S.NOT_FOUND),
            ]
        )
    )
    assert "it found nothing, but the key holds b'a' with \"e1\"" in explanation


def test_refuses_a_delete_that_succeeded_twice() -> None:
    history = [
        op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
        op(Kind.DELETE, 2, 3, S.DELETED),
        op(Kind.DELETE, 4, 5, S.DELETED),
    ]
    assert "the key is absent, so it should be not found" in refused(check_linearizable(history))
    overlapping = [history[0], op(Kind.DELETE, 2, 5, S.DELETED), op(Kind.DELETE, 3, 4, S.DELETED)]
    refused(check_linearizable(overlapping))


def test_refuses_a_conditional_write_that_succeeded_against_a_stale_etag() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
                op(Kind.PUT, 2, 3, S.STORED, "b", '"e2"'),
                op(Kind.PUT, 4, 5, S.STORED, "c", '"e3"', if_match='"e1"'),
            ]
        )
    )
    assert "the key holds b'b' with \"e2\", so it should be precondition failed" in explanation


def test_refuses_a_read_of_a_deleted_value_after_the_delete_returned() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
                op(Kind.DELETE, 2, 3, S.DELETED),
                op(Kind.GET, 4, 5, S.FOUND, "a", '"e1"'),
            ]
        )
    )
    assert "it read b'a', but the key is absent" in explanation


def test_refuses_a_read_whose_etag_belongs_to_another_write() -> None:
    explanation = refused(
        check_linearizable(
            [
                op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
                op(Kind.PUT, 2, 3, S.STORED, "b", '"e2"'),
                op(Kind.GET, 4, 5, S.FOUND, "b", '"e1"'),
            ]
        )
    )
    assert 'it returned ETag "e1", but the key holds b\'b\' with "e2"' in explanation


def test_names_only_the_key_whose_history_is_wrong() -> None:
    result = check_linearizable(
        [
            op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"', key="good"),
            op(Kind.PUT, 0, 1, S.STORED, "a", '"e2"', key="bad"),
            op(Kind.GET, 2, 3, S.FOUND, "a", '"e1"', key="good"),
            op(Kind.DELETE, 2, 3, S.DELETED, key="bad"),
            op(Kind.GET, 4, 5, S.FOUND, "a", '"e2"', key="bad"),
        ]
    )
    explanation = refused(result, "bad")
    assert "good" not in explanation
    assert [found.key for found in result.violations["bad"].stuck] == ["bad"]
    assert len(result.linearizations["good"].operations) == 2


# -- /history as a constraint ---------------------------------------------------------------

CONCURRENT_WRITES = [
    op(Kind.PUT, 0, 10, S.STORED, "a", '"e1"'),
    op(Kind.PUT, 1, 9, S.STORED, "b", '"e2"'),
    op(Kind.PUT, 2, 8, S.PRECONDITION_FAILED, "c", if_match='"e0"'),
]


@pytest.mark.parametrize("recorded", [[b"a", b"b"], [b"b", b"a"]])
def test_the_recorded_order_of_concurrent_writes_is_the_one_found(recorded: list[bytes]) -> None:
    result = check_linearizable(CONCURRENT_WRITES, expected_writes={"k": recorded})
    assert result.ok, result.explain()
    assert [write.written for write in result.linearizations["k"].writes] == recorded


def test_refuses_a_history_that_lost_an_acknowledged_write() -> None:
    explanation = refused(check_linearizable(CONCURRENT_WRITES, expected_writes={"k": [b"a"]}))
    assert "/history lists only 1 writes, and this would be one more" in explanation


def test_refuses_a_history_with_a_refused_or_unknown_write() -> None:
    explanation = refused(
        check_linearizable(CONCURRENT_WRITES, expected_writes={"k": [b"a", b"b", b"c"]})
    )
    assert "/history lists 1 more writes that no operation made: b'c'" in explanation
    refused(check_linearizable([], expected_writes={"k": [None]}))


def test_refuses_a_history_in_an_order_real_time_forbids() -> None:
    sequential = [
        op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
        op(Kind.DELETE, 2, 3, S.DELETED),
        op(Kind.PUT, 4, 5, S.STORED, "b", '"e2"'),
    ]
    assert check_linearizable(sequential, expected_writes={"k": [b"a", None, b"b"]}).ok
    explanation = refused(check_linearizable(sequential, expected_writes={"k": [b"a", b"b", None]}))
    assert "/history has b'b' as write 2, not <deleted>" in explanation


# -- against a reference: the real Store, and brute force ----------------------------------

BOUND = 200_000
"""Search steps per key past which a test fails instead of hanging (what it takes is printed)."""

STORE_ANSWERS: dict[type[StoreError], Outcome] = {
    KeyNotFound: S.NOT_FOUND,
    KeyExists: S.ALREADY_EXISTS,
    PreconditionFailed: S.PRECONDITION_FAILED,
}


def on_store(
    store: Store, kind: Kind, data: bytes, if_match: str | None, if_none_match_any: bool
) -> tuple[Outcome, Value | None]:
    """Run one request on a real Store: the outcome, and the value it read or wrote."""
    condition = Precondition(
        if_match=None if if_match is None else frozenset({if_match}),
        if_none_match=frozenset({"*"}) if if_none_match_any else None,
    )
    try:
        if kind is Kind.GET:
            return S.FOUND, store.get("k")
        if kind is Kind.DELETE:
            store.delete("k", condition)
            return S.DELETED, None
        if kind is Kind.PUT:
            return S.STORED, store.put("k", data, None, condition)
        return S.CREATED, store.create("k", data, None, condition)
    except StoreError as error:
        return STORE_ANSWERS[type(error)], None


def simulated_history(
    seed: int, clients: int, requests: int, lost: float = 0.0
) -> tuple[list[Operation], list[bytes | None]]:
    """A linearizable history on one key and the writes it applied, in order.

    Each client sends one request at a time; each lasts up to 4 ms and takes effect at a random
    instant inside it, on a real Store. With 16 clients a request overlaps some 25 others. A
    share `lost` of the writes get no answer; half of those never reach the store.
    """
    rng = random.Random(seed)
    planned: list[tuple[int, int, int, int]] = []  # effect, call, return, number
    free_at = [0] * clients
    for number in range(requests):
        client = number % clients
        call = free_at[client] + rng.randrange(200_000)
        effect = call + rng.randrange(1, 2_000_000)
        free_at[client] = effect + rng.randrange(1, 2_000_000)
        planned.append((effect, call, free_at[client], number))
    store = MemoryStore(clock=lambda: 0)
    tags = ["never-issued"]
    history: dict[int, Operation] = {}
    applied: list[bytes | None] = []
    for _, call, returned, number in sorted(planned):
        kind = rng.choice([Kind.PUT, Kind.PUT, Kind.CREATE, Kind.GET, Kind.GET, Kind.DELETE])
        tag = rng.choice(tags[-2:]) if kind is not Kind.CREATE and rng.random() < 0.3 else None
        absent = kind is Kind.PUT and tag is None and rng.random() < 0.2
        data = f"v{number}".encode()
        answer_lost = kind is not Kind.GET and rng.random() < lost
        if answer_lost and rng.random() < 0.5:
            outcome, value = None, None
        else:
            outcome, value = on_store(store, kind, data, tag, absent)
        if outcome in (S.STORED, S.CREATED, S.DELETED):
            applied.append(None if kind is Kind.DELETE else data)
        if value is not None and not answer_lost:
            tags.append(value.etag)  # conditions name only tags some answer carried
        if kind is Kind.GET:
            data = value.data if value else b""
        history[number] = Operation(
            key="k",
            kind=kind,
            call_ns=call,
            return_ns=returned,
            outcome=None if answer_lost else outcome,
            value=None if kind is Kind.DELETE or outcome is S.NOT_FOUND else data,
            etag=None if answer_lost or value is None else value.etag,
            if_match=tag,
            if_none_match_any=absent,
            client=f"t{number % clients}",
        )
    return [history[number] for number in range(requests)], applied


@pytest.mark.parametrize("lost", [0.0, 0.1])
def test_accepts_every_history_the_real_store_produces_with_its_order_of_writes(
    lost: float,
) -> None:
    for seed in range(20):
        history, applied = simulated_history(seed, clients=8, requests=120, lost=lost)
        result = check_linearizable(history, max_steps=BOUND)
        assert result.ok, f"seed {seed}: {result.explain()}"
        constrained = check_linearizable(history, expected_writes={"k": applied}, max_steps=BOUND)
        assert constrained.ok, f"seed {seed}: {constrained.explain()}"
        found = [write.written for write in constrained.linearizations["k"].writes]
        assert found == applied


def random_small_history(rng: random.Random) -> list[Operation]:
    """Up to six overlapping requests with plausible but random answers: many are wrong."""
    count = rng.randint(2, 6)
    plans = []
    for number in range(count):
        kind = rng.choice(list(Kind))
        outcome: Outcome | None = rng.choice(
            {
                Kind.PUT: [S.STORED, S.STORED, S.PRECONDITION_FAILED],
                Kind.CREATE: [S.CREATED, S.ALREADY_EXISTS],
                Kind.GET: [S.FOUND, S.FOUND, S.NOT_FOUND],
                Kind.DELETE: [S.DELETED, S.NOT_FOUND, S.PRECONDITION_FAILED],
            }[kind]
        )
        if kind is not Kind.GET and rng.random() < 0.15:
            outcome = None
        call = rng.randrange(12)
        plans.append((number, kind, outcome, call, call + rng.randrange(6)))
    writers = [number for number, kind, *_ in plans if kind in (Kind.PUT, Kind.CREATE)]
    issued = [f'"e{n}"' for n, _, outcome, *_ in plans if outcome in (S.STORED, S.CREATED)]
    history = []
    for number, kind, outcome, call, returned in plans:
        value = f"v{number}".encode() if kind in (Kind.PUT, Kind.CREATE) else None
        etag = f'"e{number}"' if outcome in (S.STORED, S.CREATED) else None
        if outcome is S.FOUND and writers:
            source = rng.choice(writers)
            value = f"v{source}".encode()
            etag = rng.choice([f'"e{source}"', f'"e{source}"', *issued, '"g1"', '"g2"'])
        elif outcome is S.FOUND:
            outcome = S.NOT_FOUND
        conditional = kind in (Kind.PUT, Kind.DELETE) and rng.random() < 0.4
        history.append(
            Operation(
                key="k",
                kind=kind,
                call_ns=call,
                return_ns=returned,
                outcome=outcome,
                value=value,
                etag=etag,
                if_match=rng.choice([*issued, '"never"']) if conditional else None,
                if_none_match_any=kind is Kind.PUT and not conditional and rng.random() < 0.3,
            )
        )
    return history


def replay(order: Sequence[Operation]) -> tuple[bytes | None, ...] | None:
    """The writes this order applies on a real Store, if it reproduces every answer."""
    store = MemoryStore(clock=lambda: 0)
    to_store: dict[str, str] = {}  # the tags clients saw <-> the Store's own
    seen_as: dict[str, str] = {}
    applied: list[bytes | None] = []
    for request in order:
        if_match = None if request.if_match is None else to_store.get(request.if_match, "?")
        outcome, value = on_store(
            store, request.kind, request.value or b"", if_match, request.if_none_match_any
        )
        if request.known and outcome is not request.outcome:
            return None
        if outcome is S.FOUND and value is not None:
            if value.data != request.value or seen_as.get(value.etag, request.etag) != request.etag:
                return None
        elif outcome in (S.STORED, S.CREATED, S.DELETED):
            applied.append(request.written)
        if value is not None and request.known and value.etag not in seen_as:
            if request.etag is None or request.etag in to_store:
                return None  # one tag for two writes
            to_store[request.etag], seen_as[value.etag] = value.etag, request.etag
    return tuple(applied)


def brute_force(history: list[Operation]) -> set[tuple[bytes | None, ...]]:
    """The sequences of writes of every valid linearization (empty: not linearizable)."""
    answered = [o for o in history if o.known]
    unknown = [o for o in history if not o.known]
    found = set()
    for size in range(len(unknown) + 1):
        for chosen in combinations(unknown, size):
            for candidate in permutations([*answered, *chosen]):
                in_time = all(
                    not (later.known and (later.return_ns or 0) < earlier.call_ns)
                    for position, earlier in enumerate(candidate)
                    for later in candidate[position + 1 :]
                )
                writes = replay(candidate) if in_time else None
                if writes is not None:
                    found.add(writes)
    return found


HISTORIES = 1500


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    """Every small history: the same verdict, and the same possible orders of writes."""
    rng = random.Random(SEED)
    verdicts: Counter[bool] = Counter()
    for _ in range(HISTORIES):
        history = random_small_history(rng)
        valid_writes = brute_force(history)
        result = check_linearizable(history)
        shown = "\n".join(describe(o, n) for n, o in enumerate(history))
        assert result.ok == bool(valid_writes), f"{shown}\n{result.explain()}"
        verdicts[result.ok] += 1
        if not result.ok:
            continue
        assert tuple(w.written for w in result.linearizations["k"].writes) in valid_writes
        for writes in valid_writes:
            assert check_linearizable(history, expected_writes={"k": writes}).ok, shown
        doctored = (*min(valid_writes, key=repr), b"v0")
        expected = doctored in valid_writes
        assert check_linearizable(history, expected_writes={"k": doctored}).ok == expected
    print(f"\n{HISTORIES} random histories: {verdicts[True]} linearizable, {verdicts[False]} not")
    assert min(verdicts.values()) > HISTORIES / 10


# -- the search is bounded ------------------------------------------------------------------


def racing_rounds(rounds: int) -> list[Operation]:
    """Rounds of two racing PUTs, then a read of a value nobody wrote: 2**rounds orders to
    rule out, unless the search notices that each round ends in one of only two states."""
    history = []
    for number in range(rounds):
        at = number * 10
        history += [
            op(Kind.PUT, at, at + 5, S.STORED, f"a{number}", f'"a{number}"'),
            op(Kind.PUT, at + 1, at + 4, S.STORED, f"b{number}", f'"b{number}"'),
        ]
    end = rounds * 10
    return [*history, op(Kind.GET, end, end + 1, S.FOUND, "ghost", '"ghost"')]


def mean_overlap(history: list[Operation]) -> float:
    """How many other operations each one overlaps, on average."""
    overlaps = [
        sum(
            (o.return_ns or 0) > other.call_ns and (other.return_ns or 0) > o.call_ns
            for other in history
        )
        - 1
        for o in history
    ]
    return sum(overlaps) / len(overlaps)


@pytest.mark.parametrize(("clients", "budget_s"), [(8, 0.5), (12, 2.0)])
def test_a_long_history_with_heavy_overlap_is_checked_in_well_under_a_second(
    clients: int, budget_s: float
) -> None:
    """Unloaded, both take well under a second (about 0.05 and 0.3 s); the budgets leave
    room for a busy CI machine, and `BOUND` makes a search that blows up fail, not hang."""
    history, _ = simulated_history(SEED, clients=clients, requests=200)
    reads = [index for index, o in enumerate(history) if o.outcome is S.FOUND]
    doctored = list(history)
    doctored[reads[-1]] = replace(doctored[reads[-1]], value=b"ghost")

    result = check_linearizable(history, max_steps=BOUND)
    refusal = check_linearizable(doctored, max_steps=BOUND)
    print(
        f"\n200 operations, {clients} clients, {mean_overlap(history):.1f} overlapping each: "
        f"{result.explain()}; with a doctored read {refusal.steps} steps in "
        f"{refusal.elapsed_s:.3f} s"
    )
    assert mean_overlap(history) > clients
    assert result.ok, result.explain()
    assert "it read b'ghost'" in refused(refusal)
    assert result.elapsed_s + refusal.elapsed_s < budget_s


def test_memoization_is_what_keeps_the_search_bounded() -> None:
    memoized = check_linearizable(racing_rounds(100), max_steps=BOUND)
    assert "it read b'ghost', but the key holds b'b99' with \"b99\"" in refused(memoized)
    assert memoized.steps < 10 * 201
    assert memoized.elapsed_s < 0.5

    plain = check_linearizable(racing_rounds(12), memoize=False)
    refused(plain)
    assert plain.steps > 2**12


# -- the workload against a real kvservice ---------------------------------------------------

KEYS = ("lin0", "lin1", "lin2")
CLIENTS = 8
REQUESTS_PER_CLIENT = 250
TIME_LIMIT_S = 20.0
MAX_STEPS_PER_KEY = 500_000  # a broken service must fail the test, not hang it


@dataclass(frozen=True)
class Request:
    """One kind of request in the workload's mix, with its share of the draws.

    A conditional request names the last ETag its client saw for the key: right after reading
    the key (`read_first`, as a compare-and-set loop does) or from whenever it last looked.
    """

    label: str
    kind: Kind
    weight: int
    if_match: bool = False
    read_first: bool = False
    if_none_match_any: bool = False


MIX = (
    Request("GET", Kind.GET, 28),
    Request("PUT", Kind.PUT, 18),
    Request("POST", Kind.CREATE, 10),
    Request("DELETE", Kind.DELETE, 8),
    Request("PUT If-Match, after a GET", Kind.PUT, 12, if_match=True, read_first=True),
    Request("PUT If-Match, older ETag", Kind.PUT, 6, if_match=True),
    Request("PUT If-None-Match: *", Kind.PUT, 8, if_none_match_any=True),
    Request("DELETE If-Match, after a GET", Kind.DELETE, 6, if_match=True, read_first=True),
    Request("DELETE If-Match, older ETag", Kind.DELETE, 4, if_match=True),
)
READ_FIRST = Request("GET before an If-Match", Kind.GET, 0)

Send = Callable[[HTTPKVClient, str, bytes, str | None, bool], Reply]
SEND: dict[Kind, Send] = {
    Kind.PUT: lambda kv, key, value, tag, absent: kv.put(
        key, value, only_if_version=tag, only_if_absent=absent
    ),
    Kind.CREATE: lambda kv, key, value, tag, absent: kv.create(key, value),
    Kind.GET: lambda kv, key, value, tag, absent: kv.get(key),
    Kind.DELETE: lambda kv, key, value, tag, absent: kv.delete(key, only_if_version=tag),
}


@dataclass(frozen=True)
class Recorded:
    """One request of the workload: its label in the mix, the status line, the operation."""

    label: str
    status: str
    operation: Operation


def perform(
    kv: HTTPKVClient, client: str, request: Request, key: str, value: bytes, tag: str | None
) -> Recorded:
    """Send one request, timing it with the monotonic clock; no answer is an unknown outcome."""
    call_ns = time.monotonic_ns()
    try:
        reply: Reply | None = SEND[request.kind](kv, key, value, tag, request.if_none_match_any)
        status = reply.evidence.split(":")[0] if reply else ""
    except KVUnreachable as error:
        reply, status = None, f"no answer ({error})"
    return_ns = time.monotonic_ns()
    if request.kind is Kind.GET:
        value_seen = reply.value if reply else None
    else:
        value_seen = None if request.kind is Kind.DELETE else value
    operation = Operation(
        key=key,
        kind=request.kind,
        call_ns=call_ns,
        return_ns=return_ns if reply else None,
        outcome=reply.outcome if reply else None,
        value=value_seen,
        etag=reply.version if reply else None,
        if_match=tag,
        if_none_match_any=request.if_none_match_any,
        client=client,
    )
    return Recorded(request.label, status, operation)


def run_client(
    kv: HTTPKVClient, client: str, start: threading.Barrier, stop_ns: int
) -> list[Recorded]:
    """One client's requests, one at a time: random kinds and keys from a seeded generator."""
    rng = random.Random(f"{SEED}/{client}")
    last_etag: dict[str, str] = {}
    weights = [request.weight for request in MIX]
    records: list[Recorded] = []

    def send(request: Request, key: str, tag: str | None) -> None:
        value = f"{client}-{len(records)}".encode()  # unique, so reads tell writes apart
        records.append(perform(kv, client, request, key, value, tag))
        if records[-1].operation.etag is not None:
            last_etag[key] = records[-1].operation.etag

    start.wait(timeout=10)
    while len(records) < REQUESTS_PER_CLIENT and time.monotonic_ns() < stop_ns:
        request = rng.choices(MIX, weights)[0]
        key = rng.choice(KEYS)
        if request.read_first:
            send(READ_FIRST, key, None)
        send(request, key, last_etag.get(key, '"never-issued"') if request.if_match else None)
    return records


def recorded_writes(kv: HTTPKVClient, key: str) -> list[bytes | None]:
    """What /history lists for `key`, oldest first (None for a delete)."""
    reply = kv.history(key)
    assert reply.outcome is S.FOUND, reply
    return list(reversed(reply.values))


def assert_history_lists_exactly_the_acknowledged_writes(
    key: str, operations: list[Operation], listed: list[bytes | None]
) -> None:
    """Each acknowledged write once, refused writes never; writes with no answer at most once."""
    writes = [o for o in operations if o.key == key and o.kind is not Kind.GET]
    acknowledged = Counter(o.written for o in writes if o.succeeded)
    unknown = Counter(o.written for o in writes if not o.known)
    missing = acknowledged - Counter(listed)
    unexplained = Counter(listed) - acknowledged - unknown
    assert not missing, f"/{key}/history lacks acknowledged writes {dict(missing)}"
    assert not unexplained, f"/{key}/history lists writes nobody was told of: {dict(unexplained)}"


def test_concurrent_clients_see_a_linearizable_store_whose_history_agrees(kv_url: str) -> None:
    assert_linearizable_under_concurrent_clients([kv_url])


def assert_linearizable_under_concurrent_clients(urls: list[str]) -> None:
    """Run the workload, client n on urls[n % len(urls)] (replicas of one store, or one
    service), and check it: linearizable, and /history a valid linearization of it."""
    started = time.monotonic()
    start = threading.Barrier(CLIENTS)
    stop_ns = time.monotonic_ns() + int(TIME_LIMIT_S * 1e9)
    services = [HTTPKVClient(url) for url in urls]
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            clients = [
                pool.submit(run_client, services[n % len(services)], f"t{n}", start, stop_ns)
                for n in range(CLIENTS)
            ]
            records = [record for client in clients for record in client.result()]
        ran_s = time.monotonic() - started
        history = {key: recorded_writes(services[0], key) for key in KEYS}
    finally:
        for service in services:
            service.close()
    operations = [record.operation for record in records]

    result = check_linearizable(operations, max_steps=MAX_STEPS_PER_KEY)
    constrained = check_linearizable(
        operations, expected_writes=history, max_steps=MAX_STEPS_PER_KEY
    )
    print(summary(records, ran_s, result, constrained, history, replicas=len(urls)))

    assert result.ok, result.explain()
    for key in KEYS:
        assert_history_lists_exactly_the_acknowledged_writes(key, operations, history[key])
    # The real claim: the order /history records is itself a valid linearization.
    assert constrained.ok, constrained.explain()
    for key in KEYS:
        found = [write.written for write in constrained.linearizations[key].writes]
        assert found == history[key]
    # The checker copes with requests that got no answer, but on loopback there should be none.
    unknown = [describe(o, n) for n, o in enumerate(operations) if not o.known]
    assert not unknown, "requests without a proper answer:\n" + "\n".join(unknown[:10])
    assert len(operations) >= CLIENTS * REQUESTS_PER_CLIENT, "the workload ran out of time"


def test_the_history_check_refuses_lost_duplicated_or_refused_writes() -> None:
    history = [
        op(Kind.PUT, 0, 1, S.STORED, "a", '"e1"'),
        op(Kind.PUT, 0, 1, S.PRECONDITION_FAILED, "b", if_match='"e0"'),
        op(Kind.DELETE, 2, 3, S.DELETED),
        op(Kind.PUT, 2, None, None, "c"),
    ]
    allowed: list[list[bytes | None]] = [[b"a", None], [b"a", None, b"c"], [b"a", b"c", None]]
    for listed in allowed:
        assert_history_lists_exactly_the_acknowledged_writes("k", history, listed)
    wrong_ones: list[list[bytes | None]] = [
        [b"a"],
        [b"a", None, None],
        [b"a", b"a", None],
        [b"a", b"b", None],
    ]
    for wrong in wrong_ones:
        with pytest.raises(AssertionError):
            assert_history_lists_exactly_the_acknowledged_writes("k", history, wrong)


def summary(
    records: list[Recorded],
    ran_s: float,
    result: CheckResult,
    constrained: CheckResult,
    history: dict[str, list[bytes | None]],
    replicas: int = 1,
) -> str:
    """The figures for docs/RELIABILITY.md."""
    by_label: dict[str, Counter[str]] = {request.label: Counter() for request in (*MIX, READ_FIRST)}
    for record in records:
        by_label[record.label][record.status] += 1
    lines = [
        f"\nlinearizability workload: {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests on "
        f"{len(KEYS)} keys (seed {SEED}), over {replicas} replica(s): {len(records)} requests in "
        f"{ran_s:.2f} s "
        f"({len(records) / ran_s:.0f}/s)"
    ]
    for label, statuses in by_label.items():
        counts = ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()))
        lines.append(f"  {label:<30}{sum(statuses.values()):>5}  {counts}")
    lines.append(f"checker: {result.explain()}")
    lines.append(f"checker with /history as a constraint: {constrained.explain()}")
    entries = sum(len(writes) for writes in history.values())
    deletes = sum(writes.count(None) for writes in history.values())
    agreeing = sum(
        key in result.linearizations
        and [write.written for write in result.linearizations[key].writes] == writes
        for key, writes in history.items()
    )
    lines.append(
        f"/history: {entries} entries compared ({entries - deletes} values, {deletes} deletes), "
        f"each acknowledged write once, in a valid order; the first order found without it "
        f"already agreed on {agreeing} of {len(history)} keys (overlapping writes may go "
        "either way)"
    )
    return "\n".join(lines)
