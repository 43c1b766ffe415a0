"""The issue's performance targets, each judged met or not from one benchmark's figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.memory import MemoryResult
from benchmarks.results import Results

SUBJECT = "kvservice"
CEILING = "bare"
PEER = "waitress"
SINGLE_KEY_WORKLOADS = ("get", "put", "post", "delete", "mix")
"""The workloads the latency target covers; history answers grow with the history."""


@dataclass(frozen=True)
class TargetCheck:
    """One target, whether this run met it (None: not measured), and the figure behind it."""

    target: str
    met: bool | None
    figure: str

    @property
    def verdict(self) -> str:
        """`met`, `NOT met` or `not measured`."""
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def _ratios(
    results: Results, baseline: str, workloads: Sequence[str], concurrency: Sequence[int]
) -> list[tuple[str, int, float]]:
    found = []
    for workload in workloads:
        for connections in concurrency:
            ratio = results.ratio(SUBJECT, baseline, workload, connections)
            if ratio is not None:
                found.append((workload, connections, ratio))
    return found


def _ratio_check(
    target: str, ratios: list[tuple[str, int, float]], minimum: float, *, list_all: bool = False
) -> TargetCheck:
    if not ratios:
        return TargetCheck(target, None, "")
    below = [(workload, c, ratio) for workload, c, ratio in ratios if ratio < minimum]
    lowest = min(ratios, key=lambda item: item[2])
    figure = f"lowest {lowest[2]:.2f}x ({lowest[0]} at {lowest[1]} conn.)"
    if below:
        figure += f"; {len(below)} of {len(ratios)} below {minimum}x"
    if list_all:
        figure += " [" + ", ".join(f"{w} {c}: {r:.2f}x" for w, c, r in ratios) + "]"
    return TargetCheck(target, not below, figure)


def check_ceiling(results: Results, memory: Sequence[MemoryResult]) -> TargetCheck:
    """kvservice GET and PUT at >= 0.9x the bare Bottle route at every concurrency."""
    return _ratio_check(
        "kvservice GET and PUT >= 0.9x bare Bottle at every concurrency",
        _ratios(results, CEILING, ("get", "put"), results.concurrency),
        0.9,
        list_all=True,
    )


def check_peer(results: Results, memory: Sequence[MemoryResult]) -> TargetCheck:
    """kvservice on cheroot at >= 1.0x the same app on waitress at 16 and 64 connections."""
    concurrency = [c for c in (16, 64) if c in results.concurrency]
    ratios = _ratios(results, PEER, results.workloads, concurrency)
    return _ratio_check(
        "kvservice (cheroot) >= 1.0x the same app on waitress at 16 and 64 conn., every workload",
        ratios,
        1.0,
    )


def check_latency(results: Results, memory: Sequence[MemoryResult]) -> TargetCheck:
    """p99 at 64 connections under 25 ms with zero socket errors (single-key workloads)."""
    target = "p99 at 64 conn. < 25 ms with zero socket errors (get, put, post, delete, mix)"
    cells = {
        workload: cell
        for workload in SINGLE_KEY_WORKLOADS
        if (cell := results.cell(SUBJECT, workload, 64)) is not None
    }
    if not cells:
        return TargetCheck(target, None, "")
    worst = max(cells, key=lambda workload: cells[workload].p99_ms)
    socket_errors = sum(cell.socket_errors for cell in cells.values())
    met = cells[worst].p99_ms < 25 and socket_errors == 0
    figure = f"worst p99 {cells[worst].p99_ms:.1f} ms ({worst}); socket errors {socket_errors}"
    return TargetCheck(target, met, figure)


def check_history(results: Results, memory: Sequence[MemoryResult]) -> TargetCheck:
    """History of 1000 entries served at >= 500 req/s (at every concurrency measured)."""
    target = "history of 1000 entries >= 500 req/s at every concurrency"
    cells = {
        c: cell
        for c in results.concurrency
        if (cell := results.cell(SUBJECT, "history1000", c)) is not None
    }
    if not cells:
        return TargetCheck(target, None, "")
    lowest = min(cells, key=lambda c: cells[c].requests_per_s)
    rate = cells[lowest].requests_per_s
    return TargetCheck(target, rate >= 500, f"lowest {rate:.0f} req/s (at {lowest} conn.)")


def check_memory(results: Results, memory: Sequence[MemoryResult]) -> TargetCheck:
    """At most 400 B per key and 200 B per history entry beyond the stored bytes."""
    target = "memory overhead <= 400 B per key and <= 200 B per history entry"
    limits = {"key": 400, "history entry": 200}
    measured = [result for result in memory if result.server == SUBJECT]
    if not measured:
        return TargetCheck(target, None, "")
    met = all(result.overhead_each <= limits[result.unit] for result in measured)
    figure = "; ".join(f"{result.case}: {result.overhead_each:.0f} B" for result in measured)
    return TargetCheck(target, met, figure)


TARGETS: tuple[Callable[[Results, Sequence[MemoryResult]], TargetCheck], ...] = (
    check_ceiling,
    check_peer,
    check_latency,
    check_history,
    check_memory,
)


def check_targets(results: Results, memory: Sequence[MemoryResult]) -> list[TargetCheck]:
    """Every target of the issue, judged from this run."""
    return [check(results, memory) for check in TARGETS]
