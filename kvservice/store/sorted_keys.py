"""Distinct items kept in sorted order: the keys holding a value (for listing a page of them
without a sort) and the memory store's deadlines (for finding the keys due to expire without
looking at the others).

A list of sorted blocks of at most 2 * BLOCK_KEYS items, with the largest item of each block
in a list of its own: adding or removing an item is a bisection of that list, then of one
block, then an insertion into or a deletion from a block of a few hundred items; a page starts
with the same two bisections. That is the layout of `sortedcontainers.SortedList`, which would
do this as well; the store's domain takes no dependency beyond the standard library, so the
few operations the store needs are written here.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar


class Ordered(Protocol):
    """What bisection needs of an item: `<` (str, and tuples of ints and strs, here)."""

    def __lt__(self, other: Any, /) -> bool: ...


Item = TypeVar("Item", bound=Ordered)

BLOCK_KEYS = 512
"""Items per block after a split; a block is split when it passes twice that."""


class SortedItems(Generic[Item]):
    """Distinct items in sorted order; not thread-safe (the store's lock guards it)."""

    def __init__(self) -> None:
        self._blocks: list[list[Item]] = []
        self._maxes: list[Item] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: Item) -> bool:
        index = bisect_left(self._maxes, item)
        if index == len(self._maxes):
            return False
        block = self._blocks[index]
        position = bisect_left(block, item)
        return position < len(block) and block[position] == item

    def add(self, item: Item) -> None:
        """Add `item` (nothing happens if it is there already)."""
        if not self._blocks:
            self._blocks.append([item])
            self._maxes.append(item)
            self._count = 1
            return
        index = min(bisect_left(self._maxes, item), len(self._maxes) - 1)
        block = self._blocks[index]
        position = bisect_left(block, item)
        if position < len(block) and block[position] == item:
            return
        block.insert(position, item)
        self._maxes[index] = block[-1]
        self._count += 1
        if len(block) > 2 * BLOCK_KEYS:
            self._blocks[index : index + 1] = [block[:BLOCK_KEYS], block[BLOCK_KEYS:]]
            self._maxes[index : index + 1] = [block[BLOCK_KEYS - 1], block[-1]]

    def discard(self, item: Item) -> None:
        """Remove `item` if it is there."""
        index = bisect_left(self._maxes, item)
        if index == len(self._maxes):
            return
        block = self._blocks[index]
        position = bisect_left(block, item)
        if position == len(block) or block[position] != item:
            return
        del block[position]
        self._count -= 1
        if block:
            self._maxes[index] = block[-1]
        else:
            del self._blocks[index]
            del self._maxes[index]

    def first(self) -> Item | None:
        """The smallest item, or None if there is none; O(1)."""
        return self._blocks[0][0] if self._blocks else None

    def count_below(self, bound: Item) -> int:
        """How many items sort before `bound`: two bisections and a sum over the blocks
        before it (a few hundred items each), never a walk over the items."""
        index = bisect_left(self._maxes, bound)
        below = sum(len(block) for block in self._blocks[:index])
        if index < len(self._blocks):
            below += bisect_left(self._blocks[index], bound)
        return below


class SortedKeys(SortedItems[str]):
    """Distinct keys in lexicographic order, listed by prefix a page at a time."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key)

    def starting(self, prefix: str = "", after: str | None = None) -> Iterator[str]:
        """The keys that start with `prefix` and sort strictly after `after`, in order.

        The set must not change while the iterator is in use.
        """
        if after is not None and after >= prefix:
            index = bisect_right(self._maxes, after)
            find = bisect_right
            start = after
        else:
            index = bisect_left(self._maxes, prefix)
            find = bisect_left
            start = prefix
        for block_index in range(index, len(self._blocks)):
            block = self._blocks[block_index]
            first = find(block, start) if block_index == index else 0
            for position in range(first, len(block)):
                key = block[position]
                if not key.startswith(prefix):
                    return
                yield key
