"""`python -m benchmarks.durable`: what the durable store's issue asks beyond throughput (the
throughput targets are in the main run: its durable-always and durable-everysec servers).

    python -m benchmarks.durable                  all three, at the issue's sizes
    python -m benchmarks.durable --keys 100000 --writes 100000 --load-s 2   a quick look

- group commit: wrk PUTs against `--fsync always` at 16 and 64 connections; from /_metrics
  before and after, the writes per commit, the syncs per second the disk gave, and their
  mean latency;
- start-up: a data file of `--keys` keys, each written twice (its history), made directly
  through the journal; the time until `python -m kvservice --data-dir` accepts connections,
  and the disk used;
- compaction: `--writes` writes to 1,000 keys through the store (threads, group commit,
  --fsync off, since the file's size, not the speed, is measured here) with a 5 s window;
  the file's size and rows once the background compaction has run.

It prints a Markdown section for docs/PERFORMANCE.md. Timing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.servers import ServerProcess, ServerSpec, server_environment
from benchmarks.workloads import POOL_SIZE, VALUE, fill_pool, http_writer
from benchmarks.wrk import require_wrk, run_wrk
from kvservice.store.durable import DurableStore
from kvservice.store.durable.database import open_sqlite
from kvservice.store.durable.journal import DATA_FILE, Write, open_journal
from kvservice.store.model import system_clock_ms

COMPACTION_KEYS = 1000
COMPACTION_WINDOW_MS = 5000
BULK_BATCH = 20_000


def durable_server(data_dir: Path, fsync: str) -> ServerSpec:
    return ServerSpec(
        f"durable-{fsync}",
        f"kvservice --data-dir {data_dir} --fsync {fsync}",
        lambda port, _scratch: [
            sys.executable,
            "-m",
            "kvservice",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            "--data-dir",
            str(data_dir),
            "--fsync",
            fsync,
        ],
    )


def journal_figures(url: str) -> dict[str, float]:
    """The kvservice_store_* counters of /_metrics."""
    text = requests.get(f"{url}/_metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("kvservice_store_")
    }


def group_commit(scratch: Path, load_s: int) -> list[str]:
    """Writes per commit and syncs per second under wrk PUT load (--fsync always)."""
    wrk = require_wrk()
    lines = [
        "| connections | PUT req/s | writes per commit | syncs/s | mean sync |",
        "|---|---|---|---|---|",
    ]
    spec = durable_server(scratch / "group-commit", "always")
    with ServerProcess(spec, scratch, server_environment(None)) as server:
        fill_pool(http_writer("127.0.0.1", server.port))
        for connections in (16, 64):
            before = journal_figures(server.url)
            result = run_wrk(
                wrk,
                server.url,
                ["put", str(POOL_SIZE)],
                connections=connections,
                duration_s=load_s,
            )
            delta = {
                name: value - before.get(name, 0.0)
                for name, value in journal_figures(server.url).items()
            }
            commits = delta.get("kvservice_store_commits_total") or 1
            syncs = delta.get("kvservice_store_syncs_total") or 1
            lines.append(
                f"| {connections} | {result.requests / result.duration_s:,.0f} | "
                f"{delta.get('kvservice_store_committed_writes_total', 0) / commits:.1f} | "
                f"{syncs / result.duration_s:,.0f} | "
                f"{1000 * delta.get('kvservice_store_sync_seconds_total', 0) / syncs:.2f} ms |"
            )
    return lines


def write_keys_directly(data_dir: Path, keys: int) -> None:
    """`keys` keys, each written twice within the window, committed in large transactions."""
    data_dir.mkdir(parents=True)
    journal = open_journal(data_dir / DATA_FILE, open_sqlite, "off")
    try:
        now_ms = system_clock_ms()
        seq = 0
        for round_number in range(2):
            for start in range(0, keys, BULK_BATCH):
                batch = []
                for number in range(start, min(keys, start + BULK_BATCH)):
                    seq += 1
                    batch.append(
                        Write(
                            seq, f"k{number}", VALUE, None, f"bulk-{seq:x}", now_ms + round_number
                        )
                    )
                journal.append(batch)
        journal.sync()
    finally:
        journal.close()


def start_up(scratch: Path, keys: int) -> list[str]:
    """Time from starting kvservice on `keys` keys to its accepting connections."""
    data_dir = scratch / "start-up"
    started = time.monotonic()
    write_keys_directly(data_dir, keys)
    written_s = time.monotonic() - started
    disk = sum(path.stat().st_size for path in data_dir.iterdir())
    spec = durable_server(data_dir, "always")
    started = time.monotonic()
    with ServerProcess(spec, scratch, server_environment(None)) as server:
        start_s = time.monotonic() - started
        figures = journal_figures(server.url)
    return [
        f"- start-up with {keys:,} keys, each written twice (values, ETags and "
        f"{2 * keys:,} history entries): **{start_s:.1f} s** to accepting connections; "
        f"{figures.get('kvservice_store_keys', 0):,.0f} keys and "
        f"{figures.get('kvservice_store_history_entries', 0):,.0f} history entries loaded; "
        f"disk used {disk / 2**20:,.0f} MiB (the file was written in {written_s:.0f} s)",
    ]


def compaction(scratch: Path, writes: int) -> list[str]:
    """The file after `writes` writes to 1,000 keys with a short window, compacted."""
    data_dir = scratch / "compaction"
    store = DurableStore(data_dir, fsync="off", history_window_ms=COMPACTION_WINDOW_MS)
    threads = 16
    started = time.monotonic()

    def write(offset: int) -> None:
        for number in range(offset, writes, threads):
            store.put(f"k{number % COMPACTION_KEYS}", VALUE)

    workers = [threading.Thread(target=write, args=(offset,)) for offset in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    write_s = time.monotonic() - started
    at_the_end = sum(path.stat().st_size for path in data_dir.iterdir())
    time.sleep(COMPACTION_WINDOW_MS / 1000 + 3)  # the window passes; compaction runs each 1 s
    store.close()
    size = sum(path.stat().st_size for path in data_dir.iterdir())
    with sqlite3.connect(data_dir / DATA_FILE) as connection:
        (rows,) = connection.execute("SELECT count(*) FROM history").fetchone()
    return [
        f"- compaction: {writes:,} writes to {COMPACTION_KEYS:,} keys ({write_s:.0f} s, "
        f"{COMPACTION_WINDOW_MS / 1000:.0f} s window): {at_the_end / 2**20:.1f} MiB on disk "
        f"as the last write was acknowledged (the window's history), **{size / 2**20:.2f} "
        f"MiB** once the window had passed, {rows:,} history rows left",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for the start-up")
    parser.add_argument("--writes", type=int, default=1_000_000, help="writes for compaction")
    parser.add_argument("--load-s", type=int, default=5, help="seconds of wrk per connection count")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="kv-durable-bench-"))
    try:
        lines = ["## The durable store (--data-dir)", ""]
        lines += [*group_commit(scratch, args.load_s), ""]
        lines += start_up(scratch, args.keys)
        lines += compaction(scratch, args.writes)
        print("\n".join(lines))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
