"""The exit codes of `testclient run`, declared once: `run` returns them, `--help` lists them,
and the documentation's table is generated from `RUN_EXIT_CODES`.

Every verdict a run can end with (`overall_verdict`) has exactly one code; the usage error is
the one code that is not a verdict (argparse exits 2 before anything runs).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from testclient.checks import Verdict


@dataclass(frozen=True)
class ExitCode:
    """One exit code of `run`: the number, what it means, and the overall verdict it reports
    (None: it ends a run before any check, so no verdict)."""

    code: int
    meaning: str
    verdict: Verdict | None = None


USAGE_ERROR = ExitCode(2, "usage error: unknown check, bad flag or bad environment value")

RUN_EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "every step of every check passed", Verdict.PASSED),
    ExitCode(1, "a check failed: the kvservice answered, and wrongly", Verdict.FAILED),
    USAGE_ERROR,
    ExitCode(
        3,
        "the kvservice could not be reached or timed out (and no check failed)",
        Verdict.UNREACHABLE,
    ),
    ExitCode(
        4,
        "a check could not run over the transport of --kv-url (RESP has no versions or content "
        "types), and nothing failed, was refused or was unreachable",
        Verdict.SKIPPED,
    ),
    ExitCode(
        5,
        "the URL answered, but not like a kvservice (GET /_health, or INFO server over RESP); "
        "no check ran",
        Verdict.NOT_KVSERVICE,
    ),
    ExitCode(
        6,
        "the kvservice refused the test client's token, or wanted one it was not given "
        "(--kv-token), and no check failed",
        Verdict.UNAUTHORIZED,
    ),
)
"""Every exit code of `run`, in order."""

EXIT_CODE_BY_VERDICT: dict[Verdict, int] = {
    entry.verdict: entry.code for entry in RUN_EXIT_CODES if entry.verdict is not None
}
"""The exit code of `run` for each way it can end."""


def exit_codes_help() -> str:
    """The table for `--help`: each code and its meaning, wrapped to 79 columns."""
    rows = [
        textwrap.fill(
            entry.meaning, 79, initial_indent=f"  {entry.code}  ", subsequent_indent=" " * 5
        )
        for entry in RUN_EXIT_CODES
    ]
    return "\n".join(["exit codes of run:", *rows])
