"""The test client's checks against kvservice on the Redis backend: both transports over one
RedisStore on a real redis-server, as `kvservice --store redis://... --resp-port` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kvservice.http.app import create_app
from kvservice.http.server import Server
from kvservice.store.redis import RedisStore
from kvservice.store.service import StoreService
from testclient.checks import CHECKS, Verdict
from testclient.clients import HTTPKVClient, RespKVClient
from tests.support.rawresp import running_resp
from tests.support.redis_servers import RedisProcess
from tests.support.servers import change_feed, http_settings
from tests.testclient.test_checks import failure_report
from tests.testclient.test_over_resp import CAPABLE_EVERYWHERE


@dataclass(frozen=True)
class OnRedis:
    http_url: str
    resp_url: str


@pytest.fixture(scope="module")
def on_redis(redis_server: RedisProcess) -> Iterator[OnRedis]:
    redis_server.flush()
    store = StoreService(RedisStore.from_url(redis_server.url, connections=32, timeout_s=5.0))
    with change_feed(store) as feed:
        http = Server(create_app(store, feed=feed), http_settings(threads=16, socket_timeout_s=2.0))
        http.start()
        with running_resp(store) as resp:
            yield OnRedis(f"http://127.0.0.1:{http.port}", resp.url)
        http.stop()
    store.close()


@pytest.mark.parametrize("name", list(CHECKS))
def test_every_check_passes_over_http_on_redis(name: str, on_redis: OnRedis) -> None:
    with HTTPKVClient(on_redis.http_url) as client:
        result = CHECKS[name].function(client)
    assert result.verdict is Verdict.PASSED, failure_report(result)


@pytest.mark.parametrize("name", CAPABLE_EVERYWHERE)
def test_the_checks_resp_can_run_pass_over_resp_on_redis(name: str, on_redis: OnRedis) -> None:
    with RespKVClient(on_redis.resp_url) as client:
        result = CHECKS[name].function(client)
    assert result.verdict is Verdict.PASSED, failure_report(result)
