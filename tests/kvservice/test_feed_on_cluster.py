"""A kvservice on a Redis Cluster, which keeps no change feed (`FeedUnsupported`): it starts
and serves everything else as before; watching is refused with 501 saying why, and RESP's
keyspace notifications cannot be turned on, rather than accepted and never sent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.support.processes import free_port, kvservice_process
from tests.support.rawresp import RespConnection
from tests.support.redis_servers import RedisClusterProcesses


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_a_cluster_serves_without_a_feed_and_says_so(redis_cluster: RedisClusterProcesses) -> None:
    redis_cluster.flush()
    resp_port = free_port()
    with kvservice_process("--store", redis_cluster.url, "--resp-port", str(resp_port)) as service:
        request = urllib.request.Request(f"{service.url}/clusterkey", data=b"v", method="PUT")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 204

        status, headers, body = _get(f"{service.url}/clusterkey/history")
        assert status == 200, body
        assert [entry["value"] for entry in json.loads(body)] == ["v"]
        assert "KV-Position" not in headers, "no feed: no position to resume from"

        for path in ("/_watch?key=clusterkey", "/clusterkey/history?wait=1s"):
            status, headers, body = _get(service.url + path)
            assert status == 501, (path, body)
            problem = json.loads(body)
            assert problem["type"].endswith("feed-unsupported")
            assert "Redis Cluster" in problem["detail"]

        with RespConnection(resp_port) as resp:
            refused = resp.ask("CONFIG", "SET", "notify-keyspace-events", "KEA")
            assert refused.startswith(b"-ERR CONFIG SET failed"), refused
            assert b"Redis Cluster" in refused
            assert resp.ask("CONFIG", "SET", "notify-keyspace-events", "") == b"+OK\r\n"
            assert resp.ask("GET", "clusterkey") == b"$1\r\nv\r\n"
