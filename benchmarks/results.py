"""Collects runs by server, workload and connection count, and summarizes the repeats."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchmarks.wrk import WrkResult


@dataclass(frozen=True)
class Run:
    """One wrk run and the CPU time the server process used meanwhile."""

    wrk: WrkResult
    server_cpu_s: float

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU (user + system, all threads) per completed request.

        Unlike throughput, this barely moves when other processes take the CPU away, so it
        compares two versions of a server more reliably on a busy machine."""
        return self.server_cpu_s * 1e6 / self.wrk.requests if self.wrk.requests else 0.0


@dataclass(frozen=True)
class Cell:
    """Every repeat of one server x workload x connection count, summarized by medians."""

    runs: tuple[Run, ...]

    @property
    def requests_per_s(self) -> float:
        """Median throughput."""
        return statistics.median(run.wrk.requests_per_s for run in self.runs)

    @property
    def p50_ms(self) -> float:
        """Median of the runs' median latencies."""
        return statistics.median(run.wrk.p50_ms for run in self.runs)

    @property
    def p99_ms(self) -> float:
        """Median of the runs' 99th-percentile latencies."""
        return statistics.median(run.wrk.p99_ms for run in self.runs)

    @property
    def cpu_us_per_request(self) -> float:
        """Median server CPU per request."""
        return statistics.median(run.cpu_us_per_request for run in self.runs)

    @property
    def non_2xx(self) -> int:
        """Error statuses over all repeats."""
        return sum(run.wrk.non_2xx for run in self.runs)

    @property
    def socket_errors(self) -> int:
        """Socket errors and timeouts over all repeats."""
        return sum(run.wrk.socket_errors for run in self.runs)


@dataclass
class Results:
    """All runs of one benchmark, keyed by (server, workload, connections)."""

    _runs: dict[tuple[str, str, int], list[Run]] = field(default_factory=dict)

    def add(self, server: str, workload: str, connections: int, run: Run) -> None:
        """Record one run."""
        self._runs.setdefault((server, workload, connections), []).append(run)

    def cell(self, server: str, workload: str, connections: int) -> Cell | None:
        """The summary of one combination, or None if it was not run."""
        runs = self._runs.get((server, workload, connections))
        return Cell(tuple(runs)) if runs else None

    @property
    def servers(self) -> list[str]:
        """Servers in the order they were first measured."""
        return list(dict.fromkeys(server for server, _, _ in self._runs))

    @property
    def workloads(self) -> list[str]:
        """Workloads in the order they were first measured."""
        return list(dict.fromkeys(workload for _, workload, _ in self._runs))

    @property
    def concurrency(self) -> list[int]:
        """Connection counts, lowest first."""
        return sorted({connections for _, _, connections in self._runs})

    def ratio(self, server: str, baseline: str, workload: str, connections: int) -> float | None:
        """Median throughput of `server` over that of `baseline`, if both were measured."""
        cell, base = (
            self.cell(server, workload, connections),
            self.cell(baseline, workload, connections),
        )
        if cell is None or base is None or not base.requests_per_s:
            return None
        return cell.requests_per_s / base.requests_per_s
