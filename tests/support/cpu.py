"""CPU time spent by the code under test, for the tests that bound it (a matcher, a codec, a
parser that must not go quadratic or exponential on hostile input).

The clock is this thread's CPU time, so other processes' load does not count; and the
collector is run first and paused while the code runs, so a full collection of the whole test
process's heap (100 ms and more late in a long run) is not charged to it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class CpuTime:
    started: float

    @property
    def seconds(self) -> float:
        """CPU seconds this thread has spent since the block began."""
        return time.thread_time() - self.started


@contextmanager
def collector_paused() -> Iterator[None]:
    """A block in which the cyclic collector never runs, after one collection before it;
    within an outer such block, nothing more (a loop of measurements pays for one)."""
    if not gc.isenabled():
        yield
        return
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def measured_cpu() -> Iterator[CpuTime]:
    """A block whose CPU time is read from what it yields, the collector paused inside it."""
    with collector_paused():
        yield CpuTime(time.thread_time())
