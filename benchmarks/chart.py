"""A PNG chart of the results: throughput and p99 latency per workload, one panel per
connection count. Needs matplotlib (the `bench` extra); without it there is no chart."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results import Results


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_chart(results: Results, path: Path) -> None:
    """Draw the results to `path` (PNG); raises ChartUnavailable without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:
        raise ChartUnavailable("matplotlib is not installed; no chart drawn") from error

    concurrency, servers, workloads = results.concurrency, results.servers, results.workloads
    figure, axes = pyplot.subplots(
        2, len(concurrency), figsize=(6 * len(concurrency), 8), squeeze=False
    )
    bar_width = 0.8 / len(servers)
    for column, connections in enumerate(concurrency):
        throughput, latency = axes[0][column], axes[1][column]
        for offset, server in enumerate(servers):
            cells = [results.cell(server, workload, connections) for workload in workloads]
            positions = [index + offset * bar_width for index in range(len(workloads))]
            throughput.bar(
                positions,
                [cell.requests_per_s if cell else 0 for cell in cells],
                bar_width,
                label=server,
            )
            latency.bar(positions, [cell.p99_ms if cell else 0 for cell in cells], bar_width)
        centres = [index + 0.4 - bar_width / 2 for index in range(len(workloads))]
        # Log scales: nginx is fifty times faster than the Python servers, which would
        # otherwise all sit at the bottom.
        for axis, label in ((throughput, "requests/s (log)"), (latency, "p99 latency, ms (log)")):
            axis.set_xticks(centres, workloads, rotation=30, ha="right")
            axis.set_ylabel(label)
            axis.set_yscale("log")
            axis.grid(axis="y", which="both", alpha=0.3)
        throughput.set_title(f"{connections} connection{'s' if connections > 1 else ''}")
    axes[0][0].legend(fontsize="small")
    figure.suptitle("kvservice benchmark: medians of the repeats")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
