"""--store picks the backend at start: memory by default, Redis by URL; a Redis that would
evict stops the process with exit 2, saying why; an unreachable one is served as 503 until it
answers; an unknown kind is a usage error; --data-dir makes the memory store durable and goes
with no other; whichever it is, transports get it behind the service, which judges input.
Real processes, real redis-server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from kvservice.__main__ import StartupError, build_store
from kvservice.config import load_config
from kvservice.store import Closable, InvalidKey, ValueTooLarge
from tests.support.processes import REPO_ROOT, environment_without, free_port, running_service
from tests.support.redis_servers import RedisProcess, running_redis


def run_kvservice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvservice", "--port", str(free_port()), *args],
        cwd=REPO_ROOT,
        env=environment_without("KV_"),
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_the_default_store_is_memory() -> None:
    assert load_config([], {}).store == "memory"
    assert load_config([], {"KV_STORE": "redis://cache:6379/2"}).store == "redis://cache:6379/2"


def test_an_unknown_kind_of_store_is_refused_at_start() -> None:
    completed = run_kvservice("--store", "mongodb://127.0.0.1:27017")
    assert completed.returncode == 2
    assert "unknown kind 'mongodb'; use memory or redis://, rediss://" in completed.stderr
    garbled = run_kvservice("--store", "redis")
    assert garbled.returncode == 2
    assert "--store: invalid url value 'redis': not memory and not a URL" in garbled.stderr


def test_a_redis_that_would_evict_is_refused_at_start(tmp_path: Path) -> None:
    with running_redis(tmp_path, "--maxmemory-policy", "volatile-lru") as evicting:
        completed = run_kvservice("--store", evicting.url)
    assert completed.returncode == 2
    assert "cannot start: Redis at" in completed.stderr
    assert "maxmemory-policy volatile-lru: it would evict keys" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_an_unreachable_redis_is_served_as_503_until_it_answers(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, free_port())
    with running_service(
        "kvservice", "--store", server.url, "--store-timeout", "0.5", capture=True
    ) as kv:
        down = requests.put(f"{kv.url}/k", data=b"v", timeout=5)
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "1"
        assert down.json()["type"] == "urn:kvservice:problem:store-unavailable"
        assert requests.get(f"{kv.url}/_ready", timeout=5).status_code == 503
        health = requests.get(f"{kv.url}/_health", timeout=5).json()
        assert health == {"status": "ok", "service": "kvservice"}, "no store figures asked"
        server.start()
        try:
            assert requests.put(f"{kv.url}/k", data=b"v", timeout=5).status_code == 204
            assert requests.get(f"{kv.url}/_ready", timeout=5).json() == {"status": "ready"}
        finally:
            server.stop()


def test_the_service_runs_on_redis(redis_server: RedisProcess) -> None:
    redis_server.flush()
    with running_service("kvservice", "--store", redis_server.url) as kv:
        assert requests.put(f"{kv.url}/k", data=b"on redis", timeout=5).status_code == 204
    with running_service("kvservice", "--store", redis_server.url) as restarted:
        assert requests.get(f"{restarted.url}/k", timeout=5).content == b"on redis"


def test_without_data_dir_the_memory_store_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = build_store(load_config([], environ={}))
    store.put("k", b"v")
    assert not store.may_block
    assert list(tmp_path.iterdir()) == []


def test_data_dir_beside_redis_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    config = load_config(["--data-dir", str(tmp_path / "d"), "--store", "redis://h:1"], {})
    with pytest.raises(StartupError, match="give one or the other"):
        build_store(config)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("arguments", [[], ["--data-dir", "data"]], ids=["memory", "durable"])
def test_the_store_transports_get_judges_input_before_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = build_store(load_config([*arguments, "--max-value-bytes", "4"], environ={}))
    try:
        with pytest.raises(InvalidKey, match="prefix has the character '-' at position 1"):
            store.keys(prefix="a-b")
        with pytest.raises(ValueTooLarge, match="5 bytes; the limit is 4"):
            store.put("k", b"12345")
        assert store.keys().keys == [], "nothing reached the backend"
        assert (store.stats().persistence is not None) is bool(arguments)
    finally:
        if isinstance(store, Closable):  # the durable backend's journal
            store.close()
