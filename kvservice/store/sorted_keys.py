"""A set of keys kept in lexicographic order, for listing a page of them without a sort.

A list of sorted blocks of at most 2 * BLOCK_KEYS keys, with the largest key of each block in
a list of its own: adding or removing a key is a bisection of that list, then of one block,
then an insertion into or a deletion from a block of a few hundred keys; a page starts with
the same two bisections. That is the layout of `sortedcontainers.SortedList`, which would do
this as well; the store's domain takes no dependency beyond the standard library, so the
few operations the store needs are written here.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

BLOCK_KEYS = 512
"""Keys per block after a split; a block is split when it passes twice that."""


class SortedKeys:
    """Distinct strings in sorted order; not thread-safe (the store's lock guards it)."""

    def __init__(self) -> None:
        self._blocks: list[list[str]] = []
        self._maxes: list[str] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        index = bisect_left(self._maxes, key)
        if index == len(self._maxes):
            return False
        block = self._blocks[index]
        position = bisect_left(block, key)
        return position < len(block) and block[position] == key

    def add(self, key: str) -> None:
        """Add `key` (nothing happens if it is there already)."""
        if not self._blocks:
            self._blocks.append([key])
            self._maxes.append(key)
            self._count = 1
            return
        index = min(bisect_left(self._maxes, key), len(self._maxes) - 1)
        block = self._blocks[index]
        position = bisect_left(block, key)
        if position < len(block) and block[position] == key:
            return
        block.insert(position, key)
        self._maxes[index] = block[-1]
        self._count += 1
        if len(block) > 2 * BLOCK_KEYS:
            self._blocks[index : index + 1] = [block[:BLOCK_KEYS], block[BLOCK_KEYS:]]
            self._maxes[index : index + 1] = [block[BLOCK_KEYS - 1], block[-1]]

    def discard(self, key: str) -> None:
        """Remove `key` if it is there."""
        index = bisect_left(self._maxes, key)
        if index == len(self._maxes):
            return
        block = self._blocks[index]
        position = bisect_left(block, key)
        if position == len(block) or block[position] != key:
            return
        del block[position]
        self._count -= 1
        if block:
            self._maxes[index] = block[-1]
        else:
            del self._blocks[index]
            del self._maxes[index]

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
