"""The process-wide budget for bytes held in unsent replies, shared by every transport.

A reply a client does not read stays in the process until it does: in a connection's write
buffer and queue (`core.connection`), whichever its transport. One slow reader is bounded by its
socket timeout, but many together are not, unless the bytes they hold are counted as a whole
(Redis 7's `maxmemory-clients`). Each transport reserves here what a connection holds after
the socket took what it would, and releases it as the client reads or the connection closes.

When a reservation would take the total past the budget it is refused, and the transport
closes the connection that asked (its reply is dropped; the request it answers was served):
the replies already held go on being sent, new requests are never held back, and the
connections that cost the process memory are the ones that lose it. Refusals are counted
here, once for every transport, for the metrics.

Thread-safe: every transport's loop (and their workers) share one budget.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class ReplyBudget:
    """At most `max_bytes` held in unsent replies, every connection of every transport
    together."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._held = 0
        self._refusals = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes reserved now."""
        return self._held

    @property
    def refusals(self) -> int:
        """Reservations refused since the start: connections closed for the budget."""
        return self._refusals

    def reserve(self, count: int) -> bool:
        """Take `count` more bytes if they fit; False, taking nothing, if they do not."""
        with self._lock:
            if self._held + count > self.max_bytes:
                self._refusals += 1
                return False
            self._held += count
            return True

    def release(self, count: int) -> None:
        """Give back `count` bytes reserved earlier."""
        with self._lock:
            self._held -= count

    def settle(self, charged: int, holding: int) -> int | None:
        """Move a connection's charge from `charged` to `holding` bytes (reserving the
        difference, or releasing it); the new charge, or None if the budget refused it (the
        old charge stands; the caller closes the connection and releases it)."""
        if holding > charged:
            return holding if self.reserve(holding - charged) else None
        if holding < charged:
            self.release(charged - holding)
        return holding


class ConnectionCharge:
    """One connection's share of a budget, settled each time what it holds changes.

    While a reply is still being produced (streamed), what it has pending is charged at least
    `stream_headroom` bytes, as much as the transport lets it hold, so that progress never
    grows the charge: a charge that grew as the client read would be refused whenever the
    budget is full, closing the very connections that make progress."""

    def __init__(self, budget: ReplyBudget, stream_headroom: int) -> None:
        self.budget = budget
        self.stream_headroom = stream_headroom
        self.bytes = 0
        """What this connection holds of the budget now."""

    def settle(self, pending: int, *, streaming: bool, produced_from: int = 0) -> bool:
        """Charge `pending` bytes waiting to be sent (with the headroom while `streaming`)
        and `produced_from` bytes a streamed reply is produced from; False, keeping the old
        charge, if that does not fit: the transport then closes the connection, dropping its
        replies, and calls `release`."""
        if streaming:
            pending = max(pending, self.stream_headroom)
        charge = self.budget.settle(self.bytes, pending + produced_from)
        if charge is None:
            return False
        self.bytes = charge
        return True

    def release(self) -> None:
        """Give the whole charge back: the connection holds nothing any more."""
        if self.bytes:
            self.budget.release(self.bytes)
            self.bytes = 0

    def refusal(self, peer: str, holding: int) -> str:
        """The log line for a connection closed because `holding` bytes did not fit."""
        return (
            f"closing {peer}: its unsent replies ({holding} bytes) do not fit the reply "
            f"budget (--max-reply-buffer-bytes {self.budget.max_bytes}, "
            f"{self.budget.held_bytes} held by every connection)"
        )


SIZE_SAMPLE = 64
"""How many items `estimated_size` measures of a long sequence."""


def estimated_size(items: Sequence[T], size_of: Callable[[T], int]) -> int:
    """What `items` and everything they hold take in memory: measured whole when short, and
    from SIZE_SAMPLE items picked at random when long, so that charging a snapshot of a long
    history costs the loop O(1), not a pass over every item (500 such replies at once cost
    seconds). Random, so that no pattern of values a client writes can hide from it."""
    count = len(items)
    if count <= SIZE_SAMPLE:
        return sys.getsizeof(items) + sum(map(size_of, items))
    sample = random.sample(range(count), SIZE_SAMPLE)
    measured = sum(size_of(items[index]) for index in sample)
    return sys.getsizeof(items) + measured * count // SIZE_SAMPLE
