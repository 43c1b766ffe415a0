"""/_metrics: the Prometheus exposition of both transports and the store, read with
prometheus_client's own parser, over real sockets; and the request IDs and log formats that
let a failure be traced to its line."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from kvservice.__main__ import TRANSPORTS, Security
from kvservice.config import Config
from kvservice.feed import ChangeFeed, FeedSettings
from kvservice.http.server import Server
from kvservice.metrics import Metrics
from kvservice.reply_budget import ReplyBudget
from kvservice.resp.server import RespServer
from kvservice.store import Store
from kvservice.store.durable import DurableStore
from kvservice.store.memory import MemoryStore
from tests.support.processes import start_service
from tests.support.rawhttp import single_response
from tests.support.rawresp import RespConnection

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Service:
    """kvservice as its composition root builds it, both transports, in this process."""

    store: Store
    http: Server
    resp: RespServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def scrape(self) -> Samples:
        """Every sample of /_metrics, by name and labels, parsed by prometheus_client."""
        response = requests.get(f"{self.url}/_metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples_of(response.text)


def samples_of(text: str) -> Samples:
    families = text_string_to_metric_families(text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start(store: Store, metrics: bool) -> Service:
    config = Config(port=0, resp_port=0, threads=4, socket_timeout_s=2.0)
    shared = Metrics(store) if metrics else None
    replies = ReplyBudget(config.max_reply_buffer_bytes)
    feed = ChangeFeed(store, FeedSettings())
    if shared is not None:
        shared.watch_replies(replies)
        shared.watch_feed(feed.figures)
    http = TRANSPORTS["http"](config, store, Security(), shared, replies, feed)
    resp = TRANSPORTS["resp"](config, store, Security(), shared, replies, feed)
    assert isinstance(http, Server) and isinstance(resp, RespServer)
    http.start()
    resp.start()
    return Service(store, http, resp)


@contextmanager
def running(
    store: Store, background_stops: list[threading.Thread], *, metrics: bool = True
) -> Iterator[Service]:
    """`start` for a `with`; stopped off the critical path (cheroot takes 0.5 s)."""
    service = start(store, metrics)
    try:
        yield service
    finally:
        for server in (service.http, service.resp):
            stop = threading.Thread(target=server.stop)
            stop.start()
            background_stops.append(stop)


@pytest.fixture
def service(background_stops: list[threading.Thread]) -> Iterator[Service]:
    with running(MemoryStore(max_bytes=8 * 1024), background_stops) as service:
        yield service


def test_requests_are_counted_by_method_route_template_and_status(service: Service) -> None:
    requests.put(f"{service.url}/secretkey1", data=b"hello", timeout=5)
    requests.put(f"{service.url}/secretkey2", data=b"hi", timeout=5)
    requests.get(f"{service.url}/secretkey1", timeout=5)
    requests.get(f"{service.url}/nokey", timeout=5)
    requests.get(f"{service.url}/secretkey1/history", timeout=5)
    requests.get(f"{service.url}/a/b/c", timeout=5)
    requests.request("BREW", f"{service.url}/pot", timeout=5)

    page = requests.get(f"{service.url}/_metrics", timeout=5).text
    samples = samples_of(page)

    requests_total = "kvservice_http_requests_total"
    assert value(samples, requests_total, method="PUT", route="/{key}", status="204") == 2
    assert value(samples, requests_total, method="GET", route="/{key}", status="200") == 1
    assert value(samples, requests_total, method="GET", route="/{key}", status="404") == 1
    assert value(samples, requests_total, method="GET", route="/{key}/history", status="200") == 1
    assert value(samples, requests_total, method="GET", route="unmatched", status="404") == 1
    assert value(samples, requests_total, method="OTHER", route="unmatched", status="405") == 1
    durations = "kvservice_http_request_duration_seconds"
    assert value(samples, f"{durations}_count", method="PUT", route="/{key}") == 2
    assert value(samples, f"{durations}_bucket", method="PUT", route="/{key}", le="+Inf") == 2
    assert 0 < value(samples, f"{durations}_sum", method="PUT", route="/{key}") < 1
    assert value(samples, "kvservice_http_request_body_bytes_total") == len(b"hello" + b"hi")
    assert value(samples, "kvservice_http_response_body_bytes_total") > len(b"hello")
    assert "secretkey" not in page and "BREW" not in page, "labels are templates, not input"


def test_store_figures_are_the_stores_own(service: Service) -> None:
    requests.put(f"{service.url}/a", data=b"x" * 100, timeout=5)
    requests.put(f"{service.url}/a", data=b"y", timeout=5)
    requests.put(f"{service.url}/b", data=b"z", timeout=5)
    while requests.put(f"{service.url}/fill", data=b"f" * 1000, timeout=5).status_code != 507:
        pass

    samples = service.scrape()

    stats = service.store.stats()
    assert stats.full_refusals == 1
    assert value(samples, "kvservice_store_up") == 1
    assert value(samples, "kvservice_store_keys") == stats.keys == 3
    assert value(samples, "kvservice_store_used_bytes") == stats.used_bytes > 0
    assert value(samples, "kvservice_store_max_bytes") == 8 * 1024
    assert value(samples, "kvservice_store_history_entries") == stats.history_entries
    assert value(samples, "kvservice_store_full_refusals_total") == 1
    assert (
        value(samples, "kvservice_http_requests_total", method="PUT", route="/{key}", status="507")
        == 1
    )


def test_connections_and_transport_refusals_are_counted(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.http.port)) as idle:
        idle.sendall(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.recv(4096)
        oversized = b"GET /k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        assert single_response(service.url, oversized)[0].status == 431
        samples = service.scrape()
    assert value(samples, "kvservice_http_connections_open") == 2  # the idle one, the scrape
    # Both are the event loop's: the idle one, and the scrape, served on the loop's thread.
    assert value(samples, "kvservice_http_connections_in_gate") == 2
    assert value(samples, "kvservice_http_refused_total", status="431") == 1


def test_resp_commands_and_errors_are_counted_by_name_and_code(service: Service) -> None:
    with RespConnection(service.resp.port) as conn:
        conn.ask("SET", "k", "v")
        conn.ask("get", "k")  # counted under its upper-case name
        conn.ask("GET", "k", "extra")
        conn.ask("GET", "no-such-key")
        conn.ask("FLUSHALL")
        filled = 0
        while conn.ask("SET", f"fill{filled}", "f" * 1000).startswith(b"+OK"):
            filled += 1
        samples = service.scrape()
    assert value(samples, "kvservice_resp_connections_open") == 1
    assert value(samples, "kvservice_resp_connections_accepted_total") == 1
    commands = "kvservice_resp_commands_total"
    assert value(samples, commands, command="GET") == 3
    assert value(samples, commands, command="UNKNOWN") == 1
    assert "FLUSHALL" not in str(samples)
    errors = "kvservice_resp_errors_total"
    assert value(samples, errors, command="GET", error="ERR") == 1
    assert value(samples, errors, command="GET", error="INVALIDKEY") == 1
    assert value(samples, errors, command="UNKNOWN", error="ERR") == 1
    assert value(samples, errors, command="SET", error="OOM") == 1
    assert value(samples, "kvservice_store_full_refusals_total") == 1


def test_a_scraper_asking_for_openmetrics_gets_it(service: Service) -> None:
    requests.get(f"{service.url}/k", timeout=5)
    response = requests.get(
        f"{service.url}/_metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    # This parser refuses anything not OpenMetrics, a missing "# EOF" line included.
    parsed = openmetrics_families(response.text)  # type: ignore[no-untyped-call]
    families = {family.name: family for family in parsed}
    assert families["kvservice_http_requests"].type == "counter"


def test_metrics_off_counts_nothing_and_serves_no_page(
    background_stops: list[threading.Thread],
) -> None:
    with running(MemoryStore(), background_stops, metrics=False) as service:
        response = requests.get(f"{service.url}/_metrics", timeout=5)
    assert response.status_code == 404


def test_with_redis_away_the_page_says_so_and_still_answers(
    background_stops: list[threading.Thread],
) -> None:
    redis_store = pytest.importorskip("kvservice.store.redis")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    store = redis_store.RedisStore.from_url(
        f"redis://127.0.0.1:{port}", connections=2, timeout_s=0.5
    )
    try:
        with running(store, background_stops) as service:
            samples = service.scrape()
    finally:
        store.close()  # its feed's subscriber would go on trying to reach Redis
    assert value(samples, "kvservice_store_up") == 0
    assert ("kvservice_store_keys", ()) not in samples


# -- request IDs ------------------------------------------------------------------------------


def test_a_request_id_is_echoed_and_named_in_problems(service: Service) -> None:
    response = requests.get(f"{service.url}/nokey", headers={"X-Request-ID": "trace-42"}, timeout=5)
    assert response.headers["X-Request-ID"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"


@pytest.mark.parametrize(
    "unfit", ["", "has space", "x" * 129, "caf\u00e9"], ids=["empty", "space", "long", "latin1"]
)
def test_an_unfit_or_missing_request_id_is_replaced_by_a_new_one(
    service: Service, unfit: str
) -> None:
    first = requests.get(f"{service.url}/_health", headers={"X-Request-ID": unfit}, timeout=5)
    second = requests.get(f"{service.url}/_health", timeout=5)
    assert first.headers["X-Request-ID"] != unfit
    for response in (first, second):
        assert len(response.headers["X-Request-ID"]) == 16
        int(response.headers["X-Request-ID"], 16)
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_access_line_names_the_request_id_in_either_log_format(log_format: str) -> None:
    service = start_service("kvservice", "--log-format", log_format, capture=True)
    try:
        response = requests.put(
            f"{service.url}/k", data=b"hello", headers={"X-Request-ID": "grep-me"}, timeout=5
        )
        stdout, stderr = service.stop()
    finally:
        service.kill()
    assert response.status_code == 204
    line = next(line for line in stdout.splitlines() if "grep-me" in line)
    if log_format == "text":
        assert line.endswith('127.0.0.1 "PUT /k" 204 0 ' + line.split()[-2] + " grep-me")
        return
    record = json.loads(line)
    assert record["logger"] == "kvservice.access"
    assert record["level"] == "INFO"
    assert record["time"].endswith("Z")
    fields = ("method", "target", "route", "status", "body_bytes_in", "body_bytes_out")
    assert {key: record[key] for key in fields} == {
        "method": "PUT",
        "target": "/k",
        "route": "/{key}",
        "status": 204,
        "body_bytes_in": 5,
        "body_bytes_out": 0,
    }
    assert 0 < record["duration_s"] < 1
    assert record["request_id"] == "grep-me"
    for other in stderr.splitlines():  # the service's own records are JSON objects too
        assert json.loads(other)["logger"].startswith("kvservice")


def test_a_durable_store_reports_its_journal_in_metrics_and_info_persistence(
    background_stops: list[threading.Thread], tmp_path: Path
) -> None:
    store = DurableStore(tmp_path / "data")
    try:
        with running(store, background_stops) as service:
            for number in range(3):
                requests.put(f"{service.url}/k{number}", data=b"v", timeout=5)
            samples = service.scrape()
            with RespConnection(service.resp.port) as connection:
                info = connection.ask("INFO", "persistence").decode()
    finally:
        store.close()
    assert value(samples, "kvservice_store_commits_total") >= 1
    assert value(samples, "kvservice_store_committed_writes_total") == 3
    assert value(samples, "kvservice_store_syncs_total") == value(
        samples, "kvservice_store_commits_total"
    )
    assert value(samples, "kvservice_store_sync_seconds_total") > 0
    assert value(samples, "kvservice_store_last_commit_ok") == 1
    assert value(samples, "kvservice_store_file_bytes", file="wal") > 0
    assert ("kvservice_store_file_bytes", (("file", "data"),)) in samples
    for field in (
        "aof_enabled:1",
        "aof_last_write_status:ok",
        "rdb_changes_since_last_save:0",
        "kvservice_fsync:always",
        "kvservice_committed_writes:3",
    ):
        assert f"\r\n{field}\r\n" in info


def test_a_memory_store_reports_no_journal(service: Service) -> None:
    samples = service.scrape()
    assert not [name for name, _ in samples if name.startswith("kvservice_store_commits")]
    with RespConnection(service.resp.port) as connection:
        assert b"aof_enabled:0" in connection.ask("INFO", "persistence")
