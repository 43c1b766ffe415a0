"""Where a kvservice request spends its CPU: cProfile on every server thread under wrk load.

    python -m benchmarks.profiling --workload get --connections 16 --seconds 5
    python -m benchmarks.profiling --workload history1000 --top 15 --threads 4

kvservice runs in this process, built as `python -m kvservice` builds it (store, app, the
cheroot runner, INFO logging with the access log sent to /dev/null), with its data written
straight into the store before the server starts. Every thread the server starts gets its
own cProfile, timed by that thread's CPU clock (time.thread_time) so that threads waiting
for the GIL, a lock or a socket do not count; wrk, in its own process, makes the load.
The report divides each figure by the requests wrk completed: CPU microseconds per request,
by area (the core, the parser, cheroot, Bottle, the app, the store, logging...) and by function.
Absolute figures are inflated by the profiler itself (roughly 2x); the shares are what count.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import redirect_stdout
from types import FrameType
from typing import Any

from benchmarks.workloads import CONTENT_TYPE, VALUE, WORKLOADS, Slot, Workload, fill_pool
from benchmarks.wrk import require_wrk, run_wrk
from kvservice.__main__ import build_store, http_transport_settings
from kvservice.config import Config
from kvservice.http.app import create_app
from kvservice.http.server import Server
from kvservice.lifecycle import configure_logging
from kvservice.store import Store

AREAS = (
    ("/cheroot/", "cheroot"),
    ("kvservice/core/", "kvservice connection core (asyncio)"),
    ("kvservice/http/protocol.py", "kvservice http protocol (parser events, access log)"),
    ("kvservice/http/server.py", "kvservice http protocol (parser events, access log)"),
    ("kvservice/http/parser.py", "kvservice http parser"),
    ("kvservice/http/cheroot_adapter.py", "kvservice cheroot adapter"),
    ("kvservice/http/app.py", "kvservice http app"),
    ("kvservice/http/problems.py", "kvservice problems"),
    ("kvservice/store/", "kvservice store"),
    ("/bottle.py", "bottle"),
    ("/logging/", "logging"),
    ("/json/", "json"),
    ("/_pyio.py", "_pyio (pure-Python io)"),
    ("/selectors.py", "selectors"),
    ("/asyncio/", "asyncio"),
    ("/threading.py", "threading, queue"),
    ("/queue.py", "threading, queue"),
)
"""A function's area, by the first fragment its file name contains."""
BUILTIN_AREAS = (
    ("socket", "socket I/O (C)"),
    ("select", "socket I/O (C)"),
    ("poll", "socket I/O (C)"),
    ("lock", "locks (C)"),
    ("write", "file writes (C)"),
    ("flush", "file writes (C)"),
)
"""A C function's area, by a fragment of its name."""


def area_of(filename: str, function: str) -> str:
    """The area a profiled function belongs to."""
    if filename == "~":
        return next(
            (area for fragment, area in BUILTIN_AREAS if fragment in function), "other C code"
        )
    return next((area for fragment, area in AREAS if fragment in filename), "other Python")


class ThreadProfiles:
    """A cProfile for every thread started while installed, timed by that thread's CPU."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def install(self) -> None:
        """Profile every thread started from now on."""
        threading.setprofile(self._start_profiling)

    def uninstall(self) -> None:
        """Profile no further threads (those already profiled go on)."""
        threading.setprofile(None)

    def _start_profiling(self, frame: FrameType, event: str, arg: Any) -> None:
        # The first event in a new thread: hand that thread over to its own cProfile.
        profile = cProfile.Profile(time.thread_time)
        self.profiles.append(profile)
        profile.enable()

    def stats(self) -> pstats.Stats:
        """The profiles merged."""
        return pstats.Stats(*self.profiles)


def write_directly(store: Store) -> Any:
    """A workloads.Writer that puts values straight into `store`."""

    def write(keys: Sequence[str]) -> None:
        for key in keys:
            store.put(key, VALUE, CONTENT_TYPE)

    return write


def report(stats: pstats.Stats, requests: int, top: int) -> str:
    """CPU per request by area and by function, as text."""
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = stats.stats  # type: ignore[attr-defined]
    total_s = sum(tottime for _, _, tottime, _, _ in entries.values())
    by_area: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, tottime, _, _) in entries.items():
        by_area[area_of(filename, function)] += tottime
    per_request = 1e6 / max(requests, 1)
    lines = [
        f"{requests} requests; profiled CPU {total_s * per_request:.0f} us per request "
        "(inflated by the profiler)",
        "",
        f"{'us/req':>8} {'share':>6}  area",
    ]
    for area, seconds in sorted(by_area.items(), key=lambda item: -item[1]):
        lines.append(f"{seconds * per_request:8.1f} {seconds / total_s:6.1%}  {area}")
    lines += ["", f"{'us/req':>8} {'calls/req':>9}  function (own time)"]
    ranked = sorted(entries.items(), key=lambda item: -item[1][2])[:top]
    for (filename, line, function), (_, calls, tottime, _, _) in ranked:
        where = function if filename == "~" else f"{function} ({_short(filename)}:{line})"
        lines.append(f"{tottime * per_request:8.1f} {calls / max(requests, 1):9.2f}  {where}")
    return "\n".join(lines)


def _short(filename: str) -> str:
    parts = filename.split(os.sep)
    return os.sep.join(parts[-2:])


def main(argv: Sequence[str] | None = None) -> int:
    """Profile one workload against an in-process kvservice and print where the CPU goes."""
    profilable = {w.name: w for w in WORKLOADS if w.requires is None}
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workload", choices=sorted(profilable), default="get")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="worker threads, for a store that waits (kvservice's default)"
    )
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    args = parser.parse_args(argv)
    workload: Workload = profilable[args.workload]

    config = Config(port=0, **({"threads": args.threads} if args.threads else {}))
    store = build_store(config)
    slot = Slot(repeat=0, connections=args.connections)
    fill_pool(write_directly(store))
    workload.prepare(write_directly(store), slot)
    profiles = ThreadProfiles()
    with open(os.devnull, "w") as devnull:
        with redirect_stdout(devnull):
            configure_logging(config.log_level)  # the access log goes to stdout: /dev/null
        profiles.install()
        settings = http_transport_settings(config, store)
        server = Server(create_app(store), settings)
        server.start()
        profiles.uninstall()
        try:
            result = run_wrk(
                require_wrk(),
                server.url,
                workload.script_args(slot),
                connections=args.connections,
                duration_s=args.seconds,
            )
        finally:
            server.stop()
    where = (
        f"{config.threads} threads"
        if settings.execution.needs_workers
        else "served on the event loop"
    )
    print(
        f"{workload.name} at {args.connections} connections, "
        f"{where}: "
        f"{result.requests_per_s:,.0f} req/s under the profiler, "
        f"non-2xx {result.non_2xx}, socket errors {result.socket_errors}\n"
    )
    print(report(profiles.stats(), result.requests, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
