"""Every example of the README and of docs/ runs, and prints what the page shows.

byexample runs each page's shell sessions (`$ ` prompts) and Python sessions (`>>> `) in one
bash and one Python per page, in the page's order, and compares their output with the page's.
This module only prepares the ground, on a copy of the page in a scratch directory:

- the services a page's readers start in a shell of their own (the blocks marked
  `<!-- not executed: ... -->`) are started here, on free ports, and the page's well-known
  ports (3000, 8000, 6379, ...) are rewritten to them;
- what varies from run to run is turned into byexample's `<...>`: ETags, 13-digit
  millisecond timestamps, 16-hex-digit request IDs;
- an HTTP response shown abridged (`curl -i`) may have headers the page leaves out, and an
  output line's trailing `  # comment` is the page's annotation, not output;
- `.venv/bin/activate` puts the interpreter running the tests first on PATH, so the pages'
  `. .venv/bin/activate` works as typed.

A page's block without prompts is not run; each must say why in a `<!-- not executed: ... -->`
comment just above it, so what is not run is a short, visible list.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, environment_without, free_port, running_service

BYEXAMPLE_TIMEOUT_S = 300
RUN_ID_VARIABLE = "KVSERVICE_DOCS_EXAMPLES_RUN"
"""Set for byexample and inherited by all it starts, so that what a page leaves running is
found and stopped."""


@dataclass(frozen=True)
class Page:
    """A page whose examples run, and the services its readers start beside it."""

    path: str
    resp: bool = False
    """kvservice also serves RESP (the page's 6379)."""
    testclient: bool = False
    """The test client serves on the page's 8000, checking the kvservice."""
    starts_redis: bool = False
    """The page starts a Redis of its own on its 6379 (stopped here if the page did not)."""


PAGES = [
    Page("README.md"),
    Page("docs/getting-started.md", resp=True, testclient=True),
    Page("docs/http-api.md"),
    Page("docs/redis-protocol.md", resp=True),
    Page("docs/operations.md", starts_redis=True),
    Page("docs/durability.md"),
    Page("docs/testclient.md", resp=True, testclient=True),
]

WELL_KNOWN_PORTS = {
    "kv": 3000,
    "testclient": 8000,
    "resp": 6379,  # kvservice's RESP port, or operations.md's Redis
    "tls_resp": 6380,
    "tls": 3443,
    "on_redis": 3001,
}
FENCE = re.compile(r"^```")
PROMPTS = ("$ ", ">>> ", "... ")
EMPTY_LINE = "~"
"""An empty line of output, for byexample's `+rm=~` (no page shows a `~` in its output)."""
NOT_EXECUTED = re.compile(r"<!-- not executed: \S.*-->")
HTTP_STATUS_LINE = re.compile(r"^HTTP/1\.1 \d{3} ")
HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
ANNOTATION = re.compile(r"\s{2,}# .*$")
VARYING = [
    re.compile(r'(?<=")[0-9a-f]{8}-[0-9a-f]+(?=")'),  # ETags: a prefix and the revision, hex
    re.compile(r"\b1[0-9]{12}\b"),  # Unix epoch milliseconds
    re.compile(r"\b[0-9a-f]{16}(?:[0-9a-f]{16})?\b"),  # request IDs (the test client's: 32)
    re.compile(r"(?<=^\[1\] )[0-9]+$"),  # the PID of a job started with &
]


REPORTS = ("PERFORMANCE.md", "SCALING.md", "RELIABILITY.md")
"""Written by the benchmarks and the reliability runs: figures, not sessions to run."""


def manual_pages() -> list[str]:
    """The README and every hand-written page of docs/ (not the generated reference, not the
    reports)."""
    pages = sorted(path.name for path in (REPO_ROOT / "docs").glob("*.md"))
    return ["README.md", *(f"docs/{name}" for name in pages if name not in REPORTS)]


def test_every_page_with_examples_is_run() -> None:
    run = {page.path for page in PAGES}
    for path in manual_pages():
        lines = (REPO_ROOT / path).read_text().splitlines()
        has_examples = any(line.startswith(PROMPTS) for line in lines)
        assert run >= {path} or not has_examples, f"{path} has examples: add it to PAGES"


def test_every_block_without_prompts_says_why_it_is_not_run() -> None:
    for path in manual_pages():
        lines = (REPO_ROOT / path).read_text().splitlines()
        inside = False
        for number, line in enumerate(lines):
            if not FENCE.match(line):
                continue
            inside = not inside
            if not inside:
                continue
            block = _block_from(lines, number + 1)
            runs = any(text.startswith(PROMPTS) for text in block)
            said_why = number > 0 and NOT_EXECUTED.fullmatch(lines[number - 1].strip())
            assert runs or said_why or _is_output_only(line), (
                f"{path}:{number + 1}: a block without `$ ` or `>>> ` prompts is not run; "
                "give it prompts, or say why above it in <!-- not executed: REASON -->"
            )


@pytest.mark.parametrize("page", PAGES, ids=[page.path for page in PAGES])
def test_the_examples_of_the_page_print_what_it_shows(page: Page, tmp_path: Path) -> None:
    ports = {name: free_port() for name in WELL_KNOWN_PORTS}
    work = tmp_path / "clone"
    work.mkdir()
    _venv_activate_stub(work)
    copy = work / Path(page.path).name
    copy.write_text(runnable((REPO_ROOT / page.path).read_text(), ports))
    with _services(page, ports):
        run_id = uuid.uuid4().hex
        byexample = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "byexample"),
                "--language",
                "shell,python",
                "--timeout",
                "20",
                "--options",
                f"+rm={EMPTY_LINE}",
                str(copy),
            ],
            cwd=work,
            env={**_shell_environment(), RUN_ID_VARIABLE: run_id},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = byexample.communicate(timeout=BYEXAMPLE_TIMEOUT_S)
        finally:
            _stop_what_the_page_left(run_id, page, ports)
            byexample.wait()
    assert byexample.returncode == 0, f"{page.path}:\n{output}"


def _stop_what_the_page_left(run_id: str, page: Page, ports: dict[str, int]) -> None:
    """SIGKILL every process that inherited `RUN_ID_VARIABLE=run_id`: byexample's shells, and
    what they started in the background and left running when an example failed (in sessions
    of their own: pexpect gives each shell one, and `&` each job a process group)."""
    marker = f"{RUN_ID_VARIABLE}={run_id}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):
            if marker in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)
    if page.starts_redis:  # daemonized, and redis-server's environment is its own
        subprocess.run(
            ["redis-cli", "-p", str(ports["resp"]), "SHUTDOWN", "NOSAVE"],
            capture_output=True,
            timeout=10,
        )


def runnable(text: str, ports: dict[str, int]) -> str:
    """The page as byexample runs it: its ports moved to `ports`, what varies as `<...>`,
    abridged HTTP heads open to the headers left out, annotations dropped, and an empty line
    inside an output (an HTTP head's end) kept as `EMPTY_LINE`, since byexample takes an empty
    line for the end of the output."""
    for name, port in WELL_KNOWN_PORTS.items():
        text = re.sub(rf"\b{port}\b", str(ports[name]), text)
    source = text.splitlines()
    lines = []
    in_head = False
    for number, line in enumerate(source):
        if line.startswith(PROMPTS) or FENCE.match(line):
            in_head = False
            lines.append(line)
            continue
        following = source[number + 1] if number + 1 < len(source) else ""
        if not line and _is_output(following) and _inside_output(lines):
            lines.append(EMPTY_LINE)
            continue
        line = ANNOTATION.sub("", line)
        for pattern in VARYING:
            line = pattern.sub("<...>", line)
        if HTTP_STATUS_LINE.match(line) or (in_head and HEADER_LINE.match(line)):
            in_head = True
            line += "" if line.endswith("<...>") else "<...>"
        else:
            in_head = False
        lines.append(line)
    return "\n".join(lines) + "\n"


def _is_output(line: str) -> bool:
    """Whether a line of a block, if it follows a prompt's output, continues it."""
    return bool(line) and not line.startswith(PROMPTS) and not FENCE.match(line)


def _inside_output(lines: list[str]) -> bool:
    """Whether the page's text so far ends inside a fenced block, after a prompt."""
    for line in reversed(lines):
        if FENCE.match(line):
            return False
        if line.startswith(PROMPTS):
            return True
    return False


def _block_from(lines: list[str], start: int) -> list[str]:
    end = next((i for i in range(start, len(lines)) if FENCE.match(lines[i])), len(lines))
    return lines[start:end]


def _is_output_only(fence: str) -> bool:
    """A block that shows text rather than commands: a file's content, a log line, JSON."""
    return fence.strip("`~ ") in ("text", "json", "yaml", "ini")


def _venv_activate_stub(work: Path) -> None:
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{Path(sys.executable).parent}:$PATH"\n')


def _shell_environment() -> dict[str, str]:
    env = environment_without("KV_", "TESTCLIENT_")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TERM"] = "dumb"
    return env


def _services(page: Page, ports: dict[str, int]) -> ExitStack:
    stack = ExitStack()
    resp = ("--resp-port", str(ports["resp"])) if page.resp else ()
    stack.enter_context(running_service("kvservice", *resp, port=ports["kv"]))
    if page.testclient:
        kv_url = f"http://localhost:{ports['kv']}"
        stack.enter_context(
            running_service("testclient", "serve", "--kv-url", kv_url, port=ports["testclient"])
        )
    return stack
