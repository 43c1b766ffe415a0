"""`python -m benchmarks.expiry`: GET latency while a wave of keys expires together (issue 20:
a wave of 100,000 keys must not raise GET p99 at 16 connections above 25 ms).

    python -m benchmarks.expiry                                  the issue's sizes
    python -m benchmarks.expiry --wave-keys 5000 --load-s 2      a quick look

Against each server (`kvservice`, the memory store with its defaults, unless --servers says
otherwise), its pool of 1,000 keys filled, two wrk runs of GETs of the pool at 16
connections, side by side:
- without a wave;
- with one: `--wave-keys` other keys written first over HTTP (pipelined) with one
  `?expires_at=`, a deadline placed `--lead-s` into the run, so that the sweeper removes them
  all while wrk reads. A run of GETs between the writes and the measured run takes the
  garbage collection the writes leave pending, which is the writes' cost, not the expiry's.
  /_metrics is polled meanwhile: the wave is swept once the history
  holds an expiry entry for every one of its keys.
A server that did not take the deadline (no wave key gone) stops the benchmark: the two runs
would then measure the same thing.

It prints a Markdown section for docs/PERFORMANCE.md. Timing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from benchmarks.durable import journal_figures
from benchmarks.loader import Request, require_success, send_all
from benchmarks.servers import ServerProcess, ServerSpec, builtin_servers, server_environment
from benchmarks.workloads import CONTENT_TYPE, POOL_SIZE, VALUE, fill_pool, http_writer
from benchmarks.wrk import WrkResult, require_wrk, run_wrk

CONNECTIONS = 16
SETTLE_MARGIN_S = 0.5
"""Between the run that settles the writes and the measured one."""
P99_TARGET_MS = 25.0
WAVE_WRITERS = 4
"""Pipelined connections that write the wave."""
HISTORY_ENTRIES = "kvservice_store_history_entries"
POLL_S = 0.05


class WaveNotTaken(RuntimeError):
    """The server kept the wave's keys past their deadline (it ignores ?expires_at=)."""


@dataclass(frozen=True)
class WaveRun:
    """A wrk run during which the wave expired, and how long sweeping it took."""

    result: WrkResult
    swept_s: float | None
    """From the deadline until every wave key's expiry was in the history; None: not within
    the run."""


def wave_requests(keys: int, deadline_ms: int) -> list[Request]:
    return [
        Request("PUT", f"/wave{number}?expires_at={deadline_ms}", VALUE, CONTENT_TYPE)
        for number in range(keys)
    ]


def run_with_wave(
    wrk: str, server: ServerProcess, keys: int, load_s: int, lead_s: float, budget_s: float
) -> WaveRun:
    """Write the wave due `lead_s` into a wrk run, then run wrk while it expires."""
    deadline_ms = int((time.time() + budget_s + lead_s) * 1000)
    require_success(
        send_all(
            "127.0.0.1", server.port, wave_requests(keys, deadline_ms), connections=WAVE_WRITERS
        ),
        "writing the wave",
    )
    start_at = deadline_ms / 1000 - lead_s
    if time.time() > start_at:
        raise RuntimeError(f"writing the wave took more than {budget_s} s: raise --write-budget-s")
    # The writes leave a full garbage collection pending (about 80 ms for 100,000 keys), which
    # the first seconds of requests after them pay, whether or not anything expires (5 s of
    # GETs right after 100,000 plain writes: p99 30 ms, the next 5 s: 2.4 ms). A run of GETs
    # before the deadline takes it, so that the measured run sees what the expiry costs.
    settle_at = start_at - load_s - SETTLE_MARGIN_S
    if time.time() < settle_at:
        time.sleep(settle_at - time.time())
        run_wrk(
            wrk, server.url, ["get", str(POOL_SIZE)], connections=CONNECTIONS, duration_s=load_s
        )
    else:
        raise RuntimeError(
            f"writing the wave took more than {budget_s - load_s - SETTLE_MARGIN_S:.0f} s, "
            "leaving no time to settle: raise --write-budget-s"
        )
    before = journal_figures(server.url).get(HISTORY_ENTRIES, 0.0)
    time.sleep(max(0.0, start_at - time.time()))
    swept_at: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(POLL_S):
            entries = journal_figures(server.url).get(HISTORY_ENTRIES, 0.0)
            if entries - before >= keys:
                swept_at.append(time.time())
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_wrk(
            wrk, server.url, ["get", str(POOL_SIZE)], connections=CONNECTIONS, duration_s=load_s
        )
    finally:
        stop.set()
        watcher.join()
    for number in (0, keys // 2, keys - 1):
        if requests.get(f"{server.url}/wave{number}", timeout=10).status_code != 404:
            raise WaveNotTaken(f"wave{number} is still served after its deadline")
    swept_s = swept_at[0] - deadline_ms / 1000 if swept_at else None
    return WaveRun(result, swept_s)


def compare(spec: ServerSpec, scratch: Path, args: argparse.Namespace) -> list[str]:
    """The two runs against one server, as rows of the table, and the wave's sweep time."""
    wrk = require_wrk()
    with ServerProcess(spec, scratch, server_environment(None)) as server:
        fill_pool(http_writer("127.0.0.1", server.port))
        quiet = run_wrk(
            wrk,
            server.url,
            ["get", str(POOL_SIZE)],
            connections=CONNECTIONS,
            duration_s=args.load_s,
        )
        wave = run_with_wave(
            wrk, server, args.wave_keys, args.load_s, args.lead_s, args.write_budget_s
        )
    swept = "not within the run" if wave.swept_s is None else f"{max(wave.swept_s, 0):.2f} s"
    return [
        row(spec.name, "no wave", quiet),
        row(spec.name, f"{args.wave_keys:,} keys expiring at once (swept in {swept})", wave.result),
    ]


def row(server: str, case: str, result: WrkResult) -> str:
    errors = result.non_2xx + result.socket_errors
    return (
        f"| {server} | {case} | {result.requests_per_s:,.0f} | {result.p50_ms:.2f} ms | "
        f"**{result.p99_ms:.2f} ms** | {result.max_ms:.1f} ms | {errors} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.expiry", description=__doc__)
    parser.add_argument("--wave-keys", type=int, default=100_000, help="keys expiring at once")
    parser.add_argument("--load-s", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument(
        "--lead-s", type=float, default=1.0, help="seconds of the wave run before the deadline"
    )
    parser.add_argument(
        "--write-budget-s", type=float, default=60.0, help="the most writing the wave may take"
    )
    parser.add_argument(
        "--servers", nargs="+", default=["kvservice"], help="kvservice servers by name"
    )
    args = parser.parse_args(argv)
    known = {spec.name: spec for spec in builtin_servers() if spec.workloads is None}
    unknown = [name for name in args.servers if name not in known]
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {sorted(known)}")
    lines = [
        "## A wave of keys expiring together",
        "",
        f"GETs of {POOL_SIZE:,} keys at {CONNECTIONS} connections, {args.load_s} s a run; the "
        f"wave's deadline {args.lead_s:g} s into its run (target: p99 at most "
        f"{P99_TARGET_MS:g} ms).",
        "",
        "| server | run | GET req/s | p50 | p99 | max | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="kv-expiry-bench-") as scratch:
        for name in args.servers:
            lines += compare(known[name], Path(scratch), args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
