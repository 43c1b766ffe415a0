"""The servers under test: how each is started, and a handle that starts and stops one.

Every server runs as its own process on a free 127.0.0.1 port, so that none shares a GIL
with the benchmark or another server, and is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from benchmarks.workloads import VALUE

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

Command = Callable[[int, Path], list[str]]
"""Builds a server's command line from its port and a scratch directory it may write to."""


class ServerFailed(RuntimeError):
    """A server did not start listening, or exited on its own."""


@dataclass(frozen=True)
class ServerSpec:
    """One server the benchmark compares, and the workloads it can serve."""

    name: str
    description: str
    command: Command
    workloads: frozenset[str] | None = None
    """The workloads it serves; None: all of them (it is a kvservice store)."""
    stores_values: bool = False
    """Whether it stores what is PUT though it serves only some workloads (a peer store)."""

    @property
    def holds_data(self) -> bool:
        """Whether it is a real store, which needs its key pool filled before the runs."""
        return self.workloads is None or self.stores_values

    def serves(self, workload: str) -> bool:
        """Whether `workload` makes sense against this server."""
        return self.workloads is None or workload in self.workloads


CONSTANT_WORKLOADS = frozenset({"get", "put"})
"""What a server that answers a constant can stand in for."""


def _python_module(*module_args: str) -> Command:
    return lambda port, _scratch: [sys.executable, "-m", *module_args, "--port", str(port)]


def _nginx_command(port: int, scratch: Path) -> list[str]:
    config = scratch / f"nginx-{port}.conf"
    config.write_text(NGINX_CONFIG.format(port=port, scratch=scratch, value=VALUE.decode()))
    return ["nginx", "-p", str(scratch), "-e", str(scratch / "nginx-error.log"), "-c", str(config)]


# One process, no access log, keep-alive without a request limit: the loopback ceiling.
NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {scratch}/nginx-{port}.pid;
error_log {scratch}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {scratch}/nginx-body;
    proxy_temp_path {scratch}/nginx-proxy;
    fastcgi_temp_path {scratch}/nginx-fastcgi;
    uwsgi_temp_path {scratch}/nginx-uwsgi;
    scgi_temp_path {scratch}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type application/octet-stream;
            return 200 "{value}";
        }}
    }}
}}
"""

NGINX = ServerSpec(
    "nginx",
    "nginx answering a constant 100 B body, one worker, no access log: the loopback ceiling",
    _nginx_command,
    CONSTANT_WORKLOADS,
)
BARE_BOTTLE = ServerSpec(
    "bare",
    "a bare Bottle route (constant GET, body-reading PUT) on kvservice's cheroot runner "
    "and settings: the framework ceiling",
    _python_module("benchmarks.serve", "bare"),
    CONSTANT_WORKLOADS,
)
STOCK = ServerSpec(
    "stock",
    "the same bare route on stock cheroot (cheroot.wsgi.Server's 10 threads, backlog 128, no "
    "access log): what the framework gives untuned, the reference kvservice must reach",
    _python_module("benchmarks.serve", "stock"),
    CONSTANT_WORKLOADS,
)
KVSERVICE = ServerSpec(
    "kvservice", "`python -m kvservice` with its defaults", _python_module("kvservice")
)
WAITRESS = ServerSpec(
    "waitress",
    "kvservice's app (store, routes, access log) on waitress with the same thread count: "
    "a peer server",
    _python_module("benchmarks.serve", "waitress"),
)
STARLETTE = ServerSpec(
    "starlette",
    "a minimal key-value GET and PUT on Starlette + uvicorn (httptools, uvloop), one process, "
    "no access log: the peer a Python user would pick instead",
    _python_module("benchmarks.serve", "starlette"),
    CONSTANT_WORKLOADS,
    stores_values=True,
)


def _durable_kvservice(fsync: str) -> Command:
    """kvservice with --data-dir in the run's scratch directory (a fresh one per start)."""
    return lambda port, scratch: [
        *_python_module("kvservice")(port, scratch),
        "--data-dir",
        str(scratch / f"data-{fsync}-{port}"),
        "--fsync",
        fsync,
    ]


DURABLE_ALWAYS = ServerSpec(
    "durable-always",
    "kvservice keeping its data on local disk: `--data-dir DIR --fsync always` (a write is "
    "acknowledged once synced; group commit)",
    _durable_kvservice("always"),
)
DURABLE_EVERYSEC = ServerSpec(
    "durable-everysec",
    "kvservice keeping its data on local disk: `--data-dir DIR --fsync everysec` (synced about "
    "once a second)",
    _durable_kvservice("everysec"),
)


def builtin_servers() -> list[ServerSpec]:
    """The comparison the issues ask for; nginx only where it is installed."""
    optional = [NGINX] if shutil.which("nginx") else []
    return [
        *optional,
        STOCK,
        BARE_BOTTLE,
        KVSERVICE,
        WAITRESS,
        STARLETTE,
        DURABLE_ALWAYS,
        DURABLE_EVERYSEC,
    ]


def variant(label: str, command_template: str) -> ServerSpec:
    """A kvservice started by a custom command, `{port}` standing for its port.

    For tuning: another source tree (`env PYTHONPATH=/tmp/tuned python -m kvservice --port
    {port}`), other flags (`... --threads 8`) or pinning (`taskset -c 0 python -m ...`).
    The command must exec the server, not fork it, so that its PID is the server's.
    """
    return ServerSpec(
        label,
        f"variant: `{command_template}`",
        lambda port, _scratch: shlex.split(command_template.format(port=port)),
    )


def free_port() -> int:
    """A TCP port on HOST that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def server_environment(source: Path | None) -> dict[str, str]:
    """The servers' environment: no KV_* settings (defaults only), and `benchmarks`
    (plus `source`, a kvservice tree to measure instead of the installed one) importable."""
    paths = [str(path) for path in (source, REPO_ROOT) if path is not None]
    environment = {name: value for name, value in os.environ.items() if not name.startswith("KV_")}
    inherited = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = os.pathsep.join([*paths, *([inherited] if inherited else [])])
    return environment


@dataclass
class ServerProcess:
    """A running server under test; a context manager that starts and stops it."""

    spec: ServerSpec
    scratch: Path
    environment: Mapping[str, str]
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process ID."""
        if self._process is None:
            raise ServerFailed(f"{self.spec.name} is not running")
        return self._process.pid

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start it on a free port and wait until it accepts connections."""
        self.port = free_port()
        command = [*self.spec.command(self.port, self.scratch), *self.extra_args]
        with self._stderr_path.open("ab") as stderr:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the access log: written, never read
                stderr=stderr,
                env=dict(self.environment),
                cwd=self.scratch,  # not the repository: `python -m` would import from there
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._accepts_connections():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(
                    f"{self.spec.name} did not start listening ({shlex.join(command)}):\n"
                    f"{self._stderr_tail()}"
                )
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise ServerFailed if the server has exited."""
        if self._process is None or self._process.poll() is not None:
            raise ServerFailed(f"{self.spec.name} exited:\n{self._stderr_tail()}")

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far, all threads, from /proc."""
        # Fields 14 and 15 of /proc/PID/stat, counted after the parenthesized command name.
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S

    def rss_bytes(self) -> int:
        """The server's resident set size, from /proc (Linux)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerFailed(f"no VmRSS in /proc/{self.pid}/status")

    @property
    def _stderr_path(self) -> Path:
        return self.scratch / f"{self.spec.name}.stderr"

    def _stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no stderr)"

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False
