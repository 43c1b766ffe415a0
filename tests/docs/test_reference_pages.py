"""The generated pages of docs/reference/ say what the code declares: settings, metrics, exit
codes. When one fails, run `python scripts/docs_reference.py` and commit what it writes."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO_ROOT


def test_the_reference_pages_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/docs_reference.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
