"""The process raises its open-file limit to fit its connection caps (`lifecycle.fit_open_files`):
a system that starts it at a low soft limit would otherwise fail accepts long before the cap's
503, as a thousand watchers and their neighbours would find."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvservice.lifecycle import FILES_BESIDE_CONNECTIONS
from tests.support.processes import kvservice_process


@contextmanager
def soft_limit(files: int) -> Iterator[None]:
    """This process's soft limit lowered for a `with` (its children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


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
    with (
        soft_limit(256),
        kvservice_process(
            "--max-connections", "3000", "--resp-port", "0", "--resp-max-connections", "100"
        ) as kv,
    ):
        assert open_files_limit(kv.pid)[0] == wanted


def test_past_the_hard_limit_it_raises_to_the_hard_limit_and_warns() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import logging, resource\n"
        "from kvservice.lifecycle import fit_open_files\n"
        "logging.basicConfig()\n"
        f"print(fit_open_files({hard} + 1))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    with soft_limit(256):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
        )
    assert done.stdout.split() == [str(hard), str(hard)]
    assert "the open-file limit is" in done.stderr and "ulimit -Hn" in done.stderr
