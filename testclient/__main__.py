"""The composition root and CLI: config -> KV client -> checks, as a report or an HTTP service.

    python -m testclient run [CHECK ...] [--kv-url URL] [--quiet] [--format text|json]
    python -m testclient serve [--host H] [--port P] [--kv-url URL] [--interval SECONDS]

`run --format json` prints the document the HTTP service answers with: one check's result
when one check was named, else the test_all document. `serve --interval` also runs every
check on a schedule (the prober); the page, /_results and /_metrics show its results.

The exit codes of `run` are declared in `testclient.exit_codes` (`--help` lists them). `serve`
exits 0 after SIGTERM or SIGINT, and 1 if it cannot listen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence

from kvservice.__main__ import server_settings
from kvservice.config import Config as KVConfig
from kvservice.http.server import Server
from kvservice.lifecycle import JsonFormatter, configure_logging, run_until_signalled
from testclient.checks import CHECKS, CheckResult, Step, Verdict, overall_verdict, run_checks
from testclient.clients import ClientFactory, KVClient, make_client
from testclient.config import JSON, RUN, SERVE, Config, load_config
from testclient.documents import result_document, run_document
from testclient.exit_codes import EXIT_CODE_BY_VERDICT, USAGE_ERROR
from testclient.http_api import create_app
from testclient.prober import Prober
from testclient.results import ResultBook

SERVE_THREADS = 16
"""Requests served at once; each runs checks, which hold a thread for their duration."""


def run_command(config: Config, client: KVClient) -> int:
    """Run the configured checks (all by default), print the report or the JSON document,
    return the exit code."""
    # Logs go to stderr, so stdout holds the report or exactly one JSON document.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if config.log_format == "json"
        else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=config.log_level, handlers=[handler])
    started = time.perf_counter()
    results = run_checks(config.checks or tuple(CHECKS), client)
    if config.output_format == JSON:
        print(json.dumps(json_document(results, config, started), ensure_ascii=False))
    else:
        print(format_report(results, config.kv_url, quiet=config.quiet))
    return EXIT_CODE_BY_VERDICT[overall_verdict(results)]


def json_document(results: Sequence[CheckResult], config: Config, started: float) -> object:
    """What the HTTP service would answer: /<check> for one named check, else /test_all's."""
    if len(config.checks) == 1:
        return result_document(results[0], config.kv_url)
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return run_document(results, config.kv_url, duration_ms)


def serve_command(config: Config, client: KVClient) -> int:
    """Serve the checks over HTTP until SIGTERM or SIGINT; with an interval, probe too."""
    configure_logging(config.log_level, config.log_format)
    # kvservice's own transport limits, on the test client's address and thread count.
    listening = KVConfig(host=config.host, port=config.port, threads=SERVE_THREADS)
    settings = dataclasses.replace(server_settings(listening), server_name="testclient")
    book = ResultBook(config.kv_url, CHECKS)
    server = Server(create_app(client, config.kv_url, CHECKS, book), settings)
    if config.interval_s is None:
        return run_until_signalled([server], service="testclient")
    prober = Prober(client, book, config.interval_s)
    try:
        # Once listening: a serve that cannot listen must not write a round of keys anyway.
        return run_until_signalled([server], on_started=prober.start, service="testclient")
    finally:
        prober.stop()  # after the signal: the round under way ends, no new one starts


COMMANDS: dict[str, Callable[[Config, KVClient], int]] = {RUN: run_command, SERVE: serve_command}


SUMMARY_VERDICTS = (Verdict.PASSED, Verdict.FAILED, Verdict.UNREACHABLE, Verdict.SKIPPED)
"""Counted in every summary line; other verdicts are counted only when they occur."""


def format_report(results: Sequence[CheckResult], kv_url: str, quiet: bool = False) -> str:
    """A readable report: the URL, every step of every check, expected and actual for
    failures; when `quiet`, only the checks that did not pass, their failed and skipped steps,
    and the summary (all passed: the summary line alone). When the URL is not a kvservice, no
    check ran: the report says what answered, once."""
    lines = [] if quiet else [f"kvservice at {kv_url}", ""]
    shown = [result for result in results if not (quiet and result.passed)]
    if results and all(result.verdict is Verdict.NOT_KVSERVICE for result in results):
        lines.extend([results[0].steps[0].actual, ""])
        shown = []  # the per-check lines would repeat the same sentence
    for result in shown:
        skipped = sum(step.skipped for step in result.steps)
        note = f", {skipped} {'step' if skipped == 1 else 'steps'} skipped" if skipped else ""
        lines.append(
            f"{result.verdict.value.upper():<12}{result.test}  ({result.duration_ms} ms{note})"
        )
        lines.extend(_step_lines(step) for step in result.steps if not (quiet and step.passed))
        lines.append("")
    counts = {verdict: 0 for verdict in Verdict}
    for result in results:
        counts[result.verdict] += 1
    summary = ", ".join(
        f"{count} {verdict.value}"
        for verdict, count in counts.items()
        if count or verdict in SUMMARY_VERDICTS
    )
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
        return exit_request.code if isinstance(exit_request.code, int) else USAGE_ERROR.code
    client = make_client(config.kv_url, config.timeout, config.credentials)
    try:
        return COMMANDS[config.command](config, client)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
