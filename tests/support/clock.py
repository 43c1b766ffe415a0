"""A clock for stores under test: it only moves when told to."""

from __future__ import annotations

START_MS = 1_605_097_943_904


class FakeClock:
    """A `store.Clock` that reads `now_ms` and moves only by `advance()`."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        """Move the clock forward (or back, for a negative `ms`)."""
        self.now_ms += ms
