"""The test client against a real kvservice that asks for tokens, over HTTP and RESP: every
check passes with a write and a read token; a missing or wrong one is reported as such."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testclient.__main__ import main
from testclient.checks import CHECKS, Verdict, overall_verdict, run_checks
from testclient.clients import Credentials, make_client
from tests.support.tokens import READ_TOKEN, WRITE_TOKEN, serving_with_tokens


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    """One store with tokens, served over HTTP and RESP: the URL of each."""
    with serving_with_tokens() as urls:
        yield urls


@pytest.mark.parametrize("transport", ["http", "resp"])
def test_every_check_passes_with_a_write_and_a_read_token(
    urls: dict[str, str], transport: str
) -> None:
    client = make_client(urls[transport], (2.0, 5.0), Credentials(WRITE_TOKEN, READ_TOKEN))
    try:
        results = run_checks(list(CHECKS), client)
    finally:
        client.close()

    # Over RESP, checks that need versions or content types are skipped, as without tokens.
    ended = {result.test: result.verdict for result in results}
    assert set(ended.values()) <= {Verdict.PASSED, Verdict.SKIPPED}, ended
    assert ended["test_tokens"] is Verdict.PASSED
    [tokens] = [result for result in results if result.test == "test_tokens"]
    assert not any(step.skipped for step in tokens.steps)


@pytest.mark.parametrize("transport", ["http", "resp"])
@pytest.mark.parametrize("token", [None, WRITE_TOKEN[:-1] + "x"])
def test_a_missing_or_wrong_token_is_unauthorized(
    urls: dict[str, str], transport: str, token: str | None
) -> None:
    client = make_client(urls[transport], (2.0, 5.0), Credentials(token))
    try:
        results = run_checks(["test_deletion", "test_tokens"], client)
    finally:
        client.close()

    assert overall_verdict(results) is Verdict.UNAUTHORIZED
    assert all(result.verdict is Verdict.UNAUTHORIZED for result in results)


@pytest.mark.parametrize("transport", ["http", "resp"])
def test_the_cli_exits_6_and_says_the_token_was_refused(
    urls: dict[str, str], transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "test_deletion", "--kv-url", urls[transport], "--kv-token", READ_TOKEN])

    report = capsys.readouterr().out
    assert code == 6
    assert "UNAUTHORIZED" in report
    assert "refused the token" in report
    assert "403" in report or "NOPERM" in report


def test_credentials_do_not_show_their_tokens() -> None:
    shown = repr(Credentials(WRITE_TOKEN, READ_TOKEN, ca_cert="/ca.pem"))

    assert WRITE_TOKEN not in shown and READ_TOKEN not in shown
    assert "/ca.pem" in shown
