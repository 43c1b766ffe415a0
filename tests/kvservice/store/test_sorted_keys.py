"""SortedKeys against a plain sorted set: random adds and discards across block splits and
merges, membership, and every page `starting` hands out."""

from __future__ import annotations

import itertools
import random

from kvservice.store.sorted_keys import BLOCK_KEYS, SortedKeys


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
