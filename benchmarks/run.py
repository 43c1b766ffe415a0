"""The benchmark's command line: start the servers, drive them with wrk, measure memory, report.

    python -m benchmarks            the full run; writes docs/PERFORMANCE.md and the chart
    python -m benchmarks --quick    a smoke run of about a minute; prints, writes nothing
    python -m benchmarks --workloads get,put --servers kvservice \\
        --variant 'threads8=python -m kvservice --port {port} --threads 8'

All servers run at once, each in its own process, and the runs interleave them (every
repeat, workload and connection count visits each server in turn), so that drift in the
machine's load spreads evenly over the ratios. Exit status: 0 measured (whether or not the
targets are met), 1 a server or wrk failed, 2 usage error or wrk missing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.chart import ChartUnavailable, write_chart
from benchmarks.loader import LoadFailed
from benchmarks.memory import MEMORY_CASES, MemoryResult, measure_memory
from benchmarks.report import RunInfo, describe_machine, render_results, write_document
from benchmarks.resp import (
    RespBenchmarkFailed,
    RespBenchmarkUnavailable,
    measure_resp,
    require_tools,
)
from benchmarks.results import Results, Run
from benchmarks.servers import (
    HOST,
    KVSERVICE,
    REPO_ROOT,
    ServerFailed,
    ServerProcess,
    ServerSpec,
    builtin_servers,
    server_environment,
    variant,
)
from benchmarks.targets import Measurements, check_targets
from benchmarks.workloads import (
    POOL_SIZE,
    Slot,
    Workload,
    fill_pool,
    http_writer,
    select_workloads,
)
from benchmarks.wrk import WrkFailed, WrkMissing, require_wrk, run_wrk
from kvservice.config import positive_int

DEFAULT_DOCUMENT = REPO_ROOT / "docs" / "PERFORMANCE.md"
DEFAULT_CHART = REPO_ROOT / "docs" / "performance.png"
WARM_UP_S = 1
RUN_OVERHEAD_S = 0.3
"""wrk's start and the preparation of a run, for the time estimate."""
FILL_RATE_PER_S = 2500
"""Writes per second the loader achieves against kvservice, for the time estimate."""


@dataclass(frozen=True)
class Scale:
    """How much to measure: the defaults of a full or a quick run."""

    duration_s: int
    repeats: int
    concurrency: tuple[int, ...]
    memory_count: int


FULL = Scale(duration_s=3, repeats=3, concurrency=(1, 16, 64), memory_count=100_000)
QUICK = Scale(duration_s=1, repeats=1, concurrency=(16,), memory_count=5_000)


@dataclass(frozen=True)
class Options:
    """The parsed command line."""

    scale: Scale
    servers: list[ServerSpec]
    variants: list[ServerSpec]
    workloads: list[Workload]
    source: Path | None
    wrk_cpus: str | None
    resp: bool
    document: Path | None
    chart: Path | None
    command: str


@dataclass(frozen=True)
class PlannedRun:
    """One wrk run of the schedule."""

    slot: Slot
    workload: Workload
    server: ServerSpec
    duration_s: int


def connection_counts(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, for argparse."""
    return tuple(positive_int(item) for item in text.split(","))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small and unwritten")
    parser.add_argument(
        "--duration", type=positive_int, help=f"seconds per run ({FULL.duration_s})"
    )
    parser.add_argument(
        "--repeats", type=positive_int, help=f"runs per combination ({FULL.repeats})"
    )
    parser.add_argument(
        "--concurrency",
        type=connection_counts,
        metavar="N,N",
        help="connection counts (" + ",".join(map(str, FULL.concurrency)) + ")",
    )
    parser.add_argument(
        "--memory-count",
        type=int,
        metavar="N",
        help=f"keys / history entries per memory case, 0 to skip ({FULL.memory_count})",
    )
    parser.add_argument("--servers", type=_names, help="built-in servers to run, '' for none (all)")
    parser.add_argument("--workloads", type=_names, help="workloads to run (all)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=COMMAND",
        help="also measure a kvservice started by COMMAND, {port} standing for its port",
    )
    parser.add_argument(
        "--source", type=Path, help="import kvservice from this tree instead of the installed one"
    )
    parser.add_argument("--wrk-cpus", metavar="LIST", help="pin wrk to these CPUs (taskset)")
    parser.add_argument(
        "--resp",
        action=argparse.BooleanOptionalAction,
        help="also run the RESP workloads against redis-server (default: yes, except with "
        "--quick; needs redis-benchmark and redis-server)",
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        help="write the document and chart (default: yes, except with --quick)",
    )
    parser.add_argument("--document", type=Path, default=DEFAULT_DOCUMENT)
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    """Parse and check the command line; exits 2 on a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    if args.memory_count is not None and args.memory_count < 0:
        parser.error("--memory-count must be 0 (skip) or more")
    scale = Scale(
        duration_s=args.duration or base.duration_s,
        repeats=args.repeats or base.repeats,
        concurrency=args.concurrency or base.concurrency,
        memory_count=base.memory_count if args.memory_count is None else args.memory_count,
    )
    builtin = {spec.name: spec for spec in builtin_servers()}
    unknown = sorted(set(args.servers or []) - set(builtin))
    if unknown:
        parser.error(f"unknown servers {unknown}; here: {', '.join(builtin)}")
    variants: list[ServerSpec] = []
    for text in args.variant:
        label, equals, command = text.partition("=")
        if not equals or not label.isidentifier() or "{port}" not in command:
            parser.error(f"--variant {text!r}: expected LABEL=COMMAND with {{port}} in COMMAND")
        if label in builtin or label in (spec.name for spec in variants):
            parser.error(f"--variant {label!r}: that name is taken")
        variants.append(variant(label, command))
    try:
        workloads = select_workloads(args.workloads)
    except ValueError as error:
        parser.error(str(error))
    if args.source is not None and not (args.source / "kvservice").is_dir():
        parser.error(f"--source {args.source}: no kvservice package there")
    write = not args.quick if args.write is None else args.write
    return Options(
        scale=scale,
        servers=[
            spec for name, spec in builtin.items() if args.servers is None or name in args.servers
        ]
        + variants,
        variants=variants,
        workloads=workloads,
        source=args.source,
        wrk_cpus=args.wrk_cpus,
        resp=not args.quick if args.resp is None else args.resp,
        document=args.document if write else None,
        chart=args.chart if write else None,
        command=shlex.join(["python", "-m", "benchmarks", *argv]),
    )


def plan_runs(options: Options) -> list[PlannedRun]:
    """Every wrk run, in order: repeats, then workloads, then connection counts, then servers."""
    scale = options.scale
    return [
        PlannedRun(
            Slot(repeat, connections),
            workload,
            server,
            max(1, round(scale.duration_s * workload.duration_share)),
        )
        for repeat in range(scale.repeats)
        for workload in options.workloads
        for connections in scale.concurrency
        for server in options.servers
        if server.serves(workload.name)
    ]


def estimate_s(options: Options, plan: Sequence[PlannedRun]) -> float:
    """A rough duration for the whole benchmark, to tell the user up front."""
    runs = sum(planned.duration_s + RUN_OVERHEAD_S for planned in plan)
    memory_writes = len(memory_subjects(options)) * len(MEMORY_CASES) * options.scale.memory_count
    return runs + memory_writes / FILL_RATE_PER_S + WARM_UP_S * len(options.servers)


def measure_throughput(
    options: Options, plan: Sequence[PlannedRun], wrk: str, scratch: Path
) -> Results:
    """Start every server, fill the stores, warm them up, then make every planned run."""
    results = Results()
    environment = server_environment(options.source)
    with ExitStack() as stack:
        running = {
            spec.name: stack.enter_context(ServerProcess(spec, scratch, environment))
            for spec in options.servers
        }
        for server in running.values():
            if server.spec.holds_data:
                fill_pool(http_writer(HOST, server.port))
            run_wrk(wrk, server.url, ["get", str(POOL_SIZE)], connections=16, duration_s=WARM_UP_S)
        for index, planned in enumerate(plan, 1):
            server = running[planned.server.name]
            planned.workload.prepare(http_writer(HOST, server.port), planned.slot)
            cpu_before = server.cpu_seconds()
            result = run_wrk(
                wrk,
                server.url,
                planned.workload.script_args(planned.slot),
                connections=planned.slot.connections,
                duration_s=planned.duration_s,
                cpus=options.wrk_cpus,
            )
            server.check_alive()
            measured = Run(result, server.cpu_seconds() - cpu_before)
            results.add(
                planned.server.name, planned.workload.name, planned.slot.connections, measured
            )
            errors = f"  non-2xx {result.non_2xx}" if result.non_2xx else ""
            errors += f"  socket errors {result.socket_errors}" if result.socket_errors else ""
            print(
                f"[{index:3d}/{len(plan)}] {planned.server.name:>10} {planned.workload.name:<11}"
                f"{planned.slot.connections:3d} conn. {result.requests_per_s:8,.0f} req/s"
                f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.1f} ms"
                f"  CPU {measured.cpu_us_per_request:5.0f} us/req{errors}",
                file=sys.stderr,
                flush=True,
            )
    return results


def memory_subjects(options: Options) -> list[ServerSpec]:
    """The servers whose memory is measured: kvservice, if selected, and every variant."""
    return [spec for spec in options.servers if spec is KVSERVICE or spec in options.variants]


def measure_all_memory(options: Options, scratch: Path) -> list[MemoryResult]:
    """Every memory case against every memory subject, each in a fresh process."""
    if options.scale.memory_count <= 0:
        return []
    environment = server_environment(options.source)
    measured = []
    for spec in memory_subjects(options):
        for case in MEMORY_CASES:
            result = measure_memory(spec, case, options.scale.memory_count, scratch, environment)
            print(
                f"memory {spec.name}: {case.name}: {result.bytes_each:.0f} B per {case.unit}, "
                f"{result.overhead_each:.0f} B beyond the {result.stored_bytes_each} B stored",
                file=sys.stderr,
                flush=True,
            )
            measured.append(result)
    return measured


def run(options: Options, wrk: str) -> int:
    """Measure, report, and write the document and chart if asked to."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    machine = describe_machine(options.source)
    plan = plan_runs(options)
    print(
        f"benchmarks: {len(plan)} runs of {options.scale.duration_s} s and "
        f"{options.scale.memory_count:,} items per memory case; "
        f"about {estimate_s(options, plan) / 60:.0f} min",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="kvservice-bench-") as scratch_name:
        scratch = Path(scratch_name)
        results = measure_throughput(options, plan, wrk, scratch)
        memory = measure_all_memory(options, scratch)
        resp = (
            measure_resp(options.scale.repeats, options.scale.duration_s, scratch)
            if options.resp
            else Results()
        )
    measured = Measurements(results, memory, resp)
    info = RunInfo(
        command=options.command,
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        elapsed_s=time.monotonic() - clock,
        duration_s=options.scale.duration_s,
        repeats=options.scale.repeats,
        machine=machine,
    )
    chart_link = None
    if options.chart is not None and options.document is not None:
        try:
            write_chart(results, options.chart)
            chart_link = os.path.relpath(options.chart, options.document.parent)
        except ChartUnavailable as error:
            print(f"benchmarks: {error}", file=sys.stderr)
    text = render_results(
        info, check_targets(measured), measured, options.servers, options.workloads, chart_link
    )
    print(text)
    if options.document is not None:
        write_document(options.document, text)
        print(f"benchmarks: wrote {options.document}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    options = parse_options(sys.argv[1:] if argv is None else argv)
    try:
        wrk = require_wrk()
        if options.resp:
            require_tools()
    except WrkMissing as error:  # every workload needs wrk: no flag does without it
        print(f"benchmarks: {error}", file=sys.stderr)
        return 2
    except RespBenchmarkUnavailable as error:
        print(
            f"benchmarks: {error} (or --no-resp, to leave the RESP workloads out)", file=sys.stderr
        )
        return 2
    try:
        return run(options, wrk)
    except (ServerFailed, WrkFailed, LoadFailed, RespBenchmarkFailed) as error:
        print(f"benchmarks: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
