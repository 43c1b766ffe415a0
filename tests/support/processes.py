"""Processes for tests: a free loopback port, and a service started as `python -m MODULE`,
waited for until it answers, and stopped by its PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment_without(*prefixes: str) -> dict[str, str]:
    """This process's environment less the variables starting with `prefixes` (KV_, ...), so a
    developer's settings cannot change what a test starts."""
    return {
        name: value
        for name, value in os.environ.items()
        if not any(name.startswith(prefix) for prefix in prefixes)
    }


@dataclass
class ServiceProcess:
    """A service running as a subprocess, listening for HTTP on `port`."""

    process: subprocess.Popen[str]
    port: int
    error_log: IO[str] | None = None
    """Where stderr goes when it is not captured; closed by `stop()`."""
    ca_cert: Path | None = None
    """The CA its HTTPS certificate is verified with; None: it serves plain HTTP."""

    @property
    def url(self) -> str:
        """Its HTTP (or HTTPS) base URL."""
        return f"{'http' if self.ca_cert is None else 'https'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Its process ID."""
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident set size, from /proc."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[str, str]:
        """Send `signum`, wait for the exit (SIGKILL after STOP_TIMEOUT_S); returns what it
        wrote to stdout and stderr when those were captured ("" otherwise)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            stdout, stderr = self.process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
        if self.error_log is not None:
            self.error_log.seek(0)
            stderr = self.error_log.read()
            self.error_log.close()
        return stdout or "", stderr or ""

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def start_service(
    module: str,
    *args: str,
    port: int | None = None,
    capture: bool = False,
    environ: Mapping[str, str] | None = None,
    ca_cert: Path | None = None,
) -> ServiceProcess:
    """Start `python -m MODULE ARGS --port PORT` from the repository root and wait until its
    `/_health` answers (over HTTPS, verified with `ca_cert`, if that is given). With
    `capture`, stdout and stderr are kept for `stop()` to return; otherwise they are
    discarded (stderr is kept only to say why a start failed)."""
    port = free_port() if port is None else port
    # Uncaptured stderr goes to a file, not a pipe nobody reads, which could fill and block it.
    error_log = None if capture else tempfile.TemporaryFile("w+")  # noqa: SIM115 - stop() closes
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--port", str(port)],
        cwd=REPO_ROOT,
        env=dict(environment_without("KV_", "TESTCLIENT_") if environ is None else environ),
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE if error_log is None else error_log,
        text=True,
    )
    service = ServiceProcess(process, port, error_log, ca_cert)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            verify: str | bool = True if ca_cert is None else str(ca_cert)
            requests.get(f"{service.url}/_health", timeout=1, verify=verify)
            return service
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                _, stderr = service.stop(signal.SIGKILL)
                command = " ".join((module, *args))
                raise AssertionError(f"{command} did not start:\n{stderr}") from None
            time.sleep(0.05)


@contextmanager
def running_service(module: str, *args: str, **options: object) -> Iterator[ServiceProcess]:
    """`start_service` for a `with`: stopped (SIGTERM, then SIGKILL) after it."""
    service = start_service(module, *args, **options)  # type: ignore[arg-type]
    try:
        yield service
    finally:
        service.stop()


@contextmanager
def kvservice_process(*args: str, ca_cert: Path | None = None) -> Iterator[ServiceProcess]:
    """A kvservice on a free port with ARGS, logging warnings only; stopped after the `with`.
    With `ca_cert`, ARGS must make it serve HTTPS with a certificate that CA signed."""
    with running_service("kvservice", "--log-level", "WARNING", *args, ca_cert=ca_cert) as service:
        yield service


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples`."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]
