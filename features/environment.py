"""behave hooks: where the services under test come from.

Default mode starts kvservice and testclient as subprocesses on free loopback ports, waits
until they are healthy, and stops them by PID at the end; a failing scenario prints the tail
of their logs. Target mode runs the same features against services that are already running:

    behave -D kv_url=http://127.0.0.1:3000 -D testclient_url=http://127.0.0.1:8000 features/
    KV_URL=... TESTCLIENT_URL=... behave features/

Scenarios tagged @short_window need a kvservice whose history window is a few seconds. Default
mode starts one for them. In target mode pass one with `-D short_window_kv_url=URL` and its
window with `-D short_window_s=SECONDS`; without them those scenarios are skipped, saying why.

Scenarios tagged @resp also talk to kvservice's Redis protocol port (with redis-py). Default
mode starts kvservice with `--resp-port`; in target mode pass `-D kv_resp_url=redis://HOST:PORT`
(or KV_RESP_URL), or they are skipped, saying why.

Scenarios tagged @tokens need a kvservice started with --auth-tokens. Default mode starts one
for them, with a write and a read token of its own; in target mode pass
`-D tokens_kv_url=URL -D write_token=TOKEN -D read_token=TOKEN`, or they are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from behave.model import Scenario
from behave.runner import Context

from tests.support.processes import free_port

SHORT_WINDOW_S = 2.0
STARTUP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40


class Service:
    """A service started by these hooks: its process, URL and log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/_health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM by PID; SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return "\n".join(f"  {self.name}| {line}" for line in lines)


def before_all(context: Context) -> None:
    userdata = context.config.userdata
    context.services = {}
    context.log_dir = Path(tempfile.mkdtemp(prefix="kvservice-features-"))
    kv_url = userdata.get("kv_url") or os.environ.get("KV_URL")
    testclient_url = userdata.get("testclient_url") or os.environ.get("TESTCLIENT_URL")
    context.target_mode = bool(kv_url or testclient_url)
    if context.target_mode:
        if not (kv_url and testclient_url):
            raise SystemExit("target mode needs both kv_url and testclient_url")
        context.kv_url, context.testclient_url = kv_url.rstrip("/"), testclient_url.rstrip("/")
        context.short_window_kv_url = userdata.get("short_window_kv_url")
        context.short_window_s = float(userdata.get("short_window_s", SHORT_WINDOW_S))
        context.kv_resp_url = userdata.get("kv_resp_url") or os.environ.get("KV_RESP_URL")
        context.tokens_kv_url = userdata.get("tokens_kv_url")
        context.tokens = {"write": userdata.get("write_token"), "read": userdata.get("read_token")}
        print(f"target mode: kvservice {context.kv_url}, testclient {context.testclient_url}")
        return
    resp_port = free_port()
    kv = _start(context, "kvservice", ["kvservice", "--resp-port", str(resp_port)])
    context.kv_resp_url = f"redis://127.0.0.1:{resp_port}"
    testclient = _start(context, "testclient", ["testclient", "serve", "--kv-url", kv.url])
    context.kv_url, context.testclient_url = kv.url, testclient.url
    context.short_window_kv_url = None  # started on first use
    context.short_window_s = SHORT_WINDOW_S
    context.tokens_kv_url = None  # started on first use
    context.tokens = {"write": secrets.token_hex(16), "read": secrets.token_hex(16)}


def before_scenario(context: Context, scenario: Scenario) -> None:
    # Every scenario gets its own keys, so runs against a shared service cannot collide.
    context.key_suffix = secrets.token_hex(4)
    context.remembered: dict[str, Any] = {}
    context.response = None
    context.use_short_window = False
    context.use_tokens = "tokens" in scenario.effective_tags
    context.token = None
    if context.use_tokens and not context.target_mode:
        token_file = context.log_dir / "tokens"
        token_file.write_text(
            f"write {context.tokens['write']} writer\nread {context.tokens['read']} reader\n"
        )
        context.tokens_kv_url = _started(
            context, "kvservice-tokens", ["kvservice", "--auth-tokens", str(token_file)]
        ).url
    if context.use_tokens and not (context.tokens_kv_url and all(context.tokens.values())):
        scenario.skip(
            "needs a kvservice with tokens: "
            "pass -D tokens_kv_url=URL -D write_token=TOKEN -D read_token=TOKEN"
        )
    if "short_window" in scenario.effective_tags:
        if not context.target_mode:
            context.short_window_kv_url = _started(
                context,
                "kvservice-short-window",
                ["kvservice", "--history-window", str(SHORT_WINDOW_S)],
            ).url
        if context.short_window_kv_url is None:
            scenario.skip(
                "needs a kvservice with a short history window: "
                "pass -D short_window_kv_url=URL -D short_window_s=SECONDS"
            )
    if "resp" in scenario.effective_tags and not context.kv_resp_url:
        scenario.skip("needs kvservice's RESP port: pass -D kv_resp_url=redis://HOST:PORT")
    if "resp" in scenario.effective_tags and importlib.util.find_spec("redis") is None:
        scenario.skip("needs redis-py, a test dependency: pip install redis")


def after_scenario(context: Context, scenario: Scenario) -> None:
    if scenario.status == "failed":
        for service in context.services.values():
            print(f"\n--- last lines of the {service.name} log ({service.log_path}) ---")
            print(service.log_tail())


def after_all(context: Context) -> None:
    for service in context.services.values():
        service.stop()


def _start(context: Context, name: str, args: list[str]) -> Service:
    service = Service(name, args, context.log_dir)
    context.services[name] = service
    service.wait_until_healthy()
    return service


def _started(context: Context, name: str, args: list[str]) -> Service:
    """The service `name`, started on first use and kept until after_all stops it. (What a
    before_scenario hook sets on the context is forgotten after the scenario; the services
    dict, made in before_all, is not, so it is where a started service is remembered.)"""
    return context.services.get(name) or _start(context, name, args)
