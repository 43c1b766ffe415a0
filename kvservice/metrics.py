"""Prometheus metrics: what kvservice counts, and the page a scrape of /_metrics gets.

prometheus_client writes the exposition formats and negotiates which one a scraper gets. Per
request, the HTTP transport reports a `RequestRecord` to `Metrics.observe_request`, which
adds it up under one lock. Everything else is read when a scrape asks for it: the
store's figures from `Store.stats()` (with its journal's, for a store with --data-dir), each
transport's connection counts and RESP's command counts (the RESP server keeps those itself,
under a lock, since commands may run on worker threads), the change feed's watchers and what
they were sent (`kvservice.feed.ChangeFeed.figures`), and the bytes held in unsent replies
(`ReplyBudget`), so that serving a request does not pay for figures nobody has asked for yet.

Labels are bounded: methods outside HTTP_METHODS count as OTHER, routes are templates
("/{key}", never a key), RESP commands outside its table count as "unknown".
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from kvservice.feed import ENDED_REASONS, FeedFigures
from kvservice.http.server import RequestRecord
from kvservice.store import Persistence, Store, StoreError

logger = logging.getLogger("kvservice.metrics")

# No `_created` series beside every counter: they double the page, and rate() needs none.
disable_created_metrics()  # type: ignore[no-untyped-call]

HTTP_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
OTHER_METHOD = "OTHER"
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""From half a millisecond (a memory-store request is about 0.2 ms) to past the default 2 s
Redis timeout."""


class HttpConnections(Protocol):
    """What the HTTP transport tells about its connections (`kvservice.http.server.Server`)."""

    @property
    def open_connections(self) -> int: ...

    @property
    def connections_in_gate(self) -> int: ...

    @property
    def refusals(self) -> Mapping[int, int]: ...


class RespFigures(Protocol):
    """What the RESP transport tells (`kvservice.resp.server.RespServer.figures`)."""

    connected_clients: int
    total_connections_received: int
    rejected_connections: int
    commands: dict[bytes, int]
    """Calls by command name (upper case)."""
    errors: dict[tuple[bytes, str], int]
    """Error replies by command name and error code (ERR, WRONGTYPE, OOM, ...)."""


class ReplyFigures(Protocol):
    """What the reply budget tells (`kvservice.reply_budget.ReplyBudget`)."""

    @property
    def max_bytes(self) -> int: ...

    @property
    def held_bytes(self) -> int: ...

    @property
    def refusals(self) -> int: ...


class Metrics:
    """Every figure one kvservice process exports, in a registry of its own."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], _RequestFigures] = {}
        self._body_bytes_in = 0
        self._body_bytes_out = 0
        self._collectors: list[Callable[[], Iterator[Metric]]] = [
            self._http_request_metrics,
            lambda: _store_metrics(store),
        ]
        self.registry.register(_Collector(self._collectors))

    def observe_request(self, record: RequestRecord) -> None:
        """Count one answered request (any thread): a `RequestObserver` of the HTTP server.

        Not prometheus_client's Counter and Histogram: each of those takes a lock of its own
        per change, five a request (about 6 us, 3 % of a request's CPU); this takes one."""
        method = record.method if record.method in HTTP_METHODS else OTHER_METHOD
        labels = (method, record.route, record.status)
        bucket = bisect.bisect_left(DURATION_BUCKETS_S, record.duration_s)
        with self._lock:
            figures = self._requests.get(labels)
            if figures is None:
                figures = self._requests[labels] = _RequestFigures()
            figures.count += 1
            figures.duration_sum_s += record.duration_s
            figures.duration_buckets[bucket] += 1
            self._body_bytes_in += record.body_bytes_in
            self._body_bytes_out += record.body_bytes_out

    def watch_http(self, connections: HttpConnections) -> None:
        """Export the HTTP transport's connection figures, read at each scrape."""
        self._collectors.append(lambda: _http_connection_metrics(connections))

    def watch_resp(self, figures: RespFigures) -> None:
        """Export the RESP transport's connection and command figures, read at each scrape."""
        self._collectors.append(lambda: _resp_metrics(figures))

    def watch_feed(self, figures: Callable[[], FeedFigures]) -> None:
        """Export the change feed's figures (`ChangeFeed.figures`), read at each scrape."""
        self._collectors.append(lambda: _feed_metrics(figures()))

    def watch_replies(self, replies: ReplyFigures) -> None:
        """Export the bytes held in unsent replies, by every transport, read at each scrape."""
        self._collectors.append(lambda: _reply_metrics(replies))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper's Accept header asks for (Prometheus
        text 0.0.4 by default, OpenMetrics on request), and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def _http_request_metrics(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = [
                (labels, figures.count, figures.duration_sum_s, list(figures.duration_buckets))
                for labels, figures in sorted(self._requests.items())
            ]
            body_bytes_in, body_bytes_out = self._body_bytes_in, self._body_bytes_out
        requests = CounterMetricFamily(
            "kvservice_http_requests",
            "HTTP requests the app answered, by method, route template and status.",
            labels=["method", "route", "status"],
        )
        durations = HistogramMetricFamily(
            "kvservice_http_request_duration_seconds",
            "Time from a whole request reaching the app to its response being produced.",
            labels=["method", "route"],
        )
        by_route: dict[tuple[str, str], tuple[list[int], float]] = {}
        for (method, route, status), count, duration_sum_s, buckets in snapshot:
            requests.add_metric([method, route, str(status)], count)
            route_buckets, route_sum_s = by_route.get((method, route), ([0] * len(buckets), 0.0))
            merged = [mine + theirs for mine, theirs in zip(route_buckets, buckets, strict=True)]
            by_route[(method, route)] = merged, route_sum_s + duration_sum_s
        for (method, route), (buckets, duration_sum_s) in by_route.items():
            bounds = [*map(floatToGoString, DURATION_BUCKETS_S), "+Inf"]
            durations.add_metric(
                [method, route],
                list(zip(bounds, itertools.accumulate(buckets), strict=True)),
                duration_sum_s,
            )
        yield requests
        yield durations
        yield CounterMetricFamily(
            "kvservice_http_request_body_bytes",
            "Request body bytes the app was sent (declared Content-Length).",
            value=body_bytes_in,
        )
        yield CounterMetricFamily(
            "kvservice_http_response_body_bytes",
            "Response body bytes the app answered with.",
            value=body_bytes_out,
        )


@dataclass(slots=True)
class _RequestFigures:
    """The requests of one (method, route, status): count, durations' sum and histogram."""

    count: int = 0
    duration_sum_s: float = 0.0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    """Requests per bucket, not cumulative; the last is past every bound (+Inf)."""


class _Collector:
    """A prometheus_client collector over figures read when a scrape asks."""

    def __init__(self, sources: list[Callable[[], Iterator[Metric]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in list(self.sources):
            yield from source()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _store_metrics(store: Store) -> Iterator[Metric]:
    """The store's figures; with Redis away, only `kvservice_store_up 0`."""
    try:
        stats = store.stats()
    except StoreError as error:
        logger.warning("metrics: the store's figures are unavailable: %s", error)
        yield _gauge("kvservice_store_up", "1 when the store answered this scrape.", 0)
        return
    yield _gauge("kvservice_store_up", "1 when the store answered this scrape.", 1)
    yield _gauge("kvservice_store_keys", "Keys holding a value.", stats.keys)
    yield _gauge(
        "kvservice_store_used_bytes",
        "Bytes the store holds, as its budget counts them.",
        stats.used_bytes,
    )
    yield _gauge(
        "kvservice_store_max_bytes",
        "The memory budget (--max-bytes; Redis: maxmemory, 0 for none).",
        stats.max_bytes,
    )
    if stats.history_entries is not None:
        yield _gauge(
            "kvservice_store_history_entries",
            "History entries held, every key's together: those inside the window, and those "
            "past it still waiting to be pruned (a batch at a time after a wave).",
            stats.history_entries,
        )
    yield CounterMetricFamily(
        "kvservice_store_full_refusals",
        "Writes refused because the memory budget was reached (HTTP 507, RESP OOM).",
        value=stats.full_refusals,
    )
    if stats.persistence is not None:
        yield from _persistence_metrics(stats.persistence)


def _persistence_metrics(persistence: Persistence) -> Iterator[Metric]:
    """The journal of a store with --data-dir: commits and their batch size, syncs and
    their time, refusals, and the files' sizes."""
    yield CounterMetricFamily(
        "kvservice_store_commits",
        "Transactions the journal committed (group commit: each holds every write queued).",
        value=persistence.commits,
    )
    yield CounterMetricFamily(
        "kvservice_store_committed_writes",
        "Writes those transactions held; per commit, the batch size.",
        value=persistence.committed_writes,
    )
    yield CounterMetricFamily(
        "kvservice_store_failed_commits",
        "Commits that failed (disk full, I/O error); their writes were refused (507, 503), "
        "but for expiries alone, which wait for the next commit.",
        value=persistence.failed_commits,
    )
    yield CounterMetricFamily(
        "kvservice_store_syncs",
        "Syncs to disk: each commit with --fsync always, the periodic sync with everysec.",
        value=persistence.syncs,
    )
    yield CounterMetricFamily(
        "kvservice_store_sync_seconds",
        "Time spent in those syncs (with always, the whole commit); per sync, the latency.",
        value=persistence.sync_seconds_total,
    )
    yield _gauge(
        "kvservice_store_pending_writes",
        "Writes applied in memory and waiting for their commit.",
        persistence.pending_writes,
    )
    yield _gauge(
        "kvservice_store_last_commit_ok",
        "1 when the last commit succeeded, 0 while the disk refuses writes.",
        int(persistence.last_commit_ok),
    )
    files = GaugeMetricFamily(
        "kvservice_store_file_bytes", "Size of each file under --data-dir.", labels=["file"]
    )
    for name, size in sorted(persistence.file_bytes.items()):
        files.add_metric([name], size)
    yield files


def _http_connection_metrics(connections: HttpConnections) -> Iterator[Metric]:
    yield _gauge(
        "kvservice_http_connections_open",
        "HTTP connections accepted and not yet closed.",
        connections.open_connections,
    )
    yield _gauge(
        "kvservice_http_connections_in_gate",
        "Open HTTP connections the event loop holds (idle, receiving a request, sending a "
        "response, or served on the loop itself), not a worker.",
        connections.connections_in_gate,
    )
    refused = CounterMetricFamily(
        "kvservice_http_refused",
        "Answers the transport gave before the app saw a request (503 connection limit, "
        "408 too slow, 413 too large, 414/431 oversized head, 400 malformed), by status.",
        labels=["status"],
    )
    for status, count in sorted(dict(connections.refusals).items()):
        refused.add_metric([str(status)], count)
    yield refused


def _resp_metrics(figures: RespFigures) -> Iterator[Metric]:
    yield _gauge(
        "kvservice_resp_connections_open", "RESP connections open.", figures.connected_clients
    )
    yield CounterMetricFamily(
        "kvservice_resp_connections_accepted",
        "RESP connections accepted, refused ones included.",
        value=figures.total_connections_received,
    )
    yield CounterMetricFamily(
        "kvservice_resp_connections_refused",
        "RESP connections refused at --resp-max-connections.",
        value=figures.rejected_connections,
    )
    commands = CounterMetricFamily(
        "kvservice_resp_commands", "RESP commands run, by name.", labels=["command"]
    )
    for name, count in sorted(dict(figures.commands).items()):
        commands.add_metric([name.decode("ascii", "replace")], count)
    yield commands
    errors = CounterMetricFamily(
        "kvservice_resp_errors",
        "RESP error replies, by command and error code (ERR, WRONGTYPE, OOM, ...).",
        labels=["command", "error"],
    )
    for (name, code), count in sorted(dict(figures.errors).items()):
        errors.add_metric([name.decode("ascii", "replace"), code], count)
    yield errors


def _reply_metrics(replies: ReplyFigures) -> Iterator[Metric]:
    yield _gauge(
        "kvservice_reply_buffer_bytes",
        "Bytes held in replies clients have not read yet, every connection together.",
        replies.held_bytes,
    )
    yield _gauge(
        "kvservice_reply_buffer_max_bytes",
        "The budget for them (--max-reply-buffer-bytes).",
        replies.max_bytes,
    )
    yield CounterMetricFamily(
        "kvservice_reply_buffer_closed_connections",
        "Connections closed because their unsent reply did not fit the budget.",
        value=replies.refusals,
    )


WATCHER_KINDS = ("sse", "long-poll")
"""The kinds of watcher the HTTP transport opens, each reported even at 0."""


def _feed_metrics(figures: FeedFigures) -> Iterator[Metric]:
    watchers = GaugeMetricFamily(
        "kvservice_watchers",
        "Change feed watchers open, by kind (sse, long-poll).",
        labels=["kind"],
    )
    for kind in sorted({*WATCHER_KINDS, *figures.watchers}):
        watchers.add_metric([kind], figures.watchers.get(kind, 0))
    yield watchers
    yield CounterMetricFamily(
        "kvservice_watch_events_sent",
        "Changes taken by watchers to send to their clients.",
        value=figures.events_sent,
    )
    yield CounterMetricFamily(
        "kvservice_watch_bookmarks_sent",
        "Bookmarks (a position, when nothing else was sent for the interval) taken by watchers.",
        value=figures.bookmarks_sent,
    )
    ended = CounterMetricFamily(
        "kvservice_watch_ended",
        "Watchers the server ended, by reason: slow (did not read), gone (its position left "
        "the history window), unavailable (the store could not be read), stopping (drain).",
        labels=["reason"],
    )
    for reason in ENDED_REASONS:
        ended.add_metric([reason], figures.ended.get(reason, 0))
    yield ended
    yield CounterMetricFamily(
        "kvservice_watch_refused",
        "Watches refused at --max-watchers (or while the server stops), answered 503.",
        value=figures.refusals,
    )
