"""Real Redis servers for tests: Debian's redis-server on free loopback ports, a single one or a
three-primary cluster joined with `redis-cli --cluster create`, started and stopped by PID.

Without redis-server (apt-get install redis-server) the tests that need one are skipped,
saying so, except under CI (CI=true), where that is a failure: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support.processes import free_port

STARTUP_TIMEOUT_S = 15.0


def require_redis_server() -> str:
    """The path of redis-server; skips the test without it (fails it under CI)."""
    path = shutil.which("redis-server")
    if path is None or shutil.which("redis-cli") is None:
        message = "redis-server and redis-cli are missing: apt-get install redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI must run the Redis tests)")
        pytest.skip(message)
    return path


def _port_pair_free(port: int) -> bool:
    """Whether `port` and its cluster bus port (port + 10000) can both be bound."""
    for candidate in (port, port + 10_000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 <= 65_535 and _port_pair_free(port):
            return port
    raise AssertionError("no free port pair for a cluster node")


@dataclass
class RedisProcess:
    """One redis-server, its port and its working directory (for its AOF and logs)."""

    directory: Path
    port: int
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    clients: list[redis.Redis] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisProcess:
        """Start it (again, after a stop, on the same port and directory) and wait for PING."""
        executable = require_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--logfile",
                "redis.log",
                "--maxmemory-policy",
                "noeviction",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    message = f"redis-server on {self.port} did not start:\n{log}"
                    raise AssertionError(message) from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        """A redis-py client for test set-up and inspection (not the code under test)."""
        password = None
        if "--requirepass" in self.extra_args:
            password = self.extra_args[self.extra_args.index("--requirepass") + 1]
        client = redis.Redis(port=self.port, socket_timeout=5, password=password)
        self.clients.append(client)
        return client

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop it by PID: SIGTERM (saves, shuts down cleanly) or SIGKILL (a crash)."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def flush(self) -> None:
        """Empty it, lift any memory limit, and drop loaded scripts: a fresh server."""
        client = self.client()
        client.flushall()
        client.config_set("maxmemory", 0)
        client.script_flush()

    def flush_keys(self) -> None:
        """Empty it of keys only: its scripts, and what it allocated once for them and on its
        first writes (hundreds of kilobytes on a fresh server), stay."""
        self.client().flushall()

    def limit_memory(self, budget_bytes: int) -> None:
        """Refuse writes once it holds `budget_bytes` more than it holds now."""
        client = self.client()
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + budget_bytes)


@contextmanager
def running_redis(directory: Path, *extra_args: str) -> Iterator[RedisProcess]:
    """A redis-server on a free port for a `with`; stopped after it."""
    server = RedisProcess(directory, free_port(), extra_args).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisClusterProcesses:
    """Three redis-server primaries joined into one cluster, every slot covered."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def flush_keys(self) -> None:
        for node in self.nodes:
            node.flush_keys()

    def limit_memory(self, budget_bytes: int) -> None:
        for node in self.nodes:
            node.limit_memory(budget_bytes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def running_cluster(directory: Path) -> Iterator[RedisClusterProcesses]:
    """A three-primary Redis Cluster on free ports, for a `with`."""
    require_redis_server()
    nodes = [
        RedisProcess(
            directory / f"node{number}",
            cluster_port(),
            (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "no",
            ),
        )
        for number in range(3)
    ]
    cluster = RedisClusterProcesses(nodes)
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(node.address for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(_cluster_ok(node) for node in nodes):
            if time.monotonic() > deadline:
                raise AssertionError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.stop()


def _cluster_ok(node: RedisProcess) -> bool:
    info = node.client().execute_command("CLUSTER", "INFO").decode()  # type: ignore[no-untyped-call]
    return "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
