"""A kvservice process for reliability tests: started with `python -m kvservice`, stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests


@dataclass
class KVProcess:
    """A running kvservice subprocess."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        """Resident set size, from /proc."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def kvservice_process(*args: str) -> Iterator[KVProcess]:
    """Start `python -m kvservice ARGS` on a free port; SIGTERM it (then SIGKILL) afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvservice", "--port", str(port), "--log-level", "WARNING", *args],
        stdout=subprocess.DEVNULL,
    )
    service = KVProcess(process, port)
    deadline = time.monotonic() + 15
    while True:
        try:
            requests.get(f"{service.url}/_health", timeout=1)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("kvservice did not start") from None
            time.sleep(0.05)
    try:
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples`."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]
