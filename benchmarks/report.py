"""The benchmark's report: the machine, the targets, and the tables, as Markdown.

`docs/PERFORMANCE.md` keeps its hand-written text; only the part between RESULTS_BEGIN and
RESULTS_END is replaced by each run.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmarks.memory import MemoryResult
from benchmarks.resp import RESP_SERVERS, RESP_WORKLOADS, resp_table
from benchmarks.results import Results
from benchmarks.servers import REPO_ROOT, ServerSpec
from benchmarks.targets import CEILING, PEER, SUBJECT, Measurements, TargetCheck
from benchmarks.workloads import Workload

RESULTS_BEGIN = "<!-- benchmark results: begin (written by python -m benchmarks) -->"
RESULTS_END = "<!-- benchmark results: end -->"


@dataclass(frozen=True)
class RunInfo:
    """How and where the benchmark ran."""

    command: str
    started: str
    elapsed_s: float
    duration_s: int
    repeats: int
    machine: dict[str, str]


def _command_output(command: list[str], cwd: Path = REPO_ROOT) -> str:
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, cwd=cwd, timeout=10, check=False
        )
    except OSError:
        return "not installed"
    return (completed.stdout + completed.stderr).strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_revision(source: Path | None) -> str:
    """The commit measured, and the kvservice files that differ from it, if any."""
    if source is not None:
        return f"kvservice imported from {source}"
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"])
    changed = _command_output(["git", "status", "--short", "kvservice"]).splitlines()
    if not changed:
        return commit
    return f"{commit}, with uncommitted changes: " + ", ".join(
        f"`{line.strip()}`" for line in changed
    )


def describe_machine(source: Path | None) -> dict[str, str]:
    """The facts that make the figures comparable, or not, with another run's."""
    wrk_version = _command_output(["wrk", "--version"]).splitlines()
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": _cpu_model(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "bottle": _version("bottle"),
        "cheroot": _version("cheroot"),
        "waitress": _version("waitress"),
        "wrk": wrk_version[0] if wrk_version else "unknown",
        "nginx": _command_output(["nginx", "-v"]),
        "redis-server": _command_output(["redis-server", "--version"]),
        "kvservice": source_revision(source),
        "load average at start (1 min)": f"{os.getloadavg()[0]:.2f}",
    }


def _format_elapsed(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def throughput_table(results: Results) -> list[str]:
    """Median req/s per workload and connection count, one column per server, and ratios."""
    servers = results.servers
    header = ["workload", "conn.", *servers, f"{SUBJECT} / {CEILING}", f"{SUBJECT} / {PEER}"]
    rows = []
    for workload in results.workloads:
        for connections in results.concurrency:
            cells = [results.cell(server, workload, connections) for server in servers]
            rows.append(
                [
                    workload,
                    str(connections),
                    *[_rate(cell.requests_per_s if cell else None) for cell in cells],
                    _ratio(results.ratio(SUBJECT, CEILING, workload, connections)),
                    _ratio(results.ratio(SUBJECT, PEER, workload, connections)),
                ]
            )
    return _table(header, rows)


def detail_table(results: Results) -> list[str]:
    """Every measured combination: throughput, latency percentiles, server CPU, errors."""
    header = [
        "workload",
        "conn.",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "non-2xx",
        "socket err.",
    ]
    rows = []
    for workload in results.workloads:
        for connections in results.concurrency:
            for server in results.servers:
                cell = results.cell(server, workload, connections)
                if cell is None:
                    continue
                rows.append(
                    [
                        workload,
                        str(connections),
                        server,
                        _rate(cell.requests_per_s),
                        f"{cell.p50_ms:.2f}",
                        f"{cell.p99_ms:.1f}",
                        f"{cell.cpu_us_per_request:.0f}",
                        str(cell.non_2xx),
                        str(cell.socket_errors),
                    ]
                )
    return _table(header, rows)


def memory_table(memory: Sequence[MemoryResult]) -> list[str]:
    """RSS growth per item against the bytes each item stores."""
    header = ["server", "items", "count", "RSS growth", "per item", "stored", "overhead"]
    rows = [
        [
            result.server,
            result.case,
            f"{result.count:,}",
            f"{(result.rss_after - result.rss_before) / 2**20:.1f} MiB",
            f"{result.bytes_each:.0f} B",
            f"{result.stored_bytes_each} B",
            f"{result.overhead_each:.0f} B",
        ]
        for result in memory
    ]
    return _table(header, rows)


def render_results(
    info: RunInfo,
    checks: Sequence[TargetCheck],
    measured: Measurements,
    servers: Sequence[ServerSpec],
    workloads: Sequence[Workload],
    chart: str | None,
) -> str:
    """The generated part of PERFORMANCE.md (also what the benchmark prints)."""
    results, memory = measured.http, measured.memory
    lines = [
        f"Measured {info.started} by `{info.command}`, which took "
        f"{_format_elapsed(info.elapsed_s)}: every run lasted {info.duration_s} s (deletes "
        f"less, see below), the figures are medians of {info.repeats} "
        f"run{'s' if info.repeats > 1 else ''}, and errors are totals over all of them.",
        "",
        "### Machine",
        "",
        *_table(["", ""], list(info.machine.items())),
        "",
        "### Targets",
        "",
        *_table(
            ["target", "result", "figure"],
            [[check.target, f"**{check.verdict}**", check.figure] for check in checks],
        ),
        "",
        "### Throughput (requests/s)",
        "",
        *throughput_table(results),
        "",
    ]
    if chart:
        lines += [f"![throughput and p99 latency per workload]({chart})", ""]
    lines += ["### Latency, server CPU and errors", "", *detail_table(results), ""]
    if memory:
        lines += ["### Memory", "", *memory_table(memory), ""]
    if measured.resp.servers:
        lines += ["### RESP (redis-benchmark, ops/s)", "", *resp_table(measured.resp), ""]
    lines += ["### Servers and workloads", ""]
    lines += [f"- **{spec.name}**: {spec.description}" for spec in servers]
    lines += [f"- **{workload.name}**: {workload.description}" for workload in workloads]
    if measured.resp.servers:
        lines += [f"- **RESP {spec.name}**: {spec.description}" for spec in RESP_SERVERS]
        lines += [f"- **RESP {w.name}**: {w.description}" for w in RESP_WORKLOADS]
    return "\n".join(lines) + "\n"


DOCUMENT_TEMPLATE = f"""# Performance

What kvservice sustains on one machine, against the framework's ceiling (a bare Bottle route
on the same cheroot runner), a peer server (the same app on waitress) and, where installed,
nginx answering a constant. Regenerate with `python -m benchmarks` (needs wrk).

{RESULTS_BEGIN}
{RESULTS_END}
"""


def write_document(path: Path, generated: str) -> None:
    """Put `generated` between the result markers of `path`, creating it if need be."""
    text = path.read_text() if path.exists() else DOCUMENT_TEMPLATE
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        text = text.rstrip("\n") + f"\n\n{RESULTS_BEGIN}\n{RESULTS_END}\n"
    before, rest = text.split(RESULTS_BEGIN, 1)
    _, after = rest.split(RESULTS_END, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{before}{RESULTS_BEGIN}\n{generated}{RESULTS_END}{after}")
