"""SortedKeys and SortedItems against a plain sorted set: random adds and discards across
block splits and merges, membership, every page `starting` hands out, and the front and the
counts below a bound that the memory store's deadlines use."""

from __future__ import annotations

import itertools
import random

from kvservice.store.sorted_keys import BLOCK_KEYS, SortedItems, SortedKeys


def reference_page(keys: set[str], prefix: str, after: str | None) -> list[str]:
    return sorted(k for k in keys if k.startswith(prefix) and (after is None or k > after))


def test_random_operations_agree_with_a_sorted_set() -> None:
    rng = random.Random(20261201)
    alphabet = "ab9Z"
    sorted_keys, reference = SortedKeys(), set()
    for step in range(6 * BLOCK_KEYS * 4):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))
        if rng.random() < 0.7 or step < 2 * BLOCK_KEYS:
            sorted_keys.add(key)
            reference.add(key)
        else:
            sorted_keys.discard(key)
            reference.discard(key)
        if step % 97 == 0:
            assert len(sorted_keys) == len(reference)
            assert list(sorted_keys.starting()) == sorted(reference)
    assert len(reference) > 2 * BLOCK_KEYS, "enough keys for several blocks"
    for prefix, after in itertools.product(
        ["", "a", "ab", "9Z", "Zb"], [None, "", "a", "ab9", "b"]
    ):
        assert list(sorted_keys.starting(prefix, after)) == reference_page(reference, prefix, after)
    for key in [*reference, "notthere", "a" * 8]:
        assert (key in sorted_keys) == (key in reference), key
    for key in rng.sample(sorted(reference), len(reference)):  # every key, block edges too
        sorted_keys.discard(key)
        reference.discard(key)
        assert key not in sorted_keys
        if len(reference) % 101 == 0:
            assert list(sorted_keys.starting()) == sorted(reference)
    assert len(sorted_keys) == 0


def test_adding_twice_and_discarding_what_is_absent_change_nothing() -> None:
    sorted_keys = SortedKeys()
    sorted_keys.add("k")
    sorted_keys.add("k")
    sorted_keys.discard("absent")
    assert len(sorted_keys) == 1
    assert list(sorted_keys.starting()) == ["k"]
    sorted_keys.discard("k")
    assert len(sorted_keys) == 0
    assert list(sorted_keys.starting()) == []


def test_every_key_is_found_and_removable_right_after_blocks_split() -> None:
    keys = [f"k{number:06d}" for number in range(5 * BLOCK_KEYS)]  # ascending: several splits
    sorted_keys = SortedKeys()
    for key in keys:
        sorted_keys.add(key)
    assert all(key in sorted_keys for key in keys)
    assert list(sorted_keys.starting(after=keys[BLOCK_KEYS - 1])) == keys[BLOCK_KEYS:]
    for key in keys[::-1]:
        sorted_keys.discard(key)
        assert key not in sorted_keys
    assert len(sorted_keys) == 0


def test_deadlines_agree_with_a_sorted_list_at_the_front_and_below_any_bound() -> None:
    rng = random.Random(20261206)
    deadlines: SortedItems[tuple[int, str]] = SortedItems()
    reference: set[tuple[int, str]] = set()
    for step in range(6 * BLOCK_KEYS * 4):
        item = (rng.randint(0, 3_000), f"k{rng.randint(0, 3_000)}")
        if rng.random() < 0.7:
            deadlines.add(item)
            reference.add(item)
        else:
            deadlines.discard(item)
            reference.discard(item)
        if step % 97 == 0:
            assert deadlines.first() == min(reference, default=None)
            bound = (rng.randint(0, 3_000), "")
            assert deadlines.count_below(bound) == sum(1 for i in reference if i < bound)
    assert len(deadlines) > 2 * BLOCK_KEYS, "enough items for several blocks"
    while reference:
        smallest = min(reference)
        assert deadlines.first() == smallest
        deadlines.discard(smallest)
        reference.discard(smallest)
    assert deadlines.first() is None
    assert deadlines.count_below((10**9, "")) == 0
