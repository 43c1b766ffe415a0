"""The RESP workloads: redis-benchmark against kvservice's RESP port and redis-server, side by side.

    python -m benchmarks.resp                 GET and SET, unpipelined and -P 16; prints a table
    python -m benchmarks.resp --repeats 3 --duration 3

Both servers run at once, each in its own process; every repeat runs each workload against
each in turn, as the HTTP benchmark does, and the figures are medians. redis-benchmark runs
its 50 connections (its default) with fixed 100-byte values on keys `k000000000000` to
`k000000000999` (`k__rand_int__` with `-r 1000`: its default `key:__rand_int__` is not a
kvservice key), all written before the first run. Each run makes as many requests as the
server answered in `--duration` seconds of the warm-up, so that a run lasts about that long
on either server. The full benchmark (`python -m benchmarks`) runs these too.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from benchmarks.results import Results, Run
from benchmarks.servers import HOST, ServerProcess, ServerSpec, free_port, server_environment
from benchmarks.workloads import POOL_SIZE, VALUE
from benchmarks.wrk import WrkResult
from kvservice.config import positive_int

CLIENTS = 50
"""redis-benchmark's default connection count."""
SUBJECT = "kvservice"
REDIS = "redis-server"
KVSERVICE_MAX_BYTES = 4 << 30
"""The store's budget for the runs: every SET is kept in the history for two minutes, and
the default 256 MiB fills in a minute of pipelined SETs. A capacity, not a speed setting."""


class RespBenchmarkUnavailable(RuntimeError):
    """redis-benchmark or redis-server is not installed."""


class RespBenchmarkFailed(RuntimeError):
    """redis-benchmark exited with an error or printed no figures."""


@dataclass(frozen=True)
class RespWorkload:
    """One redis-benchmark command line: a command over the key pool, and a pipeline depth."""

    name: str
    command: tuple[str, ...]
    pipeline: int

    @property
    def description(self) -> str:
        """What the workload does, for the report."""
        depth = f"{self.pipeline} commands pipelined" if self.pipeline > 1 else "unpipelined"
        return f"`{' '.join(self.command[:2])}`, {depth}, {CLIENTS} connections"


_KEY = "k__rand_int__"
RESP_WORKLOADS = (
    RespWorkload("SET", ("SET", _KEY, VALUE.decode()), 1),
    RespWorkload("GET", ("GET", _KEY), 1),
    RespWorkload("SET -P16", ("SET", _KEY, VALUE.decode()), 16),
    RespWorkload("GET -P16", ("GET", _KEY), 16),
)


def _kvservice_command(port: int, scratch: Path) -> list[str]:
    # HTTP on a port of its own, unused; the readiness probe and the runs use the RESP port.
    http_port = str(free_port())
    return [sys.executable, "-m", "kvservice", "--port", http_port, "--resp-port", str(port)]


def _redis_command(port: int, scratch: Path) -> list[str]:
    return [
        "redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(scratch), "--logfile", "",
    ]  # fmt: skip


RESP_SERVERS = (
    ServerSpec(
        SUBJECT,
        f"`python -m kvservice --resp-port N` with its defaults (access log on, at INFO), "
        f"except a store budget of {KVSERVICE_MAX_BYTES >> 30} GiB for the SET runs' history",
        _kvservice_command,
    ),
    ServerSpec(REDIS, "redis-server, no persistence (`--save '' --appendonly no`)", _redis_command),
)


def require_tools() -> str:
    """The redis-benchmark path; raises RespBenchmarkUnavailable if a tool is missing."""
    benchmark = shutil.which("redis-benchmark")
    if benchmark is None or shutil.which("redis-server") is None:
        raise RespBenchmarkUnavailable(
            "redis-benchmark and redis-server are needed for the RESP workloads "
            "(Debian: apt-get install redis-server redis-tools)"
        )
    return benchmark


def key_name(number: int) -> str:
    """The key redis-benchmark makes of a random number: `__rand_int__` is 12 digits."""
    return f"k{number:012d}"


def fill_keys(port: int, count: int = POOL_SIZE) -> None:
    """Write every key of the pool, pipelined, so that every GET finds a value."""
    commands = b"".join(
        b"*3\r\n$3\r\nSET\r\n$13\r\n%s\r\n$%d\r\n%s\r\n"
        % (key_name(number).encode(), len(VALUE), VALUE)
        for number in range(count)
    )
    expected = b"+OK\r\n" * count
    with socket.create_connection((HOST, port), timeout=10) as connection:
        connection.sendall(commands)
        received = b""
        while len(received) < len(expected):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    if received != expected:
        raise RespBenchmarkFailed(f"filling the keys on port {port} got {received[:200]!r}")


def run_redis_benchmark(
    benchmark: str, port: int, workload: RespWorkload, requests: int
) -> WrkResult:
    """One redis-benchmark run, read from its CSV output, in the shape of a wrk run."""
    command = [
        benchmark, "-h", HOST, "-p", str(port), "-c", str(CLIENTS), "-n", str(requests),
        "-r", str(POOL_SIZE), "-P", str(workload.pipeline), "--csv", *workload.command,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    rows = list(csv.DictReader(completed.stdout.splitlines()))
    if completed.returncode != 0 or not rows or "WARNING" in completed.stdout + completed.stderr:
        raise RespBenchmarkFailed(
            f"redis-benchmark on port {port} exited {completed.returncode}: "
            f"{(completed.stderr or completed.stdout).strip()[:500]}"
        )
    row = rows[-1]
    rate = float(row["rps"])
    return WrkResult(
        requests=requests,
        duration_s=requests / rate,
        p50_ms=float(row["p50_latency_ms"]),
        p99_ms=float(row["p99_latency_ms"]),
        max_ms=float(row["max_latency_ms"]),
        non_2xx=0,  # redis-benchmark stops at the first error reply
        socket_errors=0,
    )


def measure_resp(repeats: int, duration_s: float, scratch: Path) -> Results:
    """Start both servers, fill them, calibrate each workload's request count on each, then
    run every repeat of every workload against each server in turn."""
    benchmark = require_tools()
    results = Results()
    with ExitStack() as stack:
        running = [
            stack.enter_context(
                ServerProcess(
                    spec,
                    scratch,
                    server_environment(None),
                    [f"--max-bytes={KVSERVICE_MAX_BYTES}"] if spec.name == SUBJECT else [],
                )
            )
            for spec in RESP_SERVERS
        ]
        for server in running:
            fill_keys(server.port)
        requests = {
            (server.spec.name, workload.name): max(
                1000,
                round(
                    run_redis_benchmark(benchmark, server.port, workload, 5000).requests_per_s
                    * duration_s
                ),
            )
            for workload in RESP_WORKLOADS
            for server in running
        }
        for repeat in range(repeats):
            for workload in RESP_WORKLOADS:
                for server in running:
                    cpu_before = server.cpu_seconds()
                    result = run_redis_benchmark(
                        benchmark,
                        server.port,
                        workload,
                        requests[server.spec.name, workload.name],
                    )
                    server.check_alive()
                    results.add(
                        server.spec.name,
                        workload.name,
                        CLIENTS,
                        Run(result, server.cpu_seconds() - cpu_before),
                    )
                    print(
                        f"[resp {repeat + 1}/{repeats}] {server.spec.name:>12} "
                        f"{workload.name:<9} {result.requests_per_s:10,.0f} ops/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    return results


def resp_table(results: Results) -> list[str]:
    """Median ops/s, p99 and server CPU per workload for both servers, and the ratios."""
    lines = [
        f"| workload | {SUBJECT} ops/s | {REDIS} ops/s | {SUBJECT} / {REDIS} "
        f"| {SUBJECT} p99 ms | {REDIS} p99 ms | {SUBJECT} CPU us/op |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in RESP_WORKLOADS:
        ours = results.cell(SUBJECT, workload.name, CLIENTS)
        theirs = results.cell(REDIS, workload.name, CLIENTS)
        if ours is None or theirs is None:
            continue
        lines.append(
            f"| {workload.name} | {ours.requests_per_s:,.0f} | {theirs.requests_per_s:,.0f} "
            f"| {ours.requests_per_s / theirs.requests_per_s:.3f}x | {ours.p99_ms:.2f} "
            f"| {theirs.p99_ms:.2f} | {ours.cpu_us_per_request:.1f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the RESP table; 0 measured, 1 failed, 2 tools missing."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resp", description=__doc__)
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--duration", type=positive_int, default=3, help="seconds per run")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="kvservice-bench-resp-") as scratch:
            results = measure_resp(args.repeats, args.duration, Path(scratch))
    except RespBenchmarkUnavailable as error:
        print(f"benchmarks.resp: {error}", file=sys.stderr)
        return 2
    except RespBenchmarkFailed as error:
        print(f"benchmarks.resp: {error}", file=sys.stderr)
        return 1
    print("\n".join(resp_table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
