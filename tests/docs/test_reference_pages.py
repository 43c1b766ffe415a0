"""What mkdocs --strict cannot check: the generated pages of docs/reference/ say what the code
declares (settings, metrics, exit codes; when that fails, run `python scripts/docs_reference.py`
and commit what it writes), and the README's and CONTRIBUTING's links lead somewhere."""

from __future__ import annotations

import re
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


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_links_of_the_pages_outside_the_site_name_files_that_exist() -> None:
    """README.md and CONTRIBUTING.md are outside the site, so mkdocs --strict does not check
    their links: each relative one must name a file of the repository."""
    for page in ("README.md", "CONTRIBUTING.md"):
        for target in LINK.findall((REPO_ROOT / page).read_text()):
            if "://" not in target:
                assert (REPO_ROOT / target).exists(), f"{page} links to {target}, which is missing"
