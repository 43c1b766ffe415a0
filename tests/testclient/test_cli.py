"""The command line: the report, the exit codes (one table, testclient.exit_codes), configuration,
and `serve`."""

from __future__ import annotations

import json
import signal

import pytest
import requests

from testclient.__main__ import main
from testclient.checks import CHECKS, Verdict
from testclient.clients import ClientFactory, KVClient
from testclient.config import Config, load_config
from testclient.exit_codes import RUN_EXIT_CODES, USAGE_ERROR
from tests.support.fakes import DeleteStillServedKV, InMemoryKV, closed_port_url
from tests.support.processes import start_service


def fake_factory(client: KVClient) -> ClientFactory:
    """A client factory for `main` that ignores the URL and returns `client`."""
    return lambda kv_url, timeout, credentials: client


# -- run: report and exit codes -----------------------------------------------------------------


def test_run_exits_0_and_reports_every_step_when_all_pass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["run", "--kv-url", "http://kv.example:3000"], make_client=fake_factory(InMemoryKV())
    )

    report = capsys.readouterr().out
    assert code == 0
    assert report.startswith("kvservice at http://kv.example:3000\n")
    for name in CHECKS:
        assert f"PASSED      {name}  (" in report
    assert "  ok    write b'deleteme-" in report
    assert "FAIL" not in report
    assert report.rstrip().endswith(
        f"{len(CHECKS)} checks: {len(CHECKS)} passed, 0 failed, 0 unreachable, 0 skipped; "
        # unauthorized and not-kvservice counts appear only when they occur; the skipped steps
        # are test_tokens', which cannot check tokens when it was given none
        "overall passed (2 steps skipped)"
    )


def test_run_exits_1_and_shows_expected_and_actual_when_a_check_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "test_deletion"], make_client=fake_factory(DeleteStillServedKV()))

    report = capsys.readouterr().out
    assert code == 1
    assert "FAILED      test_deletion" in report
    assert "  FAIL  read tcdel" in report
    assert "          expected: not found\n          actual:   found b'deleteme-" in report
    assert "test_overwrite" not in report


def test_run_exits_3_when_the_kvservice_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "test_deletion", "--kv-url", closed_port_url(), "--connect-timeout", "1"])

    report = capsys.readouterr().out
    assert code == 3
    assert "UNREACHABLE test_deletion" in report
    assert "Connection refused" in report


def test_run_exits_0_against_the_real_kvservice(
    kv_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--kv-url", kv_url])

    assert code == 0, capsys.readouterr().out


def test_quiet_shows_only_what_did_not_pass_and_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "--quiet"], make_client=fake_factory(DeleteStillServedKV()))

    report = capsys.readouterr().out
    assert code == 1
    assert report.startswith("FAILED      test_deletion")
    assert "  FAIL  read tcdel" in report and "expected: not found" in report
    assert "  ok  " not in report
    assert "PASSED" not in report and "test_overwrite" not in report
    assert report.rstrip().endswith(
        f"{len(CHECKS) - 1} passed, 1 failed, 0 unreachable, 0 skipped; "
        "overall failed (2 steps skipped)"  # test_tokens', given no token
    )


def test_quiet_when_all_pass_is_the_summary_alone(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["run", "--quiet", "--kv-url", "http://kv.example:3000"],
        make_client=fake_factory(InMemoryKV()),
    )

    report = capsys.readouterr().out
    assert code == 0
    summary = (
        f"{len(CHECKS)} passed, 0 failed, 0 unreachable, 0 skipped; "
        "overall passed (2 steps skipped)"
    )
    assert report == f"{len(CHECKS)} checks: {summary}\n"


def test_json_of_one_check_is_the_http_services_document(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["run", "test_deletion", "--format", "json", "--kv-url", "http://kv.example:3000"],
        make_client=fake_factory(DeleteStillServedKV()),
    )

    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document.keys() == {"test", "passed", "verdict", "kv_url", "duration_ms", "steps"}
    assert (document["test"], document["verdict"], document["kv_url"]) == (
        "test_deletion",
        "failed",
        "http://kv.example:3000",
    )
    [failed] = [step for step in document["steps"] if not step["passed"]]
    assert failed["expected"] == "not found"


def test_json_of_every_check_is_one_test_all_document(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--format", "json"], make_client=fake_factory(InMemoryKV()))

    out = capsys.readouterr().out
    document = json.loads(out)  # exactly one JSON value: json.loads refuses trailing text
    assert code == 0
    assert (document["test"], document["passed"]) == ("test_all", True)
    assert [result["test"] for result in document["results"]] == list(CHECKS)


def test_json_against_an_unreachable_kvservice_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "run",
            "test_deletion",
            "--format",
            "json",
            "--kv-url",
            closed_port_url(),
            "--connect-timeout",
            "1",
        ]
    )

    assert code == 3
    assert json.loads(capsys.readouterr().out)["verdict"] == "unreachable"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--format", "xml"],
        ["serve", "--interval", "0"],
        ["serve", "--quiet"],
        ["run", "test_nothing"],
        ["frobnicate"],
        [],
        ["run", "--kv-url", "ftp://kv.example"],
        ["run", "--kv-url", "http://kv.example/?q=1"],
        ["run", "--read-timeout", "0"],
        ["serve", "--port", "70000"],
        ["run", "--log-level", "LOUD"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, make_client=fake_factory(InMemoryKV())) == 2
    assert "usage: testclient" in capsys.readouterr().err


def test_help_exits_0_and_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    shown = " ".join(capsys.readouterr().out.partition("exit codes of run:")[2].split())
    for entry in RUN_EXIT_CODES:
        assert f"{entry.code} {entry.meaning}" in shown


def test_the_exit_codes_are_one_table_with_one_code_for_every_verdict() -> None:
    codes = [entry.code for entry in RUN_EXIT_CODES]
    assert codes == sorted(set(codes)), "each code once, in order"
    verdicts = [entry.verdict for entry in RUN_EXIT_CODES if entry.verdict is not None]
    assert sorted(verdicts) == sorted(Verdict), "each verdict once"
    assert [entry for entry in RUN_EXIT_CODES if entry.verdict is None] == [USAGE_ERROR]
    assert USAGE_ERROR.code == 2, "argparse's own"


# -- configuration --------------------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config(CHECKS, ["serve"], environ={})

    assert config == Config(command="serve")
    assert (config.host, config.port, config.kv_url) == ("127.0.0.1", 8000, "http://localhost:3000")


def test_environment_fills_in_what_flags_leave_out() -> None:
    environ = {
        "TESTCLIENT_HOST": "0.0.0.0",
        "TESTCLIENT_PORT": "9000",
        "KV_URL": "http://kv:3000/",
        "TESTCLIENT_READ_TIMEOUT": "7.5",
        "TESTCLIENT_LOG_LEVEL": "debug",
    }

    config = load_config(CHECKS, ["serve", "--port", "9100"], environ)

    assert (config.host, config.port, config.kv_url) == ("0.0.0.0", 9100, "http://kv:3000")
    assert config.timeout == (2.0, 7.5)
    assert config.log_level == "DEBUG"


def test_a_bad_environment_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TESTCLIENT_PORT", "eighty")

    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert "environment variable TESTCLIENT_PORT: invalid port value 'eighty'" in error


def test_run_takes_checks_in_order_without_repeats_and_test_all_means_all() -> None:
    named = load_config(CHECKS, ["run", "test_overwrite", "test_deletion", "test_overwrite"], {})
    everything = load_config(CHECKS, ["run", "test_deletion", "test_all"], {})

    assert named.checks == ("test_overwrite", "test_deletion")
    assert everything.checks == ()


# -- serve ----------------------------------------------------------------------------------------


def test_serve_answers_over_http_and_stops_cleanly_on_sigterm(kv_url: str) -> None:
    service = start_service("testclient", "serve", "--kv-url", kv_url, capture=True)
    try:
        response = requests.get(service.url + "/test_deletion", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["kv_url"] == kv_url
    finally:
        stdout, stderr = service.stop(signal.SIGTERM)

    assert service.process.returncode == 0, stderr
    assert '"GET /test_deletion" 200' in stdout  # the access log, on stdout
    assert f"testclient.lifecycle: listening on http://127.0.0.1:{service.port}" in stderr
    assert "testclient.lifecycle: received SIGTERM" in stderr
    assert "kvservice.lifecycle" not in stderr, "the test client's log names the test client"


def test_serve_logs_json_objects_with_log_format_json(kv_url: str) -> None:
    service = start_service(
        "testclient", "serve", "--kv-url", kv_url, "--log-format", "json", capture=True
    )
    try:
        response = requests.get(
            service.url + "/test_deletion", headers={"X-Request-ID": "tc-json-1"}, timeout=10
        )
    finally:
        stdout, stderr = service.stop(signal.SIGTERM)
    assert response.status_code == 200, response.text
    access = [json.loads(line) for line in stdout.splitlines()]  # start_service's probes too
    [run] = [line for line in access if line["target"] == "/test_deletion"]
    assert (run["method"], run["status"], run["request_id"]) == ("GET", 200, "tc-json-1")
    records = [json.loads(line) for line in stderr.splitlines()]
    assert any(record["message"] == "received SIGTERM, stopping" for record in records)
