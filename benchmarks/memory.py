"""Memory per key and per history entry: a real kvservice process, filled over HTTP.

Each case starts a fresh server, warms it up, reads its RSS (VmRSS), writes `count` items
and reads the RSS again; the growth per item, less the bytes the item stores, is the
overhead. Measuring the real process, not a Store in the benchmark's own interpreter,
counts what a deployment pays: the objects the HTTP path leaves in the store (the key as
parsed from the path, the body as read, a content type per value), allocator slack, and
fragmentation from glibc's per-thread arenas under 32 worker threads.

Keys are measured with the history window at its minimum (1 ms), so that each write's
history entry leaves at the next write and the figure is the key alone; history entries are
measured with the default window, as writes to a hundred existing keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loader import Request, require_success, send_all
from benchmarks.servers import HOST, ServerProcess, ServerSpec
from benchmarks.workloads import CONTENT_TYPE

WARM_UP_WRITES = 2000
HISTORY_KEYS = 100


@dataclass(frozen=True)
class MemoryCase:
    """One measurement: what is written, and the bytes each item stores."""

    name: str
    unit: str
    value_bytes: int
    server_args: tuple[str, ...]
    before: Callable[[int], list[Request]]
    """Requests sent before the baseline (keys that the measured writes then update)."""
    measured: Callable[[int], list[Request]]
    stored_bytes_each: int
    """The bytes one item stores: key, value and content type, or an entry's value."""


@dataclass(frozen=True)
class MemoryResult:
    """The growth of a server's RSS over `count` items."""

    server: str
    case: str
    unit: str
    count: int
    stored_bytes_each: int
    rss_before: int
    rss_after: int

    @property
    def bytes_each(self) -> float:
        """RSS growth per item."""
        return (self.rss_after - self.rss_before) / self.count

    @property
    def overhead_each(self) -> float:
        """RSS growth per item beyond the bytes it stores."""
        return self.bytes_each - self.stored_bytes_each


def _key(index: int) -> str:
    return f"m{index:07d}"


def _key_case(value_bytes: int) -> MemoryCase:
    value = b"v" * value_bytes
    return MemoryCase(
        name=f"keys of {value_bytes} B",
        unit="key",
        value_bytes=value_bytes,
        server_args=("--history-window", "0.001"),
        before=lambda count: [],
        measured=lambda count: [
            Request("PUT", f"/{_key(index)}", value, CONTENT_TYPE) for index in range(count)
        ],
        stored_bytes_each=len(_key(0)) + value_bytes + len(CONTENT_TYPE),
    )


def _history_case(value_bytes: int) -> MemoryCase:
    value = b"h" * value_bytes
    return MemoryCase(
        name=f"history entries of {value_bytes} B",
        unit="history entry",
        value_bytes=value_bytes,
        server_args=(),
        before=lambda count: [
            Request("PUT", f"/{_key(index)}", value, CONTENT_TYPE) for index in range(HISTORY_KEYS)
        ],
        measured=lambda count: [
            Request("PUT", f"/{_key(index % HISTORY_KEYS)}", value, CONTENT_TYPE)
            for index in range(count)
        ],
        stored_bytes_each=value_bytes,
    )


MEMORY_CASES = (_key_case(100), _key_case(1024), _history_case(100))


def measure_memory(
    spec: ServerSpec, case: MemoryCase, count: int, scratch: Path, environment: dict[str, str]
) -> MemoryResult:
    """Start a fresh `spec` server and measure its RSS growth over `count` items of `case`."""
    with ServerProcess(spec, scratch, environment, list(case.server_args)) as server:
        warm_up = [Request("PUT", "/warmup", b"w" * case.value_bytes, CONTENT_TYPE)]
        require_success(
            send_all(HOST, server.port, warm_up * WARM_UP_WRITES + case.before(count)),
            f"warming up {spec.name}",
        )
        rss_before = server.rss_bytes()
        require_success(send_all(HOST, server.port, case.measured(count)), f"writing {case.name}")
        rss_after = server.rss_bytes()
    return MemoryResult(
        server=spec.name,
        case=case.name,
        unit=case.unit,
        count=count,
        stored_bytes_each=case.stored_bytes_each,
        rss_before=rss_before,
        rss_after=rss_after,
    )
