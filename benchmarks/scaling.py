"""Scaling out on Redis, measured: the memory store, then one, two and three kvservice replicas
on one Redis, side by side in one run, with the CPU each request costs in kvservice and in
redis-server.

    python -m benchmarks.scaling            full run (about 4 min); writes docs/SCALING.md
    python -m benchmarks.scaling --quick    one short run of each; prints, writes nothing

The replicas are loaded as a load balancer would spread them: one wrk per replica, at the same
time, with the connections divided between them (no proxy, whose own CPU would be charged to
the replicas on a machine this small). Runs interleave the configurations, so drift in the
machine's load spreads over all of them. Redis keeps an append-only file fsynced every second
(`appendfsync everysec`); one more PUT run shows what `appendfsync always` costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/scaling.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from benchmarks.report import describe_machine
from benchmarks.servers import HOST, REPO_ROOT, ServerProcess, ServerSpec, server_environment
from benchmarks.workloads import POOL_SIZE, fill_pool, http_writer
from benchmarks.wrk import WrkResult, require_wrk, run_wrk

DEFAULT_DOCUMENT = REPO_ROOT / "docs" / "SCALING.md"
WORKLOADS = {
    "get": ["get", str(POOL_SIZE)],
    "put": ["put", str(POOL_SIZE)],
    "mix": ["mix", str(POOL_SIZE)],
}
CONNECTIONS = (16, 64)


@dataclass(frozen=True)
class Setup:
    """One way to serve: the store, and how many kvservice processes share it."""

    name: str
    replicas: int
    on_redis: bool


SETUPS = (
    Setup("memory, 1 process", 1, on_redis=False),
    Setup("Redis, 1 replica", 1, on_redis=True),
    Setup("Redis, 2 replicas", 2, on_redis=True),
    Setup("Redis, 3 replicas", 3, on_redis=True),
)


def redis_spec() -> ServerSpec:
    return ServerSpec(
        "redis-server",
        "redis-server, append-only file fsynced every second, noeviction",
        lambda port, scratch: [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--dir",
            str(scratch),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            "redis.log",
        ],
    )


def kvservice_spec(name: str, store: str) -> ServerSpec:
    return ServerSpec(
        name,
        f"python -m kvservice --store {store}",
        lambda port, _scratch: [
            sys.executable,
            "-m",
            "kvservice",
            "--port",
            str(port),
            "--store",
            store,
        ],
    )


@dataclass
class Measured:
    """One run of one setup: what wrk saw over all its replicas, and the CPU spent."""

    requests_per_s: float
    p99_ms: float
    errors: int
    kv_cpu_us: float
    """kvservice CPU (all replicas) per request, in microseconds."""
    redis_cpu_us: float


def split(connections: int, replicas: int) -> list[int]:
    """Connections per replica, as even as a round-robin balancer would make them."""
    base, extra = divmod(connections, replicas)
    return [base + (1 if index < extra else 0) for index in range(replicas)]


def run_once(
    wrk: str,
    servers: list[ServerProcess],
    redis_server: ServerProcess | None,
    workload: str,
    connections: int,
    duration_s: int,
) -> Measured:
    """One wrk per server at once; CPU read from /proc before and after."""
    cpu_before = [server.cpu_seconds() for server in servers]
    redis_before = redis_server.cpu_seconds() if redis_server else 0.0
    with ThreadPoolExecutor(len(servers)) as pool:
        results: list[WrkResult] = list(
            pool.map(
                lambda pair: run_wrk(
                    wrk,
                    pair[0].url,
                    WORKLOADS[workload],
                    connections=pair[1],
                    duration_s=duration_s,
                ),
                zip(servers, split(connections, len(servers)), strict=True),
            )
        )
    kv_cpu = sum(
        server.cpu_seconds() - before for server, before in zip(servers, cpu_before, strict=True)
    )
    redis_cpu = (redis_server.cpu_seconds() - redis_before) if redis_server else 0.0
    requests = sum(result.requests for result in results)
    return Measured(
        requests_per_s=sum(result.requests_per_s for result in results),
        p99_ms=max(result.p99_ms for result in results),
        errors=sum(result.non_2xx + result.socket_errors for result in results),
        kv_cpu_us=kv_cpu / requests * 1e6 if requests else 0.0,
        redis_cpu_us=redis_cpu / requests * 1e6 if requests else 0.0,
    )


def progress(measured: Measured) -> str:
    """One run's figures on one line, as the run goes."""
    errors = f"  errors {measured.errors}" if measured.errors else ""
    return (
        f"{measured.requests_per_s:8.0f}/s p99 {measured.p99_ms:6.1f} ms  CPU/request: kv "
        f"{measured.kv_cpu_us:5.0f} us, redis {measured.redis_cpu_us:4.0f} us{errors}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def median_of(runs: list[Measured]) -> Measured:
    return Measured(
        statistics.median(run.requests_per_s for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.errors for run in runs),
        statistics.median(run.kv_cpu_us for run in runs),
        statistics.median(run.redis_cpu_us for run in runs),
    )


def measure(
    duration_s: int, repeats: int, connections: Sequence[int]
) -> tuple[dict[tuple[str, str, int], Measured], Measured]:
    """Every setup, workload and connection count, `repeats` times, interleaved; then the
    appendfsync-always PUT run. Returns the medians, and that run."""
    wrk = require_wrk()
    environment = server_environment(None)
    runs: dict[tuple[str, str, int], list[Measured]] = {}
    with tempfile.TemporaryDirectory(prefix="kv-scaling-") as scratch_dir, ExitStack() as stack:
        scratch = Path(scratch_dir)
        redis_server = stack.enter_context(ServerProcess(redis_spec(), scratch, environment))
        store = f"redis://{HOST}:{redis_server.port}"
        processes: dict[str, list[ServerProcess]] = {}
        for setup in SETUPS:
            spec = kvservice_spec(setup.name, store if setup.on_redis else "memory")
            processes[setup.name] = [
                stack.enter_context(ServerProcess(spec, scratch, environment))
                for _ in range(setup.replicas)
            ]
            fill_pool(http_writer(HOST, processes[setup.name][0].port))
        for repeat in range(repeats):
            for workload in WORKLOADS:
                for count in connections:
                    for setup in SETUPS:
                        measured = run_once(
                            wrk,
                            processes[setup.name],
                            redis_server if setup.on_redis else None,
                            workload,
                            count,
                            duration_s,
                        )
                        runs.setdefault((setup.name, workload, count), []).append(measured)
                        label = f"{repeat + 1}/{repeats} {workload} c{count} {setup.name}"
                        print(f"{label:<32} {progress(measured)}", flush=True)
        admin = redis.Redis(host=HOST, port=redis_server.port)
        admin.config_set("appendfsync", "always")
        always = run_once(wrk, processes["Redis, 1 replica"], redis_server, "put", 16, duration_s)
        admin.config_set("appendfsync", "everysec")
        admin.close()
    return {key: median_of(value) for key, value in runs.items()}, always


def render(
    medians: dict[tuple[str, str, int], Measured],
    always: Measured,
    duration_s: int,
    repeats: int,
    connections: Sequence[int],
    elapsed_s: float,
) -> str:
    """docs/SCALING.md: the tables, the scaling ratios, and a projection to more cores."""
    lines = [
        "# Scaling out on Redis: measured",
        "",
        f"Written by `python -m benchmarks.scaling` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{elapsed_s / 60:.0f} min: {duration_s} s runs, median of {repeats}, every setup in "
        "turn (interleaved). Replicas are loaded by one wrk each at the same time, the "
        "connections divided between them, as a round-robin load balancer would; wrk, the "
        "replicas and redis-server all share this machine's cores.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in describe_machine(None).items()],
        "",
        "Requests per second (p99 latency), with the CPU each request cost in kvservice (all "
        "replicas together) and in redis-server:",
        "",
    ]
    for workload in WORKLOADS:
        for count in connections:
            one = medians[("Redis, 1 replica", workload, count)].requests_per_s
            rows = []
            for setup in SETUPS:
                cell = medians[(setup.name, workload, count)]
                ratio = f"{cell.requests_per_s / one:.2f}x" if setup.on_redis and one else ""
                rows.append(
                    [
                        setup.name,
                        f"{cell.requests_per_s:,.0f}",
                        ratio,
                        f"{cell.p99_ms:.1f} ms",
                        f"{cell.kv_cpu_us:.0f} µs",
                        f"{cell.redis_cpu_us:.0f} µs",
                        str(cell.errors),
                    ]
                )
            header = ["setup", "req/s", "vs 1 replica", "p99", "kvservice CPU", "Redis CPU"]
            lines += [f"**{workload.upper()}, {count} connections**", ""]
            lines += [*table([*header, "errors"], rows), ""]
    put_one = medians[("Redis, 1 replica", "put", 16)]
    lines += [
        f"`appendfsync always` instead of `everysec`, PUT, 1 replica, 16 connections: "
        f"{always.requests_per_s:,.0f} req/s against {put_one.requests_per_s:,.0f} "
        f"({always.requests_per_s / put_one.requests_per_s:.2f}x), p99 {always.p99_ms:.1f} ms "
        f"against {put_one.p99_ms:.1f} ms.",
        "",
        "## What limits it here, and on more cores",
        "",
        *projection(medians),
    ]
    return "\n".join(lines) + "\n"


def projection(medians: dict[tuple[str, str, int], Measured]) -> list[str]:
    """Throughput on N cores from the CPU a request costs: kvservice replicas scale out until
    the one Redis core is busy (Redis runs commands on one thread)."""
    lines = [
        "On this 2-core machine wrk, the replicas and redis-server share two cores. One "
        "kvservice process runs Python on one core at a time (the GIL), so a single replica "
        "cannot use the second core and a second replica can: that is most of the gain from "
        "one replica to two. A third adds no core; what it adds comes from each process "
        "juggling fewer connections, which lowers the kvservice CPU a request costs (see the "
        "tables). On a Redis store a replica also spends CPU in the Redis client that the "
        "memory store does not. With clients on other machines and a core per replica, "
        "throughput grows with replicas until Redis's one core is full:",
        "",
    ]
    rows = []
    for workload in WORKLOADS:
        cell = medians[("Redis, 3 replicas", workload, 16)]
        per_core = 1e6 / cell.kv_cpu_us if cell.kv_cpu_us else 0.0
        redis_limit = 1e6 / cell.redis_cpu_us if cell.redis_cpu_us else 0.0
        cores = redis_limit / per_core if per_core else 0.0
        rows.append(
            [
                workload.upper(),
                f"{cell.kv_cpu_us:.0f} µs",
                f"{cell.redis_cpu_us:.0f} µs",
                f"{per_core:,.0f} req/s",
                f"{redis_limit:,.0f} req/s",
                f"{cores:.0f}",
            ]
        )
    header = ["workload, 16 connections", "kvservice CPU", "Redis CPU", "per replica-core"]
    lines += table([*header, "Redis core limit", "replica-cores to reach it"], rows)
    lines += [
        "",
        "So N replica-cores serve about N times the one-core figure, up to the Redis limit; past "
        "it, a Redis Cluster adds a Redis core per primary (keys spread by their hash slot).",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s runs, once; writes nothing")
    parser.add_argument("--document", type=Path, default=DEFAULT_DOCUMENT)
    args = parser.parse_args(argv)
    duration_s, repeats = (1, 1) if args.quick else (3, 3)
    started = time.monotonic()
    medians, always = measure(duration_s, repeats, CONNECTIONS)
    document = render(medians, always, duration_s, repeats, CONNECTIONS, time.monotonic() - started)
    print(document)
    if not args.quick:
        args.document.write_text(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
