"""Drives a server with wrk and reads back one run's throughput, latency and errors.

The requests come from `workloads.lua`, whose `done()` hook prints one JSON line; that is
parsed here instead of wrk's human-oriented report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("workloads.lua")
RESULT_MARKER = "BENCH_RESULT "
REQUEST_TIMEOUT_S = 2
"""wrk's per-request timeout (its default); slower responses count as timeouts."""


class WrkMissing(RuntimeError):
    """wrk is not installed; the benchmark cannot generate load without it."""


class WrkFailed(RuntimeError):
    """wrk exited with an error or printed no result line."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests completed, latency percentiles and every kind of error."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    """Responses with a status of 400 or more (wrk counts no other status as an error)."""
    socket_errors: int
    """Connect, read and write errors plus timeouts."""

    @property
    def requests_per_s(self) -> float:
        """Throughput over the whole run."""
        return self.requests / self.duration_s if self.duration_s else 0.0


def require_wrk() -> str:
    """The path of the wrk executable; raises WrkMissing if it is not on PATH."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(
            "wrk is not installed; the benchmark needs it to generate load "
            "(Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)."
        )
    return path


def wrk_threads(connections: int) -> int:
    """wrk threads for a connection count: one for a single connection, else two (2 cores)."""
    return 1 if connections == 1 else 2


def run_wrk(
    wrk: str,
    url: str,
    workload_args: list[str],
    *,
    connections: int,
    duration_s: int,
    cpus: str | None = None,
) -> WrkResult:
    """Run wrk against `url` with the given workload script arguments and parse its result."""
    command = [
        wrk,
        f"--threads={wrk_threads(connections)}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        f"--timeout={REQUEST_TIMEOUT_S}s",
        f"--script={SCRIPT}",
        url,
        "--",
        *workload_args,
    ]
    if cpus is not None:
        command = ["taskset", "--cpu-list", cpus, *command]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    if completed.returncode != 0:
        raise WrkFailed(f"wrk exited {completed.returncode}: {completed.stderr.strip()}")
    return parse_result(completed.stdout)


def parse_result(output: str) -> WrkResult:
    """The WrkResult from the line `workloads.lua` prints; raises WrkFailed if it is missing."""
    for line in output.splitlines():
        if line.startswith(RESULT_MARKER):
            fields = json.loads(line[len(RESULT_MARKER) :])
            return WrkResult(
                requests=fields["requests"],
                duration_s=fields["duration_us"] / 1e6,
                p50_ms=fields["p50_us"] / 1000,
                p99_ms=fields["p99_us"] / 1000,
                max_ms=fields["max_us"] / 1000,
                non_2xx=fields["status_errors"],
                socket_errors=sum(
                    fields[name]
                    for name in ("connect_errors", "read_errors", "write_errors", "timeouts")
                ),
            )
    raise WrkFailed(f"wrk printed no {RESULT_MARKER.strip()} line:\n{output}")
