"""The process raises its open-file limit to fit its connection caps (`lifecycle.fit_open_files`):
a system that starts it at a low soft limit would otherwise fail accepts long before the cap's
503, as a thousand watchers and their neighbours would find."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kvservice.lifecycle import FILES_BESIDE_CONNECTIONS
from tests.support.processes import free_port


def lowered_soft_limit(files: int) -> Callable[[], None]:
    """What a child process runs before it starts: its soft limit lowered to `files` (this
    process's stays: lowering it here would fail a busy test process's own next open)."""

    def lower() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, hard))

    return lower


def open_files_limit(pid: int) -> tuple[int, int]:
    line = next(
        line
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if line.startswith("Max open files")
    )
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_a_service_started_at_a_low_limit_raises_it_to_fit_its_caps() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3000 + 100 + FILES_BESIDE_CONNECTIONS
    assert hard >= wanted, "this machine's hard limit is below what the test asks"
    arguments = ["--max-connections", "3000", "--resp-port", str(free_port())]
    arguments += ["--resp-max-connections", "100", "--port", str(free_port())]
    process = subprocess.Popen(
        [sys.executable, "-m", "kvservice", "--log-level", "WARNING", *arguments],
        preexec_fn=lowered_soft_limit(256),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while open_files_limit(process.pid)[0] == 256 and time.monotonic() < deadline:
            assert process.poll() is None, "kvservice exited"
            time.sleep(0.05)
        assert open_files_limit(process.pid)[0] == wanted
    finally:
        process.terminate()
        process.wait(10)


def test_past_the_hard_limit_it_raises_to_the_hard_limit_and_warns() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import logging, resource\n"
        "from kvservice.lifecycle import fit_open_files\n"
        "logging.basicConfig()\n"
        f"print(fit_open_files({hard} + 1))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lowered_soft_limit(256),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert done.stdout.split() == [str(hard), str(hard)]
    assert "the open-file limit is" in done.stderr and "ulimit -Hn" in done.stderr
