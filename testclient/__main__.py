"""The composition root and CLI: config -> KV client -> checks, as a report or an HTTP service.

    python -m testclient run [CHECK ...] [--kv-url URL]    run checks once, print a report
    python -m testclient serve [--host H] [--port P] [--kv-url URL]

Exit codes of `run`:
    0  every step of every check passed
    1  a check failed: the kvservice answered, and wrongly
    2  usage error: unknown check, bad flag or environment value
    3  the kvservice could not be reached or timed out (and no check failed)
    4  a check could not run over the URL's transport (RESP has no versions; nothing failed)
    5  the kvservice refused the test client's token, or wanted one (--kv-token; nothing failed)
`serve` exits 0 after SIGTERM or SIGINT, and 1 if it cannot listen.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

from kvservice.__main__ import server_settings
from kvservice.config import Config as KVConfig
from kvservice.http.server import Server
from kvservice.lifecycle import configure_logging, run_until_signalled
from testclient.checks import CHECKS, CheckResult, Step, Verdict, overall_verdict, run_checks
from testclient.clients import ClientFactory, KVClient, make_client
from testclient.config import RUN, SERVE, Config, load_config
from testclient.http_api import create_app

EXIT_USAGE = 2
EXIT_CODES = {
    Verdict.PASSED: 0,
    Verdict.FAILED: 1,
    Verdict.UNREACHABLE: 3,
    Verdict.SKIPPED: 4,
    Verdict.UNAUTHORIZED: 5,
}
"""The exit code of `run` for each way it can end."""

SERVE_THREADS = 16
"""Requests served at once; each runs checks, which hold a thread for their duration."""


def run_command(config: Config, client: KVClient) -> int:
    """Run the configured checks (all by default), print the report, return the exit code."""
    logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
    results = run_checks(config.checks or tuple(CHECKS), client)
    print(format_report(results, config.kv_url))
    return EXIT_CODES[overall_verdict(results)]


def serve_command(config: Config, client: KVClient) -> int:
    """Serve the checks over HTTP until SIGTERM or SIGINT."""
    configure_logging(config.log_level)
    # kvservice's own transport limits, on the test client's address and thread count.
    listening = KVConfig(host=config.host, port=config.port, threads=SERVE_THREADS)
    settings = dataclasses.replace(server_settings(listening), server_name="testclient")
    return run_until_signalled([Server(create_app(client, config.kv_url), settings)])


COMMANDS: dict[str, Callable[[Config, KVClient], int]] = {RUN: run_command, SERVE: serve_command}


def format_report(results: Sequence[CheckResult], kv_url: str) -> str:
    """A readable report: every step of every check, expected and actual for failures."""
    lines = [f"kvservice at {kv_url}", ""]
    for result in results:
        skipped = sum(step.skipped for step in result.steps)
        note = f", {skipped} {'step' if skipped == 1 else 'steps'} skipped" if skipped else ""
        lines.append(
            f"{result.verdict.value.upper():<12}{result.test}  ({result.duration_ms} ms{note})"
        )
        lines.extend(_step_lines(step) for step in result.steps)
        lines.append("")
    counts = {verdict: 0 for verdict in Verdict}
    for result in results:
        counts[result.verdict] += 1
    summary = ", ".join(f"{count} {verdict.value}" for verdict, count in counts.items())
    checks = "check" if len(results) == 1 else "checks"
    overall = f"overall {overall_verdict(results).value}"
    skipped_steps = sum(step.skipped for result in results for step in result.steps)
    if skipped_steps:
        overall += f" ({skipped_steps} {'step' if skipped_steps == 1 else 'steps'} skipped)"
    lines.append(f"{len(results)} {checks}: {summary}; {overall}")
    return "\n".join(lines)


def _step_lines(step: Step) -> str:
    if step.passed:
        return f"  ok    {step.step}"
    if step.skipped:
        return f"  skip  {step.step}\n          {step.actual}"
    return (
        f"  FAIL  {step.step}\n"
        f"          expected: {step.expected}\n"
        f"          actual:   {step.actual}"
    )


def main(argv: Sequence[str] | None = None, make_client: ClientFactory = make_client) -> int:
    """Parse the command line, run the command, return the exit code."""
    try:
        config = load_config(CHECKS, argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    client = make_client(config.kv_url, config.timeout, config.credentials)
    try:
        return COMMANDS[config.command](config, client)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
