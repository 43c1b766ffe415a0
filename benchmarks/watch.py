"""`python -m benchmarks.watch`: many Server-Sent Events watchers on one kvservice (issue 21:
1,000 concurrent watchers on one process, a write reaches all of them, the p99 of a plain
GET at 16 connections stays under 25 ms while they are open, memory per idle watcher
reported).

    python -m benchmarks.watch                                    the issue's sizes
    python -m benchmarks.watch --watchers 100 --load-s 1 --runs 1 a quick look

One `python -m kvservice` (the memory store, its defaults but --max-connections, raised to
leave room for the watchers beside wrk's connections), its pool of 1,000 keys filled, then:
- `--runs` wrk runs of GETs of the pool at 16 connections, no watcher open;
- the server's RSS; `--watchers` watchers of one key opened (`GET /_watch?key=`), each
  until its first bookmark, all on one asyncio loop here (not a thread each); the RSS
  again: (after - before) / watchers is the memory of an idle watcher;
- `--writes` PUTs of the watched key, one at a time: for each, the time from sending it
  until the last watcher had its event (every watcher must have it, or the benchmark
  stops);
- `--runs` wrk runs again, the watchers open (and read) meanwhile.
The p99 of each side is the median of its runs. The soft limit of open files is raised
(RLIMIT_NOFILE, up to the hard one) before the server starts, which inherits it.

It prints a Markdown section for docs/PERFORMANCE.md. Timing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from benchmarks.servers import HOST, KVSERVICE, ServerProcess, server_environment
from benchmarks.workloads import POOL_SIZE, fill_pool, http_writer
from benchmarks.wrk import WrkResult, require_wrk, run_wrk

CONNECTIONS = 16
P99_TARGET_MS = 25.0
WATCHED_KEY = "watched"
SPARE_CONNECTIONS = 64
"""Above the watchers in --max-connections: wrk's 16, the writes, /_health."""
SPARE_FILES = 256
"""Above two descriptors a watcher (its socket here, and the server's) in RLIMIT_NOFILE."""
OPEN_TIMEOUT_S = 60.0
"""The most opening every watcher (to its first bookmark) may take."""
DELIVERY_TIMEOUT_S = 30.0
"""The most a write may take to reach every watcher."""
SETTLE_S = 1.0
"""Before the RSS is read after opening the watchers: what they allocated is in place."""


class WatchFailed(RuntimeError):
    """A watcher was refused, or a write did not reach every watcher in time."""


def raise_open_files_limit(needed: int) -> int:
    """The soft RLIMIT_NOFILE raised to `needed` (at most the hard limit); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise WatchFailed(f"{needed} open files are needed; the hard limit is {hard}")
    return soft


class Watcher:
    """One event stream of WATCHED_KEY on its own connection; `changes` counts the change
    events received, and `reached` notes when each arrived (time.monotonic)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reached: list[float] = []
        self.changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect and read until the stream's first bookmark; then read on in the background."""
        self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        self._writer.write(
            f"GET /_watch?key={WATCHED_KEY} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode()
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise WatchFailed(f"a watch was answered {status.decode()}: {head!r}")
        await self._reader.readuntil(b"event: bookmark")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Every line of the (chunked) body: a change event's line notes its arrival. The
        server writes whole events to a chunk, and a chunk's size line never begins with
        "event:", so the lines need no de-chunking to be spotted."""
        assert self._reader is not None
        while line := await self._reader.readline():
            if line.startswith(b"event: change"):
                self.reached.append(time.monotonic())
                self.changed.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()


@dataclass(frozen=True)
class Figures:
    quiet: list[WrkResult]
    watched: list[WrkResult]
    watchers: int
    rss_before: int
    rss_after: int
    deliveries_s: list[float]
    """For each write: from sending it until the last watcher had it."""


async def open_watchers(port: int, count: int) -> list[Watcher]:
    """`count` watchers, opened a hundred at a time (the listen backlog is finite)."""
    watchers = [Watcher(port) for _ in range(count)]
    for start in range(0, count, 100):
        batch = watchers[start : start + 100]
        await asyncio.wait_for(
            asyncio.gather(*(watcher.open() for watcher in batch)), OPEN_TIMEOUT_S
        )
    return watchers


async def deliver(url: str, watchers: list[Watcher], number: int) -> float:
    """PUT the watched key; seconds until the last watcher had the change."""
    for watcher in watchers:
        watcher.changed.clear()
    sent_at = time.monotonic()
    response = await asyncio.to_thread(
        requests.put, f"{url}/{WATCHED_KEY}", data=f"write{number}", timeout=10
    )
    if response.status_code != 204:
        raise WatchFailed(f"the write was answered {response.status_code}: {response.text}")
    try:
        await asyncio.wait_for(
            asyncio.gather(*(watcher.changed.wait() for watcher in watchers)), DELIVERY_TIMEOUT_S
        )
    except TimeoutError:
        missing = sum(len(watcher.reached) <= number for watcher in watchers)
        raise WatchFailed(
            f"{missing} of {len(watchers)} watchers did not get write {number} within "
            f"{DELIVERY_TIMEOUT_S:g} s"
        ) from None
    return max(watcher.reached[number] for watcher in watchers) - sent_at


def get_runs(wrk: str, server: ServerProcess, runs: int, load_s: int) -> list[WrkResult]:
    return [
        run_wrk(
            wrk, server.url, ["get", str(POOL_SIZE)], connections=CONNECTIONS, duration_s=load_s
        )
        for _ in range(runs)
    ]


async def measure(wrk: str, server: ServerProcess, args: argparse.Namespace) -> Figures:
    fill_pool(http_writer(HOST, server.port))
    quiet = await asyncio.to_thread(get_runs, wrk, server, args.runs, args.load_s)
    rss_before = server.rss_bytes()
    watchers = await open_watchers(server.port, args.watchers)
    try:
        await asyncio.sleep(SETTLE_S)
        rss_after = server.rss_bytes()
        deliveries = [await deliver(server.url, watchers, number) for number in range(args.writes)]
        watched = await asyncio.to_thread(get_runs, wrk, server, args.runs, args.load_s)
        server.check_alive()
    finally:
        await asyncio.gather(*(watcher.close() for watcher in watchers))
    return Figures(quiet, watched, args.watchers, rss_before, rss_after, deliveries)


def median_p99(results: list[WrkResult]) -> float:
    return statistics.median(result.p99_ms for result in results)


def report(figures: Figures, args: argparse.Namespace) -> list[str]:
    per_watcher = (figures.rss_after - figures.rss_before) / figures.watchers
    deliveries_ms = ", ".join(f"{seconds * 1000:.1f} ms" for seconds in figures.deliveries_s)

    def row(case: str, results: list[WrkResult]) -> str:
        errors = sum(result.non_2xx + result.socket_errors for result in results)
        p99s = ", ".join(f"{result.p99_ms:.2f}" for result in results)
        requests_per_s = statistics.median(result.requests_per_s for result in results)
        return (
            f"| {case} | {requests_per_s:,.0f} | **{median_p99(results):.2f} ms** "
            f"({p99s}) | {errors} |"
        )

    return [
        "## Watchers",
        "",
        f"`python -m kvservice --max-connections {figures.watchers + SPARE_CONNECTIONS}`, the "
        f"memory store; GETs of {POOL_SIZE:,} keys at {CONNECTIONS} connections, "
        f"{args.load_s} s a run, the median of {args.runs} runs a side (target: p99 at most "
        f"{P99_TARGET_MS:g} ms with {figures.watchers:,} watchers open).",
        "",
        "| GETs | req/s (median) | p99, median (each run) | errors |",
        "|---|---|---|---|",
        row("no watcher open", figures.quiet),
        row(f"{figures.watchers:,} SSE watchers open", figures.watched),
        "",
        f"- A write reached all {figures.watchers:,} watchers in: {deliveries_ms} "
        f"({len(figures.deliveries_s)} writes, one at a time; from sending the PUT to the "
        "last watcher's event).",
        f"- Server RSS {figures.rss_before / 2**20:.1f} MiB before the watchers, "
        f"{figures.rss_after / 2**20:.1f} MiB with them open: "
        f"**{per_watcher / 1024:.1f} KiB per idle watcher**.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watch", description=__doc__)
    parser.add_argument("--watchers", type=int, default=1000, help="SSE watchers to open")
    parser.add_argument("--load-s", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs on each side")
    parser.add_argument("--writes", type=int, default=3, help="writes timed to every watcher")
    args = parser.parse_args(argv)
    wrk = require_wrk()
    raise_open_files_limit(2 * args.watchers + SPARE_FILES)
    extra_args = ["--max-connections", str(args.watchers + SPARE_CONNECTIONS)]
    with (
        tempfile.TemporaryDirectory(prefix="kv-watch-bench-") as scratch,
        ServerProcess(KVSERVICE, Path(scratch), server_environment(None), extra_args) as server,
    ):
        figures = asyncio.run(measure(wrk, server, args))
    print("\n".join(report(figures, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
