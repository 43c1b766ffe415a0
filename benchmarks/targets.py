"""The issues' performance targets, each judged met or not from one benchmark's figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.memory import MemoryResult
from benchmarks.resp import CLIENTS, REDIS
from benchmarks.results import Results

SUBJECT = "kvservice"
CEILING = "bare"
PEER = "waitress"
STOCK = "stock"
DURABLE = {"always": "durable-always", "everysec": "durable-everysec"}
"""The durable store's servers by --fsync policy (benchmarks/servers.py)."""
SINGLE_KEY_WORKLOADS = ("get", "put", "post", "delete", "mix")
"""The workloads the latency target covers; history answers grow with the history."""


@dataclass(frozen=True)
class Measurements:
    """Everything one benchmark run measured."""

    http: Results
    memory: Sequence[MemoryResult] = ()
    resp: Results = field(default_factory=Results)
    """redis-benchmark against kvservice's RESP port and redis-server (benchmarks/resp.py)."""


@dataclass(frozen=True)
class TargetCheck:
    """One target, whether this run met it (None: not measured), and the figure behind it."""

    target: str
    met: bool | None
    figure: str

    @property
    def verdict(self) -> str:
        """`met`, `NOT met` or `not measured`."""
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def _ratios(
    results: Results, baseline: str, workloads: Sequence[str], concurrency: Sequence[int]
) -> list[tuple[str, int, float]]:
    found = []
    for workload in workloads:
        for connections in concurrency:
            ratio = results.ratio(SUBJECT, baseline, workload, connections)
            if ratio is not None:
                found.append((workload, connections, ratio))
    return found


def _ratio_check(
    target: str, ratios: list[tuple[str, int, float]], minimum: float, *, list_all: bool = False
) -> TargetCheck:
    if not ratios:
        return TargetCheck(target, None, "")
    below = [(workload, c, ratio) for workload, c, ratio in ratios if ratio < minimum]
    lowest = min(ratios, key=lambda item: item[2])
    figure = f"lowest {lowest[2]:.2f}x ({lowest[0]} at {lowest[1]} conn.)"
    if below:
        figure += f"; {len(below)} of {len(ratios)} below {minimum}x"
    if list_all:
        figure += " [" + ", ".join(f"{w} {c}: {r:.2f}x" for w, c, r in ratios) + "]"
    return TargetCheck(target, not below, figure)


def check_stock(measured: Measurements) -> TargetCheck:
    """kvservice GET and PUT at 16 connections >= 1.0x a bare route on stock cheroot."""
    results = measured.http
    return _ratio_check(
        "kvservice GET and PUT at 16 conn. >= 1.0x the bare route on stock cheroot",
        _ratios(results, STOCK, ("get", "put"), [16]),
        1.0,
        list_all=True,
    )


def check_ceiling(measured: Measurements) -> TargetCheck:
    """kvservice GET and PUT at >= 0.9x the bare Bottle route at every concurrency."""
    results = measured.http
    return _ratio_check(
        "kvservice GET and PUT >= 0.9x bare Bottle at every concurrency",
        _ratios(results, CEILING, ("get", "put"), results.concurrency),
        0.9,
        list_all=True,
    )


def check_peer(measured: Measurements) -> TargetCheck:
    """kvservice on cheroot at >= 1.0x the same app on waitress at 16 and 64 connections."""
    results = measured.http
    concurrency = [c for c in (16, 64) if c in results.concurrency]
    ratios = _ratios(results, PEER, results.workloads, concurrency)
    return _ratio_check(
        "kvservice (cheroot) >= 1.0x the same app on waitress at 16 and 64 conn., every workload",
        ratios,
        1.0,
    )


def check_latency(measured: Measurements) -> TargetCheck:
    """p99 at 64 connections under 25 ms with zero socket errors (single-key workloads)."""
    target = "p99 at 64 conn. < 25 ms with zero socket errors (get, put, post, delete, mix)"
    cells = {
        workload: cell
        for workload in SINGLE_KEY_WORKLOADS
        if (cell := measured.http.cell(SUBJECT, workload, 64)) is not None
    }
    if not cells:
        return TargetCheck(target, None, "")
    above = [workload for workload, cell in cells.items() if cell.p99_ms >= 25]
    socket_errors = sum(cell.socket_errors for cell in cells.values())
    figure = ", ".join(f"{workload} {cell.p99_ms:.1f} ms" for workload, cell in cells.items())
    figure += f"; socket errors {socket_errors}"
    if above:
        figure += f"; at or above 25 ms: {', '.join(above)}"
    return TargetCheck(target, not above and socket_errors == 0, figure)


def check_history(measured: Measurements) -> TargetCheck:
    """History of 1000 entries served at >= 500 req/s (at every concurrency measured)."""
    results = measured.http
    target = "history of 1000 entries >= 500 req/s at every concurrency"
    cells = {
        c: cell
        for c in results.concurrency
        if (cell := results.cell(SUBJECT, "history1000", c)) is not None
    }
    if not cells:
        return TargetCheck(target, None, "")
    lowest = min(cells, key=lambda c: cells[c].requests_per_s)
    rate = cells[lowest].requests_per_s
    return TargetCheck(target, rate >= 500, f"lowest {rate:.0f} req/s (at {lowest} conn.)")


def check_memory(measured: Measurements) -> TargetCheck:
    """At most 400 B per key and 200 B per history entry beyond the stored bytes."""
    target = "memory overhead <= 400 B per key and <= 200 B per history entry"
    limits = {"key": 400, "history entry": 200}
    ours = [result for result in measured.memory if result.server == SUBJECT]
    if not ours:
        return TargetCheck(target, None, "")
    met = all(result.overhead_each <= limits[result.unit] for result in ours)
    figure = "; ".join(f"{result.case}: {result.overhead_each:.0f} B" for result in ours)
    return TargetCheck(target, met, figure)


def _resp_rate(measured: Measurements, server: str, workload: str) -> float | None:
    cell = measured.resp.cell(server, workload, CLIENTS)
    return None if cell is None else cell.requests_per_s


def _resp_ratio_check(
    measured: Measurements,
    target: str,
    pairs: Sequence[tuple[str, tuple[str, str], tuple[str, str]]],
    minimum: float,
) -> TargetCheck:
    """Each pair's (label, a (server, workload), b (server, workload)): a / b >= minimum."""
    ratios = []
    for label, (server, workload), (base_server, base_workload) in pairs:
        rate, base = (
            _resp_rate(measured, server, workload),
            _resp_rate(measured, base_server, base_workload),
        )
        if rate is not None and base:
            ratios.append((label, rate / base))
    if not ratios:
        return TargetCheck(target, None, "")
    figure = ", ".join(f"{label} {ratio:.2f}x" for label, ratio in ratios)
    return TargetCheck(target, all(ratio >= minimum for _, ratio in ratios), figure)


def check_resp_pipelining(measured: Measurements) -> TargetCheck:
    """RESP GET and SET pipelined 16 deep >= 10x kvservice's own unpipelined figure."""
    return _resp_ratio_check(
        measured,
        "RESP GET and SET with -P 16 >= 10x kvservice's own unpipelined figure",
        [(command, (SUBJECT, f"{command} -P16"), (SUBJECT, command)) for command in ("GET", "SET")],
        10.0,
    )


def check_resp_against_redis(measured: Measurements) -> TargetCheck:
    """RESP GET and SET unpipelined >= 0.35x redis-server's."""
    return _resp_ratio_check(
        measured,
        "RESP GET and SET unpipelined >= 0.35x redis-server",
        [(command, (SUBJECT, command), (REDIS, command)) for command in ("GET", "SET")],
        0.35,
    )


def _durable_ratios(
    results: Results, fsync: str, workloads: Sequence[str]
) -> list[tuple[str, int, float]]:
    """The durable server's throughput over the memory store's (kvservice), at 16 and 64."""
    return [
        (workload, connections, ratio)
        for workload in workloads
        for connections in (16, 64)
        if (ratio := results.ratio(DURABLE[fsync], SUBJECT, workload, connections)) is not None
    ]


def check_durable_always(measured: Measurements) -> TargetCheck:
    """--fsync always: PUT and POST at 16 and 64 conn. >= 0.5x the memory-only store."""
    return _ratio_check(
        "--data-dir --fsync always: PUT and POST at 16 and 64 conn. >= 0.5x memory only",
        _durable_ratios(measured.http, "always", ("put", "post")),
        0.5,
        list_all=True,
    )


def check_durable_everysec(measured: Measurements) -> TargetCheck:
    """--fsync everysec: PUT and POST at 16 and 64 conn. >= 0.85x the memory-only store."""
    return _ratio_check(
        "--data-dir --fsync everysec: PUT and POST at 16 and 64 conn. >= 0.85x memory only",
        _durable_ratios(measured.http, "everysec", ("put", "post")),
        0.85,
        list_all=True,
    )


def check_durable_get(measured: Measurements) -> TargetCheck:
    """GET on the durable store >= 0.95x the memory-only store, p99 at 64 conn. < 25 ms."""
    target = "--data-dir: GET at 16 and 64 conn. >= 0.95x memory only; GET p99 at 64 < 25 ms"
    ratios = [
        (f"{fsync} get", c, ratio)
        for fsync in DURABLE
        for _, c, ratio in _durable_ratios(measured.http, fsync, ("get",))
    ]
    check = _ratio_check(target, ratios, 0.95, list_all=True)
    p99s = {
        fsync: cell.p99_ms
        for fsync, server in DURABLE.items()
        if (cell := measured.http.cell(server, "get", 64)) is not None
    }
    if check.met is None or not p99s:
        return check
    figure = (
        check.figure
        + "; GET p99 at 64: "
        + ", ".join(f"{fsync} {p99:.1f} ms" for fsync, p99 in p99s.items())
    )
    return TargetCheck(target, check.met and max(p99s.values()) < 25, figure)


TARGETS: tuple[Callable[[Measurements], TargetCheck], ...] = (
    check_stock,
    check_latency,
    check_resp_against_redis,
    check_resp_pipelining,
    check_ceiling,
    check_peer,
    check_history,
    check_memory,
    check_durable_always,
    check_durable_everysec,
    check_durable_get,
)


def check_targets(measured: Measurements) -> list[TargetCheck]:
    """Every target of the issues, judged from this run."""
    return [check(measured) for check in TARGETS]
